"""The paper's ablation at toy scale: SFT only vs Terminal-, Step- and Bi-Level GRPO from one SFT checkpoint, each
GRPO arm at the learning rate a validation sweep chose for it, several seeds, and the paper's claims checked against
95% intervals.

    stepcode study ablation [--variant full|micro|gpu|...] [--micro] [--seeds 3] [--budget-minutes 150]
                            [--device cpu|cuda]
    from stepcode.pipeline.study import run_study
    results = run_study(load_params(), variant="full")       # writes reports/ablation/{README.md, results.json, *.png}

What runs, in order (every arm goes through exactly the same procedure; the only per-arm choice is its learning rate,
and that is made the same way for each arm, on data no result is reported on):
1. data: the variant's corpus — the built dataset (study.data_dir), or its own programs (`SYNTHESIZERS`: corpus basic
   or logic), traced in the sandbox and built by `stepcode.data.dataset.build_dataset` — filtered to the variant's
   tasks, sources, anchor count and prompt length (`select_rows`). SFT, RL and held-out rows come from disjoint
   programs (the builder's sha256 split); `validation_split` carves `validation_programs` programs (both tasks of
   each) out of the RL rows as the validation split. The held-out split is the test set: nothing is chosen on it.
2. one tiny model (tokenizer trained on the filtered SFT rows) and ONE SFT warm start (the profile's sft settings),
   reused by a rerun when its settings and data are unchanged;
3. learning-rate sweep (`lr_sweep`, empty = none): per GRPO arm (terminal, step with lambda = 0, bilevel with lambda =
   study.lam) and per rate, GRPO from the SFT checkpoint with seed 0 for `sweep_steps` steps (0: the main runs'
   steps, and then each arm's sweep run at its chosen rate is also its seed-0 main run), then greedy evaluation
   on the validation rows; `choose_lr` keeps per arm the rate with the best validation step accuracy (ties: final
   accuracy, then the smaller rate);
4. main runs: per arm x seed, GRPO from the SFT checkpoint at the arm's chosen rate, the same steps, G, batch and
   completion length for all; the number of GRPO steps is planned from the budget by a fixed cost model
   (`plan_steps`, which counts the sweep and the sampled evaluation too), never by the clock, so a slow machine makes
   the study late, not unequal;
5. each model (and the SFT checkpoint once) is evaluated on the first heldout_limit held-out rows of both tasks:
   greedy (final / step accuracy, gap, "right answer, wrong logic" rate) and, with `samples` = k > 0, k completions
   per row at the rollout temperature (pass@k, sampled accuracies; `stepcode.evals.heldout.evaluate_heldout`); and
   greedily on the first cruxeval_limit CRUXEval problems in the StepCode format (out-of-distribution);
6. per arm: mean over seeds with a 95% t-interval (`t_interval`); the paper's claims C1-C3 checked against those
   intervals (`check_claims`); the report (`render_report`, from results.json alone, with the variant's entries of
   the lab notebook `choices.yaml` in the report folder), plots (`plot_results`), and MLflow
   (`stepcode.tracking.lineage`): a parent run "ablation" with one nested run per sweep run (tag phase=sweep) and per
   arm x seed (phase=final): params arm, seed, mode, lam, lr; eval metrics; training curves as step metrics. Every
   number in results.json is one of those logged metrics.
Runs go through one pool of `workers` spawned processes (the SFT-only evaluation overlaps the sweep); MLflow is
written by this process only. `--device cuda` trains on the GPU (`device_profile`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from stepcode.data.dataset import program_key
from stepcode.errors import MissingInput
from stepcode.training.modes import MODES

# The lab notebook (why each variant's settings are what they are), keyed by variant, in the report folder; it goes
# into results.json's "choices" and the report's "Data and choices".
CHOICES_FILE = "choices.yaml"
ARM_LABELS = {"sft": "SFT only", **{name: mode.label for name, mode in MODES.items()}}   # SFT, then a GRPO arm per mode
ARMS = tuple(ARM_LABELS)
GRPO_ARMS = tuple(MODES)
# The headline table, the paper's Table 6 analogue, in order, with how its columns read. Keys are evaluate_heldout's.
HEADLINE = (("heldout.final_acc", "final acc"), ("heldout.step_acc", "step acc"),
            ("heldout.gap", "gap (final − step)"), ("heldout.wrong_logic", "right answer, wrong logic"),
            ("heldout.sampled.pass_at_k", "sampled pass@k"), ("heldout.sampled.final_acc", "sampled final acc"),
            ("heldout.sampled.step_acc", "sampled step acc"),
            ("heldout.sampled.wrong_logic", "sampled right answer, wrong logic"),
            ("heldout.completion_tokens", "completion tokens"))
TASK_METRICS = (("final_acc", "final"), ("step_acc", "step"))      # per task: heldout.<task>.<metric>
CRUXEVAL = (("cruxeval.final_acc", "CRUXEval-O final"), ("cruxeval.step_acc", "CRUXEval-O step"))
# Training-curve keys from TRL's log history -> the names they get in results.json and MLflow.
CURVES = {"reward": "train.reward", "stepcode/final_accuracy": "train.final_accuracy",
          "stepcode/step_accuracy": "train.step_accuracy", "completions/mean_length": "train.completion_length"}
HOLDS, FAILS, UNCLEAR = "holds", "does not hold", "not separable at this scale"
# The paper's claims: (id, statement, checks); a check (better, worse, metric, smaller_is_better) claims that arm
# `better` beats arm `worse` on the held-out metric, in the stated direction.
CLAIMS = (
    ("C1", "Bi-Level GRPO ≥ Step-GRPO ≥ Terminal-GRPO on held-out step accuracy",
     (("bilevel", "step", "heldout.step_acc", False), ("step", "terminal", "heldout.step_acc", False))),
    ("C2", "step-level rewards narrow the step/final gap and reduce \"right answer, wrong logic\"",
     (("step", "terminal", "heldout.gap", True), ("bilevel", "terminal", "heldout.gap", True),
      ("step", "terminal", "heldout.wrong_logic", True), ("bilevel", "terminal", "heldout.wrong_logic", True))),
    ("C3", "RL improves over SFT on held-out step accuracy",
     tuple((arm, "sft", "heldout.step_acc", False) for arm in GRPO_ARMS)),
)


@dataclass(frozen=True)
class Job:
    """One run: a sweep run (arm x lr, judged on validation) or a final run (arm x seed, or SFT only, evaluated on the
    held-out rows and CRUXEval-O). Plain data, so it crosses process boundaries."""
    arm: str
    seed: int | None          # None for SFT only (one evaluation of one checkpoint)
    mode: str | None          # GRPO mode; None for SFT only
    lam: float | None
    sft_model: str
    out_dir: str
    phase: str = "final"      # "sweep" or "final" (the MLflow tag)
    lr: float | None = None   # GRPO learning rate; None for SFT only
    steps: int = 0            # GRPO steps
    reuse: str | None = None  # a final run whose model is its sweep run's (same arm, seed 0, rate and steps)

    @property
    def name(self) -> str:
        if self.mode is None:
            return self.arm
        return f"sweep-{self.arm}-lr{self.lr:g}" if self.phase == "sweep" else f"{self.arm}-seed{self.seed}"


# --- pure logic -------------------------------------------------------------------------------------------------

def select_rows(rows: list[dict], variant) -> list[dict]:
    """RL / held-out rows the variant keeps: its tasks and sources, at most max_anchors gold lines, short prompts."""
    kept = []
    for i, r in enumerate(rows):
        missing = [k for k in ("id", "task", "prompt", "gold_trace") if k not in r]
        if missing:
            raise ValueError(f"row {i + 1} ({r.get('id')!r}) lacks {missing}")
        prompt_chars = sum(len(m["content"]) for m in r["prompt"] if m["role"] == "user")
        if (r["task"] in variant.tasks and r.get("source", "synth") in variant.sources
                and len(r["gold_trace"]) <= variant.max_anchors and prompt_chars <= variant.max_prompt_chars):
            kept.append(r)
    return kept


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def validation_split(rows: list[dict], programs: int) -> tuple[list[dict], list[dict]]:
    """(rl, validation): the `programs` programs of `rows` whose sha256(program id) comes first go to validation, with
    all their rows (both tasks, every input: a program is the id before any '#'), the rest stay RL; order kept.

    sha256, not a random draw: the same rows give the same split on any machine and any rerun, and a program never
    straddles RL and validation, so the learning rate is chosen on programs GRPO never trained on."""
    keys = sorted({program_key(r["id"]) for r in rows}, key=lambda k: (_digest(k), k))
    if programs > 0 and programs >= len(keys):
        raise ValueError(f"validation_programs={programs} would leave no RL program (the filtered RL rows have "
                         f"{len(keys)}): lower study.variants' validation_programs")
    chosen = set(keys[:programs])
    return ([r for r in rows if program_key(r["id"]) not in chosen],
            [r for r in rows if program_key(r["id"]) in chosen])


def plan_steps(variant, profile, seeds: int, budget_minutes: float) -> dict:
    """GRPO steps per main run that fit the budget under the variant's cost model, capped by the profile's
    grpo.max_steps. The cost model (seconds per SFT step, per GRPO step of one run, per evaluated completion) counts,
    with all runs sharing `workers` processes in rounds:
    - SFT: sft.max_steps steps, once;
    - the sweep: arms x len(lr_sweep) runs of sweep_steps GRPO steps, each followed by a greedy evaluation of
      min(validation_limit, validation_programs x tasks) validation rows;
    - evaluation: the arms x seeds models and SFT, each on heldout_limit rows x (1 greedy + `samples` sampled
      completions) plus cruxeval_limit problems;
    - the main GRPO runs, arms x seeds: what is left.

    Deterministic: the same inputs give the same steps on any machine (no clock). Raises when the budget leaves no
    GRPO step."""
    w = variant.workers
    sft_s = max(profile.sft.max_steps, 0) * variant.sft_step_s
    sweep_runs = len(GRPO_ARMS) * len(variant.lr_sweep)
    reuse = bool(sweep_runs) and variant.sweep_steps == 0   # sweep runs at the main horizon: seed 0 is reused
    validation_rows = min(variant.validation_limit, variant.validation_programs * len(variant.tasks))
    runs = len(GRPO_ARMS) * (seeds - 1 if reuse else seeds)   # main GRPO runs to train
    evals = len(GRPO_ARMS) * seeds + 1                        # every arm x seed and SFT only
    completions = variant.heldout_limit * (1 + variant.samples) + variant.cruxeval_limit   # per evaluated model
    eval_s = math.ceil(evals / w) * completions * variant.eval_row_s
    if reuse:   # every trained run has the same steps: solve the steps for all of them together
        fixed_sweep_s = math.ceil(sweep_runs / w) * validation_rows * variant.eval_row_s   # its evaluations
        rounds = math.ceil((sweep_runs + runs) / w)
    else:
        fixed_sweep_s = math.ceil(sweep_runs / w) * (variant.sweep_steps * variant.grpo_step_s
                                                     + validation_rows * variant.eval_row_s)
        rounds = math.ceil(runs / w)               # main GRPO runs one after another in each worker
    left = budget_minutes * 60 - sft_s - fixed_sweep_s - eval_s
    affordable = math.floor(left / (rounds * variant.grpo_step_s)) if left > 0 and rounds else 0
    cap = profile.grpo.max_steps if profile.grpo.max_steps > 0 else affordable
    steps = min(cap, affordable)
    sweep_steps = steps if reuse else variant.sweep_steps
    sweep_s = math.ceil(sweep_runs / w) * (sweep_steps * variant.grpo_step_s + validation_rows * variant.eval_row_s)
    if steps < 1:
        raise ValueError(f"a budget of {budget_minutes:g} min leaves no GRPO step: SFT takes ~{sft_s / 60:.1f} min, "
                         f"the learning-rate sweep ~{fixed_sweep_s / 60:.1f} min"
                         + (" (its evaluations)" if reuse else "")
                         + f" and evaluation ~{eval_s / 60:.1f} min under the cost model; raise --budget-minutes")
    grpo_s = (rounds * steps * variant.grpo_step_s - (math.ceil(sweep_runs / w) * steps * variant.grpo_step_s
                                                      if reuse else 0))
    return {"grpo_steps": steps, "grpo_runs": runs, "evaluations": evals, "sweep_runs": sweep_runs,
            "sweep_steps": sweep_steps if sweep_runs else 0, "sweep_reused": reuse,
            "completions_per_evaluation": completions,
            "estimated_minutes": round((sft_s + sweep_s + eval_s + grpo_s) / 60, 1),
            "minutes": {"sft": round(sft_s / 60, 1), "sweep": round(sweep_s / 60, 1),
                        "evaluation": round(eval_s / 60, 1), "grpo": round(grpo_s / 60, 1)},
            "capped_by": "profile" if steps == cap and cap < affordable else "budget"}


def choose_lr(sweep: list[dict]) -> dict[str, float]:
    """arm -> the swept learning rate with the best validation step accuracy; ties go to the better validation final
    accuracy, then to the smaller rate (the more conservative update). The same rule for every arm."""
    best: dict[str, tuple] = {}
    for e in sweep:
        key = (e["val_step_acc"], e["val_final_acc"], -e["lr"])
        if e["arm"] not in best or key > best[e["arm"]][0]:
            best[e["arm"]] = (key, e["lr"])
    return {arm: best[arm][1] for arm in ARMS if arm in best}


# Two-sided 95% Student t quantiles t_{0.975, df}; beyond 30 the normal 1.96 is within 2%.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}


def t_quantile(df: int) -> float:
    if df < 1:
        raise ValueError(f"a t-interval needs at least 2 values (df >= 1), got df={df}")
    if df in _T975:
        return _T975[df]
    below = max(k for k in _T975 if k <= df) if df <= 30 else None
    return _T975[below] if below is not None else 1.96


def t_interval(values: list[float]) -> dict:
    """Mean and 95% t-interval; one value gives lo = hi = mean (no interval: nothing varied)."""
    if not values:
        raise ValueError("no values to summarise")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return {"mean": mean, "lo": mean, "hi": mean, "n": 1, "sd": 0.0}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n, "sd": sd}


def arm_stats(runs: list[dict]) -> dict[str, dict[str, dict]]:
    """arm -> metric -> t_interval over that arm's final runs (seeds), for every metric all of them logged: the
    report picks its columns, and a re-render can show another metric without re-running anything."""
    stats: dict[str, dict[str, dict]] = {}
    for arm in ARMS:
        mine = [r for r in runs if r["arm"] == arm and r.get("phase", "final") == "final"]
        if mine:
            keys = sorted(set.intersection(*(set(r["metrics"]) for r in mine)))
            stats[arm] = {key: t_interval([r["metrics"][key] for r in mine]) for key in keys}
    return stats


def ordering(stats: dict, metric: str) -> list[tuple[str, bool]]:
    """Arms best first by the metric's mean (ties in ARMS order, whatever order `stats` has: results.json sorts
    its keys); each with whether its interval lies wholly above the next arm's."""
    arms = sorted((a for a in ARMS if metric in stats.get(a, {})), key=lambda a: -stats[a][metric]["mean"])
    return [(a, i + 1 < len(arms) and stats[a][metric]["lo"] > stats[arms[i + 1]][metric]["hi"])
            for i, a in enumerate(arms)]


