"""The CLI checks every option before any work starts, and a user error is one line.

Each case runs the real command in a subprocess, in an empty temporary folder, and asserts: exit code 2, nothing on
stdout, exactly one line on stderr (`error: ...`, no usage header, no traceback) that names the bad value and the
valid ones, and the folder is still empty (no MLflow store, no Prefect home, no data/ or reports/: no work began).
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from stepcode.commands.common import GRPO_MODES

ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_PROFILES = ("micro", "tiny-cpu", "qwen7b-gpu")
STAGES = ("trace", "validate", "build", "sft", "grpo")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
    return dict(env, COLUMNS="80")


def stepcode(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stepcode.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=_env(), timeout=120)


def assert_one_line_error(r: subprocess.CompletedProcess, *words: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == "", r.stdout
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def assert_no_work(folder: Path, before: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == before, "the command started work (files appeared)"


BAD_OPTIONS = {
    # the profile: checked against train.profiles (here the embedded defaults: the folder has no params.yaml)
    "pipeline profile": (["pipeline", "--profile", "nope"], ["--profile", "'nope'", *EMBEDDED_PROFILES]),
    "retrain profile": (["retrain", "--profile", "nope"], ["'nope'", *EMBEDDED_PROFILES]),
    "schedule profile": (["schedule", "--profile", "nope"], ["'nope'", *EMBEDDED_PROFILES]),
    "sft profile": (["train", "sft", "--profile", "nope", "--data", "d.jsonl", "-o", "out"],
                    ["'nope'", *EMBEDDED_PROFILES]),
    "grpo profile": (["train", "grpo", "--profile", "nope", "--data", "d.jsonl", "-o", "out"],
                     ["'nope'", *EMBEDDED_PROFILES]),
    "init-model profile": (["train", "init-model", "--profile", "nope", "--corpus", "c.jsonl", "-o", "out"],
                           ["'nope'", *EMBEDDED_PROFILES]),
    # fixed choices: rejected while the command line is parsed
    "stop-after": (["pipeline", "--stop-after", "bogus"], ["--stop-after", "'bogus'", *STAGES]),
    "grpo mode": (["train", "grpo", "--mode", "vanilla", "--data", "d.jsonl", "-o", "out"],
                  ["--mode", "'vanilla'", "bilevel", "step", "terminal"]),
    "model size": (["train", "init-model", "--size", "huge", "--corpus", "c.jsonl", "-o", "out"],
                   ["--size", "'huge'", "micro", "tiny", "0.5b"]),
    "benchmark": (["score", "--benchmark", "humaneval", "--task", "output", "g.json"],
                  ["--benchmark", "'humaneval'", "cruxeval", "lcb"]),
    "task": (["score", "--benchmark", "cruxeval", "--task", "reverse", "g.json"], ["--task", "'reverse'", "output",
                                                                                    "input"]),
    "task of reval": (["score", "--benchmark", "lcb", "--task", "coverage", "g.json"],
                      ["--task", "'coverage'", "output", "input"]),
    "skip rule": (["score", "--benchmark", "cruxeval", "--task", "output", "--skip-rule", "keep", "g.json"],
                  ["--skip-rule", "'keep'", "drop", "false", "lcb"]),
    "extract": (["score", "--benchmark", "cruxeval", "--task", "output", "--extract", "llm", "g.json"],
                ["--extract", "'llm'", "none", "direct", "cot"]),
    "benchmarks list": (["evaluate", "--model", "m", "--benchmarks", "cruxeval,humaneval,mbpp"],
                        ["--benchmarks", "'humaneval'", "'mbpp'", "cruxeval", "lcb"]),
    "benchmarks empty": (["evaluate", "--model", "m", "--benchmarks", ","], ["--benchmarks", "cruxeval", "lcb"]),
    "prompt": (["evaluate", "--model", "m", "--prompt", "fancy"], ["--prompt", "'fancy'", "official", "stepcode"]),
    "prompt stepcode with reval": (["evaluate", "--model", "m", "--benchmarks", "cruxeval,reval", "--prompt",
                                   "stepcode"],
                                   ["--prompt stepcode", "drop reval from --benchmarks"]),
    "limit": (["evaluate", "--model", "m", "--limit", "0"], ["--limit"]),
    "seeds": (["study", "ablation", "--seeds", "0"], ["--seeds"]),
    "unknown option": (["pipeline", "--profle", "micro"], ["--profle", "--profile", "pipeline --help"]),
    "unknown command": (["pipelin"], ["pipelin"]),
    "missing option": (["build", "t.jsonl"], ["--out"]),
    # a missing input named on the command line
    "validate input": (["validate", "nope.jsonl", "--report", "r"], ["nope.jsonl", "no such file"]),
    "build input": (["build", "nope.jsonl", "-o", "out"], ["nope.jsonl", "no such file"]),
    "trace input": (["trace", "nope.jsonl", "-o", "t.jsonl"], ["nope.jsonl", "no such file"]),
    "score input": (["score", "--benchmark", "cruxeval", "--task", "output", "nope.json"], ["nope.json",
                                                                                          "no such file"]),
    "evaluate model": (["evaluate", "--model", "nope", "--benchmarks", "cruxeval"], ["--model", "nope"]),
    "evaluate baseline without held-out rows": (["evaluate", "--model", ".", "--benchmarks", "cruxeval",
                                                  "--baseline", "."], ["--baseline", "--heldout"]),
    "evaluate profile": (["evaluate", "--model", ".", "--benchmarks", "cruxeval", "--profile", "nope"],
                         ["--profile", "nope", "tiny-cpu"]),
    "sft model": (["train", "sft", "--model", "nope", "--data", "d.jsonl", "-o", "out"], ["--model", "nope",
                                                                                          "config.json"]),
    "grpo model of the profile": (["train", "grpo", "--data", "d.jsonl", "-o", "out"], ["tiny-cpu", "--model",
                                                                                         "models/tiny-cpu/base"]),
    "init-model corpus": (["train", "init-model", "--corpus", "nope.jsonl", "-o", "out"], ["--corpus",
                                                                                          "nope.jsonl"]),
    "study report": (["study", "report", "nope.json"], ["nope.json", "no such file"]),
    "params file": (["pipeline", "--params", "nope.yaml"], ["--params", "nope.yaml", "no such file"]),
    "pipeline corpus": (["pipeline"], ["data/raw", "no .dvc file tracks it", "stepcode synth"]),   # not a project
    # no MLflow store here: not created by asking for runs
    "compare": (["compare", "0123abcd", "4567ef01"], ["MLflow", "mlflow.db"]),
    "compare one run": (["compare", "0123abcd"], ["two run ids"]),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_a_bad_option_is_one_line_and_exit_2_before_any_work(tmp_path, case):
    args, words = BAD_OPTIONS[case]
    r = stepcode(*args, cwd=tmp_path)
    assert_one_line_error(r, *words)
    assert_no_work(tmp_path, set())


def test_profiles_come_from_the_params_file(tmp_path):
    (tmp_path / "mine.yaml").write_text("train:\n  profile: small\n  profiles:\n    small:\n      model_size: micro\n"
                                        "    large:\n      model_size: tiny\n")
    before = {"mine.yaml"}
    r = stepcode("pipeline", "--params", "mine.yaml", "--profile", "micro", cwd=tmp_path)
    assert_one_line_error(r, "'micro'", "large, small", "mine.yaml")
    assert_no_work(tmp_path, before)
    help_text = stepcode("pipeline", "--help", "--params", "mine.yaml", cwd=tmp_path).stdout
    assert "small" in help_text and "large" in help_text and "qwen7b-gpu" not in help_text
    # ./params.yaml (the default --params)
    (tmp_path / "params.yaml").write_text((tmp_path / "mine.yaml").read_text())
    r = stepcode("train", "sft", "--profile", "nope", "--data", "d.jsonl", "-o", "out", cwd=tmp_path)
    assert_one_line_error(r, "'nope'", "large, small", "params.yaml")


def test_a_bad_params_file_is_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text("train:\n  profile: zzz\nsandbox:\n  bogus: 1\n")
    r = stepcode("build", "t.jsonl", "-o", "out", cwd=tmp_path)
    line = assert_one_line_error(r, "params.yaml", "train.profile", "sandbox.bogus", "unknown key")
    assert "Value error" not in line
    (tmp_path / "params.yaml").write_text("train: [\n")
    assert_one_line_error(stepcode("validate", "t.jsonl", "--report", "r", cwd=tmp_path), "params.yaml", "YAML")
    assert_no_work(tmp_path, {"params.yaml"})


def test_version(tmp_path):
    r = stepcode("--version", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == f"stepcode {version('stepcode')}", r
    script = Path(sys.executable).with_name("stepcode")   # the installed console script
    if script.exists():
        r = subprocess.run([str(script), "--version"], cwd=tmp_path, capture_output=True, text=True, env=_env())
        assert r.returncode == 0 and r.stdout.strip() == f"stepcode {version('stepcode')}", r
        bad = subprocess.run([str(script), "pipeline", "--stop-after", "bogus"], cwd=tmp_path, capture_output=True,
                             text=True, env=_env())
        assert_one_line_error(bad, "'bogus'")


@pytest.mark.parametrize("args, words", [
    (["pipeline", "--help"], ["--stop-after", "trace|validate|build|sft|g", "--profile", *EMBEDDED_PROFILES]),
    (["train", "grpo", "--help"], ["|".join(GRPO_MODES), "--profile", "--run-name"]),
    (["train", "init-model", "--help"], ["micro|mini|tiny|0.5b"]),
    (["score", "--help"], ["cruxeval|lcb", "output|input", "drop|false|lcb", "none|direct|cot"]),
    (["evaluate", "--help"], ["official|stepcode", "cruxeval, lcb"]),
])
def test_help_lists_the_choices(tmp_path, args, words):
    r = stepcode(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    text = "".join(r.stdout.split())   # rich wraps the help into a table: compare without whitespace
    for word in words:
        assert "".join(word.split()) in text, (word, r.stdout)


def test_the_cli_choices_agree_with_the_library():
    """The CLI keeps a copy of a list only where the module with the canonical one is too heavy to import."""
    from stepcode.commands.common import GRPO_MODES
    from stepcode.commands.pipeline import STOP_POINTS
    from stepcode.training.advantages import STEP_ADVANTAGES
    from stepcode.training.modes import MODES

    assert GRPO_MODES == tuple(MODES) == tuple(STEP_ADVANTAGES)
    assert STOP_POINTS == STAGES
    flow = (ROOT / "flows" / "pipeline.py").read_text()
    assert all(f'stop_after == "{stage}"' in flow for stage in STAGES)


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    """Only user errors are one line: an unexpected exception in a command still shows where it came from."""
    from typer.testing import CliRunner

    from stepcode.cli import app
    from stepcode.commands import common

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(common, "load_params", broken)
    monkeypatch.setattr("stepcode.commands.pipeline.load_params", broken)
    r = CliRunner().invoke(app, ["compare", "a", "b"])
    assert isinstance(r.exception, KeyError)


@pytest.mark.slow   # a real SFT run of the micro model (5 steps) in a subprocess: ~15 s on 2 cores
def test_train_run_name_names_the_mlflow_stage_run(tmp_path, mlflow_store):
    """`train sft --run-name` names the stage's MLflow run (and the trainer's run); its `stage` tag stays sft."""
    import json

    import mlflow

    from stepcode.prompts import output_messages, render_output_completion
    from stepcode.training.models import build_tiny_model, corpus_texts

    rows = [{"id": f"p{i}", "task": "output", "messages": output_messages(f"def f(x):\n    y = x + {i}\n    "
                                                                           "print(f'y: {y}')\n    return y", "1"),
             "completion": [{"role": "assistant", "content": render_output_completion([f"y: {1 + i}"], str(1 + i))}]}
            for i in range(4)]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_tiny_model(tmp_path / "base", corpus_texts(rows), size="micro")
    (tmp_path / "params.yaml").write_text("tracking:\n  experiment: cli-run-name\n"
                                          f"  artifact_root: {tmp_path / 'mlruns'}\n")
    r = subprocess.run([sys.executable, "-m", "stepcode.cli", "train", "sft", "--model", "base", "--data", "sft.jsonl",
                        "-o", "out", "--profile", "micro", "--run-name", "my-sft"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=600, env=dict(_env(), MLFLOW_TRACKING_URI=mlflow_store["uri"]))
    assert r.returncode == 0, r.stderr[-3000:]
    runs = mlflow.search_runs(experiment_names=["cli-run-name"], output_format="list")
    assert [(run.info.run_name, run.data.tags["stage"], run.info.status) for run in runs] == [
        ("my-sft", "sft", "FINISHED")]
    assert "loss" in runs[0].data.metrics   # the trainer's step metrics landed in that same run


# --- doctor: what it reports, on a good, a degraded and a broken install ---------------------------------------------

DOCTOR_KEYS = {"root", "namespaces", "landlock_abi", "seccomp", "uid", "exposed", "python", "hash_seed", "fork_loop",
               "python_at_fork", "preload", "private_proc", "read_only_mounts", "memory_cgroup", "gaps"}


def _package_copy(base: Path, *, drop: tuple[str, ...]) -> Path:
    """The stepcode package copied under `base` (no bytecode, no built extension), minus the files named in `drop`.
    Run with cwd=base, `python -m stepcode.cli` imports this copy, and the sandbox servers it starts do too."""
    import shutil

    shutil.copytree(ROOT / "stepcode", base / "stepcode", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    for name in drop:
        (base / "stepcode" / name).unlink()
    return base


def _forkloop_built() -> bool:
    try:
        from stepcode.sandbox import _forkloop
    except ImportError:
        return False
    return getattr(_forkloop, "API", None) == 3


def test_doctor_reports_the_isolation_of_the_sandbox_it_starts(tmp_path):
    import json
    import platform

    r = stepcode("doctor", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)   # the whole of stdout is the report
    assert set(info) == DOCTOR_KEYS
    assert info["python"] == platform.python_version() and info["hash_seed"] == "0"
    assert info["root"] is (os.geteuid() == 0)
    assert info["uid"] != 0                                  # programs never run as root
    assert info["fork_loop"] == ("c" if _forkloop_built() else "python")
    assert isinstance(info["namespaces"], bool) and isinstance(info["seccomp"], bool)
    assert isinstance(info["landlock_abi"], int) and isinstance(info["preload"], list)
    # What this machine loses, one sentence each; a full install as root on a recent kernel loses nothing.
    assert all(isinstance(gap, str) for gap in info["gaps"])
    assert any("memory cgroup" in gap for gap in info["gaps"]) is (not info["memory_cgroup"])
    assert any("fork loop" in gap for gap in info["gaps"]) is (info["fork_loop"] != "c")
    if info["root"] and info["namespaces"] and info["private_proc"] and info["read_only_mounts"] \
            and info["memory_cgroup"] and info["landlock_abi"] >= 6 and info["seccomp"] and info["fork_loop"] == "c":
        assert info["gaps"] == []
    assert_no_work(tmp_path, set())


def test_doctor_says_python_fork_loop_without_the_built_extension(tmp_path):
    import json

    good = json.loads(stepcode("doctor", cwd=tmp_path).stdout)
    copy = _package_copy(tmp_path / "nobuild", drop=())
    r = stepcode("doctor", cwd=copy)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["fork_loop"] == "python"
    assert [gap for gap in info["gaps"] if gap not in good["gaps"]] == [
        "the Python fork loop runs (the C one is not built, or another was asked for): same verdicts, ~1.5x the CPU "
        "per run"]
    # the same isolation otherwise: only the loop differs
    same = ("root", "namespaces", "landlock_abi", "seccomp", "python", "hash_seed", "python_at_fork", "preload",
            "private_proc", "read_only_mounts")
    assert {k: info[k] for k in same} == {k: good[k] for k in same}


def test_doctor_fails_without_a_report_when_the_sandbox_cannot_start(tmp_path):
    copy = _package_copy(tmp_path / "broken", drop=("sandbox/server.py",))
    r = stepcode("doctor", cwd=copy)
    assert r.returncode != 0
    assert r.stdout == ""                                    # no report that could be read as a healthy sandbox
    assert "the sandbox server failed to start" in r.stderr
    assert "No module named stepcode.sandbox.server" in r.stderr   # the server's own error is shown too
    assert "Traceback" not in r.stderr and r.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "bash scripts/setup.sh" in r.stderr                # the fix, named


def test_doctor_reports_the_sandbox_the_params_configure(tmp_path):
    import json

    (tmp_path / "params.yaml").write_text("sandbox:\n  fork_loop: python\n")
    r = stepcode("doctor", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["fork_loop"] == "python"      # what tracing would use, not the default


# --- schedule: the cron deployment on a real Prefect server -----------------------------------------------------------

def test_schedule_without_a_prefect_server_is_one_line_and_starts_nothing(tmp_path):
    r = stepcode("schedule", "--profile", "micro", cwd=tmp_path)
    assert_one_line_error(r, "prefect server start", "PREFECT_API_URL=http://127.0.0.1:4200/api")
    assert_no_work(tmp_path, set())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, body: dict | None = None):
    import json
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _wait_for(fetch, what: str, timeout: float = 120.0):
    import time
    import urllib.error

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = fetch()
        except (urllib.error.URLError, ConnectionError, OSError):
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _stop(proc: subprocess.Popen) -> str:
    import signal

    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.stdout.read() if proc.stdout else ""


@pytest.mark.slow   # a real Prefect server (~15 s to start on 2 cores) and the serving process
def test_schedule_serves_the_retrain_deployment_on_the_cron_from_params(tmp_path):
    from datetime import datetime, timezone

    from _prefect_runs import seed_prefect_db

    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text('pipeline:\n  schedule_cron: "17 4 * * 2"\n')   # Tuesdays 04:17
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    seed_prefect_db(tmp_path / "server-home")
    server_env = dict(_env(), PREFECT_HOME=str(tmp_path / "server-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                      PREFECT_SERVER_UI_ENABLED="false", PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="1")
    server = subprocess.Popen([str(Path(sys.executable).with_name("prefect")), "server", "start", "--host",
                               "127.0.0.1", "--port", str(port)], cwd=tmp_path, env=server_env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    serving = None
    try:
        _wait_for(lambda: _get(f"{api}/health") is True, "the Prefect server")
        serving = subprocess.Popen([sys.executable, "-m", "stepcode.cli", "schedule", "--profile", "micro"],
                                   cwd=project, env=dict(_env(), PREFECT_API_URL=api),
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deployment = _wait_for(lambda: serving.poll() is None and _get(
            f"{api}/deployments/name/stepcode-retrain/scheduled-retrain"), "the deployment")
        assert [(s["schedule"]["cron"], s["active"]) for s in deployment["schedules"]] == [("17 4 * * 2", True)]
        assert deployment["schedules"][0]["schedule"].get("timezone") in (None, "UTC")
        assert deployment["parameters"] == {"profile": "micro", "params_path": "params.yaml",
                                            "root": str(project.resolve())}
        assert deployment["entrypoint"].endswith("flows/retrain.py:retrain") and not deployment["paused"]
        # the server's scheduler turns the cron into runs: Tuesdays at 04:17 UTC, with the deployment's parameters
        runs = _wait_for(lambda: _get(f"{api}/flow_runs/filter", {
            "deployments": {"id": {"any_": [deployment["id"]]}}, "sort": "EXPECTED_START_TIME_ASC", "limit": 5}),
            "scheduled runs")
        for run in runs:
            start = datetime.fromisoformat(run["expected_start_time"].replace("Z", "+00:00")).astimezone(timezone.utc)
            assert (start.weekday(), start.hour, start.minute, start.second) == (1, 4, 17, 0), start
            assert run["state_type"] == "SCHEDULED" and run["parameters"] == deployment["parameters"]
        starts = [run["expected_start_time"] for run in runs]
        assert starts == sorted(set(starts)) and len(starts) >= 2
        assert serving.poll() is None                        # serving blocks: it polls for the scheduled runs
    finally:
        out = _stop(serving) if serving else ""
        _stop(server)
    assert "is being served" in out, out[-3000:]
