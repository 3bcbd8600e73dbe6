"""`stepcode.evals.heldout.summarize`: the held-out metrics (two of them are the promotion metrics, params.yaml
pipeline.promote_metrics) checked against hand-computed values."""

from pathlib import Path

import pytest

from stepcode.config import load_params
from stepcode.evals.heldout import summarize
from stepcode.training.rewards import Score

FIELDS = ("rows", "final_acc", "step_acc", "gap", "wrong_logic", "completion_tokens")

# Tasks interleaved, so a group that indexes scores by its own position (not the row's) gets other rows' scores.
ROWS = [{"id": "o1", "task": "output"}, {"id": "i1", "task": "input"}, {"id": "o2", "task": "output"},
        {"id": "i2", "task": "input"}, {"id": "o3", "task": "output"}]
SCORES = [Score(steps=(1.0, 1.0, 0.0), final=1.0),         # o1: 2 of 3 anchors, right answer
          Score(steps=(1.0, 0.0), final=0.0),              # i1: 1 of 2, wrong answer
          Score(steps=(0.0, 0.0, 0.0, 0.0), final=0.0),    # o2: 0 of 4, wrong
          Score(steps=(1.0, 1.0, 1.0), final=1.0),         # i2: 3 of 3, right
          Score(steps=(1.0,), final=1.0)]                  # o3: a one-anchor (terminal_only) row, 1 of 1, right
LENGTHS = [10, 5, 20, 7, 30]


def keys(prefix, *groups):
    return {f"{prefix}{group}.{field}" for group in groups for field in FIELDS}


def test_summarize_by_hand_on_both_tasks():
    metrics = summarize(ROWS, SCORES, LENGTHS)
    # final_acc: rows with a right answer / rows. step_acc: anchors right / anchors, pooled over the rows (not the
    # mean of per-row shares: that would be (2/3 + 1/2 + 0 + 1 + 1) / 5 overall). gap = final_acc - step_acc.
    expected = {
        "heldout.rows": 5.0, "heldout.final_acc": 3 / 5, "heldout.step_acc": 7 / 13,
        "heldout.gap": 3 / 5 - 7 / 13, "heldout.completion_tokens": 72 / 5,
        # right answer, wrong logic: only o1 (right answer, its third anchor wrong); i2 and o3 have every step right
        "heldout.wrong_logic": 1 / 5, "heldout.output.wrong_logic": 1 / 3, "heldout.input.wrong_logic": 0.0,
        "heldout.output.rows": 3.0, "heldout.output.final_acc": 2 / 3, "heldout.output.step_acc": 3 / 8,
        "heldout.output.gap": 2 / 3 - 3 / 8, "heldout.output.completion_tokens": 20.0,
        "heldout.input.rows": 2.0, "heldout.input.final_acc": 1 / 2, "heldout.input.step_acc": 4 / 5,
        "heldout.input.gap": 1 / 2 - 4 / 5, "heldout.input.completion_tokens": 6.0,
    }
    assert set(metrics) == set(expected) == keys("heldout", "", ".output", ".input")
    assert metrics == pytest.approx(expected, abs=1e-12)
    assert metrics["heldout.input.gap"] < 0 < metrics["heldout.output.gap"]     # the sign: final minus step
    assert all(isinstance(v, float) for v in metrics.values())                 # MLflow metrics


def test_the_promotion_metrics_are_keys_of_the_summary():
    promote = load_params(Path(__file__).resolve().parents[1] / "params.yaml").pipeline.promote_metrics
    assert set(promote) == {"heldout.final_acc", "heldout.step_acc"}
    metrics = summarize(ROWS, SCORES, LENGTHS)
    assert {k: metrics[k] for k in promote} == pytest.approx({"heldout.final_acc": 0.6, "heldout.step_acc": 7 / 13})


