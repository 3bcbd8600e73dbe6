"""Lineage: every stage logs to MLflow what it read, what it wrote and with which code and params.

    from stepcode.tracking.lineage import parent_run, stage_run
    with parent_run("pipeline", params, tags={"profile": "micro"}):    # one run over several stages (optional)
        with stage_run("trace", params, inputs={"programs": "data/raw"},
                       outputs={"traces": "data/traces.jsonl"}) as mlflow:
            ...                               # the stage's work; outputs' digests are logged when the block ends
            if mlflow is not None:            # None: tracking is off (params tracking.enabled)
                mlflow.log_metrics({"rows": 800})

These two context managers are the only places that start an MLflow run; with `tracking.enabled: false` both yield
None and log nothing, so a caller never needs a switch of its own. A stage run nests under the active run, or under
the run named by `STEPCODE_PARENT_RUN_ID`, which `parent_run` exports while its block runs (so stages running in
task threads or worker processes still nest under it) and restores afterwards.
Embedded default: a sqlite store and an artifact folder inside the project (`tracking:` in params.yaml); a remote
tracking server is one setting: `MLFLOW_TRACKING_URI` in the environment wins over params. With a server (an http or
https URI) the experiment is created without an artifact location, so the server's artifact store decides where
artifacts go (`mlflow server --artifacts-destination ...`, proxied to every client); `tracking.artifact_root` is
only for a local store (sqlite, file, a database URI), where nothing else would decide. The experiment gets a
description (`EXPERIMENT_DESCRIPTION`, the UI's "Description") unless it has one. Stage runs log system metrics
(`system/*`: CPU, memory, disk, network; GPU with nvidia-ml-py) every `SYSTEM_METRICS_INTERVAL_S` seconds while they
run (params tracking.system_metrics; env MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides the interval), and every
stage run ends with a `seconds` metric: the wall time of its work. Each run carries tags
`git.commit`, `git.dirty` (+ `git.dirty_files`; what the pipeline itself writes, dvc.lock and the outputs dvc.yaml
declares, does not count), `params.hash`, and `dvc.md5.<role>` for every input and output: the same md5 DVC records
in dvc.lock (a file's content md5; a directory's DVC tree md5 with its `.dir` suffix), so a run page answers "which
exact data made this". Datasets are also logged as `mlflow.data` inputs with that digest. A block that raises marks
its run FAILED (KILLED for a signal or Ctrl-C: a BaseException that is not an Exception) with the error in a tag;
nothing is silently dropped.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import importlib.util
import json
import logging
import os
import re
import subprocess
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

_DATASET_SOURCE_WARNING = "The specified dataset source can be interpreted in multiple ways"
PARENT_ENV = "STEPCODE_PARENT_RUN_ID"   # the run that stage runs started elsewhere (threads, processes) nest under
SERVER_SCHEMES = ("http", "https", "databricks")   # a tracking server: its artifact store decides where they go
# Short stages (a micro trace takes a second) get a few samples, long ones a sample every 2 s (1800 an hour, fine for
# a sqlite store); MLflow's default, 10 s, leaves most stages of a small run without any. MLflow drops the samples
# of the last, unfinished interval.
SYSTEM_METRICS_INTERVAL_S = 2
NOTE_TAG = "mlflow.note.content"      # an experiment's (or a run's) description in the MLflow UI; markdown
EXPERIMENT_DESCRIPTION = """StepCode: teaching code LLMs to reason about execution step by step.

One **pipeline** run per `stepcode pipeline` or `stepcode retrain`, its stages nested under it: `trace` → `validate` \
(the data gate; its Data Docs under `data_docs/`) → `build` → `init-model` → `sft` → `grpo` → `evaluate` → \
`register` (the model version, alias `candidate`). A stage started alone (`stepcode trace ...`, `dvc repro`) is a \
top-level run; an `ablation` run (`stepcode study`) is the parent of its arms, a `suite` run of its benchmarks.

Every run is tagged `stage`, `git.commit`, `git.dirty`, `params.hash`, and `dvc.md5.<role>` for each dataset or \
model it read or wrote (the md5s of dvc.lock). Metrics: the stage's counts and scores, `seconds` (the wall time of \
its work), `system/*` (CPU, memory, disk, network, GPU while it ran). Held-out `*_acc` metrics are fractions \
(0-1); benchmark `pass_at_*` and `*_step_accuracy` are percentages.

