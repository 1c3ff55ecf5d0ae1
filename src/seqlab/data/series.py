"""Panels of time series and the files they come in.

A ``Series`` is one univariate series: float64 values (T,), an id, and optionally its
timestamps (then its frequency and seasonal period follow from them) and exogenous regressors
(T, K). A ``Panel`` is a set of series with one frequency, one seasonal period ``season`` (m:
24 for hourly data, 12 for monthly, 1 for none) and, where the data fixes one, a forecast
``horizon``. Series in a panel may have different lengths.

Three layouts are read, each checked before anything is fitted (``DataError`` naming the file,
the series and the line; never a silent NaN):

- the M4 competition's CSV layout (``read_m4``): ``<Name>-train.csv`` and ``<Name>-test.csv``,
  header ``"V1","V2",...``, one series per row, its id in V1 and shorter rows padded with empty
  fields; the test file's row i continues the train file's row i. The horizon and seasonal
  period follow M4's conventions for the frequency in the name (``M4_CONVENTIONS``);
- Nixtla's long format (``read_long``): columns ``unique_id, ds, y``, one observation per row,
  further numeric columns the series' exogenous regressors;
- one series in two columns, ``time,value`` (``read_single``), as R's datasets export them
  (time as a decimal year, 1949.0833 for February 1949) or with dates.

Frequencies and periods are inferred from timestamps: a regular step of one hour, day, week,
month, quarter or year (or a decimal-year step of 1/12, 1/4, 1) gives the usual period (24, 7,
1, 12, 4, 1). Gaps, duplicate timestamps and irregular steps are errors, named with the first
offending timestamp.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from seqlab.errors import ConfigError, DataError

# M4's horizon h and seasonal period m by frequency (Makridakis et al. 2020, Table 1), which M3
# shares for the frequencies it has.
M4_CONVENTIONS = {
    "yearly": (6, 1), "quarterly": (8, 4), "monthly": (18, 12), "weekly": (13, 1), "daily": (14, 1),
    "hourly": (48, 24), "other": (8, 1),
}
# The seasonal period of a regular timestamp step, and the pandas frequency alias of that step.
PERIOD_OF_FREQUENCY = {"hourly": 24, "daily": 7, "weekly": 1, "monthly": 12, "quarterly": 4, "yearly": 1}


@dataclass(frozen=True)
class Series:
    """One univariate series.

    Attributes:
        id: its name, unique in its panel.
        values: (T,) float64 observations, oldest first, all finite.
        timestamps: (T,) numpy datetime64 or float (decimal years) times, or None.
        exog: (T, K) float64 exogenous regressors aligned with ``values``, or None.
        future_exog: (H, K) float64 values of the same regressors after the last observation,
            known in advance (a calendar, a planned price), or None: what a model with
            regressors forecasts with, at most H steps ahead.
    """

    id: str
    values: Tensor
    timestamps: np.ndarray | None = None
    exog: Tensor | None = None
    future_exog: Tensor | None = None

    def __post_init__(self) -> None:
        if self.values.dim() != 1 or self.values.dtype != torch.float64:
            raise DataError(f"series {self.id!r}: values must be a 1-D float64 tensor, got "
                            f"{tuple(self.values.shape)} {self.values.dtype}")
        bad = (~torch.isfinite(self.values)).nonzero()
        if len(bad):
            raise DataError(f"series {self.id!r} has a missing or non-finite value at position {int(bad[0])}; "
                            "fill or drop it before forecasting")
        if self.timestamps is not None and len(self.timestamps) != len(self.values):
            raise DataError(f"series {self.id!r} has {len(self.timestamps)} timestamps for {len(self.values)} values")
        if self.exog is not None and (self.exog.dim() != 2 or len(self.exog) != len(self.values)):
            raise DataError(f"series {self.id!r}: exogenous regressors must be (T, K) with T = {len(self.values)}, "
                            f"got {tuple(self.exog.shape)}")
        if self.future_exog is not None and (self.exog is None or self.future_exog.dim() != 2
                                             or self.future_exog.shape[1] != self.exog.shape[1]):
            raise DataError(f"series {self.id!r}: future regressors must be (H, K) with the K = "
                            f"{None if self.exog is None else self.exog.shape[1]} columns of its past ones, got "
                            f"{tuple(self.future_exog.shape)}")

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class Panel:
    """Series with one frequency and seasonal period.

    Attributes:
        series: the series, ids unique.
        season: the seasonal period m (1: no seasonality).
        frequency: "hourly", "monthly", ... or None when unknown.
        horizon: the forecast horizon the data fixes (M4's by frequency), or None.
    """

    series: tuple[Series, ...]
    season: int = 1
    frequency: str | None = None
    horizon: int | None = None
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.series:
            raise DataError("the panel has no series")
        if self.season < 1:
            raise ConfigError(f"the seasonal period must be >= 1, got {self.season}")
        if self.horizon is not None and self.horizon < 1:
            raise ConfigError(f"the forecast horizon must be >= 1, got {self.horizon}")
        index = {}
        for position, series in enumerate(self.series):
            if series.id in index:
                raise DataError(f"series id {series.id!r} occurs twice in the panel")
            index[series.id] = position
        object.__setattr__(self, "index", index)

    def __iter__(self) -> Iterator[Series]:
        return iter(self.series)

    def __len__(self) -> int:
        return len(self.series)

    def __getitem__(self, id: str) -> Series:
        if id not in self.index:
            raise DataError(f"no series {id!r} in the panel")
        return self.series[self.index[id]]

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(series.id for series in self.series)

    def subset(self, ids: Sequence[str]) -> Panel:
        """The panel of the series named by ``ids``, in that order."""
        return Panel(tuple(self[id] for id in ids), self.season, self.frequency, self.horizon)

    def split_last(self, horizon: int) -> tuple[Panel, Tensor]:
        """Hold out the last ``horizon`` values of every series: (the panel without them,
        (S, horizon) the held-out values). Every series must be longer than ``horizon``."""
        check_horizon(horizon)
        short = [series.id for series in self.series if len(series) <= horizon]
        if short:
            raise DataError(f"series {short[0]!r} has {len(self[short[0]])} values, too few to hold out {horizon}")
        kept = tuple(Series(series.id, series.values[:-horizon],
                            None if series.timestamps is None else series.timestamps[:-horizon],
                            None if series.exog is None else series.exog[:-horizon],
                            None if series.exog is None else series.exog[-horizon:]) for series in self.series)
        held = torch.stack([series.values[-horizon:] for series in self.series])
        return Panel(kept, self.season, self.frequency, horizon), held


def check_horizon(horizon: int) -> int:
    """``horizon`` if it is a positive integer, else a ``ConfigError``."""
    if not isinstance(horizon, int) or horizon < 1:
        raise ConfigError(f"the forecast horizon must be a positive integer, got {horizon!r}")
    return horizon


def single(values: Sequence[float] | Tensor, season: int = 1, id: str = "series") -> Panel:
    """A panel of one series from plain values (for interactive use and tests)."""
    return Panel((Series(id, torch.as_tensor(values, dtype=torch.float64).clone()),), season)


# ---- the M4 layout ---------------------------------------------------------------------------

def m4_frequency(name: str) -> str:
    """The frequency M4 conventions apply to a file named like ``Hourly`` or ``M3-Monthly``."""
    stem = Path(name).name.lower()
    for frequency in M4_CONVENTIONS:
        if frequency in stem:
            return frequency
    raise DataError(f"cannot tell the frequency of {name!r} from its name (expected one of "
                    f"{', '.join(M4_CONVENTIONS)}); pass the horizon and seasonal period explicitly")


def m4_pair(path: str | Path) -> tuple[Path, Path]:
    """The ``-train.csv`` and ``-test.csv`` files that ``path`` names: a directory holding
    exactly one such pair, or their common prefix (``data/m3/M3-Monthly``)."""
    path = Path(path)
    if path.is_dir():
        trains = sorted(path.glob("*-train.csv"))
        if len(trains) != 1:
            found = ", ".join(p.name for p in trains) or "none"
            raise DataError(f"{str(path)!r} must hold exactly one <Name>-train.csv (found: {found}); "
                            "name the pair by its prefix, e.g. data/m3/M3-Monthly")
        prefix = trains[0].with_name(trains[0].name[: -len("-train.csv")])
    else:
        prefix = path
    train, test = prefix.with_name(prefix.name + "-train.csv"), prefix.with_name(prefix.name + "-test.csv")
    for part in (train, test):
        if not part.is_file():
            raise DataError(f"no file {str(part)!r}: an M4-layout pair is <Name>-train.csv and <Name>-test.csv")
    return train, test


def read_m4_file(path: str | Path) -> dict[str, Tensor]:
    """id -> (T,) float64 values of one M4-layout CSV file, in file order."""
    path = Path(path)
    rows: dict[str, Tensor] = {}
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header or header[0] != "V1":
            raise DataError(f"{str(path)!r} is not in the M4 layout: its header must start with \"V1\"")
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            id, fields = row[0], row[1:]
            while fields and fields[-1] == "":
                fields.pop()
            if not fields:
                raise DataError(f"{path.name} line {line}: series {id!r} has no values")
            try:
                values = [float(value) for value in fields]
            except ValueError:
                bad = next(value for value in fields if not is_number(value))
                raise DataError(f"{path.name} line {line}: series {id!r} has a value {bad!r} that is not a number "
                                "(a gap inside a series is not allowed)") from None
            if id in rows:
                raise DataError(f"{path.name} line {line}: series id {id!r} occurs twice")
            rows[id] = torch.tensor(values, dtype=torch.float64)
    if not rows:
        raise DataError(f"{str(path)!r} holds no series")
    return rows


def is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def read_m4(path: str | Path, horizon: int | None = None, season: int | None = None) -> tuple[Panel, Tensor]:
    """An M4-layout pair: (the training panel, (S, h) the test values).

    The horizon and seasonal period follow M4's conventions for the frequency in the file name
    unless given. Every test row must have exactly h values and continue a training row.
    """
    train_path, test_path = m4_pair(path)
    frequency = m4_frequency(train_path.name[: -len("-train.csv")])
    default_horizon, default_season = M4_CONVENTIONS[frequency]
    horizon = default_horizon if horizon is None else check_horizon(horizon)
    season = default_season if season is None else season
    train, test = read_m4_file(train_path), read_m4_file(test_path)
    if list(train) != list(test):
        missing = next((id for id in train if id not in test), None) or next(id for id in test if id not in train)
        raise DataError(f"{train_path.name} and {test_path.name} hold different series (first: {missing!r}); "
                        "the test file's row i must continue the train file's row i")
    for id, values in test.items():
        if len(values) != horizon:
            raise DataError(f"{test_path.name}: series {id!r} has {len(values)} test values, expected the horizon "
                            f"{horizon}")
    panel = Panel(tuple(Series(id, values) for id, values in train.items()), season, frequency, horizon)
    return panel, torch.stack(list(test.values()))


def m4_prefix(path: str | Path) -> Path | None:
    """The M4-layout pair ``path`` names (a directory, the pair's common prefix, or one of its
    two files), as what ``read_m4`` takes; None for any other ``.csv`` file."""
    path = Path(path)
    for suffix in ("-train.csv", "-test.csv"):
        if path.name.endswith(suffix):
            return path.with_name(path.name[: -len(suffix)])
    return None if path.suffix.lower() == ".csv" else path


def read_csv_panel(path: str | Path, season: int | None = None) -> Panel:
    """A long-format CSV (``unique_id, ds, y``) or one ``time,value`` series, told apart by the
    header."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no file {str(path)!r}")
    with open(path, errors="replace") as handle:
        header = handle.readline()
    return (read_long if "unique_id" in header else read_single)(path, season)


