"""Lineage in a real MLflow store: the trace stage records params, counts, and DVC digests of what it read/wrote."""

from __future__ import annotations

import json
import subprocess
import sys

from stepcode.config import parse_params
from stepcode.tracking.lineage import dvc_md5, stage_run


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

    src, out = tmp_path / "programs.jsonl", tmp_path / "traces.jsonl"
    src.write_text("".join(json.dumps(_program(i)) + "\n" for i in range(3)))
    params = parse_params({"tracking": {"experiment": "lineage-test", "artifact_root": str(tmp_path / "art")},
                           "sandbox": {"workers": 1}})
    summary = trace_file(src, out, params, progress=False)
    assert summary["by_status"] == {"ok": 3}
    runs = mlflow.search_runs(experiment_names=["lineage-test"])
    assert len(runs) == 1
    run = mlflow.MlflowClient().get_run(runs.run_id[0])
    assert run.info.status == "FINISHED"
    assert run.data.tags["dvc.md5.programs"] == dvc_md5(src)
    assert run.data.tags["dvc.md5.traces"] == dvc_md5(out)
    assert run.data.metrics["status.ok"] == 3 and run.data.params["trace.max_lines"] == "10"
    datasets = {(d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs}
    assert datasets == {("programs", dvc_md5(src)), ("traces", dvc_md5(out))}


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
