"""Orchestration commands: `stepcode pipeline`, `stepcode compare` — thin wrappers over flows/ and
stepcode.tracking.compare."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Literal, Optional

import typer

from stepcode.commands.common import (
    ParamsOpt,
    ProfileOpt,
    check_output,
    check_params_workers,
    check_profile,
    fail,
    load_params,
    writing,
)
from stepcode.pipeline import termination
from stepcode.pipeline.preflight import STOP_POINTS
from stepcode.pipeline.summary import lineage_lines, summarize_outcome  # noqa: F401  (lineage_lines: re-exported)


def prefect_env(root: Path) -> None:
    """Embedded defaults for Prefect, set before it is imported: a private home (sqlite DB, results) inside the
    project, no analytics, and a start-up timeout that a loaded 2-core machine can meet. `PREFECT_API_URL`, when set,
    points at a real server instead (see README: `prefect server start`)."""
    home = root / ".prefect"
    os.environ.setdefault("PREFECT_HOME", str(home))
    os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(home / "results"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_UI_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # The console shows warnings only (the CLI prints its own summary); the flow and task runs' logs (INFO: stage
    # lines, task states) go to the Prefect API, so its UI shows them. The stages' own loggers (`stepcode.*`: their
    # warnings) go there too; a record logged outside a run is not an error.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "stepcode")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")


def _check_runs(mlflow, run_ids: list[str]) -> None:
    """A user error naming the run ids the tracking store does not have."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client, unknown = MlflowClient(), []
    for run_id in run_ids:
        try:
            client.get_run(run_id)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            unknown.append(run_id)
    if unknown:
        fail(f"unknown run id(s) {', '.join(map(repr, unknown))}: no such run in {mlflow.get_tracking_uri()} "
             f"(list them: mlflow ui, or `mlflow runs list --experiment-id ID`)")


def register(app: typer.Typer) -> None:
    @app.command()
    def pipeline(profile: Optional[str] = ProfileOpt,
                 stop_after: Optional[Literal[STOP_POINTS]] = typer.Option(
                     None, "--stop-after", help="end after this stage (default: all of them, then evaluate)"),
                 params_path: Path = ParamsOpt):
        """Run the whole flow (trace → validate → build → sft → grpo → evaluate) on embedded defaults."""
        import json
        import time

        from stepcode.pipeline.preflight import check_pipeline

        params = check_profile(profile, params_path)   # every option before any work (choices: checked while parsing)
        check_params_workers(params, params_path)
        root = Path.cwd()
        check_output(root, "the project folder", directory=True)   # data/, reports/, models/, mlflow.db go here
        check_pipeline(params, profile, stop_after, root)   # inputs too (the corpus pulled if missing), before Prefect
        prefect_env(root)
        termination.install()
        from flows.pipeline import run_pipeline
        from stepcode.data.validation import GateFailed

        start = time.perf_counter()
        try:
            outcome = run_pipeline(profile=profile, params_path=str(params_path), root=str(root),
                                   stop_after=stop_after)
        except GateFailed as e:
            typer.echo(f"pipeline stopped before training: the data gate failed\n{e}", err=True)
            raise typer.Exit(1) from None
        report = root / "reports" / f"pipeline-{profile or 'default'}.json"
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(outcome, indent=2, default=str) + "\n")
        typer.echo(summarize_outcome(outcome))
        typer.echo(f"\npipeline finished in {time.perf_counter() - start:.0f} s. Where to look:\n"
                   f"  mlflow ui --backend-store-uri sqlite:///mlflow.db     # runs, lineage, the model registry\n"
                   f"  reports/validation/gx/uncommitted/data_docs/local_site/index.html   # the data gate\n"
                   f"  {report.relative_to(root)}   # everything above in JSON; data/dataset/stats.json; metrics/")

    @app.command()
    def retrain(profile: Optional[str] = ProfileOpt, params_path: Path = ParamsOpt):
        """Run one retraining now: pipeline → candidate version → promote only if it beats the champion."""
        import json

        params = check_profile(profile, params_path)   # every option before any work
        check_params_workers(params, params_path)
        root = Path.cwd()
        check_output(root, "the project folder", directory=True)
        prefect_env(root)
        termination.install()
        from flows.pipeline import local_api, quiet_user_errors
        from flows.retrain import retrain as retrain_flow

        with local_api(), quiet_user_errors():
            outcome = retrain_flow(profile=profile, params_path=str(params_path), root=str(root))
        typer.echo(json.dumps(outcome.get("promotion"), indent=2, default=str))

    @app.command()
    def schedule(profile: Optional[str] = ProfileOpt, params_path: Path = ParamsOpt):
        """Serve the scheduled retraining deployment (cron: params pipeline.schedule_cron). Needs a Prefect server:
        run `prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api first."""
        check_profile(profile, params_path)
        root = Path.cwd()
        if not os.environ.get("PREFECT_API_URL"):
            fail("schedules need a Prefect server: run `prefect server start` in another terminal, then "
                 "PREFECT_API_URL=http://127.0.0.1:4200/api stepcode schedule")
        prefect_env(root)
        from flows.retrain import serve

        serve(profile=profile, params_path=str(params_path), root=str(root))

    @app.command()
    def compare(run_ids: List[str] = typer.Argument(..., help="two or more MLflow run ids"),
                metric: Optional[List[str]] = typer.Option(None, "--metric", help="metrics to show (default: all)"),
                out: Path = typer.Option(Path("reports/compare.png"), "--out", help="where to write the PNG"),
                log_artifact: bool = typer.Option(True, "--log/--no-log", help="log the PNG to every run"),
                params_path: Path = ParamsOpt):
        """Datasets and params that differ (by digest: DVC md5s, params sections) and metrics side by side, plus a
        PNG of training curves and benchmark bars."""
        if len(run_ids) < 2:
            raise typer.BadParameter("give at least two run ids", param_hint="RUN_IDS")
        params = load_params(params_path)
        uri = os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.uri   # as stepcode.tracking.lineage.configure,
        if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():   # which would create it
            fail(f"no MLflow store at {uri}, so no runs to compare: run from the project root, or set "
                 "MLFLOW_TRACKING_URI (params: tracking.uri)")
        from stepcode.tracking.compare import compare as run_compare
        from stepcode.tracking.lineage import configure

        check_output(out, "--out")
        mlflow = configure(params)
        _check_runs(mlflow, run_ids)
        with writing("--out", out):
            comparison = run_compare(run_ids, metric, out, log_artifact=log_artifact)
        typer.echo(comparison.table())
        typer.echo(f"\n{comparison.why()}")
        typer.echo(f"\nplot: {out}" + (" (also logged to each run under comparisons/)" if log_artifact else ""))
