"""The data behind `dvc plots`: training curves from a trainer's log history, and the held-out comparison of a model
with its baseline from evaluate's metrics. Pure functions, and one writer.

    from stepcode.plots import GRPO_CURVES, curve_rows, write_rows
    write_rows("metrics/train-tiny-cpu/grpo-bilevel.json", curve_rows(trainer.state.log_history, GRPO_CURVES))
    dvc plots show          # the definitions that draw these files: PLOTS in stepcode/pipeline/spec.py

The files are tracked in git (dvc.yaml declares them `cache: false`), so they hold only what the same run gives
again: no timings (TRL's step_time, our rollout tokens/s), values rounded to 6 significant digits. One row per
line, so a retrained model's curves read as a diff.
"""

from __future__ import annotations

import json
import math

# TRL's log keys -> our column names (plain names: DVC plot fields take no "/")
SFT_CURVES = {"loss": "loss", "learning_rate": "learning_rate", "grad_norm": "grad_norm",
              "mean_token_accuracy": "token_accuracy", "entropy": "entropy", "num_tokens": "tokens"}
GRPO_CURVES = {"loss": "loss", "learning_rate": "learning_rate", "grad_norm": "grad_norm",
               "reward": "reward",                                  # the paper's (#correct steps / n) + r_final, 0..2
               "reward_std": "reward_std", "frac_reward_zero_std": "frac_reward_zero_std",
               "stepcode/step_accuracy": "step_accuracy", "stepcode/final_accuracy": "final_accuracy",
               "stepcode/frac_final_zero_std": "frac_final_zero_std", "kl": "kl",
               "completions/mean_length": "completion_length", "entropy": "entropy"}
HELDOUT_FIELDS = ("step_acc", "final_acc", "wrong_logic")   # evaluate's heldout.* metrics, per task
HELDOUT_TASKS = ("all", "output", "input")


def _number(value) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value if isinstance(value, int) else float(f"{value:.6g}")


def curve_rows(log_history: list[dict], columns: dict[str, str]) -> list[dict]:
    """One row per logged training step, `{"step": N, column: value, ...}`: the entries with a `loss` (the last
    entry, TRL's end-of-training summary, has `train_loss` instead). Every row has the same columns, those some
    entry logged (`kl` only with a KL term); a value an entry lacks, or a NaN, is null (DVC draws a gap)."""
    logged = [e for e in log_history if "loss" in e and "step" in e]
    present = [(key, name) for key, name in columns.items() if any(key in e for e in logged)]
    return [{"step": int(e["step"]), **{name: _number(e.get(key)) for key, name in present}} for e in logged]


def heldout_rows(metrics: dict[str, float], model: str, baseline: str | None = None) -> list[dict]:
    """The held-out accuracies of `model` (metrics `heldout.*`) and `baseline` (`baseline.heldout.*`), one row per
    model and task that has all of HELDOUT_FIELDS (DVC refuses rows with different fields):
    `{"model": "grpo-bilevel", "task": "output", "label": "grpo-bilevel: output", "step_acc": ...}`; none when there
    are no held-out metrics."""
    rows = []
    for name, prefix in ((baseline, "baseline.heldout"), (model, "heldout")):
        if name is None:
            continue
        for task in HELDOUT_TASKS:
            at = prefix if task == "all" else f"{prefix}.{task}"
            values = {f: _number(metrics.get(f"{at}.{f}")) for f in HELDOUT_FIELDS}
            if None not in values.values():
                rows.append({"model": name, "task": task, "label": f"{name}: {task}", **values})
    return rows


def write_rows(path, rows: list[dict]) -> None:
    """A JSON list, one row per line, written atomically."""
    from stepcode.jsonl import atomic_write_text

    body = ",\n".join("  " + json.dumps(row, ensure_ascii=False) for row in rows)
    atomic_write_text(path, f"[\n{body}\n]\n" if rows else "[]\n")
