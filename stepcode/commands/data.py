"""Data commands: the great-expectations gate over a trace table.

    stepcode validate data/traces.jsonl --report reports/validate
    # exit 0: passed; 1: failed (every failed expectation printed; bad rows in reports/validate/quarantine.jsonl);
    # 2: the file is missing or is not JSONL
"""

from __future__ import annotations

from pathlib import Path

import typer

from stepcode.commands.common import ParamsOpt, check_output, load_params, require_table, writing


def validate(traces: Path = typer.Argument(..., help="trace rows (JSONL), as written by `stepcode trace`"),
             report: Path = typer.Option(..., "--report", help="report dir: summary.json, quarantine.jsonl, "
                                         "Data Docs HTML under gx/"),
             params_path: Path = ParamsOpt):
    """Run the data gate on a trace table; exit 1 if any expectation fails."""
    from stepcode.pipeline import stages
    params = load_params(params_path)
    require_table(traces, "TRACES", "write it with `stepcode trace`")
    check_output(report, "--report", directory=True)
    with writing("--report", report):
        result = stages.validate(params, traces, report)   # a malformed line: CorpusError, one line, exit 2
    typer.echo(result.describe())
    if not result.success:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
