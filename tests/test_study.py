"""The ablation study: its pure pieces against hand-computed values, and the micro study end to end for real (micro
model, real SFT/GRPO/evaluation processes, a real MLflow store)."""

import json
import math
from pathlib import Path

import pytest

from stepcode.config import StudyVariant, load_params
from stepcode.pipeline.study import (
    ARMS,
    FAILS,
    HEADLINE,
    HOLDS,
    UNCLEAR,
    arm_stats,
    check_claims,
    choose_lr,
    curve_bands,
    device_profile,
    ordering,
    plan_steps,
    render_report,
    select_rows,
    smooth,
    smoothing_window,
    t_interval,
    validation_split,
    verdict,
)
from stepcode.prompts import output_messages

ROOT = Path(__file__).resolve().parent.parent

CODE = "def f(xs, k):\n    total = 0\n    for x in xs:\n        total += x * k\n    return total\n"
INSTRUMENTED = ("def f(xs, k):\n    total = 0\n    print(f'total: {total}')\n    for x in xs:\n        total += x * k\n"
                "    print(f'total: {total}')\n    return_val = total\n    print(f'return_val: {return_val}')\n"
                "    return return_val")
CASES = [([1, 2], 3), ([4], 2), ([], 5), ([1, 1, 1], 1), ([2, 2], 2), ([5], 1)]


def rl_row(xs, k, task="output", source="synth"):
    total = sum(xs) * k
    return {"id": f"synth-{xs}-{k}", "task": task, "prompt": output_messages(INSTRUMENTED, f"{xs}, {k}"),
            "gold_trace": ["total: 0", f"total: {total}", f"return_val: {total}"], "gold_output": str(total),
            "code": CODE, "instrumented_code": INSTRUMENTED, "input": f"{xs}, {k}", "entry_point": "f",
            "terminal_only": False, "source": source}


# --- pure pieces ------------------------------------------------------------------------------------------------

def test_select_rows_keeps_the_variants_tasks_sources_and_sizes():
    short = rl_row([1], 2)
    long_prompt = rl_row([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], 2)
    rows = [short, rl_row([1], 2, task="input"), rl_row([1], 2, source="humaneval"), long_prompt,
            {**rl_row([2], 2), "gold_trace": ["a: 1"] * 4}]
    limit = sum(len(m["content"]) for m in short["prompt"] if m["role"] == "user")
    v = StudyVariant(tasks=("output",), max_anchors=3, max_prompt_chars=limit)
    assert select_rows(rows, v) == [short]
    assert len(select_rows(rows, StudyVariant(tasks=("output",), max_anchors=4, max_prompt_chars=10_000))) == 3
    assert len(select_rows(rows, StudyVariant(max_anchors=4, max_prompt_chars=10_000))) == 4   # both tasks
    with pytest.raises(ValueError, match="lacks"):
        select_rows([{"id": "x", "task": "output"}], v)


def test_plan_steps_fits_the_budget_and_respects_the_cap():
    from stepcode.config import GRPOSettings, SFTSettings, TrainProfile

    v = StudyVariant(heldout_limit=10, cruxeval_limit=10, workers=2, sft_step_s=1.0, grpo_step_s=10.0,
                     eval_row_s=1.0)
    profile = TrainProfile(sft=SFTSettings(max_steps=600), grpo=GRPOSettings(max_steps=1000))
    # 2 seeds: 6 GRPO runs -> 3 rounds; 7 evaluations -> 4 rounds x 20 rows x 1 s = 80 s; SFT 600 s.
    # 60 min = 3600 s; left 3600 - 600 - 80 = 2920 s; 2920 / (3 x 10) = 97.3 -> 97 steps.
    plan = plan_steps(v, profile, seeds=2, budget_minutes=60)
    assert plan["grpo_steps"] == 97 and plan["capped_by"] == "budget"
    assert plan["estimated_minutes"] == round((600 + 80 + 3 * 97 * 10) / 60, 1)
    capped = TrainProfile(sft=SFTSettings(max_steps=600), grpo=GRPOSettings(max_steps=40))
    assert plan_steps(v, capped, seeds=2, budget_minutes=60)["grpo_steps"] == 40
    with pytest.raises(ValueError, match="no GRPO step"):
        plan_steps(v, profile, seeds=2, budget_minutes=11)


