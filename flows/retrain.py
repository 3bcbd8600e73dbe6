"""The scheduled retraining flow: run the pipeline for a candidate, promote it only if it beats the champion.

    prefect server start                  # terminal 1: schedules need a real Prefect server (not ephemeral mode)
    PREFECT_API_URL=http://127.0.0.1:4200/api stepcode schedule     # terminal 2: serves the cron deployment
    PREFECT_API_URL=http://127.0.0.1:4200/api prefect deployment run 'stepcode-retrain/scheduled-retrain'  # now

A retraining run = the pipeline flow as a subflow (data → train → evaluate → register a new model version, aliased
`candidate`), then `stepcode.tracking.registry.promote_if_better`: the `champion` alias moves only when the
candidate is no
worse on every `pipeline.promote_metrics` metric and better on one. The decision and the comparison are recorded on
the pipeline's MLflow run (tags `promotion.*`, artifact `promotion.json`), on the model version, and in the Prefect UI:
the flow run is named "retrain <profile> grpo=<mode> params=<hash> <date>" and its markdown artifact
(`stepcode-retrain-decision`) says what was decided and why, metric by metric.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.pipeline import _run_name, load_project_params, pipeline
from flows.runners import task_runner

DECISION_KEY = "stepcode-retrain-decision"


@task(name="promote", cache_policy=NO_CACHE, retries=0)
def promote(model: dict, run_id: str | None, params_json: str) -> dict:
    from mlflow.tracking import MlflowClient

    from flows.pipeline import _params
    from stepcode.tracking.lineage import configure
    from stepcode.tracking.registry import promote_if_better

    params = _params(params_json)
    configure(params)
    p = params.pipeline
    decision = promote_if_better(model["name"], model["version"], list(p.promote_metrics), p.min_improvement)
    record = dict(decision.as_dict(), model=model["name"], version=model["version"])
    if run_id:
        client = MlflowClient()
        client.set_tag(run_id, "promotion.decision", "promoted" if decision.promote else "kept champion")
        client.set_tag(run_id, "promotion.reason", decision.reason)
        client.log_dict(run_id, record, "promotion.json")
    return record


def _retrain_name() -> str:
    return _run_name("retrain ")


def decision_markdown(record: dict, metrics: list[str], pipeline_run: str | None) -> str:
    """The retraining run's decision for the Prefect UI: promoted or not, why, and the compared metrics."""
    model, version, before = record["model"], record["version"], record.get("champion_version")
    if record["promote"]:
        out = ["## Promoted", "", f"{model} v{version} is the new `champion`"
               + (f" (it replaces v{before})." if before else " (there was none).")]
    else:
        out = ["## Kept the champion", "", f"v{before} stays `champion`; the new {model} v{version} stays "
               "`candidate`." if before else f"{model} v{version} stays `candidate`."]
    out += ["", f"Reason: {record['reason']}.", ""]
    champion = record.get("champion") or {}
    rows = [m for m in metrics if m in record.get("candidate", {}) or m in champion]
    if rows:
        out += ["| metric (higher is better) | candidate | champion | change |", "|---|---:|---:|---:|"]
        for m in rows:
            cand, champ = record["candidate"].get(m), champion.get(m)
            delta = "" if cand is None or champ is None else f"{cand - champ:+.3g}"
            out.append(f"| `{m}` | {'' if cand is None else f'{cand:.3g}'} | "
                       f"{'(none)' if champ is None else f'{champ:.3g}'} | {delta} |")
        out.append("")
    if pipeline_run:
        out += [f"Recorded on the pipeline's MLflow run `{pipeline_run}` (tags `promotion.*`, `promotion.json`) and "
                "on the model version. The training run's summary is the `stepcode-pipeline-summary` artifact of "
                "this run's pipeline subflow (Subflow Runs tab).", ""]
    return "\n".join(out)


@flow(name="stepcode-retrain", log_prints=False, flow_run_name=_retrain_name)   # why not log_prints: flows/pipeline.py
def retrain(profile: str | None = None, params_path: str = "params.yaml", root: str = ".") -> dict:
    params = load_project_params(root, params_path)
    outcome = pipeline.with_options(task_runner=task_runner(params))(profile=profile, params_path=params_path,
                                                                       root=root)
    if "model" not in outcome:
        raise RuntimeError("the pipeline registered no model (is tracking enabled?)")
    params_json = json.dumps(params.model_dump(mode="json", by_alias=True))
    outcome["promotion"] = promote(outcome["model"], outcome.get("mlflow_run_id"), params_json)
    get_run_logger().info(f"promotion: {'promoted' if outcome['promotion']['promote'] else 'kept the champion'}: "
                          f"{outcome['promotion']['reason']}")
    try:
        create_markdown_artifact(key=DECISION_KEY, description="StepCode retraining: promoted or kept the champion, "
                                                               "and why, metric by metric",
                                 markdown=decision_markdown(outcome["promotion"],
                                                            list(params.pipeline.promote_metrics),
                                                            outcome.get("mlflow_run_id")))
    except Exception as e:  # noqa: BLE001 - the decision is made and recorded in MLflow: never a failed run
        get_run_logger().warning(f"could not create the decision artifact: {type(e).__name__}: {e}")
    return outcome


def serve(profile: str | None = None, params_path: str = "params.yaml", root: str = ".") -> None:
    """Serve the retraining deployment on the cron schedule from params (blocks; needs PREFECT_API_URL)."""
    cron = load_project_params(root, params_path).pipeline.schedule_cron
    retrain.serve(name="scheduled-retrain", cron=cron,
                  parameters={"profile": profile, "params_path": params_path, "root": str(Path(root).resolve())})
