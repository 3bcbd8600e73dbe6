"""Did RL move the model? The main job's answer, from the GRPO run's logs and the evaluation of both checkpoints.

    from stepcode.pipeline.learning import learning_summary, learning_lines
    learning = learning_summary(outcome["grpo"], metrics)      # the `learning` object of reports/pipeline-*.json
    print("\n".join(learning_lines(learning)))

The evaluate stage scores the GRPO model and (as `baseline.heldout.*`) the SFT checkpoint it started from, on the same
held-out rows with the same greedy decoding, so the two accuracies below differ only by what RL did:
- grpo_reward_mean: the GRPO reward averaged over every logged step, halved (the paper's logged reward is step
  accuracy + final reward, in [0, 2]), so a fraction like the others;
- grpo_zero_std_fraction: the share of prompt groups whose G rollouts all earned the same reward (TRL's
  frac_reward_zero_std), averaged over the steps: such a group has every advantage 0 and teaches nothing;
- sft_heldout_step_acc / sft_heldout_final_acc and rl_heldout_step_acc / rl_heldout_final_acc.
All six are fractions in [0, 1].
"""

from __future__ import annotations

FIELDS = ("grpo_reward_mean", "grpo_zero_std_fraction", "sft_heldout_step_acc", "sft_heldout_final_acc",
          "rl_heldout_step_acc", "rl_heldout_final_acc")


def learning_summary(grpo: dict, metrics: dict) -> dict[str, float]:
    """Pure: the six numbers above from the GRPO run summary (its `means` of the log history) and the evaluate
    stage's metrics. A missing number is an error naming it: a report with a silent 0 is what this replaces."""
    means = grpo.get("means") or {}
    needed = {"grpo reward (the GRPO log's `reward`)": "reward" in means,
              "zero-std share (the GRPO log's `frac_reward_zero_std`)": "frac_reward_zero_std" in means,
              **{f"metric {k}": k in metrics for k in ("heldout.step_acc", "heldout.final_acc",
                                                        "baseline.heldout.step_acc", "baseline.heldout.final_acc")}}
    missing = [what for what, present in needed.items() if not present]
    if missing:
        raise ValueError(f"cannot say whether RL learned: no {', '.join(missing)}")
    return {"grpo_reward_mean": means["reward"] / 2.0,
            "grpo_zero_std_fraction": means["frac_reward_zero_std"],
            "sft_heldout_step_acc": metrics["baseline.heldout.step_acc"],
            "sft_heldout_final_acc": metrics["baseline.heldout.final_acc"],
            "rl_heldout_step_acc": metrics["heldout.step_acc"],
            "rl_heldout_final_acc": metrics["heldout.final_acc"]}


def learning_lines(learning: dict[str, float], rows: int | None = None) -> list[str]:
    """Pure: SFT vs RL side by side, and a plain sentence on whether RL had a signal and what it did."""
    n = f" on {rows:.0f} held-out rows" if rows else ""
    lines = [f"learning  held-out step accuracy: SFT {learning['sft_heldout_step_acc']:.1%} -> RL "
             f"{learning['rl_heldout_step_acc']:.1%}; final accuracy: SFT {learning['sft_heldout_final_acc']:.1%} -> "
             f"RL {learning['rl_heldout_final_acc']:.1%}{n} (greedy, same rows)"]
    zero = learning["grpo_zero_std_fraction"]
    if learning["grpo_reward_mean"] == 0.0 or zero >= 1.0:
        lines.append("          RL had no signal: every GRPO group's rollouts earned the same reward "
                     f"(mean reward {learning['grpo_reward_mean']:.3f}), so every advantage was 0 and GRPO changed "
                     "nothing; the SFT model must get some rollouts right first (more SFT steps, an easier corpus)")
    else:
        delta = learning["rl_heldout_step_acc"] - learning["sft_heldout_step_acc"]
        verdict = ("RL improved held-out step accuracy" if delta > 0 else
                   "RL did not improve held-out step accuracy" if delta < 0 else "RL left held-out step accuracy as is")
        lines.append(f"          GRPO mean reward {learning['grpo_reward_mean']:.3f} (of 1), {zero:.0%} of groups "
                     f"without signal (all rollouts rewarded alike); {verdict} ({delta * 100:+.1f} points)")
    return lines


def log_learning(mlflow, learning: dict[str, float], sft: dict, grpo: dict, metrics: dict) -> None:
    """On the pipeline's parent run: the six numbers as `learning.*` metrics, plus the headline metrics of each
    stage (SFT's last loss, GRPO's mean reward, the held-out and benchmark scores), so the runs table compares
    pipeline runs and shows SFT beside RL."""
    headline = {f"learning.{k}": float(v) for k, v in learning.items()}
    if "loss" in sft.get("last_log", {}):
        headline["sft.final_loss"] = float(sft["last_log"]["loss"])
    headline.update({f"eval.{k}": float(v) for k, v in metrics.items()
                     if k.endswith(("final_acc", "step_acc", "pass_at_1", "step_accuracy")) and k.count(".") <= 2})
    mlflow.log_metrics({k.replace("/", "."): v for k, v in headline.items()})
