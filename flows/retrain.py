"""The scheduled retraining flow: run the pipeline for a candidate, promote it only if it beats the champion.

    prefect server start                  # terminal 1: schedules need a real Prefect server (not ephemeral mode)
    PREFECT_API_URL=http://127.0.0.1:4200/api stepcode schedule     # terminal 2: serves the cron deployment
    PREFECT_API_URL=http://127.0.0.1:4200/api prefect deployment run 'stepcode-retrain/scheduled-retrain'  # now

A retraining run = the pipeline flow as a subflow (data → train → evaluate → register a new model version, aliased
`candidate`), then `stepcode.tracking.registry.promote_if_better`: the `champion` alias moves only when the
candidate is no
worse on every `pipeline.promote_metrics` metric and better on one. The decision and the comparison are recorded on
the pipeline's MLflow run (tags `promotion.*`, artifact `promotion.json`) and on the model version.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.pipeline import load_project_params, pipeline, task_runner


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


@flow(name="stepcode-retrain", log_prints=True)
def retrain(profile: str | None = None, params_path: str = "params.yaml", root: str = ".") -> dict:
    params = load_project_params(root, params_path)
    workers = params.sandbox.resolved_workers()
    outcome = pipeline.with_options(task_runner=task_runner(workers))(profile=profile, params_path=params_path,
                                                                       root=root)
    if "model" not in outcome:
        raise RuntimeError("the pipeline registered no model (is tracking enabled?)")
    params_json = json.dumps(params.model_dump(mode="json", by_alias=True))
    outcome["promotion"] = promote(outcome["model"], outcome.get("mlflow_run_id"), params_json)
    print(f"promotion: {outcome['promotion']['reason']}")
    return outcome


def serve(profile: str | None = None, params_path: str = "params.yaml", root: str = ".") -> None:
    """Serve the retraining deployment on the cron schedule from params (blocks; needs PREFECT_API_URL)."""
    cron = load_project_params(root, params_path).pipeline.schedule_cron
    retrain.serve(name="scheduled-retrain", cron=cron,
                  parameters={"profile": profile, "params_path": params_path, "root": str(Path(root).resolve())})
