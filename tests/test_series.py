"""Reading panels of series: M4's CSV layout, Nixtla's long format, one `time,value` series;
frequencies from timestamps; every malformed input a DataError naming where."""

import numpy as np
import pytest
import torch

from seqlab.data.series import M4_CONVENTIONS, Panel, Series, infer_frequency, read_long, read_m4, read_single, single
from seqlab.errors import ConfigError, DataError


def write(path, text):
    path.write_text(text)
    return path


def m4_pair(tmp_path, train, test, name="Monthly"):
    write(tmp_path / f"{name}-train.csv", train)
    write(tmp_path / f"{name}-test.csv", test)
    return tmp_path / name


HEADER = '"V1","V2","V3","V4","V5"\n'


def test_an_m4_pair_reads_ragged_rows_and_follows_the_frequency_in_its_name(tmp_path):
    prefix = m4_pair(tmp_path, HEADER + '"A","1","2","3","4"\n"B","5","6",,\n',
                     '"V1"' + "".join(f',"V{i}"' for i in range(2, 20)) + "\n"
                     + '"A"' + ',"1"' * 18 + "\n" + '"B"' + ',"2"' * 18 + "\n", name="M3-Monthly")
    panel, test = read_m4(prefix)
    assert panel.ids == ("A", "B") and panel.frequency == "monthly"
    assert (panel.horizon, panel.season) == M4_CONVENTIONS["monthly"] == (18, 12)
    torch.testing.assert_close(panel["B"].values, torch.tensor([5.0, 6.0], dtype=torch.float64))
    assert test.shape == (2, 18) and test.dtype == torch.float64
    # A directory holding one pair is read too; the horizon and period can be overridden.
    _, test = read_m4(tmp_path, horizon=18, season=1)
    assert test.shape == (2, 18)


@pytest.mark.parametrize("train, test, match", [
    (HEADER + '"A","1","x","3"\n', '"V1","V2"\n"A","1"\n', r"line 2: series 'A' has a value 'x' that is not a number"),
    (HEADER + '"A","1",,"3"\n', '"V1","V2"\n"A","1"\n', "a gap inside a series"),
    (HEADER + '"A","1"\n"A","2"\n', '"V1","V2"\n"A","1"\n', "line 3: series id 'A' occurs twice"),
    (HEADER + '"A","1"\n', '"V1","V2"\n"B","1"\n', "hold different series"),
    (HEADER + '"A","1"\n', '"V1","V2","V3"\n"A","1","2"\n', "has 2 test values, expected the horizon 1"),
    ('"X","V2"\n"A","1"\n', '"V1","V2"\n"A","1"\n', "not in the M4 layout"),
    (HEADER, '"V1","V2"\n', "holds no series"),
])
def test_malformed_m4_files_are_data_errors_with_the_line(tmp_path, train, test, match):
    prefix = m4_pair(tmp_path, train, test, name="Yearly")
    with pytest.raises(DataError, match=match):
        read_m4(prefix, horizon=1)


def test_an_m4_path_must_name_one_pair_and_a_known_frequency(tmp_path):
    with pytest.raises(DataError, match="exactly one <Name>-train.csv"):
        read_m4(tmp_path)
    with pytest.raises(DataError, match="no file .*Monthly-test.csv"):
        write(tmp_path / "Monthly-train.csv", HEADER)
        read_m4(tmp_path / "Monthly")
    m4_pair(tmp_path, HEADER + '"A","1"\n', '"V1","V2"\n"A","1"\n', name="Odd")
    with pytest.raises(DataError, match="cannot tell the frequency of 'Odd'"):
        read_m4(tmp_path / "Odd")


def test_the_m4_hourly_set(shared_data):
    panel, test = read_m4(shared_data / "m4")
    assert len(panel) == 414 and test.shape == (414, 48) and panel.season == 24
    lengths = [len(series) for series in panel]
    assert min(lengths) == 700 and max(lengths) == 960
    assert panel.ids[0] == "H1" and panel["H1"].values[:3].tolist() == [605.0, 586.0, 586.0]


def test_a_time_value_series_gets_its_frequency_from_decimal_years(shared_data):
    air = read_single(shared_data / "timeseries" / "AirPassengers.csv")
    assert (air.frequency, air.season, len(air.series[0])) == ("monthly", 12, 144)
    assert air.series[0].values[:2].tolist() == [112.0, 118.0]
    nile = read_single(shared_data / "timeseries" / "Nile.csv")
    assert (nile.frequency, nile.season, len(nile.series[0])) == ("yearly", 1, 100)
    gas = read_single(shared_data / "timeseries" / "UKgas.csv")
    assert (gas.frequency, gas.season) == ("quarterly", 4)


