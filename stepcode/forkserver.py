"""The sandbox's fork-server: one per worker and hash seed, started by `stepcode.sandbox.Sandbox`.

    python -m stepcode.forkserver     # speaks length-prefixed marshal on stdin/stdout; not for humans

It imports the runner code and `PRELOAD` once, enters its own mount and network namespaces, and forks one confined
child per job. The threat model is in stepcode/sandbox.py. This module must stay light: every module the server has
imported makes each fork slower (page tables) and some add at-fork hooks — `threading` alone costs ~0.3 ms per
fork, so neither it nor `subprocess`, `queue` or `tempfile` is imported here.
"""

from __future__ import annotations

import contextlib
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

PRELOAD = (
    "re", "math", "cmath", "collections", "collections.abc", "itertools", "functools", "string", "heapq", "bisect",
    "copy", "operator", "datetime", "json", "random", "statistics", "fractions", "decimal", "typing", "dataclasses",
    "enum", "textwrap", "unicodedata", "hashlib", "base64", "array", "struct", "numbers", "calendar", "time", "types",
    "abc", "io", "inspect", "traceback", "contextlib", "pprint", "difflib", "urllib.parse", "html", "binascii",
    "zlib", "locale", "keyword", "ast", "weakref", "codecs",
)  # not threading/queue/secrets/uuid: each costs a slow at-fork hook or a large shared library in every fork
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
    def __init__(self, cfg: dict):
        from stepcode import isolation

        self.cfg = cfg
        self.limits = cfg["limits"]
        self.base = cfg["base_dir"]
        self.root = os.geteuid() == 0
        self.landlock = isolation.landlock_abi()
        self.seccomp = isolation.seccomp_available()
        self.namespaces = False
        if self.root and cfg.get("namespaces", True):
            try:
                isolation.unshare(isolation.CLONE_NEWNS | isolation.CLONE_NEWNET)
                isolation.make_mounts_private()
                isolation.mount_tmpfs(self.base, cfg["disk_mb"])
                self.namespaces = True
            except OSError:
                pass
        isolation.set_child_subreaper()
        for name in PRELOAD:
            with contextlib.suppress(ImportError):
                __import__(name)
        runners = __import__(cfg["runners_module"], fromlist=["RUNNERS"])
        self.runners = runners.RUNNERS
        self.seq = 0

    def info(self) -> dict:
        return {"root": self.root, "namespaces": self.namespaces, "landlock_abi": self.landlock,
                "seccomp": self.seccomp, "uid": self.cfg["uid"] if self.root else os.geteuid(),
                "python": sys.version.split()[0], "hash_seed": os.environ.get("PYTHONHASHSEED")}

    def run_job(self, runner: str, payload: dict, timeout: float) -> dict:
        from stepcode import isolation

        if runner not in self.runners:
            return {"status": "sandbox_error", "reason": f"unknown runner {runner!r}"}
        self.seq += 1
        jobdir = os.path.join(self.base, f"job{self.seq}")
        os.mkdir(jobdir, 0o700)
        nonce = os.urandom(16).hex()
        r, w = os.pipe()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            try:
                os.close(r)
                self._child(w, jobdir, self.runners[runner], payload, nonce)
            finally:
                os._exit(70)
        os.close(w)
        try:
            return self._collect(pid, r, nonce, start, timeout)
        finally:
            os.close(r)
            shutil.rmtree(jobdir, ignore_errors=True)

    def _child(self, w: int, jobdir: str, runner: Callable, payload: dict, nonce: str) -> None:
        from stepcode import isolation

        lim = self.limits
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        # Close every inherited descriptor but the result pipe (the server's protocol pipes included).
        os.closerange(3, w)
        os.closerange(w + 1, 65536)
        os.environ.clear()
        os.environ.update({"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": jobdir, "TMPDIR": jobdir,
                           "PYTHONHASHSEED": self.cfg["hash_seed"]})
        os.chdir(jobdir)
        for which, value in ((resource.RLIMIT_AS, lim["as_bytes"]), (resource.RLIMIT_FSIZE, lim["fsize_bytes"]),
                             (resource.RLIMIT_NOFILE, lim["nofile"]), (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(which, (value, value))
        resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1))
        if self.root:
            uid = gid = self.cfg["uid"]
            os.chown(jobdir, uid, gid)
            resource.setrlimit(resource.RLIMIT_NPROC, (lim["nproc"], lim["nproc"]))
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
        isolation.set_no_new_privs()
        if self.landlock:
            isolation.landlock_confine(jobdir, self.landlock)
        if self.seccomp:
            isolation.seccomp_deny_dangerous()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # an oversized write fails with EFBIG instead of killing
        # `random` reseeds itself from os.urandom in every forked child (its at-fork hook), so children of one
        # server do not replay one random state and a program using randomness shows up as nondeterministic.
        result = runner(payload, lim)
        body = json.dumps({"nonce": nonce, "result": result}).encode()
        _write_frame(w, body)
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
            _, status = os.waitpid(pid, 0)
            os.close(pidfd)
            self._reap_orphans()
        wall = time.monotonic() - start
        if verdict is None:
            verdict = self._verdict(bytes(buf), nonce, status)
        verdict["wall_s"] = round(wall, 6)
        return verdict

    def _kill_leftovers(self, pid: int) -> None:
        """Kill every process the program started, however it detached (setsid, double fork).

        As root: every process of this server's sandbox uid. `kill(-1)` from a process whose real and effective uid
        are the sandbox uid reaches exactly the processes of that uid, and the kernel makes it atomic with respect to
        fork (a task forking while the signal is delivered aborts the fork), so a fork bomb cannot outrun it. The
        saved uid stays 0, so the server takes root back right after. (A PID namespace per program would do the same
        but costs ~2 ms per namespace here, four times a fork.) Without root: the program's process group."""
        if self.root:
            uid = self.cfg["uid"]
            os.setresuid(uid, uid, 0)
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
    os.dup2(2, 1)
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
