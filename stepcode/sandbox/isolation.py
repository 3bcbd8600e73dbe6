"""Linux kernel primitives the sandbox stands on: namespaces, Landlock, seccomp, privilege drop.

Plain ctypes over the raw system calls (Python 3.11 has no `os.unshare`, and nothing here needs a compiled
extension). Every function either does exactly what it says or raises `OSError` with the errno; the sandbox decides
what to do when a primitive is unavailable (see `probe()`).

    from stepcode.sandbox import isolation
    isolation.probe()          # {'root': True, 'namespaces': True, 'landlock_abi': 7, 'seccomp': True}
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable  # not `typing`: the fork-server imports this module, and typing is big

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
# Every namespace flag clone() takes (CLONE_NEWTIME shares its bit with the exit signal there: unshare/clone3 only).
_CLONE_NAMESPACES = 0x02000000 | 0x04000000 | CLONE_NEWIPC | 0x10000000 | 0x20000000 | CLONE_NEWNET | CLONE_NEWNS

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_PDEATHSIG = 1
_SECCOMP_MODE_FILTER = 2

_X86_64 = os.uname().machine == "x86_64"
# Landlock's syscall numbers are the same on every architecture (they come from the generic table).
_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446


def _check(ret: int) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)))


def set_no_new_privs() -> None:
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))


def set_parent_death_signal(sig: int) -> None:
    """Deliver `sig` to this process when its parent dies (cleared by a credential change: set it after)."""
    _check(_libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0))


def pdeathsig_setter(sig: int) -> Callable[[], None]:
    """`set_parent_death_signal(sig)` made ready for a hot path — a fork-server's children, where each page the call
    writes costs a copy-on-write fault: the C function is looked up now and called once (warming up ctypes' call
    path, and leaving the caller's own setting at "none"); plain int arguments, as argtypes would build objects."""
    prctl = _libc.prctl
    _check(prctl(_PR_SET_PDEATHSIG, 0, 0, 0, 0))

    def set_it() -> None:
        _check(prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0))
    return set_it


def release_free_memory() -> None:
    """malloc_trim(0): return the C heap's free memory to the kernel (glibc; a no-op elsewhere)."""
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


def set_child_subreaper() -> None:
    """Orphaned descendants are re-parented to this process (instead of init), so it can reap them."""
    _check(_libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0))


def make_mounts_private() -> None:
    """mount --make-rprivate / : mounts made in this namespace never propagate back to the host."""
    MS_REC, MS_PRIVATE = 0x4000, 1 << 18
    _check(_libc.mount(None, b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None))


def mount_tmpfs(path: str, size_mb: int, mode: str = "0711") -> None:
    MS_NOSUID, MS_NODEV = 2, 4
    opts = f"size={size_mb}m,mode={mode}".encode()
    _check(_libc.mount(b"tmpfs", path.encode(), b"tmpfs", ctypes.c_ulong(MS_NOSUID | MS_NODEV), opts))


def mount_private_proc() -> None:
    """A procfs of its own on /proc with `hidepid=invisible`: a process that is not root sees only the processes of
    its own uid — no other process's command line, environment or status (kernel >= 5.8 gives each procfs mount its
    own options; older kernels share them, so this is refused there rather than applied to the host's /proc)."""
    MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
    _check(_libc.mount(b"proc", b"/proc", b"proc", ctypes.c_ulong(MS_NOSUID | MS_NODEV | MS_NOEXEC),
                       b"hidepid=invisible"))


_SYS_MOUNT_SETATTR, _AT_FDCWD, _AT_RECURSIVE, _MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 1


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


def _mount_setattr(path: str, recursive: bool, attr_set: int, attr_clr: int) -> None:
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    _check(_libc.syscall(_SYS_MOUNT_SETATTR, _AT_FDCWD, path.encode(), ctypes.c_uint(_AT_RECURSIVE if recursive else 0),
                         ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))))


