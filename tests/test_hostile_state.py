"""Hostile programs that try to leave something behind for a later run, or to reach past their own run: the
red-team classes of the sandbox's threat model (stepcode/sandbox/engine.py) that `tests/test_hostile.py` cannot show,
because they need a second program on the same server (the one that would read what the first left) or a look from
outside the sandbox afterwards.

Each test runs real programs in a real `Sandbox` of one worker, under both fork loops, and says what the program
managed to do — the numbers a program reports are what it achieved, so a containment that stops working shows up
as a different number, not as a missing exception.
"""

from __future__ import annotations

import ast
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from stepcode.config import SandboxParams
from stepcode.sandbox.engine import SANDBOX_UID_BASE, SANDBOX_UIDS, Sandbox

ROOT = Path(__file__).resolve().parent.parent
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="full isolation (uids, namespaces, cgroups) needs root")
pytestmark = needs_root

LIBC = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.syscall.restype = ctypes.c_long\n"


@pytest.fixture(scope="module", params=["c", "python"])
def sandbox(request):
    """One worker, so every program of a test runs on the same server, one after the other."""
    with Sandbox(SandboxParams(memory_mb=256, timeout_s=20), workers=1, fork_loop=request.param) as sb:
        assert sb.isolation["fork_loop"] == request.param
        yield sb


def run(sb: Sandbox, code: str, inp: str = "0") -> dict:
    return sb.run("trace", {"code": code, "anchor_fn": "_anchor", "entry_point": "f", "input": inp,
                            "max_lines": 10, "max_line_chars": 10000, "max_output_chars": 100000})


def value(result: dict):
    """The program's return value (its repr, parsed back)."""
    assert result["status"] == "ok", result
    return ast.literal_eval(result["output"])


# --- 1, 2: SysV IPC, POSIX message queues, keyrings ------------------------------------------------------------------

IPC_PLANT = LIBC + """
def f(x):
    out = {}
    out['shm'] = libc.shmget(0x5EC0DE, 900 << 20, 0o1666)          # IPC_CREAT | 0666
    out['shm_errno'] = ctypes.get_errno()
    out['msg'] = libc.msgget(0x5EC0DE, 0o1666)
    out['sem'] = libc.semget(0x5EC0DE, 1, 0o1666)
    libc.mq_open.restype = ctypes.c_int
    out['mq'] = libc.mq_open(b'/stepcode-leak', os.O_CREAT | os.O_RDWR, 0o666, None)
    out['mq_errno'] = ctypes.get_errno()
    out['key'] = libc.syscall(248, b'user', b'stepcode-leak', b'secret', 6, -4)   # add_key into the user keyring
    out['key_errno'] = ctypes.get_errno()
    out['request_key'] = libc.syscall(249, b'user', b'stepcode-leak', None, -4)
    return out
"""

IPC_PROBE = LIBC + """
def f(x):
    found = {'shm': libc.shmget(0x5EC0DE, 0, 0), 'msg': libc.msgget(0x5EC0DE, 0), 'sem': libc.semget(0x5EC0DE, 0, 0)}
    libc.mq_open.restype = ctypes.c_int
    found['mq'] = libc.mq_open(b'/stepcode-leak', os.O_RDONLY)
    found['keys'] = [line for line in open('/proc/keys').read().splitlines() if 'stepcode-leak' in line]
    return found
"""


def test_sysv_ipc_message_queues_and_keyrings_are_refused(sandbox):
    planted = value(run(sandbox, IPC_PLANT))
    assert planted == {"shm": -1, "shm_errno": 1, "msg": -1, "sem": -1, "mq": -1, "mq_errno": 1, "key": -1,
                       "key_errno": 1, "request_key": -1}
    assert value(run(sandbox, IPC_PROBE)) == {"shm": -1, "msg": -1, "sem": -1, "mq": -1, "keys": []}
    # Nothing of it on the host either (the server has its own IPC namespace besides).
    if shutil.which("ipcs"):
        host = subprocess.run(["ipcs"], capture_output=True, text=True).stdout
        assert "5ec0de" not in host.lower()
    assert not Path("/dev/mqueue/stepcode-leak").exists()