def verdict(better: dict, worse: dict, smaller_is_better: bool = False) -> str:
    """Whether `better` beats `worse` (two t_interval summaries) in the claimed direction: HOLDS when their 95%
    intervals separate that way, FAILS when they separate the other way, else UNCLEAR. A single value (SFT only,
    n=1) is an interval of width 0, so against an arm it holds exactly when the value lies outside the arm's interval
    on the claimed side. Two single values have no interval at all: UNCLEAR, whatever their difference."""
    if better["n"] == 1 and worse["n"] == 1:
        return UNCLEAR
    lo, hi = (better, worse) if smaller_is_better else (worse, better)   # claimed: lo's interval below hi's
    if lo["hi"] < hi["lo"]:
        return HOLDS
    if hi["hi"] < lo["lo"]:
        return FAILS
    return UNCLEAR


def check_claims(stats: dict) -> list[dict]:
    """The paper's claims (`CLAIMS`) against the per-arm held-out intervals. Each claim: its checks (one per arm pair
    and metric, with both summaries as evidence and a `verdict`) and an overall verdict: FAILS when any check fails,
    HOLDS when every check holds, UNCLEAR otherwise (and when no check could be made: a metric was not measured)."""
    out = []
    for cid, text, checks in CLAIMS:
        made = []
        for better, worse, metric, smaller in checks:
            a, b = stats.get(better, {}).get(metric), stats.get(worse, {}).get(metric)
            if a is None or b is None:
                continue
            made.append({"better": better, "worse": worse, "metric": metric, "smaller_is_better": smaller,
                         "verdict": verdict(a, b, smaller), "better_stat": a, "worse_stat": b})
        verdicts = {c["verdict"] for c in made}
        overall = FAILS if FAILS in verdicts else HOLDS if verdicts == {HOLDS} else UNCLEAR
        out.append({"id": cid, "claim": text, "verdict": overall, "checks": made})
    return out


