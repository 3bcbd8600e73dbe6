"""What every command shares: the --params and --profile options, loading params (with command-line overrides),
checking inputs before any work starts, and failing in one line.

Errors the user fixes are `stepcode.errors.UserError`s: `fail()` raises one, and so does the library (a bad params
file, a malformed or missing input). `StepcodeGroup`, the top-level command group, prints each as one line on
stderr (`error: ...`) and exits 2; it prints a bad option or a missing one (click's usage errors, raised while the
command line is parsed, before any command starts) the same way. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError  # typer vendors click (pinned)
from typer.core import TyperGroup

from stepcode.errors import UserError
from stepcode.training.modes import MODES

GRPO_MODES = tuple(MODES)   # the choices of `train grpo --mode`

ParamsOpt = typer.Option(Path("params.yaml"), "--params", help="the configuration file (absent ./params.yaml: the "
                                                                "embedded defaults)")


def _profiles_for_help() -> str:
    """The profiles the --profile help lists: those of the params file on this command line (./params.yaml, else the
    embedded defaults). Read only when the command line asks a command for its --help, so nothing else pays for it."""
    argv = sys.argv[1:]
    if "--help" not in argv[1:]:   # not `stepcode --help`: the top level has no --profile
        return ""
    path = Path("params.yaml")
    for i, arg in enumerate(argv):
        if arg == "--params" and i + 1 < len(argv):
            path = Path(argv[i + 1])
        elif arg.startswith("--params="):
            path = Path(arg.split("=", 1)[1])
    try:
        if path.is_file():
            import yaml

            raw = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
            names = (raw.get("train") or {}).get("profiles") or {}
            where = str(path)
        if not path.is_file() or not names:
            from stepcode.config import TrainParams

            names, where = TrainParams().profiles, "the embedded defaults"
        return f"; in {where}: {', '.join(names)}"
    except Exception:  # noqa: BLE001 -- only decorates the help; the command itself reports a bad params file
        return ""


ProfileOpt = typer.Option(None, "--profile", help="training profile, one of train.profiles in the --params file "
                                                  f"(default: train.profile){_profiles_for_help()}")


def fail(message: str, code: int = 2):
    """Stop the command with a user error: `error: MESSAGE` on stderr, one line, exit `code` (2: bad input)."""
    raise CommandError(message, code)


class CommandError(UserError):
    """A user error found by a command's own checks, with its exit code."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def load_params(path: Path, **overrides):
    """params.yaml (all defaults when the default file is absent) with `section.key=value` overrides applied; the
    result is validated like the file. A bad file or override is a user error (ConfigError) that names the key."""
    from stepcode.config import load_params as load
    from stepcode.config import parse_params

    if path != Path("params.yaml") and not path.is_file():
        fail(f"--params {path}: no such file")
    params = load(path if path.exists() else None)
    chosen = {k: v for k, v in overrides.items() if v is not None}
    if chosen:
        raw = params.model_dump(by_alias=True)
        for dotted, value in chosen.items():
            section, key = dotted.split(".")
            raw[section][key] = value
        params = parse_params(raw, source=f"{path} + command-line options")
    return params


def check_profile(profile: Optional[str], params_path: Path):
    """The params (as `load_params`), after checking --profile against their train.profiles: an unknown name is
    one line naming the valid ones and exit 2, before any work. None (the params' train.profile) is always valid."""
    params = load_params(params_path)
    if profile is not None and profile not in params.train.profiles:
        where = params_path if params_path.exists() else "the embedded defaults"
        fail(f"--profile {profile!r} is not a training profile; valid: {', '.join(sorted(params.train.profiles))} "
             f"(train.profiles in {where})")
    return params


def require_file(path: Path, what: str, hint: str = "") -> None:
    """A user error unless `path` is a file: `WHAT PATH: no such file (HINT)`."""
    if not path.is_file():
        fail(f"{what} {path}: {'is a directory, not a file' if path.is_dir() else 'no such file'}"
             + (f" ({hint})" if hint else ""))


def require_exists(path: Path, what: str, hint: str = "") -> None:
    """A user error unless `path` is a file or a directory."""
    if not path.exists():
        fail(f"{what} {path}: no such file or directory" + (f" ({hint})" if hint else ""))


def require_model_dir(path: Path, what: str = "--model") -> None:
    """A user error unless `path` is a local Hugging Face model directory (it has a config.json)."""
    if not (path / "config.json").is_file():
        fail(f"{what} {path}: not a local Hugging Face model directory (no config.json)"
             + ("" if path.exists() else "; no such directory"))


def split_choices(value: str, valid, option: str) -> tuple[str, ...]:
    """A comma-separated list, each item checked against `valid`: a user error naming the valid values."""
    items = tuple(s.strip() for s in value.split(",") if s.strip())
    bad = [s for s in items if s not in valid]
    if bad or not items:
        what = f"unknown value(s) {', '.join(map(repr, bad))}" if bad else "no value"
        raise typer.BadParameter(f"{what}; valid: {', '.join(valid)} (comma-separated)", param_hint=f"'{option}'")
    return items


def one_line(message: str) -> str:
    """A message on one line: its lines joined by '; '."""
    return "; ".join(s.strip() for s in str(message).splitlines() if s.strip())


def _echo_error(message: str) -> None:
    # pydantic words a validator's ValueError "Value error, MESSAGE" (typer checks choices, config the params with it)
    typer.echo(f"error: {one_line(message).replace('Value error, ', '')}", err=True)


def _click_message(e: ClickException) -> str:
    message = e.format_message()
    message = message[:1].lower() + message[1:] if message[1:2].islower() else message
    ctx = getattr(e, "ctx", None)
    if isinstance(e, UsageError) and ctx is not None:
        message = f"{one_line(message).rstrip('.')}; see '{ctx.command_path} --help'"
    return message


class StepcodeGroup(TyperGroup):
    """The top-level `stepcode` group. A user error (stepcode.errors.UserError, from a command or the library) and a
    usage error (a bad or missing option, an unknown command) print one line, `error: ...`, and exit 2 (a
    CommandError: its own code); a bug keeps its traceback. Also under typer.testing.CliRunner, which calls main()."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            _echo_error(str(e))
            raise typer.Exit(getattr(e, "exit_code", 2)) from None

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode: bool = True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as e:  # `stepcode` alone, `stepcode train`: the help (rich prints it already)
            if e.format_message().strip():
                typer.echo(e.format_message(), err=True)
            sys.exit(e.exit_code)
        except ClickException as e:
            _echo_error(_click_message(e))
            sys.exit(e.exit_code)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        # non-standalone click returns the code of a typer.Exit, else what the command returned (None)
        sys.exit(rv if isinstance(rv, int) else 0)
