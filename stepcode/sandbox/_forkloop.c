/* stepcode.sandbox._forkloop: the fork-server's hot loop in C — fork one confined child per job, collect its report.

Why C. After a fork every page of the server is shared copy-on-write with the child, so each page the server then
writes costs a page fault (~2 us in this VM), and each Python statement writes to pages all over the heap (reference
counts, frames, allocator pools): the pure-Python loop (stepcode/sandbox/server.py, `_Server._run_one`, kept as the
fallback when this module is not built) costs the server ~110 faults per job. This loop writes to a handful of
pages (its stack, libc's fork bookkeeping; the batch's results and reports live in memory no child shares) and builds
no Python object until the whole batch has run: ~15 faults per job, most of them per batch. The child's
set-up (session, stderr, CPU limit, uid, parent-death signal, closing inherited descriptors) is done here too, so the
child runs no Python before the program's own runner.

Contract — the same as the Python loop, job for job:
    run_jobs(jobs, child, cleanup, timeout, cpu_limit, uid, root, workdir, cap, python_at_fork, cgroup_fd, oom_fd,
             watch_fd) -> [(kind, data, wall, cpu, faults)]
  jobs     prepared objects, run one after the other, each in its own forked child;
  child    called in the child as child(prepared) -> bytes (the runner's JSON report); this module frames it with a
           fresh random nonce and writes it to the result pipe; an exception makes the child exit with code 70;
  cleanup  called in the server when a job left entries in `workdir` (rare), before the next job; an exception it
           raises ends the batch with that exception;
  cgroup_fd  -1, or the memory cgroup's cgroup.procs open for writing: each child joins it before dropping root;
  oom_fd   -1, or the cgroup's file counting OOM kills (memory.events / memory.oom_control);
  watch_fd the protocol's input: when it hangs up (the engine is gone), the running child and what it left are
           killed and the batch ends with EOFError;
  kind     0: a report (data = its bytes, nonce checked and stripped); 1: timeout (wall clock); 2: output_limit
           (more than `cap` bytes); 3: killed by a signal (data = signal number); 4: exited without a well-formed
           report (data = (exit code, whether it sent anything)); 5: killed by the cgroup's OOM killer;
  wall     seconds from fork to reap; cpu, faults: what the child (and what it reaped) cost.
python_at_fork: whether to run the interpreter's own fork protocol (PyOS_BeforeFork / PyOS_AfterFork_Child /
           PyOS_AfterFork_Parent), as os.fork does. In the child it re-creates every runtime lock, the GIL and the
           import lock — in case another thread held one at the fork — and runs the `os.register_at_fork` hooks:
           ~28 page faults, a quarter of what a child costs. A server that has a single thread and no such hooks
           (stepcode/sandbox/server.py checks both) has nothing for it to repair, and passes False.
Orphans a program leaves are killed with it: as root every process of `uid` (`kill(-1)` run as that uid, which is
atomic with respect to fork), else the child's process group; the server is a child subreaper and, as root, reaps
every one of them before the next job starts (a dying process still counts against the next job's RLIMIT_NPROC).
*/

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

#define NONCE_BYTES 16
#define READ_CHUNK (1 << 16)

enum { K_REPORT = 0, K_TIMEOUT = 1, K_OUTPUT_LIMIT = 2, K_SIGNAL = 3, K_EXITED = 4, K_MEMORY = 5 };
enum { COLLECTED = 0, INTERRUPTED = -1, ENGINE_GONE = -2 };

typedef struct {
    int kind;
    int code;           /* signal number or exit status */
    size_t offset, len; /* the report's bytes in the batch buffer (K_REPORT), or what was sent (K_EXITED) */
    double wall, cpu;
    long faults;
} job_result;

typedef struct {
    char *data;
    size_t len, size;
} buffer;

/* Memory only the server uses (the batch's results and reports): mapped apart and never shared with a child
   (MADV_DONTFORK), so the server's writes to it are not copy-on-write faults — nor copied at each fork. */
static void *private_alloc(size_t size) {
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    madvise(p, size, MADV_DONTFORK);
    return p;
}

