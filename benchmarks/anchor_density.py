"""Anchor density: how many anchors a program gets, statically and at run time, on CRUXEval and on our corpus.

    python benchmarks/anchor_density.py                    # the working tree's stepcode/anchors.py
    python benchmarks/anchor_density.py --baseline HEAD    # ... and, measured in the same run, anchors.py at HEAD

For each corpus (CRUXEval's 800 programs with their inputs; the program rows the `trace` stage reads, data/raw),
every program is instrumented and traced exactly as `stepcode trace` does (stepcode.data.traces.trace_rows: the real
sandbox, two hash seeds), and the script prints:
  static   anchors per instrumented program (mean), by kind, and the share with exactly one anchor;
  runtime  anchor lines per traced program (mean over status ok, then over ok + too_long: a too_long row's first run
           is recorded too), the share with exactly one line, and the status counts (more anchors can push a
           program over trace.max_lines: too_long).
With --baseline REV, stepcode/anchors.py as of git revision REV is loaded beside the working tree's and swapped into
stepcode.anchors for its own measurement (the tracer imports `instrument` from there at call time), so "before" and
"after" come from one run on one machine.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import subprocess
import sys
import types
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CRUXEVAL = ROOT / "data" / "benchmarks" / "cruxeval" / "cruxeval.jsonl"     # ships with the repository
CORPUS = ROOT / "data" / "raw"                                              # the trace stage's input (DVC)
KINDS = ("assign", "update", "loop_exit", "return")


def cruxeval_rows() -> list[dict]:
    rows = [json.loads(line) for line in CRUXEVAL.read_text().splitlines()]
    return [{"id": r["id"], "code": r["code"], "input": r["input"], "entry_point": "f"} for r in rows]


def corpus_rows() -> list[dict]:
    from stepcode.data.traces import read_corpus

    return read_corpus(CORPUS)


def anchors_at(revision: str) -> types.ModuleType:
    """stepcode/anchors.py as of a git revision, as a module of its own."""
    text = subprocess.run(["git", "show", f"{revision}:stepcode/anchors.py"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout
    module = types.ModuleType(f"_anchors_at_{revision}")
    module.__file__ = f"<stepcode/anchors.py at {revision}>"
    sys.modules[module.__name__] = module   # dataclasses look their module up
    exec(compile(text, module.__file__, "exec"), module.__dict__)
    return module


@contextmanager
def instrumenter(module: types.ModuleType | None):
    """Swap `module.instrument` into stepcode.anchors for the duration (None: leave the working tree's)."""
    import stepcode.anchors as anchors

    saved = anchors.instrument
    if module is not None:
        anchors.instrument = module.instrument
    try:
        yield anchors.instrument
    finally:
        anchors.instrument = saved


def measure(rows: list[dict], params, instrument) -> dict:
    from stepcode.data.traces import trace_rows

    static = [instrument(r["code"]) for r in rows]
    static = [inst for inst in static if inst.status == "ok"]
    per_program = [len(inst.anchors) for inst in static]
    by_kind = collections.Counter(a.kind for inst in static for a in inst.anchors)
    traced = list(trace_rows(rows, params))
    statuses = collections.Counter(r["status"] for r in traced)
    ok = [len(r["trace"]) for r in traced if r["status"] == "ok"]
    ok_or_long = [len(r["trace"]) for r in traced if r["status"] in ("ok", "too_long")]
    return {
        "programs": len(rows), "instrumented": len(static),
        "static_mean": statistics.mean(per_program), "static_one": sum(n == 1 for n in per_program),
        "static_by_kind": {kind: by_kind[kind] / len(static) for kind in KINDS},
        "traced_ok": len(ok), "runtime_mean": statistics.mean(ok), "runtime_one": sum(n == 1 for n in ok),
        "runtime_mean_with_too_long": statistics.mean(ok_or_long),
        "statuses": dict(statuses.most_common()),
    }


def report(name: str, label: str, m: dict) -> None:
    kinds = ", ".join(f"{kind} {m['static_by_kind'][kind]:.2f}" for kind in KINDS)
    print(f"{name:9s} {label:8s} static: {m['static_mean']:.2f} anchors/program ({kinds}); "
          f"one anchor: {m['static_one']}/{m['instrumented']} ({100 * m['static_one'] / m['instrumented']:.1f}%)")
    print(f"{'':9s} {'':8s} runtime: {m['runtime_mean']:.2f} lines/traced program (ok + too_long: "
          f"{m['runtime_mean_with_too_long']:.2f}); one line: {m['runtime_one']}/{m['traced_ok']} "
          f"({100 * m['runtime_one'] / m['traced_ok']:.1f}%); statuses {m['statuses']}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", metavar="REV", help="also measure stepcode/anchors.py at this git revision")
    ap.add_argument("--only", choices=("cruxeval", "corpus"), help="one corpus only")
    args = ap.parse_args()
    from stepcode.config import load_params

    params = load_params(ROOT / "params.yaml")
    versions = [(f"@{args.baseline}", anchors_at(args.baseline))] if args.baseline else []
    versions.append(("working", None))
    corpora = [("cruxeval", cruxeval_rows), ("corpus", corpus_rows)]
    for name, load in corpora:
        if args.only and name != args.only:
            continue
        rows = load()
        for label, module in versions:
            with instrumenter(module) as instrument:
                report(name, label, measure(rows, params, instrument))


if __name__ == "__main__":
    main()