def test_a_sweep_at_the_main_horizon_reuses_each_arms_seed_0_run():
    from pathlib import Path

    from stepcode.config import GRPOSettings, SFTSettings, TrainProfile
    from stepcode.pipeline.study import _final_jobs

    v = StudyVariant(heldout_limit=10, cruxeval_limit=10, workers=2, sft_step_s=1.0, grpo_step_s=10.0,
                     eval_row_s=1.0, samples=2, lr_sweep=(1e-4, 3e-4), sweep_steps=0, validation_programs=4,
                     validation_limit=6, tasks=("output", "input"))
    profile = TrainProfile(sft=SFTSettings(max_steps=600), grpo=GRPOSettings(max_steps=1000))
    # SFT 600 s; evaluation 7 models -> 4 rounds x 40 completions x 1 s = 160 s; the sweep's 6 validation
    # evaluations -> 3 rounds x 6 rows x 1 s = 18 s. Trained runs: 6 sweep runs + 3 arms x (2 - 1) seeds = 9 runs,
    # 5 rounds: (3600 - 600 - 160 - 18) / (5 x 10 s) = 56.44 -> 56 steps, the sweep's too.
    plan = plan_steps(v, profile, seeds=2, budget_minutes=60)
    assert (plan["grpo_steps"], plan["sweep_steps"], plan["grpo_runs"], plan["sweep_reused"]) == (56, 56, 3, True)
    assert plan["minutes"] == {"sft": 10.0, "sweep": round(3 * (56 * 10 + 6) / 60, 1), "evaluation": 2.7,
                               "grpo": round((5 - 3) * 56 * 10 / 60, 1)}
    jobs = _final_jobs([0, 1], {"terminal": 1e-4, "step": 3e-4, "bilevel": 1e-4}, 56, 0.3, "sft", Path("w"),
                       {"terminal": "w/sweep/terminal-lr0.0001/model", "step": "w/sweep/step-lr0.0003/model",
                        "bilevel": "w/sweep/bilevel-lr0.0001/model"})
    assert [(j.arm, j.seed, j.lr, j.reuse) for j in jobs] == [
        ("terminal", 0, 1e-4, "w/sweep/terminal-lr0.0001/model"), ("step", 0, 3e-4, "w/sweep/step-lr0.0003/model"),
        ("bilevel", 0, 1e-4, "w/sweep/bilevel-lr0.0001/model"),
        ("terminal", 1, 1e-4, None), ("step", 1, 3e-4, None), ("bilevel", 1, 1e-4, None)]


def test_plan_steps_counts_the_sweep_and_the_sampled_evaluation():
    from stepcode.config import GRPOSettings, SFTSettings, TrainProfile

    v = StudyVariant(heldout_limit=10, cruxeval_limit=10, workers=2, sft_step_s=1.0, grpo_step_s=10.0,
                     eval_row_s=1.0, samples=2, lr_sweep=(1e-4, 3e-4), sweep_steps=5, validation_programs=4,
                     validation_limit=6, tasks=("output", "input"))
    profile = TrainProfile(sft=SFTSettings(max_steps=600), grpo=GRPOSettings(max_steps=1000))
    # SFT 600 s. Sweep: 3 arms x 2 rates = 6 runs -> 3 rounds x (5 steps x 10 s + min(6, 4 x 2) = 6 rows x 1 s) = 168 s.
    # Evaluation: 7 models -> 4 rounds x (10 rows x (1 + 2) + 10 problems) x 1 s = 160 s.
    # Left 3600 - 600 - 168 - 160 = 2672 s for 3 rounds of main runs at 10 s a step: 89.07 -> 89 steps.
    plan = plan_steps(v, profile, seeds=2, budget_minutes=60)
    assert (plan["grpo_steps"], plan["sweep_runs"], plan["sweep_steps"]) == (89, 6, 5)
    assert plan["completions_per_evaluation"] == 40
    assert plan["minutes"] == {"sft": 10.0, "sweep": 2.8, "evaluation": 2.7, "grpo": 44.5}
    assert plan["estimated_minutes"] == round((600 + 168 + 160 + 3 * 89 * 10) / 60, 1) == 60.0
    # A budget the sweep and evaluation eat up: 600 + 168 + 160 = 928 s > 15 min.
    with pytest.raises(ValueError, match="sweep ~2.8 min"):
        plan_steps(v, profile, seeds=2, budget_minutes=15)