def test_a_task_without_rows_has_no_keys_and_leaves_the_overall_numbers_to_the_other():
    only_output = [i for i, r in enumerate(ROWS) if r["task"] == "output"]
    metrics = summarize([ROWS[i] for i in only_output], [SCORES[i] for i in only_output],
                        [LENGTHS[i] for i in only_output], prefix="cand")
    assert set(metrics) == keys("cand", "", ".output")                          # no "cand.input.*" at all
    overall = {f: metrics[f"cand.{f}"] for f in FIELDS}
    assert overall == {f: metrics[f"cand.output.{f}"] for f in FIELDS}
    assert overall == pytest.approx({"rows": 3.0, "final_acc": 2 / 3, "step_acc": 3 / 8, "gap": 2 / 3 - 3 / 8,
                                     "wrong_logic": 1 / 3, "completion_tokens": 20.0}, abs=1e-12)

    only_input = [i for i, r in enumerate(ROWS) if r["task"] == "input"]
    metrics = summarize([ROWS[i] for i in only_input], [SCORES[i] for i in only_input],
                        [LENGTHS[i] for i in only_input])
    assert set(metrics) == keys("heldout", "", ".input")
    assert metrics["heldout.final_acc"] == 0.5 and metrics["heldout.step_acc"] == pytest.approx(0.8)


def test_no_rows_and_no_anchors_give_zeros_not_errors():
    assert summarize([], [], []) == {f"heldout.{f}": 0.0 for f in FIELDS}
    # Rows whose scores carry no anchors at all: step_acc is 0 (no division by zero), final_acc still counts.
    rows = [{"id": "a", "task": "output"}, {"id": "b", "task": "output"}]
    metrics = summarize(rows, [Score(steps=(), final=1.0), Score(steps=(), final=0.0)], [3, 4])
    assert metrics == pytest.approx({**{f"heldout{g}.rows": 2.0 for g in ("", ".output")},
                                     **{f"heldout{g}.final_acc": 0.5 for g in ("", ".output")},
                                     **{f"heldout{g}.step_acc": 0.0 for g in ("", ".output")},
                                     **{f"heldout{g}.gap": 0.5 for g in ("", ".output")},
                                     **{f"heldout{g}.wrong_logic": 0.0 for g in ("", ".output")},
                                     **{f"heldout{g}.completion_tokens": 3.5 for g in ("", ".output")}})


def test_sampled_metrics_by_hand():
    from stepcode.evals.heldout import summarize_sampled

    rows = [{"id": "o1", "task": "output"}, {"id": "i1", "task": "input"}]
    samples = [
        # o1, 3 samples: right with a wrong step, right and clean, wrong
        [Score(steps=(1.0, 0.0), final=1.0), Score(steps=(1.0, 1.0), final=1.0), Score(steps=(0.0, 0.0), final=0.0)],
        # i1, 3 samples: never right (its trace is one anchor in two samples, none in the third: an input committed
        # to nothing has no reference)
        [Score(steps=(1.0,), final=0.0), Score(steps=(0.0,), final=0.0), Score(steps=(), final=0.0)],
    ]
    m = summarize_sampled(rows, samples)
    assert m == pytest.approx({
        "heldout.sampled.k": 3.0, "heldout.sampled.pass_at_k": 1 / 2,      # o1 has a right sample, i1 none
        "heldout.sampled.final_acc": 2 / 6, "heldout.sampled.step_acc": 4 / 8,
        "heldout.sampled.gap": 2 / 6 - 4 / 8, "heldout.sampled.wrong_logic": 1 / 6,
        "heldout.output.sampled.k": 3.0, "heldout.output.sampled.pass_at_k": 1.0,
        "heldout.output.sampled.final_acc": 2 / 3, "heldout.output.sampled.step_acc": 3 / 6,
        "heldout.output.sampled.gap": 2 / 3 - 3 / 6, "heldout.output.sampled.wrong_logic": 1 / 3,
        "heldout.input.sampled.k": 3.0, "heldout.input.sampled.pass_at_k": 0.0,
        "heldout.input.sampled.final_acc": 0.0, "heldout.input.sampled.step_acc": 1 / 2,
        "heldout.input.sampled.gap": -1 / 2, "heldout.input.sampled.wrong_logic": 0.0}, abs=1e-12)
    with pytest.raises(ValueError, match="same number"):
        summarize_sampled(rows, [samples[0], samples[1][:2]])
    with pytest.raises(ValueError, match="2 rows but samples for 1"):
        summarize_sampled(rows, samples[:1])
