"""In-distribution evaluation in the StepCode format: the held-out split of our own data.

    from stepcode.evals.heldout import evaluate_heldout
    metrics = evaluate_heldout("models/grpo", "data/dataset/heldout.jsonl", params, limit=100)
    # {"heldout.final_acc": ..., "heldout.step_acc": ..., "heldout.gap": ..., "heldout.output.final_acc": ...}

Greedy decoding (labelled as such), one completion per held-out RL row (batched: `complete_many`), scored by exactly
the rewards RL optimises (`stepcode.training.rewards.RewardScorer`: sandboxed final check with the echo guard,
per-anchor step rewards):
- final_acc: share of rows whose final answer is correct (the paper's pass@1 rule; for the input task the answer
  must also be the input the completion committed to, as in the reward);
- step_acc: share of gold anchors predicted exactly, position by position (the paper's Table 6);
- gap: final_acc − step_acc ("right answer, wrong logic" shows as a positive gap);
- wrong_logic: share of rows whose answer is right while at least one step is wrong (`wrong_logic`);
- completion_tokens: mean completion length in tokens.
Reported overall and per task (output / input). Accuracies are fractions in [0, 1]. `samples=k` adds k completions
per row at a temperature (the rollouts' one): pass@k, and final / step accuracy and wrong_logic over the samples
(`summarize_sampled`, keys `heldout.sampled.*`).
"""

from __future__ import annotations

from pathlib import Path

STOP = "</answer>"


def _rate(num: float, den: float) -> float:
    return num / den if den else 0.0


def _groups(rows: list[dict]) -> dict[str, list[int]]:
    """"" (all rows) and ".<task>" -> row indices."""
    groups = {"": list(range(len(rows)))}
    for task in sorted({r["task"] for r in rows}):
        groups[f".{task}"] = [i for i, r in enumerate(rows) if r["task"] == task]
    return groups


def wrong_logic(score) -> bool:
    """Right answer, wrong logic: the final answer is right and at least one step is wrong (the paper's Table 6
    phenomenon, which terminal rewards cannot see)."""
    return bool(score.final) and any(not s for s in score.steps)


def summarize(rows: list[dict], scores: list, lengths: list[int], prefix: str = "heldout") -> dict[str, float]:
    """Pure: the metrics above from per-row scores (objects with `.steps` and `.final`)."""
    metrics: dict[str, float] = {}
    for suffix, idx in _groups(rows).items():
        finals = [scores[i].final for i in idx]
        steps = [s for i in idx for s in scores[i].steps]
        final_acc = _rate(sum(finals), len(finals))
        step_acc = _rate(sum(steps), len(steps))
        metrics.update({f"{prefix}{suffix}.rows": float(len(idx)), f"{prefix}{suffix}.final_acc": final_acc,
                        f"{prefix}{suffix}.step_acc": step_acc, f"{prefix}{suffix}.gap": final_acc - step_acc,
                        f"{prefix}{suffix}.wrong_logic": _rate(sum(wrong_logic(scores[i]) for i in idx), len(idx)),
                        f"{prefix}{suffix}.completion_tokens": _rate(sum(lengths[i] for i in idx), len(idx))})
    return metrics


def summarize_sampled(rows: list[dict], samples: list[list], prefix: str = "heldout") -> dict[str, float]:
    """Pure: metrics of k sampled completions per row (`samples[i]`: row i's k scores, k >= 1, the same k for
    every row), under `<prefix>[.<task>].sampled.`:
    - pass_at_k: share of rows with at least one right final answer among the k (pass@k with n = k);
    - final_acc: share of right answers over all samples (the pass@1 estimate at this temperature);
    - step_acc: share of anchors right, pooled over all samples; gap = final_acc - step_acc;
    - wrong_logic: share of samples with the right answer and at least one wrong step."""
    ks = {len(s) for s in samples}
    if len(ks) > 1 or 0 in ks:
        raise ValueError(f"every row needs the same number (>= 1) of samples, got {sorted(ks)}")
    if len(samples) != len(rows):
        raise ValueError(f"{len(rows)} rows but samples for {len(samples)}")
    k = ks.pop() if ks else 0
    metrics: dict[str, float] = {}
    for suffix, idx in _groups(rows).items():
        flat = [s for i in idx for s in samples[i]]
        steps = [x for s in flat for x in s.steps]
        final_acc = _rate(sum(s.final for s in flat), len(flat))
        step_acc = _rate(sum(steps), len(steps))
        key = f"{prefix}{suffix}.sampled"
        metrics.update({f"{key}.k": float(k),
                        f"{key}.pass_at_k": _rate(sum(any(s.final for s in samples[i]) for i in idx), len(idx)),
                        f"{key}.final_acc": final_acc, f"{key}.step_acc": step_acc,
                        f"{key}.gap": final_acc - step_acc,
                        f"{key}.wrong_logic": _rate(sum(wrong_logic(s) for s in flat), len(flat))})
    return metrics