def _program_rows(key, n_inputs=1):
    rows = []
    for i in range(n_inputs):
        pid = key if n_inputs == 1 else f"{key}#{i}"
        rows += [{**rl_row([i], 2), "id": pid}, {**rl_row([i], 2, task="input"), "id": pid}]
    return rows


def test_validation_split_takes_whole_programs_by_sha256():
    # sha256 hex of the program ids: prog-a 00b5..., prog-c 7655..., prog-d d1fa..., prog-b d393...
    rows = _program_rows("prog-b") + _program_rows("prog-a", n_inputs=2) + _program_rows("prog-c") \
        + _program_rows("prog-d")
    rl, validation = validation_split(rows, 2)
    assert [r["id"] for r in validation] == ["prog-a#0", "prog-a#0", "prog-a#1", "prog-a#1", "prog-c", "prog-c"]
    assert [(r["id"], r["task"]) for r in rl] == [("prog-b", "output"), ("prog-b", "input"), ("prog-d", "output"),
                                                  ("prog-d", "input")]
    assert validation_split(list(reversed(rows)), 2)[1] == list(reversed(validation))   # order of the rows kept
    assert validation_split(rows, 0) == (rows, [])
    with pytest.raises(ValueError, match="no RL program"):
        validation_split(rows, 4)


def test_choose_lr_best_validation_step_then_final_then_smaller():
    sweep = [{"arm": "terminal", "lr": 1e-4, "val_step_acc": 0.30, "val_final_acc": 0.2},
             {"arm": "terminal", "lr": 3e-4, "val_step_acc": 0.35, "val_final_acc": 0.1},   # best step acc
             {"arm": "step", "lr": 1e-4, "val_step_acc": 0.40, "val_final_acc": 0.2},
             {"arm": "step", "lr": 1e-3, "val_step_acc": 0.40, "val_final_acc": 0.3},       # tie: better final
             {"arm": "bilevel", "lr": 1e-3, "val_step_acc": 0.40, "val_final_acc": 0.3},
             {"arm": "bilevel", "lr": 3e-4, "val_step_acc": 0.40, "val_final_acc": 0.3}]    # full tie: smaller
    assert choose_lr(sweep) == {"terminal": 3e-4, "step": 1e-3, "bilevel": 3e-4}
    assert list(choose_lr(sweep)) == ["terminal", "step", "bilevel"]


def _s(mean, lo, hi, n=3):
    return {"mean": mean, "lo": lo, "hi": hi, "n": n, "sd": 0.0}


def test_verdict_reads_separation_of_the_intervals():
    assert verdict(_s(0.5, 0.45, 0.55), _s(0.3, 0.2, 0.4)) == HOLDS
    assert verdict(_s(0.3, 0.2, 0.4), _s(0.5, 0.45, 0.55)) == FAILS
    assert verdict(_s(0.4, 0.3, 0.5), _s(0.35, 0.25, 0.45)) == UNCLEAR
    # smaller is the claimed direction (gap, wrong logic)
    assert verdict(_s(0.1, 0.05, 0.15), _s(0.3, 0.2, 0.4), smaller_is_better=True) == HOLDS
    assert verdict(_s(0.3, 0.2, 0.4), _s(0.1, 0.05, 0.15), smaller_is_better=True) == FAILS
    # SFT only (n=1) against an arm: its value outside the arm's interval on the claimed side
    sft = _s(0.18, 0.18, 0.18, n=1)
    assert verdict(_s(0.25, 0.2, 0.3), sft) == HOLDS
    assert verdict(_s(0.2, 0.17, 0.23), sft) == UNCLEAR
    assert verdict(_s(0.1, 0.05, 0.15), sft) == FAILS
    assert verdict(_s(0.9, 0.9, 0.9, n=1), sft) == UNCLEAR    # two single values: no interval to separate


