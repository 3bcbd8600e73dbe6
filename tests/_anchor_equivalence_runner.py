"""Run original and instrumented programs side by side, in this (separate) process; used by tests/test_anchors.py.

Usage:
    echo '[{"id": "a", "code": "def f(x): return x", "exec_source": "...", "anchor_fn": "_stepcode_anchor",
            "input": "1", "edges": true}]' | python tests/_anchor_equivalence_runner.py
    -> [{"id": "a", "original": {"result": "1", "args_after": "([1], {})", "stdout": ""},
         "instrumented": {...the same keys...}, "trace": ["return_val: 1"],
         "edges": {"empty": {"original": {...}, "instrumented": {...}}, "first": {...}}}]

Each program runs in fresh globals, calling `f(*args, **kwargs)` with the arguments of `<input>` freshly evaluated
for each run. A run's outcome: "result", the return value's `repr` (or "raised <ExceptionType>: <message>");
"args_after", the `repr` of the arguments after the call (mutations are results too); "stdout", what it printed. With
"edges", each side also runs on two variants of the input, to reach the paths a benchmark input may not take (loops
that run zero times or once, where an anchor on a possibly-unbound name would raise): "empty" replaces each
top-level argument that is a str, bytes, list, tuple, dict, set, int or float by the empty (zero) value of its type,
"first" cuts each str, bytes, list, tuple and dict to its first element (item); a variant equal to the input is
skipped (None). With "thunks" (the caller rewrote each anchor call `F('x', x)` to `F('x', lambda: x)`), the anchor
calls its thunk and a NameError it raises is listed in "anchor_errors" (then re-raised, as the read would): the
direct proof that no anchor reads a name the program has not bound. Threat model: the programs are benchmark code the tests trust not to be hostile; this helper only
keeps them out of the pytest process and bounds their run time.
"""

import contextlib
import functools
import io
import json
import signal
import sys

SECONDS_PER_RUN = 5
SECONDS_PER_EDGE_RUN = 0.5   # variants may loop forever (`while n != 0` on 0): the caller skips timed-out pairs
_EMPTIED = (str, bytes, list, tuple, dict, set, int, float)   # exact types: type(v)() is the empty value


class RunTimeout(BaseException):
    """The alarm's exception: a BaseException, so that a program's `except Exception` cannot swallow it."""


def _timeout(signum, frame):
    raise RunTimeout("program ran too long")


def _empty(value):
    return type(value)() if type(value) in _EMPTIED else value


def _first(value):
    if type(value) in (str, bytes, list, tuple):
        return value[:1]
    if type(value) is dict:
        return dict(list(value.items())[:1])
    return value


@functools.lru_cache(maxsize=64)
def _compiled(code: str):
    return compile(code, "<program>", "exec", dont_inherit=True)   # a program runs on several inputs


def _call(code: str, arguments: str, extra_globals: dict, variant=None, seconds: float = SECONDS_PER_RUN) -> dict:
    namespace = {"__name__": "__program__", **extra_globals}
    out = io.StringIO()
    args = kwargs = None
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        with contextlib.redirect_stdout(out):   # the programs' own prints must not corrupt our JSON
            exec(_compiled(code), namespace)
            args, kwargs = eval(f"(lambda *a, **k: (list(a), k))({arguments})", namespace)
            if variant is not None:
                args, kwargs = [variant(a) for a in args], {k: variant(v) for k, v in kwargs.items()}
            result = repr(namespace["f"](*args, **kwargs))
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # noqa: BLE001 — the comparison is the point: the same exception on both sides
        result = f"raised {type(err).__name__}: {err}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    try:
        left = repr((args, kwargs))
    except Exception as err:  # noqa: BLE001 — an argument whose repr raises: compared by the exception's type
        left = f"unprintable arguments ({type(err).__name__})"
    return {"result": result, "args_after": left, "stdout": out.getvalue()}


def _variant_input(arguments: str, variant) -> bool:
    """Whether the variant changes these arguments (evaluated in a scratch namespace)."""
    try:
        args, kwargs = eval(f"(lambda *a, **k: (list(a), k))({arguments})", {})
        return [variant(a) for a in args] != args or {k: variant(v) for k, v in kwargs.items()} != kwargs
    except Exception:  # noqa: BLE001 — an input that needs the program's names: no variants
        return False


def main() -> None:
    signal.signal(signal.SIGALRM, _timeout)
    results = []
    for job in json.load(sys.stdin):
        trace: list[str] = []
        anchor_errors: list[str] = []
        record = lambda label, value: trace.append(f"{label}: {format(value, '')}")  # noqa: E731, B023 (sandbox's rule; used at once)
        if job.get("thunks"):
            def record(label, thunk, trace=trace, anchor_errors=anchor_errors):
                try:
                    value = thunk()
                except NameError as err:
                    anchor_errors.append(f"{label}: {err}")
                    raise
                trace.append(f"{label}: {format(value, '')}")
        result = {
            "id": job["id"],
            "original": _call(job["code"], job["input"], {}),
            "instrumented": _call(job["exec_source"], job["input"], {job["anchor_fn"]: record}),
            "trace": trace,
            "anchor_errors": anchor_errors,
        }
        if job.get("edges"):
            result["edges"] = {}
            for name, variant in (("empty", _empty), ("first", _first)):
                if not _variant_input(job["input"], variant):
                    result["edges"][name] = None
                    continue
                sink = lambda label, value: format(value, '')  # noqa: E731 — an anchor that raises as the sandbox's would
                result["edges"][name] = {
                    "original": _call(job["code"], job["input"], {}, variant, SECONDS_PER_EDGE_RUN),
                    "instrumented": _call(job["exec_source"], job["input"], {job["anchor_fn"]: sink}, variant,
                                          SECONDS_PER_EDGE_RUN)}
        results.append(result)
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