# --- 3: metadata of files outside the work dir ----------------------------------------------------------------------

def test_metadata_of_files_outside_the_work_dir_cannot_change(sandbox, tmp_path):
    # Read-only mounts (kernel >= 5.12) leave the program its own files' times; the fallback, seccomp, refuses
    # time changes everywhere (stepcode doctor lists it as a gap).
    own_times = sandbox.isolation["read_only_mounts"]
    shared = Path(tempfile.mkdtemp(prefix="stepcode-meta-", dir="/tmp"))
    try:
        shared.chmod(0o777)
        canary = shared / "canary"
        canary.write_text("intact")
        canary.chmod(0o666)
        before = canary.stat()
        code = f"""import os
def f(x):
    done = []
    for name, call in [('setxattr', lambda: os.setxattr({str(canary)!r}, 'user.evil', b'1')),
                       ('utime', lambda: os.utime({str(canary)!r}, (0, 0))),
                       ('utime_now', lambda: os.utime({str(canary)!r})),
                       ('removexattr', lambda: os.removexattr({str(canary)!r}, 'user.evil'))]:
        try:
            call()
            done.append(name)
        except OSError:
            pass
    open('mine', 'w').write('x')
    try:
        os.utime('mine', (0, 0))        # its own work dir is its own
    except OSError:
        pass
    return done, os.stat('mine').st_mtime == 0
"""
        assert value(run(sandbox, code)) == ([], own_times)
        after = canary.stat()
        assert (after.st_mtime_ns, after.st_atime_ns, after.st_ctime_ns) == \
            (before.st_mtime_ns, before.st_atime_ns, before.st_ctime_ns)
        assert os.listxattr(canary) == []
    finally:
        for p in shared.iterdir():
            p.unlink()
        shared.rmdir()


# --- 4: namespaces through clone() and clone3() ---------------------------------------------------------------------

CLONE = LIBC + """import threading
CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET, SIGCHLD = 0x10000000, 0x20000, 0x20000000, 0x40000000, 17

def clone(flags):
    pid = libc.syscall(56, flags | SIGCHLD, 0, 0, 0, 0)
    if pid == 0:
        os._exit(0)
    err = ctypes.get_errno()
    if pid > 0:
        os.waitpid(pid, 0)
    return pid > 0, err

def clone3(flags):
    args = (ctypes.c_uint64 * 11)(flags, 0, 0, 0, SIGCHLD)    # struct clone_args: flags, pidfd, child_tid, ...
    pid = libc.syscall(435, args, 88)
    if pid == 0:
        os._exit(0)
    err = ctypes.get_errno()
    if pid > 0:
        os.waitpid(pid, 0)
    return pid > 0, err

def f(x):
    out = {'user': clone(CLONE_NEWUSER), 'user_mount': clone(CLONE_NEWUSER | CLONE_NEWNS),
           'pid': clone(CLONE_NEWUSER | CLONE_NEWPID), 'net': clone(CLONE_NEWUSER | CLONE_NEWNET),
           'clone3_user': clone3(CLONE_NEWUSER), 'clone3_plain': clone3(0)}
    # What programs do need still works: fork, threads, a subprocess.
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    out['fork'] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
    out['system'] = os.system('true')
    return out
"""


def test_no_namespace_through_clone_or_clone3(sandbox):
    # EPERM (1) for clone with a namespace flag; ENOSYS (38) for clone3, whose flags a filter cannot see (libc then
    # falls back to clone, so plain clone3 callers still work).
    assert value(run(sandbox, CLONE)) == {
        "user": (False, 1), "user_mount": (False, 1), "pid": (False, 1), "net": (False, 1),
        "clone3_user": (False, 38), "clone3_plain": (False, 38), "fork": 3, "system": 0}


# --- 5: other processes' command lines --------------------------------------------------------------------------------