Compare runs: `stepcode compare RUN_ID RUN_ID`; get a run's exact data back: `stepcode lineage fetch RUN_ID -o DIR`; \
rerun it: `stepcode reproduce RUN_ID`."""


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


def pipeline_written(root: str | os.PathLike = ".") -> list[str]:
    """Patterns of the tracked files a pipeline run itself rewrites: dvc.lock and the outputs and metrics dvc.yaml
    declares (`${...}` matching anything). Changes to them are results, not a dirty tree."""
    import yaml

    path = Path(root) / "dvc.yaml"
    try:
        stages = (yaml.safe_load(path.read_text()) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError):
        stages = {}
    outs = [o for stage in stages.values() for key in ("outs", "metrics", "plots") for o in stage.get(key) or []]
    names = [next(iter(o)) if isinstance(o, dict) else str(o) for o in outs]
    return ["dvc.lock", *(re.sub(r"\$\{[^}]*\}", "*", n) for n in names)]


def dirty_files(porcelain: str, written: list[str]) -> list[str]:
    """The changed tracked files of `git status --porcelain` output, but for those matching `written`."""
    changed = [line[3:].split(" -> ")[-1].strip('"') for line in porcelain.splitlines() if len(line) > 3]
    return [f for f in changed if not any(fnmatch.fnmatch(f, w) or f.startswith(w.rstrip("/") + "/")
                                          for w in written)]