def smoothing_window(steps: int) -> int:
    """About a tenth of the steps (at least 1): smooths GRPO's per-step noise without hiding the trend."""
    return max(1, round(steps / 10))


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average: point i is the mean of values[i - window + 1 .. i] (fewer at the start), so a point
    never looks at a later step."""
    return [sum(values[max(0, i - window + 1):i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(values))]


def curve_bands(runs: list[dict], key: str, window: int | None = None) -> dict[str, dict]:
    """arm -> {"steps", "mean", "lo", "hi", "window"}: a training curve smoothed per seed (`smooth`, window
    `smoothing_window` of the steps unless given), then the mean and the min-max band over the arm's seeds, at the
    steps every seed logged."""
    out = {}
    for arm in ARMS:
        series = [dict(r["history"][key]) for r in runs
                  if r["arm"] == arm and r.get("phase", "final") == "final" and (r.get("history") or {}).get(key)]
        if not series:
            continue
        steps = sorted(set.intersection(*(set(s) for s in series)))
        w = window or smoothing_window(len(steps))
        smoothed = [smooth([s[x] for x in steps], w) for s in series]
        columns = list(zip(*smoothed))
        out[arm] = {"steps": steps, "mean": [sum(c) / len(c) for c in columns], "lo": [min(c) for c in columns],
                    "hi": [max(c) for c in columns], "window": w}
    return out


def device_profile(profile, device: str):
    """The training profile on `device`: cuda trains in bf16 on the GPU with torch's default threads; cpu trains in
    float32 on the CPU with the profile's threads (1 when it leaves them to torch: the arms share the cores)."""
    if device == "cuda":
        return profile.model_copy(update={"use_cpu": False, "bf16": True, "torch_threads": 0})
    if device == "cpu":
        return profile.model_copy(update={"use_cpu": True, "bf16": False, "torch_threads": profile.torch_threads or 1})
    raise ValueError(f"unknown device {device!r}; expected cpu or cuda")


def check_device(device: str) -> None:
    """Refuse cuda, in one line, where torch sees no GPU (rather than let every arm fail in its own process)."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda: torch.cuda.is_available() is False on this machine; use --device cpu")


# --- the report -------------------------------------------------------------------------------------------------

def _pct(key: str) -> bool:
    return not key.endswith("completion_tokens")


def _cell(s: dict | None, pct: bool) -> str:
    if s is None:
        return "–"
    scale = 100.0 if pct else 1.0
    if s["n"] == 1:
        return f"{s['mean'] * scale:.1f} (n=1)"
    return f"{s['mean'] * scale:.1f} [{s['lo'] * scale:.1f}, {s['hi'] * scale:.1f}]"


def _table(stats: dict, columns: list[tuple[str, str]]) -> list[str]:
    lines = ["| arm | " + " | ".join(label for _, label in columns) + " |", "|---|" + "---:|" * len(columns)]
    for arm in ARMS:
        if arm in stats:
            cells = [_cell(stats[arm].get(key), _pct(key)) for key, _ in columns]
            lines.append(f"| {ARM_LABELS[arm]} | " + " | ".join(cells) + " |")
    return lines


def task_columns(tasks: list[str]) -> list[tuple[str, str]]:
    """The per-task table's columns: final and step accuracy per task, then CRUXEval-O."""
    return [(f"heldout.{task}.{metric}", f"{task} {label}") for task in tasks for metric, label in TASK_METRICS] \
        + list(CRUXEVAL)


def _order_line(stats: dict, metric: str) -> str:
    order = ordering(stats, metric)
    if not order:
        return "–"
    parts = [ARM_LABELS[order[0][0]]]
    for (_, above), (nxt, _) in zip(order, order[1:]):
        parts.append((" **>** " if above else " ≈ ") + ARM_LABELS[nxt])
    return "".join(parts)


def _claim_lines(stats: dict) -> list[str]:
    names = dict(HEADLINE)
    lines = []
    for claim in check_claims(stats):
        lines.append(f"- **{claim['id']}** ({claim['claim']}): **{claim['verdict']}**"
                     + ("" if claim["checks"] else " (not measured)"))
        for c in claim["checks"]:
            a, b = c["better_stat"], c["worse_stat"]
            sign = "<" if c["smaller_is_better"] else ">"
            lines.append(f"  - {ARM_LABELS[c['better']]} {sign} {ARM_LABELS[c['worse']]} in held-out "
                         f"{names.get(c['metric'], c['metric'])}: {c['verdict']} "
                         f"({_cell(a, True)} vs {_cell(b, True)})")
    return lines


