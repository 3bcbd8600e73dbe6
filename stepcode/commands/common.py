"""What every command shares: the --params and --profile options, loading params (with command-line overrides),
checking inputs, outputs and the sandbox's width before any work starts, and failing in one line.

Errors the user fixes are `stepcode.errors.UserError`s: `fail()` raises one, and so does the library (a bad params
file, a malformed or missing input). `StepcodeGroup`, the top-level command group, prints each as one line on
stderr (`error: ...`) and exits 2; it prints a bad option or a missing one (click's usage errors, raised while the
command line is parsed, before any command starts) the same way, and so a write the machine refuses (a full or
read-only file system, no permission: `writing()` names the output). Anything else is a bug and keeps its traceback.

Stopping: Ctrl-C (SIGINT) raises KeyboardInterrupt, and `StepcodeGroup` turns SIGTERM (and SIGHUP) into
`stepcode.errors.Terminated`, a KeyboardInterrupt, in the main thread. Either unwinds the command, so every `with`
block and `finally` runs (the sandbox stops its servers and removes its temp dirs; atomic writers remove their temp
file, so an output is either complete or untouched); then one line, `error: stepcode CMD: interrupted (SIGINT)`, and
exit 128 + the signal number (130, 143).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Optional

import typer
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError  # typer vendors click (pinned)
from typer.core import TyperGroup

from stepcode.errors import Terminated, UserError
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


# The command-line options that override a params key (`load_params(path, **{"sandbox.workers": workers})`), so
# that a bad value is reported under the option the user typed.
OVERRIDE_OPTIONS = {"sandbox.workers": "--workers", "sandbox.timeout_s": "--timeout", "trace.max_lines": "--max-lines",
                    "tracking.enabled": "--track", "synth.n": "-n", "synth.seed": "--seed",
                    "build.heldout_fraction": "--heldout-fraction", "build.input_task": "--input-task"}


def load_params(path: Path, **overrides):
    """params.yaml (all defaults when the default file is absent) with `section.key=value` overrides applied; the
    result is validated like the file. A bad file or override is a user error (ConfigError) that names the key, and
    for an override the option too."""
    from stepcode.config import ConfigError, parse_params
    from stepcode.config import load_params as load

    if path.is_dir():
        if path == Path("params.yaml"):
            fail("./params.yaml (the default --params) is a directory, not a params file: move it away, or give "
                 "--params FILE.yaml")
        fail(f"--params {path}: is a directory, not a params file (give the YAML file, e.g. "
             f"--params {path / 'params.yaml'})")
    if path != Path("params.yaml") and not path.is_file():
        fail(f"--params {path}: no such file")
    params = load(path if path.exists() else None)
    chosen = {k: v for k, v in overrides.items() if v is not None}
    if chosen:
        raw = params.model_dump(by_alias=True)
        for dotted, value in chosen.items():
            section, key = dotted.split(".")
            raw[section][key] = value
        try:
            params = parse_params(raw, source=f"{path} + command-line options")
        except ConfigError as e:
            message = str(e)
            for dotted, value in chosen.items():
                if dotted in OVERRIDE_OPTIONS:
                    message = message.replace(f"  {dotted}:", f"  {OVERRIDE_OPTIONS[dotted]} {value} ({dotted}):")
            raise ConfigError(message) from None
    return params


# --- the sandbox's width -------------------------------------------------------------------------------------------

WORKERS_PER_CPU = 16   # a sane upper bound: each worker is a server process per hash seed, mostly busy on a core


def max_workers(hash_seeds: int = 2) -> int:
    """The most sandbox workers a command may ask for here: each takes `hash_seeds` uids of the range every sandbox
    on the machine shares (stepcode.sandbox.engine.SANDBOX_UIDS), and more than WORKERS_PER_CPU per core only
    costs memory and start-up time."""
    from stepcode.sandbox.engine import SANDBOX_UIDS

    return max(1, min(SANDBOX_UIDS // max(1, hash_seeds), WORKERS_PER_CPU * (os.cpu_count() or 1)))


def check_workers(workers: Optional[int], what: str = "--workers", hash_seeds: int = 2) -> None:
    """A user error unless `workers` (None: not given) is a sandbox width this machine can start: at least 1, at
    most `max_workers(hash_seeds)`. Checked before any work; otherwise a huge width fails deep in the sandbox
    ("all 4096 sandbox uids in use") after the input was read."""
    if workers is None:
        return
    if workers < 1:
        fail(f"{what} {workers}: must be at least 1 (leave it out for the default: sandbox.workers in the params, "
             "0 there = all cores)")
    limit = max_workers(hash_seeds)
    if workers > limit:
        from stepcode.sandbox.engine import SANDBOX_UIDS

        fail(f"{what} {workers}: too many sandbox workers; at most {limit} here ({WORKERS_PER_CPU} per CPU core on "
             f"{os.cpu_count() or 1} cores, and each worker takes {hash_seeds} of the {SANDBOX_UIDS} sandbox uids)")


def check_params_workers(params, params_path: Path, hash_seeds: int = 2) -> None:
    """`check_workers` for the params' sandbox.workers (0: all cores, always fine)."""
    if params.sandbox.workers:
        check_workers(params.sandbox.workers, f"{params_path}: sandbox.workers =", hash_seeds)


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


