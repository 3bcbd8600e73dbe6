"""The sandbox directly: isolation in force, the check runner's official verdicts, forged results rejected."""

from __future__ import annotations

import os

import pytest

from stepcode.sandbox import Sandbox


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(workers=1, hash_seeds=(0,)) as sb:
        yield sb


def check(sandbox, program: str) -> dict:
    return sandbox.run("check", {"program": program}, timeout=3)


@pytest.mark.skipif(os.geteuid() != 0, reason="full isolation needs root")
def test_isolation_is_in_force(sandbox):
    info = sandbox.isolation
    assert info["root"] and info["namespaces"] and info["seccomp"] and info["landlock_abi"] >= 1
    assert info["uid"] != 0


def test_check_passes_only_when_the_assertion_completes(sandbox):
    f = "def f(x):\n    return x * 2\n"
    assert check(sandbox, f + "assert f(2) == 4\n")["status"] == "passed"
    assert check(sandbox, f + "assert f(2) == 5\n")["status"] == "failed"
    assert check(sandbox, f + "assert f(2) == (\n")["status"] == "failed"           # does not compile
    assert check(sandbox, f + "assert 4 == f(\n")["status"] == "failed"
    assert check(sandbox, f + "while True: pass\n")["status"] == "timeout"


@pytest.mark.parametrize("prediction", [
    "5 or __import__('os').system('echo pwned')",     # os.system is None under the official guard: TypeError
    "5 or exit(0)",
    "__import__('sys').exit(0)",
    "__import__('os')._exit(0)",                      # exits before the assertion completes: no verdict
    "__import__('os').kill(__import__('os').getpid(), 9)",
    "input()",
    "__import__('subprocess').Popen(['true'])",
    "[__import__('os').write(fd, b'\\x05\\x00\\x00\\x00passed') for fd in range(64)] and __import__('os')._exit(0)",
])
def test_malicious_predictions_are_contained_and_fail(sandbox, prediction):
    result = check(sandbox, f"def f(x):\n    return x\nassert f(4) == {prediction}\n")
    assert result["status"] != "passed", result


def test_guarded_modules_fail_fast_like_the_official_guard(sandbox):
    """subprocess.Popen is None under the guard: using subprocess fails at once (TypeError), it does not hang."""
    for program in ("import subprocess\nassert 1 == subprocess.run(['true'])\n",
                    "assert 1 == __import__('subprocess').Popen(['true'])\n",
                    "import shutil\nassert shutil.rmtree('x')\n"):
        r = check(sandbox, program)
        assert r["status"] == "failed" and "NoneType" in r["reason"], r
    r = check(sandbox, "import shutil\nassert shutil.which('definitely-not-a-command') is None\n")
    assert r["status"] == "passed", r


def test_guard_matches_the_official_harness_semantics(sandbox):
    """What the official guard leaves alone still works: the verdict is about the values, not the guard."""
    prog = "import math, re\ndef f(s):\n    return re.sub('a', 'b', s) + str(math.floor(2.5))\nassert f('aa') == 'bb2'\n"
    assert check(sandbox, prog)["status"] == "passed"


def test_results_report_resources(sandbox):
    r = check(sandbox, "assert 1 == 1\n")
    assert r["status"] == "passed" and r["wall_s"] > 0 and r["cpu_s"] >= 0 and r["faults"] > 0