def test_the_long_format_groups_sorts_and_infers_the_frequency(tmp_path):
    path = write(tmp_path / "long.csv", "unique_id,ds,y\nb,2024-01-01 01:00,3\na,2024-01-01 00:00,1\n"
                                        "a,2024-01-01 01:00,2\nb,2024-01-01 00:00,4\n")
    panel = read_long(path)
    assert panel.ids == ("a", "b") and (panel.frequency, panel.season) == ("hourly", 24)
    assert panel["b"].values.tolist() == [4.0, 3.0]                       # sorted by time


def test_extra_numeric_long_columns_are_regressors_split_with_the_values(tmp_path):
    path = write(tmp_path / "long.csv", "unique_id,ds,y,price,note,promo\n"
                                        "a,2024-01-02,2,1.5,x,0\na,2024-01-01,1,1.0,y,1\na,2024-01-03,3,2.5,z,1\n")
    series = read_long(path)["a"]
    torch.testing.assert_close(series.exog, torch.tensor([[1.0, 1.0], [1.5, 0.0], [2.5, 1.0]], dtype=torch.float64))
    train, _ = Panel((series,)).split_last(1)
    torch.testing.assert_close(train["a"].exog, series.exog[:2])
    torch.testing.assert_close(train["a"].future_exog, series.exog[2:])
    with pytest.raises(DataError, match="regressor 'price' is missing or not finite at 2024-01-02"):
        read_long(write(tmp_path / "gap.csv", "unique_id,ds,y,price\na,2024-01-01,1,1.0\na,2024-01-02,2,\n"))


@pytest.mark.parametrize("rows, match", [
    ("a,2024-01-01,1\na,2024-01-01,2\na,2024-01-02,3\n", "duplicate timestamp 2024-01-01"),
    ("a,2024-01-01,1\na,2024-01-02,2\na,2024-01-04,3\n", "not regular .* 2024-01-04"),
    ("a,2024-01-01,1\na,2024-01-02,\na,2024-01-03,3\n", "missing or non-finite value at position 1"),
    ("a,2024-01-01,1\na,,2\n", "a timestamp is missing"),
    ("a,2024-01-01,1\na,2024-01-02,2\nb,2024-01-01,1\nb,2024-02-01,2\n", "mixes frequencies"),
])
def test_bad_long_files_are_data_errors(tmp_path, rows, match):
    with pytest.raises(DataError, match=match):
        read_long(write(tmp_path / "long.csv", "unique_id,ds,y\n" + rows))


def test_bad_single_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="needs columns time and value"):
        read_single(write(tmp_path / "a.csv", "t,v\n1,2\n2,3\n"))
    with pytest.raises(DataError, match="has no rows"):
        read_single(write(tmp_path / "b.csv", "time,value\n"))
    with pytest.raises(DataError, match="no file"):
        read_single(tmp_path / "absent.csv")


def test_frequencies_of_regular_steps():
    days = np.arange("2024-01-01", "2024-01-10", dtype="datetime64[D]")
    assert infer_frequency(days, "x") == "daily"
    assert infer_frequency(np.arange("2020-01", "2024-01", 3, dtype="datetime64[M]"), "x") == "quarterly"
    assert infer_frequency(days[::7], "x") == "weekly"
    with pytest.raises(DataError, match="out-of-order"):
        infer_frequency(days[::-1], "x")


def test_panels_check_their_series():
    with pytest.raises(DataError, match="occurs twice"):
        Panel((Series("a", torch.ones(3, dtype=torch.float64)),) * 2)
    with pytest.raises(DataError, match="1-D float64"):
        Series("a", torch.ones(3))
    with pytest.raises(DataError, match="non-finite value at position 2"):
        single([1.0, 2.0, float("inf")])
    with pytest.raises(ConfigError, match="seasonal period must be >= 1"):
        single([1.0, 2.0], season=0)
    panel, held = single([1.0, 2.0, 3.0, 4.0]).split_last(2)
    assert panel.series[0].values.tolist() == [1.0, 2.0] and held.tolist() == [[3.0, 4.0]]
    with pytest.raises(DataError, match="too few to hold out 4"):
        single([1.0, 2.0, 3.0, 4.0]).split_last(4)
    with pytest.raises(ConfigError, match="positive integer"):
        single([1.0, 2.0]).split_last(0)


def test_which_paths_name_an_m4_pair():
    from pathlib import Path

    from seqlab.data.series import m4_prefix

    assert m4_prefix("data/m3/M3-Monthly-train.csv") == Path("data/m3/M3-Monthly")
    assert m4_prefix("data/m3/M3-Monthly-test.csv") == Path("data/m3/M3-Monthly")
    assert m4_prefix("data/m3/M3-Monthly") == Path("data/m3/M3-Monthly") and m4_prefix("data/m4") == Path("data/m4")
    assert m4_prefix("series.csv") is None and m4_prefix("SERIES.CSV") is None
