"""SFT target length under each reasoning mode (`build.reasoning`: execution, template, none), in tokens.

    python benchmarks/reasoning_length.py                      # every ok row of data/traces
    python benchmarks/reasoning_length.py --limit 500          # a seeded sample
    python benchmarks/reasoning_length.py --tokenizer models/tiny-cpu/base

For the traced rows (status ok, at most trace.max_lines anchors) the script builds each row's SFT targets exactly as
the build stage does (stepcode.data.dataset.task_examples; execution paths from stepcode.data.reasoning, one batched
sandbox pass) and prints, per mode and task, the mean / median / p90 length of the targets in tokens of the project's
tokenizer (the tiny model's byte-level BPE: the one in --tokenizer, else models/*/base when built, else one trained
here on the traces exactly as `stepcode train init-model` trains it) and in whitespace-separated words, then the
fallback counts of the execution paths and three example targets (a straight-line program, a branch, a loop).
For scale: the paper reports ~470 generated tokens per problem at 7B (Qwen2.5-Coder's tokenizer).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MODES = ("execution", "template", "none")


def tokenizer_for(path: str | None, rows: list[dict]):
    from stepcode.training.models import SIZES, corpus_texts, load_tokenizer, train_tokenizer

    candidates = [Path(path)] if path else sorted(ROOT.glob("models/*/base"))
    for candidate in candidates:
        if (candidate / "tokenizer.json").is_file():
            return load_tokenizer(candidate), str(candidate.relative_to(ROOT) if candidate.is_absolute() else candidate)
    if path:
        raise SystemExit(f"{path}: no tokenizer.json there")
    return train_tokenizer(corpus_texts(rows), SIZES["tiny"][0]), "trained here on the traces (tiny, 4096)"


def pct(values: list[int], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def kind(code: str) -> str:
    """"loop" (a for/while statement), "branch" (an if statement, no loop), "straight" (one function, neither)."""
    import ast

    tree = ast.parse(code)
    statements = [type(n) for n in ast.walk(tree) if isinstance(n, ast.stmt)]
    if ast.For in statements or ast.While in statements:
        return "loop"
    if ast.If in statements:
        return "branch"
    return "straight" if statements.count(ast.FunctionDef) == 1 else "other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--traces", default=str(ROOT / "data" / "traces"))
    ap.add_argument("--limit", type=int, default=0, help="a seeded sample of this many rows (0: all)")
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()

    from stepcode.config import load_params
    from stepcode.data.dataset import task_examples
    from stepcode.data.reasoning import execution_paths
    from stepcode.jsonl import read_table

    params = load_params(ROOT / "params.yaml")
    max_lines = params.trace.max_lines
    rows = [r for r in read_table(args.traces) if r["status"] == "ok" and 1 <= len(r["trace"]) <= max_lines]
    if args.limit:
        rows = random.Random(0).sample(rows, min(args.limit, len(rows)))
    start = time.perf_counter()
    paths, stats = execution_paths(rows, params, workers=args.workers)
    seconds = time.perf_counter() - start
    tokenizer, which = tokenizer_for(args.tokenizer, rows)

    targets: dict[tuple[str, str], list[str]] = {}
    prompt_tokens: dict[tuple[str, str], int] = {}     # (id, task) -> chat prompt tokens
    max_length = params.train.get("tiny-cpu").sft.max_length
    examples: dict[str, dict] = {}
    for row in rows:
        for task in ("output", "input"):
            for mode in MODES:
                try:
                    sft, _ = task_examples(row, task, mode, paths.get(row["id"]))
                except ValueError:
                    continue
                targets.setdefault((mode, task), []).append((row["id"], sft["completion"][0]["content"]))
                if (row["id"], task) not in prompt_tokens:
                    prompt_tokens[row["id"], task] = len(tokenizer.apply_chat_template(
                        sft["messages"], tokenize=True, add_generation_prompt=True))
        k = kind(row["code"])
        if k not in examples and len(row["instrumented_code"]) < 500 and len(row["trace"]) >= 3 \
                and None not in paths[row["id"]]:
            examples[k] = row

    print(f"{len(rows)} traced rows of {args.traces}; execution paths in {seconds:.1f} s; tokenizer: {which}")
    print(f"execution paths: {stats['explained']} of {stats['anchors']} anchors explained, "
          f"{stats['rows_with_fallback']} rows with a fallback; fallbacks by reason: {stats['fallback'] or 'none'}")
    print(f"\n{'mode':10s} {'task':7s} {'n':>6s} | {'tokens: mean':>12s} {'median':>7s} {'p90':>6s} | "
          f"{'words: mean':>11s} {'median':>7s} {'p90':>6s} | prompt+target > {max_length} (tiny-cpu sft.max_length)")
    for (mode, task), items in targets.items():
        tokens = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for _, t in items]
        words = [len(t.split()) for _, t in items]
        over = sum(prompt_tokens[rid, task] + n + 1 > max_length for (rid, _), n in zip(items, tokens))
        print(f"{mode:10s} {task:7s} {len(items):6d} | {statistics.mean(tokens):12.1f} "
              f"{statistics.median(tokens):7.0f} {pct(tokens, 0.9):6.0f} | {statistics.mean(words):11.1f} "
              f"{statistics.median(words):7.0f} {pct(words, 0.9):6.0f} | {over / len(items):6.1%}")
    for k in ("straight", "branch", "loop"):
        row = examples.get(k)
        if row is None:
            continue
        sft, _ = task_examples(row, "output", "execution", paths[row["id"]])
        print(f"\n--- example: {k} ({row['id']}), input {row['input']}\n{row['instrumented_code']}\n--- target:")
        print(sft["completion"][0]["content"])


if __name__ == "__main__":
    main()