def git_state(root: str | os.PathLike = ".") -> dict[str, str]:
    """`git.commit`, `git.dirty` (a tracked file differs from the commit, other than what the pipeline itself writes:
    dvc.lock, declared outputs and metrics) and, when dirty, `git.dirty_files` (the first 20)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""

    commit = git("rev-parse", "HEAD").strip()
    if not commit:
        return {"git.commit": "unknown", "git.dirty": "unknown"}
    dirty = dirty_files(git("status", "--porcelain", "--untracked-files=no"), pipeline_written(root))
    state = {"git.commit": commit, "git.dirty": str(bool(dirty)).lower()}
    if dirty:
        state["git.dirty_files"] = ",".join(dirty[:20]) + (f",... ({len(dirty)} files)" if len(dirty) > 20 else "")
    return state


def params_hash(params) -> str:
    return hashlib.sha256(json.dumps(params.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def is_server(uri: str) -> bool:
    """Whether a tracking URI names a tracking server (http/https, Databricks), which has its own artifact store."""
    return uri.split(":", 1)[0].lower() in SERVER_SCHEMES


def configure(params):
    """Point MLflow at the configured store and experiment (env MLFLOW_TRACKING_URI wins). Returns the module.

    First logs the runs that stages started alone recorded and a background process has not logged yet
    (`stepcode.tracking.pending`), so whoever reads the store next sees them. A missing experiment is created with
    the description and, for a local store only, the artifact location `tracking.artifact_root`; a tracking
    server's experiment gets none, so the server's artifact store holds the artifacts of every user (a location
    given here would be this machine's folder, written by this client alone)."""
    from stepcode.tracking import pending

    t = params.tracking
    left = pending.flush(pending.pending_dir(params))     # first: a background logger may be creating the store
    if left["failed"]:
        warnings.warn(f"{len(left['failed'])} recorded run(s) could not be logged to MLflow and stay in "
                      f"{pending.pending_dir(params)}: {next(iter(left['failed'].values()))}", stacklevel=2)
    return configure_store(os.environ.get("MLFLOW_TRACKING_URI") or t.uri, t.experiment, t.artifact_root)


def configure_store(uri: str, experiment_name: str, artifact_root: str):
    """`configure` for a given store URI, experiment and local artifact root (no pending runs logged)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    mlflow.set_tracking_uri(uri)
    ensure_experiment(mlflow.MlflowClient(), uri, experiment_name, artifact_root)
    mlflow.set_experiment(experiment_name)
    return mlflow


def ensure_experiment(client, uri: str, experiment_name: str, artifact_root: str) -> str:
    """The experiment's id in the store `client` reads (`uri`), created if missing (see `configure`); no global
    MLflow state changes, so a background logger can log into any store from any process."""
    warnings.filterwarnings("ignore", message=_DATASET_SOURCE_WARNING)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        location = None
        if not is_server(uri):
            artifacts = Path(artifact_root).resolve()
            artifacts.mkdir(parents=True, exist_ok=True)
            location = artifacts.as_uri()
        with contextlib.suppress(Exception):  # created concurrently by another stage: fine
            client.create_experiment(experiment_name, artifact_location=location,
                                     tags={NOTE_TAG: EXPERIMENT_DESCRIPTION})
        experiment = client.get_experiment_by_name(experiment_name)
    elif NOTE_TAG not in experiment.tags:     # made before descriptions, or by hand: say what it holds
        with contextlib.suppress(Exception):
            client.set_experiment_tag(experiment.experiment_id, NOTE_TAG, EXPERIMENT_DESCRIPTION)
    return experiment.experiment_id


def log_dataset(mlflow, path: str | os.PathLike, role: str, context: str, digest: str | None = None) -> str:
    """Log `path` as an mlflow.data input of the active run, named by its role, digest = its DVC md5. `mlflow` may be
    a recorded run (`pending.Recorder`): it keeps the digest for the background logger."""
    from stepcode.tracking.pending import Recorder

    digest = digest or dvc_md5(path)
    if isinstance(mlflow, Recorder):
        mlflow.log_dataset(str(path), role, context, digest)
        return digest
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DATASET_SOURCE_WARNING)
        source = resolve_dataset_source(str(Path(path).resolve()))
    mlflow.log_input(MetaDataset(source=source, name=role, digest=digest[:36]), context=context)
    return digest


def _start(mlflow, run_name: str, *, system_metrics: bool = False, started: float | None = None,
           experiment: str | None = None):
    """Start a run: nested under the active run of this thread, else under the run `STEPCODE_PARENT_RUN_ID` names
    (a parent started in another thread or process), else at the top level. `system_metrics`: sample system/*
    metrics while it runs. `started` (a time.time()): the run's start time, for work done before the run could start
    (the flow's trace batches), so the run's duration is the work's; needs `experiment`, the configured one."""
    active = mlflow.active_run()
    parent = active.info.run_id if active is not None else os.environ.get(PARENT_ENV) or None
    if started is not None:
        from mlflow.tracking import MlflowClient
        from mlflow.tracking.context import registry

        tags = {"mlflow.runName": run_name, **({"mlflow.parentRunId": parent} if parent else {})}
        experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
        run = MlflowClient().create_run(experiment_id, start_time=int(started * 1000), run_name=run_name,
                                        tags=registry.resolve_tags(tags))
        return mlflow.start_run(run_id=run.info.run_id, nested=True, log_system_metrics=False)
    # psutil is a declared dependency; without it MLflow's start_run would fail the stage, not just skip the metrics
    if system_metrics and importlib.util.find_spec("psutil") is None:
        warnings.warn("psutil is not installed: no system metrics (pip install psutil)", stacklevel=3)
        system_metrics = False
    if system_metrics:
        os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", str(SYSTEM_METRICS_INTERVAL_S))
        # its INFO lines (started, stopping, no GPU) on every stage would bury the stage's own output; warnings stay
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    if active is not None:
        return mlflow.start_run(run_name=run_name, nested=True, log_system_metrics=system_metrics)
    if parent:
        return mlflow.start_run(run_name=run_name, nested=True, parent_run_id=parent, log_system_metrics=system_metrics)
    return mlflow.start_run(run_name=run_name, log_system_metrics=system_metrics)


def _run_tags(stage: str, params, tags: dict | None) -> dict:
    out = {"stage": stage, "params.hash": params_hash(params), **git_state()}
    if os.environ.get("PREFECT__FLOW_RUN_ID"):
        out["prefect.flow_run_id"] = os.environ["PREFECT__FLOW_RUN_ID"]
    return {**out, **(tags or {})}


def _end_failed(mlflow, e: BaseException) -> str:
    """Tag the active run with the error and end it: FAILED, or KILLED for a signal or Ctrl-C. Returns the status."""
    status = "FAILED" if isinstance(e, Exception) else "KILLED"
    mlflow.set_tag("error", f"{type(e).__name__}: {e}"[:5000])
    mlflow.end_run(status=status)
    return status


@contextlib.contextmanager
def parent_run(name: str, params, *, tags: dict | None = None, killed: Callable[[], bool] | None = None,
               on_killed: Callable[[str], None] | None = None) -> Iterator:
    """One MLflow run over several stages (the pipeline, a study): yields the mlflow module, or None when tracking is
    off. Tagged like a stage run (`stage` = name, `params.hash`, git state) plus `tags`.

    While the block runs, `STEPCODE_PARENT_RUN_ID` names this run, so every `stage_run` (in this thread, a task
    thread or a worker process started meanwhile) nests under it; the variable's previous value is restored when the
    block ends, however it ends. A block that raises ends the run FAILED with the error in a tag (KILLED for a signal
    or Ctrl-C, then `on_killed(run_id)`: e.g. `termination.kill_runs`, for stage runs in threads that die without
    unwinding). A block that returns ends it FINISHED, or KILLED when `killed()` says a termination was requested
    (a signal whose exception was swallowed). The run nests under an active run, if any, like a stage run."""
    if not params.tracking.enabled:
        yield None
        return
    mlflow = configure(params)
    run_id = _start(mlflow, name, system_metrics=False).info.run_id   # its stages sample their own
    previous = os.environ.get(PARENT_ENV)
    os.environ[PARENT_ENV] = run_id
    try:
        try:
            mlflow.set_tags(_run_tags(name, params, tags))
            yield mlflow
        except BaseException as e:
            if _end_failed(mlflow, e) == "KILLED" and on_killed is not None:
                on_killed(run_id)
            raise
        else:
            mlflow.end_run(status="KILLED" if killed is not None and killed() else "FINISHED")
    finally:
        if previous is None:
            os.environ.pop(PARENT_ENV, None)
        else:
            os.environ[PARENT_ENV] = previous


@contextlib.contextmanager
def stage_run(stage: str, params, *, run_name: str | None = None, inputs: dict[str, str] | None = None,
              outputs: dict[str, str] | None = None, stage_params: dict | None = None,
              tags: dict | None = None, started: float | None = None, description: str | None = None,
              deferrable: bool = False) -> Iterator:
    """An MLflow run for one stage, named `run_name` (default: the stage), tagged `stage`; yields the mlflow module,
    or None when tracking is off (params tracking.enabled). Nested under the active run, else under the run named by
    `STEPCODE_PARENT_RUN_ID` (see `parent_run`). Inputs are digested and logged now; outputs when the block ends
    without error. On an exception the run is marked FAILED (KILLED for a signal or Ctrl-C) and the error re-raised.

    The block's wall time is logged as the metric `seconds`, and system metrics are sampled while it runs (params
    tracking.system_metrics). `started` (a time.time()) is for work done before the block, elsewhere (the flow's
    trace batches in worker processes): the run starts then, and `seconds` counts from then; no system metrics.
    `description`: the run's description in the MLflow UI (markdown): what the stage did, where its outputs are;
    `{run_id}` in it becomes the run's id.

    `deferrable` (a stage whose block only logs metrics, tags, params and files): when this process has not imported
    MLflow and no parent run is open (a stage started alone: its CLI command, `dvc repro`), the block gets a
    `pending.Recorder` instead of the module, and a background process logs the run to MLflow after the command
    exits (`stepcode.tracking.pending`), so MLflow's import and store are not in front of the work."""
    if not params.tracking.enabled:
        yield None
        return
    from stepcode.tracking import pending

    if deferrable and started is None and pending.should_defer(params):
        mlflow = pending.start(params, run_name or stage, system_metrics=params.tracking.system_metrics)
        run_id = "{run_id}"               # the background logger fills it in once the run exists
    else:
        mlflow = configure(params)
        run_id = _start(mlflow, run_name or stage, system_metrics=params.tracking.system_metrics and started is None,
                        started=started, experiment=params.tracking.experiment).info.run_id
    try:
        note = {NOTE_TAG: description.replace("{run_id}", run_id)} if description else {}
        mlflow.set_tags({**_run_tags(stage, params, tags), **note})
        if stage_params:
            mlflow.log_params({k: str(v)[:500] for k, v in stage_params.items()})
        for role, path in (inputs or {}).items():
            mlflow.set_tag(f"dvc.md5.{role}", log_dataset(mlflow, path, role, "input"))
        begun = time.time() if started is None else started
        yield mlflow
        mlflow.log_metric("seconds", round(time.time() - begun, 3))
        for role, path in (outputs or {}).items():
            mlflow.set_tag(f"dvc.md5.{role}", log_dataset(mlflow, path, role, "output"))
    except BaseException as e:
        _end_failed(mlflow, e)
        raise
    else:
        mlflow.end_run(status="FINISHED")