def test_other_processes_are_hidden(sandbox):
    if not sandbox.isolation["private_proc"]:
        pytest.skip("no private procfs here (kernel < 5.8?): stepcode doctor lists the gap")
    secret = "postgresql://user:pw@db/stepcode-secret"
    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", secret], stdin=subprocess.PIPE)
    try:
        code = """import os
def f(x):
    me = os.getuid()
    seen, other_uids, secrets = 0, set(), 0
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        seen += 1
        try:
            other_uids.add(os.stat('/proc/' + pid).st_uid)
            secrets += b'stepcode-secret' in open(f'/proc/{pid}/cmdline', 'rb').read()
        except OSError:
            pass
    return seen, sorted(other_uids - {me}), secrets, os.path.exists('/proc/self/status')
"""
        seen, other_uids, secrets, self_visible = value(run(sandbox, code))
        assert (other_uids, secrets, self_visible) == ([], 0, True)
        assert seen == 1       # itself
        assert Path(f"/proc/{holder.pid}/cmdline").read_bytes().count(b"stepcode-secret") == 1  # it was there
    finally:
        holder.kill()
        holder.wait()


# --- 6: memory of the program as a whole ---------------------------------------------------------------------------

FORKED_MEMORY = """import os
def f(x):
    r, w = os.pipe()
    hold_r, hold_w = os.pipe()
    kids = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:
            os.close(r)
            os.close(hold_w)
            try:
                block = bytearray(b'x') * (150 << 20)     # 150 MB, every page touched
                os.write(w, b'1')
            except MemoryError:
                os._exit(0)
            os.close(w)
            os.read(hold_r, 1)                            # hold it until the parent has looked
            os._exit(0)
        kids.append(pid)
    os.close(w)
    got = 0
    while chunk := os.read(r, 16):                        # until every child has answered or died
        got += len(chunk)
    alive = [pid for pid in kids if os.waitpid(pid, os.WNOHANG)[0] == 0]
    os.close(hold_w)
    for pid in alive:
        os.waitpid(pid, 0)
    return got, len(alive)                                # blocks made, and children holding one at the end
"""

MEMFD = """import errno, os
def f(x):
    fds, written = [], 0
    try:
        while written < (1 << 30):            # RLIMIT_FSIZE caps each memfd: take many
            fds.append(os.memfd_create('hoard'))
            try:
                while True:
                    written += os.write(fds[-1], b'x' * (1 << 20))
            except OSError as e:
                if e.errno != errno.EFBIG:
                    raise
    except OSError:
        pass
    return written >> 20
"""


def test_memory_is_capped_for_the_program_as_a_whole(sandbox):
    if not sandbox.isolation["memory_cgroup"]:
        pytest.skip("no memory cgroup on this machine: the cap is per process (stepcode doctor says so)")
    held = run(sandbox, FORKED_MEMORY)   # 4 x 150 MB under a 256 MB cap: at most one holds its block at a time
    assert held["status"] in ("ok", "memory", "killed"), held
    if held["status"] == "ok":
        made, holding = value(held)
        assert holding <= 1, (made, holding)
    hoard = run(sandbox, MEMFD)          # memfd pages do not count against RLIMIT_AS, but the cgroup charges them
    assert hoard["status"] in ("ok", "memory", "killed"), hoard
    if hoard["status"] == "ok":
        assert value(hoard) <= 256
    # Memory is the program's verdict when the cgroup killed it for memory.
    assert "memory" in (held["status"], hoard["status"]) or held["status"] == hoard["status"] == "ok"
    # And the next program has its whole budget back.
    assert value(run(sandbox, "def f(x):\n    return len(bytearray(b'x') * (200 << 20)) >> 20\n")) == 200


# --- 7: every job starts from an empty work dir -----------------------------------------------------------------------

LITTER = """import os
def f(depth):
    os.mkdir('a')
    os.chdir('a')
    for _ in range(depth):
        os.mkdir('d')
        os.chdir('d')
    open('deep', 'w').write('left behind')
    os.chmod('.', 0)                      # and make the bottom unreadable to its owner
    os.chdir('/proc/self/cwd/..')
    os.symlink('/etc', os.path.join(os.environ['TMPDIR'], 'link'))
    try:
        with open(os.path.join(os.environ['TMPDIR'], 'fill'), 'wb') as fill:
            while True:
                fill.write(b'x' * (1 << 20))
    except OSError:
        pass
    return depth
"""

