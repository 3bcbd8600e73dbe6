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


def read_rows(path, what: str) -> list[dict]:
    from stepcode.jsonl import read_jsonl

    rows = list(read_jsonl(path))
    if not rows:
        raise ValueError(f"{path}: no {what} rows")
    return rows


def save_model(trainer, tokenizer, out_dir) -> None:
    trainer.save_model(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    # The pickled TrainingArguments hold the absolute output path and a random serialization id, so the same training
    # would give a folder with another DVC digest; the arguments are on the stage's MLflow run instead.
    (Path(out_dir) / "training_args.bin").unlink(missing_ok=True)


def run_summary(trainer, started: float, out_dir) -> dict:
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    return {"steps": trainer.state.global_step, "seconds": round(time.perf_counter() - started, 2),
            "out_dir": str(out_dir), "first_log": logs[0] if logs else {}, "last_log": logs[-1] if logs else {}}
