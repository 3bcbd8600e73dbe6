"""A pipeline run points at versions that exist: what it recorded in DVC is pushed to the remote, and its MLflow run
holds what it takes to get the run's data back and to run it again.

    from stepcode.tracking.versions import Pusher, record_run
    push = Pusher(root, enabled=params.tracking.dvc_push)
    push(["trace"])                                    # after record_outputs committed the trace stage
    record_run(mlflow, root, "params.yaml", params, ["trace", ...], push.outcome())   # at the end, in the parent

On the parent run: the git commit and whether the tree was dirty (tags `git.commit`, `git.dirty`, `git.dirty_files`,
set when the run starts), the dvc.lock entries of the stages it ran (`lineage/dvc.lock.json`), the params file it
ran with (`lineage/params.yaml`, and a digest per section: tags `params.digest.<section>`), and every dataset its
stage runs logged with whether the DVC remote holds that md5 (`lineage/datasets.json`, `on_remote` null where no
remote could be asked; tags `dvc.remote`, `dvc.pushed`, and `dvc.remote.missing` when some are not there). A failed
push is a warning, never a lost run: the data stay in the local cache and dvc.lock, and `dvc push` sends them later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from stepcode.tracking import dvcremote
from stepcode.tracking.digests import lock_subset, section_digests


def one_line(e: BaseException, words: int = 16) -> str:
    text = " ".join(str(e).split()[:words])
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@dataclass
class Pusher:
    """Pushes the stages a run records, as it records them; after a failure it stops and keeps one warning."""
    root: Path
    enabled: bool = True
    stages: list[str] = field(default_factory=list)
    transferred: int = 0
    warning: str | None = None

    def __call__(self, stages: list[str]) -> None:
        if not self.enabled or self.warning is not None or not stages:
            return
        try:
            self.transferred += dvcremote.push(self.root, stages)
            self.stages += stages
        except Exception as e:  # noqa: BLE001 -- any failure of the push: the run goes on, the summary says it
            self.warning = (f"dvc push failed ({one_line(e)}); the run's data are in the local DVC cache and dvc.lock "
                            "only: fix the remote (`dvc remote list`) and run `dvc push`")

    @property
    def state(self) -> str:
        if not self.enabled:
            return "off"
        return "failed" if self.warning else ("pushed" if self.stages else "nothing")

    def outcome(self) -> dict:
        out = {"state": self.state, "stages": list(self.stages), "transferred": self.transferred}
        if self.warning:
            out["warning"] = self.warning
        if self.enabled:
            try:
                r = dvcremote.remote(self.root)
                out["remote"] = f"{r.name} ({r.url})"
            except Exception:  # noqa: BLE001 -- the warning above already says the remote is broken
                pass
        return out


def params_text(root: Path, params_path: str, params) -> str:
    """The params file the run read, byte for byte; the embedded defaults as YAML when there is none."""
    path = Path(root) / params_path
    if path.is_file():
        return path.read_text(encoding="utf-8")
    return yaml.safe_dump(params.model_dump(mode="json", by_alias=True), sort_keys=False)


def record_run(mlflow, root: Path, params_path: str, params, stages: list[str], push: dict) -> dict:
    """Log the parent run's lineage (see the module docstring); `push`: `Pusher.outcome()`. Returns what the pipeline
    summary says about it."""
    from mlflow.tracking import MlflowClient

    from stepcode.tracking.runs import logged_datasets

    root = Path(root)
    client = MlflowClient()
    run = client.get_run(mlflow.active_run().info.run_id)
    lock_path = root / "dvc.lock"
    lock = yaml.safe_load(lock_path.read_text()) if lock_path.is_file() else {}
    mlflow.log_dict(lock_subset(lock, stages), "lineage/dvc.lock.json")
    text = params_text(root, params_path, params)
    mlflow.log_text(text, "lineage/params.yaml")
    mlflow.set_tags({f"params.digest.{k}": v for k, v in section_digests(yaml.safe_load(text) or {}).items()})

    datasets = logged_datasets(client, run)
    try:
        missing = dvcremote.absent(root, [d.md5 for d in datasets.values()])
    except Exception:  # noqa: BLE001 -- not a DVC project, no remote configured or reachable: unknown (null)
        missing = None
    rows = [{"role": role, "md5": d.md5, "path": d.path, "context": d.context, "run_id": d.run_id,
             "on_remote": None if missing is None else d.md5 not in missing} for role, d in sorted(datasets.items())]
    mlflow.log_dict(rows, "lineage/datasets.json")
    absent_roles = [r["role"] for r in rows if r["on_remote"] is False]
    tags = {"dvc.pushed": push["state"], "dvc.remote": push.get("remote", "-")}
    if absent_roles:
        tags["dvc.remote.missing"] = ",".join(absent_roles)[:5000]
    mlflow.set_tags(tags)
    for run_id in {d.run_id for d in datasets.values()} - {run.info.run_id}:
        own = [r["role"].partition(".")[2] for r in rows if r["run_id"] == run_id and not r["on_remote"]]
        client.set_tag(run_id, "dvc.remote", tags["dvc.remote"])
        if own:
            client.set_tag(run_id, "dvc.remote.missing", ",".join(own))
    t = run.data.tags
    return {"run_id": run.info.run_id, "git_commit": t.get("git.commit"), "git_dirty": t.get("git.dirty") == "true",
            "dirty_files": t.get("git.dirty_files", ""), "datasets": len(rows), "missing_on_remote": absent_roles}
