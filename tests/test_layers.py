"""The architecture, enforced: which layer may import which, and the sandbox server's import-light rule.

Layers, bottom up (README "Layout"): the core modules; `sandbox`; `data`; `training` and `evals`; `tracking`;
`pipeline`; then the entry points (`cli`, `commands`, and `flows/`). A module imports only from its own layer and the
layers below it. The check reads every import statement (also those inside functions) from the sources.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "stepcode"
CORE = {"stepcode.config", "stepcode.errors", "stepcode.anchors", "stepcode.prompts", "stepcode.jsonl",
        "stepcode.dvcdata", "stepcode.plots", "stepcode.openai_http"}

# layer -> the layers it may import (besides itself)
ALLOWED = {
    "core": {"core"},
    "sandbox": {"core"},
    "data": {"core", "sandbox"},
    "training": {"core", "sandbox", "data"},
    "evals": {"core", "sandbox", "data", "training"},
    "tracking": {"core"},
    "pipeline": {"core", "sandbox", "data", "training", "evals", "tracking"},
    "entry": {"core", "sandbox", "data", "training", "evals", "tracking", "pipeline", "entry"},
}
# Documented exceptions: (importer, imported) -> why.
EXCEPTIONS = {
    ("stepcode.config", "stepcode.training.modes"):
        "params validate `pipeline.grpo_mode` against the one list of modes (a constants-only module)",
}


def layer(module: str) -> str:
    if module in CORE or module == "stepcode":
        return "core"
    parts = module.split(".")
    if parts[0] == "flows" or parts[1] in ("cli", "commands"):
        return "entry"
    return parts[1]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def stepcode_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        found.update(n for n in names if n.startswith("stepcode.") or n.startswith("flows."))
    return found


SOURCES = sorted([*PKG.rglob("*.py"), *(ROOT / "flows").glob("*.py")])


def test_every_module_has_a_layer():
    for path in SOURCES:
        assert layer(module_name(path)) in ALLOWED, path


def test_layers_import_only_downwards():
    violations = []
    for path in SOURCES:
        importer = module_name(path)
        for imported in stepcode_imports(path):
            if imported.startswith("flows.") and layer(importer) != "entry":
                violations.append((importer, imported))
            elif layer(imported) not in ALLOWED[layer(importer)] | {layer(importer)} \
                    and (importer, imported) not in EXCEPTIONS:
                violations.append((importer, imported))
    assert not violations, "imports against the layer order (README 'Layout'): " + ", ".join(
        f"{a} -> {b}" for a, b in violations)


def test_no_module_takes_a_private_name_from_another():
    """`from stepcode.x import _name` couples two modules through a name the owner may change: make it public."""
    offenders = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stepcode"):
                offenders += [f"{module_name(path)}: {node.module}.{a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__") and a.name != "_forkloop"]
    assert not offenders, offenders


SERVER_SIDE = ["stepcode.sandbox.server", "stepcode.sandbox.runners", "stepcode.sandbox.isolation",
               "stepcode.sandbox.protocol", "stepcode.evals.reval_dynamics", "stepcode.data",
               "stepcode.data.reasoning_runner"]


@pytest.mark.parametrize("module", SERVER_SIDE)
def test_the_sandbox_server_side_stays_import_light(module):
    """A fork-server (`python -S -m stepcode.sandbox.server`) imports its runner modules; every module it imports
    enlarges each fork. They may import the standard library and one another, nothing else."""
    code = (f"import sys; before = set(sys.modules); import {module}; "
            "print(__import__('json').dumps(sorted(set(sys.modules) - before)))")
    r = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd="/",
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    loaded = json.loads(r.stdout)
    ours = {m for m in loaded if m.split(".")[0] == "stepcode"}
    allowed = {"stepcode", "stepcode.sandbox", "stepcode.evals", *SERVER_SIDE, "stepcode.sandbox._forkloop"}
    assert ours <= allowed, sorted(ours - allowed)
    stdlib = set(sys.stdlib_module_names)
    foreign = sorted(m for m in loaded if m.split(".")[0] not in stdlib and m.split(".")[0] != "stepcode"
                     and not m.startswith("_"))
    assert not foreign, foreign