def test_check_claims_against_hand_made_stats():
    stats = {
        "sft": {"heldout.step_acc": _s(0.10, 0.10, 0.10, n=1)},
        "terminal": {"heldout.step_acc": _s(0.20, 0.15, 0.25), "heldout.gap": _s(0.10, 0.08, 0.12),
                     "heldout.wrong_logic": _s(0.20, 0.15, 0.25)},
        "step": {"heldout.step_acc": _s(0.30, 0.26, 0.34), "heldout.gap": _s(0.05, 0.03, 0.07),
                 "heldout.wrong_logic": _s(0.18, 0.10, 0.26)},
        "bilevel": {"heldout.step_acc": _s(0.32, 0.28, 0.36), "heldout.gap": _s(0.15, 0.13, 0.17),
                    "heldout.wrong_logic": _s(0.10, 0.05, 0.14)},
    }
    c1, c2, c3 = check_claims(stats)
    # C1: bilevel [0.28, 0.36] overlaps step [0.26, 0.34]; step [0.26, 0.34] is above terminal [0.15, 0.25]
    assert [c["verdict"] for c in c1["checks"]] == [UNCLEAR, HOLDS] and c1["verdict"] == UNCLEAR
    # C2: gap step < terminal holds, bilevel's gap [0.13, 0.17] is above terminal's [0.08, 0.12]: does not hold;
    # wrong logic: step overlaps terminal, bilevel [0.05, 0.14] is below terminal [0.15, 0.25]: holds
    assert [(c["better"], c["metric"], c["verdict"]) for c in c2["checks"]] == [
        ("step", "heldout.gap", HOLDS), ("bilevel", "heldout.gap", FAILS),
        ("step", "heldout.wrong_logic", UNCLEAR), ("bilevel", "heldout.wrong_logic", HOLDS)]
    assert c2["verdict"] == FAILS
    # C3: every arm's interval lies above SFT's 0.10
    assert [c["verdict"] for c in c3["checks"]] == [HOLDS] * 3 and c3["verdict"] == HOLDS
    assert c3["checks"][0]["better_stat"] == stats["terminal"]["heldout.step_acc"]
    # a claim whose metric was not measured: no checks, not separable
    assert check_claims({"terminal": {}, "step": {}})[1] == {"id": "C2", "claim": c2["claim"], "verdict": UNCLEAR,
                                                            "checks": []}


def test_smoothing_and_seed_bands():
    assert smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert smooth([1.0, 2.0], 5) == [1.0, 1.5] and smooth([4.0, 2.0], 1) == [4.0, 2.0]
    assert (smoothing_window(200), smoothing_window(14), smoothing_window(3)) == (20, 1, 1)
    runs = [{"arm": "step", "seed": 0, "history": {"train.reward": [(1, 0.0), (2, 2.0), (3, 4.0)]}},
            {"arm": "step", "seed": 1, "history": {"train.reward": [(1, 2.0), (2, 2.0), (3, 2.0), (4, 9.0)]}},
            {"arm": "sft", "seed": None, "history": {}}]
    bands = curve_bands(runs, "train.reward", window=2)
    # seed 0 smoothed: 0, 1, 3; seed 1 at the common steps 1-3: 2, 2, 2
    assert bands == {"step": {"steps": [1, 2, 3], "mean": [1.0, 1.5, 2.5], "lo": [0.0, 1.0, 2.0],
                              "hi": [2.0, 2.0, 3.0], "window": 2}}
    assert curve_bands(runs, "train.reward")["step"]["window"] == 1     # a tenth of 3 steps, at least 1


def test_device_profile():
    from stepcode.config import TrainProfile

    cuda = device_profile(TrainProfile(torch_threads=1), "cuda")
    assert (cuda.use_cpu, cuda.bf16, cuda.torch_threads) == (False, True, 0)
    cpu = device_profile(TrainProfile(use_cpu=False, bf16=True, torch_threads=0), "cpu")
    assert (cpu.use_cpu, cpu.bf16, cpu.torch_threads) == (True, False, 1)
    with pytest.raises(ValueError, match="cpu or cuda"):
        device_profile(TrainProfile(), "tpu")


def test_variant_sweep_needs_validation_programs():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="validation_programs"):
        StudyVariant(lr_sweep=(1e-4,), validation_programs=0)
    with pytest.raises(ValidationError, match="> 0"):
        StudyVariant(lr_sweep=(0.0,))
    assert StudyVariant(lr_sweep=[1e-4, 3e-4], validation_programs=5).lr_sweep == (1e-4, 3e-4)