def generate(backend, rows: list[dict], max_new_tokens: int, *, temperature: float = 0.0, n: int = 1,
             seed: int = 0, batch_size: int = 16, progress: bool = True) -> list[list[str]]:
    """`n` completions per row (greedy when temperature is 0), cut after </answer>; batched when the backend can
    (`complete_many`), else one row at a time."""
    from stepcode.evals.benchmark import Prompt
    from stepcode.evals.generate import Decoding, cut_at_stop

    decoding = Decoding("greedy" if temperature == 0 else f"t{temperature:g}", temperature, n)
    prompts = [Prompt(row["prompt"], "\n\n".join(m["content"] for m in row["prompt"])) for row in rows]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(rows), desc=f"held-out ({decoding.label})", unit="row", dynamic_ncols=True)
    out: list[list[str]] = []
    step = batch_size if hasattr(backend, "complete_many") else 1
    for k in range(0, len(prompts), step):
        chunk = prompts[k:k + step]
        if hasattr(backend, "complete_many"):
            texts = backend.complete_many(chunk, decoding, top_p=1.0, max_new_tokens=max_new_tokens, stops=[STOP],
                                          seed=seed + k, batch_size=batch_size)
        else:
            texts = [backend.complete(chunk[0], decoding, top_p=1.0, max_new_tokens=max_new_tokens, stops=[STOP],
                                      seed=seed + k)]
        out += [[cut_at_stop(t, [STOP], keep=True) for t in row_texts] for row_texts in texts]
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return out


def generate_greedy(backend, rows: list[dict], max_new_tokens: int, *, progress: bool = True) -> list[str]:
    return [texts[0] for texts in generate(backend, rows, max_new_tokens, progress=progress)]


def select(rows: list[dict], sources=None, limit: int | None = None) -> list[dict]:
    """The first `limit` rows whose `source` is one of `sources` (None: every source)."""
    if sources is not None:
        rows = [r for r in rows if r.get("source") in sources]
    return rows[:limit]


def evaluate_heldout(model_path: str, heldout_jsonl: str | Path, params, *, limit: int | None = None,
                     backend=None, progress: bool = True, prefix: str = "heldout", sources=None,
                     samples: int = 0, temperature: float = 1.0) -> tuple[dict, list[dict]]:
    """Generate greedily on the held-out rows (the first `limit` of `sources`, None: all), score them; with
    `samples` > 0 also that many completions per row at `temperature` (`summarize_sampled`). Returns (metrics,
    per-row records of the greedy completions, for a table)."""
    from stepcode.evals.generate import load_backend
    from stepcode.jsonl import read_jsonl
    from stepcode.training.rewards import RewardScorer

    rows = select(list(read_jsonl(heldout_jsonl)), sources, limit)
    if not rows:
        raise ValueError(f"{heldout_jsonl}: no held-out rows" + (f" of sources {list(sources)}" if sources else ""))
    backend = backend or load_backend(model_path)
    max_new = params.evaluate.max_new_tokens
    texts = generate_greedy(backend, rows, max_new, progress=progress)
    lengths = [len(backend.tok(t, add_special_tokens=False)["input_ids"]) if hasattr(backend, "tok") else len(t)
               for t in texts]
    with RewardScorer(params) as scorer:
        scores = scorer.score(rows, texts)
        metrics = summarize(rows, scores, lengths, prefix)
        if samples > 0:
            sampled = generate(backend, rows, max_new, temperature=temperature, n=samples, progress=progress)
            flat = scorer.score([r for r in rows for _ in range(samples)], [t for ts in sampled for t in ts])
            metrics.update(summarize_sampled(rows, [flat[i * samples:(i + 1) * samples] for i in range(len(rows))],
                                             prefix))
            metrics[f"{prefix}.sampled.temperature"] = float(temperature)
    records = [{"id": r["id"], "task": r["task"], "final": s.final, "steps_correct": sum(s.steps),
                "n": len(s.steps), "completion": t[:2000]} for r, s, t in zip(rows, scores, texts)]
    return metrics, records
