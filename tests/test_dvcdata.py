"""A DVC-tracked input that is missing (a fresh clone) is pulled from the remote by itself, through real DVC; what
cannot be pulled, or is not tracked, is one line that names the command to run. Then the pre-flight check of a
pipeline run: bad options and missing inputs stop it before any work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stepcode.config import ConfigError, Params
from stepcode.dvcdata import ensure_present, tracking_file
from stepcode.errors import MissingInput, UserError
from stepcode.pipeline.preflight import check_pipeline

ROOT = Path(__file__).resolve().parent.parent


def _run(args, cwd):
    env = dict(os.environ, DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    subprocess.run(args, cwd=cwd, env=env, check=True, capture_output=True, text=True, timeout=120)


@pytest.fixture
def project(tmp_path):
    """A git + DVC project whose data/raw is tracked by ./data.dvc (as ours is) and pushed to a local remote, then
    removed from the workspace and the cache: what a fresh clone has."""
    d = tmp_path / "project"
    (d / "data" / "raw").mkdir(parents=True)
    row = {"id": "p1", "code": "def f(x):\n    return x + 1", "input": "1", "entry_point": "f"}
    (d / "data" / "raw" / "corpus.jsonl").write_text(json.dumps(row) + "\n")
    dvc = [sys.executable, "-m", "dvc"]
    _run(["git", "init", "-q"], d)
    _run(dvc + ["init", "-q"], d)
    _run(dvc + ["remote", "add", "-d", "local", str(tmp_path / "remote")], d)
    _run(dvc + ["add", "data/raw", "-q"], d)
    tracked = (d / "data" / "raw.dvc").read_text().replace("path: raw", "path: data/raw")
    (d / "data" / "raw.dvc").unlink()
    (d / "data.dvc").write_text(tracked)                              # ours sits at the root, above what it tracks
    _run(dvc + ["push", "-q"], d)
    shutil.rmtree(d / "data" / "raw")
    shutil.rmtree(d / ".dvc" / "cache")
    return d


def test_a_missing_tracked_input_is_pulled_and_says_so(project):
    assert tracking_file(project / "data" / "raw") == project / "data.dvc"
    assert tracking_file(project / "data" / "raw" / "corpus.jsonl") == project / "data.dvc"
    said = []
    assert ensure_present(project / "data" / "raw", echo=said.append) == project / "data" / "raw"
    assert json.loads((project / "data" / "raw" / "corpus.jsonl").read_text())["id"] == "p1"
    assert len(said) == 1 and "pulling it from the DVC remote (data.dvc)" in said[0]
    said.clear()
    ensure_present(project / "data" / "raw", echo=said.append)      # present now: nothing to say, nothing pulled
    assert said == []


def test_a_pull_that_fails_names_the_command(project, tmp_path):
    shutil.rmtree(tmp_path / "remote")                               # the remote lost its data
    with pytest.raises(MissingInput) as e:
        ensure_present(project / "data" / "raw", echo=lambda _: None)
    message = str(e.value)
    assert "`dvc pull data.dvc`" in message and "\n" not in message


def test_an_untracked_missing_input_is_one_line(project):
    assert tracking_file(project / "data" / "traces") is None
    with pytest.raises(MissingInput, match="no .dvc file tracks it"):
        ensure_present(project / "data" / "traces")
    assert isinstance(MissingInput("x"), FileNotFoundError)           # callers that catch OSErrors still do


def test_the_trace_stage_pulls_its_corpus(project):
    from stepcode.data.traces import read_corpus

    rows = read_corpus(project / "data" / "raw")
    assert [r["id"] for r in rows] == ["p1"]


# --- the pipeline's pre-flight check ----------------------------------------------------------------------------

def test_preflight_rejects_a_bad_stop_point_and_profile(project):
    with pytest.raises(UserError, match="--stop-after 'bogus': choose one of trace, validate, build, sft, grpo"):
        check_pipeline(Params(), None, "bogus", project)
    with pytest.raises(ConfigError, match="unknown training profile 'nope': choose one of .*micro.*tiny-cpu"):
        check_pipeline(Params(), "nope", None, project)
    assert not (project / "data" / "raw").exists()                   # rejected before anything was fetched


def test_preflight_fetches_the_corpus_and_checks_what_later_stages_read(project):
    data = ROOT / "data" / "benchmarks"
    params = Params.model_validate({"build": {"benchmarks_dir": str(data)},
                                    "evaluate": {"cruxeval_path": str(data / "cruxeval" / "cruxeval.jsonl")}})
    check_pipeline(params, "micro", None, project)                   # everything is there once the corpus is pulled
    assert (project / "data" / "raw" / "corpus.jsonl").is_file()
    nowhere = params.model_copy(update={"build": params.build.model_copy(update={"benchmarks_dir": "nowhere"})})
    check_pipeline(nowhere, "micro", "validate", project)            # a run that stops before build needs no benchmarks
    with pytest.raises(MissingInput, match="benchmark 'cruxeval': no such file nowhere/cruxeval/cruxeval.jsonl"):
        check_pipeline(nowhere, "micro", "build", project)
    lcb_stepcode = params.model_copy(update={"pipeline": params.pipeline.model_copy(update={
        "eval_benchmarks": ("reval",), "eval_prompt": "stepcode"})})
    with pytest.raises(UserError, match="pipeline.eval_benchmarks / eval_prompt: --prompt stepcode runs on CRUXEval"):
        check_pipeline(lcb_stepcode, "micro", None, project)         # refused before a model loads
    no_lcb = params.model_copy(update={"pipeline": params.pipeline.model_copy(update={
        "eval_benchmarks": ("lcb",), "eval_prompt": "official"}),
        "evaluate": params.evaluate.model_copy(update={"lcb_path": "none.jsonl"})})
    check_pipeline(no_lcb, "micro", "grpo", project)                 # stops before the evaluation
    with pytest.raises(MissingInput, match="LiveCodeBench execution data not found"):
        check_pipeline(no_lcb, "micro", None, project)
    with pytest.raises(MissingInput, match="not a local Hugging Face model folder"):
        check_pipeline(params, "qwen7b-gpu", None, project)          # a 7B profile never builds a stand-in model
