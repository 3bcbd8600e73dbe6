"""Reproducible lineage for real: a git + DVC clone of this repository (the code under test committed in it, a small
corpus tracked by data.dvc in its in-repo remote), two micro pipeline runs with different trace params, then:
the remote holds every digest the runs logged and git ignores what they pushed; `dvc status` is clean; `stepcode
compare` names the datasets and params that differ; `stepcode reproduce FIRST --stop-after build` gets identical
outputs in a worktree at the first run's commit; `stepcode lineage fetch FIRST --role traces` brings back the first
run's traces from the remote (the cache emptied, the working copy overwritten by the second run) with the logged md5;
an unknown run, an unknown role and an md5 the remote lost are one line each.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from itertools import islice
from pathlib import Path

import pytest
import yaml
from _prefect_runs import seed_prefect_home

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
EXPERIMENT = "lineage-repro"
GIT_ENV = dict(DVC_NO_ANALYTICS="1", PYTHONUNBUFFERED="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")


def _run(args, cwd, check=True, timeout=900) -> subprocess.CompletedProcess:
    env = dict(os.environ, **GIT_ENV)   # now: the session's MLflow store is exported by conftest's fixture
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{args} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def _stepcode(d: Path, *args: str, check=True) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "stepcode.cli", *args], d, check=check)


def _dvc(d: Path, *args: str) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "dvc", *args], d)


def _the_code_under_test(d: Path) -> None:
    """The clone gets this checkout's working tree (tracked and new files; deleted ones gone), as a commit would."""
    listed = _run(["git", "ls-files", "-co", "--exclude-standard", "-z"], ROOT).stdout.split("\0")
    for rel in filter(None, listed):
        src, dst = ROOT / rel, d / rel
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        elif dst.is_file():
            dst.unlink()