LOOK = """import os
def f(x):
    here = sorted(os.listdir('.'))
    open('new', 'wb').write(b'y' * (8 << 20))      # room again
    return here, os.getcwd() == os.environ['TMPDIR']
"""


def test_every_job_starts_from_an_empty_work_dir(sandbox):
    for depth in (5, 200):                        # 200 levels: far more than RLIMIT_NOFILE descriptors
        assert run(sandbox, LITTER, str(depth))["status"] in ("ok", "runtime_error")
        assert value(run(sandbox, LOOK)) == ([], True)
    assert value(run(sandbox, LOOK)) == ([], True)


# --- leftovers are reaped before the next job ---------------------------------------------------------------------

BOMB = """import os
def f(x):
    try:
        while True:
            if os.fork() == 0:
                os.setsid()
                while True:
                    try:
                        os.fork()
                    except OSError:
                        os._exit(0)
    except BlockingIOError:
        return 'refused'
"""

COUNT = """import os
def f(x):
    mine = 0
    for p in os.listdir('/proc'):
        try:
            mine += p.isdigit() and os.stat('/proc/' + p).st_uid == os.getuid()
        except OSError:
            pass
    return mine
"""


def test_the_next_job_sees_no_dying_leftovers(sandbox):
    for _ in range(3):
        assert run(sandbox, BOMB)["status"] in ("ok", "runtime_error", "timeout")
        assert value(run(sandbox, COUNT)) == 1


# --- 10: servers die with their engine -----------------------------------------------------------------------------

ENGINE = """
import sys
from stepcode.config import SandboxParams
from stepcode.sandbox.engine import Sandbox
sb = Sandbox(SandboxParams(timeout_s=120), workers=2, fork_loop=sys.argv[1])
print(' '.join(str(s.proc.pid) for slot in sb._slots for s in slot.servers.values()), flush=True)
print(' '.join(map(str, sb._uids.uids)), flush=True)
print(sb._base, flush=True)
list(sb.map(lambda i: sb.run('trace', {'code': 'import time\\ndef f(x):\\n    time.sleep(1000)\\n', 'anchor_fn': '_a',
       'entry_point': 'f', 'input': '0', 'max_lines': 1, 'max_line_chars': 10, 'max_output_chars': 10}), range(2)))
"""


def _uid_processes(uids: set[int]) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid in uids:
                    found.append(int(pid))
            except OSError:
                pass
    return found


@pytest.mark.parametrize("fork_loop", ["c", "python"])
def test_servers_and_programs_die_with_their_engine(fork_loop):
    engine = subprocess.Popen([sys.executable, "-c", ENGINE, fork_loop], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    servers = [int(p) for p in engine.stdout.readline().split()]
    assert len(servers) == 2
    uids = {int(u) for u in engine.stdout.readline().split()}
    base = engine.stdout.readline().strip()   # a killed engine cannot remove its temp dir: the test does
    assert len(uids) == 2 and all(SANDBOX_UID_BASE <= u < SANDBOX_UID_BASE + SANDBOX_UIDS for u in uids)
    deadline = time.monotonic() + 60
    while len(_uid_processes(uids)) < 2:  # both programs sleeping
        assert time.monotonic() < deadline, "the programs never started"
        time.sleep(0.05)
    engine.send_signal(signal.SIGKILL)
    engine.wait()
    # The servers noticed their engine is gone mid-job: the sleeping programs (timeout 120 s) die with them.
    deadline = time.monotonic() + 30
    try:
        while any(Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()
                  for pid in servers) or _uid_processes(uids):
            assert time.monotonic() < deadline, "a server or its program outlived the engine"
            time.sleep(0.05)
    finally:
        shutil.rmtree(base, ignore_errors=True)