static int buffer_reserve(buffer *b, size_t more) {
    if (b->len + more <= b->size)
        return 0;
    size_t size = b->size ? b->size : 1 << 16;
    while (size < b->len + more)
        size *= 2;
    char *data = private_alloc(size);
    if (!data)
        return -1;
    if (b->data) {
        memcpy(data, b->data, b->len);
        munmap(b->data, b->size);
    }
    b->data = data;
    b->size = size;
    return 0;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void children_usage(double *cpu, long *faults) {
    struct rusage u;
    getrusage(RUSAGE_CHILDREN, &u);
    *cpu = u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-6;
    *faults = u.ru_minflt;
}

static int write_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* The child: confine, run the runner, report. Never returns. */
static void child_main(int w, pid_t server, PyObject *child, PyObject *prepared, const unsigned char *nonce,
                       rlim_t cpu_limit, uid_t uid, int root, int cgroup_fd) {
    struct rlimit cpu = {cpu_limit, cpu_limit + 1};
    setsid();
    dup2(0, 2); /* the server's fds 0 and 1 are /dev/null already; 2 was its stderr */
    setrlimit(RLIMIT_CPU, &cpu);
    /* Join the program's memory cgroup ("0": the writer) while still root; what it forks is born there. */
    if (cgroup_fd >= 0 && write(cgroup_fd, "0", 1) != 1)
        _exit(73);
    /* groups and gid were dropped by the server itself */
    if (root && setresuid(uid, uid, uid) != 0)
        _exit(71);
    /* A uid change clears the parent-death signal, so it comes after; and the server may already be gone. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0 || getppid() != server)
        _exit(72);
    /* Close every inherited descriptor but the result pipe (the server's protocol pipes included). */
    if (w > 3 && syscall(SYS_close_range, 3, w - 1, 0) != 0)
        for (int fd = 3; fd < w; fd++)
            close(fd);
    if (syscall(SYS_close_range, w + 1, ~0U, 0) != 0)
        for (int fd = w + 1; fd < 1024; fd++)
            close(fd);
    pid_t me = getpid();
    PyObject *report = PyObject_CallOneArg(child, prepared);
    if (getpid() != me) /* a process the program forked got here: only the child itself may report */
        _exit(0);
    if (report == NULL || !PyBytes_Check(report))
        _exit(70);
    char *body = PyBytes_AS_STRING(report);
    Py_ssize_t n = PyBytes_GET_SIZE(report);
    if ((uint64_t)n + NONCE_BYTES > UINT32_MAX)
        _exit(70);
    uint32_t frame_len = (uint32_t)(n + NONCE_BYTES);
    unsigned char head[4 + NONCE_BYTES];
    for (int i = 0; i < 4; i++)
        head[i] = (frame_len >> (8 * i)) & 0xff; /* little-endian, as stepcode.sandbox.server._write_frame */
    memcpy(head + 4, nonce, NONCE_BYTES);
    if (write_all(w, (char *)head, sizeof head) || write_all(w, body, (size_t)n))
        _exit(70);
    _exit(0);
}

static void kill_leftovers(pid_t pid, uid_t uid, int root) {
    if (root) {
        /* As the sandbox uid (real and effective), kill(-1) reaches exactly that uid's processes; saved uid stays 0. */
        if (setresuid(uid, uid, 0) == 0) {
            kill(-1, SIGKILL);
            if (setresuid(0, 0, 0) != 0)
                _exit(75); /* cannot happen (saved uid 0); a server that lost root must not go on */
        }
    } else {
        killpg(pid, SIGKILL);
    }
}

/* Supervise one child until it reported, ended or ran out of time; kill what it left; reap it. */
static int collect(pid_t pid, int r, const unsigned char *nonce, double deadline, size_t cap, uid_t uid, int root,
                   int watch_fd, buffer *buf, job_result *res) {
    size_t start = buf->len;
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    int exited = 0, pipe_open = 1, outcome = COLLECTED;
    res->kind = -1;
    while (!exited || pipe_open) {
        double left = deadline - now();
        if (left <= 0) {
            res->kind = K_TIMEOUT;
            break;
        }
        struct pollfd fds[3];
        int nfds = 0, i_pipe = -1, i_pid = -1, i_watch = -1;
        if (pipe_open) {
            fds[nfds] = (struct pollfd){r, POLLIN, 0};
            i_pipe = nfds++;
        }
        if (!exited && pidfd >= 0) {
            fds[nfds] = (struct pollfd){pidfd, POLLIN, 0};
            i_pid = nfds++;
        }
        if (watch_fd >= 0) {
            fds[nfds] = (struct pollfd){watch_fd, 0, 0}; /* no events asked: only a hang-up is reported */
            i_watch = nfds++;
        }
        int ms = (int)(left * 1000) + 1;
        int n = poll(fds, nfds, ms);
        if (n < 0) {
            if (errno == EINTR && PyErr_CheckSignals() == 0)
                continue;
            outcome = INTERRUPTED; /* a signal handler raised (e.g. KeyboardInterrupt): stop this child and the batch */
            break;
        }
        if (i_watch >= 0 && fds[i_watch].revents) {
            outcome = ENGINE_GONE;
            break;
        }
        if (i_pid >= 0 && fds[i_pid].revents)
            exited = 1;
        if (i_pipe >= 0 && fds[i_pipe].revents) {
            if (buffer_reserve(buf, READ_CHUNK) != 0) {
                res->kind = K_OUTPUT_LIMIT; /* out of memory for it: the same for this job */
                break;
            }
            ssize_t k = read(r, buf->data + buf->len, READ_CHUNK);
            if (k > 0)
                buf->len += (size_t)k;
            else if (k == 0 || (errno != EINTR && errno != EAGAIN))
                pipe_open = 0;
        }
        size_t got = buf->len - start;
        if (got > cap) {
            res->kind = K_OUTPUT_LIMIT;
            break;
        }
        if (got > 4) {
            const unsigned char *p = (unsigned char *)buf->data + start;
            uint32_t declared = p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
            if (got - 4 == declared)
                break; /* a complete frame: the child is exiting; no need to wait for it */
        }
        if (pidfd < 0 && !pipe_open)
            break; /* no pidfd (old kernel): the closed pipe is all we can wait for */
        if (exited && pipe_open)
            break; /* a descendant may still hold the pipe open; it is killed below */
    }
    kill(pid, SIGKILL);
    kill_leftovers(pid, uid, root);
    siginfo_t info;
    memset(&info, 0, sizeof info);
    while (waitid(P_PID, pid, &info, WEXITED) != 0 && errno == EINTR)
        ;
    if (pidfd >= 0)
        close(pidfd);
    if (res->kind < 0) {
        size_t got = buf->len - start;
        const unsigned char *p = (unsigned char *)buf->data + start;
        uint32_t declared = got >= 4 ? (p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24) : 0;
        if (got >= 4 + NONCE_BYTES && declared == got - 4 && memcmp(p + 4, nonce, NONCE_BYTES) == 0) {
            res->kind = K_REPORT;
            res->offset = start + 4 + NONCE_BYTES;
            res->len = got - 4 - NONCE_BYTES;
        } else if (info.si_code == CLD_KILLED || info.si_code == CLD_DUMPED) {
            res->kind = K_SIGNAL;
            res->code = info.si_status;
        } else {
            res->kind = K_EXITED;
            res->code = info.si_status;
            res->len = got;
        }
    }
    if (res->kind != K_REPORT)
        buf->len = start; /* nothing of it is kept */
    return outcome;
}

/* Reap the orphans the program left. As root they were all killed (`kill_leftovers`): wait for each to finish dying
   (bounded, 2 s: a process stuck in the kernel is not worth a stalled server), so that the next job starts with no
   process of its uid alive. Without root a leftover may be alive and is not waited for. */
static void reap_orphans(int root) {
    double deadline = 0;
    for (;;) {
        pid_t pid = waitpid(-1, NULL, WNOHANG);
        if (pid > 0)
            continue;
        if (pid < 0 || !root) /* ECHILD: none left */
            return;
        if (deadline == 0)
            deadline = now() + 2;
        else if (now() > deadline)
            return;
        poll(NULL, 0, 1);
    }
}

/* The OOM kills counted so far in a cgroup's memory.events / memory.oom_control ("oom_kill N" on a line). */
static long oom_kills(int fd) {
    char text[2048];
    ssize_t n = fd < 0 ? -1 : pread(fd, text, sizeof text - 1, 0);
    if (n <= 0)
        return 0;
    text[n] = 0;
    for (char *line = text; line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
        if (strncmp(line, "oom_kill ", 9) == 0)
            return strtol(line + 9, NULL, 10);
    return 0;
}

/* Whether the directory open as `dirfd` holds anything (getdents64: no allocation, unlike readdir). */
static int dir_has_entries(int dirfd) {
    char entries[1024] __attribute__((aligned(8)));
    if (lseek(dirfd, 0, SEEK_SET) != 0)
        return 1;
    long n;
    while ((n = syscall(SYS_getdents64, dirfd, entries, sizeof entries)) > 0) {
        for (long off = 0; off < n;) {
            unsigned short reclen = *(unsigned short *)(entries + off + 16);
            const char *name = entries + off + 19;
            if (!(name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0))))
                return 1;
            off += reclen;
        }
    }
    return n < 0;
}

