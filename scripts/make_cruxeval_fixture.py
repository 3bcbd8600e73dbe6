"""Regenerate tests/fixtures/cruxeval_published/: small subsets of four published, officially scored CRUXEval files.

    .venv/bin/python scripts/make_cruxeval_fixture.py [--shared ../shared] [--out tests/fixtures/cruxeval_published]

Reads the full files from <shared>/reference-generations/cruxeval/evaluation_results/ (the developers' reference
shelf beside the repository; users never have it), keeps the samples chosen by `select` below, recomputes pass@1 and
pass@5 of the subset from the published per-generation verdicts with the official estimator, and writes one JSON
file per published file plus README.md (provenance, checksums, selection). Nothing is executed: the selection uses
only the published verdicts and the copied-input rule, a string test. Same inputs, byte-identical outputs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stepcode.evals import cruxeval  # noqa: E402

DATA = ROOT / "data" / "benchmarks" / "cruxeval" / "cruxeval.jsonl"
SEED = 1234
# The files tests/test_evals_cruxeval.py checks (its AGREEMENT dict), with samples that must be kept whatever else
# is chosen: sample_664 is the hash-seed-dependent prediction f({"3", "4"}) of the shelf README's note.
FILES = {
    "gpt-4-0613_temp0.2_input.json": ["sample_664"],
    "codellama-7b_temp0.8_output.json": [],
    "gpt-4o+cot_temp0.2_input.json": [],
    "gpt-4o+cot_temp0.2_output.json": [],
}
# At most this many samples per category and file (a category with fewer is kept whole).
CAPS = {"rule-sensitive": 20, "copied-input only": 5, "mixed verdicts": 10, "random": 100}


def official_pass_at_k(n: int, c: int, k: int) -> float:
    """The estimator of upstream evaluation/utils_general.py (facebookresearch/cruxeval), numpy and all."""
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def official_mean(scored: dict[str, list[bool]], k: int) -> float:
    """pass@k in percent as upstream evaluate_generations.py averages it: sum / len * 100."""
    values = [official_pass_at_k(len(v), v.count(True), k) for v in scored.values()]
    return sum(values) / len(values) * 100


def categories(published: dict, problems: dict[str, dict], task: str) -> dict[str, list[str]]:
    """Sample ids by what they exercise, from the published verdicts alone (ids in sample order):
    - rule-sensitive: a copied-input generation AND a True verdict, the samples where the drop and the False skip
      rules give different lists (for a file scored with the False rule, exactly where the drop rule disagrees);
    - copied-input only: a copied-input generation, no True verdict (the drop rule pads these back to all-False);
    - mixed verdicts: True and False verdicts, no copied-input generation."""
    out: dict[str, list[str]] = {"rule-sensitive": [], "copied-input only": [], "mixed verdicts": []}
    for k in sorted(published["raw_generations"], key=lambda s: int(s.split("_")[1])):
        copied = any(cruxeval.is_skipped(problems[k], g, task) for g in published["raw_generations"][k])
        verdicts = published["raw_scored_generations"][k]
        if copied:
            out["rule-sensitive" if True in verdicts else "copied-input only"].append(k)
        elif True in verdicts and False in verdicts:
            out["mixed verdicts"].append(k)
    return out


def select(name: str, published: dict, problems: dict[str, dict]) -> tuple[list[str], dict[str, list[str]]]:
    """The kept sample ids (in the published file's order) and what each category contributed."""
    task = "input" if name.endswith("_input.json") else "output"
    rng = random.Random(f"{SEED}/{name}")       # a str seed is hashed with sha512: stable across runs and versions
    chosen = {"pinned": list(FILES[name])}
    taken = set(chosen["pinned"])
    pools = categories(published, problems, task)
    pools["random"] = sorted(published["raw_generations"], key=lambda s: int(s.split("_")[1]))
    for cat, pool in pools.items():
        pool = [k for k in pool if k not in taken]
        pick = pool if len(pool) <= CAPS[cat] else sorted(rng.sample(pool, CAPS[cat]), key=pool.index)
        chosen[cat] = pick
        taken.update(pick)
    return [k for k in published["raw_generations"] if k in taken], chosen


def subset(published: dict, keep: list[str]) -> dict:
    """The published object restricted to `keep`, key order as published, pass@k recomputed for the subset."""
    wanted = set(keep)
    gens = {k: v for k, v in published["raw_generations"].items() if k in wanted}
    scored = {k: v for k, v in published["raw_scored_generations"].items() if k in wanted}
    return {"raw_generations": gens, "raw_scored_generations": scored,
            "pass_at_1": official_mean(scored, 1), "pass_at_5": official_mean(scored, 5)}


README = """# Published CRUXEval scores: a committed subset

Subsets of four officially scored CRUXEval result files, so that `tests/test_evals_cruxeval.py` can check our scorer
generation by generation against the official verdicts without the 47 MB originals. Generated by
`scripts/make_cruxeval_fixture.py`; do not edit by hand. Where the shelf is beside the repository, the full files are
checked too: `pytest -m published_sweep tests/test_evals_cruxeval.py` (about 1.5 hours on 2 cores).

## Source
- Upstream: `facebookresearch/cruxeval` (`samples/evaluation_results.zip`; the repository's data and sample files are
  pinned at commit `190faf16d175b5847b0af05d937872b1fb395942`). The full files were taken byte for byte from
  `evaluation_results/` of `crux-eval/crux-eval.github.io` (the official leaderboard site, the same files as that zip),
  commit `bbca8150320397859dbb3c359fbb6a885b1d9a3f` (2024-12-06).
- Licence: MIT, Copyright (c) 2023 Meta (`facebookresearch/cruxeval`) and Copyright (c) 2023 CRUXEval Team
  (`crux-eval.github.io`); the MIT text is in `data/benchmarks/cruxeval/LICENSE`.
- Cite: Gu et al., "CRUXEval: A Benchmark for Code Reasoning, Understanding and Execution", arXiv:2401.03065.

## Format
The upstream result format, unchanged: `raw_generations` (extracted predictions), `raw_scored_generations` (the
official per-generation verdicts, copied unchanged), `pass_at_1`, `pass_at_5`; keys in the published order. Only
`pass_at_1` and `pass_at_5` are new: recomputed for the subset from the published per-sample verdicts with the
official unbiased estimator (upstream `evaluation/utils_general.py` `pass_at_k`, averaged as upstream
`evaluate_generations.py` does, in percent). The skip rule each file was scored with is in the test's `AGREEMENT`.

## Files
| file | original sha256 | original pass@1 / pass@5 | samples kept | subset pass@1 / pass@5 |
|---|---|---|---|---|
{rows}

## Selection
Per file, from the published verdicts and the copied-input rule only (nothing is executed), in this order, each
category drawing from the samples not already taken, at most the cap (fewer: the whole category):
- pinned: `sample_664` of `gpt-4-0613_temp0.2_input.json`, the hash-seed-dependent prediction `f({{"3", "4"}})`;
- rule-sensitive (cap {cap_rule}): a copied-input generation and a True verdict, where the drop and False skip rules
  disagree; for `codellama-7b_temp0.8_output.json` (scored with the False rule) these are exactly the 11 samples on
  which the current drop rule disagrees with the published file, all kept;
- copied-input only (cap {cap_copied}): a copied-input generation and no True verdict (the drop rule pads them);
- mixed verdicts (cap {cap_mixed}): both True and False verdicts;
- random (cap {cap_random}): any remaining sample.
Draws use `random.Random("{seed}/<file name>")`.

| file | pinned | rule-sensitive | copied-input only | mixed verdicts | random |
|---|---|---|---|---|---|
{counts}

## Regenerate
With the shelf beside the repository (`../shared`), from the repository root:

    .venv/bin/python scripts/make_cruxeval_fixture.py
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared", help="the reference shelf")
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "cruxeval_published")
    args = ap.parse_args()
    src = args.shared / "reference-generations" / "cruxeval" / "evaluation_results"
    if not src.is_dir():
        print(f"no published files at {src}: this script needs the reference shelf", file=sys.stderr)
        return 2
    problems = {p["id"]: p for p in cruxeval.load_problems(DATA)}
    args.out.mkdir(parents=True, exist_ok=True)
    rows, counts = [], []
    for name in FILES:
        raw = (src / name).read_bytes()
        published = json.loads(raw)
        # the estimator must reproduce the published totals before it may speak for a subset
        for k in (1, 5):
            full = official_mean(published["raw_scored_generations"], k)
            assert abs(full - published[f"pass_at_{k}"]) < 1e-9, (name, k, full, published[f"pass_at_{k}"])
        keep, chosen = select(name, published, problems)
        small = subset(published, keep)
        (args.out / name).write_text(json.dumps(small) + "\n")
        rows.append(f"| `{name}` | `{hashlib.sha256(raw).hexdigest()}` | {published['pass_at_1']:.2f} / "
                    f"{published['pass_at_5']:.2f} | {len(keep)} of {len(published['raw_generations'])} | "
                    f"{small['pass_at_1']:.2f} / {small['pass_at_5']:.2f} |")
        counts.append(f"| `{name}` | " + " | ".join(str(len(v)) for v in chosen.values()) + " |")
        print(f"{name}: kept {len(keep)} samples, " + ", ".join(f"{c} {len(v)}" for c, v in chosen.items()))
    (args.out / "README.md").write_text(README.format(
        rows="\n".join(rows), counts="\n".join(counts), seed=SEED, cap_rule=CAPS["rule-sensitive"],
        cap_copied=CAPS["copied-input only"], cap_mixed=CAPS["mixed verdicts"], cap_random=CAPS["random"]))
    size = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {args.out} ({size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