# ---- long format and single series -----------------------------------------------------------

def read_long(path: str | Path, season: int | None = None) -> Panel:
    """A panel in Nixtla's long format: columns ``unique_id, ds, y`` (pandas reads it).

    Further numeric columns are the series' exogenous regressors (``Series.exog``, in file
    column order; as Nixtla's ``X_df`` columns): every row needs a finite value in each of them.
    Non-numeric further columns are ignored. ``Panel.split_last`` hands the held-out rows'
    regressors to ``future_exog``.
    """
    import pandas as pd

    path = Path(path)
    frame = read_table(path)
    missing = [column for column in ("unique_id", "ds", "y") if column not in frame.columns]
    if missing:
        raise DataError(f"{path.name} lacks column(s) {', '.join(missing)}: the long format is unique_id, ds, y")
    regressors = [column for column in frame.columns if column not in ("unique_id", "ds", "y")
                  and pd.api.types.is_numeric_dtype(frame[column])]
    frame = frame.assign(ds=parse_times(frame["ds"], path.name)).sort_values(["unique_id", "ds"], kind="stable")
    series, frequencies = [], set()
    for id, group in frame.groupby("unique_id", sort=False):
        times = group["ds"].to_numpy()
        values = pd.to_numeric(group["y"], errors="coerce").to_numpy(dtype=float)
        frequencies.add(infer_frequency(times, f"{path.name}, series {id!r}"))
        exog = None
        if regressors:
            table = group[regressors].to_numpy(dtype=float)
            bad = np.argwhere(~np.isfinite(table))
            if len(bad):
                raise DataError(f"{path.name}, series {id!r}: regressor {regressors[bad[0][1]]!r} is missing or not "
                                f"finite at {times[bad[0][0]]}; fill it (a regressor must be known at every time)")
            exog = torch.tensor(table, dtype=torch.float64)
        series.append(Series(str(id), torch.tensor(values, dtype=torch.float64), times, exog))
    if len(frequencies) > 1:
        raise DataError(f"{path.name} mixes frequencies ({', '.join(sorted(frequencies))}); one panel has one")
    frequency = frequencies.pop()
    return Panel(tuple(series), PERIOD_OF_FREQUENCY[frequency] if season is None else season, frequency)