def test_t_interval_matches_hand_computation():
    s = t_interval([0.2, 0.4, 0.6])
    # mean 0.4, sd 0.2, t(0.975, 2) = 4.303: half width 4.303 * 0.2 / sqrt(3)
    half = 4.303 * 0.2 / math.sqrt(3)
    assert s["mean"] == pytest.approx(0.4) and s["sd"] == pytest.approx(0.2)
    assert (s["lo"], s["hi"]) == (pytest.approx(0.4 - half), pytest.approx(0.4 + half))
    assert t_interval([0.5]) == {"mean": 0.5, "lo": 0.5, "hi": 0.5, "n": 1, "sd": 0.0}
    with pytest.raises(ValueError):
        t_interval([])


def _run(arm, seed, step, final):
    metrics = {key: 0.0 for key, _ in HEADLINE} | {"cruxeval.final_acc": 0.0, "cruxeval.step_acc": 0.0}
    metrics |= {"heldout.step_acc": step, "heldout.final_acc": final, "heldout.gap": final - step,
                "heldout.wrong_logic": max(final - step, 0.0), "heldout.output.final_acc": final,
                "heldout.output.step_acc": step, "heldout.input.final_acc": final / 2, "heldout.input.step_acc": step / 2}
    return {"arm": arm, "seed": seed, "mode": None if arm == "sft" else arm, "lam": None, "phase": "final",
            "lr": None if arm == "sft" else 3e-4, "metrics": metrics,
            "history": {} if arm == "sft" else {"train.reward": [(1, step), (2, step + 1)]},
            "grpo_steps": 0 if arm == "sft" else 2, "grpo_seconds": 1.0, "grpo_tokens": 10.0, "seconds": 1.0}


def _runs():
    return ([_run("sft", None, 0.10, 0.2)] + [_run("terminal", s, v, 0.5) for s, v in enumerate((0.20, 0.21, 0.22))]
            + [_run("step", s, v, 0.5) for s, v in enumerate((0.30, 0.35, 0.25))]
            + [_run("bilevel", s, v, 0.5) for s, v in enumerate((0.50, 0.51, 0.52))])


def test_ordering_says_which_intervals_separate():
    stats = arm_stats(_runs())
    assert set(stats) == set(ARMS)
    assert set(stats["step"]) >= {"heldout.step_acc", "heldout.input.final_acc", "cruxeval.step_acc"}   # every metric
    order = ordering(stats, "heldout.step_acc")
    # bilevel [0.485, 0.535] is above step's [0.176, 0.424]; step overlaps terminal [0.185, 0.235]; terminal above sft
    assert order == [("bilevel", True), ("step", False), ("terminal", True), ("sft", False)]
    # sweep runs never enter the per-arm statistics
    assert arm_stats(_runs() + [{**_run("step", 0, 0.9, 0.9), "phase": "sweep"}]) == stats


def _results(runs):
    return {"variant": "full", "profile": "p", "model_size": "tiny", "seeds": [0, 1, 2], "budget_minutes": 60,
            "lam": 0.3, "plan": {"grpo_steps": 2, "estimated_minutes": 50.0, "capped_by": "budget", "sweep_runs": 6,
                                 "sweep_steps": 5, "minutes": {"sft": 10.0, "sweep": 5.0, "evaluation": 15.0,
                                                               "grpo": 20.0}},
            "data": {"sft_rows": 10, "rl_rows": 10, "validation_rows": 4, "validation_programs": 2, "heldout_rows": 5,
                     "tasks": ["output", "input"], "sources": ["synth"], "max_anchors": 4, "max_prompt_chars": 600},
            "grpo": {"num_generations": 4, "batch_size": 8, "max_completion_length": 200, "learning_rate": 1e-4},
            "sft_settings": {"batch_size": 8, "learning_rate": 2e-3},
            "sft": {"steps": 400, "seconds": 900.0, "tokens": 1e6},
            "validation": {"programs": 2, "rows": 4, "rows_evaluated": 4},
            "sweep": [{"arm": "terminal", "lr": 1e-4, "steps": 5, "val_step_acc": 0.2, "val_final_acc": 0.1,
                       "run_id": "r1"},
                      {"arm": "terminal", "lr": 3e-4, "steps": 5, "val_step_acc": 0.3, "val_final_acc": 0.2,
                       "run_id": "r2"}],
            "chosen_lr": {"terminal": 3e-4, "step": 3e-4, "bilevel": 3e-4},
            "eval": {"heldout_rows": 60, "cruxeval_problems": 30, "samples": 2, "temperature": 1.0},
            "compute": {"machine": "cpu", "device": "cpu", "workers": 2, "torch_threads": 1, "wall_minutes": 55.0,
                        "sft_minutes": 15.0, "sweep_minutes": 5.0, "arms_minutes": 35.0, "grpo_tokens_per_run": 1e5,
                        "grpo_minutes_per_run": 7.0},
            "choices": ["a reason"], "runs": runs, "stats": arm_stats(runs), "mlflow": {"parent_run_id": "abc"}}


