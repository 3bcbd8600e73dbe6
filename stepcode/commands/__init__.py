"""Subcommands of the `stepcode` CLI, one module per area (data, train, evaluate, ...).

Each module defines `register(app: typer.Typer) -> None`, adding its commands. Commands stay thin: they parse options,
call one stage function in the library, print a summary and choose the exit code. Heavy imports go inside the
command functions so `stepcode --help` stays fast.
"""

AREAS = ("data", "build", "train", "evaluate", "pipeline", "study", "lineage")