def read_single(path: str | Path, season: int | None = None) -> Panel:
    """One series from a CSV with columns ``time`` and ``value`` (others are ignored)."""
    import pandas as pd

    path = Path(path)
    frame = read_table(path)
    if not {"time", "value"} <= set(frame.columns):
        raise DataError(f"{path.name} needs columns time and value, has {', '.join(map(str, frame.columns))}")
    times = parse_times(frame["time"], path.name).to_numpy()
    values = pd.to_numeric(frame["value"], errors="coerce").to_numpy(dtype=float)
    frequency = infer_frequency(times, path.name)
    season = PERIOD_OF_FREQUENCY[frequency] if season is None else season
    return Panel((Series(path.stem, torch.tensor(values, dtype=torch.float64), times),), season, frequency)


def read_table(path: Path) -> Any:
    import pandas as pd

    if not path.is_file():
        raise DataError(f"no file {str(path)!r}")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read {path.name} as CSV: {str(error).splitlines()[0]}") from None
    if frame.empty:
        raise DataError(f"{path.name} has no rows")
    return frame


def parse_times(column: Any, where: str) -> Any:
    """Timestamps as pandas datetimes, or as floats when they are numbers (decimal years)."""
    import pandas as pd

    if column.isna().any():
        raise DataError(f"{where}: a timestamp is missing (row {int(column.isna().to_numpy().argmax()) + 2})")
    if pd.api.types.is_numeric_dtype(column):
        return column.astype(float)
    try:
        return pd.to_datetime(column)
    except (ValueError, TypeError) as error:
        raise DataError(f"{where}: cannot read the timestamps as dates ({error})") from None


