"""The main job's `learning` object (stepcode/pipeline/learning.py): SFT vs RL on the same held-out rows, and whether
GRPO had a signal, from the GRPO run's logs."""

import pytest

from stepcode.pipeline.learning import FIELDS, learning_lines, learning_summary
from stepcode.training.common import log_means

METRICS = {"heldout.step_acc": 0.42, "heldout.final_acc": 0.5, "baseline.heldout.step_acc": 0.35,
           "baseline.heldout.final_acc": 0.45, "heldout.rows": 200.0}


def test_log_means_average_each_key_over_the_entries_that_have_it():
    logs = [{"loss": 1.0, "reward": 0.5, "step": 1, "epoch": 0.1},
            {"loss": 3.0, "reward": float("nan"), "step": 2, "frac_reward_zero_std": 0.25},
            {"loss": 2.0, "reward": 1.5, "step": 3, "flag": True, "text": "x"}]
    assert log_means(logs) == {"loss": 2.0, "reward": 1.0, "frac_reward_zero_std": 0.25}   # NaN, bools, text skipped


def test_learning_summary_by_hand():
    grpo = {"means": {"reward": 0.9, "frac_reward_zero_std": 0.125}}
    learning = learning_summary(grpo, METRICS)
    assert tuple(learning) == FIELDS
    assert learning == pytest.approx({"grpo_reward_mean": 0.45,     # the logged reward is in [0, 2]: halved
                                      "grpo_zero_std_fraction": 0.125, "sft_heldout_step_acc": 0.35,
                                      "sft_heldout_final_acc": 0.45, "rl_heldout_step_acc": 0.42,
                                      "rl_heldout_final_acc": 0.5})
    assert all(0.0 <= v <= 1.0 for v in learning.values())


def test_a_missing_number_is_named_not_reported_as_zero():
    with pytest.raises(ValueError, match="frac_reward_zero_std.*baseline.heldout.step_acc"):
        learning_summary({"means": {"reward": 0.9}},
                         {k: v for k, v in METRICS.items() if k != "baseline.heldout.step_acc"})
    with pytest.raises(ValueError, match="reward"):
        learning_summary({}, METRICS)


def test_lines_say_plainly_when_rl_had_no_signal():
    silent = learning_summary({"means": {"reward": 0.0, "frac_reward_zero_std": 1.0}},
                              {**METRICS, "heldout.step_acc": 0.35, "heldout.final_acc": 0.45})
    text = "\n".join(learning_lines(silent, 200))
    assert "RL had no signal" in text and "every advantage was 0" in text
    assert "SFT 35.0% -> RL 35.0%" in text and "on 200 held-out rows" in text

    moved = learning_summary({"means": {"reward": 0.9, "frac_reward_zero_std": 0.25}}, METRICS)
    text = "\n".join(learning_lines(moved))
    assert "no signal" not in text
    assert "25% of groups without signal" in text and "RL improved held-out step accuracy (+7.0 points)" in text
    worse = learning_summary({"means": {"reward": 0.9, "frac_reward_zero_std": 0.25}},
                             {**METRICS, "heldout.step_acc": 0.30})
    assert "RL did not improve held-out step accuracy (-5.0 points)" in "\n".join(learning_lines(worse))
