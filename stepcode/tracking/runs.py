"""What a run logged, read back from the MLflow store: the run itself (an unknown id is one line), its stage runs, the
datasets it logged (role -> md5, path, input or output) and its lineage artifacts.

    from mlflow.tracking import MlflowClient
    from stepcode.tracking.runs import open_run, logged_datasets
    client = MlflowClient()
    run = open_run(client, "236c1e0f...")
    logged_datasets(client, run)   # a stage run: {"traces": Logged(...)}; a pipeline run: {"trace.traces": ...}

A stage run names its datasets by role (`dvc.md5.<role>` tags, the same digests as its mlflow.data inputs); a
pipeline run logs none itself, so its datasets are its stage runs', qualified by stage (`trace.traces`,
`sft.model`, `grpo.model`).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from stepcode.errors import UserError

MD5_TAG = "dvc.md5."
PARENT_TAG = "mlflow.parentRunId"


class UnknownRun(UserError):
    """A run id the tracking store does not have."""


@dataclass(frozen=True)
class Logged:
    """One dataset a run logged: its role, DVC md5, the path it had, `input` or `output`, and the run."""
    role: str
    md5: str
    path: str | None
    context: str | None
    run_id: str

    @property
    def name(self) -> str:
        """What to call it on disk: the base name of the path it had (`traces`, `sft`), else the role."""
        return Path(self.path).name if self.path else self.role


def open_run(client, run_id: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as e:
        if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
    uri = client.tracking_uri
    browse = f"open {uri}" if uri.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {uri}"
    raise UnknownRun(f"unknown run id {run_id!r}: no such run in {uri} (run from the project folder, or set "
                     f"MLFLOW_TRACKING_URI; list runs: {browse})")


def stage_runs(client, run) -> list:
    """The runs nested under `run` (a pipeline's stages), oldest first."""
    runs = client.search_runs([run.info.experiment_id], f"tags.`{PARENT_TAG}` = '{run.info.run_id}'",
                              max_results=1000)
    return sorted(runs, key=lambda r: r.info.start_time or 0)


def _source_path(source: str) -> str | None:
    try:
        return json.loads(source).get("uri")
    except (ValueError, AttributeError):
        return None


def own_datasets(run) -> dict[str, Logged]:
    """The datasets a stage run logged itself, by role."""
    inputs = {}
    for di in run.inputs.dataset_inputs if run.inputs else []:
        context = next((t.value for t in di.tags if t.key == "mlflow.data.context"), None)
        inputs[(di.dataset.name, di.dataset.digest)] = (_source_path(di.dataset.source), context)
    out = {}
    for key, md5 in run.data.tags.items():
        if key.startswith(MD5_TAG):
            role = key[len(MD5_TAG):]
            path, context = inputs.get((role, md5[:36]), (None, None))
            out[role] = Logged(role, md5, path, context, run.info.run_id)
    return out


def logged_datasets(client, run) -> dict[str, Logged]:
    """A stage run's datasets by role; a pipeline run's, those of its stage runs by `<stage>.<role>`."""
    own = own_datasets(run)
    for child in stage_runs(client, run):
        stage = child.data.tags.get("stage", child.info.run_id[:8])
        own.update({f"{stage}.{role}": logged for role, logged in own_datasets(child).items()})
    return own


def artifact_text(client, run_id: str, path: str) -> str | None:
    """A text artifact of a run, or None when the run has none at `path`. (No download progress bar: a small file,
    read on the way to something else, e.g. `stepcode compare`.)"""
    from mlflow.exceptions import MlflowException

    quiet, before = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ[quiet] = "false"
    try:
        with tempfile.TemporaryDirectory(prefix="stepcode-artifact-") as tmp:
            try:
                local = client.download_artifacts(run_id, path, tmp)
            except (MlflowException, OSError):
                return None
            return Path(local).read_text(encoding="utf-8") if Path(local).is_file() else None
    finally:
        if before is None:
            os.environ.pop(quiet, None)
        else:
            os.environ[quiet] = before
