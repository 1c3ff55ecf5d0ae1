"""ETS: the recursion against its plain reference, the likelihood against statsmodels, the fit
against statsmodels and the exact SES fit, forecasts against closed forms and simulation."""

import dataclasses
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from seqlab.data.series import Panel, Series, read_m4, read_single, single
from seqlab.errors import ConfigError, DataError
from seqlab.fields import field_docs
from seqlab.forecast.ets import ETS, ETSConfig, run_forward
from seqlab.forecast.ets_estimate import (admissible, admissible_ref, fit_rows, heuristic_states, roots_inside,
                                          smoothing, start_logits)
from seqlab.forecast.ets_fit import Form, candidate_forms, ets_filter, ets_loglik, ets_loglik_ref, pack, unpack
from seqlab.forecast.ets_lbfgs import minimise

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "timeseries"
M3 = DATA.parent / "m3"
needs_data = pytest.mark.skipif(not (DATA / "AirPassengers.csv").is_file(),
                                reason=f"shared data {DATA} is absent")
ALL_FORMS = [e + t + s for e in "AM" for t in ("N", "A", "Ad", "M", "Md") for s in "NAM"]


def synthetic(n: int = 40, m: int = 4, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(n, dtype=torch.float64)
    return 50 + 0.5 * t + 5 * torch.sin(2 * math.pi * t / m) + torch.randn(n, generator=generator, dtype=torch.float64)


def parameters_of(form: Form, m: int) -> dict:
    seasonal = (1 + 0.1 * np.sin(np.arange(m))) if form.season == "M" else 3 * np.sin(np.arange(m))
    return dict(alpha=0.35, beta=0.05, gamma=0.1, phi=0.9, level=48.0,
                trend=1.01 if form.trend == "M" else 0.6, seasonal=seasonal.tolist())


def statsmodels_loglik(y: np.ndarray, form: Form, m: int, p: dict) -> float:
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    kind = {"N": None, "A": "add", "M": "mul"}
    model = ETSModel(y, error=kind[form.error], trend=kind[form.trend], damped_trend=form.damped,
                     seasonal=kind[form.season], seasonal_periods=m if form.season != "N" else None)
    values = [p["alpha"]] + [p["beta"]] * (form.trend != "N") + [p["gamma"]] * (form.season != "N")
    values += [p["phi"]] * form.damped + [p["level"]] + [p["trend"]] * (form.trend != "N")
    values += p["seasonal"] if form.season != "N" else []
    return float(model.loglike(np.array(values)))


# ---- the recursion and its likelihood ------------------------------------------------------------

@pytest.mark.parametrize("season_update", ["hyndman", "statsmodels"])
def test_fast_recursion_equals_the_reference_for_all_30_forms(season_update):
    y = synthetic()
    for code in ALL_FORMS:
        form = Form.parse(code)
        p = parameters_of(form, 4)
        fast = ets_loglik(y, form, **p, season_update=season_update)
        ref = ets_loglik_ref(y.tolist(), form, **p, season_update=season_update)
        assert fast == pytest.approx(ref, rel=1e-12, abs=0), code


def test_the_two_season_updates_differ_only_for_a_multiplicative_season():
    y = synthetic()
    for code in ALL_FORMS:
        form = Form.parse(code)
        p = parameters_of(form, 4)
        same = ets_loglik(y, form, **p) == pytest.approx(ets_loglik(y, form, **p, season_update="statsmodels"),
                                                         rel=1e-13, abs=0)
        assert same == (form.season != "M"), code


def test_gradients_of_the_recursion_match_finite_differences():
    y = synthetic(12, 3)[None]
    for mul_trend, mul_season in [(False, False), (True, True)]:
        def run(alpha, beta, gamma, phi, level, trend, seasonal):
            mu, level, trend, seasonal = ets_filter(y, alpha, beta, gamma, phi, level, trend, seasonal,
                                                    mul_trend=mul_trend, mul_season=mul_season)
            return mu, level, trend, seasonal
        inputs = [torch.tensor([v], dtype=torch.float64, requires_grad=True)
                  for v in (0.3, 0.05, 0.1, 0.9, 48.0, 1.01 if mul_trend else 0.5)]
        seasonal = torch.tensor([[1.05, 0.9, 1.05]] if mul_season else [[2.0, -1.0, -1.0]], dtype=torch.float64,
                                requires_grad=True)
        assert torch.autograd.gradcheck(run, (*inputs, seasonal))


@needs_data
@pytest.mark.parametrize("name, m, code", [
    ("Nile", 1, "ANN"), ("Nile", 1, "AAdN"), ("Nile", 1, "MAdN"), ("AirPassengers", 12, "AAA"),
    ("AirPassengers", 12, "MAM"), ("AirPassengers", 12, "MNM"), ("AirPassengers", 12, "MAdM"),
    ("UKgas", 4, "MAdM"), ("UKgas", 4, "AAdA"), ("co2", 12, "MMdM"), ("co2", 12, "MNA")])
def test_loglik_equals_statsmodels(name, m, code):
    y = read_single(DATA / f"{name}.csv").series[0].values
    form = Form.parse(code)
    p = parameters_of(form, m)
    p["level"] = float(y[:m].mean())
    expected = statsmodels_loglik(y.numpy(), form, m, p)
    assert ets_loglik(y, form, **p, season_update="statsmodels") == pytest.approx(expected, rel=1e-10, abs=0)
    assert ets_loglik_ref(y.tolist(), form, **p, season_update="statsmodels") == pytest.approx(expected, rel=1e-10)


# ---- the fit ----------------------------------------------------------------------------------

def test_minimise_finds_the_minima_of_independent_rosenbrock_rows():
    shifts = torch.tensor([[1.0, 1.0], [2.0, 4.0], [-1.0, 1.0]], dtype=torch.float64)

    def rosenbrock(x, rows):
        a = shifts[rows, 0]
        return (a - x[:, 0]) ** 2 + 10 * (x[:, 1] - x[:, 0] ** 2) ** 2

    x, f = minimise(rosenbrock, torch.zeros(3, 2, dtype=torch.float64), torch.ones(3, 2, dtype=torch.bool),
                    max_iterations=500, tolerance=1e-16)
    torch.testing.assert_close(x, shifts, rtol=0, atol=1e-5)
    assert (f < 1e-10).all()


def test_heuristic_states_recover_an_exact_trend_and_season():
    m, season = 4, np.array([3.0, -1.0, -4.0, 2.0])
    t = np.arange(1, 41)
    y = 10 + 2 * t + season[(t - 1) % m]
    level, trend, seasonal = heuristic_states(y, "A", "A", m)
    assert level == pytest.approx(10, abs=1e-9) and trend == pytest.approx(2, abs=1e-9)
    np.testing.assert_allclose(seasonal, season[::-1], atol=1e-9)


@needs_data
@pytest.mark.parametrize("name, m, code", [("UKgas", 4, "MAM"), ("UKgas", 4, "MNM"), ("Nile", 1, "AAdN")])
def test_fit_reaches_at_least_the_statsmodels_optimum(name, m, code):
    # statsmodels bounds beta / alpha and gamma / (1 - alpha) below by 1e-4, R (and seqlab) beta and
    # gamma themselves, and it has no admissible region: its optimum for AirPassengers MNM has
    # gamma = 1.6e-5, out of R's region. Here its optimum is inside R's region (UKgas) or below ours (Nile).
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    panel = read_single(DATA / f"{name}.csv")
    form = Form.parse(code)
    kind = {"N": None, "A": "add", "M": "mul"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = ETSModel(panel.series[0].values.numpy(), error=kind[form.error], trend=kind[form.trend],
                          damped_trend=form.damped, seasonal=kind[form.season],
                          seasonal_periods=m if form.season != "N" else None).fit(disp=False).llf
    model = ETS(ETSConfig(form=code, season_update="statsmodels", max_iterations=400, tolerance=1e-12)).fit(panel)
    form, p, seasonal = unpack(model.fitted[panel.ids[0]][1])
    assert p["loglik"] >= theirs - 1e-4
    # the packed parameters reproduce the packed likelihood
    y = panel.series[0].values
    again = ets_loglik(y, form, p["alpha"], p["beta"], p["gamma"], p["phi"], p["level"], p["trend"],
                       seasonal.tolist(), season_update="statsmodels")
    assert again == pytest.approx(p["loglik"], rel=1e-9)


@pytest.mark.parametrize("m", [1, 4, 12, 24])
def test_admissible_region_equals_the_reference_and_statsforecast(m):
    from statsforecast.ets import admissible as peer

    generator = np.random.default_rng(m)
    count = 400
    alpha = generator.uniform(0, 1, count)
    beta = alpha * generator.uniform(-0.1, 1.5, count) ** 3
    gamma = (1 - alpha) * generator.uniform(0, 1.2, count) ** 4
    phi = generator.choice([1.0, 0.98, 0.9, 0.8], count)
    beta[:50], gamma[50:100] = 0.0, 1e-4                     # no trend; gamma at R's lower bound
    as_row = lambda values: torch.from_numpy(values)                        # noqa: E731
    fast = admissible(as_row(alpha), as_row(beta), as_row(gamma), as_row(phi), m,
                      torch.full((count,), m > 1)).tolist()
    reference = [admissible_ref(a, b, g if m > 1 else None, f, m) for a, b, g, f in zip(alpha, beta, gamma, phi)]
    theirs = [bool(peer(a, b, g if m > 1 else math.nan, f, m)) for a, b, g, f in zip(alpha, beta, gamma, phi)]
    assert fast == reference == theirs
    assert 0 < sum(fast) < count                                            # both outcomes occur


def test_roots_inside_equals_numpy_roots():
    generator = np.random.default_rng(0)
    coefficients = generator.normal(size=(500, 8)) * np.array([0.3] * 7 + [1.0])
    radius = np.abs([np.roots(row[::-1]) for row in coefficients]).max(1)
    fast = roots_inside(torch.from_numpy(coefficients), 1.0).numpy()
    np.testing.assert_array_equal(fast, radius < 1)
    assert 0 < fast.sum() < len(fast)


def test_starting_values_are_those_of_r():
    from statsforecast.ets import initparam

    for m, code in [(1, "AAdN"), (12, "MAdM"), (24, "AAdA"), (4, "ANA")]:
        form = Form.parse(code)
        theirs = initparam(math.nan, math.nan, math.nan, math.nan, form.trend, form.season, form.damped,
                           np.array([1e-4, 1e-4, 1e-4, 0.8]), np.array([0.9999] * 3 + [0.98]),
                           m if form.season != "N" else 1, "both")
        ours = [float(value[0]) for value in smoothing(start_logits([form], m))]
        expected = [theirs[name] for name in ("alpha", "beta", "gamma", "phi")]
        present = [True, form.trend != "N", form.season != "N", form.damped]
        np.testing.assert_allclose([v for v, p in zip(ours, present) if p], [v for v, p in zip(expected, present) if p],
                                   rtol=1e-12)


def in_r_region(p: dict, form: Form, m: int) -> bool:
    """R's usual bounds and admissible region for the packed parameters ``p`` of ``form``."""
    beta, gamma = (p["beta"] if form.trend != "N" else None), (p["gamma"] if form.season != "N" else None)
    usual = 1e-4 <= p["alpha"] <= 0.9999 and (beta is None or 1e-4 <= beta <= p["alpha"])
    usual &= gamma is None or 1e-4 <= gamma <= 1 - p["alpha"]
    usual &= not form.damped or 0.8 <= p["phi"] <= 0.98
    return usual and admissible_ref(p["alpha"], beta, gamma, p["phi"] if form.damped else None, m)


@pytest.mark.skipif(not (M3 / "M3-Monthly-train.csv").is_file(), reason=f"shared data {M3} is absent")
def test_fits_stay_in_rs_region_where_the_likelihood_peaks_outside():
    # without the admissible region these three peak outside it (MAM on N2770: alpha 0.998, beta 0.40)
    panel, _ = read_m4(M3 / "M3-Monthly")
    panel = panel.subset(["N2770", "N2771", "N1933"])
    for code in ("MAM", "MAA"):
        model = ETS(ETSConfig(form=code, max_iterations=60)).fit(panel)
        for id in panel.ids:
            form, p, _ = unpack(model.fitted[id][1])
            assert math.isfinite(p["loglik"]) and in_r_region(p, form, 12), (id, code, p)


def test_fits_of_every_form_stay_in_rs_region():
    y = synthetic(48, 4, 7)
    for code in [e + t + s for e in "AM" for t in ("N", "A", "Ad") for s in "NAM"]:
        form = Form.parse(code)
        _, p, _ = unpack(ETS(ETSConfig(form=code, max_iterations=60)).fit(Panel((Series("s", y),), season=4))
                         .fitted["s"][1])
        assert in_r_region(p, form, 4), (code, p)


def test_ses_fit_ends_in_an_optimum_of_the_exact_profile():
    from seqlab.forecast.ses import fit_ses, profile, run_ses

    for seed in range(3):
        y = synthetic(60, 5, seed) + torch.cumsum(torch.randn(60, generator=torch.Generator().manual_seed(seed),
                                                              dtype=torch.float64), 0)
        model = ETS(ETSConfig(form="ANN", max_iterations=400, tolerance=1e-14)).fit(single(y))
        _, p, _ = unpack(model.fitted["series"][1])
        ours = run_ses(y, p["alpha"], p["level"]).sse
        assert ours == pytest.approx(profile(y.numpy(), p["alpha"])[0], rel=1e-8)          # the best l_0
        for step in (-1e-3, 1e-3):                                                         # a minimum in alpha
            assert profile(y.numpy(), p["alpha"] + step)[0] > ours
        if seed != 1:
            assert ours == pytest.approx(fit_ses(y).sse, rel=1e-6)
        else:       # two optima: the local fit from R's start (alpha 0.2) ends in the first, 0.41
            assert p["alpha"] == pytest.approx(0.406, abs=1e-3) and fit_ses(y).alpha == pytest.approx(0.9999)


def test_auto_keeps_the_candidate_of_least_aicc():
    y = synthetic(50, 1, 3) + 20
    auto = ETS().fit(single(y))
    chosen = unpack(auto.fitted["series"][1])
    scores = {}
    for form in candidate_forms(1, True, False):
        _, p, _ = unpack(ETS(ETSConfig(form=form.code)).fit(single(y)).fitted["series"][1])
        k = form.n_params(1) + 1
        scores[form.code] = -2 * p["loglik"] + 2 * k + 2 * k * (k + 1) / (50 - k - 1)
    assert len(scores) == 6 and chosen[0].code == min(scores, key=scores.get)
    assert chosen[1]["loglik"] == pytest.approx(unpack(ETS(ETSConfig(form=chosen[0].code)).fit(
        single(y)).fitted["series"][1])[1]["loglik"], rel=1e-12)


def test_padding_a_shorter_series_changes_neither_its_likelihood_nor_its_optimum():
    long, short = synthetic(60, 4, 1), synthetic(37, 4, 2)
    settings = dict(season_update="hyndman", max_iterations=300, tolerance=1e-14)
    together = fit_rows([long.numpy(), short.numpy()], [Form.parse("AAdA")] * 2, 4, **settings)
    alone = fit_rows([short.numpy()], [Form.parse("AAdA")], 4, **settings)
    form, p, seasonal = unpack(together[1])
    unpadded = ets_loglik(short, form, p["alpha"], p["beta"], p["gamma"], p["phi"], p["level"], p["trend"],
                          seasonal.tolist())
    assert p["loglik"] == pytest.approx(unpadded, rel=1e-12)
    assert p["loglik"] == pytest.approx(unpack(alone[0])[1]["loglik"], rel=1e-8)


# ---- forecasts --------------------------------------------------------------------------------

def test_point_forecasts_follow_the_closed_form():
    model = ETS(ETSConfig(form="AAdA"))
    p = pack(Form.parse("AAdA"), 0.3, 0.1, 0.2, 0.9, 1.0, 0.0, 10.0, 2.0, [1.0, -2.0, 3.0, -2.0])
    y = torch.tensor([20.0])
    mean, _ = model.forecast_series(y, 4, p, 9, torch.zeros(0, dtype=torch.float64))
    # one step by hand: mu = 10 + 0.9*2 + (-2) = 9.8, r = 10.2
    level, trend = 10 + 1.8 + 0.3 * 10.2, 1.8 + 0.1 * 10.2
    seasonal = [-2 + 0.2 * 10.2, 1.0, -2.0, 3.0]           # s_T, s_{T-1}, s_{T-2}, s_{T-3}
    h = torch.arange(1, 10, dtype=torch.float64)
    damped_sum = 0.9 * (1 - 0.9 ** h) / (1 - 0.9)
    expected = level + damped_sum * trend + torch.tensor([seasonal[(4 - k) % 4] for k in range(1, 10)],
                                                         dtype=torch.float64)
    torch.testing.assert_close(mean, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("code", ["ANN", "AAdA"])
def test_analytic_quantiles_of_linear_forms_match_simulation(code):
    form = Form.parse(code)
    p = pack(form, 0.4, 0.1, 0.2, 0.9, 4.0, 0.0, 10.0, 1.0, [1.0, -2.0, 3.0, -2.0])
    model = ETS(ETSConfig(form=code))
    levels = torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)
    y = synthetic(20, 4)
    mean, analytic = model.forecast_series(y, 4, p, 10, levels)
    _, q, _ = unpack(p)
    from seqlab.forecast.ets import final_states
    states = final_states(y, form, q, unpack(p)[2], "hyndman")
    noise = 2.0 * torch.randn(40000, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    simulated = torch.quantile(run_forward(form, q, states, noise, "hyndman"), levels, dim=0)
    torch.testing.assert_close(simulated, analytic, rtol=0, atol=0.12)      # spread at h=10 is about 5.5
    torch.testing.assert_close(analytic[1], mean, rtol=1e-12, atol=1e-12)


def test_multiplicative_forecasts_are_simulated_reproducibly():
    y = synthetic(48, 4, 5)
    panel = Panel((Series("a", y),), season=4)
    first = ETS(ETSConfig(form="MAM", max_iterations=30, n_paths=500)).fit(panel)
    forecast = first.predict(panel, 8, quantiles=(0.1, 0.9))
    again = ETS(ETSConfig(form="MAM", max_iterations=30, n_paths=500)).fit(panel).predict(panel, 8, quantiles=(0.1, 0.9))
    torch.testing.assert_close(forecast.quantiles[0.9], again.quantiles[0.9], rtol=0, atol=0)
    assert (forecast.quantiles[0.1] < forecast.mean).all() and (forecast.mean < forecast.quantiles[0.9]).all()


# ---- configs and bad input --------------------------------------------------------------------

def test_every_config_field_is_documented_and_presets_fix_the_form():
    assert set(field_docs(ETSConfig)) == {field.name for field in dataclasses.fields(ETSConfig)}
    assert [ETS(ETSConfig(form=code)).form.code for code in ("ANN", "AAN", "AAdN")] == ["ANN", "AAN", "AAdN"]
    with pytest.raises(ConfigError, match="ETS form 'AXN'"):
        ETSConfig(form="AXN")
    with pytest.raises(ConfigError, match="criterion"):
        ETSConfig(criterion="hqic")


def test_non_positive_values_with_a_multiplicative_form_name_the_series():
    y = synthetic(40, 4)
    y[7] = -1.0
    panel = Panel((Series("sales-7", y),), season=4)
    with pytest.raises(DataError, match=r"series 'sales-7' has a non-positive value -1 at position 7; ETS form MNM"):
        ETS(ETSConfig(form="MNM")).fit(panel)
    chosen = unpack(ETS(ETSConfig(max_iterations=20)).fit(panel).fitted["sales-7"][1])[0]
    assert chosen.error == "A" and chosen.season != "M"


def test_too_short_series_and_seasonal_forms_without_a_period_are_errors():
    with pytest.raises(DataError, match=r"series 'x' has 20 values; ETS with seasonal period 12 needs at least 24"):
        ETS(ETSConfig(form="AAA")).fit(Panel((Series("x", synthetic(20)),), season=12))
    with pytest.raises(ConfigError, match="seasonal period is 1"):
        ETS(ETSConfig(form="ANA")).fit(single(synthetic(30)))
    with pytest.raises(DataError, match="needs at least 7"):
        ETS().fit(single(synthetic(5)))
    # auto falls back to the non-seasonal forms when the seasons are too few
    chosen = unpack(ETS(ETSConfig(max_iterations=20)).fit(Panel((Series("x", synthetic(20)),), season=12))
                    .fitted["x"][1])[0]
    assert chosen.season == "N"


def test_predict_after_fit_uses_the_batched_fit_without_refitting(monkeypatch):
    panel = Panel((Series("a", synthetic(30, 1, 1)), Series("b", synthetic(41, 1, 2) + 5)), season=1)
    model = ETS(ETSConfig(form="AAdN", max_iterations=30)).fit(panel)
    monkeypatch.setattr(model, "fit_many", lambda series, season: pytest.fail(f"refitted {series[0].id}"))
    forecast = model.predict(panel, 5, quantiles=(0.1, 0.9))
    assert forecast.mean.shape == (2, 5) and torch.isfinite(forecast.quantiles[0.1]).all()
