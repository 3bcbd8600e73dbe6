"""A CLI that starts fast and still leaves its lineage whole (issue 19).

Starting `stepcode` loads no heavy library (MLflow alone takes ~2 s to import): commands import what they need when
they run. `stepcode trace` as a user runs it (default params: tracking on, a sqlite store in the working folder) exits
only once its MLflow run is complete: params, metrics, datasets, artifact, FINISHED. Behaviour only, no timings: the
timings are benchmarks/trace_throughput.py --cli.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

HEAVY = ("mlflow", "torch", "transformers", "trl", "pandas", "numpy", "sqlalchemy", "prefect", "great_expectations",
         "dvc", "psutil")


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}   # the params' store, in the cwd


def test_starting_the_cli_loads_no_heavy_library(tmp_path):
    """Importing the CLI and asking `stepcode trace` for its help imports none of the heavy libraries."""
    code = ("import sys\nsys.argv = ['stepcode', 'trace', '--help']\nfrom stepcode.cli import app\n"
            "try:\n    app()\nexcept SystemExit:\n    pass\n"
            f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=_env(),
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "--out" in r.stdout and r.stdout.splitlines()[-1] == "LOADED []"


def test_stepcode_trace_exits_with_its_lineage_complete(tmp_path):
    """`stepcode trace` with the default tracking (a sqlite store, created by this first run, in the working folder):
    when the process has exited, its run holds the params, counts, DVC md5s, datasets and summary, FINISHED."""
    from mlflow.tracking import MlflowClient

    from stepcode.tracking.lineage import dvc_md5

    programs = [{"id": f"p{i}", "code": f"def f(x):\n    y = x + {i}\n    return y\n", "input": str(i),
                 "entry_point": "f"} for i in range(3)]
    (tmp_path / "programs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in programs))
    (tmp_path / "params.yaml").write_text("tracking:\n  experiment: cli-startup\nsandbox:\n  workers: 1\n")
    r = subprocess.run([sys.executable, "-m", "stepcode.cli", "trace", "programs.jsonl", "-o", "traces.jsonl"],
                       cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.splitlines()[0].startswith("3 programs in ")
    assert [json.loads(line)["status"] for line in (tmp_path / "traces.jsonl").open()] == ["ok"] * 3

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("cli-startup")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "trace" and run.data.tags["stage"] == "trace"
    assert run.data.params["sandbox.workers"] == "1" and run.data.params["trace.max_lines"] == "10"
    metrics = run.data.metrics
    assert metrics["rows"] == 3 and metrics["status.ok"] == 3 and metrics["programs_per_s"] > 0
    assert 0 <= metrics["seconds"] <= (run.info.end_time - run.info.start_time) / 1000 + 1
    assert run.data.tags["dvc.md5.programs"] == dvc_md5(tmp_path / "programs.jsonl")
    assert run.data.tags["dvc.md5.traces"] == dvc_md5(tmp_path / "traces.jsonl")
    assert run.data.tags["params.hash"] and run.data.tags["git.commit"] and run.data.tags["mlflow.note.content"]
    datasets = {(d.dataset.name, d.tags[0].value) for d in run.inputs.dataset_inputs}
    assert datasets == {("programs", "input"), ("traces", "output")}
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["trace_summary.json"]
    assert (tmp_path / "mlruns").is_dir()   # the artifacts: params' artifact_root, in the working folder
