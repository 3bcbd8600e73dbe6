"""Lineage in a real MLflow store: the trace stage records params, counts, and DVC digests of what it read/wrote;
the one lineage helper (parent_run + stage_run) nests, exports and restores STEPCODE_PARENT_RUN_ID, and ends runs
FAILED / KILLED as it should."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from stepcode.config import parse_params
from stepcode.tracking.lineage import PARENT_ENV, dvc_md5, parent_run, stage_run


def _program(i: int) -> dict:
    return {"id": f"p{i}", "code": f"def f(x):\n    y = x + {i}\n    return y\n", "input": str(i), "entry_point": "f"}


def test_import_stepcode_is_light():
    code = "import sys, stepcode, stepcode.cli; print(sorted(m for m in ('torch','transformers','mlflow','prefect'," \
           "'great_expectations','dvc','pydantic_core') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out.startswith("[") and "torch" not in out and "mlflow" not in out and "great_expectations" not in out


def test_dvc_md5_matches_dvc_for_files_and_dirs(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("hello\n")
    (tmp_path / "d" / "b.txt").write_text("world\n")
    assert dvc_md5(tmp_path / "d" / "a.txt") == "b1946ac92492d2347c6235b4d2611184"
    # DVC's tree format: md5 of the sorted [{"md5", "relpath"}] JSON list, suffixed ".dir" (checked against
    # `dvc add` in test_dvc.py and in this repository's data.dvc).
    expected = json.dumps([{"md5": "b1946ac92492d2347c6235b4d2611184", "relpath": "a.txt"},
                           {"md5": "591785b794601e212b260e25925636fd", "relpath": "b.txt"}], sort_keys=True)
    import hashlib
    assert dvc_md5(tmp_path / "d") == hashlib.md5(expected.encode()).hexdigest() + ".dir"


def test_trace_stage_logs_lineage(tmp_path, mlflow_store):
    import mlflow

    from stepcode.data.traces import trace_file
    from stepcode.pipeline import stages

    src, out = tmp_path / "programs.jsonl", tmp_path / "traces.jsonl"
    src.write_text("".join(json.dumps(_program(i)) + "\n" for i in range(3)))
    params = parse_params({"tracking": {"experiment": "lineage-test", "artifact_root": str(tmp_path / "art")},
                           "sandbox": {"workers": 1}})
    # the library computes only: tracing a file logs nothing, tracking on or not
    assert trace_file(src, tmp_path / "untracked.jsonl", params, progress=False)["by_status"] == {"ok": 3}
    assert mlflow.get_experiment_by_name("lineage-test") is None
    # the stage tracks
    summary = stages.trace(params, src, out, progress=False)
    assert summary["by_status"] == {"ok": 3}
    runs = mlflow.search_runs(experiment_names=["lineage-test"])
    assert len(runs) == 1
    run = mlflow.MlflowClient().get_run(runs.run_id[0])
    assert run.info.status == "FINISHED" and run.info.run_name == "trace" and run.data.tags["stage"] == "trace"
    assert run.data.tags["dvc.md5.programs"] == dvc_md5(src)
    assert run.data.tags["dvc.md5.traces"] == dvc_md5(out)
    assert run.data.metrics["status.ok"] == 3 and run.data.metrics["rows"] == 3
    assert run.data.params["trace.max_lines"] == "10" and run.data.params["sandbox.workers"] == "1"
    datasets = {(d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs}
    assert datasets == {("programs", dvc_md5(src)), ("traces", dvc_md5(out))}
    artifacts = [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)]
    assert artifacts == ["trace_summary.json"]


def test_a_malformed_corpus_fails_the_trace_stage_before_any_run(tmp_path, mlflow_store):
    import mlflow

    from stepcode.data.corpus import CorpusError
    from stepcode.pipeline import stages

    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps(_program(0)) + "\n{not json\n")
    params = parse_params({"tracking": {"experiment": "lineage-bad-input", "artifact_root": str(tmp_path / "art")},
                           "sandbox": {"workers": 1}})
    with pytest.raises(CorpusError, match="bad.jsonl:2"):
        stages.trace(params, src, tmp_path / "out.jsonl", progress=False)
    experiment = mlflow.get_experiment_by_name("lineage-bad-input")
    assert experiment is None or mlflow.search_runs([experiment.experiment_id]).empty


def test_a_failing_stage_is_marked_failed(tmp_path, mlflow_store):
    import mlflow
    import pytest

    params = parse_params({"tracking": {"experiment": "lineage-fail", "artifact_root": str(tmp_path / "art")}})
    with pytest.raises(RuntimeError):
        with stage_run("boom", params):
            raise RuntimeError("disk on fire")
    run = mlflow.MlflowClient().get_run(mlflow.search_runs(experiment_names=["lineage-fail"]).run_id[0])
    assert run.info.status == "FAILED" and "disk on fire" in run.data.tags["error"]


def test_compare_two_runs_table_and_png(tmp_path, mlflow_store):
    import mlflow

    from stepcode.tracking.compare import compare

    mlflow.set_experiment("compare-test")
    ids = []
    for lr, final in ((1e-3, 0.4), (1e-4, 0.6)):
        with mlflow.start_run(run_name=f"lr{lr}") as run:
            mlflow.log_params({"lr": lr, "seed": 1})
            for step in range(5):
                mlflow.log_metric("reward", final * step / 4, step=step)
            mlflow.log_metric("cruxeval.pass_at_1", final)
            ids.append(run.info.run_id)
    c = compare(ids, None, tmp_path / "cmp.png")
    assert c.params_differing == {"lr": ["0.001", "0.0001"]}          # seed is equal: not shown
    assert c.metrics["cruxeval.pass_at_1"] == [0.4, 0.6]
    assert [len(h) for h in c.histories["reward"]] == [5, 5] and "cruxeval.pass_at_1" not in c.histories
    table = c.table()
    assert "param lr" in table and "metric reward" in table and "seed" not in table
    assert (tmp_path / "cmp.png").stat().st_size > 5000
    artifacts = [a.path for a in mlflow.MlflowClient().list_artifacts(ids[0], "comparisons")]
    assert artifacts == ["comparisons/cmp.png"]


# --- the helper: parent_run + stage_run, in a fresh sqlite store of the test's own -----------------------------------

@pytest.fixture
def store(tmp_path, monkeypatch, mlflow_store):
    """A real sqlite MLflow store in tmp_path (MLFLOW_TRACKING_URI, which wins over params, as in production); params
    naming an experiment in it. The session's store is current again afterwards."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.delenv(PARENT_ENV, raising=False)
    yield parse_params({"tracking": {"experiment": "helper", "artifact_root": str(tmp_path / "mlruns")}})
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(mlflow_store["uri"])


