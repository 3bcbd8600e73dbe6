"""`dvc repro` end to end in a temporary git repository: the real DVC, the real stages, a small corpus.

The data stages run once per module (`built`); each test then works on its own copy of that repository (`repo`), so
no test sees what another changed and any one of them passes alone or in any order."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stepcode.tracking.lineage import dvc_lock_digests, dvc_md5

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _run(args, cwd, env, check=True):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


DATA_STAGES = ("trace", "validate", "build")
OUTPUTS = ("data/traces", "metrics/trace.json", "reports/validation/summary.json",
           "reports/validation/quarantine.jsonl", "data/dataset/sft.jsonl", "data/dataset/rl.jsonl",
           "data/dataset/heldout.jsonl", "data/dataset/stats.json", "metrics/build.json", "dvc.lock")


@pytest.fixture(scope="module")
def built(tmp_path_factory, mlflow_store):
    """A fresh git+DVC repository holding this project's dvc.yaml, its code, and 40 synthesized programs, after one
    `dvc repro build` (the data stages; train/evaluate are minutes of CPU). Tests never change it: see `repo`."""
    from itertools import islice

    from stepcode.data.synth import synth_candidates

    d = tmp_path_factory.mktemp("dvcrepo")
    shutil.copytree(ROOT / "stepcode", d / "stepcode", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", d / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["build"]["benchmarks_dir"] = str(ROOT / "data" / "benchmarks")   # the copy lives elsewhere
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    raw = d / "data" / "raw"
    raw.mkdir(parents=True)
    rows = list(islice(synth_candidates(seed=11), 40))
    (raw / "synth.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", DVC_NO_ANALYTICS="1",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    dvc = [sys.executable, "-m", "dvc"]
    _run(["git", "init", "-q"], d, env)
    _run(dvc + ["init", "-q"], d, env)
    _run(dvc + ["config", "core.analytics", "false"], d, env)
    _run(dvc + ["remote", "add", "-d", "local", str(tmp_path_factory.mktemp("remote"))], d, env)
    _run(dvc + ["add", "data/raw", "-q"], d, env)
    _run(["git", "add", "-A"], d, env)
    _run(["git", "commit", "-qm", "seed corpus"], d, env)
    first = _run(dvc + ["repro", "build"], d, env).stdout
    return {"dir": d, "env": env, "dvc": dvc, "first_repro": first}


@pytest.fixture
def repo(built, tmp_path):
    """This test's own copy of the built repository (file times kept; DVC's lock and state files in .dvc/tmp are
    left behind, DVC makes new ones)."""
    d = tmp_path / "repo"
    shutil.copytree(built["dir"], d, symlinks=True, ignore=lambda folder, names: ["tmp"] if folder.endswith(".dvc")
                    else [])
    return dict(built, dir=d)


def _mtimes(d: Path) -> dict[str, int]:
    return {path: (d / path).stat().st_mtime_ns for path in OUTPUTS}


def test_repro_runs_the_stages_then_is_a_no_op(repo):
    d, env, dvc = repo["dir"], repo["env"], repo["dvc"]
    for stage in DATA_STAGES:
        assert f"Running stage '{stage}'" in repo["first_repro"], repo["first_repro"][-3000:]
    for path in OUTPUTS:
        assert (d / path).exists(), path
    assert json.loads((d / "reports/validation/summary.json").read_text())["success"] is True
    # The digests DVC recorded are the ones stepcode.tracking.lineage computes (what MLflow lineage records).
    digests = dvc_lock_digests(d)
    assert digests["trace"]["data/traces"] == dvc_md5(d / "data/traces")
    assert digests["build"]["data/dataset"] == dvc_md5(d / "data/dataset")

    # Nothing changed, so nothing runs: DVC says so for every stage, and no output (nor dvc.lock) is rewritten.
    before = _mtimes(d)
    out = _run(dvc + ["repro", "build"], d, env).stdout
    assert "Running stage" not in out, out[-3000:]
    for stage in DATA_STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in out, out[-3000:]
    assert _mtimes(d) == before

    status = _run(dvc + ["status", "build"], d, env).stdout
    assert "up to date" in status


def test_a_changed_param_reruns_only_what_depends_on_it(repo):
    d, env, dvc = repo["dir"], repo["env"], repo["dvc"]
    params = yaml.safe_load((d / "params.yaml").read_text())
    params["build"]["heldout_fraction"] = 0.3
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run(dvc + ["repro", "build"], d, env).stdout
    assert "Running stage 'build'" in out
    assert "Running stage 'trace'" not in out and "Running stage 'validate'" not in out


def test_a_failing_gate_stops_the_pipeline_before_build(repo):
    """The gate fails, `build` never runs, and the dataset of the last good run (`built`'s) is left as it was."""
    d, env, dvc = repo["dir"], repo["env"], repo["dvc"]
    params = yaml.safe_load((d / "params.yaml").read_text())
    params["validate"]["min_mean_anchors"] = 7.5      # the corpus cannot meet it
    params["validate"]["max_mean_anchors"] = 8.0
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = (d / "data/dataset/sft.jsonl").read_bytes()
    proc = _run(dvc + ["repro", "build"], d, env, check=False)
    assert proc.returncode != 0
    assert "ok_mean_anchors" in proc.stdout + proc.stderr
    assert "Running stage 'build'" not in proc.stdout
    assert (d / "data/dataset/sft.jsonl").read_bytes() == before
    quarantine = (d / "reports/validation/quarantine.jsonl").read_text().splitlines()
    assert quarantine and all("ok_mean_anchors" in json.loads(q)["failed_expectations"] for q in quarantine)