def test_report_states_the_table_claims_sweep_and_compute(tmp_path):
    results = _results(_runs())
    text = render_report(results)
    # final acc 0.5 on every seed (no spread), then step acc 0.50/0.51/0.52: mean 51.0, half width 4.303 * 1 / sqrt 3;
    # gap -0.00/-0.01/-0.02: mean -1.0, the same half width; wrong logic 0 (the answer never outruns the steps)
    assert "| Bi-Level GRPO | 50.0 [50.0, 50.0] | 51.0 [48.5, 53.5] | -1.0 [-3.5, 1.5] | 0.0 [0.0, 0.0] |" in text
    assert "| SFT only | 20.0 (n=1) | 10.0 (n=1) | 10.0 (n=1) | 10.0 (n=1) |" in text
    # per task: output = the overall values, input = half of them; then CRUXEval-O
    assert "| arm | output final | output step | input final | input step | CRUXEval-O final | CRUXEval-O step |" \
        in text
    assert "| SFT only | 20.0 (n=1) | 10.0 (n=1) | 10.0 (n=1) | 5.0 (n=1) | 0.0 (n=1) | 0.0 (n=1) |" in text
    # C1: bilevel [48.5, 53.5] above step [17.6, 42.4]; step overlaps terminal [18.5, 23.5]
    assert "**C1** (Bi-Level GRPO ≥ Step-GRPO ≥ Terminal-GRPO on held-out step accuracy): **not separable at this " \
           "scale**" in text
    assert "Bi-Level GRPO > Step-GRPO (λ=0) in held-out step acc: holds (51.0 [48.5, 53.5] vs 30.0 [17.6, 42.4])" \
        in text
    assert "Step-GRPO (λ=0) > Terminal-GRPO in held-out step acc: not separable at this scale" in text
    # C2: bilevel's gap [-3.5, 1.5] is below terminal's [26.5, 31.5]; step's [7.6, 32.4] overlaps it
    assert "Bi-Level GRPO < Terminal-GRPO in held-out gap (final − step): holds" in text
    assert "**C2**" in text and "**C3** (RL improves over SFT on held-out step accuracy): **holds**" in text
    assert "Terminal-GRPO > SFT only in held-out step acc: holds (21.0 [18.5, 23.5] vs 10.0 (n=1))" in text
    assert ("Held-out step accuracy, best first: Bi-Level GRPO **>** Step-GRPO (λ=0) ≈ Terminal-GRPO **>** SFT only"
            in text)
    # the sweep: the chosen rate is marked; the intro names the chosen rates
    assert "| Terminal-GRPO | 0.0003 | 5 | 30.0 | 20.0 | ✔ | `r2` |" in text
    assert "| Terminal-GRPO | 0.0001 | 5 | 20.0 | 10.0 |  | `r1` |" in text
    assert "lr chosen per arm on the validation split (Terminal-GRPO 0.0003," in text
    assert "Budget: 60 min; the cost model planned 50 min (SFT 10, sweep 5, evaluation 15, main GRPO 20)" in text
    assert "Used: 55.0 min wall time: SFT 15.0 min, sweep 5.0 min, main runs and evaluation 35.0 min." in text
    assert "- a reason" in text and "SFT: 400 steps" in text and "2 completions per row at temperature 1" in text
    assert "4 validation rows (2 programs carved out of RL)" in text

    from stepcode.pipeline.study import write_report

    readme = write_report(results, tmp_path)   # results.json, the plots, README.md
    assert {p.name for p in tmp_path.iterdir()} == {"README.md", "results.json", "metrics.png", "curves.png"}
    assert render_report(json.loads((tmp_path / "results.json").read_text())) == readme.read_text() == text


# --- the micro study, end to end ------------------------------------------------------------------------------------