def _runs_by_name(experiment: str = "helper") -> dict:
    import mlflow

    return {r.info.run_name: r for r in mlflow.search_runs(experiment_names=[experiment], output_format="list")}


def test_parent_run_nests_stages_from_threads_and_processes_and_restores_the_env(store, tmp_path):
    params = store
    with parent_run("outer", params, tags={"profile": "micro"}) as mlflow:
        outer_id = mlflow.active_run().info.run_id
        assert os.environ[PARENT_ENV] == outer_id
        with parent_run("inner", params):                      # a parent inside a parent: nested, then restored
            inner_id = os.environ[PARENT_ENV]
            assert inner_id != outer_id
            with stage_run("here", params) as here:          # same thread: under the active run
                here.log_metric("rows", 1)

            def in_thread():
                with stage_run("in-thread", params):         # a task thread: no active run there, the env names it
                    pass

            thread = threading.Thread(target=in_thread)
            thread.start()
            thread.join()
            tracking = {"experiment": "helper", "artifact_root": str(tmp_path)}
            code = ("from stepcode.config import parse_params; from stepcode.tracking.lineage import stage_run\n"
                    f"p = parse_params({{'tracking': {tracking!r}}})\n"
                    "with stage_run('in-process', p):\n    pass\n")
            subprocess.run([sys.executable, "-c", code], check=True, timeout=120)   # a worker process: the same
        assert os.environ[PARENT_ENV] == outer_id
    assert PARENT_ENV not in os.environ

    runs = _runs_by_name()
    assert set(runs) == {"outer", "inner", "here", "in-thread", "in-process"}
    assert all(r.info.status == "FINISHED" for r in runs.values())
    parent_of = {name: r.data.tags.get("mlflow.parentRunId") for name, r in runs.items()}
    assert parent_of == {"outer": None, "inner": outer_id, "here": inner_id, "in-thread": inner_id,
                         "in-process": inner_id}
    outer = runs["outer"].data.tags
    assert outer["stage"] == "outer" and outer["profile"] == "micro" and outer["params.hash"] and outer["git.commit"]


