"""Lineage commands: get a run's data back, run it again.

    stepcode lineage fetch RUN_ID [--role traces] -o DIR      # the exact bytes a run logged, from the DVC remote
    stepcode reproduce RUN_ID [--stop-after build] [--keep]   # rerun it at its commit with its params; compare md5s
    stepcode lineage sync                                     # log the runs still pending (stepcode.tracking.pending)

Run them from the project folder (its DVC cache and remote, its MLflow store: params tracking.uri, or
MLFLOW_TRACKING_URI). Exit codes: 0 done (reproduce: every output identical); 1 reproduce: some output differs;
2 bad input (unknown run or role, an md5 the remote does not hold, a commit this clone lacks).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal, Optional

import typer

from stepcode.commands.common import ParamsOpt, check_output, fail, load_params, writing
from stepcode.pipeline.spec import BY_NAME

DVC_STAGES = tuple(BY_NAME)


def open_store(params):
    """Point MLflow at the project's store (env MLFLOW_TRACKING_URI wins); a one-line error when the default sqlite
    file is not there (no runs: not the project folder). Returns an MlflowClient."""
    from stepcode.tracking import pending

    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.uri
    if (uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file()
            and not pending.records(pending.pending_dir(params))):
        fail(f"no MLflow store at {uri}, so no runs: run from the project root, or set MLFLOW_TRACKING_URI "
             "(params: tracking.uri)")
    from mlflow.tracking import MlflowClient

    from stepcode.tracking.lineage import configure

    configure(params)
    return MlflowClient()


def _project_root() -> Path:
    root = Path.cwd()
    if not (root / ".dvc").is_dir():
        fail(f"{root} is not a DVC project (no .dvc folder): run from the project folder")
    return root


def lineage_fetch(run_id: str = typer.Argument(..., help="an MLflow run id: a pipeline run (the datasets of its "
                                                         "stage runs) or one stage run"),
                  out: Path = typer.Option(..., "-o", "--out", help="folder to restore into (created; each dataset "
                                                                   "under the name it had: traces/, dataset/)"),
                  role: Optional[str] = typer.Option(None, "--role", help="only this dataset: a role the run logged "
                                                     "(programs, traces, dataset, sft_data, rl_data, heldout, model; "
                                                     "of a pipeline run also STAGE.ROLE, e.g. grpo.model); "
                                                     "default: all"),
                  params_path: Path = ParamsOpt):
    """Restore the exact bytes of the datasets (and models) a run logged, from the DVC remote, md5 verified."""
    from stepcode.tracking.fetch import fetch

    params = load_params(params_path)
    root = _project_root()
    check_output(out, "-o", directory=True)
    client = open_store(params)
    with writing("-o", out):
        restored = fetch(client, root, run_id, out, role)
    for r in restored:
        typer.echo(f"{r.path}  {r.md5}  {', '.join(r.roles)}  "
                   + ("(already there, md5 verified)" if r.already else "(restored, md5 verified)"))


def reproduce(run_id: str = typer.Argument(..., help="an MLflow pipeline run id (a stage run: its pipeline run, "
                                                     "up to that stage)"),
              stop_after: Optional[Literal[DVC_STAGES]] = typer.Option(
                  None, "--stop-after", help="reproduce the stages up to this one (default: every stage the run ran)"),
              keep: bool = typer.Option(False, "--keep", help="keep the temporary worktree (its path is printed)"),
              params_path: Path = ParamsOpt):
    """Run a pipeline run again in a git worktree at its commit, with its params and inputs; compare every output's
    md5 with the run's."""
    from stepcode.pipeline.reproduce import notes
    from stepcode.pipeline.reproduce import reproduce as run_reproduce

    params = load_params(params_path)
    root = _project_root()
    client = open_store(params)
    result = run_reproduce(client, root, run_id, stop_after, keep=keep, stream=sys.stderr,
                           echo=lambda line: typer.echo(line, err=True))   # stdout: the verdict only
    for kind, line in notes(result):
        typer.echo(f"{kind}: {line}", err=True)
    check, stages = result.check, ", ".join(result.plan.stages)
    for path in check.same:
        typer.echo(f"identical  {path}")
    for path, logged, got in check.differ:
        typer.echo(f"differs    {path}  (run {logged}, reproduced {got})")
    for path in check.missing:
        typer.echo(f"missing    {path}  (the reproduction did not write it)")
    if result.worktree:
        typer.echo(f"worktree kept: {result.worktree} (remove: git worktree remove --force {result.worktree})")
    total = len(check.same) + len(check.differ) + len(check.missing)
    if check.identical:
        typer.echo(f"identical: all {total} outputs of {stages} match run {result.plan.run_id}")
        return
    typer.echo(f"differ: {len(check.differ) + len(check.missing)} of {total} outputs of {stages} do not match run "
               f"{result.plan.run_id}")
    raise typer.Exit(1)


def lineage_sync(params_path: Path = ParamsOpt):
    """Log to MLflow the runs that stages started alone recorded (params tracking.pending_dir) and the background
    logger has not logged yet; waits for a logger at work. Exit 1 if a record could not be logged (it stays)."""
    from stepcode.tracking import pending

    params = load_params(params_path)
    folder = pending.pending_dir(params)
    if not pending.records(folder):
        typer.echo(f"nothing pending in {folder}")
        return
    out = pending.flush(folder)
    if not out["logged"] and not out["running"] and not out["failed"]:
        typer.echo(f"nothing left pending in {folder} (the background logger logged it)")
        return
    typer.echo(f"logged {len(out['logged'])} run(s): {' '.join(out['logged']) or '-'}"
               + (f"; {out['running']} still running (their commands have not ended)" if out["running"] else ""))
    for name, reason in out["failed"].items():
        typer.echo(f"not logged: {folder / name}: {reason}", err=True)
    if out["failed"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    lineage = typer.Typer(help="A run's lineage: get back the data it logged.", no_args_is_help=True)
    app.add_typer(lineage, name="lineage")
    lineage.command("fetch")(lineage_fetch)
    lineage.command("sync")(lineage_sync)
    app.command("reproduce")(reproduce)