def _sweep_lines(results: dict) -> list[str]:
    sweep, chosen = results.get("sweep") or [], results.get("chosen_lr") or {}
    grpo = results["grpo"]
    if not sweep:
        return [f"No sweep (lr_sweep empty): every arm used the profile's learning rate {grpo['learning_rate']:g}."]
    v = results.get("validation", {})
    lines = [f"Each GRPO arm at each rate: seed 0, {sweep[0]['steps']} GRPO steps from the SFT checkpoint, then greedy "
             f"evaluation on {v.get('rows_evaluated', '?')} validation rows ({v.get('programs', '?')} RL programs "
             "carved out by sha256 of the program id, never trained on). Chosen per arm: best validation step "
             "accuracy, ties to final accuracy, then to the smaller rate. The held-out rows played no part.", "",
             "| arm | lr | steps | validation step acc | validation final acc | chosen | MLflow run |",
             "|---|---:|---:|---:|---:|:---:|---|"]
    for e in sweep:
        lines.append(f"| {ARM_LABELS[e['arm']]} | {e['lr']:g} | {e['steps']} | {e['val_step_acc'] * 100:.1f} | "
                     f"{e['val_final_acc'] * 100:.1f} | {'✔' if chosen.get(e['arm']) == e['lr'] else ''} | "
                     f"`{e.get('run_id') or '–'}` |")
    return lines


def _lr_phrase(results: dict) -> str:
    chosen = results.get("chosen_lr") or {}
    if results.get("sweep") and chosen:
        return "lr chosen per arm on the validation split (" + ", ".join(
            f"{ARM_LABELS[a]} {chosen[a]:g}" for a in ARMS if a in chosen) + ")"   # results.json sorts its keys
    return f"lr {results['grpo']['learning_rate']:g} for every arm"


