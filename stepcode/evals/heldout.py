"""In-distribution evaluation in the StepCode format: the held-out split of our own data.

    from stepcode.evals.heldout import evaluate_heldout
    metrics = evaluate_heldout("models/grpo", "data/dataset/heldout.jsonl", params, limit=100)
    # {"heldout.final_acc": ..., "heldout.step_acc": ..., "heldout.gap": ..., "heldout.output.final_acc": ...}

Greedy decoding (labelled as such), one completion per held-out RL row, scored by exactly the rewards RL optimises
(`stepcode.training.rewards.RewardScorer`: sandboxed final check with the echo guard, per-anchor step rewards):
- final_acc: share of rows whose final answer is correct (the paper's pass@1 rule; for the input task the answer
  must also be the input the completion committed to, as in the reward);
- step_acc: share of gold anchors predicted exactly, position by position (the paper's Table 6);
- gap: final_acc − step_acc ("right answer, wrong logic" shows as a positive gap);
- completion_tokens: mean completion length in tokens.
Reported overall and per task (output / input). Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

STOP = "</answer>"


def _rate(num: float, den: float) -> float:
    return num / den if den else 0.0


def summarize(rows: list[dict], scores: list, lengths: list[int], prefix: str = "heldout") -> dict[str, float]:
    """Pure: the metrics above from per-row scores (objects with `.steps` and `.final`)."""
    metrics: dict[str, float] = {}
    groups = {"": list(range(len(rows)))}
    for task in sorted({r["task"] for r in rows}):
        groups[f".{task}"] = [i for i, r in enumerate(rows) if r["task"] == task]
    for suffix, idx in groups.items():
        finals = [scores[i].final for i in idx]
        steps = [s for i in idx for s in scores[i].steps]
        final_acc = _rate(sum(finals), len(finals))
        step_acc = _rate(sum(steps), len(steps))
        metrics.update({f"{prefix}{suffix}.rows": float(len(idx)), f"{prefix}{suffix}.final_acc": final_acc,
                        f"{prefix}{suffix}.step_acc": step_acc, f"{prefix}{suffix}.gap": final_acc - step_acc,
                        f"{prefix}{suffix}.completion_tokens": _rate(sum(lengths[i] for i in idx), len(idx))})
    return metrics


def generate_greedy(backend, rows: list[dict], max_new_tokens: int, *, progress: bool = True) -> list[str]:
    from stepcode.evals.benchmark import Prompt
    from stepcode.evals.generate import Decoding

    greedy = Decoding("greedy", 0.0, 1)
    items = rows
    if progress:
        from tqdm import tqdm

        items = tqdm(rows, desc="held-out (greedy)", unit="row", dynamic_ncols=True)
    texts = []
    for row in items:
        raw = "\n\n".join(m["content"] for m in row["prompt"])
        out = backend.complete(Prompt(row["prompt"], raw), greedy, top_p=1.0, max_new_tokens=max_new_tokens,
                               stops=[STOP], seed=0)[0]
        end = out.find(STOP)
        texts.append(out if end < 0 else out[:end + len(STOP)])
    return texts


def evaluate_heldout(model_path: str, heldout_jsonl: str | Path, params, *, limit: int | None = None,
                     backend=None, progress: bool = True, prefix: str = "heldout") -> tuple[dict, list[dict]]:
    """Generate greedily on the held-out rows, score them; returns (metrics, per-row records for a table)."""
    from stepcode.evals.generate import load_backend
    from stepcode.jsonl import read_jsonl
    from stepcode.training.rewards import RewardScorer

    rows = list(read_jsonl(heldout_jsonl))[:limit]
    if not rows:
        raise ValueError(f"{heldout_jsonl}: no held-out rows")
    backend = backend or load_backend(model_path)
    texts = generate_greedy(backend, rows, params.evaluate.max_new_tokens, progress=progress)
    lengths = [len(backend.tok(t, add_special_tokens=False)["input_ids"]) if hasattr(backend, "tok") else len(t)
               for t in texts]
    with RewardScorer(params) as scorer:
        scores = scorer.score(rows, texts)
    records = [{"id": r["id"], "task": r["task"], "final": s.final, "steps_correct": sum(s.steps),
                "n": len(s.steps), "completion": t[:2000]} for r, s, t in zip(rows, scores, texts)]
    return summarize(rows, scores, lengths, prefix), records
