"""Code that runs *inside* a sandbox child, beside the untrusted program (see stepcode/sandbox.py).

A runner takes a JSON-able payload and the limits, executes the program, and returns a JSON-able dict with at least
`status` and `reason`. It must never let an exception escape (the child would report nothing and count as killed).
Keep this module small and stdlib-only: the sandbox server imports it once, before any fork.
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


def run_trace(payload: dict, limits: dict) -> dict:
    """Execute an instrumented program and call its entry point on the input.

    payload: code (the exec source from stepcode.anchors), anchor_fn (the name its anchor calls use), entry_point,
    input (argument list as source text), max_lines, max_line_chars, max_output_chars.
    Returns status, reason, trace (one string per anchor call, in order), output (repr of the return value).
    """
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
        code = compile(payload["code"], "<program>", "exec")
        call = compile(f"{payload['entry_point']}({payload['input']})", "<input>", "eval")
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


RUNNERS = {"trace": run_trace}
