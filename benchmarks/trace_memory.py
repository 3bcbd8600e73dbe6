"""Memory of the data stages as the corpus grows: peak RSS of `stepcode trace`, `stepcode validate` and `stepcode build`
at N = 5,000 and N = 50,000 programs, each stage a fresh process run as a user runs it.

    python benchmarks/trace_memory.py [--sizes 5000 50000] [--workers 2] [--keep DIR]

The corpus: 5,000 synthesized programs (`stepcode.data.synth.synth_candidates`, seed 0), repeated with distinct ids up
to N (synthesizing 50,000 distinct ones takes minutes and changes nothing here: memory depends on how many rows a
stage holds, not on which). Tracing writes a folder of part files (`trace.part_rows` rows each), the gate validates in
chunks, the builder streams: no stage should hold the table, so peak RSS should stay flat while N grows 10x. Each
stage runs in its own process, and its peak RSS (`ru_maxrss`, the stage's process itself; the sandbox's servers are
separate processes of fixed size) is printed with its throughput, then the ratio of the two sizes' peaks.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = 5000

# Runs one `stepcode` command in this process and reports its own peak RSS (KiB on Linux) when it exits.
PROBE = """
import atexit, json, resource, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))
from stepcode.cli import app
sys.argv[0] = "stepcode"
app()
"""


def corpus(path: Path, n: int) -> None:
    from stepcode.data.synth import synth_candidates

    base = list(itertools.islice(synth_candidates(seed=0), min(n, BASE)))
    with open(path, "w") as fh:
        for k in range(n):
            row = dict(base[k % len(base)])
            if k >= len(base):
                row["id"] = f"{row['id']}#{k // len(base)}"
            fh.write(json.dumps(row) + "\n")


def stage(work: Path, *args: str) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of `stepcode ARGS` run in a fresh process in `work`."""
    rss = work / "rss.json"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE, str(rss), *args], cwd=work, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):   # validate exits 1 when the gate fails: still a measured run
        sys.exit(f"stepcode {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, json.loads(rss.read_text()) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--keep", type=Path, default=None, help="work here (kept) instead of a temp folder")
    args = ap.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="stepcode-memory-"))
    params = base / "params.yaml"
    import yaml

    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["tracking"]["enabled"] = False            # measure the stages, not the MLflow store
    p["build"]["benchmarks_dir"] = str(ROOT / "data" / "benchmarks")
    base.mkdir(parents=True, exist_ok=True)
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    print(f"{', '.join(map(str, args.sizes))} programs ({BASE} synthesized, repeated with distinct ids), "
          f"{args.workers} sandbox workers, part_rows {p['trace']['part_rows']}; work in {base}")
    peaks: dict[int, dict[str, float]] = {}
    for n in args.sizes:
        work = base / f"n{n}"
        work.mkdir(exist_ok=True)
        corpus(work / "programs.jsonl", n)
        peaks[n] = {}
        for name, cmd in (
                ("trace", ["trace", "programs.jsonl", "-o", "traces", "--workers", str(args.workers)]),
                ("validate", ["validate", "traces", "--report", "validation"]),
                ("build", ["build", "traces", "-o", "dataset"])):
            seconds, mib = stage(work, *cmd, "--params", str(params))
            peaks[n][name] = mib
            print(f"N={n:>6}  {name:8s} {seconds:7.1f} s  {n / seconds:7.0f} programs/s  peak RSS {mib:6.0f} MiB",
                  flush=True)
    if len(args.sizes) >= 2:
        small, large = args.sizes[0], args.sizes[-1]
        print(f"peak RSS N={large} / N={small}: " + ", ".join(
            f"{name} {peaks[large][name] / peaks[small][name]:.2f}x" for name in peaks[small]))


if __name__ == "__main__":
    sys.exit(main())