def require_table(path: Path, what: str, hint: str = "") -> None:
    """A user error unless `path` is a table: a JSONL file, or a folder of part files (`stepcode trace -o FOLDER`)."""
    if path.is_dir():
        if not any(path.glob("part-*.jsonl")):
            fail(f"{what} {path}: a folder without part-*.jsonl files" + (f" ({hint})" if hint else ""))
        return
    require_file(path, what, hint)


def require_exists(path: Path, what: str, hint: str = "") -> None:
    """A user error unless `path` is a file or a directory."""
    if not path.exists():
        fail(f"{what} {path}: no such file or directory" + (f" ({hint})" if hint else ""))


def require_model_dir(path: Path, what: str = "--model") -> None:
    """A user error unless `path` is a local Hugging Face model directory (it has a config.json)."""
    if not (path / "config.json").is_file():
        fail(f"{what} {path}: not a local Hugging Face model directory (no config.json)"
             + ("" if path.exists() else "; no such directory"))


# --- outputs ---------------------------------------------------------------------------------------------------

# A write the machine refuses: the user fixes it (space, permissions, another location); never a bug, never retried.
WRITE_ERRNOS = {errno.ENOSPC: "free some space, or choose another location",
                errno.EDQUOT: "free some space (disk quota), or choose another location",
                errno.EROFS: "the file system is read-only: choose another location",
                errno.EACCES: "no permission there: fix the permissions, or choose another location",
                errno.EPERM: "not permitted there: fix the permissions, or choose another location"}
PATH_ERRNOS = {errno.EISDIR: "a directory is in the way", errno.ENOTDIR: "a file is in the way"}
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)   # raised by write(), fsync(), close(): no file name on the error


def refused(e: OSError, paths: bool = False) -> bool:
    """Whether `e` is the machine refusing a write (or, with `paths`, a path in the way), to report in one line.
    Only with the file it names, except a full disk, whose error names none: an EACCES or EPERM naming no file
    comes from elsewhere (a syscall of the sandbox, say) and keeps its traceback."""
    known = e.errno in WRITE_ERRNOS or (paths and e.errno in PATH_ERRNOS)
    return known and (e.filename is not None or e.errno in FULL_ERRNOS)


def check_output(path: Optional[Path], what: str, *, directory: bool = False) -> None:
    """Before any work: a user error unless `path` can be written. A file output must not be a directory, a
    directory output not a file; the nearest existing folder above it must be a folder (not `somefile.txt/out`) in
    which a file can be created: one is created there, written and removed (a read-only or full file system, no
    permission). A file system that fills up later is reported when the write fails (`writing`)."""
    if path is None:
        return
    if directory and path.exists() and not path.is_dir():
        fail(f"{what} {path}: is a file, not a directory (give a folder)")
    if not directory and path.is_dir():
        fail(f"{what} {path}: is a directory, not a file (give a file path)")
    # Outputs are written to a temp file beside them and renamed into place: on a device, pipe or socket
    # (-o /dev/stdout) that would replace the node itself with a file.
    parent = os.path.abspath(path if directory else path.parent)
    special = (parent == d or parent.startswith(d + "/") for d in ("/dev", "/proc", "/sys"))
    if (not directory and path.exists() and not path.is_file()) or \
            (any(special) and not (parent + "/").startswith("/dev/shm/")):
        fail(f"{what} {path}: not a regular file (a device, pipe or socket); outputs are written to a temp file "
             "and renamed into place: give a file path")
    folder = path if directory else path.parent
    for existing in (folder, *folder.parents):
        if existing.exists() or existing.is_symlink():
            break
    else:
        existing = Path(".")
    if not existing.is_dir():
        fail(f"{what} {path}: {existing} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".stepcode-write-check-")
        try:
            os.write(fd, b"\n")   # a full file system may still create an empty file
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        fail(f"{what} {path}: cannot write in {existing}: {e.strerror} "
             f"({WRITE_ERRNOS.get(e.errno, 'choose another location')})")


def _within(filename, path: Path) -> bool:
    """Whether the file an OSError names is `path`, inside it, or beside it (an atomic writer's temp file)."""
    try:
        f, p = Path(os.path.abspath(filename)), Path(os.path.abspath(path))
    except (TypeError, ValueError):
        return False
    return f == p or p in f.parents or f.parent == p.parent


def write_failure(e: OSError, what: Optional[str] = None, path: Optional[Path] = None) -> str:
    """One line for a refused write: the path (the output `what PATH` when the error is about it or names no file),
    the reason, the errno's name, the fix."""
    reason = e.strerror or os.strerror(e.errno or 0)
    code = errno.errorcode.get(e.errno or 0, str(e.errno))
    hint = WRITE_ERRNOS.get(e.errno) or PATH_ERRNOS.get(e.errno, "")
    if path is not None and (e.filename is None or _within(e.filename, path)):
        return f"{what} {path}: cannot write it: {reason} [{code}] ({hint})"
    if e.filename is not None:
        return f"{e.filename}: {reason} [{code}] ({hint})"
    return f"{reason} [{code}] ({hint})"


@contextlib.contextmanager
def writing(what: str, path: Optional[Path]):
    """Around the work that writes output `what PATH`: a write the machine refuses (full, read-only, no permission)
    becomes one line naming the output, not a traceback."""
    try:
        yield
    except OSError as e:
        if not refused(e):
            raise
        raise CommandError(write_failure(e, what, path)) from None


@contextlib.contextmanager
def atomic_output(path: Path):
    """A temp path beside `path` for a writer that writes in place; renamed over `path` when the block ends without
    error, removed otherwise, so `path` is either the complete new file or untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)   # mkstemp makes 0600; the result should look like any other written file
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- JSON inputs ---------------------------------------------------------------------------------------------------

def _deepest(text: str) -> tuple[int, int]:
    """(line, depth) of the first deepest point of a JSON text's nesting, strings skipped."""
    import re

    depth = best = 0
    where = 0
    for m in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[{]|[\]}]', text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > best:
                best, where = depth, m.start()
        elif c in "]}":
            depth -= 1
    return text.count("\n", 0, where) + 1, best


