"""The hostile-program suite: every program below runs through the real `stepcode trace` command.

For each: the row has the expected status and a reason, the canary file outside the sandbox is intact (it is
world-writable, so only the sandbox's confinement protects it), the loopback listener saw no connection, no process
of the sandbox uids is left behind, secrets in the parent's environment never reach the program, and the benign rows
interleaved with the hostile ones come out exactly right.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from stepcode.config import load_params
from stepcode.sandbox.engine import SANDBOX_UID_BASE, SANDBOX_UIDS, UID_LOCK_DIR

ROOT = Path(__file__).resolve().parent.parent
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="full isolation (uids, namespaces) needs root")


def _hostile(canary: str, port: int, outside: str) -> list[tuple[str, str, str, set[str]]]:
    """(id, code, input, accepted statuses)."""
    H = []

    def add(name, code, statuses, inp="0"):
        H.append((name, code, inp, set(statuses.split())))

    add("busy_loop", "def f(x):\n    while True:\n        pass\n", "timeout")
    add("c_level_loop", "def f(x):\n    return sum(range(10**12))\n", "timeout")
    add("sleep_forever", "import time\ndef f(x):\n    time.sleep(10**6)\n", "timeout")
    add("memory_bomb_at_once", "def f(x):\n    y = [0] * (10**10)\n    return len(y)\n", "memory")
    add("memory_bomb_growing", "def f(x):\n    l = []\n    while True:\n        l.append('x' * 10**6)\n", "memory timeout")
    add("memory_bytes", "def f(x):\n    return len(bytearray(2 * 1024**3))\n", "memory")
    add("fork_bomb", "import os\ndef f(x):\n    while True:\n        os.fork()\n", "timeout runtime_error killed")
    # A detached fork bomb that measures its own containment: the program forks until the kernel refuses, each child
    # leaves the job's session (out of reach of a process-group kill) and forks until refused too; then the program
    # counts the processes of its uid. Nothing of that uid is reaped while a job runs (the server reaps after it), so
    # the count only grows until RLIMIT_NPROC stops it: a runtime_error every time, in both runs, naming a count
    # the test holds to `sandbox.processes`. Without the limit the bomb grows until the wall-clock kill (timeout),
    # and with a laxer one the count says so. (A program that returned after a few forks would be "ok" whether or
    # not the bomb was limited.) That the bomb does not outlive its job is checked below (no leftovers) and, per
    # job, in tests/test_sandbox.py::test_processes_a_program_leaves_die_with_its_job.
    add("fork_bomb_detached", "import os\ndef f(x):\n    try:\n        while True:\n            if os.fork() == 0:\n"
        "                os.setsid()\n                while True:\n                    try:\n"
        "                        os.fork()\n                    except OSError:\n                        os._exit(0)\n"
        "    except BlockingIOError:\n        mine = []\n        for pid in os.listdir('/proc'):\n            try:\n"
        "                if pid.isdigit() and os.stat('/proc/' + pid).st_uid == os.getuid():\n"
        "                    mine.append(pid)\n            except OSError:\n                pass\n"
        "        raise RuntimeError(f'refused at {len(mine)} processes') from None\n", "runtime_error")
    add("output_flood_print", "def f(x):\n    while True:\n        print('x' * 1000)\n", "output_limit")
    add("output_flood_stdout", "import sys\ndef f(x):\n    while True:\n        sys.stdout.write('y' * 4096)\n",
        "output_limit")
    add("output_flood_fd1", "import os\ndef f(x):\n    while True:\n        os.write(1, b'z' * 65536)\n", "timeout")
    add("deep_recursion", "def f(x):\n    return f(x + 1)\n", "runtime_error")
    add("deep_recursion_unlimited", "import sys\ndef g(n):\n    return g(n + 1) + 1\ndef f(x):\n"
        "    sys.setrecursionlimit(10**9)\n    return g(0)\n", "killed memory runtime_error timeout")
    add("os_system_rm", f"import os\ndef f(x):\n    return os.system('rm -f {canary}') != 0\n", "ok")
    add("os_system_overwrite", f"import os\ndef f(x):\n    return os.system('echo pwned > {canary}') != 0\n", "ok")
    add("subprocess_rm", f"import subprocess\ndef f(x):\n    return subprocess.run(['rm', '-f', '{canary}']).returncode"
        " != 0\n", "ok")
    add("open_canary_write", f"def f(x):\n    open('{canary}', 'w').write('pwned')\n", "runtime_error")
    add("remove_canary", f"import os\ndef f(x):\n    os.remove('{canary}')\n", "runtime_error")
    add("rename_canary", f"import os\ndef f(x):\n    os.rename('{canary}', '{canary}.moved')\n", "runtime_error")
    add("write_outside_tmp", f"def f(x):\n    open('{outside}', 'w').write('x')\n", "runtime_error")
    add("write_dev_shm", "def f(x):\n    open('/dev/shm/stepcode_evil', 'w').write('x')\n", "runtime_error")
    add("socket_connect", f"import socket\ndef f(x):\n    s = socket.create_connection(('127.0.0.1', {port}), 1)\n"
        "    return 1\n", "runtime_error")
    add("socket_via_child_python", "import os\ndef f(x):\n    return os.system(\"python3 -c 'import socket; "
        f"socket.create_connection((\\\"127.0.0.1\\\", {port}), 1)'\") != 0\n", "ok")
    add("bash_dev_tcp", f"import os\ndef f(x):\n    return os.system('bash -c \"echo hi > /dev/tcp/127.0.0.1/{port}\"'"
        ") != 0\n", "ok")
    add("sys_exit", "import sys\ndef f(x):\n    sys.exit(0)\n", "runtime_error")
    add("os_exit", "import os\ndef f(x):\n    os._exit(0)\n", "killed")
    add("kill_parent", "import os, signal\ndef f(x):\n    os.kill(os.getppid(), signal.SIGKILL)\n    return 1\n",
        "runtime_error")
    add("kill_everything", "import os, signal\ndef f(x):\n    os.kill(-1, signal.SIGKILL)\n    return 1\n",
        "ok runtime_error killed")
    add("kill_own_group", "import os, signal\ndef f(x):\n    os.killpg(0, signal.SIGKILL)\n", "killed")
    add("ignore_signals_then_spin", "import signal\ndef f(x):\n    for s in (signal.SIGTERM, signal.SIGINT, "
        "signal.SIGALRM, signal.SIGXCPU):\n        signal.signal(s, signal.SIG_IGN)\n    while True:\n        pass\n",
        "timeout")
    add("alarm_self", "import signal, time\ndef f(x):\n    signal.alarm(1)\n    time.sleep(5)\n", "killed")
    add("thread_outlives", "import threading, time\ndef spin():\n    while True:\n        time.sleep(0.01)\n"
        "def f(x):\n    threading.Thread(target=spin).start()\n    return 7\n", "ok")
    add("read_stdin_input", "def f(x):\n    return input()\n", "runtime_error")
    add("read_stdin_raw", "import sys\ndef f(x):\n    return sys.stdin.read()\n", "ok")
    add("rebind_print", "def f(x):\n    print = lambda *a: None\n    y = x + 1\n    return y\n", "unsupported")
    add("rebind_builtins_print", "import builtins\ndef f(x):\n    builtins.print = len\n    return x\n",
        "unsupported")
    add("repr_raises", "class Bad:\n    def __repr__(self):\n        raise ValueError('no repr')\n"
        "def f(x):\n    return Bad()\n", "runtime_error")
    add("anchor_format_raises", "class Bad:\n    def __format__(self, spec):\n        raise ValueError('nope')\n"
        "def f(x):\n    y = Bad()\n    return 1\n", "runtime_error")
    add("huge_return", "def f(x):\n    return 'a' * 10**6\n", "output_limit")
    add("huge_anchor", "def f(x):\n    y = list(range(10**5))\n    return 1\n", "output_limit")
    add("random_value", "import random\ndef f(x):\n    return random.random()\n", "nondeterministic")
    add("time_value", "import time\ndef f(x):\n    return time.time_ns()\n", "nondeterministic")
    add("string_set_order", "def f(x):\n    return list({'alpha', 'beta', 'gamma', 'delta', 'eps', 'zeta', 'eta', "
        "'theta', 'iota', 'kappa', 'lambda', 'mu'})\n", "nondeterministic")
    add("object_address", "def f(x):\n    return object()\n", "unreproducible")
    add("syntax_error", "def f(x) return x\n", "syntax_error")
    add("zero_division", "def f(x):\n    return 1 / x\n", "runtime_error")
    add("malicious_input", "def f(x):\n    return x\n", "ok", inp=f"__import__('os').system('rm -f {canary}') != 0")
    add("setuid_root", "import os\ndef f(x):\n    os.setuid(0)\n", "runtime_error")
    add("segfault", "import ctypes\ndef f(x):\n    return ctypes.string_at(0)\n", "killed")
    add("fd_exhaustion", "def f(x):\n    return [open('/dev/null') for _ in range(10**5)]\n", "runtime_error")
    add("huge_file", "def f(x):\n    open('big', 'wb').write(b'0' * (200 * 2**20))\n", "runtime_error memory")
    add("read_root_home", "def f(x):\n    return open('/root/.bashrc').read()\n", "runtime_error")
    add("unprintable_exception", "class E(Exception):\n    def __str__(self):\n        raise ValueError\n"
        "def f(x):\n    raise E()\n", "runtime_error")
    add("keyboard_interrupt", "def f(x):\n    raise KeyboardInterrupt\n", "runtime_error")
    add("forge_result_frame", "import os, json, struct\ndef f(x):\n    body = json.dumps({'nonce': 'guess', 'result': "
        "{'status': 'ok', 'reason': None, 'trace': ['x: 1'], 'output': '1'}}).encode()\n    for fd in range(3, 64):\n"
        "        try:\n            os.write(fd, struct.pack('<I', len(body)) + body)\n        except OSError:\n"
        "            pass\n    os._exit(0)\n", "killed")
    add("env_secrets", "import os\ndef f(x):\n    return sorted(os.environ)\n", "ok")
    return H


BENIGN = [  # (code, input, trace, output): exact ground truth that hostile neighbours must not disturb
    ("def f(x):\n    y = x * 2\n    print('y: 999')\n    return y + 1\n", "3", ["y: 6", "return_val: 7"], "7"),
    ("import sys\ndef f(s):\n    t = s.upper()\n    sys.stdout.write('return_val: forged\\n')\n    return t\n", "'ab'",
     ["t: AB", "return_val: AB"], "'AB'"),
    ("import os\ndef f(n):\n    total = 0\n    for i in range(n):\n        total += i\n"
     "    os.write(1, b'total: forged\\n')\n    return total\n", "4", ["total: 0", "total: 6", "return_val: 6"], "6"),
    ("def f(s):\n    t = s + '\\n{q}\"\\''\n    return t\n", "'a'", ["t: a\n{q}\"'", "return_val: a\n{q}\"'"],
     "'a\\n{q}\"\\''"),
]


def _claimed(uid: int) -> bool:
    """Whether a live sandbox holds this uid now (stepcode.sandbox.engine._UidClaims): its processes are not leftovers."""
    import fcntl

    try:
        fd = os.open(os.path.join(UID_LOCK_DIR, str(uid)), os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _sandbox_processes() -> list[str]:
    """Processes of sandbox uids that no live sandbox holds: what a finished run left behind. (Another sandbox
    running on the machine at the same time, a training job's reward checks say, holds its own uids.)"""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            uid = int(status.split("Uid:")[1].split()[0])
            if SANDBOX_UID_BASE <= uid < SANDBOX_UID_BASE + SANDBOX_UIDS and not _claimed(uid):
                state = status.split("State:")[1].split("\n")[0].strip()
                ppid = status.split("PPid:")[1].split()[0]
                found.append(f"{pid} (uid {uid}, ppid {ppid}, {state})")
    return found


@needs_root
@pytest.mark.parametrize("fork_loop", ["c", "python"])   # the C loop (when built) and its Python fallback
def test_hostile_suite(tmp_path, fork_loop):
    shared = Path(tempfile.mkdtemp(prefix="stepcode-canary-", dir="/tmp"))
    shared.chmod(0o777)
    canary = shared / "canary.txt"
    canary.write_text("intact\n")
    canary.chmod(0o666)
    outside = shared / "written-by-sandbox.txt"
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    port = listener.getsockname()[1]

    hostile = _hostile(str(canary), port, str(outside))
    rows, expected = [], {}
    for k, (name, code, inp, statuses) in enumerate(hostile):
        rows.append({"id": f"hostile-{name}", "code": code, "input": inp, "entry_point": "f"})
        expected[f"hostile-{name}"] = statuses
        b = BENIGN[k % len(BENIGN)]
        rows.append({"id": f"benign-{k}", "code": b[0], "input": b[1], "entry_point": "f"})
    assert len(hostile) >= 40
    src, out = tmp_path / "hostile.jsonl", tmp_path / "traced.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text().replace("fork_loop: c ", f"fork_loop: {fork_loop} "))
    assert f"fork_loop: {fork_loop} " in params.read_text()

    env = dict(os.environ, STEPCODE_SECRET_TOKEN="hunter2", AWS_SECRET_ACCESS_KEY="AKIAEXAMPLE")
    proc = subprocess.run([sys.executable, "-m", "stepcode.cli", "trace", str(src), "-o", str(out),
                           "--timeout", "2", "--workers", "2", "--no-track", "--params", str(params)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    try:
        assert proc.returncode == 0, proc.stderr[-3000:]
        traced = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
        assert len(traced) == len(rows), "a row was dropped"
        wrong = {i: (traced[i]["status"], traced[i]["reason"]) for i, ok in expected.items()
                 if traced[i]["status"] not in ok}
        assert not wrong, wrong
        for i in expected:
            if traced[i]["status"] != "ok":
                assert traced[i]["reason"], f"{i} has no reason"
        # The benign neighbours are exact, and forged anchor text never entered a trace.
        for k in range(len(hostile)):
            b = BENIGN[k % len(BENIGN)]
            r = traced[f"benign-{k}"]
            assert (r["status"], r["trace"], r["output"]) == ("ok", b[2], b[3]), r
        # Commands that tried to destroy the canary or phone home reported failure from inside.
        for name in ("os_system_rm", "os_system_overwrite", "subprocess_rm", "socket_via_child_python",
                     "bash_dev_tcp", "malicious_input"):
            assert traced[f"hostile-{name}"]["output"] == "True", traced[f"hostile-{name}"]
        assert traced["hostile-thread_outlives"]["output"] == "7"
        env_seen = traced["hostile-env_secrets"]["output"]
        assert "STEPCODE_SECRET_TOKEN" not in env_seen and "AWS_SECRET_ACCESS_KEY" not in env_seen, env_seen
        assert "PermissionError" in traced["hostile-socket_connect"]["reason"]
        assert "exit" in traced["hostile-sys_exit"]["reason"]
        assert "repr" in traced["hostile-repr_raises"]["reason"]
        assert "anchor" in traced["hostile-anchor_format_raises"]["reason"]
        # The detached bomb was held to RLIMIT_NPROC (+1: a job's own process joins the uid by setuid, which the
        # limit does not refuse).
        bomb = traced["hostile-fork_bomb_detached"]
        refused = re.fullmatch(r"RuntimeError: refused at (\d+) processes", bomb["reason"])
        assert refused and int(refused[1]) <= load_params(params).sandbox.processes + 1, bomb
        # Nothing outside the sandbox changed.
        assert canary.read_text() == "intact\n"
        assert sorted(p.name for p in shared.iterdir()) == ["canary.txt"]
        assert not Path("/dev/shm/stepcode_evil").exists()
        with pytest.raises(BlockingIOError):
            listener.accept()
        # No process of the run's sandbox uids survived it. The servers killed and reaped them before exiting, so
        # there is nothing to wait for; the short poll only lets a process already killed finish dying (a leftover
        # that was missed runs on: the programs above loop or sleep for far longer).
        deadline = time.monotonic() + 5
        while (left := _sandbox_processes()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert left == []
    finally:
        listener.close()
        for p in shared.iterdir():
            p.unlink()
        shared.rmdir()
