"""The ablation study: its pure pieces against hand-computed values, and the micro study end to end for real (micro
model, real SFT/GRPO/evaluation processes, a real MLflow store)."""

import json
import math
from pathlib import Path

import pytest

from stepcode.config import StudyVariant, load_params
from stepcode.pipeline.study import (
    ARMS,
    HEADLINE,
    arm_stats,
    curve_means,
    ordering,
    plan_steps,
    render_report,
    select_rows,
    t_interval,
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
    v = StudyVariant(max_anchors=3, max_prompt_chars=limit)
    assert select_rows(rows, v) == [short]
    assert len(select_rows(rows, StudyVariant(max_anchors=4, max_prompt_chars=10_000))) == 3
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
    return {"arm": arm, "seed": seed, "mode": None if arm == "sft" else arm, "lam": None,
            "metrics": {key: 0.0 for key, _ in HEADLINE} | {"heldout.step_acc": step, "heldout.final_acc": final,
                                                           "heldout.gap": final - step},
            "history": {} if arm == "sft" else {"train.reward": [(1, step), (2, step + 1)]},
            "grpo_steps": 0 if arm == "sft" else 2, "grpo_seconds": 1.0, "grpo_tokens": 10.0, "seconds": 1.0}


def _runs():
    return ([_run("sft", None, 0.10, 0.2)] + [_run("terminal", s, v, 0.5) for s, v in enumerate((0.20, 0.21, 0.22))]
            + [_run("step", s, v, 0.5) for s, v in enumerate((0.30, 0.35, 0.25))]
            + [_run("bilevel", s, v, 0.5) for s, v in enumerate((0.50, 0.51, 0.52))])


def test_ordering_says_which_intervals_separate():
    stats = arm_stats(_runs())
    assert set(stats) == set(ARMS)
    order = ordering(stats, "heldout.step_acc")
    # bilevel [0.485, 0.535] is above step's [0.176, 0.424]; step overlaps terminal [0.185, 0.235]; terminal above sft
    assert order == [("bilevel", True), ("step", False), ("terminal", True), ("sft", False)]
    means = curve_means(_runs(), "train.reward")
    assert means["step"] == [(1, pytest.approx(0.30)), (2, pytest.approx(1.30))] and "sft" not in means


def test_report_states_ordering_separation_and_compute():
    runs = _runs()
    results = {"variant": "full", "profile": "p", "model_size": "tiny", "seeds": [0, 1, 2], "budget_minutes": 60,
               "lam": 0.3, "plan": {"grpo_steps": 2, "estimated_minutes": 50.0, "capped_by": "budget"},
               "data": {"sft_rows": 10, "rl_rows": 10, "heldout_rows": 5, "tasks": ["output"], "sources": ["synth"],
                        "max_anchors": 4, "max_prompt_chars": 600},
               "grpo": {"num_generations": 4, "batch_size": 8, "max_completion_length": 200, "learning_rate": 1e-4},
               "sft_settings": {"batch_size": 8, "learning_rate": 2e-3},
               "sft": {"steps": 400, "seconds": 900.0, "tokens": 1e6},
               "eval": {"heldout_rows": 60, "cruxeval_problems": 30},
               "compute": {"machine": "cpu", "workers": 2, "torch_threads": 1, "wall_minutes": 55.0,
                           "sft_minutes": 15.0, "arms_minutes": 40.0, "grpo_tokens_per_run": 1e5,
                           "grpo_minutes_per_run": 7.0},
               "choices": ["a reason"], "runs": runs, "stats": arm_stats(runs), "mlflow": {"parent_run_id": "abc"}}
    text = render_report(results)
    # final acc 0.5 on every seed (no spread), then step acc 0.50/0.51/0.52: mean 51.0, half width 4.303 * 1 / sqrt 3
    assert "| Bi-Level GRPO | 50.0 [50.0, 50.0] | 51.0 [48.5, 53.5] |" in text
    assert "| SFT only | 20.0 (n=1) | 10.0 (n=1) |" in text
    assert ("Held-out step accuracy, best first: Bi-Level GRPO **>** Step-GRPO (λ=0) ≈ Terminal-GRPO **>** SFT only"
            in text)
    assert "Bi-Level GRPO > Step-GRPO (λ=0) in held-out step accuracy: holds (intervals separate)" in text
    assert "Step-GRPO (λ=0) > Terminal-GRPO in held-out step accuracy: same direction, intervals overlap" in text
    assert "Wall time: SFT 15.0 min + arms 40.0 min;" in text and "- a reason" in text and "SFT: 400 steps" in text


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
    variant = StudyVariant(corpus="dataset", tasks=("output",), sources=("synth",), max_anchors=10)

    from stepcode.pipeline.study import prepare_data

    got = prepare_data(params, variant, tmp_path / "work")
    assert (got["sft_rows"], got["rl_rows"], got["heldout_rows"]) == (len(CASES), len(CASES), 3)
    kept = [json.loads(line)["id"] for line in Path(got["paths"]["sft"]).read_text().splitlines()]
    assert kept == [r["id"] for r in rl[:len(CASES)]]


def test_basic_corpus_is_traced_built_and_reused(tmp_path):
    from stepcode.pipeline.study import build_basic_dataset

    params = load_params(ROOT / "params.yaml")
    variant = StudyVariant(corpus="basic", corpus_programs=40, corpus_seed=5, reasoning="none")
    out = build_basic_dataset(params, variant, tmp_path)
    built = json.loads((tmp_path / "basic" / "corpus.json").read_text())["build"]
    assert built["rows_in"] == 40 and built["rows_kept"] >= 38 and built["sources"] == {"synth-basic": built["rows_kept"]}
    first = json.loads((out / "sft.jsonl").read_text().splitlines()[0])
    assert first["completion"][0]["content"].startswith("<reasoning></reasoning>")   # the variant's reasoning
    stamp = (out / "sft.jsonl").stat().st_mtime_ns
    assert build_basic_dataset(params, variant, tmp_path) == out and (out / "sft.jsonl").stat().st_mtime_ns == stamp
    build_basic_dataset(params, variant.model_copy(update={"reasoning": "template"}), tmp_path)   # settings changed
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
    assert "## Headline" in (out / "README.md").read_text()

    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    parent = client.get_run(results["mlflow"]["parent_run_id"])
    assert parent.info.run_name == "ablation" and parent.data.tags["seeds"] == "2"
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    got = sorted((c.data.params["arm"], c.data.params["seed"], c.data.params["mode"], c.data.params["lam"])
                 for c in children)
    assert got == sorted([("sft", "-", "sft-only", "-")]
                         + [(arm, str(s), arm, lam) for arm, lam in (("terminal", "0.0"), ("step", "0.0"),
                                                                    ("bilevel", "0.3")) for s in (0, 1)])
    bilevel = next(c for c in children if c.data.params["arm"] == "bilevel")
    assert "heldout.step_acc" in bilevel.data.metrics
    assert len(client.get_metric_history(bilevel.info.run_id, "train.reward")) == steps
