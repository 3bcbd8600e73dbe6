"""What the SFT and GRPO runs share: torch threads, the TrainingArguments every run takes, reading rows, saving a
model reproducibly, the run summary. torch and transformers load inside the functions.
"""

from __future__ import annotations

import time
from pathlib import Path


def configure_torch(profile) -> None:
    """Thread count per process (1 is far faster for tiny models on a shared CPU: stack.md pitfall 6)."""
    import torch

    if profile.torch_threads:
        torch.set_num_threads(profile.torch_threads)


def common_args(profile, out_dir, run_name) -> dict:
    return dict(output_dir=str(out_dir), use_cpu=profile.use_cpu, bf16=profile.bf16,
                gradient_checkpointing=profile.gradient_checkpointing, seed=profile.seed,
                logging_steps=profile.logging_steps, report_to=list(profile.report_to), run_name=run_name,
                save_strategy="steps" if profile.save_steps else "no", save_steps=profile.save_steps or 500,
                disable_tqdm=False)  # a progress bar on long work; tests capture it


def read_rows(path, what: str, sources=None) -> list[dict]:
    """The rows of `path` (those whose `source` is one of `sources`; None: all); an error when none are left."""
    from stepcode.errors import UserError
    from stepcode.jsonl import read_jsonl

    rows = list(read_jsonl(path))
    if sources is not None:
        rows = [r for r in rows if r.get("source") in sources]
        if not rows:
            raise UserError(f"{path}: no {what} rows of sources {', '.join(sources)} (the profile's `sources` in "
                            "params.yaml train.profiles; is that corpus in data/raw?)")
    if not rows:
        raise ValueError(f"{path}: no {what} rows")
    return rows


def save_model(trainer, tokenizer, out_dir) -> None:
    trainer.save_model(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    # The pickled TrainingArguments hold the absolute output path and a random serialization id, so the same training
    # would give a folder with another DVC digest; the arguments are on the stage's MLflow run instead.
    (Path(out_dir) / "training_args.bin").unlink(missing_ok=True)


def log_means(logs: list[dict]) -> dict[str, float]:
    """Pure: each numeric key's mean over the log entries that have it (NaNs skipped), e.g. GRPO's reward and
    frac_reward_zero_std over the whole run rather than at its last step."""
    import math

    sums: dict[str, list[float]] = {}
    for entry in logs:
        for key, value in entry.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value):
                sums.setdefault(key, []).append(float(value))
    return {key: sum(v) / len(v) for key, v in sums.items() if key not in ("step", "epoch")}


def run_summary(trainer, started: float, out_dir) -> dict:
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    return {"steps": trainer.state.global_step, "seconds": round(time.perf_counter() - started, 2),
            "out_dir": str(out_dir), "first_log": logs[0] if logs else {}, "last_log": logs[-1] if logs else {},
            "means": log_means(logs)}
