"""Lineage: every stage logs to MLflow what it read, what it wrote and with which code and params.

    from stepcode.tracking.lineage import stage_run
    with stage_run("trace", params, inputs={"programs": "data/raw"}, outputs={"traces": "data/traces.jsonl"}) as run:
        ...                                   # the stage's work; outputs' digests are logged when the block ends
        run.log_metrics({"rows": 800})

A stage run nests under the active run, or under the run named by `STEPCODE_PARENT_RUN_ID` (set by the pipeline
flow, so stages running in task threads or worker processes still nest under the flow's run).
Embedded default: a sqlite store and an artifact folder inside the project (`tracking:` in params.yaml); a remote
tracking server is one setting: `MLFLOW_TRACKING_URI` in the environment wins over params. Each run carries tags
`git.commit`, `git.dirty`, `params.hash`, and `dvc.md5.<role>` for every input and output: the same md5 DVC records
in dvc.lock (a file's content md5; a directory's DVC tree md5 with its `.dir` suffix), so a run page answers "which
exact data made this". Datasets are also logged as `mlflow.data` inputs with that digest. A stage that raises marks
its run FAILED with the error in a tag; nothing is silently dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import warnings
from pathlib import Path
from typing import Iterator

_DATASET_SOURCE_WARNING = "The specified dataset source can be interpreted in multiple ways"


def file_md5(path: str | os.PathLike) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dvc_md5(path: str | os.PathLike) -> str:
    """The md5 DVC 3 records for `path`: a file's content md5, or for a directory the md5 of its sorted
    `[{"md5", "relpath"}]` listing (JSON, as dvc-data serialises trees) with the `.dir` suffix."""
    p = Path(path)
    if p.is_file():
        return file_md5(p)
    entries = sorted(({"md5": file_md5(f), "relpath": f.relative_to(p).as_posix()}
                      for f in p.rglob("*") if f.is_file()), key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def dvc_lock_digests(root: str | os.PathLike = ".") -> dict[str, dict[str, str]]:
    """Stage → {output path: md5} from dvc.lock: the digests of the last `dvc repro`, for lineage after the fact."""
    import yaml

    lock = Path(root) / "dvc.lock"
    if not lock.exists():
        return {}
    stages = yaml.safe_load(lock.read_text()).get("stages", {})
    return {name: {o["path"]: o.get("md5") for o in stage.get("outs", [])} for name, stage in stages.items()}


def git_state(root: str | os.PathLike = ".") -> dict[str, str]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {"git.commit": "unknown", "git.dirty": "unknown"}
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"git.commit": commit, "git.dirty": str(bool(dirty)).lower()}


def params_hash(params) -> str:
    return hashlib.sha256(json.dumps(params.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def configure(params):
    """Point MLflow at the configured store and experiment (env MLFLOW_TRACKING_URI wins). Returns the module."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    warnings.filterwarnings("ignore", message=_DATASET_SOURCE_WARNING)
    t = params.tracking
    uri = os.environ.get("MLFLOW_TRACKING_URI") or t.uri
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(t.experiment) is None:
        artifacts = Path(t.artifact_root).resolve()
        artifacts.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(Exception):  # created concurrently by another stage: fine
            mlflow.create_experiment(t.experiment, artifact_location=artifacts.as_uri())
    mlflow.set_experiment(t.experiment)
    return mlflow


def log_dataset(mlflow, path: str | os.PathLike, role: str, context: str, digest: str | None = None) -> str:
    """Log `path` as an mlflow.data input of the active run, named by its role, digest = its DVC md5."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    digest = digest or dvc_md5(path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DATASET_SOURCE_WARNING)
        source = resolve_dataset_source(str(Path(path).resolve()))
    mlflow.log_input(MetaDataset(source=source, name=role, digest=digest[:36]), context=context)
    return digest


@contextlib.contextmanager
def stage_run(stage: str, params, *, inputs: dict[str, str] | None = None, outputs: dict[str, str] | None = None,
              stage_params: dict | None = None, tags: dict | None = None) -> Iterator:
    """An MLflow run for one stage (nested under the active run, if any). Inputs are digested and logged now;
    outputs when the block ends without error. On an exception the run is marked FAILED and the error re-raised."""
    mlflow = configure(params)
    if mlflow.active_run() is not None:
        mlflow.start_run(run_name=stage, nested=True)
    elif os.environ.get("STEPCODE_PARENT_RUN_ID"):  # a pipeline run started elsewhere (another thread or process)
        mlflow.start_run(run_name=stage, nested=True, parent_run_id=os.environ["STEPCODE_PARENT_RUN_ID"])
    else:
        mlflow.start_run(run_name=stage)
    try:
        mlflow.set_tags({"stage": stage, "params.hash": params_hash(params), **git_state(), **(tags or {})})
        if os.environ.get("PREFECT__FLOW_RUN_ID"):
            mlflow.set_tag("prefect.flow_run_id", os.environ["PREFECT__FLOW_RUN_ID"])
        if stage_params:
            mlflow.log_params({k: str(v)[:500] for k, v in stage_params.items()})
        for role, path in (inputs or {}).items():
            mlflow.set_tag(f"dvc.md5.{role}", log_dataset(mlflow, path, role, "input"))
        yield mlflow
        for role, path in (outputs or {}).items():
            mlflow.set_tag(f"dvc.md5.{role}", log_dataset(mlflow, path, role, "output"))
    except BaseException as e:
        mlflow.set_tag("error", f"{type(e).__name__}: {e}"[:5000])
        mlflow.end_run(status="FAILED" if isinstance(e, Exception) else "KILLED")  # signals, Ctrl-C: KILLED
        raise
    else:
        mlflow.end_run(status="FINISHED")
