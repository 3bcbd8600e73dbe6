"""What the SFT and GRPO runs share: torch threads, the TrainingArguments every run takes, reading rows, saving a
model reproducibly, the training curves for `dvc plots`, the run summary. torch and transformers load inside the
functions.
"""

from __future__ import annotations

import time
from pathlib import Path


def configure_torch(profile) -> None:
    """Thread count per process (1 is far faster for tiny models on a shared CPU: stack.md pitfall 6)."""
    import torch

    if profile.torch_threads:
        torch.set_num_threads(profile.torch_threads)


# The TrainingArguments a reader compares runs on; the other ~400 go into the run's training_args.json.
KEY_ARGS = ("learning_rate", "max_steps", "num_train_epochs", "per_device_train_batch_size",
            "gradient_accumulation_steps", "lr_scheduler_type", "warmup_ratio", "weight_decay", "max_grad_norm",
            "seed", "bf16", "max_length", "num_generations", "beta", "temperature", "max_completion_length",
            "loss_type", "scale_rewards")


def common_args(profile, out_dir, run_name) -> dict:
    """The TrainingArguments every run takes. "mlflow" in the profile's reporters means `MlflowLogger` (see
    `callbacks`), not transformers' own MLflow callback, which logs every argument and the model config as params."""
    reporters = [r for r in profile.report_to if r != "mlflow"] or ["none"]
    return dict(output_dir=str(out_dir), use_cpu=profile.use_cpu, bf16=profile.bf16,
                gradient_checkpointing=profile.gradient_checkpointing, seed=profile.seed,
                logging_steps=profile.logging_steps, report_to=reporters, run_name=run_name,
                save_strategy="steps" if profile.save_steps else "no", save_steps=profile.save_steps or 500,
                disable_tqdm=False)  # a progress bar on long work; tests capture it


def callbacks(profile) -> list:
    """The trainer callbacks the profile asks for: `MlflowLogger` when its reporters include "mlflow"."""
    return [mlflow_logger()] if "mlflow" in profile.report_to else []


def mlflow_logger():
    """A TrainerCallback that logs into the active MLflow run (the stage's): every logged step's numbers as metrics
    at that step, KEY_ARGS as `args.<name>` params, the full TrainingArguments as the artifact training_args.json."""
    import math

    from transformers import TrainerCallback

    class MlflowLogger(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            import mlflow

            if not state.is_world_process_zero or mlflow.active_run() is None:
                return
            full = args.to_dict()
            mlflow.log_params({f"args.{k}": full[k] for k in KEY_ARGS if k in full})
            mlflow.log_dict(full, "training_args.json")

        def on_log(self, args, state, control, logs=None, **kwargs):
            import mlflow

            if not state.is_world_process_zero or not logs or mlflow.active_run() is None:
                return
            numbers = {k: float(v) for k, v in logs.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
            if numbers:
                mlflow.log_metrics(numbers, step=state.global_step)

    return MlflowLogger()


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


def save_curves(trainer, path, columns: dict[str, str]) -> None:
    """The run's training curves (`stepcode.plots.curve_rows`: one row per logged step) as a `dvc plots` file at
    `path` (None: none), written by the main process only."""
    from stepcode.plots import curve_rows, write_rows

    if path is not None and trainer.is_world_process_zero():
        write_rows(path, curve_rows(trainer.state.log_history, columns))


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