def test_parent_run_fails_on_an_exception_and_still_restores_the_env(store):
    params = store
    with pytest.raises(RuntimeError, match="disk on fire"):
        with parent_run("pipeline", params):
            with stage_run("build", params):
                raise RuntimeError("disk on fire")
    assert PARENT_ENV not in os.environ
    runs = _runs_by_name()
    for name in ("pipeline", "build"):
        assert runs[name].info.status == "FAILED", name
        assert runs[name].data.tags["error"] == "RuntimeError: disk on fire"
    assert runs["build"].data.tags["mlflow.parentRunId"] == runs["pipeline"].info.run_id


def test_parent_run_killed_by_a_signal_or_a_swallowed_one(store):
    from mlflow.tracking import MlflowClient

    from stepcode.pipeline import termination

    params = store
    with pytest.raises(KeyboardInterrupt):
        with parent_run("pipeline", params, on_killed=termination.kill_runs) as mlflow:
            run = mlflow.active_run()
            # a stage in a task thread that dies with the process without unwinding: left RUNNING
            MlflowClient().create_run(run.info.experiment_id, run_name="orphan",
                                      tags={"mlflow.parentRunId": run.info.run_id, "stage": "sft"})
            raise KeyboardInterrupt("terminated by signal 15")
    assert PARENT_ENV not in os.environ
    runs = _runs_by_name()
    assert runs["pipeline"].info.status == "KILLED" and "KeyboardInterrupt" in runs["pipeline"].data.tags["error"]
    assert runs["orphan"].info.status == "KILLED"

    # the signal's exception was swallowed (e.g. in a destructor) and the block returned: still KILLED
    with parent_run("swallowed", params, killed=lambda: True):
        pass
    assert _runs_by_name()["swallowed"].info.status == "KILLED"


def test_tracking_off_logs_nothing_and_leaves_the_env_alone(store):
    import mlflow

    params = parse_params({"tracking": {"enabled": False, "experiment": "helper-off"}})
    with parent_run("pipeline", params) as parent, stage_run("trace", params, inputs={"x": "missing"}) as stage:
        assert parent is None and stage is None
        assert PARENT_ENV not in os.environ
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])   # the store it would have logged to
    assert mlflow.get_experiment_by_name("helper-off") is None


# --- what a run tells its reader: the time of its work, system metrics, the experiment's description ---------------

def test_stage_runs_time_their_work_and_sample_system_metrics(store):
    import time

    params = store
    with stage_run("sft", params):
        time.sleep(2.5)            # longer than one sampling interval (2 s): at least one sample is logged
    quiet = parse_params({"tracking": {**params.tracking.model_dump(), "system_metrics": False}})
    with stage_run("build", quiet):
        pass
    runs = _runs_by_name()
    sft, build = runs["sft"].data.metrics, runs["build"].data.metrics
    assert 2.5 <= sft["seconds"] < 60 and 0 <= build["seconds"] < 5
    assert "system/cpu_utilization_percentage" in sft and "system/system_memory_usage_megabytes" in sft
    assert not any(k.startswith("system/") for k in build)


