"""Data commands: the great-expectations gate over a trace table.

    stepcode validate data/traces.jsonl --report reports/validate
    # exit 0: passed; 1: failed (every failed expectation printed; bad rows in reports/validate/quarantine.jsonl);
    # 2: the file is missing or is not JSONL
"""

from __future__ import annotations

from pathlib import Path

import typer


def validate(traces: Path = typer.Argument(..., help="trace rows (JSONL), as written by `stepcode trace`"),
             report: Path = typer.Option(..., "--report", help="report dir: summary.json, quarantine.jsonl, "
                                         "Data Docs HTML under gx/"),
             params_path: Path = typer.Option(Path("params.yaml"), "--params", help="the configuration file")):
    """Run the data gate on a trace table; exit 1 if any expectation fails."""
    from stepcode.config import ConfigError, load_params
    from stepcode.corpus import CorpusError
    from stepcode import stages

    try:
        params = load_params(params_path if params_path.exists() or params_path != Path("params.yaml") else None)
    except ConfigError as e:
        raise typer.BadParameter(str(e)) from None
    if not traces.is_file():
        typer.echo(f"error: {traces}: no such file", err=True)
        raise typer.Exit(2)
    try:
        result = stages.validate(params, traces, report)
    except CorpusError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    typer.echo(result.describe())
    if not result.success:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
