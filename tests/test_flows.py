"""The Prefect pipeline for real (ephemeral API, real MLflow store, micro training) in a temporary project:
end-to-end lineage, the cached re-run, what the Prefect UI and the MLflow runs table show of a run (names, logs, the
summary artifact, the parent run's params and metrics), the gate stopping the flow, and a SIGTERM mid-run that loses
nothing.

The SIGTERM tests signal on an event they wait for, never after a guessed delay: mid-trace, a program that holds its
batch until the test releases it; mid-training, the trainer's own step logs."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from itertools import islice
from pathlib import Path

import pytest
import yaml
from _prefect_runs import read_flow_runs, seed_prefect_home

from stepcode.jsonl import read_table

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
STAGES = {"trace", "validate", "build", "init-model", "sft", "grpo", "evaluate", "register"}


def _project(base: Path, name: str, n_programs: int, experiment: str, **overrides) -> Path:
    from stepcode.data.synth import synth_candidates

    d = base / name
    (d / "data" / "raw").mkdir(parents=True)
    rows = list(islice(synth_candidates(seed=5), n_programs))
    (d / "data" / "raw" / "synth.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["build"]["benchmarks_dir"] = str(ROOT / "data" / "benchmarks")
    p["evaluate"]["cruxeval_path"] = str(ROOT / "data" / "benchmarks" / "cruxeval" / "cruxeval.jsonl")
    p["evaluate"]["max_new_tokens"] = 24
    p["tracking"]["experiment"] = experiment
    p["tracking"]["artifact_root"] = str(d / "mlruns")
    p["train"]["profile"] = "micro"
    p["trace"]["part_rows"] = 25
    p["pipeline"].update(eval_limit=2, heldout_limit=4, model_name=f"model-{experiment}")
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        p[section][key] = value
    (d / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return d


def _pipeline(d: Path, *args: str, wait: bool = True):
    cmd = [sys.executable, "-m", "stepcode.cli", "pipeline", "--profile", "micro", *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if not wait:
        return subprocess.Popen(cmd, cwd=d, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True, timeout=900)


class _Output:
    """What a process writes to its stdout (stderr merged), read by a thread as it comes: the test can wait for
    something to be printed, and the pipe never fills up and stalls the process."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self._buf = bytearray()
        self._eof = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        fd = self.proc.stdout.fileno()
        while chunk := os.read(fd, 1 << 16):
            with self._cond:
                self._buf += chunk
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def text(self) -> str:
        with self._cond:
            return self._buf.decode(errors="replace")

    def wait_for(self, predicate, timeout: float) -> bool:
        """Wait until `predicate(output so far)` holds (True) or the process closed its output or time ran out."""
        def ready():
            return self._eof or predicate(self._buf.decode(errors="replace"))
        with self._cond:
            self._cond.wait_for(ready, timeout)
            return predicate(self._buf.decode(errors="replace"))

    def finish(self, timeout: float) -> str:
        """Wait for the process to exit; everything it printed."""
        self.proc.wait(timeout)
        self._thread.join(timeout)
        return self.text()


def _runs(experiment: str):
    import mlflow

    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


FLOW_RUN_NAME = re.compile(r"^micro grpo=bilevel params=(?P<hash>[0-9a-f]{6}) (?P<date>\d{4}-\d\d-\d\d \d\d:\d\d)$")