def test_a_stage_run_for_work_done_before_it_spans_that_work(store, tmp_path):
    """The flow's trace: batches traced in worker processes, the merged table logged afterwards as the trace stage,
    whose run starts when the tracing did (`stages.trace_merged`, `stage_run(started=...)`)."""
    import time

    from stepcode.pipeline import stages

    params = parse_params({"tracking": store.tracking.model_dump(), "sandbox": {"workers": 1}})
    src, out = tmp_path / "programs.jsonl", tmp_path / "traces.jsonl"
    src.write_text("".join(json.dumps(_program(i)) + "\n" for i in range(3)))
    untracked = parse_params({"sandbox": {"workers": 1}, "tracking": {"enabled": False}})
    started = time.time() - 30      # as if the fan-out had taken 30 s
    stages.trace(untracked, src, out, progress=False)
    with parent_run("pipeline", params):
        summary = stages.trace_merged(params, src, out, batches=1, started=started)
    assert summary["by_status"] == {"ok": 3} and summary["batches"] == 1 and "seconds" not in summary   # metrics/trace.json stays stable
    runs = _runs_by_name()
    trace = runs["trace"]
    assert trace.data.tags["mlflow.parentRunId"] == runs["pipeline"].info.run_id
    assert trace.info.status == "FINISHED" and abs(trace.info.start_time - started * 1000) < 1000
    assert (trace.info.end_time - trace.info.start_time) / 1000 >= 30 and 30 <= trace.data.metrics["seconds"] < 120
    assert trace.data.metrics["rows"] == 3 and trace.data.metrics["status.ok"] == 3
    assert trace.data.params["trace.max_lines"] == "10" and trace.data.tags["dvc.md5.traces"] == dvc_md5(out)
    assert not any(k.startswith("system/") for k in trace.data.metrics)   # nothing ran while it was open


def test_experiment_description_and_local_artifact_location(store, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    from stepcode.tracking.lineage import EXPERIMENT_DESCRIPTION, NOTE_TAG, configure, is_server

    params = store
    configure(params)
    experiment = mlflow.get_experiment_by_name("helper")
    assert experiment.tags[NOTE_TAG] == EXPERIMENT_DESCRIPTION
    assert experiment.artifact_location == (tmp_path / "mlruns").resolve().as_uri()   # a local store: ours
    # an experiment made elsewhere, without a description, gets one; a description of its own is kept
    client = MlflowClient()
    client.create_experiment("bare")
    client.create_experiment("described", tags={NOTE_TAG: "the team's own words"})
    for name in ("bare", "described"):
        configure(parse_params({"tracking": {**params.tracking.model_dump(), "experiment": name}}))
    assert mlflow.get_experiment_by_name("bare").tags[NOTE_TAG] == EXPERIMENT_DESCRIPTION
    assert mlflow.get_experiment_by_name("described").tags[NOTE_TAG] == "the team's own words"
    # a server (tests/test_tracking_server.py runs one) keeps artifacts in its own store
    assert is_server("http://mlflow:5000") and is_server("HTTPS://mlflow.example") and is_server("databricks")
    assert not any(map(is_server, ("sqlite:///mlflow.db", "file:///tmp/mlruns", "postgresql://db/mlflow", "mlruns")))


def test_the_validate_run_holds_the_data_docs(store, tmp_path):
    """The gate's Data Docs are artifacts of the validate run: the site (its pages and what they load) under
    data_docs/, and this validation's page as one self-contained file the MLflow UI renders."""
    from mlflow.tracking import MlflowClient

    from stepcode.data.datadocs import site_files
    from stepcode.pipeline import stages

    params = parse_params({"tracking": store.tracking.model_dump(), "sandbox": {"workers": 1}})
    src, traces = tmp_path / "programs.jsonl", tmp_path / "traces.jsonl"
    src.write_text("".join(json.dumps(_program(i)) + "\n" for i in range(4)))
    stages.trace(params, src, traces, progress=False)
    result = stages.validate(params, traces, tmp_path / "report")
    run = _runs_by_name()["validate"]
    client = MlflowClient()
    logged, todo = [], ["data_docs"]
    while todo:
        for a in client.list_artifacts(run.info.run_id, todo.pop()):
            if a.is_dir:
                todo.append(a.path)
            else:
                logged.append(a.path.removeprefix("data_docs/"))
    site = result.report_path.parent.resolve()
    assert sorted(logged) == sorted(f.relative_to(site).as_posix() for f in site_files(site))
    assert "index.html" in logged and any(f.startswith("validations/") for f in logged)
    validation = {a.path for a in client.list_artifacts(run.info.run_id, "validation")}
    assert {"validation/summary.json", "validation/report.html"} <= validation
    report = client.download_artifacts(run.info.run_id, "validation/report.html", str(tmp_path / "dl"))
    html = open(report, encoding="utf-8").read()
    assert "Expectation Validation Result" in html and "<style>" in html and 'rel="stylesheet"' not in html
    assert run.data.tags["mlflow.note.content"].count(run.info.run_id) == 1   # the download command names the run
