"""The one stage spec (stepcode/pipeline/spec.py) is the one map of what each stage depends on.

- dvc.yaml is generated from it (a hand edit, or a spec edit without regenerating, fails here);
- every module a stage's code imports when it runs is in the stage's code;
- a real edit to any module of a stage's code makes `dvc status` report that stage, and only the stages whose code
  holds that module (DVC itself decides, on a copy of the project's dvc.yaml, dvc.lock, params and sources).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stepcode.pipeline import spec

ROOT = Path(__file__).resolve().parents[1]


def test_dvc_yaml_is_generated_from_the_spec():
    assert (ROOT / "dvc.yaml").read_text() == spec.render_dvc_yaml(), \
        "dvc.yaml differs from the stage spec: run `python -m stepcode.pipeline.spec --write` (then `dvc repro`)"


def test_the_flow_and_dvc_read_the_same_map():
    import flows.pipeline as fp

    for stage in spec.STAGES:
        assert fp._code_version(stage.task) == spec.code_digest(stage)
    full = {"train": {"profile": "micro", "profiles": {"micro": {"seed": 1}}},
            "pipeline": {"grpo_mode": "step"}, "sandbox": {"workers": 3}, "trace": {}}
    picked = json.loads(fp._relevant("grpo", json.dumps(full)))
    assert picked == {"train.profiles.micro": {"seed": 1}, "pipeline.grpo_mode": "step", "sandbox": {"workers": 3},
                      "trace": {}}
    # a task's own profile argument wins over the configured one
    assert "train.profiles.tiny-cpu" in json.loads(fp._relevant("sft", json.dumps(full), "tiny-cpu"))


@pytest.mark.parametrize("stage", [s.name for s in spec.STAGES])
def test_what_a_stage_imports_at_run_time_is_in_its_code(stage):
    """Import the stage's modules in a fresh interpreter: every stepcode module loaded is in the stage's code."""
    s = spec.BY_NAME[stage]
    code = (f"import sys; import {', '.join(s.runs)}; "
            "print(' '.join(m for m in sys.modules if m.startswith('stepcode.')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    loaded = {m for m in r.stdout.split() if spec._followed(m) and spec._module_file(m) is not None}
    assert loaded <= spec.import_closure(s.runs), sorted(loaded - spec.import_closure(s.runs))


def test_the_closure_follows_imports_inside_functions_and_whole_packages():
    closure = spec.import_closure(("stepcode.data.traces",))
    assert "stepcode.anchors" in closure                      # imported inside trace functions
    assert "stepcode.sandbox.server" in closure               # started by name: the whole sandbox package counts
    assert not any(m.startswith("stepcode.tracking") for m in closure)
    assert spec.code_deps("trace").count("stepcode/sandbox") == 1


def _project_copy(tmp_path: Path) -> Path:
    d = tmp_path / "proj"
    d.mkdir()
    for name in ("dvc.yaml", "dvc.lock", "params.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, d / name)
    shutil.copytree(ROOT / "stepcode", d / "stepcode",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"))
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=d, check=True)
    return d


def _changed_code_deps(repo) -> dict[str, set[str]]:
    """What `dvc status` reports: for each stage, the code deps (files or folders) it says were modified."""
    changed: dict[str, set[str]] = {}
    for key, entries in repo.status().items():
        for entry in entries:
            if isinstance(entry, dict):
                paths = {path for path, state in entry.get("changed deps", {}).items()
                         if path.startswith("stepcode") and state == "modified"}
                if paths:
                    changed.setdefault(key.split(":")[-1], set()).update(paths)
    return changed


def _stages_with_changed_code(repo, d: Path) -> set[str]:
    return set(_changed_code_deps(repo))


def _edited(f: Path) -> bytes:
    original = f.read_bytes()
    f.write_bytes(original + b"\n# an edit\n" if f.suffix == ".py" else original + b"\n/* an edit */\n")
    return original


@pytest.mark.slow
def test_an_edit_to_any_module_of_a_stage_makes_dvc_report_that_stage(tmp_path):
    """For every source file: the stages `dvc status` reports after a real edit to it are exactly the stages whose
    code holds it. DVC is asked twice over, not once per file: (1) with every source edited at once, it names for each
    stage the code deps (files, folders) that changed; a file dep it names is that file's edit, a folder dep it names
    stands for each file under it; (2) each file under a folder dep is then edited alone, so DVC itself says the
    folder counts that file (not ignored, part of its hash)."""
    from dvc.repo import Repo

    d = _project_copy(tmp_path)
    repo = Repo(str(d))
    assert _stages_with_changed_code(repo, d) == set(), \
        "dvc.lock is stale for the code deps: run `dvc repro` (or `dvc commit -f` for edits without behaviour)"
    owners: dict[Path, set[str]] = {}
    for s in spec.STAGES:
        for f in spec.code_files(s):
            owners.setdefault(f.relative_to(spec.PACKAGE), set()).add(s.name)
    every_source = sorted(p.relative_to(d / "stepcode") for p in (d / "stepcode").rglob("*")
                          if p.suffix in (".py", ".c"))
    assert set(owners) <= set(every_source)

    def covers(dep: str, rel: Path) -> bool:     # dep: a path DVC reported, relative to the project
        return Path(dep) == Path("stepcode") / rel or Path(dep) in (Path("stepcode") / rel).parents

    originals = {rel: _edited(d / "stepcode" / rel) for rel in every_source}
    try:
        changed = _changed_code_deps(Repo(str(d)))
    finally:
        for rel, original in originals.items():
            (d / "stepcode" / rel).write_bytes(original)
    folders = {dep for deps in changed.values() for dep in deps if (d / dep).is_dir()}
    for rel in every_source:
        reported = {stage for stage, deps in changed.items() if any(covers(dep, rel) for dep in deps)}
        assert reported == owners.get(rel, set()), (str(rel), reported, owners.get(rel, set()))
    # each file under a folder dep, edited alone: DVC reports the stages whose code holds that folder
    under_folders = [rel for rel in every_source if any(covers(dep, rel) for dep in folders)]
    assert under_folders or not folders
    for rel in under_folders:
        f = d / "stepcode" / rel
        original = _edited(f)
        try:
            reported = _stages_with_changed_code(Repo(str(d)), d)
        finally:
            f.write_bytes(original)
        assert reported == owners.get(rel, set()), (str(rel), reported, owners.get(rel, set()))
