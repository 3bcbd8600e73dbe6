"""The sandbox's fork-server: one per worker and hash seed, started by `stepcode.sandbox.engine.Sandbox`.

    python -m stepcode.sandbox.server     # speaks length-prefixed marshal on stdin/stdout; not for humans

It imports the runner code and the modules to preload (the engine's choice; `PRELOAD` by default) once, enters its
own mount and network namespaces, and forks one confined child per job, one job at a time — in C
(stepcode/sandbox/_forkloop.c) when that is built, else in Python (`_run_one`). The threat model is in
stepcode/sandbox/engine.py.

Protocol: after a start-up handshake, each request frame is `(runner, [payload, ...], timeout)` — a batch — and its
answer is one frame holding, per payload in order, `(report, wall_s, cpu_s, faults)`: `report` is either the child's
own result, the JSON bytes it sent carrying the job's nonce (parsed by the engine), or a verdict dict the server
reached itself (timeout, killed, output_limit, a program that does not compile).

What a job costs, and why the code below looks the way it does. Forking a ~12 MB interpreter costs ~0.45 ms of CPU
(page tables copied, then torn down at exit); after a fork, each page either process writes costs a copy-on-write
fault, ~2-3 us in this VM. A Python statement touches pages all over the heap (reference counts, allocator pools), so
Python work between two forks is paid twice, once by each side. Hence: everything that can be done once is done at
start-up or once per batch (compiling every job of a batch before the first fork, the check runner's guard), the
child does the least possible work before the program runs, and the server parses nothing its children send. This
module must stay light: every module the server imports enlarges each fork, and some add at-fork hooks — `threading`
alone costs ~0.3 ms per fork, so neither it nor `subprocess`, `queue`, `tempfile` or `shutil` is imported here.
"""

from __future__ import annotations

import contextlib
import gc
import marshal
import os
import resource
import select
import signal
import sys
import time
from _json import encode_basestring_ascii, make_encoder
from collections.abc import Callable

from stepcode.sandbox.protocol import read_frame, write_frame

try:  # the hot loop in C (stepcode/sandbox/_forkloop.c), built at install when a C compiler is present
    from stepcode.sandbox import _forkloop
except ImportError:
    _forkloop = None
if getattr(_forkloop, "API", None) != 3:  # a stale build of another contract: not ours to call
    _forkloop = None

# Imported once by the server so that programs get them without touching the disk: the default, for a sandbox whose
# engine does not know its programs (it usually does: cfg["preload"], from stepcode.sandbox.engine.preload_for). Short:
# every module imported here makes each fork slower (more page tables to copy and tear down); anything else a
# program imports is read from disk by the child itself (the interpreter's folders are exposed to the sandbox uid).
PRELOAD = ("math", "re", "collections", "itertools", "functools", "string", "typing")
RESULT_CAP_BYTES = 4 << 20    # a child reporting more than this is an output_limit
NONCE_BYTES = 16

# The check runner's guard (the official reliability_guard) is applied to the server itself around a batch of check
# jobs, and it sets these to None in `os`: the server keeps its own references.
_fork, _kill, _killpg, _unlink, _rmdir = os.fork, os.kill, os.killpg, os.unlink, os.rmdir
_chdir, _fchdir, _chmod = os.chdir, os.fchdir, os.chmod


class EngineGone(Exception):
    """The engine closed its end of the protocol mid-batch (it exited or was killed): stop at once."""


class DirtyWorkDir(Exception):
    """The work dir could not be emptied: no later job may run in it."""


def _unserializable(o):
    raise TypeError(f"a runner returned a {type(o).__name__}, which JSON cannot carry")