def render_report(results: dict) -> str:
    """The Markdown report, from results.json alone (so it can be re-rendered without re-running anything)."""
    stats, plan, data, compute, ev = (results["stats"], results["plan"], results["data"], results["compute"],
                                      results["eval"])
    seeds = results["seeds"]
    samples = ev.get("samples", 0)
    tasks = data["tasks"]
    sft_minutes = results["sft"]["seconds"] / 60
    reused = compute["sft_minutes"] < 0.5 * sft_minutes    # the SFT summary came with a reused checkpoint
    lines = [f"# Ablation study ({results['variant']}): SFT only vs Terminal-, Step- and Bi-Level GRPO", "",
             f"One SFT warm start of the `{results['model_size']}` model (profile `{results['profile']}`), then "
             f"{len(seeds)} seed(s) ({', '.join(map(str, seeds))}) of each GRPO arm from that same checkpoint, each "
             f"with {plan['grpo_steps']} GRPO steps, G = {results['grpo']['num_generations']}, "
             f"{results['grpo']['batch_size']} completions per step, at most "
             f"{results['grpo']['max_completion_length']} completion tokens, {_lr_phrase(results)}; "
             f"λ = {results['lam']:g} for Bi-Level, 0 for Step-GRPO; Terminal-GRPO uses the final reward only. "
             f"Written by `stepcode study ablation` from `results.json` (MLflow parent run "
             f"`{results.get('mlflow', {}).get('parent_run_id') or '–'}`).", "",
             "## Headline: held-out, the paper's Table 6 (percent; mean over seeds [95% t-interval])", ""]
    lines += _table(stats, list(HEADLINE))
    sampled = (f"Sampled: {samples} completions per row at temperature {ev.get('temperature', 1.0):g} (the rollouts'); "
               "pass@k: a row counts when any of its k answers is right; sampled accuracies pool all samples. "
               if samples else "No sampled evaluation (samples = 0). ")
    lines += ["", f"Held-out: the first {ev['heldout_rows']} held-out rows (tasks {', '.join(tasks)}; "
              "in-distribution programs never trained or validated on). Greedy unless marked sampled. Gap = final − "
              "step accuracy; \"right answer, wrong logic\": share of completions whose final answer is right while "
              f"at least one step is wrong. {sampled}SFT only is one checkpoint (n=1: greedy decoding is seedless; "
              "its sampled evaluation uses seed 0).", "",
              "## Per task and CRUXEval-O (percent; greedy)", ""]
    lines += _table(stats, task_columns(tasks))
    lines += ["", f"CRUXEval-O: {ev['cruxeval_problems']} CRUXEval programs in the StepCode format "
              "(out-of-distribution, greedy). At this scale the absolute CRUXEval numbers are expected to be near "
              f"zero: a `{results['model_size']}` model trained from scratch on synthesized programs; read them as a "
              "sanity check, not as a benchmark result.", "",
              "## Claims", "",
              f"Rule: a claim **{HOLDS}** when the 95% intervals separate in the claimed direction (SFT only, n=1: "
              f"its value lies outside the arm's interval on the claimed side), **{FAILS}** when they separate the "
              f"other way, and is **{UNCLEAR}** otherwise. A claim with several checks holds when all hold and does "
              "not hold when any does not. For C2 smaller is the claimed direction, for the gap too (a gap below "
              "zero: steps right more often than answers).", ""]
    lines += _claim_lines(stats)
    lines += ["", f"- Held-out step accuracy, best first: {_order_line(stats, 'heldout.step_acc')}",
              f"- Held-out final accuracy, best first: {_order_line(stats, 'heldout.final_acc')}",
              "  (**>**: the 95% intervals separate; ≈: they overlap)", "",
              "## Learning-rate sweep", ""]
    lines += _sweep_lines(results)
    minutes = plan.get("minutes", {})
    device = compute.get("device", "cpu")
    lines += ["", "## Compute", "",
              f"- Machine: {compute['machine']}; device {device}; {compute['workers']} run processes in parallel, "
              f"{compute['torch_threads'] or 'torch default'} torch thread(s) each.",
              f"- Budget: {results['budget_minutes']:g} min; the cost model planned {plan['estimated_minutes']:g} min"
              + (f" (SFT {minutes['sft']:g}, sweep {minutes['sweep']:g}, evaluation {minutes['evaluation']:g}, "
                 f"main GRPO {minutes['grpo']:g})" if minutes else "")
              + f"; GRPO steps capped by the {plan['capped_by']}.",
              f"- Used: {compute['wall_minutes']:.1f} min wall time: SFT {compute['sft_minutes']:.1f} min"
              + (f" (reused the checkpoint of an earlier run with the same settings and data, which took "
                 f"{sft_minutes:.1f} min)" if reused else "")
              + (f", sweep {compute['sweep_minutes']:.1f} min" if "sweep_minutes" in compute else "")
              + f", main runs and evaluation {compute['arms_minutes']:.1f} min.",
              f"- SFT: {results['sft']['steps']} steps, batch {results['sft_settings']['batch_size']}, lr "
              f"{results['sft_settings']['learning_rate']:g}, {results['sft']['tokens']:.0f} tokens seen.",
              f"- Sweep: {plan.get('sweep_runs', 0)} runs of {plan.get('sweep_steps', 0)} GRPO steps.",
              f"- GRPO per arm and seed: {plan['grpo_steps']} steps; mean tokens processed per run "
              f"{compute['grpo_tokens_per_run']:.0f} (prompt + completion, TRL's num_tokens); mean "
              f"{compute['grpo_minutes_per_run']:.1f} min per run.",
              "", "## Data and choices", "",
              f"- Training data: {data.get('corpus', 'the built dataset')}; {data['sft_rows']} SFT rows, "
              f"{data['rl_rows']} RL rows, {data.get('validation_rows', 0)} validation rows "
              f"({data.get('validation_programs', 0)} programs carved out of RL), {data['heldout_rows']} held-out "
              f"rows; disjoint programs (tasks {', '.join(tasks)}; sources {', '.join(data['sources'])}; at most "
              f"{data['max_anchors']} anchors; user prompt at most {data['max_prompt_chars']} characters)."]
    lines += [f"- {c}" for c in results.get("choices", [])]
    lines += ["", "## Plots", ""]
    for name, caption in (("metrics.png", "Evaluation metrics per arm (mean, 95% interval, seeds as dots)"),
                          ("curves.png", "Training curves (moving average; line: mean over seeds, band: min-max)")):
        lines.append(f"![{caption}]({name})")
        lines.append("")
    lines += ["## Runs", "", "| arm | seed | lr | MLflow run | held-out final | held-out step | wrong logic | "
              "sampled pass@k | CRUXEval-O final | CRUXEval-O step |",
              "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]

    columns = ("heldout.final_acc", "heldout.step_acc", "heldout.wrong_logic", "heldout.sampled.pass_at_k",
               "cruxeval.final_acc", "cruxeval.step_acc")
    for r in results["runs"]:
        m, lr = r["metrics"], r.get("lr")
        cells = [f"{m[key] * 100:.1f}" if key in m else "–" for key in columns]
        lines.append(f"| {ARM_LABELS[r['arm']]} | {r['seed'] if r['seed'] is not None else '–'} | "
                     f"{'–' if lr is None else f'{lr:g}'} | `{r.get('run_id') or '–'}` | " + " | ".join(cells) + " |")
    ids = [r["run_id"] for r in results["runs"] if r.get("run_id")]
    if ids:
        lines += ["", "Compare any of them: `stepcode compare " + " ".join(ids[:4]) + " ...`"]
    return "\n".join(lines) + "\n"


def plot_results(results: dict, out_dir: str | Path) -> list[Path]:
    """metrics.png (per metric, in percent as the report: bars with 95% intervals and the seeds as dots) and
    curves.png (training curves per arm, smoothed, with the seeds' min-max band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    stats, runs = results["stats"], [r for r in results["runs"] if r.get("phase", "final") == "final"]
    arms = [a for a in ARMS if a in stats]
    panels = [(k, label) for k, label in list(HEADLINE) + task_columns(results["data"]["tasks"])
              if any(k in stats[a] for a in arms)]
    cols = 4
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.6 * rows), squeeze=False)
    for ax, (key, label) in zip(axes.flat, panels):
        for i, arm in enumerate(arms):
            s = stats[arm].get(key)
            if s is None:
                continue
            # fractions in percent, as the report writes them; token counts as they are
            scale = 1 if "tokens" in key else 100
            ax.bar(i, scale * s["mean"], color=f"C{i}", capsize=4,
                   yerr=[[scale * (s["mean"] - s["lo"])], [scale * (s["hi"] - s["mean"])]])
            seeds = [scale * r["metrics"][key] for r in runs if r["arm"] == arm and key in r["metrics"]]
            ax.plot([i] * len(seeds), seeds, "k.", alpha=0.6)
        ax.set_ylabel("tokens" if "tokens" in key else "percentage points" if key.endswith("gap") else "%",
                      fontsize=8)
        ax.set_xticks(range(len(arms)), [ARM_LABELS[a] for a in arms], rotation=20, ha="right", fontsize=8)
        ax.set_title(f"held-out {label}" if key.startswith("heldout.") else label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    metrics_png = out_dir / "metrics.png"
    fig.savefig(metrics_png, dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(CURVES), figsize=(5 * len(CURVES), 3.6), squeeze=False)
    for ax, key in zip(axes.flat, CURVES.values()):
        window = None
        for arm, band in curve_bands(runs, key).items():
            color = f"C{ARMS.index(arm)}"
            ax.plot(band["steps"], band["mean"], label=ARM_LABELS[arm], color=color)
            ax.fill_between(band["steps"], band["lo"], band["hi"], color=color, alpha=0.2, linewidth=0)
            window = band["window"]
        ax.set_title(key + (f" (moving average of {window})" if window else ""), fontsize=10)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    curves_png = out_dir / "curves.png"
    fig.savefig(curves_png, dpi=100)
    plt.close(fig)
    return [metrics_png, curves_png]


# --- the work (worker processes) ----------------------------------------------------------------------------------

def _history(log_history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {name: [] for name in CURVES.values()}
    for entry in log_history:
        for key, name in CURVES.items():
            if isinstance(entry.get(key), (int, float)) and "step" in entry:
                out[name].append((int(entry["step"]), float(entry[key])))
    return out


def _train_grpo(job: Job, rl_path: str, profile, params) -> dict:
    """GRPO from the SFT checkpoint with the trainer's public pieces, keeping the whole log history (run_grpo
    returns only its first and last entries, and the study plots the curves)."""
    from stepcode.jsonl import read_jsonl
    from stepcode.training.models import load_model, set_offline

    set_offline()
    from stepcode.training.grpo import bilevel_trainer_class, grpo_config, rl_dataset
    from stepcode.training.rewards import RewardScorer

    started = time.perf_counter()
    model, tokenizer = load_model(job.sft_model, dtype="bfloat16" if profile.bf16 else "float32")
    g = profile.grpo
    out = Path(job.out_dir) / "model"
    with RewardScorer(params, input_reference=g.input_reference, workers=g.reward_workers or None) as scorer:
        trainer = bilevel_trainer_class()(
            model=model, args=grpo_config(profile, out, job.name),
            train_dataset=rl_dataset(list(read_jsonl(rl_path))), processing_class=tokenizer, scorer=scorer,
            mode=job.mode, lam=job.lam, span=g.span, max_anchors=params.trace.max_lines)
        trainer.train()
    trainer.save_model(str(out))
    tokenizer.save_pretrained(str(out))
    logs = trainer.state.log_history
    tokens = max((e.get("num_tokens", 0) for e in logs), default=0)
    return {"model": str(out), "steps": trainer.state.global_step, "seconds": time.perf_counter() - started,
            "tokens": float(tokens), "history": _history(logs)}


def _evaluate(model: str, job: Job, paths: dict, variant, params, profile) -> dict[str, float]:
    """A sweep run: greedy on the validation rows (`validation.*`). A final run: greedy and sampled on the held-out
    rows (every `heldout.*` metric of evaluate_heldout, per task too), and greedy CRUXEval-O."""
    from stepcode.evals.generate import evaluate as evaluate_benchmarks
    from stepcode.evals.generate import load_backend
    from stepcode.evals.heldout import evaluate_heldout

    backend = load_backend(model)
    if job.phase == "sweep":
        m, _ = evaluate_heldout(model, paths["validation"], params, limit=variant.validation_limit, backend=backend,
                                progress=False, prefix="validation")
        return dict(m)
    m, _ = evaluate_heldout(model, paths["heldout"], params, limit=variant.heldout_limit, backend=backend,
                            progress=False, samples=variant.samples, temperature=profile.grpo.temperature)
    bench = evaluate_benchmarks(model, ["cruxeval"], params, out_dir=Path(job.out_dir) / "cruxeval",
                                limit=variant.cruxeval_limit, prompt="stepcode", backend=backend,
                                tasks=("output",))
    final = bench.get("stepcode_cruxeval_output_greedy_pass_at_1", 0.0) / 100.0   # percent -> fraction
    step = bench.get("stepcode_cruxeval_output_greedy_step_accuracy", 0.0) / 100.0
    return {**m, "cruxeval.final_acc": final, "cruxeval.step_acc": step, "cruxeval.gap": final - step,
            "cruxeval.problems": float(bench.get("stepcode_cruxeval_output_problems", 0))}


def run_job(job: Job, paths: dict, profile, params, variant) -> dict:
    """Worker entry point: train the run (unless SFT only) at its seed, rate and steps, evaluate it; plain data
    back."""
    from stepcode.training.common import configure_torch

    started = time.perf_counter()
    configure_torch(profile)      # the evaluation too: one thread per process on a shared CPU
    trained = None
    if job.reuse is not None:   # trained already, as a sweep run: only the held-out evaluation is new
        trained = {"model": job.reuse, "history": {}, "steps": 0, "seconds": 0.0, "tokens": 0.0}
    elif job.mode is not None:
        run_profile = profile.model_copy(update={"seed": job.seed, "grpo": profile.grpo.model_copy(
            update={"learning_rate": job.lr, "max_steps": job.steps})})
        trained = _train_grpo(job, paths["rl"], run_profile, params)
    metrics = _evaluate(trained["model"] if trained else job.sft_model, job, paths, variant, params, profile)
    return {**asdict(job), "name": job.name, "metrics": metrics, "history": trained["history"] if trained else {},
            "grpo_steps": trained["steps"] if trained else 0, "grpo_seconds": trained["seconds"] if trained else 0.0,
            "grpo_tokens": trained["tokens"] if trained else 0.0, "seconds": time.perf_counter() - started}


# --- orchestration ------------------------------------------------------------------------------------------------

# The study's own corpora: variant.corpus -> (module, generator, what the report calls it).
SYNTHESIZERS = {"basic": ("stepcode.data.synth_basic", "basic_candidates", "synth-basic"),
                "logic": ("stepcode.data.synth_logic", "logic_candidates", "synth-logic")}


def build_own_dataset(params, variant, work_dir: Path) -> Path:
    """The variant's own corpus (`SYNTHESIZERS[variant.corpus]`), traced in the sandbox and built by the dataset
    builder (same split, decontamination and rendering as `dvc repro`) into work_dir/<corpus>; reused when present
    for the same corpus, seed, size, trace and build settings. Returns the built dataset's directory."""
    import importlib
    from itertools import islice

    from stepcode.data.dataset import build_dataset
    from stepcode.data.traces import trace_rows
    from stepcode.evals.registry import decontamination_sources
    from stepcode.jsonl import write_jsonl

    module, generator, _ = SYNTHESIZERS[variant.corpus]
    candidates = getattr(importlib.import_module(module), generator)
    params = params.model_copy(update={"build": params.build.model_copy(update={"reasoning": variant.reasoning})})
    out = work_dir / variant.corpus
    stamp = {"corpus": variant.corpus, "programs": variant.corpus_programs, "seed": variant.corpus_seed,
             "trace": params.trace.model_dump(mode="json"), "build": params.build.model_dump(mode="json")}
    stamp_path = out / "corpus.json"
    if stamp_path.is_file() and json.loads(stamp_path.read_text()).get("stamp") == stamp:
        return out / "dataset"
    out.mkdir(parents=True, exist_ok=True)
    programs = list(islice(candidates(variant.corpus_seed), variant.corpus_programs))
    write_jsonl(out / "traces.jsonl", trace_rows(programs, params))
    stats = build_dataset(out / "traces.jsonl", out / "dataset", params,
                          benchmarks=decontamination_sources(params.build))
    stamp_path.write_text(json.dumps({"stamp": stamp, "build": stats}, indent=1))
    return out / "dataset"