def test_prepare_data_filters_the_built_dataset(tmp_path):
    data = tmp_path / "dataset"
    data.mkdir()
    rl = [rl_row(xs, k) for xs, k in CASES] + [rl_row([7], 7, task="input"), rl_row([8], 8, source="humaneval")]
    sft = [{"id": r["id"], "task": r["task"], "messages": r["prompt"], "completion": []} for r in rl]
    for name, rows in (("rl", rl), ("sft", sft), ("heldout", rl[:3])):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    params = load_params(ROOT / "params.yaml")
    params = params.model_copy(update={"study": params.study.model_copy(update={"data_dir": str(data)})})
    variant = StudyVariant(corpus="dataset", tasks=("output",), sources=("synth",), max_anchors=10,
                           validation_programs=2)

    from stepcode.pipeline.study import prepare_data

    got = prepare_data(params, variant, tmp_path / "work")
    assert (got["sft_rows"], got["rl_rows"], got["validation_rows"], got["validation_programs"],
            got["heldout_rows"]) == (len(CASES), len(CASES) - 2, 2, 2, 3)

    def ids(name):
        return [json.loads(line)["id"] for line in Path(got["paths"][name]).read_text().splitlines()]

    assert ids("sft") == [r["id"] for r in rl[:len(CASES)]]
    # the validation programs leave rl.jsonl: the kept RL rows are split in two, disjoint, by validation_split
    expected_rl, expected_validation = validation_split(rl[:len(CASES)], 2)
    assert ids("validation") == [r["id"] for r in expected_validation]
    assert ids("rl") == [r["id"] for r in expected_rl] and not set(ids("rl")) & set(ids("validation"))
    with pytest.raises(ValueError, match="no RL program"):
        prepare_data(params, variant.model_copy(update={"validation_programs": len(CASES)}), tmp_path / "work")


def test_basic_corpus_is_traced_built_and_reused(tmp_path):
    from stepcode.pipeline.study import build_own_dataset

    params = load_params(ROOT / "params.yaml")
    variant = StudyVariant(corpus="basic", corpus_programs=40, corpus_seed=5, reasoning="none")
    out = build_own_dataset(params, variant, tmp_path)
    built = json.loads((tmp_path / "basic" / "corpus.json").read_text())["build"]
    assert built["rows_in"] == 40 and built["rows_kept"] >= 38 and built["sources"] == {"synth-basic": built["rows_kept"]}
    first = json.loads((out / "sft.jsonl").read_text().splitlines()[0])
    assert first["completion"][0]["content"].startswith("<reasoning></reasoning>")   # the variant's reasoning
    stamp = (out / "sft.jsonl").stat().st_mtime_ns
    assert build_own_dataset(params, variant, tmp_path) == out and (out / "sft.jsonl").stat().st_mtime_ns == stamp
    build_own_dataset(params, variant.model_copy(update={"reasoning": "template"}), tmp_path)   # settings changed
    assert "Step 1 of" in json.loads((out / "sft.jsonl").read_text().splitlines()[0])["completion"][0]["content"]