def make_read_only_but(writable: str) -> None:
    """In this (private) mount namespace, make every mount read-only but the one at `writable`: no write, and no
    change of a file's metadata either (times, extended attributes, modes — what Landlock has no right for), on any
    path outside it, whoever owns the file. Device nodes (/dev/null) stay writable. Kernel >= 5.12."""
    _mount_setattr("/", True, _MOUNT_ATTR_RDONLY, 0)
    _mount_setattr(writable, False, 0, _MOUNT_ATTR_RDONLY)


def bind_mount(source: str, target: str) -> None:
    MS_BIND, MS_REC = 0x1000, 0x4000
    _check(_libc.mount(source.encode(), target.encode(), None, ctypes.c_ulong(MS_BIND | MS_REC), None))


def _blocking_ancestor(path: str) -> str | None:
    """The top-most ancestor of `path` that other users cannot traverse (no o+x), if any."""
    parts = os.path.abspath(path).split(os.sep)[1:]
    for i in range(1, len(parts)):
        ancestor = os.sep + os.path.join(*parts[:i])
        if not os.stat(ancestor).st_mode & 0o001:
            return ancestor
    return None


def expose_paths(paths: list[str], staging: str) -> list[str]:
    """In this (private) mount namespace, make `paths` reachable for unprivileged users when an ancestor is 0700
    (e.g. a Python installed under /root): bind each path aside, cover the blocking ancestor with an empty 0755
    tmpfs, recreate the path inside it and bind the original back. The files themselves are untouched (same
    inodes, same permissions); everything else under the blocking ancestor disappears from this namespace's view.
    Returns the ancestors that were covered."""
    by_ancestor: dict[str, list[str]] = {}
    for path in dict.fromkeys(os.path.realpath(p) for p in paths if os.path.isdir(p)):
        ancestor = _blocking_ancestor(path)
        if ancestor is not None:
            by_ancestor.setdefault(ancestor, []).append(path)
    for k, (ancestor, group) in enumerate(by_ancestor.items()):
        group = [p for p in group if not any(p != q and p.startswith(q + os.sep) for q in group)]
        stages = []
        for j, path in enumerate(group):
            stage = os.path.join(staging, f"expose{k}-{j}")
            os.makedirs(stage)
            bind_mount(path, stage)
            stages.append(stage)
        mount_tmpfs(ancestor, 1, mode="0755")
        for path, stage in zip(group, stages):
            os.makedirs(path, mode=0o755, exist_ok=True)
            bind_mount(stage, path)
    return list(by_ancestor)


# --- a memory cgroup: one limit for a program and every process it starts --------------------------------------------

def _cgroup_dirs() -> list[tuple[int, str]]:
    """(version, directory) of this process's own memory cgroup: v2 (the unified hierarchy) first, then v1."""
    mounts = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype, options = fields[sep + 1], fields[sep + 3].split(",")
            if fstype == "cgroup2":
                mounts.setdefault(2, fields[4])
            elif fstype == "cgroup" and "memory" in options:
                mounts.setdefault(1, fields[4])
    found = []
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            version = 2 if controllers == "" else 1 if "memory" in controllers.split(",") else 0
            if version in mounts:
                found.append((version, mounts[version] + path.rstrip("/")))
    return sorted(found, reverse=True)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def memory_cgroup(name: str, limit_bytes: int) -> tuple[str, int, str] | None:
    """Create (or reuse) the cgroup `name` beside this process's own memory cgroup, limited to `limit_bytes` with no
    swap, for the processes that join it. Returns (its directory, its version 1|2, the file that counts its OOM
    kills), or None where this machine offers no memory cgroup to this process (no cgroupfs, read-only, not root,
    or a v2 hierarchy that does not delegate the memory controller here). The processes it holds are charged every
    page they touch, memfd and tmpfs pages included, which RLIMIT_AS does not count."""
    for version, parent in _cgroup_dirs():
        path = os.path.join(parent, name)
        try:
            if version == 2:
                with open(os.path.join(parent, "cgroup.subtree_control")) as f:
                    if "memory" not in f.read().split():
                        continue    # not delegated here (and enabling it would move this process's own cgroup)
                os.makedirs(path, exist_ok=True)
                _write(os.path.join(path, "memory.max"), str(limit_bytes))
                if os.path.exists(os.path.join(path, "memory.swap.max")):
                    _write(os.path.join(path, "memory.swap.max"), "0")
                return path, 2, os.path.join(path, "memory.events")
            os.makedirs(path, exist_ok=True)
            memsw = os.path.join(path, "memory.memsw.limit_in_bytes")   # memory + swap; present with swap accounting
            if os.path.exists(memsw):
                _write(memsw, "-1")                       # it must stay >= the memory limit while that changes
            _write(os.path.join(path, "memory.limit_in_bytes"), str(limit_bytes))
            if os.path.exists(memsw):
                _write(memsw, str(limit_bytes))
            return path, 1, os.path.join(path, "memory.oom_control")
        except OSError:
            continue
    return None