def test_pipeline_end_to_end_lineage_and_cached_rerun(tmp_path, mlflow_store):
    import mlflow

    d = _project(tmp_path, "proj", 60, "flow-e2e")
    seed_prefect_home(d)
    first = _pipeline(d)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    assert "model     registered model-flow-e2e v1" in first.stdout
    # the console stays as it was: the summary, no Prefect INFO lines (those go to the Prefect API, checked below)
    assert "Finished in state" not in first.stdout + first.stderr and "Beginning flow run" not in first.stderr
    runs = _runs("flow-e2e")
    parents = [r for r in runs if r.data.tags.get("stage") == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    for tag in ("git.commit", "git.dirty", "params.hash", "prefect.flow_run_id", "prefect.flow_run_name"):
        assert parent.data.tags.get(tag), tag
    # a readable parent run: named `<profile> <date>` (the date of its Prefect flow run's name), with the params that
    # tell pipeline runs apart and the headline metrics, for the MLflow runs table
    named = FLOW_RUN_NAME.match(parent.data.tags["prefect.flow_run_name"])
    assert named and parent.info.run_name == f"micro {named['date']}", (parent.info.run_name, named)
    assert named["hash"] == parent.data.tags["params.hash"][:6]
    logged = parent.data.params
    assert len(logged) <= 60, sorted(logged)
    assert {k: logged.get(k) for k in ("train.profile", "profile.sft.max_steps", "profile.grpo.num_generations",
                                       "pipeline.grpo_mode", "trace.max_lines", "pipeline.heldout_limit")} == {
        "train.profile": "micro", "profile.sft.max_steps": "5", "profile.grpo.num_generations": "4",
        "pipeline.grpo_mode": "bilevel", "trace.max_lines": "10", "pipeline.heldout_limit": "4"}
    assert {"sft.final_loss", "eval.heldout.final_acc", "eval.stepcode_cruxeval_output_pass_at_1"} <= set(
        parent.data.metrics)
    children = {r.data.tags["stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == STAGES
    assert all(r.info.status == "FINISHED" for r in children.values())
    # lineage: digests of inputs and outputs, datasets as mlflow.data inputs, the model version linked to its run
    from stepcode.tracking.lineage import dvc_md5

    assert children["trace"].data.tags["dvc.md5.traces"] == dvc_md5(d / "data" / "traces")
    # the process pool's parts, assembled, are what the trace stage writes in one process (dvc.yaml's `stepcode
    # trace`), part for part: so dvc.lock holds one md5 however the table was made (tests/test_dask.py: a cluster's)
    from stepcode.config import load_params
    from stepcode.pipeline import stages

    params = load_params(d / "params.yaml")
    params = params.model_copy(update={"tracking": params.tracking.model_copy(update={"enabled": False})})
    stages.trace(params, d / "data" / "raw", tmp_path / "one-process", progress=False)
    assert dvc_md5(tmp_path / "one-process") == dvc_md5(d / "data" / "traces")
    assert children["build"].data.tags["dvc.md5.dataset"] == dvc_md5(d / "data" / "dataset")
    assert children["sft"].data.tags["dvc.md5.sft_data"] == dvc_md5(d / "data" / "dataset" / "sft.jsonl")
    assert {i.dataset.name for i in children["grpo"].inputs.dataset_inputs} >= {"rl_data", "model"}
    assert "heldout.final_acc" in children["evaluate"].data.metrics
    # SFT vs RL on the same held-out rows: the summary's learning lines, the report's `learning` object, the parent's
    # learning.* metrics (the same six numbers)
    assert "learning  held-out step accuracy: SFT " in first.stdout
    assert "GRPO mean reward" in first.stdout or "RL had no signal" in first.stdout
    learning = json.loads((d / "reports" / "pipeline-micro.json").read_text())["learning"]
    assert set(learning) == {"grpo_reward_mean", "grpo_zero_std_fraction", "sft_heldout_step_acc",
                             "sft_heldout_final_acc", "rl_heldout_step_acc", "rl_heldout_final_acc"}
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in learning.values())
    evaluated = children["evaluate"].data.metrics
    assert learning["sft_heldout_step_acc"] == evaluated["baseline.heldout.step_acc"]
    assert learning["rl_heldout_step_acc"] == evaluated["heldout.step_acc"]
    assert {f"learning.{k}": v for k, v in learning.items()}.items() <= parent.data.metrics.items()
    from stepcode.tracking.registry import version_metrics

    version = mlflow.MlflowClient().get_model_version("model-flow-e2e", "1")
    assert version.run_id == children["grpo"].info.run_id and version.aliases == ["candidate"]   # the training run
    assert "heldout.final_acc" in version_metrics(version) and version.source.startswith("models:/m-")

    # the cached re-run: every cached stage is skipped (no new stage run), only the gate and registration run again
    start = time.perf_counter()
    second = _pipeline(d)
    elapsed = time.perf_counter() - start
    assert second.returncode == 0, second.stdout[-4000:]
    parents = [r for r in _runs("flow-e2e") if r.data.tags.get("stage") == "pipeline"]
    newest = max(parents, key=lambda r: r.info.start_time)
    rerun = {r.data.tags["stage"] for r in _runs("flow-e2e")
             if r.data.tags.get("mlflow.parentRunId") == newest.info.run_id}
    assert rerun == {"trace", "validate", "register"}, rerun   # trace: the merged table's lineage is logged again
    print(f"cached re-run: {elapsed:.0f} s")

    # What the Prefect UI shows of the two runs: their names, their logs (a stage line each), and the summary artifact
    # with the CLI's numbers and links to the MLflow runs (the re-run's cached stages say so).
    flow_runs = read_flow_runs(d)
    assert [r["name"] for r in flow_runs] == [newest.data.tags["prefect.flow_run_name"],
                                              parent.data.tags["prefect.flow_run_name"]]
    assert [r["id"] for r in flow_runs] == [newest.data.tags["prefect.flow_run_id"],
                                            parent.data.tags["prefect.flow_run_id"]]
    rerun_flow, first_flow = flow_runs
    assert all(r["state"] == "Completed" for r in flow_runs)
    messages = [log["message"] for log in first_flow["logs"]]
    assert any(m.startswith("sft: 5 steps in ") for m in messages), messages
    assert any(m.startswith("batch-00000.jsonl: 25 programs traced") for m in messages), messages
    assert any(parent.info.run_id in m and m.startswith("MLflow run 'micro ") for m in messages), messages
    assert any("(cached: an earlier run's result)" in log["message"] for log in rerun_flow["logs"])
    [artifact] = first_flow["artifacts"]
    assert artifact["key"] == "stepcode-pipeline-summary" and artifact["type"] == "markdown"
    summary = artifact["data"]
    assert summary.startswith(f"Profile **micro** · GRPO mode **bilevel** · params hash `{parent.data.tags['params.hash']}`")
    assert f"| step accuracy | {learning['sft_heldout_step_acc']:.1%} | {learning['rl_heldout_step_acc']:.1%} |" \
        in summary
    assert f"GRPO mean reward **{learning['grpo_reward_mean']:.3f}**" in summary
    assert f"| `stepcode_cruxeval_output` | {evaluated['stepcode_cruxeval_output_pass_at_1']:.3g} |" in summary
    assert "| register | model-flow-e2e v1 (alias `candidate`) |" in summary and parent.info.run_id in summary
    for stage, run in children.items():
        assert f"/#/experiments/{parent.info.experiment_id}/runs/{run.info.run_id}" in summary, stage
    assert "mlflow ui --backend-store-uri" in summary   # a sqlite store: how to open the links
    [again] = rerun_flow["artifacts"]
    assert re.search(r"\| sft \| 5 steps in \d+ s \(loss=[0-9.e+-]+\) \| cached \|", again["data"]), again["data"]
    assert newest.info.run_id in again["data"]


def test_a_failing_gate_stops_the_flow_before_training(tmp_path, mlflow_store):
    d = _project(tmp_path, "gate", 30, "flow-gate", validate__min_mean_anchors=7.5, validate__max_mean_anchors=8.0)
    seed_prefect_home(d)
    proc = _pipeline(d)
    assert proc.returncode == 1
    assert "data gate failed" in proc.stderr and "ok_mean_anchors" in proc.stderr
    # said once, by the CLI: Prefect's lines about the failure (with tracebacks) go to its API, not the console
    assert proc.stderr.count("ok_mean_anchors") == 1 and "Traceback" not in proc.stderr, proc.stderr
    stages = {r.data.tags.get("stage") for r in _runs("flow-gate")}
    assert "sft" not in stages and "build" not in stages
    parent = next(r for r in _runs("flow-gate") if r.data.tags.get("stage") == "pipeline")
    assert parent.info.status == "FAILED" and "GateFailed" in parent.data.tags["error"]
    assert not (d / "data" / "dataset").exists()


# A corpus program that holds its batch: it opens the FIFO `running` (so the test can tell it has started: a writer's
# non-blocking open succeeds only while a reader holds the FIFO), then waits until the file `release` exists. Both
# live in a folder the sandbox uid may read; the sandbox forbids writing anywhere else, so this is its only signal.
GATE_PROGRAM = ("import os, time\n"
                "def f(x):\n"
                "    os.open({running!r}, os.O_RDONLY | os.O_NONBLOCK)\n"
                "    while not os.path.exists({release!r}):\n"
                "        time.sleep(0.01)\n"
                "    return x\n")
GATE_ROW = 60            # the first row of batch 3 (batches of 20)


def _wait_for_reader(fifo: Path, proc: subprocess.Popen, output: _Output, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            return
        except OSError:   # ENXIO: nobody holds it open for reading yet
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the gate program never started:\n{output.text()[-3000:]}") from None
            time.sleep(0.05)


def test_sigterm_mid_trace_then_rerun_loses_and_duplicates_nothing(tmp_path, mlflow_store):
    # One sandbox worker: the batches run one at a time, in order. Per-run timeout 120 s: the gate program is held by
    # the test, not by the clock.
    d = _project(tmp_path, "kill", 200, "flow-kill", sandbox__workers=1, sandbox__timeout_s=120.0,
                 trace__part_rows=20)
    seed_prefect_home(d)
    gate = Path(tempfile.mkdtemp(prefix="stepcode-gate-", dir="/tmp"))
    try:
        gate.chmod(0o755)
        running, release = gate / "running", gate / "release"
        os.mkfifo(running)
        running.chmod(0o666)
        corpus_file = d / "data" / "raw" / "synth.jsonl"
        rows = [json.loads(line) for line in corpus_file.read_text().splitlines()]
        rows[GATE_ROW].update(code=GATE_PROGRAM.format(running=str(running), release=str(release)), input="7")
        corpus_file.write_text("".join(json.dumps(r) + "\n" for r in rows))

        parts = d / "data" / "work" / "flow" / "trace" / "out"
        proc = _pipeline(d, "--stop-after", "trace", wait=False)
        output = _Output(proc)
        signalled = False
        try:
            _wait_for_reader(running, proc, output, timeout=300)
            # Batch 3 is running and cannot finish: exactly batches 0-2 are done.
            done_before = {p.name: p.stat().st_mtime_ns for p in parts.glob("batch-*.jsonl")}
            assert sorted(done_before) == [f"batch-{k:05d}.jsonl" for k in range(3)], sorted(done_before)
            proc.send_signal(signal.SIGTERM)
            signalled = True
        finally:
            release.touch()    # the gate program returns: the pool's running batch ends, and the re-run never waits
            if not signalled and proc.poll() is None:
                proc.kill()
            out = output.finish(timeout=120)
        assert proc.returncode != 0, out[-3000:]
        killed = next(r for r in _runs("flow-kill") if r.data.tags.get("stage") == "pipeline")
        assert killed.info.status == "KILLED", (killed.info.status, out[-3000:])
        assert not (d / "data" / "traces").exists()
        for p in parts.glob("*.tmp"):
            raise AssertionError(f"a half-written file survived: {p}")

        again = _pipeline(d, "--stop-after", "trace")
        assert again.returncode == 0, again.stdout[-4000:]
        traced = list(read_table(d / "data" / "traces"))
        assert [r["id"] for r in traced] == [r["id"] for r in rows]       # every row once, in corpus order
        assert (traced[GATE_ROW]["status"], traced[GATE_ROW]["output"]) == ("ok", "7")
        for name, mtime in done_before.items():               # finished batches were not traced again
            assert (parts / name).stat().st_mtime_ns == mtime, name
    finally:
        shutil.rmtree(gate, ignore_errors=True)


def test_sigterm_during_training_marks_runs_killed_and_rerun_finishes(tmp_path, mlflow_store):
    import mlflow

    d = _project(tmp_path, "killtrain", 40, "flow-killtrain")
    seed_prefect_home(d)
    p = yaml.safe_load((d / "params.yaml").read_text())
    # Far more steps than the run could take before termination's watchdog (60 s) ends it: whether the signal's
    # exception unwinds the stage at once or is swallowed by a destructor (then the watchdog marks the runs KILLED),
    # the sft run cannot finish.
    p["train"]["profiles"]["micro"]["sft"]["max_steps"] = 100_000
    (d / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    proc = _pipeline(d, "--stop-after", "sft", wait=False)
    output = _Output(proc)
    signalled = False
    try:
        # The trainer logs every step (logging_steps: 1): three logged losses mean the sft stage is mid-training.
        assert output.wait_for(lambda text: text.count("'loss'") >= 3, timeout=600), output.text()[-3000:]
        running = [r for r in mlflow.search_runs(experiment_names=["flow-killtrain"], output_format="list")
                   if r.data.tags.get("stage") == "sft" and r.info.status == "RUNNING"]
        assert len(running) == 1, running
        proc.send_signal(signal.SIGTERM)
        signalled = True
    finally:
        if not signalled and proc.poll() is None:
            proc.kill()
        out = output.finish(timeout=180)
    assert proc.returncode != 0, out[-3000:]
    runs = {r.info.run_id: r for r in _runs("flow-killtrain")}
    assert runs[running[0].info.run_id].info.status == "KILLED", out[-3000:]
    parent = runs[running[0].data.tags["mlflow.parentRunId"]]
    assert parent.info.status == "KILLED"

    p["train"]["profiles"]["micro"]["sft"]["max_steps"] = 5
    (d / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    again = _pipeline(d, "--stop-after", "sft")
    assert again.returncode == 0, again.stdout[-4000:]
    sft = d / "models" / "micro" / "sft"
    assert (sft / "config.json").exists() and any(sft.glob("*.safetensors"))