@pytest.mark.slow
def test_micro_study_end_to_end(tmp_path, mlflow_store):
    crux = ROOT / "data" / "benchmarks" / "cruxeval" / "cruxeval.jsonl"
    params = load_params(ROOT / "params.yaml")
    params = params.model_copy(update={
        "study": params.study.model_copy(update={"work_dir": str(tmp_path / "work")}),
        "evaluate": params.evaluate.model_copy(update={"cruxeval_path": str(crux)})})

    from stepcode.pipeline.study import run_study

    out = tmp_path / "report"
    results = run_study(params, "micro", out_dir=out, echo=lambda *_: None)

    assert {p.name for p in out.iterdir()} >= {"README.md", "results.json", "metrics.png", "curves.png"}
    saved = json.loads((out / "results.json").read_text())
    assert sorted((r["arm"], r["seed"]) for r in saved["runs"]) == sorted(
        [("sft", None)] + [(a, s) for a in ("terminal", "step", "bilevel") for s in (0, 1)])
    steps = params.train.get("micro").grpo.max_steps
    assert all(r["grpo_steps"] == steps for r in saved["runs"] if r["arm"] != "sft")   # equal compute
    assert all(len(r["history"]["train.reward"]) == steps for r in saved["runs"] if r["arm"] != "sft")

    # the sweep: every arm at every rate for sweep_steps steps, judged on validation; each arm's runs at its choice
    variant = params.study.variants["micro"]
    assert sorted((e["arm"], e["lr"], e["steps"]) for e in saved["sweep"]) == sorted(
        (a, lr, variant.sweep_steps) for a in ("terminal", "step", "bilevel") for lr in variant.lr_sweep)
    assert saved["chosen_lr"] == choose_lr(saved["sweep"]) and set(saved["chosen_lr"]) == {"terminal", "step",
                                                                                           "bilevel"}
    assert all(r["lr"] == saved["chosen_lr"][r["arm"]] for r in saved["runs"] if r["arm"] != "sft")
    work = tmp_path / "work" / "micro"
    validation = {json.loads(line)["id"] for line in (work / "validation.jsonl").read_text().splitlines()}
    rl_ids = {json.loads(line)["id"] for line in (work / "rl.jsonl").read_text().splitlines()}
    assert len({i.split("#")[0] for i in validation}) == variant.validation_programs and not validation & rl_ids

    # sampled evaluation next to the greedy one, both tasks, for every model
    for r in saved["runs"]:
        m = r["metrics"]
        assert m["heldout.sampled.k"] == variant.samples and 0 <= m["heldout.sampled.pass_at_k"] <= 1
        assert {"heldout.wrong_logic", "heldout.output.step_acc", "heldout.input.step_acc"} <= set(m)
    readme = (out / "README.md").read_text()
    assert "## Headline" in readme and "## Claims" in readme and "**C3**" in readme
    assert "## Learning-rate sweep" in readme and "sampled pass@k" in readme

    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    parent = client.get_run(results["mlflow"]["parent_run_id"])
    assert parent.info.run_name == "ablation" and parent.data.tags["seeds"] == "2"
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    finals = [c for c in children if c.data.tags["phase"] == "final"]
    got = sorted((c.data.params["arm"], c.data.params["seed"], c.data.params["mode"], c.data.params["lam"])
                 for c in finals)
    assert got == sorted([("sft", "-", "sft-only", "-")]
                         + [(arm, str(s), arm, lam) for arm, lam in (("terminal", "0.0"), ("step", "0.0"),
                                                                    ("bilevel", "0.3")) for s in (0, 1)])
    bilevel = next(c for c in finals if c.data.params["arm"] == "bilevel")
    assert "heldout.step_acc" in bilevel.data.metrics and "heldout.sampled.pass_at_k" in bilevel.data.metrics
    assert len(client.get_metric_history(bilevel.info.run_id, "train.reward")) == steps
    # every number in results.json is a logged metric: the sweep's from its runs tagged phase=sweep
    sweeps = {c.info.run_id: c for c in children if c.data.tags["phase"] == "sweep"}
    assert len(sweeps) == len(saved["sweep"]) == 3 * len(variant.lr_sweep)
    for e in saved["sweep"]:
        logged = sweeps[e["run_id"]].data
        assert float(logged.params["lr"]) == e["lr"] and logged.params["seed"] == "0"
        assert logged.metrics["validation.step_acc"] == e["val_step_acc"]
    run = next(r for r in saved["runs"] if r["arm"] == "step")
    assert client.get_run(run["run_id"]).data.metrics["heldout.sampled.step_acc"] == run["metrics"][
        "heldout.sampled.step_acc"]


def test_cli_names_the_variant_and_refuses_cuda_without_a_gpu(tmp_path):
    import torch
    from typer.testing import CliRunner

    from stepcode.cli import app

    def study(*args):
        return CliRunner().invoke(app, ["study", "ablation", "--params", str(ROOT / "params.yaml"),
                                        "-o", str(tmp_path / "report"), *args])

    r = study("--variant", "nope")
    assert r.exit_code == 2 and "unknown study variant 'nope'" in r.stderr and "full, gpu, micro" in r.stderr
    r = study("--micro", "--variant", "gpu")
    assert r.exit_code == 2 and "--micro is --variant micro" in r.stderr
    r = study("--micro", "--device", "tpu")
    assert r.exit_code == 2 and "--device must be cpu or cuda" in r.stderr
    if not torch.cuda.is_available():
        r = study("--micro", "--device", "cuda")
        assert r.exit_code == 2 and "torch.cuda.is_available() is False" in r.stderr
        assert [line for line in r.stderr.splitlines() if line.strip()] == [
            "error: --device cuda: torch.cuda.is_available() is False on this machine; use --device cpu"]
        assert not (tmp_path / "report").exists()    # refused before any work
