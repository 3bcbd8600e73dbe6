"""Pending runs: a stage started alone records its lineage to a file, and a background process logs it to MLflow.

Importing MLflow and opening its store costs about 4 s of CPU, longer than tracing a small corpus. So a data stage
started on its own (`stepcode trace`, `validate`, `build`, and those stages under `dvc repro`) does not import
MLflow: `Recorder` takes what the stage logs (params, tags, metrics, dataset digests, artifact files, the end status)
into a folder under `tracking.pending_dir`, and when the stage ends it starts a detached `python -m
stepcode.tracking.pending` that logs the folder to MLflow as the run and then deletes it. The run appears a few
seconds after the command exits, with the stage's own start and end times, status and error.

Nothing is lost:
- the record is written when the stage starts (state `running`) and rewritten atomically at its end (`done`), its
  artifacts copied in as they are logged (a later run overwriting the same file changes nothing);
- a record whose process died without ending it (SIGKILL, power loss) is logged as KILLED, its end time the record's
  last write; one whose process still runs is left for later;
- every command that opens the MLflow store (`configure`: the pipeline, `compare`, `lineage fetch`, any stage that
  logs inline) first logs what is pending (`flush`), so a reader never misses a finished run;
- a record that cannot be logged (the store is unreachable) stays, with the reason in `error.txt`, and is tried again
  by the next flush; `stepcode lineage sync` flushes by hand and says what is left.
One flush at a time holds `pending_dir/.lock`, so two flushers never log a record twice; a run created before a
flush was cut short is deleted and created again from the record.

A stage logs inline instead when MLflow is already imported in the process (nothing to save), inside a parent run
(the pipeline, a study: its stage runs must exist when the parent reads them), or with `tracking.log_in_background:
false`. System metrics of a recorded run are sampled here with psutil, under MLflow's own names (`system/*`).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

RECORD = "record.json"
RUN_ID = "run_id"          # written once the MLflow run exists: a retry deletes that run and logs the record afresh
ERROR = "error.txt"
LOG = "flush.log"          # the background flusher's output
LOG_MAX_BYTES = 1 << 20    # started afresh beyond this
SYSTEM_METRICS_INTERVAL_S = 2.0


def _now_ms() -> int:
    return int(time.time() * 1000)


def _absolute_uri(uri: str) -> str:
    """A relative sqlite path made absolute (the flusher may run elsewhere); other URIs unchanged."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def pending_dir(params) -> Path:
    return Path(params.tracking.pending_dir).resolve()


def should_defer(params) -> bool:
    """Whether a stage run starting now is recorded for the background logger rather than logged inline."""
    from stepcode.tracking.lineage import PARENT_ENV

    return (params.tracking.log_in_background and "mlflow" not in sys.modules
            and not os.environ.get(PARENT_ENV))


