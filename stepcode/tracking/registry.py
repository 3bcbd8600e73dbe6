"""Model versions in the MLflow registry, and the champion/candidate promotion rule.

    from stepcode.tracking.registry import log_model, register_model, decide, promote_if_better
    log_model("models/tiny-cpu/grpo-bilevel")          # in the training run: an MLflow transformers model
    mv = register_model(model_dir, "stepcode-tiny", run_id, metrics={"heldout.final_acc": 0.41})   # alias candidate
    mlflow.transformers.load_model("models:/stepcode-tiny@candidate")  # a text-generation pipeline, ready to use
    decision = promote_if_better("stepcode-tiny", mv.version, ["heldout.final_acc", "heldout.step_acc"])

A model is logged with `mlflow.transformers` (weights, tokenizer, chat template, task "text-generation", an MLmodel
file) by the training run that made it (`stages.grpo`), tagged with its DVC md5; registering finds that logged model
by the md5, so the version's source run is the training run, and through its tags the exact data and code. (A model
no run logged, e.g. trained with tracking off, is logged by the registering run.) The evaluation metrics are logged
on the logged model (the version page shows them; `version_metrics` reads them), the version gets a generated model
card as its description (`model_card`: data digests, training params, metrics, limits) and the alias `candidate`.
Aliases, not stages (MLflow 3): `candidate` always moves to the newest version; `champion` moves only when `decide`
says so (`promote_if_better`, the retraining flow).
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


def _requirements() -> list[str]:
    """What loading the model needs, pinned to what made it (MLflow would otherwise infer them by importing things)."""
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("transformers", "torch", "tokenizers", "safetensors")]


def log_model(model_dir: str, *, card: str | None = None):
    """Log the HF model folder as an MLflow transformers model ("text-generation", tokenizer and chat template
    included) on the active run, tagged `model.md5` (its DVC md5). Returns mlflow's ModelInfo."""
    import logging

    import mlflow
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from stepcode.tracking.lineage import dvc_md5

    md5 = dvc_md5(model_dir)
    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    quiet = logging.getLogger("mlflow.transformers")      # "no model card on the hub", "no licence": local models
    level, quiet.level = quiet.level, logging.ERROR
    try:
        return mlflow.transformers.log_model({"model": model, "tokenizer": tokenizer}, name="model",
                                             task="text-generation", tags={"model.md5": md5},
                                             pip_requirements=_requirements(), model_card=card)
    finally:
        quiet.level = level


def logged_model_for(md5: str):
    """The newest logged model tagged with this DVC md5, or None."""
    import mlflow

    found = mlflow.search_logged_models(filter_string=f"tags.`model.md5` = '{md5}'", order_by=[
        {"field_name": "creation_timestamp", "ascending": False}], max_results=1, output_format="list")
    return found[0] if found else None


def model_card(name: str, version: str, training_run, metrics: dict[str, float]) -> str:
    """The version's description, in markdown: where the model comes from (run, data digests, code), how it was
    trained (the run's params), what it scored, and what it is not."""
    tags, params = training_run.data.tags, training_run.data.params
    lines = [f"# {name} v{version}", "",
             f"Trained by MLflow run `{training_run.info.run_id}` ({training_run.info.run_name}), git commit "
             f"`{tags.get('git.commit', '?')[:12]}`{' (dirty tree)' if tags.get('git.dirty') == 'true' else ''}.",
             "", "## Data (DVC md5)", ""]
    lines += [f"- {k[len('dvc.md5.'):]}: `{v}`" for k, v in sorted(tags.items()) if k.startswith("dvc.md5.")]
    lines += ["", "## Training", ""]
    lines += [f"- {k}: {v}" for k, v in sorted(params.items())][:40]
    from stepcode.tracking.compare import natural_key, show

    lines += ["", "## Metrics", "", "Held-out accuracies (`*_acc`, fractions in MLflow) as percent, `gap` in "
              "percentage points; benchmark pass@k and step accuracy are percent.", "", "| metric | value |",
              "|---|---:|"]
    lines += [f"| {k} | {show(k, v)} |" for k, v in sorted(metrics.items(), key=lambda kv: natural_key(kv[0]))]
    lines += ["", "## Limits", "",
              "StepCode predicts Python execution step by step (anchor prints, then the answer). Held-out numbers are "
              "in-distribution (the training corpus's program sources); benchmark numbers at this scale are not "
              "comparable to the paper's 7B model. The model has not been checked for any other use."]
    return "\n".join(lines) + "\n"


def register_model(model_dir: str, name: str, run_id: str, metrics: dict[str, float] | None = None,
                   client=None):
    """Register the logged model with this folder's md5 (logging it on run `run_id` if no run did), log `metrics`
    on it, describe the version with its model card, alias it `candidate`. The same model files (by DVC md5) are
    registered once: a re-run returns the existing version (and moves `candidate` to it)."""
    import mlflow

    from stepcode.tracking.lineage import dvc_md5

    client = client or _client()
    md5 = dvc_md5(model_dir)
    try:
        client.get_registered_model(name)
    except Exception:  # noqa: BLE001 — MLflow raises RESOURCE_DOES_NOT_EXIST as a generic MlflowException
        client.create_registered_model(name, description="StepCode models (MLflow transformers flavor, "
                                                         "text-generation), one version per training run")
    for existing in client.search_model_versions(f"name = '{name}'"):
        if existing.tags.get("model.md5") == md5:
            client.set_registered_model_alias(name, "candidate", existing.version)
            return client.get_model_version(name, existing.version)
    logged = logged_model_for(md5)
    if logged is None:     # no run logged these files (trained with tracking off): the registering run logs them
        logged = mlflow.get_logged_model(_log_on(run_id, model_dir).model_id)
    metrics = metrics or {}
    if metrics:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, run_id=run_id, model_id=logged.model_id)
    source_run = client.get_run(logged.source_run_id)
    tags = {"model.md5": md5, **{k: v for k, v in source_run.data.tags.items()
                                 if k.startswith(("dvc.md5.", "git.", "params.hash"))}}
    version = mlflow.register_model(logged.model_uri, name, tags=tags)   # source run = the logged model's run
    card = model_card(name, version.version, source_run, metrics)
    client.update_model_version(name, version.version, description=card)
    client.log_text(run_id, card, "model_card.md")
    client.set_registered_model_alias(name, "candidate", version.version)
    return client.get_model_version(name, version.version)


def _log_on(run_id: str, model_dir: str):
    import mlflow

    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        return log_model(model_dir)
    with mlflow.start_run(run_id=run_id, nested=active is not None):
        return log_model(model_dir)


def model_id_of(version) -> str | None:
    """The logged model behind a version (its `model_id`, or the `models:/m-...` source it was registered from)."""
    if getattr(version, "model_id", None):
        return version.model_id
    source = version.source or ""
    return source[len("models:/"):] if source.startswith("models:/m-") else None


def version_metrics(version) -> dict[str, float]:
    """The metrics logged on the version's model (older versions: their `metric.<name>` tags)."""
    model_id = model_id_of(version)
    if model_id:
        import mlflow

        return {m.key: m.value for m in mlflow.get_logged_model(model_id).metrics or []
                if not m.key.startswith("system/")}     # the training run's CPU/disk samples are not results
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
