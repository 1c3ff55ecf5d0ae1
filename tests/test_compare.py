"""compare: one harness for every task; the budget covers the whole comparison and is shared
as documented; everything that can be checked is checked before any model starts."""

import importlib

import pytest

from seqlab.errors import ConfigError, DataError
from seqlab.report import ModelResult

compare_module = importlib.import_module("seqlab.compare")


@pytest.fixture
def calls(monkeypatch):
    """Replace the per-model process by a recorder that returns a made-up result at once."""
    recorded = []

    def fake(function, task, options, name, share, started, train_options, overrides, progress, threads, init_from=None,
             scaling=None):
        recorded.append((name, share))
        trains = "fit" if name in ("ngram", "markov", "hmm") else "trainer"
        return ModelResult(name=name, trains=trains, metrics={"bpc": 2.0, "perplexity": 4.0, "wall_seconds": 1.0},
                           history=[{"step": 1, "train_seconds": 1.0, "valid_bpc": 2.0}])

    monkeypatch.setattr(compare_module, "run_in_fresh_process", fake)
    return recorded


def test_fitted_models_go_first_and_the_trained_share_what_is_left(calls, tmp_path):
    report = compare_module.compare("lm", ["lstm", "ngram", "transformer", "markov"], {"context": 16},
                                    budget_seconds=40.0, out_dir=tmp_path / "report", progress=False)
    assert [name for name, _ in calls] == ["ngram", "markov", "lstm", "transformer"]
    shares = dict(calls)
    assert shares["ngram"] == shares["markov"] == 10.0                       # at most a quarter each
    # The fitted ones took no time here, so the trained ones split nearly all of the 40 s.
    assert shares["transformer"] == shares["lstm"] and 18.0 < shares["lstm"] <= 19.0   # halves of what is left
    assert [result.name for result in report.results] == ["lstm", "ngram", "transformer", "markov"]
    assert report.environment["budget seconds"] == 40.0 and "torch" in report.environment
    assert "wall s" in report.table()
    assert (tmp_path / "report" / "report.html").is_file()


@pytest.mark.parametrize("arguments, error, message", [
    ({"task": "lm", "models": ["nope"]}, ConfigError, "unknown model 'nope'"),
    ({"task": "tag", "models": ["lstm"]}, ConfigError, "unknown model 'lstm'"),
    ({"task": "tag"}, ConfigError, "--task tag needs --data"),
    ({"task": "classify", "task_options": {"data": "missing.tsv"}}, DataError, "is not listops, a TSV file"),
    ({"task": "lm", "budget_seconds": -1.0}, ConfigError, "budget must be > 0"),
    ({"task": "lm", "train_options": {"steps": 0}}, ConfigError, "steps must be >= 1"),
    ({"task": "lm", "models": []}, ConfigError, "no models to compare"),
])
def test_bad_comparisons_fail_before_any_model_starts(calls, arguments, error, message):
    with pytest.raises(error, match=message):
        compare_module.compare(**{"progress": False, **arguments})
    assert calls == []


def test_a_report_never_replaces_the_users_files(calls, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("my own notes")
    with pytest.raises(ConfigError, match="holds a report.md that seqlab did not write"):
        compare_module.compare("lm", ["ngram"], {"context": 16}, out_dir=out, progress=False)
    assert (out / "report.md").read_text() == "my own notes" and calls == []
    again = tmp_path / "ours"
    for _ in range(2):                       # seqlab's own report is replaced by the next one
        compare_module.compare("lm", ["ngram"], {"context": 16}, out_dir=again, progress=False)
    assert (again / "report.md").read_text().startswith("# seqlab compare")


def test_reproduce_into_a_file_is_a_clear_error(tmp_path, capsys):
    from helpers import fails_cleanly

    (tmp_path / "a-file").write_text("x")
    fails_cleanly(capsys, ["reproduce", "adding-problem", "--quick", "--out", str(tmp_path / "a-file")], "is a file")
