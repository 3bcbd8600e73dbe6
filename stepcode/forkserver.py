"""The sandbox's fork-server: one per worker and hash seed, started by `stepcode.sandbox.Sandbox`.

    python -m stepcode.forkserver     # speaks length-prefixed marshal on stdin/stdout; not for humans

It imports the runner code and `PRELOAD` once, enters its own mount and network namespaces, and forks one confined
child per job. The threat model is in stepcode/sandbox.py. This module must stay light: every module the server has
imported makes each fork slower (page tables) and some add at-fork hooks — `threading` alone costs ~0.3 ms per
fork, so neither it nor `subprocess`, `queue` or `tempfile` is imported here.
"""

from __future__ import annotations

import contextlib
import gc
import json
import marshal
import os
import resource
import select
import shutil
import signal
import struct
import sys
import time
from typing import Callable

# Imported once by the server so that programs get them without touching the disk. Deliberately short: every
# module imported here makes each fork slower (more page tables to copy and tear down); anything else a program
# imports is read from disk by the child itself (the interpreter's folders are exposed to the sandbox uid).
PRELOAD = ("math", "re", "collections", "itertools", "functools", "string", "typing")
RESULT_CAP_BYTES = 4 << 20    # a child reporting more than this is an output_limit


# --- framing: 4-byte little-endian length, then the body ---------------------------------------------------------

def _write_frame(fd: int, body: bytes) -> None:
    data = struct.pack("<I", len(body)) + body
    while data:
        data = data[os.write(fd, data):]


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int) -> bytes | None:
    head = _read_exact(fd, 4)
    return None if head is None else _read_exact(fd, struct.unpack("<I", head)[0])


# --- the server (runs in its own interpreter: `python -m stepcode.sandbox`) --------------------------------------

