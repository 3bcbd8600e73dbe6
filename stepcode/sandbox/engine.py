"""Run untrusted Python in isolated child processes, fast: a fork-server per worker, one fresh child per program.

    from stepcode.sandbox.engine import Sandbox
    with Sandbox() as sb:                                    # limits from params.yaml; two servers per core
        sb.run("trace", {"code": ..., "input": "3", ...})    # -> {"status": "ok", ...}
        for result in sb.map(lambda job: sb.run("trace", job), jobs): ...
        with sb.slot() as slot: slot.run_many("check", [{"program": p} for p in programs])   # one round trip
        for verdict in sb.map_batches(lambda batch: ..., jobs): ...                         # batches, in order

Design. Each worker *slot* owns one long-lived server process per hash seed (`PYTHONHASHSEED` is fixed when an
interpreter starts, so a second seed needs a second server). A server is a fresh interpreter that imports the runner
code and a set of stdlib modules once, enters its own mount and network namespaces, confines itself, and then, per
job, forks one child, which drops to the sandbox uid and calls a *runner* (`stepcode.sandbox.runners`) that executes the
program and reports a JSON result through a pipe. The engine sends jobs in batches: a server compiles the whole batch,
sets up once what every child of it needs, then runs the jobs one at a time, one fresh child each, and answers the
batch in one frame. What a job costs, and why, is in stepcode/sandbox/server.py (~1 ms: one fork, the program, one
reap).

Threat model — what a program running in the child CANNOT do (each is a test in tests/test_hostile.py or, for what
needs a second program or a look from outside, tests/test_hostile_state.py):
- write anywhere but its private temp dir: it runs as an unprivileged uid (one per server, claimed machine-wide, so
  `RLIMIT_NPROC` and the cleanup kill below are never shared with another sandbox) with no capabilities, and Landlock
  makes every other path read-only even for files that uid owns or that are world-writable (/tmp, /dev/shm). The
  temp dir is on a size-capped tmpfs.
- change a file's metadata outside that dir (times, extended attributes), which Landlock has no right for: every
  mount of the server's namespace but the temp dir's is read-only, and seccomp refuses the xattr calls.
- leave state for a later program: SysV shared memory, semaphores and message queues, POSIX message queues and
  kernel keyrings are refused by seccomp (and the server has its own IPC namespace besides); the temp dir is
  emptied after every job that left something, however deep or unreadable, and a server that cannot empty it
  exits (the engine starts another) rather than run another job in it.
- create namespaces (a user namespace would hand it every capability inside): `unshare`, `setns` and `clone` with a
  namespace flag fail with EPERM; `clone3`, whose flags a filter cannot read, fails with ENOSYS (libc then uses
  `clone`).
- reach the network: an empty network namespace (loopback down), Landlock forbids TCP bind/connect, and a seccomp
  filter makes `socket()` fail with EPERM (plus ptrace, mount, bpf, io_uring, userfaultfd, ...).
- see other processes: the server mounts its own procfs with `hidepid=invisible`, so the program sees only the
  processes of its own uid — no other command line (where secrets such as database URLs sit), environment or status.
- outlive its run or leave processes behind: when the child exits or is killed on the wall-clock deadline, the
  server kills every process of its sandbox uid in one atomic `kill(-1)` (`setsid()` and double forks included) and,
  as a child subreaper, reaps every one of them before the next job starts.
- outlive its engine: a server watches its protocol pipe; when the engine dies, the server kills the running
  program and exits, and it holds the lock of its uid until then, so no later sandbox claims that uid meanwhile.
- exhaust the machine: one memory cgroup per server caps a program and every process it forks together at
  `memory_mb`, memfd and tmpfs pages included (an OOM kill there is the verdict `memory`); RLIMIT_AS (per process),
  RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_NPROC, RLIMIT_CORE=0; its own output is captured in memory up to a
  cap; the result it reports is capped too.
- signal the engine or its server: different uid, and Landlock signal scoping (ABI >= 6).
- see the parent's secrets: the environment is rebuilt from scratch (no credentials or tokens), stdin is /dev/null,
  every inherited file descriptor but the result pipe is closed, and the invoking user's 0700 home is unreadable.
- forge a result by writing to a file descriptor or exiting early: a result counts only if it is one well-formed
  frame carrying the job's random nonce, and a child that exits without one is a failure (`killed`).
What it CAN do: read world-readable files (the code base, the benchmark data — nothing secret lives there); burn up
to its CPU and wall-clock limits; and, being Python in the same process as the runner, introspect the runner's frames
to find the nonce and forge its own verdict — so the caller checks a report's shape and types, and never trusts a
verdict that matters without re-checking it (predictions are short expressions, not adversaries of that skill).
Imports: the standard library and the engine's site-packages, read-only (the interpreter's folders are exposed to the
sandbox uid in the server's mount namespace); what the server preloaded (`Sandbox(preload=...)`) costs a program
nothing.
Fallbacks — `Sandbox.isolation` says which mode is active, and its "gaps" (printed by `stepcode doctor`) list what
this machine loses (`isolation_gaps`): without root (a developer's laptop) there is no uid change, no namespace and
no cgroup; Landlock and seccomp still apply, processes are killed by process group, and memory is capped per process.
Without a memory cgroup (read-only cgroupfs, a v2 hierarchy that does not delegate `memory`), memory is capped per
process only. Kernels before 5.8 (per-mount procfs options) show other processes; before 5.12 (mount_setattr) the
mounts stay writable and seccomp refuses file-time changes everywhere instead; Landlock before ABI 4 does not refuse
TCP, before ABI 6 does not scope signals; without Landlock, only file permissions and the read-only mounts guard
writes; off x86_64 there is no seccomp filter.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import marshal
import os
import queue
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, TypeVar

from stepcode.sandbox.protocol import read_frame, server_limits, write_frame

if TYPE_CHECKING:
    from stepcode.config import SandboxParams

RUNNERS_MODULES = ("stepcode.sandbox.runners",)
BATCH_SIZE = 16               # jobs per round trip in `map_batches`: enough to amortise it, few enough to balance
SANDBOX_UID_BASE = 61000      # servers run their children as uids from here on (no such user needs to exist)
SANDBOX_UIDS = 4096           # how many: the sandboxes running at once on one machine share this range
UID_LOCK_DIR = "/run/stepcode-sandbox-uids"   # root-only; one lock file per uid in use (tmpfs: gone at reboot)

# The servers' environment (plus PYTHONHASHSEED and PYTHONPATH). LD_BIND_NOW: the dynamic linker resolves every
# symbol once, at start-up, instead of on first call: a child's first call of a C function the server never called
# would cost a symbol lookup and a copy-on-write fault on the table it patches, in every child (~13 faults each).
SERVER_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
              "LD_BIND_NOW": "1"}

# Standard-library modules a server may import once for its programs, so that a program importing one pays a
# dictionary lookup instead of an import (~1-5 ms each). Each is free of side effects on import and registers no
# at-fork hook (random, threading and logging do: see stepcode/sandbox/server.py). Each module preloaded also makes
# every fork a little dearer (~0.03 ms per MB of server memory), so a sandbox preloads what its programs import.
PRELOADABLE = frozenset({
    "abc", "array", "bisect", "cmath", "collections", "copy", "dataclasses", "datetime", "decimal", "enum",
    "fractions", "functools", "heapq", "itertools", "json", "math", "numbers", "operator", "re", "string",
    "textwrap", "types", "typing", "unicodedata"})
_IMPORTS = re.compile(r"^[ \t]*(?:from[ \t]+([A-Za-z_]\w*)|import[ \t]+([\w., \t]+))", re.MULTILINE)


def preload_for(sources: Iterable[str]) -> tuple[str, ...]:
    """The preloadable modules these programs import, read from their text (a hint: a module it misses is
    imported by the program's child itself, only slower)."""
    found = set()
    for source in sources:
        if "import" in source:
            for frm, names in _IMPORTS.findall(source):
                found.update([frm] if frm else (n.split()[0].split(".")[0] for n in names.split(",") if n.strip()))
    return tuple(sorted(found & PRELOADABLE))


def isolation_gaps(info: dict) -> list[str]:
    """What the sandbox cannot guarantee on this machine, from a server's self-description (`Sandbox.isolation`):
    one sentence per guarantee of the threat model (this module's docstring) that is lost, and why."""
    gaps = []
    if not info["root"]:
        gaps.append("not root: programs run as your own uid (no private uid, namespaces or cgroup); a process that "
                    "leaves the program's process group (setsid) is not killed with it")
    elif not info["namespaces"]:
        gaps.append("no mount/network/IPC namespaces: the network is refused by seccomp and Landlock only, the "
                    "work dir is not a size-capped tmpfs, and mounts stay writable")
    if info["root"] and info["namespaces"] and not info.get("private_proc"):
        gaps.append("no private procfs (kernel < 5.8?): programs can read other processes' command lines")
    if info["root"] and info["namespaces"] and not info.get("read_only_mounts"):
        gaps.append("mounts not read-only (kernel < 5.12?): file times are guarded by seccomp instead, which "
                    "refuses them in the work dir too")
    if not info.get("memory_cgroup"):
        gaps.append("no memory cgroup: memory_mb caps each process, so a program that forks N processes can use N "
                    "times as much, and memfd/tmpfs pages are not counted")
    if info["landlock_abi"] == 0:
        gaps.append("no Landlock: writes outside the work dir are stopped only by file permissions"
                    + (" and the read-only mounts" if info.get("read_only_mounts") else ""))
    else:
        if info["landlock_abi"] < 4:
            gaps.append(f"Landlock ABI {info['landlock_abi']} < 4: TCP is not refused by Landlock")
        if info["landlock_abi"] < 6:
            gaps.append(f"Landlock ABI {info['landlock_abi']} < 6: signals and abstract unix sockets are not scoped")
    if not info["seccomp"]:
        gaps.append("no seccomp filter (not x86_64): sockets, SysV IPC, keyrings, ptrace and namespaces through "
                    "clone are not refused")
    if info["fork_loop"] != "c":
        gaps.append("the Python fork loop runs (the C one is not built, or another was asked for): same verdicts, "
                    "~1.5x the CPU per run")
    return gaps


T = TypeVar("T")
R = TypeVar("R")

# --- the engine side ---------------------------------------------------------------------------------------------

class _ServerProcess:
    """One server: a child interpreter speaking length-prefixed marshal over its stdin/stdout."""

    def __init__(self, cfg: dict, hash_seed: int, uid_lock: int = -1):
        self.cfg = dict(cfg, hash_seed=str(hash_seed))
        self.uid_lock = uid_lock   # the flock(2)ed file claiming its uid: the server holds it too, while it lives
        self.hash_seed = hash_seed
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}
        self.closing = False   # set by Sandbox.close: a server that goes away then is not replaced

    def start(self) -> None:
        pkg_root = str(Path(__file__).resolve().parents[2])   # the folder holding stepcode/
        env = dict(SERVER_ENV, PYTHONHASHSEED=str(self.hash_seed), PYTHONPATH=pkg_root)
        # A session of its own: a Ctrl-C at the terminal is the engine's to handle (it closes the servers), not
        # theirs. The uid lock passed down keeps the uid claimed until this server is gone, even when the engine
        # dies first (the server notices, kills its program and exits).
        self.proc = subprocess.Popen([sys.executable, "-S", "-m", "stepcode.sandbox.server"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, cwd="/", close_fds=True,
                                     pass_fds=(self.uid_lock,) if self.uid_lock >= 0 else (), start_new_session=True)
        write_frame(self.proc.stdin.fileno(), marshal.dumps(self.cfg))

    def handshake(self) -> dict:
        frame = read_frame(self.proc.stdout.fileno())
        if frame is None:
            raise RuntimeError("the sandbox server failed to start (see stderr above)")
        self.info = marshal.loads(frame)
        return self.info

    def send(self, runner: str, payloads: list[dict], timeout: float) -> bool:
        try:
            write_frame(self.proc.stdin.fileno(), marshal.dumps((runner, payloads, float(timeout))))
            return True
        except (BrokenPipeError, OSError):
            return False

    def receive(self, n: int, failed: bool = False) -> list[dict]:
        """The results of the last `send` of `n` payloads."""
        frame = None
        if not failed:
            try:
                frame = read_frame(self.proc.stdout.fileno())
            except OSError:
                frame = None
        if frame is None and self.closing:   # closed under a running batch (an interrupt): nothing to replace
            return [{"status": "sandbox_error", "reason": "the sandbox was closed"} for _ in range(n)]
        if frame is None:  # the server died (it never should): replace it and report these jobs as our failure
            code = self.restart()
            reason = f"the sandbox server died (exit code {code}) and restarted"
            return [{"status": "sandbox_error", "reason": reason} for _ in range(n)]
        return [_result(answer) for answer in marshal.loads(frame)]

    def restart(self) -> int | None:
        """Replace a server that is gone (or going); returns its exit code."""
        self.stop()
        code = self.proc.returncode
        self.start()
        self.handshake()
        return code

    def close_input(self) -> None:
        if self.proc:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            with contextlib.suppress(Exception):
                self.proc.stdout.close()


def _ensure_bytecode(modules: Iterable[str]) -> None:
    """Write the cached bytecode (.pyc) of the modules every server imports, where it is missing or stale. The
    servers run with PYTHONDONTWRITEBYTECODE (a root process must not litter the tree), as do some shells: without a
    .pyc, each server start compiled these sources again (~10 ms each). Best effort: a read-only tree is fine."""
    import importlib.util
    import py_compile

    for name in modules:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):   # not importable here: the server will say so itself
            continue
        source = spec.origin if spec else None
        if not source or not source.endswith(".py"):
            continue
        cached = importlib.util.cache_from_source(source)
        with contextlib.suppress(OSError, py_compile.PyCompileError):
            st = os.stat(source)
            with contextlib.suppress(FileNotFoundError), open(cached, "rb") as f:
                head = f.read(16)   # PEP 552: magic, flags, source mtime, source size
                if head[:4] == importlib.util.MAGIC_NUMBER and head[4:8] == bytes(4) and \
                        head[8:16] == struct.pack("<II", int(st.st_mtime) & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF):
                    continue
            py_compile.compile(source, cfile=cached, doraise=True)


