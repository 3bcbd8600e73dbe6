"""Shared fixtures. Everything here is real (a real MLflow sqlite store, real processes); nothing is mocked."""

from __future__ import annotations

import os

import pytest

# Quiet and offline, for the test process and every subprocess it starts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory):
    """One real MLflow sqlite store for the whole session (creating one costs seconds of migrations), exported as
    MLFLOW_TRACKING_URI so stages and subprocesses log there, never into the repository. Autouse: every CLI a test
    starts logs its stage runs here."""
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    mlflow.search_experiments()  # create the schema now, once
    yield {"uri": uri, "root": root}
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


def pytest_terminal_summary(terminalreporter, config):
    """Say which random order ran (pytest-randomly shuffles every run; its header line is hidden under -q)."""
    seed = getattr(config.option, "randomly_seed", None)
    if isinstance(seed, int):
        terminalreporter.write_line(f"tests ran in random order, seed {seed}: repeat it with --randomly-seed={seed}")