def infer_frequency(times: np.ndarray, where: str) -> str:
    """The frequency of regular timestamps: "hourly" ... "yearly"; ``DataError`` on duplicate,
    unordered, missing or irregular timestamps, naming the first."""
    if len(times) < 2:
        raise DataError(f"{where}: a single observation has no frequency")
    if np.issubdtype(times.dtype, np.number):                        # decimal years, as R's ts
        steps = np.diff(times.astype(float))
        candidates = {"monthly": 1 / 12, "quarterly": 1 / 4, "yearly": 1.0}
        for frequency, step in candidates.items():
            if np.allclose(steps, step, rtol=0, atol=1e-6):
                return frequency
        return irregular(times, np.round(steps, 6), where)
    stamps = times.astype("datetime64[s]")
    steps = np.diff(stamps).astype("timedelta64[s]").astype(np.int64)
    if (steps <= 0).any():
        first = int(np.argmax(steps <= 0)) + 1
        kind = "duplicate" if steps[first - 1] == 0 else "out-of-order"
        raise DataError(f"{where}: {kind} timestamp {stamps[first]}")
    fixed = {"hourly": 3600, "daily": 86400, "weekly": 7 * 86400}
    for frequency, seconds in fixed.items():
        if (steps == seconds).all():
            return frequency
    months = months_between(stamps)
    for frequency, months_per_step in {"monthly": 1, "quarterly": 3, "yearly": 12}.items():
        if (months == months_per_step).all():
            return frequency
    return irregular(stamps, steps, where)


def months_between(stamps: np.ndarray) -> np.ndarray:
    month = stamps.astype("datetime64[M]").astype(np.int64)
    return np.diff(month)


def irregular(times: np.ndarray, steps: np.ndarray, where: str) -> str:
    """Raise the error for timestamps whose steps differ: at the first step that is not the
    most common (the shortest of the most common)."""
    values, counts = np.unique(steps, return_counts=True)
    usual = values[np.argmax(counts)]
    first = int(np.argmax(steps != usual)) + 1
    raise DataError(f"{where}: timestamps are not regular (a gap, or an irregular step, at {times[first]}); "
                    "fill missing periods before forecasting")