def _site_packages() -> list[str]:
    """This interpreter's package folders, in path order: the servers start without `site` (`-S`) and append them."""
    return [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")]


def _result(answer: dict | tuple) -> dict:
    """A job's result from the server's answer: a verdict the server reached (a dict: the job never ran), or the
    child's report — its own JSON, nonce-checked by the server, parsed here — with what the run cost."""
    if isinstance(answer, dict):
        return answer
    report, wall_s, cpu_s, faults = answer
    if isinstance(report, bytes):
        try:
            report = json.loads(report)
        except (ValueError, RecursionError):
            report = None
        if not (isinstance(report, dict) and isinstance(report.get("status"), str)):
            report = {"status": "killed", "reason": "the program reported a malformed result"}
    report.update(wall_s=round(wall_s, 6), cpu_s=round(cpu_s, 6), faults=faults)
    return report


class Slot:
    """One worker: a server per hash seed. Jobs on one slot run one at a time (per server)."""

    def __init__(self, servers: dict[int, _ServerProcess], timeout: float):
        self.servers = servers
        self.timeout = timeout

    def run(self, runner: str, payload: dict, *, hash_seed: int | None = None, timeout: float | None = None) -> dict:
        return self.run_many(runner, [payload], hash_seed=hash_seed, timeout=timeout)[0]

    def run_many(self, runner: str, payloads: list[dict], *, hash_seed: int | None = None,
                 timeout: float | None = None) -> list[dict]:
        """Each payload in its own child, on one server, in one round trip; results in payload order."""
        seed = hash_seed if hash_seed is not None else next(iter(self.servers))
        return [results[0] for results in self.run_many_each_seed(runner, payloads, (seed,), timeout=timeout)]

    def run_many_each_seed(self, runner: str, payloads: list[dict], seeds: Iterable[int], *,
                           timeout: float | None = None) -> list[list[dict]]:
        """Every payload on the server of each seed, the servers working at once, each batch in one round trip (a
        round trip costs more than a run, and a server compiles a whole batch before its first fork, which saves
        faults). Returns, per payload, its results in seed order."""
        servers = [self.servers[seed] for seed in seeds]
        # A server that exited since its last answer (it does when it could not empty its work dir) never saw
        # these jobs: start another and send them again.
        sent = []
        for server in servers:
            ok = server.send(runner, payloads, timeout or self.timeout)
            if not ok and not server.closing:
                server.restart()
                ok = server.send(runner, payloads, timeout or self.timeout)
            sent.append(ok)
        per_seed = [server.receive(len(payloads), failed=not ok) for server, ok in zip(servers, sent)]
        return [list(results) for results in zip(*per_seed)]


class _UidClaims:
    """Sandbox uids held for this process's servers, machine-wide: one `flock`ed file per uid. A server's cleanup
    kills every process of its uid (`kill(-1)` as that uid), so two sandboxes sharing a uid — two processes each with
    a Sandbox, as in the pipeline's parallel trace tasks or the study's parallel arms — would kill each other's
    running programs. The kernel drops a lock when its holder exits, however it exits, so a crashed engine frees its
    uids. (Its servers die with it: they read the end of their input.)"""

    def __init__(self, n: int):
        import fcntl

        self.fds: list[int] = []   # the lock of each uid, in the same order
        self.uids: list[int] = []
        if os.geteuid() != 0:     # degraded mode: no uid change at all (see the module docstring)
            self.uids = [os.geteuid()] * n
            return
        os.makedirs(UID_LOCK_DIR, mode=0o700, exist_ok=True)
        for uid in range(SANDBOX_UID_BASE, SANDBOX_UID_BASE + SANDBOX_UIDS):
            if len(self.uids) == n:
                return
            fd = os.open(os.path.join(UID_LOCK_DIR, str(uid)), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.fds.append(fd)
            self.uids.append(uid)
        self.release()
        from stepcode.errors import UserError

        raise UserError(f"{n} sandbox uids wanted, but of the {SANDBOX_UIDS} from {SANDBOX_UID_BASE} only "
                        f"{len(self.uids)} are free (the others are held by running sandboxes: lock files in "
                        f"{UID_LOCK_DIR}); use fewer workers or wait for them")

    def release(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


class Sandbox:
    """A pool of `workers` slots. Thread-safe: `slot()` hands out one free slot at a time.

    `preload`: modules each server imports once, before forking (`preload_for` picks them from a corpus); None: a
    general-purpose set (stepcode.sandbox.server.PRELOAD).
    `fork_loop` (default: `params.fork_loop`): the servers fork and supervise children in C
    (stepcode/sandbox/_forkloop.c,
    built at install) or, when that is not built or "python" is asked for, in Python — same verdicts, ~1.5x the CPU
    per run. `isolation` says which."""

    def __init__(self, params: SandboxParams | None = None, *, hash_seeds: Iterable[int] = (0,),
                 workers: int | None = None, namespaces: bool = True, runners: Iterable[str] = RUNNERS_MODULES,
                 fork_loop: str | None = None, preload: Iterable[str] | None = None):
        if params is None:
            from stepcode.config import SandboxParams
            params = SandboxParams()
        fork_loop = fork_loop or params.fork_loop
        if fork_loop not in ("c", "python"):
            raise ValueError(f"fork_loop must be 'c' or 'python', not {fork_loop!r}")
        self.params = params
        self.hash_seeds = tuple(hash_seeds)
        # A server sleeps while its child runs, so one busy server per core leaves cores idle: by default, slots
        # enough for two servers per core (a slot has one server per hash seed, all working at once).
        self.workers = workers or self.params.workers or max(1, 2 * (os.cpu_count() or 1) // len(self.hash_seeds))
        self._base = tempfile.mkdtemp(prefix="stepcode-sandbox-")
        os.chmod(self._base, 0o711)
        p = self.params
        limits = server_limits(p)
        self._slots: list[Slot] = []
        self._free: queue.Queue[Slot] = queue.Queue()
        self._uids = _UidClaims(self.workers * len(self.hash_seeds))
        _ensure_bytecode(("stepcode", "stepcode.sandbox", "stepcode.sandbox.protocol", "stepcode.sandbox.server",
                          "stepcode.sandbox.isolation", *runners))
        k = 0
        try:
            for _ in range(self.workers):
                servers = {}
                for seed in self.hash_seeds:
                    base = os.path.join(self._base, f"s{k}")
                    os.mkdir(base, 0o711)
                    cfg = {"uid": self._uids.uids[k], "base_dir": base, "limits": limits,
                           "disk_mb": p.disk_mb, "runners_modules": list(runners), "namespaces": namespaces,
                           "site_packages": _site_packages(), "fork_loop": fork_loop}
                    if preload is not None:
                        cfg["preload"] = list(preload)
                    servers[seed] = _ServerProcess(cfg, seed, self._uids.fds[k] if self._uids.fds else -1)
                    servers[seed].start()
                    k += 1
                slot = Slot(servers, p.timeout_s)
                self._slots.append(slot)
            for slot in self._slots:  # handshakes after all starts: servers boot in parallel
                for server in slot.servers.values():
                    server.handshake()
                self._free.put(slot)
        except BaseException:
            self.close()
            raise
        self.isolation = dict(self._slots[0].servers[self.hash_seeds[0]].info)
        self.isolation["gaps"] = isolation_gaps(self.isolation)

    @contextlib.contextmanager
    def slot(self) -> Iterator[Slot]:
        s = self._free.get()
        try:
            yield s
        finally:
            self._free.put(s)

    def run(self, runner: str, payload: dict, *, hash_seed: int | None = None, timeout: float | None = None) -> dict:
        with self.slot() as s:
            return s.run(runner, payload, hash_seed=hash_seed, timeout=timeout)

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """fn(item) for every item on a thread pool, results yielded in input order as they complete. `fn` takes a
        slot itself (`with sandbox.slot() as s: ...`) only for its sandboxed runs, so its own work (instrumenting,
        say) overlaps the runs of other items: twice as many threads as slots keep every slot busy."""
        pool = ThreadPoolExecutor(2 * self.workers)
        try:
            window: list = []   # a bounded window in flight, so a huge iterable is never materialised at once
            for item in items:
                window.append(pool.submit(fn, item))
                if len(window) >= self.workers * 8:
                    yield window.pop(0).result()
            for fut in window:
                yield fut.result()
        finally:   # also when the caller stops early (an interrupt): what has not started never will
            pool.shutdown(wait=True, cancel_futures=True)

    def map_batches(self, fn: Callable[[list[T]], list[R]], items: Iterable[T], size: int = BATCH_SIZE) -> Iterator[R]:
        """`map` over consecutive batches of `size` items (the last may be shorter), the batches' results flattened
        in input order: for `fn`s that send a whole batch to a slot (`Slot.run_many`)."""
        iterator = iter(items)
        batches = iter(lambda: list(itertools.islice(iterator, size)), [])
        for results in self.map(fn, batches):
            yield from results

    def close(self) -> None:
        servers = [server for slot in self._slots for server in slot.servers.values()]
        for server in servers:
            server.closing = True
        for server in servers:  # all at once: each exits as soon as it reads the end of its input (mid-batch too)
            server.close_input()
        for server in servers:
            server.stop()
        self._slots = []
        for server in servers:    # each server's memory cgroup, empty now (a server cannot remove it: it is confined)
            cgroup = server.info.get("memory_cgroup")
            if cgroup:
                with contextlib.suppress(OSError):
                    os.rmdir(cgroup["path"])
        self._uids.release()      # after the servers are gone: their uids' processes died with them
        shutil.rmtree(self._base, ignore_errors=True)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

