"""The micro pipeline against a real MLflow tracking server, as a team shares one: `mlflow server` with its own sqlite
store and its own artifact store (`--artifacts-destination`, proxied to clients), started here on a free port.

Every artifact must go through the server, none to the client's disk: the experiment has the server's artifact
location (`mlflow-artifacts:`), the parent and stage runs' artifacts are listed and downloaded through it, they lie in
the server's artifact folder and nothing landed in the project folder; the registered model loads through the server
(`models:/<name>@candidate`). The project sets no `tracking.artifact_root`, as a user of a server would not."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from _prefect_runs import seed_prefect_home
from test_flows import STAGES, _pipeline, _project

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """`mlflow server` on a free port with its own backend and artifact store; its URI once /health answers."""
    port = _free_port()
    root = tmp_path / "server"
    root.mkdir()
    log = open(root / "server.log", "wb")
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
           "--artifacts-destination", str(root / "artifacts")]
    proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield {"uri": uri, "artifacts": root / "artifacts"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)      # the server and its workers: the session it leads
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        log.close()


def test_micro_pipeline_against_a_tracking_server(tmp_path, server, monkeypatch, mlflow_store):
    import mlflow
    from mlflow.tracking import MlflowClient

    d = _project(tmp_path, "proj", 40, "server-e2e")
    seed_prefect_home(d)
    p = yaml.safe_load((d / "params.yaml").read_text())
    del p["tracking"]["artifact_root"]            # a server's user sets none: the embedded default stays
    (d / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server["uri"])
    proc = _pipeline(d)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    client = MlflowClient(tracking_uri=server["uri"])
    experiment = client.get_experiment_by_name("server-e2e")
    assert experiment.artifact_location.startswith("mlflow-artifacts:"), experiment.artifact_location
    assert "pipeline" in experiment.tags["mlflow.note.content"]
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("stage") == "pipeline")
    stages = {r.data.tags["stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(stages) == STAGES

    # every artifact is listed through the server: the parent's lineage, each stage's own files
    def listed(run_id: str, path: str | None = None) -> set[str]:
        return {a.path for a in client.list_artifacts(run_id, path)}

    assert "lineage/params.yaml" in listed(parent.info.run_id, "lineage")
    assert {"validation", "data_docs"} <= listed(stages["validate"].info.run_id)
    assert "data_docs/index.html" in listed(stages["validate"].info.run_id, "data_docs")
    assert "build_stats.json" in listed(stages["build"].info.run_id)
    assert "model_card.md" in listed(stages["register"].info.run_id)
    # ... and downloaded through it
    got = Path(client.download_artifacts(stages["validate"].info.run_id, "data_docs/index.html",
                                         str(tmp_path / "download")))
    assert "<html" in got.read_text().lower()
    # stage runs carry the time of their work and the system metrics sampled meanwhile
    assert all("seconds" in r.data.metrics for r in stages.values())
    assert any(k.startswith("system/") for k in stages["init-model"].data.metrics)

    # the files lie in the server's artifact store, none in the project folder
    stored = {f.name for f in server["artifacts"].rglob("*") if f.is_file()}
    assert {"build_stats.json", "index.html", "MLmodel", "params.yaml", "model_card.md"} <= stored
    assert not (d / "mlruns").exists()
    leaked = [f for f in d.rglob("*") if f.name in ("MLmodel", "trace_summary.json", "build_stats.json",
                                                     "model_card.md", "meta.yaml")]
    assert leaked == [], leaked

    # the registered model loads through the server
    mlflow.set_tracking_uri(server["uri"])
    try:
        model = mlflow.transformers.load_model("models:/model-server-e2e@candidate")
    finally:
        mlflow.set_tracking_uri(mlflow_store["uri"])
    out = model("def f(x):", max_new_tokens=2, do_sample=False)
    assert isinstance(out[0]["generated_text"], str)