def _empty_dir(path: str) -> None:
    """Remove everything under `path` (what a program left in its work dir), however deep, holding one directory
    descriptor at a time (a chain of nested directories deeper than RLIMIT_NOFILE defeats a recursive walk), and
    whatever modes the program left. Called only when every process of the program is dead, so nothing changes
    the tree meanwhile; directories are entered without following links (O_NOFOLLOW). Leaves the server's working
    directory at `path`. Raises DirtyWorkDir when something is left."""
    _chdir(path)
    names: list[str] = []       # the directories entered below `path`, outermost first
    while True:
        sub = None
        with os.scandir(".") as entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        sub = entry.name
                        break
                    _unlink(entry.name)
                except OSError:
                    pass
        if sub is not None:
            with contextlib.suppress(OSError):
                _chmod(sub, 0o700, follow_symlinks=False)    # a mode of 0 stops its owner (degraded mode)
            try:
                fd = os.open(sub, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except OSError as e:
                raise DirtyWorkDir(f"cannot enter {sub!r} in the work dir: {e}") from None
            try:
                _fchdir(fd)
            finally:
                os.close(fd)
            names.append(sub)
            continue
        if not names:
            break
        _chdir("..")
        try:
            _rmdir(names.pop())
        except OSError as e:
            raise DirtyWorkDir(f"cannot remove a directory from the work dir: {e}") from None
    if os.listdir("."):
        raise DirtyWorkDir(f"the work dir still holds {sorted(os.listdir('.'))[:3]}")


# --- the server (runs in its own interpreter: `python -m stepcode.sandbox.server`) -----------------------------------

class _Server:
    """Everything that can be prepared once is prepared here, so a job's child does the least possible work."""

    def __init__(self, cfg: dict, watch: int = -1):
        hooks = _record_at_fork_hooks()   # first: every import below is watched
        from stepcode.sandbox import isolation
        self.cfg = cfg
        self.watch = watch      # the protocol's input: it hangs up when the engine is gone
        self.limits = cfg["limits"]
        self.root = os.geteuid() == 0
        self.uid = cfg["uid"] if self.root else os.geteuid()
        self.landlock = isolation.landlock_abi()
        self.seccomp = isolation.seccomp_available()
        self.namespaces = self.private_proc = self.read_only = False
        # The fork loop: C when built (`_forkloop`), else the Python one below; the engine may ask for the latter.
        self.native = _forkloop is not None and cfg.get("fork_loop", "c") == "c"
        # One memory limit for a program and everything it forks (a child joins the cgroup before it drops root);
        # opened before the mount namespace: a file open for writing on one of its mounts would keep
        # `make_read_only_but` from turning it read-only (EBUSY).
        self.cgroup = isolation.memory_cgroup(f"stepcode-sandbox-{self.uid}", self.limits["as_bytes"]) \
            if self.root else None
        self.cgroup_fd = self.oom_fd = -1
        if self.cgroup:
            self.cgroup_fd = os.open(os.path.join(self.cgroup[0], "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
            self.oom_fd = os.open(self.cgroup[2], os.O_RDONLY | os.O_CLOEXEC)
        self._oom_kills = isolation.oom_kills
        self.exposed: list[str] = []
        if self.root and cfg.get("namespaces", True):
            try:
                isolation.unshare(isolation.CLONE_NEWNS | isolation.CLONE_NEWNET | isolation.CLONE_NEWIPC)
                isolation.make_mounts_private()
                isolation.mount_tmpfs(cfg["base_dir"], cfg["disk_mb"])
                # The unprivileged child must be able to import (lazily) and run Python even when it is installed
                # under root's 0700 home: expose the interpreter, the venv and this package in this namespace.
                staging = os.path.join(cfg["base_dir"], ".expose")
                os.mkdir(staging, 0o700)
                here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # holds stepcode/
                self.exposed = isolation.expose_paths([sys.base_prefix, sys.prefix, here,
                                                       *cfg.get("site_packages", ())], staging)
                self.namespaces = True
            except OSError:
                pass
        if self.namespaces:
            with contextlib.suppress(OSError):     # other processes hidden (their argv, environment, status)
                isolation.mount_private_proc()
                self.private_proc = True
            with contextlib.suppress(OSError):     # nothing outside the work dir changes, metadata included
                isolation.make_read_only_but(cfg["base_dir"])
                self.read_only = True
        isolation.set_child_subreaper()
        # One private work dir, reused by every job of this server (jobs run one at a time) and emptied after each.
        self.workdir = os.path.join(cfg["base_dir"], "work")
        os.mkdir(self.workdir, 0o700)
        if self.root:
            os.chown(self.workdir, self.uid, self.uid)
        # Started without `site` (-S: its .pth hooks import a dozen modules every fork would carry): give programs
        # what it would have, its builtins (exit, quit, help, ...) and the site-packages folders, in its order.
        import site

        site.setquit()
        site.setcopyright()
        site.sethelper()
        sys.path.extend(p for p in cfg.get("site_packages", ()) if p not in sys.path)
        for name in cfg.get("preload", PRELOAD):
            with contextlib.suppress(ImportError):
                __import__(name)
        # name -> (prepare, run, batch context factory taking the limits; nullcontext takes them and ignores them)
        self.runners: dict[str, tuple[Callable, Callable, Callable]] = {}
        for module_name in cfg["runners_modules"]:
            module = __import__(module_name, fromlist=["RUNNERS"])
            batch_contexts = getattr(module, "BATCH_CONTEXT", {})
            for name, (prepare, run) in module.RUNNERS.items():
                self.runners[name] = (prepare, run, batch_contexts.get(name, contextlib.nullcontext))
        # What every child calls, built once here: a child that built it would pay a fault for each page it wrote.
        self._cpu_limit = (self.limits["cpu_s"], self.limits["cpu_s"] + 1)
        self._set_pdeathsig = isolation.pdeathsig_setter(signal.SIGKILL)
        self._poller = select.poll()  # one for the server's life: a job only (un)registers its two fds
        # json.dumps' own C encoder, without the json package (an import every fork would pay for)
        self._encode = make_encoder(None, _unserializable, encode_basestring_ascii, None, ": ", ", ", False, False,
                                    True)
        self._warm_up()
        self._reaped = (0.0, 0)   # RUSAGE_CHILDREN at the last reap: a job's cost is the difference
        self._children_cost()
        os.chdir(self.workdir)
        self._confine_self()
        # Move every object created so far out of the collector's reach: a GC pass in a child would otherwise
        # write to (and so copy) every page holding a tracked object. Then hand free heap memory back: every
        # resident page makes each fork slower.
        gc.freeze()
        isolation.release_free_memory()
        os.register_at_fork = hooks.register
        # A child needs the interpreter's after-fork repairs (new runtime locks, the GIL, the at-fork hooks) only if
        # another thread could have held a lock at the fork, or a hook was registered: see stepcode/sandbox/_forkloop.c.
        self.python_at_fork = bool(hooks.calls) or len(os.listdir("/proc/self/task")) != 1 \
            or not _AT_FORK_MODULES.isdisjoint(sys.modules)

    def _warm_up(self) -> None:
        """Run each runner's harmless WARMUP job a few times here, children's code paths included. CPython 3.11
        specialises bytecode in place as it runs (and bumps counters in the code objects), so a child running cold
        code writes to — and copies — pages that warm code leaves alone."""
        for module_name in self.cfg["runners_modules"]:
            module = sys.modules[module_name]
            for name, payload in getattr(module, "WARMUP", {}).items():
                prepare, run, batch_context = self.runners[name]
                child = self._child_for(run)   # the runner and the encoding, as every child runs them
                for _ in range(8):
                    with batch_context(self.limits):
                        child(prepare(payload))

    def _confine_self(self) -> None:
        """Apply once, to the server itself, every restriction the children inherit anyway, so that a child has
        almost nothing to do before running the program. The server needs none of what it gives up: after start-up
        it only forks, waits, kills and cleans its work dir, and its own writes go to pipes and that dir."""
        from stepcode.sandbox import isolation
        os.environ.clear()
        os.environ.update({"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": self.workdir, "TMPDIR": self.workdir,
                           "PYTHONHASHSEED": self.cfg["hash_seed"]})
        lim = self.limits
        for which, value in ((resource.RLIMIT_AS, lim["as_bytes"]), (resource.RLIMIT_FSIZE, lim["fsize_bytes"]),
                             (resource.RLIMIT_NOFILE, lim["nofile"]), (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(which, (value, value))
        if self.root:
            # Counted per uid: it binds the children, which run as the sandbox uid, not root.
            resource.setrlimit(resource.RLIMIT_NPROC, (lim["nproc"], lim["nproc"]))
            # The sandbox's groups, here once: a child then only changes its uid. Root keeps its powers through its
            # uid; and a child cannot reach the server through a shared gid (signals and ptrace need the uid too).
            os.setgroups([])
            os.setresgid(self.uid, self.uid, self.uid)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # an oversized write fails with EFBIG instead of killing
        isolation.set_no_new_privs()
        if self.landlock:
            ruleset = isolation.landlock_ruleset(self.workdir, self.landlock)
            isolation.landlock_restrict(ruleset)
            os.close(ruleset)
        if self.seccomp:
            isolation.seccomp_install(isolation.seccomp_program(deny_file_times=not self.read_only))

    def info(self) -> dict:
        return {"root": self.root, "namespaces": self.namespaces, "landlock_abi": self.landlock,
                "seccomp": self.seccomp, "uid": self.uid, "exposed": self.exposed,
                "private_proc": self.private_proc, "read_only_mounts": self.read_only,
                "memory_cgroup": self.cgroup and {"path": self.cgroup[0], "version": self.cgroup[1]},
                "python": sys.version.split()[0], "hash_seed": os.environ.get("PYTHONHASHSEED"),
                "fork_loop": "c" if self.native else "python",
                "python_at_fork": self.native and self.python_at_fork,
                "preload": [name for name in self.cfg.get("preload", PRELOAD) if name in sys.modules]}

    def run_batch(self, runner: str, payloads: list, timeout: float) -> list:
        """Run each payload in its own child, one after the other; answers in payload order.

        Every job is prepared (compiled) before the first fork: compiling writes to a lot of memory, ~110 pages,
        and between two forks each of those writes would be a fault."""
        if runner not in self.runners:
            return [{"status": "sandbox_error", "reason": f"unknown runner {runner!r}"}] * len(payloads)
        prepare, run, batch_context = self.runners[runner]
        prepared = [self._prepare(prepare, payload) for payload in payloads]
        with batch_context(self.limits):
            if self.native:
                ran = iter(self._run_native(run, [p[0] for p in prepared if not isinstance(p, dict)], timeout))
                return [p if isinstance(p, dict) else next(ran) for p in prepared]
            return [p if isinstance(p, dict) else self._run_one(run, p[0], timeout) for p in prepared]

    def _run_native(self, run: Callable, jobs: list, timeout: float) -> list:
        """The same as `_run_one` for each job, in C: `stepcode.sandbox._forkloop.run_jobs` (see its docstring)."""

        def cleanup() -> None:
            _empty_dir(self.workdir)

        try:
            answers = _forkloop.run_jobs(jobs, self._child_for(run), cleanup, float(timeout), self._cpu_limit[0],
                                         self.uid, self.root, self.workdir, RESULT_CAP_BYTES, self.python_at_fork,
                                         self.cgroup_fd, self.oom_fd, self.watch)
        except EOFError:
            raise EngineGone from None
        return [(self._native_report(kind, data, timeout), wall, cpu, faults)
                for kind, data, wall, cpu, faults in answers]

    def _child_for(self, run: Callable) -> Callable:
        """What a child of the C loop calls: the runner, its result as JSON bytes."""
        limits, encode = self.limits, self._encode

        def child(prepared) -> bytes:
            return "".join(encode(run(prepared, limits), 0)).encode()
        return child

    @staticmethod
    def _native_report(kind: int, data, timeout: float) -> dict | bytes:
        """A `_forkloop` answer as `_collect` words it."""
        if kind == 0:
            return data
        if kind == 1:
            return _timeout_verdict(timeout)
        if kind == 2:
            return _output_limit_verdict()
        if kind == 3:
            return _signal_verdict(data)
        if kind == 5:
            return _memory_verdict()
        return _exit_verdict(*data)

    @staticmethod
    def _prepare(prepare: Callable, payload) -> tuple | dict:
        """(prepared,), or a finished verdict (a dict) when there is nothing to run."""
        try:
            prepared = prepare(payload)
        except Exception as e:  # a malformed payload (or a bug of ours): this job's failure, not the batch's
            return {"status": "sandbox_error", "reason": f"{type(e).__name__}: {e}"}
        return prepared if isinstance(prepared, dict) else (prepared,)

    def _run_one(self, run: Callable, prepared, timeout: float) -> tuple:
        nonce = os.urandom(NONCE_BYTES)
        r, w = os.pipe()
        ooms = self._ooms()
        start = time.monotonic()
        pid = _fork()
        if pid == 0:  # the child: never returns
            try:
                os.close(r)
                self._child(w, run, prepared, nonce)
            finally:
                os._exit(70)
        os.close(w)
        try:
            report, (cpu, faults) = self._collect(pid, r, nonce, start + timeout, timeout)
        finally:
            os.close(r)
        wall = time.monotonic() - start
        if report == _signal_verdict(signal.SIGKILL) and self._ooms() > ooms:
            report = _memory_verdict()   # the cgroup's OOM killer
        if os.listdir(self.workdir):  # the program left files: empty the dir for the next job
            _empty_dir(self.workdir)
        return report, wall, cpu, faults

    def _ooms(self) -> int:
        """The OOM kills the program's memory cgroup counted so far (0 without one)."""
        return self._oom_kills(os.pread(self.oom_fd, 4096, 0).decode()) if self.oom_fd >= 0 else 0

    def _child(self, w: int, run: Callable, prepared, nonce: bytes) -> None:
        os.setsid()
        os.dup2(0, 2)  # the server's fds 0 and 1 are /dev/null already; 2 was its stderr
        resource.setrlimit(resource.RLIMIT_CPU, self._cpu_limit)
        if self.cgroup_fd >= 0:   # join the program's memory cgroup while still root ("0": the writer)
            os.write(self.cgroup_fd, b"0")
        if self.root:  # groups and gid were dropped by the server (`_confine_self`)
            os.setresuid(self.uid, self.uid, self.uid)
        # If the server dies mid-run (its engine was killed), the program must not outlive it. (A uid change clears
        # this setting, so it comes after.)
        self._set_pdeathsig()
        # Close every inherited descriptor but the result pipe (the server's protocol pipes included).
        os.closerange(3, w)
        os.closerange(w + 1, 1 << 20)
        # `random` reseeds itself from os.urandom in every forked child (its at-fork hook), so children of one
        # server do not replay one random state and a program using randomness shows up as nondeterministic.
        me = os.getpid()
        result = run(prepared, self.limits)
        if os.getpid() != me:  # a process the program forked got here: only the child itself may report
            os._exit(0)
        write_frame(w, nonce + "".join(self._encode(result, 0)).encode())
        os._exit(0)

    def _collect(self, pid: int, r: int, nonce: bytes, deadline: float, timeout: float) -> tuple:
        """Read the child's report until it is complete, the child has exited or the deadline passed; then kill
        whatever the program left and reap the child. Returns (report, (CPU seconds, page faults) of the child)."""
        buf = bytearray()
        pidfd = os.pidfd_open(pid)
        poller = self._poller
        poller.register(r, select.POLLIN)
        poller.register(pidfd, select.POLLIN)
        if self.watch >= 0:
            poller.register(self.watch, 0)   # no events asked: only a hang-up (the engine is gone) is reported
        report, exited, pipe_open, gone = None, False, True, False
        try:
            while not (exited and not pipe_open or gone):
                left = deadline - time.monotonic()
                if left <= 0:
                    report = _timeout_verdict(timeout)
                    break
                for fd, _ in poller.poll(left * 1000):
                    if fd == self.watch:
                        gone = True
                    elif fd == pidfd:
                        exited = True
                        poller.unregister(pidfd)
                    else:
                        chunk = os.read(r, 1 << 16)
                        if not chunk:
                            pipe_open = False
                            poller.unregister(r)
                        buf += chunk
                if len(buf) > RESULT_CAP_BYTES:
                    report = _output_limit_verdict()
                    break
                if len(buf) > 4 and len(buf) - 4 == int.from_bytes(buf[:4], "little"):
                    break  # a complete frame: the child is exiting; no need to wait for it
                if exited and pipe_open:
                    break  # a descendant may still hold the pipe open; it is killed below
        finally:
            if pipe_open:
                poller.unregister(r)
            if not exited:
                poller.unregister(pidfd)
            if self.watch >= 0:
                poller.unregister(self.watch)
            try:
                _kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._kill_leftovers(pid)
            # Not wait4: it imports `resource` to build its result, and a check batch's guard has blocked that import.
            ended = os.waitid(os.P_PID, pid, os.WEXITED)
            os.close(pidfd)
            cost = self._children_cost()
            if self._reap_orphans():
                self._children_cost()  # what the orphans cost is not the next job's
        if gone:
            raise EngineGone
        return report or self._report(buf, nonce, ended), cost

    def _children_cost(self) -> tuple[float, int]:
        """CPU seconds and page faults of the children reaped since the last call."""
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu, faults = usage.ru_utime + usage.ru_stime, usage.ru_minflt
        cost = (cpu - self._reaped[0], faults - self._reaped[1])
        self._reaped = (cpu, faults)
        return cost

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
                _kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
            finally:
                os.setresuid(0, 0, 0)
        else:
            try:
                _killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def shutdown(self) -> None:
        """Before the server exits: kill what is left of the sandbox uid and reap every child. The per-job reap does
        not wait, so a process killed a moment earlier may still be dying; unreaped, it would pass to PID 1 as a
        zombie when the server exits (and some inits, this VM's among them, are slow to reap). Bounded: 2 s."""
        if self.root:
            self._kill_leftovers(0)
        idle = select.poll()   # polling nothing is the server's sleep (time is not preloaded)
        for _ in range(400):
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    idle.poll(5)
            except ChildProcessError:   # no children left
                return

    def _reap_orphans(self) -> bool:
        """The server is a child subreaper: the program's orphans become its children. As root every one of them
        was killed (`_kill_leftovers`): wait for each to finish dying (bounded, 2 s), so that the next job starts
        with no process of its uid alive — a dying process still counts against its RLIMIT_NPROC. Without root a
        leftover may be alive: only the dead are reaped."""
        reaped, deadline = False, None
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0]:
                    reaped = True
                    continue
            except ChildProcessError:  # no children left
                return reaped
            if not self.root:
                return reaped
            if deadline is None:
                deadline = time.monotonic() + 2
            elif time.monotonic() > deadline:
                return reaped
            self._poller.poll(1)   # polls nothing registered: a 1 ms sleep

    @staticmethod
    def _report(buf: bytearray, nonce: bytes, ended) -> dict | bytes:
        """The child's report — its JSON, unparsed: the engine parses it for free, while each object the server
        built would cost it page faults — when `buf` is one frame carrying the job's nonce; else a verdict from how
        the child ended."""
        if len(buf) >= 4 + NONCE_BYTES and int.from_bytes(buf[:4], "little") == len(buf) - 4 \
                and buf[4:4 + NONCE_BYTES] == nonce:
            return bytes(buf[4 + NONCE_BYTES:])
        if ended.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
            return _signal_verdict(ended.si_status)
        return _exit_verdict(ended.si_status, bool(buf))


# The standard library's modules that register `os.register_at_fork` hooks when imported (CPython 3.11).
_AT_FORK_MODULES = frozenset({"random", "threading", "logging", "concurrent.futures.thread"})


class _AtForkRecorder:
    def __init__(self):
        self.register = os.register_at_fork
        self.calls = 0

    def __call__(self, **hooks) -> None:
        self.calls += 1
        self.register(**hooks)


def _record_at_fork_hooks() -> _AtForkRecorder:
    """Count the `os.register_at_fork` calls from here on (the caller puts the real function back)."""
    recorder = _AtForkRecorder()
    os.register_at_fork = recorder
    return recorder


# --- verdicts the server reaches itself, whichever loop ran the job ----------------------------------------------

def _timeout_verdict(timeout: float) -> dict:
    return {"status": "timeout", "reason": f"exceeded the {timeout:g} s wall-clock limit"}


def _output_limit_verdict() -> dict:
    return {"status": "output_limit", "reason": f"reported more than {RESULT_CAP_BYTES} bytes"}


def _exit_verdict(code: int, sent: bool) -> dict:
    """The verdict on a child that exited without a well-formed report (`sent`: whether it sent anything)."""
    why = "a malformed result" if sent else "no result"
    return {"status": "killed", "reason": f"the program exited (code {code}) with {why}"}


def _memory_verdict() -> dict:
    return {"status": "memory", "reason": "the program's processes together exceeded its memory limit (OOM-killed)"}


def _signal_verdict(sig: int) -> dict:
    """The verdict on a child that died of signal `sig` before reporting."""
    if sig == signal.SIGXCPU:
        return {"status": "timeout", "reason": "exceeded the CPU-time limit"}
    name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
    return {"status": "killed", "reason": f"the program died of {name} before reporting a result"}


def serve() -> None:
    proto_in, proto_out = os.dup(0), os.dup(1)
    # Anything the server or its imports print must not corrupt the protocol stream.
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    cfg = marshal.loads(read_frame(proto_in))
    server = _Server(cfg, watch=proto_in)
    try:
        write_frame(proto_out, marshal.dumps(server.info()))
        while (frame := read_frame(proto_in)) is not None:
            runner, payloads, timeout = marshal.loads(frame)
            try:
                answers = server.run_batch(runner, payloads, timeout)
            except DirtyWorkDir as e:   # no later job may run here: answer, then exit (the engine starts another)
                write_frame(proto_out, marshal.dumps(
                    [{"status": "sandbox_error", "reason": f"the sandbox's work dir: {e}"}] * len(payloads)))
                break
            except EngineGone:
                break
            except Exception as e:  # a bug of ours, not the program's: report it, keep serving
                answers = [{"status": "sandbox_error", "reason": f"{type(e).__name__}: {e}"}] * len(payloads)
            write_frame(proto_out, marshal.dumps(answers))
    except OSError:   # the engine is gone (a broken pipe): nobody to answer
        pass
    server.shutdown()
    os._exit(0)  # the engine closed the protocol: nothing to flush, nothing worth finalising


if __name__ == "__main__":
    serve()
