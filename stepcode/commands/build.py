"""`stepcode build`: trace rows -> sft.jsonl, rl.jsonl, heldout.jsonl, stats.json, decontamination.json.

    stepcode build data/traces.jsonl -o data/build
    stepcode build data/traces.jsonl -o data/build --heldout-fraction 0.2 --no-input-task
    stepcode build data/traces.jsonl -o data/dataset --metrics metrics/build.json   # as dvc.yaml runs it

Exit codes: 0 built; 1 built, but no training example came out (sft.jsonl is empty); 2 bad input (a missing or
malformed file, an invalid row).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from stepcode.commands.common import ParamsOpt, check_output, fail, load_params, require_table, writing


def register(app: typer.Typer) -> None:
    @app.command()
    def build(traces: Path = typer.Argument(..., help="trace rows (JSONL, from `stepcode trace`)"),
              out: Path = typer.Option(..., "-o", "--out", help="output directory"),
              heldout_fraction: Optional[float] = typer.Option(None, "--heldout-fraction",
                                                               help="share of programs held out (default: params)"),
              input_task: Optional[bool] = typer.Option(None, "--input-task/--no-input-task",
                                                        help="also emit input-prediction examples (default: params)"),
              metrics: Optional[Path] = typer.Option(None, "--metrics", help="also write the counts (rows kept and "
                                                     "dropped, examples per split and task) as a DVC metric"),
              params_path: Path = ParamsOpt):
        """Build SFT/RL/held-out examples from trace rows, decontaminated against CRUXEval, REval (and LCB)."""
        from stepcode.pipeline import stages
        params = load_params(params_path, **{"build.heldout_fraction": heldout_fraction,
                                             "build.input_task": input_task})
        require_table(traces, "TRACES", "write it with `stepcode trace`")
        check_output(out, "-o", directory=True)
        check_output(metrics, "--metrics")
        try:
            with writing("-o", out):
                stats = stages.build(params, traces, out)
        except ValueError as e:  # bad rows the library still reports as plain ValueErrors (duplicate ids, ...)
            fail(str(e))
        if metrics:
            from stepcode.data.dataset import write_metrics

            with writing("--metrics", metrics):
                write_metrics(stats, metrics)
        typer.echo(f"{stats['rows_in']} trace rows -> {stats['rows_kept']} kept; "
                   f"sft {stats['files']['sft']}, rl {stats['files']['rl']}, heldout {stats['files']['heldout']}")
        typer.echo("rows out: " + json.dumps(stats["rows_out"]))
        if stats["examples_out"]:
            typer.echo("examples out: " + json.dumps(stats["examples_out"]))
        if not stats["files"]["sft"]:
            typer.echo("error: no training example (sft.jsonl is empty)", err=True)
            raise typer.Exit(1)