@pytest.fixture
def project(tmp_path_factory):
    from stepcode.data.synth import synth_candidates

    d = tmp_path_factory.mktemp("repro") / "project"
    _run(["git", "clone", "-q", str(ROOT), str(d)], ROOT)
    _the_code_under_test(d)
    (d / "data" / "raw").mkdir(parents=True)
    rows = list(islice(synth_candidates(seed=5), 60))
    (d / "data" / "raw" / "synth.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _dvc(d, "add", "-q", "data/raw")                     # ./data.dvc now names this corpus
    _dvc(d, "push", "-q", "data.dvc")                     # into the in-repo remote dvc-storage/ (../dvc-storage)
    assert "dvc-storage/files" not in _run(["git", "status", "--porcelain"], d).stdout   # pushed objects: ignored
    _run(["git", "add", "-f", "dvc-storage/files"], d)    # the corpus objects are committed on purpose
    p = yaml.safe_load((d / "params.yaml").read_text())
    p["build"]["benchmarks_dir"] = str(ROOT / "data" / "benchmarks")
    p["evaluate"]["cruxeval_path"] = str(ROOT / "data" / "benchmarks" / "cruxeval" / "cruxeval.jsonl")
    p["evaluate"]["max_new_tokens"] = 24
    p["tracking"]["experiment"] = EXPERIMENT
    p["train"]["profile"] = "micro"
    p["trace"]["part_rows"] = 25
    p["pipeline"].update(eval_limit=2, heldout_limit=4, model_name="model-lineage-repro")
    (d / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    _run(["git", "add", "-A"], d)
    _run(["git", "commit", "-q", "-m", "the code under test, a 60-program corpus, micro params"], d)
    seed_prefect_home(d)                                  # .prefect/ is git-ignored: the tree stays clean
    return d


def _pipeline_runs():
    import mlflow

    runs = mlflow.search_runs(experiment_names=[EXPERIMENT], output_format="list",
                              filter_string="tags.stage = 'pipeline'")
    return sorted(runs, key=lambda r: r.info.start_time)


def _traces_md5(run) -> str:
    from mlflow.tracking import MlflowClient

    from stepcode.tracking.runs import logged_datasets

    return logged_datasets(MlflowClient(), run)["trace.traces"].md5


@pytest.fixture
def two_runs(project, mlflow_store):
    d = project
    first = _stepcode(d, "pipeline", "--profile", "micro")
    # every stage recorded (hence pushed): the flow writes every output dvc.yaml declares
    assert "dvc       recorded trace, validate, build, init_model, sft, grpo, evaluate " in first.stdout, \
        first.stdout[-3000:]
    assert "dvc       pushed to remote local" in first.stdout, first.stdout[-3000:]
    assert "(clean tree)" in first.stdout
    p = yaml.safe_load((d / "params.yaml").read_text())
    p["trace"]["max_lines"] = 4                          # fewer traces pass: new traces and datasets
    (d / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    # the data stages are what this test compares, fetches and reproduces; training again would only cost time
    second = _stepcode(d, "pipeline", "--profile", "micro", "--stop-after", "build")
    assert "uncommitted changes (params.yaml; logged with the run" in second.stdout, second.stdout[-3000:]
    runs = _pipeline_runs()
    assert len(runs) == 2
    return runs, first.stdout, second.stdout


def _remote_holds_every_logged_digest(project, two_runs):
    from mlflow.tracking import MlflowClient

    from stepcode.tracking import dvcremote
    from stepcode.tracking.runs import artifact_text, logged_datasets

    (run1, run2), _, _ = two_runs
    client = MlflowClient()
    assert run1.data.tags["git.dirty"] == "false" and run2.data.tags["git.dirty"] == "true"
    assert run2.data.tags["git.dirty_files"] == "params.yaml"   # dvc.lock, metrics: what the pipeline writes
    assert run1.data.tags["git.commit"] == run2.data.tags["git.commit"]
    assert _traces_md5(run1) != _traces_md5(run2)
    digests = set()
    for run in (run1, run2):
        tags = client.get_run(run.info.run_id).data.tags
        assert tags["dvc.pushed"] == "pushed" and "dvc.remote.missing" not in tags
        lock = json.loads(artifact_text(client, run.info.run_id, "lineage/dvc.lock.json"))
        assert list(lock) == ["trace", "validate", "build"] + (
            ["init_model", "sft", "grpo", "evaluate"] if run is run1 else [])
        params = yaml.safe_load(artifact_text(client, run.info.run_id, "lineage/params.yaml"))
        assert params["trace"]["max_lines"] == (10 if run is run1 else 4)
        rows = json.loads(artifact_text(client, run.info.run_id, "lineage/datasets.json"))
        assert rows and all(r["on_remote"] for r in rows)
        logged = logged_datasets(client, run)
        assert {"trace.traces", "build.dataset"} | ({"sft.model", "grpo.model"} if run is run1 else set()) <= set(
            logged)
        digests |= {d.md5 for d in logged.values()}
        assert lock["build"]["outs"][0]["md5"] == logged["build.dataset"].md5
    assert dvcremote.absent(project, digests) == set()   # asked of the remote itself, not of what the runs say
    assert "Data and pipelines are up to date" in _dvc(project, "status", "trace", "validate", "build").stdout
    assert _run(["git", "status", "--porcelain", "dvc-storage"], project).stdout == ""


def _compare_names_the_datasets_and_params_that_differ(project, two_runs):
    (run1, run2), _, _ = two_runs
    out = _stepcode(project, "compare", run1.info.run_id, run2.info.run_id, "--no-log",
                    "--out", str(project / "reports" / "cmp.png")).stdout
    assert "dataset trace.traces" in out and "params.yaml trace.max_lines" in out
    assert "differ in: datasets " in out and "trace.traces = validate.traces" in out and "; params trace" in out
    assert "dataset trace.programs" not in out          # same corpus


def _reproduce_the_first_run_up_to_build(project, two_runs):
    (run1, _), _, _ = two_runs
    done = _stepcode(project, "reproduce", run1.info.run_id, "--stop-after", "build")
    verdict = re.search(rf"identical: all (\d+) outputs of trace, validate, build match run {run1.info.run_id}",
                        done.stdout)
    assert verdict and int(verdict.group(1)) >= 5, done.stdout[-3000:] + done.stderr[-3000:]
    assert "identical  data/dataset" in done.stdout and "identical  data/traces" in done.stdout
    assert not [line for line in done.stderr.splitlines() if line.startswith(("warning:", "note:"))], done.stderr
    assert _run(["git", "worktree", "list"], project).stdout.count("\n") == 1   # the worktree is gone


def _fetch_the_first_runs_traces_from_the_remote(project, two_runs, tmp_path):
    from stepcode.tracking.lineage import dvc_md5

    (run1, run2), _, _ = two_runs
    logged = _traces_md5(run1)
    assert dvc_md5(project / "data" / "traces") == _traces_md5(run2)   # the working copy is the second run's
    shutil.rmtree(project / ".dvc" / "cache")                                   # only the remote has the first
    done = _stepcode(project, "lineage", "fetch", run1.info.run_id, "--role", "traces", "-o", str(tmp_path / "got"))
    assert dvc_md5(tmp_path / "got" / "traces") == logged
    assert "trace.traces, validate.traces" in done.stdout and "md5 verified" in done.stdout
    model = _stepcode(project, "lineage", "fetch", run1.info.run_id, "--role", "sft.model", "-o", str(tmp_path / "m"))
    assert (tmp_path / "m" / "sft" / "config.json").is_file(), model.stdout

    for args, words in ((["nope"], "unknown run id 'nope'"),
                        ([run1.info.run_id, "--role", "weights"], "--role weights: no role 'weights'"),
                        ([run1.info.run_id, "--role", "dataset"], "is neither in the DVC remote")):
        if "neither" in words:   # the remote loses the first run's dataset listing
            from mlflow.tracking import MlflowClient

            from stepcode.tracking.runs import logged_datasets

            md5 = logged_datasets(MlflowClient(), run1)["build.dataset"].md5
            (project / "dvc-storage" / "files" / "md5" / md5[:2] / md5[2:]).unlink()
        bad = _stepcode(project, "lineage", "fetch", *args, "-o", str(tmp_path / "bad"), check=False)
        assert bad.returncode == 2 and words in bad.stderr, bad.stderr
        assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_two_runs_then_remote_compare_reproduce_fetch(project, two_runs, tmp_path):
    """One test, in this order: fetching empties the cache and takes an object from the remote at the end."""
    _remote_holds_every_logged_digest(project, two_runs)
    _compare_names_the_datasets_and_params_that_differ(project, two_runs)
    _reproduce_the_first_run_up_to_build(project, two_runs)
    _fetch_the_first_runs_traces_from_the_remote(project, two_runs, tmp_path)
