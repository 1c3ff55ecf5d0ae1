"""``seqlab reproduce NAME``: one module per claim from the literature, each with a ``run``.

Every experiment module defines ``CLAIM`` (one line: what the literature says and where) and
``run(out_dir, quick, progress) -> str`` that trains what it needs, writes its plots into
``out_dir`` and returns the printed report.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from seqlab.errors import ConfigError

EXPERIMENTS = {
    "adding-problem": "seqlab.experiments.adding_problem",
}


def get(name: str) -> ModuleType:
    """The experiment module registered as ``name``."""
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name])