def prepare_data(params, variant, work_dir: Path) -> dict:
    """Filtered sft / rl / validation / held-out files under work_dir (validation: `validation_split` of the
    filtered RL rows); returns their paths and counts."""
    from stepcode.jsonl import read_jsonl, write_jsonl

    src = (build_own_dataset(params, variant, work_dir) if variant.corpus in SYNTHESIZERS
           else Path(params.study.data_dir))
    for name in ("sft.jsonl", "rl.jsonl", "heldout.jsonl"):
        if not (src / name).is_file():
            raise MissingInput(f"{src / name}: no such file (build the dataset: `dvc repro`)")
    rl_all = select_rows(list(read_jsonl(src / "rl.jsonl")), variant)
    heldout = select_rows(list(read_jsonl(src / "heldout.jsonl")), variant)
    keys = {(r["id"], r["task"]) for r in rl_all}
    # SFT and RL programs are disjoint (stepcode/data/dataset.py): an SFT row is kept by the same filter, through the
    # source and gold_trace it carries; a dataset built before the split (no gold_trace) is matched to the RL rows.
    sft = [r for r in read_jsonl(src / "sft.jsonl")
           if (select_rows([{**r, "prompt": r.get("messages")}], variant) if "gold_trace" in r
               else (r.get("id"), r.get("task")) in keys)]
    rl, validation = validation_split(rl_all, variant.validation_programs)
    if not sft or not rl or not heldout or (variant.lr_sweep and not validation):
        raise ValueError(f"the study's filter left {len(sft)} SFT, {len(rl)} RL, {len(validation)} validation and "
                         f"{len(heldout)} held-out rows of {src}: loosen study.variants (tasks, sources, max_anchors, "
                         "max_prompt_chars, validation_programs)")
    work_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: str(work_dir / f"{name}.jsonl") for name in ("sft", "rl", "validation", "heldout")}
    for name, rows in (("sft", sft), ("rl", rl), ("validation", validation), ("heldout", heldout)):
        write_jsonl(paths[name], rows)
    corpus = (f"{variant.corpus}: {variant.corpus_programs} programs of "
              f"{SYNTHESIZERS[variant.corpus][0].replace('.', '/')}.py (seed {variant.corpus_seed}), SFT reasoning "
              f"{variant.reasoning}" if variant.corpus in SYNTHESIZERS
              else f"the built dataset ({src})")
    return {"paths": paths, "corpus": corpus, "sft_rows": len(sft), "rl_rows": len(rl),
            "validation_rows": len(validation), "validation_programs": len({program_key(r["id"]) for r in validation}),
            "heldout_rows": len(heldout), "tasks": list(variant.tasks), "sources": list(variant.sources),
            "max_anchors": variant.max_anchors, "max_prompt_chars": variant.max_prompt_chars}


def _arm_lam(arm: str, lam: float) -> float:
    return lam if MODES[arm].uses_lam else 0.0


def _sweep_jobs(rates, steps: int, lam: float, sft_model: str, work_dir: Path) -> list[Job]:
    """Every GRPO arm at every rate: seed 0, `steps` steps, judged on the validation rows."""
    return [Job(arm, 0, arm, _arm_lam(arm, lam), sft_model, str(work_dir / "sweep" / f"{arm}-lr{lr:g}"),
                phase="sweep", lr=lr, steps=steps) for arm in GRPO_ARMS for lr in rates]


