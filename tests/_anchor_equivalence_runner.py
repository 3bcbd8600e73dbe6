"""Run original and instrumented programs side by side, in this (separate) process; used by tests/test_anchors.py.

Usage:
    echo '[{"id": "a", "code": "def f(x): return x", "exec_source": "...", "anchor_fn": "_stepcode_anchor",
            "input": "1"}]' | python tests/_anchor_equivalence_runner.py
    -> [{"id": "a", "original": "1", "instrumented": "1", "trace": ["return_val: 1"]}]

Each program runs twice in fresh globals, calling `f(<input>)` with a freshly evaluated input each time; results are
`repr`s of the return values (or "raised <ExceptionType>"). Threat model: the programs are benchmark code the tests
trust not to be hostile; this helper only keeps them out of the pytest process and bounds their run time.
"""

import contextlib
import io
import json
import signal
import sys

SECONDS_PER_RUN = 5


def _timeout(signum, frame):
    raise TimeoutError("program ran too long")


def _call(code: str, call: str, extra_globals: dict) -> str:
    namespace = {"__name__": "__program__", **extra_globals}
    signal.alarm(SECONDS_PER_RUN)
    try:
        with contextlib.redirect_stdout(io.StringIO()):   # the programs' own prints must not corrupt our JSON
            exec(code, namespace)
            return repr(eval(call, namespace))
    except Exception as err:  # the comparison is the point: the same exception type on both sides is equivalent
        return f"raised {type(err).__name__}"
    finally:
        signal.alarm(0)


def main() -> None:
    signal.signal(signal.SIGALRM, _timeout)
    results = []
    for job in json.load(sys.stdin):
        call = f"f({job['input']})"
        trace: list[str] = []
        record = lambda label, value: trace.append(f"{label}: {format(value, '')}")  # noqa: E731, B023 (sandbox's rule; used at once)
        results.append({
            "id": job["id"],
            "original": _call(job["code"], call, {}),
            "instrumented": _call(job["exec_source"], call, {job["anchor_fn"]: record}),
            "trace": trace,
        })
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
