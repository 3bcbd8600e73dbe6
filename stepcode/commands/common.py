"""What every command shares: the --params option, loading it (with command-line overrides), failing clearly."""

from __future__ import annotations

from pathlib import Path

import typer

ParamsOpt = typer.Option(Path("params.yaml"), "--params", help="the configuration file")


def load_params(path: Path, **overrides):
    """params.yaml (all defaults when the default file is absent) with `section.key=value` overrides applied; the
    result is validated like the file. A bad file or override is a usage error that names the key."""
    from stepcode.config import ConfigError, load_params as load, parse_params

    try:
        params = load(path if path.exists() or path != Path("params.yaml") else None)
        chosen = {k: v for k, v in overrides.items() if v is not None}
        if chosen:
            raw = params.model_dump(by_alias=True)
            for dotted, value in chosen.items():
                section, key = dotted.split(".")
                raw[section][key] = value
            params = parse_params(raw, source=f"{path} + command-line options")
        return params
    except ConfigError as e:
        raise typer.BadParameter(str(e)) from None


def fail(message: str, code: int = 2):
    """Print an error and exit (2: bad input, by convention of every command)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