def oom_kills(text: str) -> int:
    """The `oom_kill N` count of a cgroup's memory.events (v2) or memory.oom_control (v1)."""
    for line in text.splitlines():
        key, _, count = line.partition(" ")
        if key == "oom_kill":
            return int(count)
    return 0


# --- Landlock: make every path but one read-only, forbid TCP, scope signals --------------------------------------

_FS_WRITE_FILE, _FS_REMOVE_DIR, _FS_REMOVE_FILE = 1 << 1, 1 << 4, 1 << 5
# MAKE_CHAR, MAKE_DIR, MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM
_FS_MAKE = sum(1 << b for b in range(6, 13))
_FS_REFER, _FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is absent or disabled."""
    ret = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(int(ret), 0)


def landlock_ruleset(writable_dir: str, abi: int) -> int:
    """A Landlock ruleset (an fd) for `landlock_restrict`: writes only beneath `writable_dir`; with ABI >= 4 no TCP
    bind/connect; with ABI >= 6 no signals to (and no abstract unix sockets of) processes outside the domain.
    Reads and execution stay allowed (file permissions still apply)."""
    fs = _FS_WRITE_FILE | _FS_REMOVE_DIR | _FS_REMOVE_FILE | _FS_MAKE
    if abi >= 2:
        fs |= _FS_REFER
    if abi >= 3:
        fs |= _FS_TRUNCATE
    if abi >= 5:
        fs |= _FS_IOCTL_DEV
    attr = _RulesetAttr(fs, _NET_BIND_TCP | _NET_CONNECT_TCP if abi >= 4 else 0,
                        _SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = _check(_libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                                   ctypes.c_uint32(0)))
    dir_fd = os.open(writable_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        rule = _PathBeneathAttr(fs, dir_fd)
        _check(_libc.syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, 1, ctypes.byref(rule), ctypes.c_uint32(0)))
    finally:
        os.close(dir_fd)
    return ruleset


def landlock_restrict(ruleset: int) -> None:
    """Enforce a ruleset on this process and its future children, irreversibly. Needs no_new_privs (or root)."""
    _check(_libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)))


def landlock_confine(writable_dir: str, abi: int) -> None:
    ruleset = landlock_ruleset(writable_dir, abi)
    try:
        landlock_restrict(ruleset)
    finally:
        os.close(ruleset)


# --- seccomp: refuse the system calls a pure-Python program never needs -----------------------------------------

# x86_64 numbers. socket: no network at all (AF_UNIX included). SysV IPC, POSIX message queues and keyrings: state
# that would outlive the program (a segment, a queue, a key stays until removed) and that later programs could read.
# Extended attributes: metadata Landlock does not guard. The rest are ways to widen the attack surface.
_DENIED_X86_64 = {
    41: "socket", 101: "ptrace", 165: "mount", 166: "umount2", 250: "keyctl", 272: "unshare", 298: "perf_event_open",
    308: "setns", 321: "bpf", 323: "userfaultfd", 425: "io_uring_setup",
    29: "shmget", 30: "shmat", 31: "shmctl", 67: "shmdt", 64: "semget", 65: "semop", 66: "semctl", 220: "semtimedop",
    68: "msgget", 69: "msgsnd", 70: "msgrcv", 71: "msgctl",
    240: "mq_open", 241: "mq_unlink", 242: "mq_timedsend", 243: "mq_timedreceive", 244: "mq_notify",
    245: "mq_getsetattr",
    248: "add_key", 249: "request_key",
    188: "setxattr", 189: "lsetxattr", 190: "fsetxattr", 197: "removexattr", 198: "lremovexattr",
    199: "fremovexattr", 463: "setxattrat", 466: "removexattrat",
    155: "pivot_root", 428: "open_tree", 429: "move_mount", 430: "fsopen", 431: "fsconfig", 432: "fsmount",
    433: "fspick", 442: "mount_setattr", 310: "process_vm_readv", 311: "process_vm_writev",
}
# File times: Landlock has no right for them either. Refused only where the mounts outside the work dir could not be
# made read-only (`make_read_only_but`), which covers them and leaves the program its own files' times.
_TIMES_X86_64 = {132: "utime", 235: "utimes", 261: "futimesat", 280: "utimensat"}
_CLONE, _CLONE3 = 56, 435
_AUDIT_ARCH_X86_64 = 0xC000003E


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def seccomp_available() -> bool:
    return _X86_64


def seccomp_program(deny_file_times: bool = False) -> _SockFprog:
    """The filter: the calls in `_DENIED_X86_64` (and `_TIMES_X86_64` if asked) fail with EPERM; `clone` with a
    namespace flag fails with EPERM; `clone3` fails with ENOSYS — its flags sit in memory a filter cannot read, and
    libc then falls back to `clone` (threads, fork, posix_spawn keep working); a foreign syscall ABI (i386, x32)
    kills."""
    if not _X86_64:
        raise OSError(95, "the seccomp filter is written for x86_64 only")
    ld_abs, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, kill, eperm, enosys = 0x7FFF0000, 0x80000000, 0x00050000 | 1, 0x00050000 | 38
    prog = [(ld_abs, 0, 0, 4), (jeq, 1, 0, _AUDIT_ARCH_X86_64), (ret, 0, 0, kill),   # arch must be x86_64
            (ld_abs, 0, 0, 0), (jge, 0, 1, 0x40000000), (ret, 0, 0, kill)]           # no x32 syscall numbers
    denied = {**_DENIED_X86_64, **(_TIMES_X86_64 if deny_file_times else {})}
    for nr in sorted(denied):
        prog += [(jeq, 0, 1, nr), (ret, 0, 0, eperm)]
    prog += [(jeq, 0, 1, _CLONE3), (ret, 0, 0, enosys),
             (jeq, 0, 3, _CLONE), (ld_abs, 0, 0, 16), (jset, 0, 1, _CLONE_NAMESPACES), (ret, 0, 0, eperm)]  # args[0]
    prog.append((ret, 0, 0, allow))
    filters = (_SockFilter * len(prog))(*[_SockFilter(*ins) for ins in prog])
    fprog = _SockFprog(len(prog), filters)
    fprog._keep = filters  # the struct points into this array: keep it alive as long as the program
    return fprog


def seccomp_install(fprog: _SockFprog) -> None:
    """Install a filter on this process and its future children, irreversibly. Needs no_new_privs."""
    _check(_libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0))


def probe() -> dict:
    """What this machine allows (checked in a throwaway child so nothing here changes the caller)."""
    info = {"root": os.geteuid() == 0, "landlock_abi": landlock_abi(), "seccomp": _X86_64, "namespaces": False}
    if info["root"]:
        pid = os.fork()
        if pid == 0:
            try:
                unshare(CLONE_NEWNS | CLONE_NEWNET)
                os._exit(0)
            except OSError:
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        info["namespaces"] = os.waitstatus_to_exitcode(status) == 0
    return info