static PyObject *run_jobs(PyObject *self, PyObject *args) {
    PyObject *jobs, *child, *cleanup;
    double timeout;
    unsigned long cpu_limit;
    unsigned int uid;
    int root;
    const char *workdir;
    Py_ssize_t cap;
    int python_at_fork, cgroup_fd, oom_fd, watch_fd;
    if (!PyArg_ParseTuple(args, "O!OOdkIpsnpiii", &PyList_Type, &jobs, &child, &cleanup, &timeout, &cpu_limit, &uid,
                          &root, &workdir, &cap, &python_at_fork, &cgroup_fd, &oom_fd, &watch_fd))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(jobs);
    size_t results_size = (n ? n : 1) * sizeof(job_result);
    job_result *results = private_alloc(results_size); /* zero-filled */
    buffer buf = {NULL, 0, 0};
    int dirfd = open(workdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (!results || buffer_reserve(&buf, READ_CHUNK) != 0 || dirfd < 0) {
        if (results)
            munmap(results, results_size);
        if (buf.data)
            munmap(buf.data, buf.size);
        if (dirfd >= 0)
            close(dirfd);
        return dirfd < 0 ? PyErr_SetFromErrnoWithFilename(PyExc_OSError, workdir) : PyErr_NoMemory();
    }
    Py_INCREF(jobs); /* the list and its items must outlive the loop, whatever the callbacks do */
    pid_t server = getpid();
    int failed = 0;
    Py_ssize_t done = 0;
    for (; done < n && !failed; done++) {
        job_result *res = &results[done];
        PyObject *prepared = PyList_GET_ITEM(jobs, done);
        unsigned char nonce[NONCE_BYTES];
        if (getrandom(nonce, sizeof nonce, 0) != sizeof nonce) {
            PyErr_SetFromErrno(PyExc_OSError);
            failed = 1;
            break;
        }
        int pipefd[2];
        if (pipe2(pipefd, O_CLOEXEC) != 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            failed = 1;
            break;
        }
        double cpu0;
        long faults0;
        children_usage(&cpu0, &faults0);
        long ooms = oom_kills(oom_fd);
        double start = now();
        if (python_at_fork)
            PyOS_BeforeFork();
        pid_t pid = fork();
        if (pid == 0) {
            if (python_at_fork)
                PyOS_AfterFork_Child();
            close(pipefd[0]);
            child_main(pipefd[1], server, child, prepared, nonce, (rlim_t)cpu_limit, (uid_t)uid, root, cgroup_fd);
        }
        if (python_at_fork)
            PyOS_AfterFork_Parent();
        close(pipefd[1]);
        if (pid < 0) {
            close(pipefd[0]);
            PyErr_SetFromErrno(PyExc_OSError);
            failed = 1;
            break;
        }
        int outcome = collect(pid, pipefd[0], nonce, start + timeout, (size_t)cap, (uid_t)uid, root, watch_fd, &buf,
                              res);
        close(pipefd[0]);
        res->wall = now() - start;
        double cpu1;
        long faults1;
        children_usage(&cpu1, &faults1);
        res->cpu = cpu1 - cpu0;
        res->faults = faults1 - faults0;
        reap_orphans(root); /* what the orphans cost is nobody's: the next job measures from after this */
        if (res->kind == K_SIGNAL && res->code == SIGKILL && oom_kills(oom_fd) > ooms)
            res->kind = K_MEMORY; /* the cgroup's OOM killer, not the wall clock nor the program itself */
        if (outcome == ENGINE_GONE)
            PyErr_SetString(PyExc_EOFError, "the engine hung up");
        if (outcome != COLLECTED) { /* a signal handler raised, or the engine is gone: that ends the batch */
            failed = 1;
            break;
        }
        if (dir_has_entries(dirfd)) { /* the program left files: empty the dir for the next job */
            PyObject *ok = PyObject_CallNoArgs(cleanup);
            if (ok == NULL)
                failed = 1;
            Py_XDECREF(ok);
        }
    }
    close(dirfd);
    PyObject *out = failed ? NULL : PyList_New(n);
    for (Py_ssize_t i = 0; out && i < n; i++) {
        job_result *res = &results[i];
        PyObject *data;
        if (res->kind == K_REPORT)
            data = PyBytes_FromStringAndSize(buf.data + res->offset, (Py_ssize_t)res->len);
        else if (res->kind == K_EXITED)
            data = Py_BuildValue("(iO)", res->code, res->len ? Py_True : Py_False);
        else
            data = PyLong_FromLong(res->code);
        PyObject *item = data ? Py_BuildValue("(iNddl)", res->kind, data, res->wall, res->cpu, res->faults) : NULL;
        if (item == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, i, item);
    }
    munmap(results, results_size);
    munmap(buf.data, buf.size);
    Py_DECREF(jobs);
    return out;
}

static PyMethodDef methods[] = {
    {"run_jobs", run_jobs, METH_VARARGS, "Run each prepared job in its own forked child; see the module docstring."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "stepcode.sandbox._forkloop",
    "The fork-server's hot loop in C (see stepcode/sandbox/_forkloop.c and stepcode/sandbox/server.py).", -1, methods,
};

/* The contract's version: stepcode/sandbox/server.py ignores a build of another one (a stale .so after an update). */
#define API 3

PyMODINIT_FUNC PyInit__forkloop(void) {
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddIntConstant(m, "API", API) != 0)
        Py_CLEAR(m);
    return m;
}
