"""A CLI that starts fast and still leaves its lineage whole (issue 19).

Starting `stepcode` loads no heavy library (MLflow alone takes ~2.5 s to import): commands import what they need when
they run. `stepcode trace` as a user runs it (default params: tracking on, a sqlite store in the working folder) does
not import MLflow at all: it records its run (`stepcode.tracking.pending`) and a background process logs it to MLflow
after the command exits. The run that lands is the one an inline log makes: params, counts, md5s, datasets, artifact,
FINISHED. Behaviour only, no timings: the timings are benchmarks/trace_throughput.py --cli.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HEAVY = ("mlflow", "torch", "transformers", "trl", "pandas", "numpy", "sqlalchemy", "prefect", "great_expectations",
         "dvc")
PENDING = Path(".stepcode") / "pending-runs"


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}   # the params' store, in the cwd


def _programs(folder: Path) -> None:
    programs = [{"id": f"p{i}", "code": f"def f(x):\n    y = x + {i}\n    return y\n", "input": str(i),
                 "entry_point": "f"} for i in range(3)]
    (folder / "programs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in programs))


def _wait_logged(folder: Path, timeout: float = 240) -> None:
    """Until the background logger has logged every record under `folder` (its records are gone)."""
    pending = folder / PENDING
    deadline = time.monotonic() + timeout
    while any(d.is_dir() for d in pending.iterdir()) if pending.is_dir() else False:
        assert time.monotonic() < deadline, f"still pending after {timeout} s: {(pending / 'flush.log').read_text()}"
        time.sleep(0.2)


def test_starting_the_cli_loads_no_heavy_library(tmp_path):
    """Importing the CLI and asking `stepcode trace` for its help imports none of the heavy libraries."""
    code = ("import sys\nsys.argv = ['stepcode', 'trace', '--help']\nfrom stepcode.cli import app\n"
            "try:\n    app()\nexcept SystemExit:\n    pass\n"
            f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=_env(),
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "--out" in r.stdout and r.stdout.splitlines()[-1] == "LOADED []"


def _trace_run(folder: Path, background: bool):
    """`stepcode trace` in `folder` (its own sqlite store), then its one MLflow run once it is logged."""
    from mlflow.tracking import MlflowClient

    _programs(folder)
    (folder / "params.yaml").write_text(f"tracking:\n  experiment: cli-startup\n  log_in_background: {background}\n"
                                        "sandbox:\n  workers: 1\n")
    code = ("import atexit, sys\nsys.argv = ['stepcode', 'trace', 'programs.jsonl', '-o', 'traces.jsonl']\n"
            f"atexit.register(lambda: print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
            "from stepcode.cli import app\napp()\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, env=_env(),
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.splitlines()[0].startswith("3 programs in ")
    # recorded for the background logger, the command never imports MLflow (or pandas): lineage included
    loaded = r.stdout.splitlines()[-1]
    assert loaded == "LOADED []" if background else "'mlflow'" in loaded
    assert [json.loads(line)["status"] for line in (folder / "traces.jsonl").open()] == ["ok"] * 3
    if background:
        assert (folder / PENDING / "flush.log").exists()      # the record went to the background logger
        _wait_logged(folder)
    else:
        assert not (folder / PENDING).exists()
    client = MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")
    experiment = client.get_experiment_by_name("cli-startup")
    [run] = client.search_runs([experiment.experiment_id])
    return client, run


def test_the_background_logger_logs_the_run_an_inline_log_would(tmp_path):
    """A traced run logged by the background process holds what the inline log holds (same params, metrics, tags,
    datasets, artifact, status, times within the command's), and the inline log still works
    (`tracking.log_in_background: false`)."""
    from stepcode.tracking.lineage import dvc_md5

    (tmp_path / "bg").mkdir()
    (tmp_path / "inline").mkdir()
    before = time.time() * 1000
    client, run = _trace_run(tmp_path / "bg", background=True)
    _, inline = _trace_run(tmp_path / "inline", background=False)

    assert run.info.status == "FINISHED" and run.info.run_name == "trace" and run.data.tags["stage"] == "trace"
    assert before <= run.info.start_time <= run.info.end_time <= time.time() * 1000
    assert run.data.params["sandbox.workers"] == "1" and run.data.params["trace.max_lines"] == "10"
    metrics = run.data.metrics
    assert metrics["rows"] == 3 and metrics["status.ok"] == 3 and metrics["programs_per_s"] > 0
    assert 0 <= metrics["seconds"] <= (run.info.end_time - run.info.start_time) / 1000 + 1
    folder = tmp_path / "bg"
    assert run.data.tags["dvc.md5.programs"] == dvc_md5(folder / "programs.jsonl")
    assert run.data.tags["dvc.md5.traces"] == dvc_md5(folder / "traces.jsonl")
    assert run.data.tags["params.hash"] and run.data.tags["git.commit"] and run.data.tags["mlflow.note.content"]
    datasets = {(d.dataset.name, d.dataset.digest, d.tags[0].value) for d in run.inputs.dataset_inputs}
    assert datasets == {("programs", dvc_md5(folder / "programs.jsonl"), "input"),
                        ("traces", dvc_md5(folder / "traces.jsonl"), "output")}
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["trace_summary.json"]
    assert (folder / "mlruns").is_dir()   # the artifacts: params' artifact_root, in the working folder

    # the same run as the inline log's, but for what differs between two runs
    assert run.data.params == inline.data.params
    assert set(run.data.metrics) == set(inline.data.metrics)
    differ = {"params.hash"}       # the two params files differ in log_in_background
    keys = set(inline.data.tags) - {"mlflow.source.git.commit", "mlflow.source.git.branch", "mlflow.source.git.repoURL"}
    assert keys <= set(run.data.tags), keys - set(run.data.tags)
    assert {k: run.data.tags[k] for k in keys - differ} == {k: inline.data.tags[k] for k in keys - differ}
    assert {(d.dataset.name, d.tags[0].value) for d in inline.inputs.dataset_inputs} == \
        {(name, context) for name, _, context in datasets}