def load_json(path: Path, what: str, hint: str = ""):
    """The JSON document in `path`; a missing file, bad UTF-8, bad JSON or JSON nested too deeply for Python's
    parser is one line naming `what PATH:LINE`."""
    require_file(path, what, hint)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        fail(f"{what} {path}:{line}: not valid UTF-8 ({e.reason} at byte {e.start})")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        fail(f"{what} {path}:{e.lineno}: bad JSON ({e.msg} at column {e.colno})")
    except RecursionError:
        line, depth = _deepest(text)
        fail(f"{what} {path}:{line}: JSON nested {depth} levels deep, too deep to read (Python's limit is about "
             f"{sys.getrecursionlimit()})")


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


# --- stopping ------------------------------------------------------------------------------------------------------

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)   # raised as Terminated; SIGINT is Python's own KeyboardInterrupt
_stop_signal: list[int] = []                      # the stop signals this command got (handled or swallowed)


def _on_stop_signal(signum, frame):
    _stop_signal.append(signum)
    raise Terminated(signum)


@contextlib.contextmanager
def _stop_signals_raise():
    """SIGTERM and SIGHUP raise Terminated in the main thread while the command runs (a signal the process
    inherited as ignored, `nohup`, stays ignored); the previous handlers come back afterwards."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, _on_stop_signal)
    _stop_signal.clear()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _signal_of(e: KeyboardInterrupt) -> int:
    if isinstance(e, Terminated):
        return e.signum
    termination = sys.modules.get("stepcode.pipeline.termination")   # `pipeline` routes SIGTERM there
    if termination is not None and termination.requested():
        return int(signal.SIGTERM)
    return int(signal.SIGINT)


def _echo_stopped(command: str, signum: int) -> int:
    """`error: stepcode CMD: interrupted (SIGINT)` (or `terminated (SIGTERM)`); returns the exit code, 128 + signum."""
    word = "interrupted" if signum == signal.SIGINT else "terminated"
    typer.echo(f"error: {command}: {word} ({signal.Signals(signum).name})", err=True)
    return 128 + signum


class StepcodeGroup(TyperGroup):
    """The top-level `stepcode` group. A user error (stepcode.errors.UserError, from a command or the library), a
    usage error (a bad or missing option, an unknown command) and a write the machine refuses (full, read-only, no
    permission, a file or directory in the way) print one line, `error: ...`, and exit 2 (a CommandError: its own
    code); a bug keeps its traceback. Ctrl-C, SIGTERM and SIGHUP unwind the command (every cleanup runs), then one
    line and exit 128 + the signal number. Also under typer.testing.CliRunner, which calls main()."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            _echo_error(str(e))
            raise typer.Exit(getattr(e, "exit_code", 2)) from None
        except OSError as e:   # a write the machine refused, or a path in the way, that no `writing` caught
            if not refused(e, paths=True):
                raise
            _echo_error(write_failure(e))
            raise typer.Exit(2) from None
        except KeyboardInterrupt as e:   # Ctrl-C, or Terminated; the command has unwound: its cleanups ran
            command = " ".join(filter(None, (ctx.command_path, ctx.invoked_subcommand)))
            raise typer.Exit(_echo_stopped(command, _signal_of(e))) from None

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode: bool = True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        with _stop_signals_raise():
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
            if _stop_signal and not rv:
                # A stop signal whose exception was swallowed (it landed in a destructor, "Exception ignored"): the
                # command finished, its outputs are complete, but it was asked to stop; say so.
                rv = _echo_stopped(" ".join(filter(None, (prog_name or "stepcode", *(args or sys.argv[1:])[:1]))),
                                   _stop_signal[0])
        # non-standalone click returns the code of a typer.Exit, else what the command returned (None)
        sys.exit(rv if isinstance(rv, int) else 0)
