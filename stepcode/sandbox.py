"""Run untrusted Python in isolated child processes, fast: a fork-server per worker, one fresh child per program.

    from stepcode.sandbox import Sandbox
    with Sandbox() as sb:                                    # limits from params.yaml; workers = all cores
        sb.run("trace", {"code": ..., "input": "3", ...})    # -> {"status": "ok", ...}
        for result in sb.map(lambda job: sb.run("trace", job), jobs): ...

Design. Each worker *slot* owns one long-lived server process per hash seed (`PYTHONHASHSEED` is fixed when an
interpreter starts, so a second seed needs a second server). A server is a fresh interpreter that imports the runner
code and a set of stdlib modules once, enters its own mount and network namespaces, and then, per job, forks one
child. The child confines itself and calls a *runner* (`stepcode.runners`) that executes
the program and reports a JSON result through a pipe. Nothing is re-imported per program, so a job costs one fork,
one exec of the program and one reap.

Threat model — what a program running in the child CANNOT do (each is a test in tests/test_hostile.py):
- write anywhere but its private temp dir: it runs as an unprivileged uid (one per server, so `RLIMIT_NPROC` is not
  shared between parallel sandboxes) with no capabilities, and Landlock makes every other path read-only even for
  files that uid owns or that are world-writable (/tmp, /dev/shm). The temp dir is on a size-capped tmpfs.
- reach the network: an empty network namespace (loopback down), Landlock forbids TCP bind/connect, and a seccomp
  filter makes `socket()` fail with EPERM (plus ptrace, mount, unshare, setns, bpf, keyctl, io_uring, ...).
- outlive its run or leave processes behind: when the child exits or is killed on the wall-clock deadline, the
  server kills every process of its sandbox uid in one atomic `kill(-1)` (`setsid()` and double forks included) and,
  as a child subreaper, reaps them.
- exhaust the machine: RLIMIT_AS, RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_NPROC, RLIMIT_CORE=0; its own
  output is captured in memory up to a cap; the result it reports is capped too.
- signal the engine or its server: different uid, and Landlock signal scoping (ABI >= 6).
- see the parent's secrets: the environment is rebuilt from scratch (no credentials or tokens), stdin is /dev/null,
  every inherited file descriptor but the result pipe is closed, and the invoking user's 0700 home is unreadable.
- forge a result by writing to a file descriptor or exiting early: a result counts only if it is one well-formed
  frame carrying the job's random nonce, and a child that exits without one is a failure (`killed`).
What it CAN do: read world-readable files (the code base, the benchmark data — nothing secret lives there); burn up
to its CPU and wall-clock limits; and, being Python in the same process as the runner, introspect the runner's frames
to find the nonce and forge its own verdict. Predictions are short expressions, not adversaries of that skill; a
verdict that matters is re-checkable by the official harness. Imports: the unprivileged child cannot read the
interpreter's 0700 install folder, so it can import only what the server imported before forking (`PRELOAD` below,
the stdlib modules benchmark programs use); anything else fails with ImportError, and starting another Python fails.
Degraded mode: without root (a developer's laptop) there are no namespaces and no uid change; Landlock and seccomp
still apply, and processes are killed by process group. `Sandbox.isolation` says which mode is active.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import queue
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, TypeVar

from stepcode.forkserver import _read_frame, _write_frame

if TYPE_CHECKING:
    from stepcode.config import SandboxParams

RUNNERS_MODULES = ("stepcode.runners",)
SANDBOX_UID_BASE = 61000      # server k runs its children as uid SANDBOX_UID_BASE + k (no such user needs to exist)

T = TypeVar("T")
R = TypeVar("R")

# --- the engine side ---------------------------------------------------------------------------------------------

class _ServerProcess:
    """One server: a child interpreter speaking length-prefixed marshal over its stdin/stdout."""

    def __init__(self, cfg: dict, hash_seed: int):
        self.cfg = dict(cfg, hash_seed=str(hash_seed))
        self.hash_seed = hash_seed
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}

    def start(self) -> None:
        pkg_root = str(Path(__file__).resolve().parent.parent)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": str(self.hash_seed),
               "PYTHONPATH": pkg_root, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "stepcode.forkserver"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, cwd="/", close_fds=True)
        _write_frame(self.proc.stdin.fileno(), marshal.dumps(self.cfg))

    def handshake(self) -> dict:
        frame = _read_frame(self.proc.stdout.fileno())
        if frame is None:
            raise RuntimeError("the sandbox server failed to start (see stderr above)")
        self.info = marshal.loads(frame)
        return self.info

    def request(self, runner: str, payload: dict, timeout: float) -> dict:
        return self.receive() if self.send(runner, payload, timeout) else self.receive(failed=True)

    def send(self, runner: str, payload: dict, timeout: float) -> bool:
        try:
            _write_frame(self.proc.stdin.fileno(), marshal.dumps((runner, payload, float(timeout))))
            return True
        except (BrokenPipeError, OSError):
            return False

    def receive(self, failed: bool = False) -> dict:
        frame = None
        if not failed:
            try:
                frame = _read_frame(self.proc.stdout.fileno())
            except OSError:
                frame = None
        if frame is None:  # the server died (it never should): replace it and report this job as our failure
            code = self.proc.poll()
            self.stop()
            self.start()
            self.handshake()
            return {"status": "sandbox_error", "reason": f"the sandbox server died (exit code {code}) and restarted"}
        return marshal.loads(frame)

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


class Slot:
    """One worker: a server per hash seed. Jobs on one slot run one at a time."""

    def __init__(self, servers: dict[int, _ServerProcess], timeout: float):
        self.servers = servers
        self.timeout = timeout

    def run(self, runner: str, payload: dict, *, hash_seed: int | None = None, timeout: float | None = None) -> dict:
        server = self.servers[hash_seed] if hash_seed is not None else next(iter(self.servers.values()))
        return server.request(runner, payload, timeout or self.timeout)

    def run_each_seed(self, runner: str, payload: dict, seeds: Iterable[int], *,
                      timeout: float | None = None) -> list[dict]:
        """The same job on the servers of `seeds` at once (each forks its own child), results in seed order: the
        determinism check costs one round trip instead of two."""
        servers = [self.servers[seed] for seed in seeds]
        sent = [server.send(runner, payload, timeout or self.timeout) for server in servers]
        return [server.receive(failed=not ok) for server, ok in zip(servers, sent)]


class Sandbox:
    """A pool of `workers` slots. Thread-safe: `slot()` hands out one free slot at a time."""

    def __init__(self, params: SandboxParams | None = None, *, hash_seeds: Iterable[int] = (0,),
                 workers: int | None = None, namespaces: bool = True, runners: Iterable[str] = RUNNERS_MODULES):
        if params is None:
            from stepcode.config import SandboxParams
            params = SandboxParams()
        self.params = params
        self.workers = workers or self.params.resolved_workers()
        self.hash_seeds = tuple(hash_seeds)
        self._base = tempfile.mkdtemp(prefix="stepcode-sandbox-")
        os.chmod(self._base, 0o711)
        p = self.params
        limits = {"as_bytes": p.memory_mb << 20, "cpu_s": p.cpu_s, "fsize_bytes": p.file_size_mb << 20,
                  "nofile": p.open_files, "nproc": p.processes, "stdout_bytes": p.stdout_kb << 10}
        self._slots: list[Slot] = []
        self._free: queue.Queue[Slot] = queue.Queue()
        k = 0
        try:
            for i in range(self.workers):
                servers = {}
                for seed in self.hash_seeds:
                    base = os.path.join(self._base, f"s{k}")
                    os.mkdir(base, 0o711)
                    cfg = {"uid": SANDBOX_UID_BASE + k, "base_dir": base, "limits": limits,
                           "disk_mb": p.disk_mb, "runners_modules": list(runners), "namespaces": namespaces}
                    servers[seed] = _ServerProcess(cfg, seed)
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
        with ThreadPoolExecutor(2 * self.workers) as pool:
            window: list = []   # a bounded window in flight, so a huge iterable is never materialised at once
            for item in items:
                window.append(pool.submit(fn, item))
                if len(window) >= self.workers * 8:
                    yield window.pop(0).result()
            for fut in window:
                yield fut.result()

    def close(self) -> None:
        for slot in self._slots:
            for server in slot.servers.values():
                server.stop()
        self._slots = []
        shutil.rmtree(self._base, ignore_errors=True)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