def _process_start(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:
        return None


def _alive(record: dict) -> bool:
    """Whether the process that wrote a `running` record is still running (same host, same pid and start time)."""
    if record.get("host") != socket.gethostname():
        return True                      # another machine's record: not ours to judge
    started, recorded = _process_start(record["pid"]), record.get("pid_started")
    return started is not None and (recorded is None or abs(started - recorded) < 1.0)


def _write_json(path: Path, data: dict) -> None:
    from stepcode.jsonl import atomic_write_text

    atomic_write_text(path, json.dumps(data, default=str))


class _SystemSampler(threading.Thread):
    """Samples MLflow's system metrics (CPU, memory, disk, network; `system/` names and units as MLflow's monitors)
    every `interval` s into the recorder; a last unfinished interval is dropped, as MLflow does."""

    def __init__(self, recorder: Recorder, interval: float):
        super().__init__(daemon=True, name="stepcode-system-metrics")
        self.recorder, self.interval, self.stopped = recorder, interval, threading.Event()

    def run(self) -> None:
        import psutil

        psutil.cpu_percent()
        net0 = psutil.net_io_counters()
        step = 0
        while not self.stopped.wait(self.interval):
            mem, disk, net = psutil.virtual_memory(), psutil.disk_usage("/"), psutil.net_io_counters()
            self.recorder.log_metrics({
                "system/cpu_utilization_percentage": psutil.cpu_percent(),
                "system/system_memory_usage_megabytes": mem.used / 1e6,
                "system/system_memory_usage_percentage": mem.used / mem.total * 100,
                "system/disk_usage_percentage": disk.percent,
                "system/disk_usage_megabytes": disk.used / 1e6,
                "system/disk_available_megabytes": disk.free / 1e6,
                "system/network_receive_megabytes": (net.bytes_recv - net0.bytes_recv) / 1e6,
                "system/network_transmit_megabytes": (net.bytes_sent - net0.bytes_sent) / 1e6,
            }, step=step)
            step += 1


class Recorder:
    """Stands in for the `mlflow` module inside a recorded stage run: the same logging calls, kept in a record."""

    def __init__(self, folder: Path, run_name: str, tracking: dict, *, system_metrics: bool = False):
        self.folder, self.lock = folder, threading.Lock()
        self.record = {"version": 1, "state": "running", "run_name": run_name, "tracking": tracking,
                       "pid": os.getpid(), "pid_started": _process_start(os.getpid()), "host": socket.gethostname(),
                       "start_ms": _now_ms(), "end_ms": None, "status": None,
                       "tags": {"mlflow.user": _user(), "mlflow.source.name": sys.argv[0] if sys.argv else "",
                                "mlflow.source.type": "LOCAL"},
                       "params": {}, "metrics": [], "datasets": []}
        folder.mkdir(parents=True)
        self._save()
        self.sampler = None
        if system_metrics:
            interval = float(os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL") or SYSTEM_METRICS_INTERVAL_S)
            self.sampler = _SystemSampler(self, interval)
            self.sampler.start()

    def _save(self) -> None:
        _write_json(self.folder / RECORD, self.record)

    # --- what a stage block calls on `mlflow` -------------------------------------------------------------------
    def set_tag(self, key: str, value) -> None:
        self.record["tags"][key] = str(value)

    def set_tags(self, tags: dict) -> None:
        for k, v in tags.items():
            self.set_tag(k, v)

    def log_param(self, key: str, value) -> None:
        self.record["params"][key] = str(value)

    def log_params(self, params: dict) -> None:
        for k, v in params.items():
            self.log_param(k, v)

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        with self.lock:
            self.record["metrics"].append([key, float(value), _now_ms(), step or 0])

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        for k, v in metrics.items():
            self.log_metric(k, v, step)

    def _artifact(self, artifact_file: str) -> Path:
        path = self.folder / "artifacts" / artifact_file
        if not path.resolve().is_relative_to((self.folder / "artifacts").resolve()):
            raise ValueError(f"artifact path {artifact_file!r} leaves the run's artifact folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def log_text(self, text: str, artifact_file: str) -> None:
        self._artifact(artifact_file).write_text(text)

    def log_dict(self, dictionary: dict, artifact_file: str) -> None:
        path = self._artifact(artifact_file)
        if path.suffix in (".yaml", ".yml"):
            import yaml

            path.write_text(yaml.safe_dump(dictionary, sort_keys=False))
        else:
            path.write_text(json.dumps(dictionary, indent=2))

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        name = Path(local_path).name
        shutil.copyfile(local_path, self._artifact(f"{artifact_path}/{name}" if artifact_path else name))

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        target = self._artifact(artifact_path or ".")
        shutil.copytree(local_dir, target, dirs_exist_ok=True)

    # --- what stage_run calls ---------------------------------------------------------------------------------
    def log_dataset(self, path: str, role: str, context: str, digest: str) -> None:
        self.record["datasets"].append({"path": str(Path(path).resolve()), "role": role, "context": context,
                                        "digest": digest})

    def end_run(self, status: str = "FINISHED") -> None:
        if self.sampler is not None:
            self.sampler.stopped.set()
            self.sampler.join()
        self.record.update(state="done", status=status, end_ms=_now_ms())
        self._save()
        spawn_flusher(self.folder.parent)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def start(params, run_name: str, *, system_metrics: bool) -> Recorder:
    """A recorded run for a stage: its folder under `tracking.pending_dir`, its record written now (`running`)."""
    t = params.tracking
    tracking = {"uri": _absolute_uri(os.environ.get("MLFLOW_TRACKING_URI") or t.uri), "experiment": t.experiment,
                "artifact_root": str(Path(t.artifact_root).resolve())}
    name = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return Recorder(pending_dir(params) / name, run_name, tracking, system_metrics=system_metrics)


def spawn_flusher(folder: Path) -> None:
    """Start `python -m stepcode.tracking.pending FOLDER` detached (its own session, output to flush.log): it outlives
    this process and logs what is pending. A failure to start it loses nothing: the next flush logs the record."""
    with contextlib.suppress(OSError):
        log_path = folder / LOG
        mode = "wb" if log_path.exists() and log_path.stat().st_size > LOG_MAX_BYTES else "ab"   # keep it small
        with open(log_path, mode) as log:
            subprocess.Popen([sys.executable, "-m", "stepcode.tracking.pending", str(folder)],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                             close_fds=True)


# --- logging records to MLflow ----------------------------------------------------------------------------------

def records(folder: Path) -> list[Path]:
    """The record folders under `folder`, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(d for d in folder.iterdir() if d.is_dir() and (d / RECORD).exists())


@contextlib.contextmanager
def _locked(folder: Path):
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def flush(folder: str | os.PathLike) -> dict:
    """Log every finished record under `folder` to MLflow and delete it. Returns {"logged": [run ids], "running":
    n (processes still working), "failed": {folder name: reason}}. A record whose process died is logged KILLED."""
    folder = Path(folder)
    out = {"logged": [], "running": 0, "failed": {}}
    if not records(folder):
        return out
    with _locked(folder):
        for d in records(folder):
            try:
                record = json.loads((d / RECORD).read_text())
            except (OSError, ValueError) as e:
                out["failed"][d.name] = f"unreadable record: {e}"
                continue
            if record["state"] == "running":
                if _alive(record):
                    out["running"] += 1
                    continue
                record.update(state="done", status="KILLED", end_ms=int((d / RECORD).stat().st_mtime * 1000))
                record["tags"]["error"] = (f"the process (pid {record['pid']}) ended without ending its run "
                                           "(killed, or the machine stopped)")
            try:
                out["logged"].append(log_record(record, d))
            except Exception as e:                      # the store is down, a bad record: keep it, say why
                out["failed"][d.name] = f"{type(e).__name__}: {e}"
                with contextlib.suppress(OSError):
                    (d / ERROR).write_text(out["failed"][d.name] + "\n")
                continue
            shutil.rmtree(d, ignore_errors=True)
    return out


def log_record(record: dict, folder: Path) -> str:
    """Log one record as an MLflow run (its own start and end times, status, tags, params, metrics, datasets and
    artifacts). Returns the run id."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from stepcode.tracking.lineage import NOTE_TAG, ensure_experiment

    t = record["tracking"]
    client = MlflowClient(t["uri"])                     # no global MLflow state: the caller's stays as it was
    experiment_id = ensure_experiment(client, t["uri"], t["experiment"], t["artifact_root"])
    if (folder / RUN_ID).exists():                       # a flush cut short after creating the run: start over
        with contextlib.suppress(Exception):
            client.delete_run((folder / RUN_ID).read_text().strip())
    run = client.create_run(experiment_id, start_time=record["start_ms"], run_name=record["run_name"],
                            tags={"mlflow.runName": record["run_name"]})
    run_id = run.info.run_id
    (folder / RUN_ID).write_text(run_id)
    tags = dict(record["tags"])
    if NOTE_TAG in tags:
        tags[NOTE_TAG] = tags[NOTE_TAG].replace("{run_id}", run_id)
    params = [Param(k, v) for k, v in record["params"].items()]
    tag_list = [RunTag(k, v) for k, v in tags.items()]
    metrics = [Metric(k, v, ts, step) for k, v, ts, step in record["metrics"]]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i:i + 100])
    for i in range(0, len(tag_list), 100):
        client.log_batch(run_id, tags=tag_list[i:i + 100])
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])
    for ds in record["datasets"]:          # ensure_experiment silenced MLflow's "interpreted in multiple ways"
        source = resolve_dataset_source(ds["path"])
        dataset = MetaDataset(source=source, name=ds["role"], digest=ds["digest"][:36])
        client.log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(),
                                                         tags=[InputTag("mlflow.data.context", ds["context"])])])
    if (folder / "artifacts").is_dir():
        client.log_artifacts(run_id, str(folder / "artifacts"))
    client.set_terminated(run_id, status=record["status"], end_time=record["end_ms"])
    return run_id


def main(argv: list[str] | None = None) -> int:
    """`python -m stepcode.tracking.pending FOLDER`: the background flusher. Logs what is pending, prints a line."""
    import logging

    argv = sys.argv[1:] if argv is None else argv
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    out = flush(argv[0])
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"{stamp} logged {len(out['logged'])} run(s) {' '.join(out['logged'])}; {out['running']} still running; "
          f"{len(out['failed'])} failed{': ' + json.dumps(out['failed']) if out['failed'] else ''}", flush=True)
    return 1 if out["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