class _Server:
    """Everything that can be prepared once is prepared here, so a job's child does the least possible work: each
    Python statement a child runs copies the pages it touches (copy-on-write), and each fork copies page tables."""

    def __init__(self, cfg: dict):
        from stepcode import isolation

        self.cfg = cfg
        self.limits = cfg["limits"]
        self.root = os.geteuid() == 0
        self.uid = cfg["uid"] if self.root else os.geteuid()
        self.landlock = isolation.landlock_abi()
        self.seccomp = isolation.seccomp_available()
        self.namespaces = False
        self.exposed: list[str] = []
        if self.root and cfg.get("namespaces", True):
            try:
                isolation.unshare(isolation.CLONE_NEWNS | isolation.CLONE_NEWNET)
                isolation.make_mounts_private()
                isolation.mount_tmpfs(cfg["base_dir"], cfg["disk_mb"])
                # The unprivileged child must be able to import (lazily) and run Python even when it is installed
                # under root's 0700 home: expose the interpreter, the venv and this package in this namespace.
                staging = os.path.join(cfg["base_dir"], ".expose")
                os.mkdir(staging, 0o700)
                here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
                self.exposed = isolation.expose_paths([sys.base_prefix, sys.prefix, here], staging)
                self.namespaces = True
            except OSError:
                pass
        isolation.set_child_subreaper()
        # One private work dir, reused by every job of this server (jobs run one at a time) and emptied after each.
        self.workdir = os.path.join(cfg["base_dir"], "work")
        os.mkdir(self.workdir, 0o700)
        if self.root:
            os.chown(self.workdir, self.uid, self.uid)
        for name in PRELOAD:
            with contextlib.suppress(ImportError):
                __import__(name)
        self.runners = {}
        for module_name in cfg["runners_modules"]:
            module = __import__(module_name, fromlist=["RUNNERS"])
            self.runners.update(module.RUNNERS)
            for name, payload in getattr(module, "WARMUP", {}).items():
                prepare, run = module.RUNNERS[name]
                for _ in range(8):
                    json.dumps({"nonce": "0" * 32, "result": run(prepare(payload), self.limits)})
        os.chdir(self.workdir)
        self._confine_self()
        # Move every object created so far out of the collector's reach: a GC pass in a child would otherwise
        # write to (and so copy) every page holding a tracked object.
        gc.freeze()

    def _confine_self(self) -> None:
        """Apply once, to the server itself, every restriction the children inherit anyway. A child then has almost
        nothing to do before running the program — and that matters: here each page a child touches costs a
        copy-on-write fault of ~3 us, so Python work in the child is the dominant cost of a run.
        The server needs none of what it gives up: after start-up it only forks, waits, kills and cleans its
        work dir, and its own writes go to pipes and that dir."""
        from stepcode import isolation

        os.environ.clear()
        os.environ.update({"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": self.workdir, "TMPDIR": self.workdir,
                           "PYTHONHASHSEED": self.cfg["hash_seed"]})
        lim = self.limits
        for which, value in ((resource.RLIMIT_AS, lim["as_bytes"]), (resource.RLIMIT_FSIZE, lim["fsize_bytes"]),
                             (resource.RLIMIT_NOFILE, lim["nofile"]), (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(which, (value, value))
        if self.root:  # counted per uid: it binds the children, which run as the sandbox uid, not root
            resource.setrlimit(resource.RLIMIT_NPROC, (lim["nproc"], lim["nproc"]))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # an oversized write fails with EFBIG instead of killing
        isolation.set_no_new_privs()
        if self.landlock:
            ruleset = isolation.landlock_ruleset(self.workdir, self.landlock)
            isolation.landlock_restrict(ruleset)
            os.close(ruleset)
        if self.seccomp:
            isolation.seccomp_install(isolation.seccomp_program())

    def info(self) -> dict:
        return {"root": self.root, "namespaces": self.namespaces, "landlock_abi": self.landlock,
                "seccomp": self.seccomp, "uid": self.uid, "exposed": self.exposed,
                "python": sys.version.split()[0], "hash_seed": os.environ.get("PYTHONHASHSEED")}

    def run_job(self, runner: str, payload: dict, timeout: float) -> dict:
        if runner not in self.runners:
            return {"status": "sandbox_error", "reason": f"unknown runner {runner!r}"}
        prepare, run = self.runners[runner]
        prepared = prepare(payload)
        if isinstance(prepared, dict):  # a verdict already (e.g. the source does not compile): nothing to run
            return prepared
        nonce = os.urandom(16).hex()
        r, w = os.pipe()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            try:
                os.close(r)
                self._child(w, run, prepared, nonce)
            finally:
                os._exit(70)
        os.close(w)
        try:
            return self._collect(pid, r, nonce, start, timeout)
        finally:
            os.close(r)
            if os.listdir(self.workdir):  # the program left files: empty the dir for the next job
                for entry in os.scandir(self.workdir):
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        with contextlib.suppress(OSError):
                            os.unlink(entry.path)

    def _child(self, w: int, run: Callable, prepared, nonce: str) -> None:
        from stepcode import isolation

        os.setsid()
        os.dup2(0, 2)  # the server's fds 0 and 1 are /dev/null already; 2 was its stderr
        cpu = self.limits["cpu_s"]
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        if self.root:
            os.setgroups([])
            os.setresgid(self.uid, self.uid, self.uid)
            os.setresuid(self.uid, self.uid, self.uid)
        # If the server dies mid-run (its engine was killed), the program must not outlive it.
        isolation.set_parent_death_signal(signal.SIGKILL)
        # Close every inherited descriptor but the result pipe (the server's protocol pipes included).
        os.closerange(3, w)
        os.closerange(w + 1, 1 << 20)
        # `random` reseeds itself from os.urandom in every forked child (its at-fork hook), so children of one
        # server do not replay one random state and a program using randomness shows up as nondeterministic.
        me = os.getpid()
        result = run(prepared, self.limits)
        if os.getpid() != me:  # a process the program forked got here: only the child itself may report
            os._exit(0)
        _write_frame(w, json.dumps({"nonce": nonce, "result": result}).encode())
        os._exit(0)

    def _collect(self, pid: int, r: int, nonce: str, start: float, timeout: float) -> dict:
        buf = bytearray()
        pidfd = os.pidfd_open(pid)
        poller = select.poll()
        poller.register(r, select.POLLIN)
        poller.register(pidfd, select.POLLIN)
        verdict, exited, pipe_open = None, False, True
        try:
            while not exited or pipe_open:
                left = start + timeout - time.monotonic()
                if left <= 0:
                    verdict = {"status": "timeout", "reason": f"exceeded the {timeout:g} s wall-clock limit"}
                    break
                for fd, _ in poller.poll(left * 1000):
                    if fd == pidfd:
                        exited = True
                        poller.unregister(pidfd)
                    else:
                        chunk = os.read(r, 1 << 16)
                        if not chunk:
                            pipe_open = False
                            poller.unregister(r)
                        buf += chunk
                if len(buf) > RESULT_CAP_BYTES:
                    verdict = {"status": "output_limit", "reason": f"reported more than {RESULT_CAP_BYTES} bytes"}
                    break
                if exited and pipe_open:
                    break  # a descendant may still hold the pipe open; it is killed below
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._kill_leftovers(pid)
            _, status, usage = os.wait4(pid, 0)
            os.close(pidfd)
            self._reap_orphans()
        wall = time.monotonic() - start
        if verdict is None:
            verdict = self._verdict(bytes(buf), nonce, status)
        verdict["wall_s"] = round(wall, 6)
        verdict["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 6)
        verdict["faults"] = usage.ru_minflt
        return verdict

    def _kill_leftovers(self, pid: int) -> None:
        """Kill every process the program started, however it detached (setsid, double fork).

        As root: every process of this server's sandbox uid. `kill(-1)` from a process whose real and effective uid
        are the sandbox uid reaches exactly the processes of that uid, and the kernel makes it atomic with respect to
        fork (a task forking while the signal is delivered aborts the fork), so a fork bomb cannot outrun it. The
        saved uid stays 0, so the server takes root back right after. (A PID namespace per program would do the same
        but costs ~2 ms per namespace here, four times a fork.) Without root: the program's process group."""
        if self.root:
            os.setresuid(self.uid, self.uid, 0)
            try:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(-1, signal.SIGKILL)
            finally:
                os.setresuid(0, 0, 0)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)

    @staticmethod
    def _reap_orphans() -> None:
        """The server is a child subreaper: the program's orphans become its children; reap the dead ones."""
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass

    @staticmethod
    def _verdict(buf: bytes, nonce: str, status: int) -> dict:
        frame = None
        if len(buf) >= 4 and struct.unpack("<I", buf[:4])[0] == len(buf) - 4:
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                frame = json.loads(buf[4:])
        if isinstance(frame, dict) and frame.get("nonce") == nonce and isinstance(frame.get("result"), dict):
            return frame["result"]
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGXCPU:
                return {"status": "timeout", "reason": "exceeded the CPU-time limit"}
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            return {"status": "killed", "reason": f"the program died of {name} before reporting a result"}
        code = os.waitstatus_to_exitcode(status)
        why = "a malformed result" if buf else "no result"
        return {"status": "killed", "reason": f"the program exited (code {code}) with {why}"}


def serve() -> None:
    proto_in, proto_out = os.dup(0), os.dup(1)
    # Anything the server or its imports print must not corrupt the protocol stream.
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    cfg = marshal.loads(_read_frame(proto_in))
    server = _Server(cfg)
    _write_frame(proto_out, marshal.dumps(server.info()))
    while (frame := _read_frame(proto_in)) is not None:
        runner, payload, timeout = marshal.loads(frame)
        try:
            result = server.run_job(runner, payload, timeout)
        except Exception as e:  # a bug of ours, not the program's: report it, keep serving
            result = {"status": "sandbox_error", "reason": f"{type(e).__name__}: {e}"}
        _write_frame(proto_out, marshal.dumps(result))


if __name__ == "__main__":
    serve()
