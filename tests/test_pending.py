"""Recorded runs (`stepcode.tracking.pending`): what a stage started alone records is logged to MLflow whole, once,
whatever happened to the process that recorded it or to the logger."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from stepcode.config import load_params
from stepcode.tracking import pending


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A folder with its own sqlite store and params (tracking in it), as the cwd."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "params.yaml").write_text("tracking:\n  experiment: pending\n")
    return tmp_path


def _runs(folder: Path) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")
    experiment = client.get_experiment_by_name("pending")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def _record(params, name: str = "trace", status: str = "FINISHED") -> pending.Recorder:
    """A recorded run, ended like a stage's (its background logger not started: the test flushes)."""
    recorder = pending.start(params, name, system_metrics=False)
    recorder.set_tags({"stage": name})
    recorder.log_params({"trace.max_lines": 10})
    recorder.log_metrics({"rows": 3})
    recorder.log_dict({"rows": 3}, "trace_summary.json")
    recorder.record.update(state="done", status=status, end_ms=recorder.record["start_ms"] + 1500)
    recorder._save()
    return recorder


def test_a_recorded_run_is_logged_once_with_its_times_and_deleted(project):
    params = load_params(project / "params.yaml")
    recorder = _record(params)
    (project / "data.txt").write_text("abc")
    recorder.log_dataset(str(project / "data.txt"), "traces", "output", "d41d8cd98f00b204e9800998ecf8427e")
    recorder._save()
    start = recorder.record["start_ms"]

    done = []
    threads = [threading.Thread(target=lambda: done.append(pending.flush(pending.pending_dir(params))))
               for _ in range(2)]                      # two flushers at once: one logs it, the other finds nothing
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(len(d["logged"]) for d in done) == [0, 1]
    [run] = _runs(project)
    assert (run.info.status, run.info.start_time, run.info.end_time) == ("FINISHED", start, start + 1500)
    assert run.data.params == {"trace.max_lines": "10"} and run.data.metrics == {"rows": 3.0}
    assert run.data.tags["stage"] == "trace" and run.data.tags["mlflow.runName"] == "trace"
    [dataset] = run.inputs.dataset_inputs
    assert (dataset.dataset.name, dataset.dataset.digest, dataset.tags[0].value) == \
        ("traces", "d41d8cd98f00b204e9800998ecf8427e", "output")
    client = MlflowClient(tracking_uri=f"sqlite:///{project}/mlflow.db")
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["trace_summary.json"]
    assert pending.records(pending.pending_dir(params)) == []


def test_a_record_whose_process_died_is_logged_killed_and_a_live_one_waits(project):
    params = load_params(project / "params.yaml")
    live = pending.start(params, "trace", system_metrics=False)            # this process: still running
    dead = pending.start(params, "build", system_metrics=False)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead.record.update(pid=int(gone.stdout), pid_started=0.0)
    dead._save()

    out = pending.flush(pending.pending_dir(params))
    assert out["running"] == 1 and len(out["logged"]) == 1
    [run] = _runs(project)
    assert run.info.run_name == "build" and run.info.status == "KILLED"
    assert "ended without ending its run" in run.data.tags["error"]
    assert pending.records(pending.pending_dir(params)) == [live.folder]


def test_a_record_the_store_refuses_stays_with_its_reason_and_is_logged_later(project, monkeypatch):
    params = load_params(project / "params.yaml")
    recorder = _record(params)
    record = json.loads((recorder.folder / pending.RECORD).read_text())
    good_uri = record["tracking"]["uri"]
    record["tracking"]["uri"] = f"sqlite:///{project}/params.yaml/mlflow.db"   # a folder that is a file
    (recorder.folder / pending.RECORD).write_text(json.dumps(record))

    out = pending.flush(pending.pending_dir(params))
    assert out["logged"] == [] and list(out["failed"]) == [recorder.folder.name]
    assert (recorder.folder / pending.ERROR).read_text().strip()
    record["tracking"]["uri"] = good_uri                         # the store is back
    (recorder.folder / pending.RECORD).write_text(json.dumps(record))
    assert len(pending.flush(pending.pending_dir(params))["logged"]) == 1
    assert [r.info.status for r in _runs(project)] == ["FINISHED"]


def test_a_flush_cut_short_after_creating_the_run_logs_it_once(project):
    """The run a cut-short flush created is deleted and the record logged afresh: one live run, not two."""
    params = load_params(project / "params.yaml")
    recorder = _record(params)
    from stepcode.tracking.lineage import ensure_experiment

    client = MlflowClient(tracking_uri=f"sqlite:///{project}/mlflow.db")    # not the fluent API: the session's
    half = client.create_run(ensure_experiment(client, f"sqlite:///{project}/mlflow.db", "pending", "mlruns"),
                             run_name="trace")
    (recorder.folder / pending.RUN_ID).write_text(half.info.run_id)

    pending.flush(pending.pending_dir(params))
    [run] = _runs(project)
    assert run.info.run_id != half.info.run_id and run.info.status == "FINISHED"
    assert client.get_run(half.info.run_id).info.lifecycle_stage == "deleted"


@pytest.mark.parametrize("raised, status", [("RuntimeError('boom')", "FAILED"), ("KeyboardInterrupt()", "KILLED")])
def test_a_stage_that_raises_is_recorded_failed_with_its_error(project, raised, status):
    """A deferred stage run (a process without MLflow imported) that raises ends FAILED (KILLED for Ctrl-C) with the
    error, like an inline one; `stepcode lineage sync` logs it (or finds the background logger did)."""
    (project / "programs.jsonl").write_text("{}\n")
    script = textwrap.dedent(f"""
        import sys
        from stepcode.config import load_params
        from stepcode.tracking.lineage import stage_run
        params = load_params("params.yaml")
        try:
            with stage_run("trace", params, inputs={{"programs": "programs.jsonl"}}, deferrable=True) as m:
                assert type(m).__name__ == "Recorder"
                m.log_metric("rows", 1)
                raise {raised}
        except BaseException:
            pass
        assert "mlflow" not in sys.modules
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=project, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    sync = subprocess.run([sys.executable, "-m", "stepcode.cli", "lineage", "sync"], cwd=project,
                          capture_output=True, text=True, timeout=300)
    assert sync.returncode == 0, sync.stderr
    [run] = _runs(project)
    assert run.info.status == status and run.data.metrics["rows"] == 1
    assert run.data.tags["error"] == {"FAILED": "RuntimeError: boom", "KILLED": "KeyboardInterrupt: "}[status]
    assert "dvc.md5.programs" in run.data.tags