def _final_jobs(seeds: list[int], chosen_lr: dict[str, float], steps: int, lam: float, sft_model: str,
                work_dir: Path, reused: dict[str, str] | None = None) -> list[Job]:
    """Every GRPO arm x seed at the arm's chosen rate (SFT only is its own job). `reused`: arm -> the model of its
    sweep run at the chosen rate, which is that arm's seed-0 run (same seed, rate and steps): evaluated, not
    retrained."""
    reused = reused or {}
    return [Job(arm, seed, arm, _arm_lam(arm, lam), sft_model, str(work_dir / f"{arm}-seed{seed}"),
                lr=chosen_lr[arm], steps=steps, reuse=reused.get(arm) if seed == 0 else None)
            for seed in seeds for arm in GRPO_ARMS]


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores visible, Python {platform.python_version()}"


def _gpu_name(device: str) -> str:
    if device != "cuda":
        return "cpu"
    import torch

    return f"cuda ({torch.cuda.get_device_name(0)})"


def _log_run(params, run: dict, profile_name: str, profile) -> str | None:
    """One nested run (a sweep run, an arm x seed, or SFT only) under the study's run, tagged with its phase: params,
    eval metrics, the training curves as step metrics. Returns its id (None when tracking is off)."""
    from stepcode.tracking.lineage import stage_run

    grpo = {**profile.grpo.model_dump(), "learning_rate": run["lr"], "max_steps": run["steps"]} if run["mode"] else {}
    arm_params = {"arm": run["arm"], "seed": "-" if run["seed"] is None else run["seed"],
                  "mode": run["mode"] or "sft-only", "lam": "-" if run["lam"] is None else run["lam"],
                  "lr": "-" if run["lr"] is None else run["lr"], "phase": run["phase"], "profile": profile_name,
                  "grpo_steps": run["grpo_steps"],
                  **{f"grpo.{k}": str(v)[:250] for k, v in grpo.items() if k not in ("lam",)}}
    with stage_run("ablation-arm", params, run_name=run["name"], stage_params=arm_params,   # trained in a worker:
                   tags={"study": "ablation", "arm": run["arm"], "phase": run["phase"]},   # the run spans its time
                   started=time.time() - run.get("seconds", 0.0)) as mlflow:
        if mlflow is None:
            return None
        from mlflow.entities import Metric

        run_id = mlflow.active_run().info.run_id
        mlflow.log_metrics({**run["metrics"], "grpo_seconds": run["grpo_seconds"], "grpo_tokens": run["grpo_tokens"]})
        now = int(time.time() * 1000)
        points = [Metric(key, value, now, step) for key, series in run["history"].items() for step, value in series]
        for i in range(0, len(points), 900):   # the REST limit is 1000 metrics per batch
            mlflow.tracking.MlflowClient().log_batch(run_id, metrics=points[i:i + 900])
    return run_id


def _collect(pool, futures, record) -> None:
    """Wait for `futures`; hand each finished run to `record` (logging, echo). One failed run fails the study:
    the runs not started are cancelled rather than trained for nothing."""
    from concurrent.futures import as_completed

    for future in as_completed(futures):
        if future.exception() is not None:
            pool.shutdown(cancel_futures=True)
        record(future.result())


def sweep_entry(run: dict) -> dict:
    """A sweep run as results.json's `sweep` lists it (its numbers are the run's logged validation metrics)."""
    m = run["metrics"]
    return {"arm": run["arm"], "lr": run["lr"], "steps": run["grpo_steps"], "val_step_acc": m["validation.step_acc"],
            "val_final_acc": m["validation.final_acc"], "run_id": run.get("run_id")}


def default_report_dir(params, variant: str) -> Path:
    """Where a variant's report goes without -o: study.report_dir for the full study (the committed report), else
    under study.work_dir."""
    return Path(params.study.report_dir) if variant == "full" else Path(params.study.work_dir) / variant / "report"


