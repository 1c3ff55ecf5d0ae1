"""Every module seqlab imports at run time is the standard library, seqlab, or a declared
dependency (a plain `pip install seqlab` must be able to run every command)."""

import ast
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The import name of each dependency whose distribution is named differently.
DISTRIBUTION = {"pydoc_data": None}      # part of CPython (the built-in corpus)


def imported_modules() -> set[str]:
    names = set()
    for path in (ROOT / "src" / "seqlab").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_every_run_time_import_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {requirement.split(">")[0].split("=")[0].split("<")[0].strip().lower()
                for requirement in project["dependencies"]}
    third_party = {name for name in imported_modules()
                   if name not in sys.stdlib_module_names and name not in ("seqlab", "__future__")
                   and DISTRIBUTION.get(name, name) is not None}
    assert third_party, "the scan found no third-party import: it is broken"
    assert {"torch", "conllu"} <= third_party
    assert third_party <= declared, sorted(third_party - declared)
