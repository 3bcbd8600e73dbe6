"""The sandbox directly: isolation in force, the check runner's official verdicts, forged results rejected."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stepcode.config import SandboxParams
from stepcode.sandbox.engine import Sandbox, _result


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


def _trace_job(code: str, inp: str = "0") -> dict:
    return {"code": code, "anchor_fn": "_w", "entry_point": "f", "input": inp, "max_lines": 10,
            "max_line_chars": 100, "max_output_chars": 100}


def test_a_batch_runs_each_job_in_its_own_fresh_child(sandbox):
    """One round trip, results in payload order, and nothing carries over between the children of a batch: each
    may print 40k characters under the 64k cap (a shared counter would fail the second), a builtin set by one job
    is unset in the next, and a file left in the work dir is gone."""
    noisy = "def f(x):\n    print('x' * 40000)\n    return x\n"
    leave = "import builtins\ndef f(x):\n    open('left.txt', 'w').write('x')\n    builtins.G = 1\n    return x\n"
    look = "import os\nimport builtins\ndef f(x):\n    return [os.path.exists('left.txt'), hasattr(builtins, 'G')]\n"
    with sandbox.slot() as slot:
        results = slot.run_many("trace", [_trace_job(noisy, "1"), _trace_job(noisy, "2"), _trace_job(leave, "3"),
                                          _trace_job(look), _trace_job("def f(x)\n    return x\n")])
    assert [(r["status"], r["output"]) for r in results[:4]] == [("ok", "1"), ("ok", "2"), ("ok", "3"),
                                                                  ("ok", "[False, False]")]
    assert results[4]["status"] == "syntax_error"            # decided when the server compiled the batch


def test_the_check_guard_lasts_exactly_one_batch(sandbox):
    """The server applies the official guard around a batch of checks (each child inherits it) and undoes it
    after: every check of the batch is guarded, and a trace job after it on the same server is not."""
    guarded = "import os, shutil\nassert exit is None and os.kill is None and shutil.rmtree is None\n"
    with sandbox.slot() as slot:
        verdicts = slot.run_many("check", [{"program": guarded}] * 3)
        after = slot.run("trace", _trace_job("import os\ndef f(x):\n    return [callable(os.kill), callable(exit)]\n"))
    assert [v["status"] for v in verdicts] == ["passed"] * 3
    assert (after["status"], after["output"]) == ("ok", "[True, True]")


def test_each_seed_runs_on_its_own_server():
    with Sandbox(workers=1, hash_seeds=(0, 1)) as sb, sb.slot() as slot:
        runs = slot.run_many_each_seed("trace", [_trace_job("import os\ndef f(x):\n    return "
                                                            "[x, os.environ['PYTHONHASHSEED']]\n", str(k))
                                                 for k in range(3)], (1, 0))
    assert [[r["output"] for r in per_seed] for per_seed in runs] == [
        ["[0, '1']", "[0, '0']"], ["[1, '1']", "[1, '0']"], ["[2, '1']", "[2, '0']"]]


def test_map_batches_keeps_input_order(sandbox):
    seen = []

    def double(batch):
        seen.append(len(batch))
        return [2 * x for x in batch]

    assert list(sandbox.map_batches(double, range(23), size=5)) == [2 * x for x in range(23)]
    assert sorted(seen) == [3, 5, 5, 5, 5]


def test_a_child_report_must_be_a_json_object_with_a_status():
    """The engine parses what the server relays unparsed (the nonce already checked): anything else is a kill."""
    assert _result((b'{"status": "ok", "trace": []}', 0.5, 0.25, 7)) == {
        "status": "ok", "trace": [], "wall_s": 0.5, "cpu_s": 0.25, "faults": 7}
    for forged in (b"not json", b"[1, 2]", b'{"trace": []}', b"[" * 100000):
        assert _result((forged, 0.5, 0.25, 7))["status"] == "killed"


@pytest.mark.skipif(os.geteuid() != 0, reason="uids are claimed only as root")
def test_parallel_sandboxes_never_kill_each_others_programs(sandbox):
    # A server cleans up after every job by killing all processes of its uid: two sandboxes sharing a uid (parallel
    # trace tasks, parallel study arms) would kill each other's running programs. Uids are claimed machine-wide.
    from concurrent.futures import ThreadPoolExecutor

    with Sandbox(workers=1, hash_seeds=(0,)) as other:
        assert other.isolation["uid"] != sandbox.isolation["uid"]
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(check, sandbox, "import time\ntime.sleep(1.0)\n")
            quick = [check(other, "assert 1 == 1") for _ in range(50)]
        assert slow.result()["status"] == "passed"
        assert [r["status"] for r in quick] == ["passed"] * 50


def _fork_loop_built() -> bool:
    try:
        from stepcode.sandbox import _forkloop  # noqa: F401
    except ImportError:
        return False
    return True


PARITY_CHECKS = [
    "assert 1 == 1\n",
    "assert 1 == 2\n",
    "assert 1 == (\n",                                                   # does not compile: no child at all
    "while True: pass\n",                                                # wall-clock timeout
    "import os\nos._exit(3)\n",                                          # exits without a report
    "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",         # under the guard os.kill is None
    "import posix, signal\nposix.kill(posix.getpid(), signal.SIGKILL)\n",  # dies of a signal
    "import posix\nfor _ in range(6):\n    for fd in range(3, 256):\n        try:\n"
    "            posix.write(fd, b'x' * (1 << 20))\n        except OSError:\n            pass\n",  # floods the pipe
    "open('left-behind', 'w').write('x')\n",                             # leaves a file in the work dir ...
    "import posix\nassert posix.listdir('.') == [], posix.listdir('.')\n",  # ... which the next job must not see
    "import posix, time\nif posix.fork() == 0:\n    time.sleep(30)\nassert 1 == 1\n",  # a grandchild, killed
]


@pytest.mark.skipif(not _fork_loop_built(), reason="the C fork loop is not built here")
def test_the_c_and_python_fork_loops_give_the_same_verdicts():
    verdicts = {}
    for loop in ("c", "python"):
        with Sandbox(workers=1, hash_seeds=(0,), fork_loop=loop) as sb:
            assert sb.isolation["fork_loop"] == loop
            with sb.slot() as slot:
                results = slot.run_many("check", [{"program": p} for p in PARITY_CHECKS], timeout=1)
                results += [slot.run("trace", {"code": "def f(a):\n    b = [a] * 2\n    _w('b', b)\n    return b\n",
                                               "anchor_fn": "_w", "entry_point": "f", "input": "'q'",
                                               "max_lines": 10, "max_line_chars": 100, "max_output_chars": 100})]
        verdicts[loop] = [{k: v for k, v in r.items() if k not in ("wall_s", "cpu_s", "faults")} for r in results]
    assert verdicts["c"] == verdicts["python"]
    statuses = [v["status"] for v in verdicts["c"]]
    assert statuses == ["passed", "failed", "failed", "timeout", "killed", "failed", "killed", "output_limit",
                        "passed", "passed", "passed", "ok"], verdicts["c"]
    assert verdicts["c"][-1]["trace"] == ["b: ['q', 'q']"]


def test_the_fork_loop_is_c_when_built(sandbox):
    assert sandbox.isolation["fork_loop"] == ("c" if _fork_loop_built() else "python")
    with pytest.raises(ValueError, match="fork_loop"):
        Sandbox(workers=1, fork_loop="rust")


def test_children_skip_the_interpreters_after_fork_repairs_only_when_nothing_needs_them(sandbox):
    # The trace and check servers have one thread and no at-fork hook: their children skip PyOS_AfterFork_Child, and
    # a program can still start threads that import and use random (which seeds itself afresh in each child).
    if sandbox.isolation["fork_loop"] == "c":
        assert sandbox.isolation["python_at_fork"] is False
    program = ("import threading, random\nout = []\n"
               "t = threading.Thread(target=lambda: out.append(__import__('json').dumps(random.random())))\n"
               "t.start(); t.join(); assert len(out) == 1, out\n")
    assert check(sandbox, program)["status"] == "passed"
    # A runner module that imports random registers a hook (reseed each child): its server keeps the protocol.
    with Sandbox(workers=1, hash_seeds=(0,), runners=("tests._random_runner",)) as sb:
        assert sb.isolation["python_at_fork"] is (sb.isolation["fork_loop"] == "c")
        with sb.slot() as slot:
            values = [r["value"] for r in slot.run_many("random", [{}] * 6)]
        assert len(set(values)) == 6, values


def test_preload_for_reads_the_modules_programs_import():
    from stepcode.sandbox.engine import preload_for

    programs = ["from typing import List\nimport collections, heapq as h, os.path\ndef f():\n    import re\n",
                "from collections.abc import Iterable\nimport antigravity\n", "def f(x):\n    return x\n"]
    # Only preloadable standard-library modules: never one with side effects on import (antigravity), nor os.
    assert preload_for(programs) == ("collections", "heapq", "re", "typing")
    assert preload_for(["def f():\n    return 'import math'\n"]) == ()   # a miss costs time only


def test_a_module_not_preloaded_is_imported_by_the_child():
    with Sandbox(workers=1, hash_seeds=(0,), preload=("math",)) as sb:
        assert sb.isolation["preload"] == ["math"]
        r = check(sb, "import typing, math\nassert typing.List[int] and math.sqrt(4) == 2\n")
        assert r["status"] == "passed", r


def _sleeper(seconds: float) -> dict:
    return {"program": f"import time\ntime.sleep({seconds})\nassert 1 == 1\n"}


def test_a_per_call_timeout_overrides_the_default_both_ways():
    """`timeout=` on a call replaces `SandboxParams.timeout_s` for that call only, shorter or longer (the checks'
    `evaluate.check_timeout_s` and REval's per-job budgets ride on it). Default 1 s; a 0.25 s sleep fits it but not
    a 0.1 s limit, a 1.5 s sleep fits a 3 s limit but not the default. Load only delays a run, so no timeout below
    can turn into a pass, and each pass has 0.75 s or more to spare."""
    quick, slow = _sleeper(0.25), _sleeper(1.5)
    with Sandbox(SandboxParams(timeout_s=1.0), workers=1, hash_seeds=(0,)) as sb:
        shorter = sb.run("check", quick, timeout=0.1)
        assert shorter["status"] == "timeout" and "the 0.1 s wall-clock" in shorter["reason"], shorter
        assert sb.run("check", slow, timeout=3.0)["status"] == "passed"
        # no timeout given: the default decides, both ways
        assert sb.run("check", quick)["status"] == "passed"
        default = sb.run("check", slow)
        assert default["status"] == "timeout" and "the 1 s wall-clock" in default["reason"], default
        # the same through a slot's batch (one round trip, one limit for every job of it)
        with sb.slot() as slot:
            batch = slot.run_many("check", [quick, quick], timeout=0.1)
        assert [r["status"] for r in batch] == ["timeout", "timeout"], batch


# A program that leaves processes behind: a forked child that sleeps, and (as root, where the cleanup is a
# `kill(-1)` as the sandbox uid) one that also left the job's session (setsid), out of reach of a process-group kill.
LEAVES_CHILDREN = (
    "import os, time\n"
    "def f(detach):\n"
    "    pids = []\n"
    "    for setsid in ([False, True] if detach else [False]):\n"
    "        pid = os.fork()\n"
    "        if pid == 0:\n"
    "            if setsid:\n"
    "                os.setsid()\n"
    "            time.sleep(120)\n"
    "            os._exit(0)\n"
    "        pids.append(pid)\n"
    "    return pids\n")


def _alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie is dead: it only waits for its parent to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X", "x")


@pytest.mark.parametrize("fork_loop", ["c", "python"])
def test_processes_a_program_leaves_die_with_its_job(fork_loop):
    """The server kills what a program started when the job ends, not when the sandbox closes: the sandbox is still
    open (its servers idle, waiting for the next job) when the leftovers must be dead. Each leftover sleeps 120 s,
    so only that per-job cleanup can end it within the 5 s allowed (the kill is sent before the job is answered;
    the wait only lets the kernel finish a process that is already dying)."""
    if fork_loop == "c" and not _fork_loop_built():
        pytest.skip("the C fork loop is not built here")
    detach = os.geteuid() == 0
    with Sandbox(workers=1, hash_seeds=(0,), fork_loop=fork_loop) as sb:
        assert sb.isolation["fork_loop"] == fork_loop
        with sb.slot() as slot:
            first = slot.run("trace", _trace_job(LEAVES_CHILDREN, str(detach)))
            assert first["status"] == "ok", first
            pids = [int(p) for p in first["output"].strip("[]").split(",")]
            assert len(pids) == (2 if detach else 1)
            deadline = time.monotonic() + 5
            while any(map(_alive, pids)) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not [pid for pid in pids if _alive(pid)], "a process the last job started is still running"
            # and the next job on that server runs normally
            after = slot.run("trace", _trace_job("def f(x):\n    return x + 1\n", "1"))
            assert (after["status"], after["output"]) == ("ok", "2")


def test_emptying_a_work_dir_follows_no_link_and_fears_no_depth(tmp_path):
    """The server's cleanup (run when every process of the program is dead): a chain of directories far deeper than
    the descriptors a server may hold, directories whose mode is 0, and links to folders outside — which it removes
    as links, never entering them."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("kept")
    work = tmp_path / "work"
    deep = work / "a"
    deep.mkdir(parents=True)
    for _ in range(300):
        deep = deep / "d"
    deep.mkdir(parents=True)
    (deep / "bottom").write_text("x")
    (work / "link").symlink_to(outside)
    (work / "a" / "link").symlink_to(outside)
    (work / "locked").mkdir()
    (work / "locked" / "f").write_text("y")
    (work / "locked").chmod(0)
    # In a process with the server's descriptor limit (params.yaml sandbox.open_files: 64): a recursive walk holds one
    # descriptor per level and would stop at ~60 levels.
    script = ("import os, resource\nfrom stepcode.sandbox.server import _empty_dir\n"
              "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n"
              f"_empty_dir({str(work)!r})\nprint(os.getcwd())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(work)        # where the server keeps its working directory
    assert os.listdir(work) == []
    assert (outside / "keep").read_text() == "kept"