def run_study(params, variant: str = "full", *, seeds: int | None = None, budget_minutes: float | None = None,
              out_dir: str | Path | None = None, work_dir: str | Path | None = None, device: str | None = None,
              echo=print) -> dict:
    """The whole study (module docstring); writes results.json, README.md and the plots to out_dir.

    device: cpu or cuda (`device_profile`); None: what the variant's profile says (use_cpu)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if variant not in params.study.variants:
        raise ValueError(f"unknown study variant {variant!r}; defined: {sorted(params.study.variants)}")
    v = params.study.variants[variant]
    seeds = v.seeds if seeds is None else seeds
    budget = v.budget_minutes if budget_minutes is None else budget_minutes
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    profile = params.train.get(v.profile)
    device = device or ("cpu" if profile.use_cpu else "cuda")
    check_device(device)
    profile = device_profile(profile, device).model_copy(update={"report_to": ["none"]})
    plan = plan_steps(v, profile, seeds, budget)
    # Greedy evaluation with the variant's length cap, identical for every arm.
    params = params.model_copy(update={"evaluate": params.evaluate.model_copy(
        update={"greedy": True, "max_new_tokens": v.max_new_tokens})})
    out_dir = Path(out_dir or default_report_dir(params, variant))
    work_dir = Path(work_dir or Path(params.study.work_dir) / variant)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    echo(f"study {variant} on {device}: {seeds} seed(s), sweep of {len(v.lr_sweep)} rate(s) x "
         f"{plan['sweep_steps']} steps, {plan['grpo_steps']} GRPO steps per main run, "
         f"plan ~{plan['estimated_minutes']} min")

    data = prepare_data(params, v, work_dir)
    paths = data.pop("paths")
    echo(f"data: {data['sft_rows']} SFT / {data['rl_rows']} RL / {data['validation_rows']} validation / "
         f"{data['heldout_rows']} held-out rows")

    from stepcode.jsonl import read_jsonl
    from stepcode.tracking.lineage import file_md5
    from stepcode.training.models import build_tiny_model, corpus_texts
    from stepcode.training.sft import run_sft

    # The SFT checkpoint is reused when the same settings already made it from the same data (a rerun of the arms
    # then costs no SFT time); its summary, stored beside it, still reports what it cost.
    stamp = {"sft": profile.sft.model_dump(mode="json"), "model_size": profile.model_size, "seed": profile.seed,
             "bf16": profile.bf16, "use_cpu": profile.use_cpu, "data": file_md5(paths["sft"])}
    stamp_path = work_dir / "sft" / "study_sft.json"
    saved = json.loads(stamp_path.read_text()) if stamp_path.is_file() else {}
    if saved.get("stamp") == stamp:
        sft_summary = saved["summary"]
        echo(f"SFT: reusing {work_dir / 'sft'} (same settings and data)")
    else:
        base = build_tiny_model(work_dir / "base", corpus_texts(read_jsonl(paths["sft"])),
                                size=profile.model_size, seed=profile.seed)
        sft_summary = run_sft(base, paths["sft"], work_dir / "sft", profile, run_name=f"study-{variant}-sft")
        stamp_path.write_text(json.dumps({"stamp": stamp, "summary": sft_summary}, default=str))
    sft_tokens = float(sft_summary.get("last_log", {}).get("num_tokens", 0.0))
    sft_minutes = (time.perf_counter() - started) / 60
    echo(f"SFT: {sft_summary['steps']} steps in {sft_summary['seconds']:.0f} s "
         f"(loss {sft_summary.get('last_log', {}).get('loss', float('nan')):.3g})")

    from stepcode.tracking.lineage import parent_run

    seed_list = list(range(seeds))
    sft_model = str(work_dir / "sft")
    lam = params.study.lam
    runs: list[dict] = []
    sweep_runs: list[dict] = []
    choices = read_choices(variant, out_dir, params.study.report_dir) or []
    with parent_run("ablation", params, tags={"study": "ablation", "variant": variant, "seeds": seeds,
                                              "budget_minutes": budget, "profile": v.profile,
                                              "device": device}) as mlflow:
        parent_run_id = mlflow.active_run().info.run_id if mlflow else None
        if mlflow:
            mlflow.log_params({"variant": variant, "seeds": seeds, "budget_minutes": budget, "profile": v.profile,
                               "device": device, "grpo_steps": plan["grpo_steps"], "lam": lam,
                               "lr_sweep": ",".join(f"{lr:g}" for lr in v.lr_sweep), "sweep_steps": v.sweep_steps,
                               "samples": v.samples, "sft_steps": sft_summary["steps"],
                               **{f"data.{k}": str(x) for k, x in data.items()}})
            mlflow.log_metrics({"sft.seconds": sft_summary["seconds"], "sft.tokens": sft_tokens})

        def record(run: dict) -> None:
            if run.get("reuse"):   # its training is the sweep run's: curves, steps, time and tokens from there
                source = next(r for r in sweep_runs if str(Path(r["out_dir"]) / "model") == run["reuse"])
                run.update({k: source[k] for k in ("history", "grpo_steps", "grpo_seconds", "grpo_tokens")},
                           sweep_run_id=source.get("run_id"))
            run_id = _log_run(params, run, v.profile, profile)
            if run_id:
                run["run_id"] = run_id
            m = run["metrics"]
            if run["phase"] == "sweep":
                sweep_runs.append(run)
                echo(f"  sweep {run['arm']:>8} lr {run['lr']:g}: validation final {m['validation.final_acc']:.3f} "
                     f"step {m['validation.step_acc']:.3f} ({run['seconds']:.0f} s)")
                return
            runs.append(run)
            echo(f"  {run['arm']:>8} seed {run['seed']}: held-out final {m['heldout.final_acc']:.3f} step "
                 f"{m['heldout.step_acc']:.3f}; CRUXEval-O final {m['cruxeval.final_acc']:.3f} step "
                 f"{m['cruxeval.step_acc']:.3f} ({run['seconds']:.0f} s)")

        args = (paths, profile, params, v)
        ctx = multiprocessing.get_context("spawn")   # fresh interpreters: no forked torch/sandbox state
        with ProcessPoolExecutor(max_workers=v.workers, mp_context=ctx, max_tasks_per_child=1) as pool:
            # SFT only needs no learning rate: its evaluation fills a worker while the sweep runs.
            sft_future = pool.submit(run_job, Job("sft", None, None, None, sft_model, str(work_dir / "sft-only")),
                                     *args)
            sweep_started = time.perf_counter()
            _collect(pool, [pool.submit(run_job, job, *args)
                            for job in _sweep_jobs(v.lr_sweep, plan["sweep_steps"], lam, sft_model, work_dir)],
                     record)
            sweep = sorted((sweep_entry(r) for r in sweep_runs), key=lambda e: (ARMS.index(e["arm"]), e["lr"]))
            chosen_lr = choose_lr(sweep) if sweep else {arm: profile.grpo.learning_rate for arm in GRPO_ARMS}
            sweep_minutes = (time.perf_counter() - sweep_started) / 60
            if sweep:
                echo("chosen learning rates: " + ", ".join(f"{a} {lr:g}" for a, lr in chosen_lr.items()))
                if mlflow:
                    mlflow.log_params({f"chosen_lr.{a}": lr for a, lr in chosen_lr.items()})
            arms_started = time.perf_counter()
            reused = {}
            if plan["sweep_reused"]:   # each arm's seed 0 at its chosen rate is its sweep run
                reused = {arm: str(Path(r["out_dir"]) / "model") for arm in GRPO_ARMS for r in sweep_runs
                          if r["arm"] == arm and r["lr"] == chosen_lr[arm]}
            finals = [pool.submit(run_job, job, *args)
                      for job in _final_jobs(seed_list, chosen_lr, plan["grpo_steps"], lam, sft_model, work_dir,
                                             reused)]
            _collect(pool, [sft_future, *finals], record)
        runs.sort(key=lambda r: (ARMS.index(r["arm"]), -1 if r["seed"] is None else r["seed"]))
        grpo_runs = [r for r in runs if r["mode"]]
        stats = arm_stats(runs)
        results = {
            "variant": variant, "profile": v.profile, "model_size": profile.model_size, "seeds": seed_list,
            "budget_minutes": budget, "lam": lam, "plan": plan, "data": data,
            "grpo": profile.grpo.model_dump(mode="json"), "sft_settings": profile.sft.model_dump(mode="json"),
            "sft": {"steps": sft_summary["steps"], "seconds": sft_summary["seconds"], "tokens": sft_tokens,
                    "last_log": sft_summary.get("last_log", {})},
            "validation": {"programs": data["validation_programs"], "rows": data["validation_rows"],
                           "rows_evaluated": min(v.validation_limit, data["validation_rows"])},
            "sweep": sweep, "chosen_lr": chosen_lr,
            "eval": {"heldout_rows": min(v.heldout_limit, data["heldout_rows"]), "cruxeval_problems": v.cruxeval_limit,
                     "max_new_tokens": v.max_new_tokens, "decoding": "greedy", "samples": v.samples,
                     "temperature": profile.grpo.temperature},
            "compute": {"machine": _machine(), "device": _gpu_name(device), "workers": v.workers,
                        "torch_threads": profile.torch_threads,
                        "wall_minutes": (time.perf_counter() - started) / 60, "sft_minutes": sft_minutes,
                        "sweep_minutes": sweep_minutes, "arms_minutes": (time.perf_counter() - arms_started) / 60,
                        "grpo_tokens_per_run": (sum(r["grpo_tokens"] for r in grpo_runs) / len(grpo_runs)
                                                if grpo_runs else 0.0),
                        "grpo_minutes_per_run": (sum(r["grpo_seconds"] for r in grpo_runs) / len(grpo_runs) / 60
                                                 if grpo_runs else 0.0)},
            "choices": choices,
            "runs": runs, "stats": stats, "claims": check_claims(stats),
            "mlflow": {"parent_run_id": parent_run_id},
        }
        write_report(results, out_dir)
        if mlflow:
            mlflow.log_metrics({f"{arm}.{key}": s["mean"] for arm, per in stats.items() for key, s in per.items()})
            mlflow.log_artifacts(str(out_dir), "report")
    return results


def read_choices(variant: str, *folders: str | Path) -> list[str] | None:
    """The lab notebook's entries for `variant` (why its settings are what they were measured to be): from the first
    of `folders` whose choices.yaml (a mapping of variant -> list of texts) has the variant; None if none has."""
    import yaml

    from stepcode.errors import UserError

    for folder in folders:
        path = Path(folder) / CHOICES_FILE
        if not path.is_file():
            continue
        notebook = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        entries = notebook.get(variant) if isinstance(notebook, dict) else None
        if entries is None:
            continue
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise UserError(f"{path}: {variant!r} must be a list of texts (one per choice)")
        return entries
    return None


def write_report(results: dict, out_dir: str | Path) -> Path:
    """results.json, the plots and README.md (rendered from the results) in out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    plot_results(results, out_dir)
    readme = out_dir / "README.md"
    readme.write_text(render_report(results))
    return readme
