"""Model versions in the MLflow registry, and the champion/candidate promotion rule.

    from stepcode.tracking.registry import register_model, decide, promote_if_better
    mv = register_model(model_dir, "stepcode-tiny", run_id, metrics={"heldout.final_acc": 0.41})
    decision = promote_if_better("stepcode-tiny", mv.version, ["heldout.final_acc", "heldout.step_acc"])

A version is the model folder (HF format) logged as artifacts of the run that made it, so the version links to that
run and, through its tags, to the exact data and code. Evaluation metrics are stored as version tags
(`metric.<name>`), so comparing a candidate with the champion needs no other run. Aliases, not stages (MLflow 3):
`candidate` always moves to the newest version; `champion` moves only when `decide` says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Decision:
    promote: bool
    reason: str
    candidate: dict[str, float]
    champion: dict[str, float] | None
    champion_version: str | None = None
    deltas: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def decide(candidate: dict[str, float], champion: dict[str, float] | None, metrics: list[str],
           min_improvement: float = 0.0) -> Decision:
    """Promote when there is no champion yet, or when the candidate is at least as good on every configured metric
    and better by more than `min_improvement` on at least one (higher is better). A metric the candidate lacks is
    a refusal: nothing is promoted on missing evidence."""
    missing = [m for m in metrics if m not in candidate]
    if missing:
        return Decision(False, f"candidate lacks metrics {missing}", candidate, champion)
    if champion is None:
        return Decision(True, "no champion yet", candidate, None)
    deltas = {m: candidate[m] - champion.get(m, float("-inf")) for m in metrics}
    worse = [m for m, d in deltas.items() if d < 0]
    if worse:
        return Decision(False, f"worse than the champion on {worse}", candidate, champion, deltas=deltas)
    better = [m for m, d in deltas.items() if d > min_improvement]
    if not better:
        return Decision(False, f"no metric improves by more than {min_improvement}", candidate, champion,
                        deltas=deltas)
    return Decision(True, f"better on {better}, no worse elsewhere", candidate, champion, deltas=deltas)


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def register_model(model_dir: str, name: str, run_id: str, metrics: dict[str, float] | None = None,
                   client=None):
    """Log `model_dir` under the run's `model/` artifacts and create a registry version pointing at them.
    The same model files (by DVC md5) are registered once: a re-run returns the existing version."""
    from stepcode.tracking.lineage import dvc_md5

    client = client or _client()
    md5 = dvc_md5(model_dir)
    try:
        client.get_registered_model(name)
    except Exception:  # noqa: BLE001 — MLflow raises RESOURCE_DOES_NOT_EXIST as a generic MlflowException
        client.create_registered_model(name, description="StepCode models (HF format), one version per training run")
    for existing in client.search_model_versions(f"name = '{name}'"):
        if existing.tags.get("model.md5") == md5:
            return existing
    client.log_artifacts(run_id, str(model_dir), artifact_path="model")
    run = client.get_run(run_id)
    tags = {"model.md5": md5, **{f"metric.{k}": str(v) for k, v in (metrics or {}).items()}}
    tags.update({k: v for k, v in run.data.tags.items() if k.startswith(("dvc.md5.", "git.", "params.hash"))})
    return client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run_id, tags=tags)


def version_metrics(version) -> dict[str, float]:
    return {k[len("metric."):]: float(v) for k, v in version.tags.items() if k.startswith("metric.")}


def champion(name: str, client=None):
    client = client or _client()
    try:
        return client.get_model_version_by_alias(name, "champion")
    except Exception:  # noqa: BLE001 — no such alias yet
        return None


def promote_if_better(name: str, version: str, metrics: list[str], min_improvement: float = 0.0,
                      client=None) -> Decision:
    """Alias the version `candidate`; compare it with the `champion`; move `champion` only if `decide` says so."""
    client = client or _client()
    candidate = client.get_model_version(name, version)
    client.set_registered_model_alias(name, "candidate", version)
    current = champion(name, client)
    decision = decide(version_metrics(candidate), version_metrics(current) if current else None, metrics,
                      min_improvement)
    decision.champion_version = current.version if current else None
    if decision.promote:
        client.set_registered_model_alias(name, "champion", version)
    client.set_model_version_tag(name, version, "promotion", "champion" if decision.promote else "rejected")
    client.set_model_version_tag(name, version, "promotion.reason", decision.reason)
    return decision
