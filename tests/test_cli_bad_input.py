"""Bad input and interruption: one line, nothing lost.

A bad params file, a sandbox width the machine cannot start, an output path that cannot be written (a directory, a
path under a regular file, a read-only or full file system) and an input nested too deeply to parse each end the
command with exit code 2 and one line on stderr, `error: ...`, that names the option or file; and an existing output
is left exactly as it was. Ctrl-C (SIGINT, to the process group, as a terminal sends it) and SIGTERM end
`stepcode trace` with one line, exit 130 / 143, the sandbox's temp dirs removed and the output untouched.

The bad-input cases run the real command in-process (typer's CliRunner: nothing there needs a process of its own);
the signal cases run it in a subprocess and wait for events (the progress bar counting, the sandbox's temp dir),
never for a fixed time. Read-only and full file systems are tiny tmpfs mounts (root only; skipped where mounting is
not permitted), unmounted at teardown.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stepcode.cli import app
from stepcode.commands.common import max_workers, refused, write_failure

PROGRAM = "def f(x):\n    y = x + 1\n    z = [y] * 3\n    return sum(z) + y"


def write_programs(path: Path, n: int, code: str = PROGRAM, arg: str = "3") -> Path:
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"p{i}", "code": code, "input": arg, "entry_point": "f"}) + "\n")
    return path


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def error_line(r, *words: str, code: int = 2) -> str:
    """The command failed with `code`, no exception escaped, stderr ends with one `error: ...` line naming `words`,
    and whatever came before it is the progress bar (nothing else: no traceback, no second message)."""
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr, r.exception)
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.split("\n") if line.strip()]
    assert lines and lines[-1].startswith("error: "), r.stderr
    assert all(line.lstrip("\r").startswith("tracing") for line in lines[:-1]), r.stderr
    for word in words:
        assert word in lines[-1], (word, lines[-1])
    return lines[-1]


def one_line_error(r, *words: str) -> str:
    """`error_line`, and the line is all there is: the command failed before any work (no progress bar)."""
    line = error_line(r, *words)
    assert r.stderr.strip() == line and r.stdout == "", (r.stdout, r.stderr)
    return line


@pytest.fixture
def work(tmp_path, monkeypatch):
    """An empty folder as the cwd, a small corpus, and an existing output that no failing run may change."""
    monkeypatch.chdir(tmp_path)
    write_programs(tmp_path / "progs.jsonl", 20)
    (tmp_path / "out.jsonl").write_text("the previous output\n")
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))   # where a sandbox would put its temp dir
    return tmp_path


def unchanged(work: Path) -> None:
    assert (work / "out.jsonl").read_text() == "the previous output\n"
    assert not list((work / "tmp").iterdir()), "a sandbox was started"
    assert not [p.name for p in work.iterdir() if p.name.startswith(".")], "a temp file was left behind"


@pytest.fixture
def tmpfs():
    """mount(dir, options): a tmpfs there, unmounted at teardown; the test is skipped where mounting is refused."""
    mounted: list[Path] = []

    def mount(path: Path, options: str = "size=64k") -> Path:
        if os.geteuid() != 0 or not shutil.which("mount"):
            pytest.skip("mounting a tmpfs needs root and mount(8)")
        path.mkdir(exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                           text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", str(path)], capture_output=True)


def remount_read_only(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)


def fill(path: Path, leave_blocks: int = 0) -> None:
    """Fill the file system of `path` until `leave_blocks` blocks are free."""
    st = os.statvfs(path)
    size = max(0, st.f_bavail - leave_blocks) * st.f_frsize
    try:
        with open(path / "filler", "wb") as fh:
            fh.write(b"\0" * size)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    assert os.statvfs(path).f_bavail <= leave_blocks


# --- 1. the params file ----------------------------------------------------------------------------------------------

def test_params_naming_a_directory_is_one_line(work):
    (work / "conf").mkdir()
    line = one_line_error(cli("trace", "progs.jsonl", "-o", "out.jsonl", "--params", "conf"), "--params conf",
                          "is a directory")
    assert "conf/params.yaml" in line   # the fix
    unchanged(work)


def test_a_default_params_yaml_that_is_a_directory_is_one_line(work):
    (work / "params.yaml").mkdir()
    one_line_error(cli("trace", "progs.jsonl", "-o", "out.jsonl"), "params.yaml", "is a directory", "--params")
    unchanged(work)


@pytest.mark.parametrize("content, words", [
    (b"\x7fELF\x02\x01\x01\x00\xd0\xff binary", ["bad.yaml", "UTF-8"]),
    (b"sandbox: " + b"[" * 5000 + b"]" * 5000 + b"\n", ["bad.yaml", "nest"]),
    (b"sandbox: [\n", ["bad.yaml", "not valid YAML"]),
    (b"sandbox:\n  workers: many\n", ["bad.yaml", "sandbox.workers"]),
    (b"- a list\n", ["bad.yaml", "mapping"]),
], ids=["binary", "deep", "not-yaml", "bad-field", "not-a-mapping"])
def test_a_bad_params_file_is_one_line(work, content, words):
    (work / "bad.yaml").write_bytes(content)
    one_line_error(cli("trace", "progs.jsonl", "-o", "out.jsonl", "--params", "bad.yaml"), *words)
    unchanged(work)


def test_a_bad_override_names_its_option(work):
    one_line_error(cli("trace", "progs.jsonl", "-o", "out.jsonl", "--timeout", "-1"), "--timeout -1",
                   "sandbox.timeout_s", "greater than 0")
    unchanged(work)


# --- 2. the sandbox's width ------------------------------------------------------------------------------------------

def test_too_many_workers_is_one_line_naming_the_limit_before_any_work(work):
    line = one_line_error(cli("trace", "progs.jsonl", "-o", "out.jsonl", "--workers", "3000"), "--workers 3000",
                          f"at most {max_workers(2)}")
    assert "uids in use" not in line
    unchanged(work)


def test_workers_below_one_is_one_line(work):
    one_line_error(cli("trace", "progs.jsonl", "-o", "out.jsonl", "--workers", "0"), "--workers 0", "at least 1")
    unchanged(work)


def test_too_many_workers_in_the_params_names_the_key(work):
    (work / "wide.yaml").write_text("sandbox:\n  workers: 3000\n")
    one_line_error(cli("trace", "progs.jsonl", "-o", "out.jsonl", "--params", "wide.yaml"),
                   "wide.yaml: sandbox.workers = 3000", f"at most {max_workers(2)}")
    unchanged(work)


def test_the_width_limit_fits_the_sandbox_uid_range():
    from stepcode.sandbox.engine import SANDBOX_UIDS

    assert 1 <= max_workers(2) * 2 <= SANDBOX_UIDS and max_workers(1) <= SANDBOX_UIDS


# --- 3. outputs ----------------------------------------------------------------------------------------------------

def test_an_output_that_is_a_directory_is_one_line_before_any_work(work):
    (work / "outdir").mkdir()
    (work / "outdir" / "keep.txt").write_text("kept")
    one_line_error(cli("trace", "progs.jsonl", "-o", "outdir"), "-o outdir", "is a directory")
    assert [p.name for p in (work / "outdir").iterdir()] == ["keep.txt"]
    unchanged(work)


def test_an_output_under_a_regular_file_is_one_line_before_any_work(work):
    (work / "somefile.txt").write_text("kept")
    one_line_error(cli("trace", "progs.jsonl", "-o", "somefile.txt/out.jsonl"), "-o somefile.txt/out.jsonl",
                   "somefile.txt is a file, not a directory")
    assert (work / "somefile.txt").read_text() == "kept"
    unchanged(work)


def test_an_output_that_is_a_pipe_is_one_line_and_stays_a_pipe(work):
    """Outputs are renamed into place: over a pipe or device (-o /dev/stdout) that would replace the node."""
    os.mkfifo(work / "fifo")
    one_line_error(cli("trace", "progs.jsonl", "-o", "fifo"), "-o fifo", "not a regular file")
    assert stat.S_ISFIFO(os.lstat(work / "fifo").st_mode)
    unchanged(work)


def test_a_summary_that_is_a_directory_is_one_line_before_any_work(work):
    (work / "sums").mkdir()
    one_line_error(cli("trace", "progs.jsonl", "-o", "out.jsonl", "--summary", "sums"), "--summary sums",
                   "is a directory")
    unchanged(work)


def test_an_output_on_a_read_only_file_system_is_one_line_before_any_work(work, tmpfs):
    ro = tmpfs(work / "ro")
    (ro / "out.jsonl").write_text("the previous output\n")
    remount_read_only(ro)
    one_line_error(cli("trace", "progs.jsonl", "-o", "ro/out.jsonl"), "-o ro/out.jsonl", "Read-only file system")
    one_line_error(cli("trace", "progs.jsonl", "-o", "ro/new/out.jsonl"), "-o ro/new/out.jsonl", "Read-only")
    assert (ro / "out.jsonl").read_text() == "the previous output\n"
    unchanged(work)


def test_an_output_on_a_full_file_system_is_one_line_before_any_work(work, tmpfs):
    full = tmpfs(work / "full")
    (full / "out.jsonl").write_text("the previous output\n")
    fill(full)
    one_line_error(cli("trace", "progs.jsonl", "-o", "full/out.jsonl"), "-o full/out.jsonl",
                   "No space left on device")
    assert (full / "out.jsonl").read_text() == "the previous output\n"
    assert sorted(p.name for p in full.iterdir()) == ["filler", "out.jsonl"]
    unchanged(work)


def test_a_file_system_that_fills_up_during_the_write_is_one_line_and_the_old_output_stays(work, tmpfs):
    """Room for the up-front check, not for the traces: the write at the end fails, in one line naming -o, and the
    atomic writer leaves the previous output and no temp file."""
    write_programs(work / "progs.jsonl", 40)   # ~20 KB of traces; one 4 KB block is left
    full = tmpfs(work / "full")
    (full / "out.jsonl").write_text("the previous output\n")
    fill(full, leave_blocks=1)
    r = cli("trace", "progs.jsonl", "-o", "full/out.jsonl", "--workers", "1", "--no-track")
    error_line(r, "-o full/out.jsonl", "No space left on device", "ENOSPC")
    assert (full / "out.jsonl").read_text() == "the previous output\n"
    assert sorted(p.name for p in full.iterdir()) == ["filler", "out.jsonl"]
    assert not list((work / "tmp").iterdir()), "the sandbox's temp dir was left behind"


def test_a_refused_write_names_the_file_it_was_about():
    mine = write_failure(OSError(errno.ENOSPC, "No space left on device"), "-o", Path("d/out.jsonl"))
    assert mine.startswith("-o d/out.jsonl: cannot write it: No space left on device [ENOSPC]")
    beside = write_failure(OSError(errno.EROFS, "Read-only file system", "d/.out.jsonl.x.tmp"), "-o",
                           Path("d/out.jsonl"))
    assert beside.startswith("-o d/out.jsonl:")
    other = write_failure(OSError(errno.ENOSPC, "No space left on device", "/elsewhere/f"), "-o", Path("out.jsonl"))
    assert other.startswith("/elsewhere/f: No space left on device")


def test_only_refused_writes_are_one_line_other_os_errors_keep_their_traceback(work, monkeypatch):
    """A refused write naming a file elsewhere names that file; an EPERM naming no file (a failed syscall: which
    one, only the traceback says) is not taken for a refused write."""
    from stepcode.pipeline import stages

    (work / "traces.jsonl").write_text("")

    def refused_elsewhere(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", "/elsewhere/x.db")

    monkeypatch.setattr(stages, "build", refused_elsewhere)
    one_line_error(cli("build", "traces.jsonl", "-o", "dataset"), "/elsewhere/x.db: Read-only file system")

    def failed_syscall(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(stages, "build", failed_syscall)
    r = cli("build", "traces.jsonl", "-o", "dataset")
    assert isinstance(r.exception, PermissionError) and not r.stderr.startswith("error:")
    assert not refused(OSError(errno.EPERM, "Operation not permitted"))
    assert refused(OSError(errno.ENOSPC, "No space left on device"))


def _every_output_command(work: Path) -> dict[str, list[str]]:
    """Each command that writes, with its output under a regular file (`blocker`); its inputs exist."""
    (work / "model").mkdir()
    (work / "model" / "config.json").write_text("{}")
    (work / "g.json").write_text("{}")
    b = "blocker"
    return {
        "trace": ["trace", "progs.jsonl", "-o", f"{b}/t.jsonl"],
        "trace --summary": ["trace", "progs.jsonl", "-o", "out.jsonl", "--summary", f"{b}/s.json"],
        "synth": ["synth", "-n", "1", "-o", f"{b}/s.jsonl"],
        "corpus humaneval": ["corpus", "humaneval", "-o", f"{b}/h.jsonl"],
        "validate": ["validate", "progs.jsonl", "--report", f"{b}/report"],
        "build": ["build", "progs.jsonl", "-o", f"{b}/dataset"],
        "build --metrics": ["build", "progs.jsonl", "-o", "dataset", "--metrics", f"{b}/build.json"],
        "init-model": ["train", "init-model", "--corpus", "progs.jsonl", "--size", "micro", "-o", f"{b}/m"],
        "sft": ["train", "sft", "--model", "model", "--data", "progs.jsonl", "-o", f"{b}/m"],
        "grpo": ["train", "grpo", "--model", "model", "--data", "progs.jsonl", "-o", f"{b}/m"],
        "sft --curves": ["train", "sft", "--model", "model", "--data", "progs.jsonl", "-o", "m", "--curves",
                         f"{b}/sft.json"],
        "grpo --curves": ["train", "grpo", "--model", "model", "--data", "progs.jsonl", "-o", "m", "--curves",
                          f"{b}/grpo.json"],
        "score": ["score", "--benchmark", "cruxeval", "--task", "output", "g.json", "-o", f"{b}/s.json"],
        "evaluate": ["evaluate", "--model", "model", "--benchmarks", "cruxeval", "-o", f"{b}/eval"],
        "compare": ["compare", "run1", "run2", "--out", f"{b}/c.png"],
        "study ablation": ["study", "ablation", "-o", f"{b}/ablation"],
    }


OUTPUT_COMMANDS = ("trace", "trace --summary", "synth", "corpus humaneval", "validate", "build", "build --metrics",
                   "init-model", "sft", "sft --curves", "grpo", "grpo --curves", "score", "evaluate", "compare",
                   "study ablation")


@pytest.mark.parametrize("command", OUTPUT_COMMANDS)
def test_every_command_checks_its_output_before_any_work(work, command):
    (work / "blocker").write_text("kept")
    commands = _every_output_command(work)
    assert set(commands) == set(OUTPUT_COMMANDS)
    args = commands[command]
    option = args[args.index(next(a for a in args if a.startswith("blocker/"))) - 1]
    one_line_error(cli(*args), f"{option} blocker/", "blocker is a file, not a directory")
    assert (work / "blocker").read_text() == "kept"
    unchanged(work)


# --- 4. inputs nested too deeply to parse ----------------------------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000


def test_a_generations_file_nested_too_deeply_is_one_line_naming_file_and_line(work):
    (work / "gens.json").write_text('{"sample_0":\n' + DEEP + "\n}\n")
    (work / "scored.json").write_text("previous")
    one_line_error(cli("score", "--benchmark", "cruxeval", "--task", "output", "gens.json", "-o", "scored.json"),
                   "GENERATIONS gens.json:2", "nested")
    assert (work / "scored.json").read_text() == "previous"
    unchanged(work)


def test_a_results_file_nested_too_deeply_is_one_line(work):
    (work / "results.json").write_text(DEEP)
    one_line_error(cli("study", "report", "results.json"), "RESULTS_JSON results.json:1", "nested")
    unchanged(work)


def test_a_corpus_line_nested_too_deeply_is_one_line_naming_file_and_line(work):
    with open(work / "progs.jsonl", "a") as fh:
        fh.write('{"id": "deep", "code": ' + DEEP + "}\n")
    one_line_error(cli("trace", "progs.jsonl", "-o", "out.jsonl"), "progs.jsonl:21")
    unchanged(work)


# --- 5. interruption -----------------------------------------------------------------------------------------------

def _stepcode() -> list[str]:
    script = Path(sys.executable).with_name("stepcode")
    return [str(script)] if script.exists() else [sys.executable, "-m", "stepcode.cli"]


def _as_a_foreground_job() -> None:
    """SIGINT as a terminal's foreground job has it: a test run started in the background without job control (`cmd &`
    in a script) inherits SIGINT ignored, and Python then never turns Ctrl-C into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def private_tmp():
    """A TMPDIR of this test's own (the sandbox's children must traverse it: 0711, directly under /tmp), so the
    sandbox temp dirs of the command under test are told apart from any other's."""
    path = Path(tempfile.mkdtemp(prefix="stepcode-test-signals-", dir="/tmp"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("signum, to_group, word", [
    (signal.SIGINT, True, "interrupted"),     # Ctrl-C: the terminal signals the whole foreground process group
    (signal.SIGTERM, False, "terminated"),    # kill PID
    (signal.SIGTERM, True, "terminated"),     # a service manager stopping the group
], ids=["ctrl-c", "sigterm", "sigterm-group"])
def test_a_signal_during_trace_is_one_line_cleans_up_and_loses_nothing(tmp_path, private_tmp, signum, to_group,
                                                                        word):
    n = 3000
    write_programs(tmp_path / "in.jsonl", n)
    (tmp_path / "out.jsonl").write_text("the previous output\n")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen([*_stepcode(), "trace", "in.jsonl", "-o", "out.jsonl", "--workers", "1", "--no-track"],
                            cwd=tmp_path, env=dict(env, TMPDIR=str(private_tmp), COLUMNS="80"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=_as_a_foreground_job)
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stderr.read1(4096), b"")))
    reader.start()
    try:
        # the event: programs are being traced (the bar counts one), in the sandbox's temp dir
        deadline = time.monotonic() + 120
        while not (re.search(rb"\|\s*[1-9]\d*/%d" % n, b"".join(chunks)) and
                   list(private_tmp.glob("stepcode-sandbox-*"))):
            assert proc.poll() is None, b"".join(chunks).decode()
            assert time.monotonic() < deadline, "tracing never started"
            time.sleep(0.02)
        if to_group:
            os.killpg(proc.pid, signum)
        else:
            os.kill(proc.pid, signum)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join()
        proc.stdout.close()
        proc.stderr.close()
    err = b"".join(chunks).decode()
    assert code == 128 + signum, (code, err)
    assert "Traceback" not in err and "Exception" not in err, err
    lines = [line for line in err.split("\n") if line.strip()]
    assert lines[-1] == f"error: stepcode trace: {word} ({signal.Signals(signum).name})" or \
        re.fullmatch(rf"error: .*stepcode\.cli trace: {word} \({signal.Signals(signum).name}\)", lines[-1]), err
    assert all(line.lstrip("\r").startswith("tracing") for line in lines[:-1]), err
    assert not list(private_tmp.glob("stepcode-sandbox-*")), "the sandbox's temp dir was left behind"
    assert (tmp_path / "out.jsonl").read_text() == "the previous output\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]   # no half-written temp file
