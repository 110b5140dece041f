"""The import rules of docs/architecture.md: each package imports only the layers below it."""

import ast
import sys
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent / "rlhf_jax"
PACKAGES = ("infra", "models", "data", "algorithms", "labelling", "stages", "experiments")
# What each part of rlhf_jax may import (besides itself), as docs/architecture.md states.
BELOW = {"infra": set(), "models": set(), "data": {"infra"},
         "algorithms": {"models", "infra"},
         "labelling": {"data", "models", "infra"},
         "config_lib": {"algorithms", "data"},
         "config_check": {"config_lib", "algorithms", "data", "infra"},
         "config_guard": {"config_lib", "infra"},
         "stages": {"infra", "models", "data", "algorithms", "labelling", "config_lib",
                    "config_check", "config_guard"}}
# The runners: each imports the stages and what lies below them, never another runner.
for _runner in ("pipeline", "members", "memory"):
    BELOW[_runner] = BELOW["stages"] | {"stages"}
# The tools built on the runners (sweeps, figures of many runs) sit on top.
ANYTHING = {"experiments"}


def part_of(module: str) -> str:
    """`rlhf_jax.stages.eval` -> `stages`; `rlhf_jax.config_lib` -> `config_lib`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(path: pathlib.Path):
    """Every rlhf_jax module `path` imports, nested imports included."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.startswith("rlhf_jax"):
            if node.module in ("rlhf_jax", *(f"rlhf_jax.{p}" for p in PACKAGES)):
                yield from (f"{node.module}.{a.name}" for a in node.names)
            else:
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("rlhf_jax."))


def violations():
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        module = "rlhf_jax." + ".".join(path.relative_to(ROOT).with_suffix("").parts)
        here = part_of(module)
        if here in ANYTHING or here in ("", "__init__"):
            continue
        for target in imports(path):
            there = part_of(target)
            if there != here and there not in BELOW[here]:
                found.append(f"{module} imports {target}")
    return found


def nested_project_imports():
    """`module:line` of every rlhf_jax import inside a function."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found += [f"{path.relative_to(ROOT)}:{node.lineno}" for node in ast.walk(fn)
                          if isinstance(node, ast.ImportFrom) and node.level == 0
                          and (node.module or "").startswith("rlhf_jax")]
    return found


def test_project_imports_sit_at_the_top_of_files():
    # The top of a file says what it depends on. The label server's command line
    # loads its web app and file formats only for the subcommand that uses them.
    assert [f for f in nested_project_imports()
            if not f.startswith("labelling/label_server/__main__.py:")] == []


def test_every_package_imports_only_the_layers_below():
    assert violations() == []


def test_the_rules_cover_every_package():
    parts = {p.name if p.is_dir() else p.stem for p in ROOT.iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"}
    assert parts - {"__init__"} == set(BELOW) | ANYTHING


def test_a_forbidden_import_is_reported(tmp_path, monkeypatch):
    # The check itself can fail: a pure algorithm reaching up into a trainer.
    fake = tmp_path / "rlhf_jax"
    (fake / "algorithms").mkdir(parents=True)
    (fake / "algorithms" / "bad.py").write_text("from rlhf_jax.stages import reward\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake)
    assert violations() == ["rlhf_jax.algorithms.bad imports rlhf_jax.stages.reward"]
