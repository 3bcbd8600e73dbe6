"""The paper's ablation at toy scale on CPU: SFT only vs Terminal-, Step- and Bi-Level GRPO from one SFT checkpoint.

    stepcode study ablation [--seeds 3] [--budget-minutes 60] [--micro]
    from stepcode.pipeline.study import run_study
    results = run_study(load_params(), variant="full")       # writes reports/ablation/{README.md, results.json, *.png}

What runs, in order (every arm gets exactly the same data, settings and number of steps; nothing is tuned per arm):
1. data: the variant's corpus — the built dataset (study.data_dir), or (corpus "basic") its own programs from
   `stepcode.data.synth_basic`, traced in the sandbox and built by `stepcode.data.dataset.build_dataset` — filtered to
   the variant's tasks, sources, anchor count and prompt length (`select_rows`), written under study.work_dir; the
   held-out split stays held out.
2. one tiny model (tokenizer trained on the filtered SFT rows) and ONE SFT warm start (the profile's sft settings),
   reused by a rerun when its settings and data are unchanged;
3. from that checkpoint, per seed: GRPO in modes terminal, step (lambda = 0) and bilevel (lambda = study.lam), the same
   steps, G, batch and completion length; the number of GRPO steps is planned from the budget by a fixed cost model
   (`plan_steps`), never by the clock, so a slow machine makes the study late, not unequal;
4. each model (and the SFT checkpoint once: greedy decoding makes it seedless) is evaluated greedily on the first
   heldout_limit held-out rows (in-distribution) and the first cruxeval_limit CRUXEval problems in the StepCode
   format (out-of-distribution); final accuracy, step accuracy, their gap, completion length;
5. per arm: mean over seeds with a 95% t-interval (`t_interval`); the report (`render_report`, from results.json
   alone, with the variant's entries of the lab notebook `choices.yaml` in the report folder), plots, and MLflow
   (`stepcode.tracking.lineage`): a parent run "ablation" with one nested run per arm x seed (params arm, seed, mode,
   lam; eval metrics; the training curves as step metrics), comparable with `stepcode compare`.
Arms run in `workers` parallel processes (one torch thread each); MLflow is written by this process only.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from stepcode.errors import MissingInput
from stepcode.training.modes import MODES

# The lab notebook (why each variant's settings are what they are), keyed by variant, in the report folder; it goes
# into results.json's "choices" and the report's "Data and choices".
CHOICES_FILE = "choices.yaml"
ARM_LABELS = {"sft": "SFT only", **{name: mode.label for name, mode in MODES.items()}}   # SFT, then a GRPO arm per mode
ARMS = tuple(ARM_LABELS)
# The metrics of the headline table, in order, with how they read.
HEADLINE = (("heldout.final_acc", "held-out final acc"), ("heldout.step_acc", "held-out step acc"),
            ("heldout.gap", "held-out gap"), ("cruxeval.final_acc", "CRUXEval-O final acc"),
            ("cruxeval.step_acc", "CRUXEval-O step acc"), ("cruxeval.gap", "CRUXEval-O gap"),
            ("heldout.completion_tokens", "completion tokens"))
# Training-curve keys from TRL's log history -> the names they get in results.json and MLflow.
CURVES = {"reward": "train.reward", "stepcode/final_accuracy": "train.final_accuracy",
          "stepcode/step_accuracy": "train.step_accuracy", "completions/mean_length": "train.completion_length"}


@dataclass(frozen=True)
class Job:
    """One arm x seed: train (unless SFT only) and evaluate. Plain data, so it crosses process boundaries."""
    arm: str
    seed: int | None          # None for SFT only (one greedy evaluation of one checkpoint)
    mode: str | None          # GRPO mode; None for SFT only
    lam: float | None
    sft_model: str
    out_dir: str


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


def plan_steps(variant, profile, seeds: int, budget_minutes: float) -> dict:
    """GRPO steps per arm that fit the budget under the variant's cost model (seconds per SFT step, GRPO step and
    evaluated row, all arms sharing `workers` processes), capped by the profile's grpo.max_steps.

    Deterministic: the same inputs give the same steps on any machine. Raises when the budget leaves no GRPO step.
    """
    runs = len(MODES) * seeds                      # one GRPO run per mode and seed
    evals = runs + 1                               # + SFT only
    sft_s = max(profile.sft.max_steps, 0) * variant.sft_step_s
    eval_s = math.ceil(evals / variant.workers) * (variant.heldout_limit + variant.cruxeval_limit) * variant.eval_row_s
    rounds = math.ceil(runs / variant.workers)     # GRPO runs one after another in each worker
    left = budget_minutes * 60 - sft_s - eval_s
    affordable = math.floor(left / (rounds * variant.grpo_step_s)) if left > 0 else 0
    cap = profile.grpo.max_steps if profile.grpo.max_steps > 0 else affordable
    steps = min(cap, affordable)
    if steps < 1:
        raise ValueError(f"a budget of {budget_minutes:g} min leaves no GRPO step: SFT takes ~{sft_s / 60:.1f} min "
                         f"and evaluation ~{eval_s / 60:.1f} min under the cost model; raise --budget-minutes")
    est = sft_s + eval_s + rounds * steps * variant.grpo_step_s
    return {"grpo_steps": steps, "grpo_runs": runs, "evaluations": evals, "estimated_minutes": round(est / 60, 1),
            "capped_by": "profile" if steps == cap and cap < affordable else "budget"}


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
    """arm -> metric -> t_interval over that arm's seeds (metrics of HEADLINE that every run of the arm has)."""
    stats: dict[str, dict[str, dict]] = {}
    for arm in ARMS:
        mine = [r for r in runs if r["arm"] == arm]
        if mine:
            stats[arm] = {key: t_interval([r["metrics"][key] for r in mine]) for key, _ in HEADLINE
                          if all(key in r["metrics"] for r in mine)}
    return stats


def ordering(stats: dict, metric: str) -> list[tuple[str, bool]]:
    """Arms best first by the metric's mean; each with whether its interval lies wholly above the next arm's."""
    arms = sorted((a for a in stats if metric in stats[a]), key=lambda a: -stats[a][metric]["mean"])
    return [(a, i + 1 < len(arms) and stats[a][metric]["lo"] > stats[arms[i + 1]][metric]["hi"])
            for i, a in enumerate(arms)]


def curve_means(runs: list[dict], key: str) -> dict[str, list[tuple[int, float]]]:
    """arm -> [(step, mean over seeds)] of a training curve (steps every seed of the arm logged)."""
    out = {}
    for arm in ARMS:
        series = [dict(r["history"].get(key, [])) for r in runs if r["arm"] == arm and r.get("history")]
        if not series:
            continue
        steps = sorted(set.intersection(*(set(s) for s in series)))
        out[arm] = [(s, sum(x[s] for x in series) / len(series)) for s in steps]
    return out


def _cell(s: dict | None, pct: bool) -> str:
    if s is None:
        return "–"
    scale, unit = (100.0, "") if pct else (1.0, "")
    if s["n"] == 1:
        return f"{s['mean'] * scale:.1f}{unit} (n=1)"
    return f"{s['mean'] * scale:.1f} [{s['lo'] * scale:.1f}, {s['hi'] * scale:.1f}]"


def _order_line(stats: dict, metric: str) -> str:
    order = ordering(stats, metric)
    if not order:
        return "–"
    parts = [ARM_LABELS[order[0][0]]]
    for (_, above), (nxt, _) in zip(order, order[1:]):
        parts.append((" **>** " if above else " ≈ ") + ARM_LABELS[nxt])
    return "".join(parts)


def _claims(stats: dict) -> list[str]:
    """The paper's claims checked against the intervals that came out (held-out, step accuracy first)."""
    def m(arm, key):
        return stats.get(arm, {}).get(key)

    lines = []
    for key, what in (("heldout.step_acc", "step accuracy"), ("heldout.final_acc", "final accuracy")):
        for better, worse in (("bilevel", "step"), ("step", "terminal"), ("bilevel", "terminal"),
                              ("bilevel", "sft")):
            a, b = m(better, key), m(worse, key)
            if a is None or b is None:
                continue
            if a["lo"] > b["hi"]:
                verdict = "holds (intervals separate)"
            elif a["mean"] > b["mean"]:
                verdict = "same direction, intervals overlap (not shown)"
            else:
                verdict = "not seen (the mean is not higher)"
            lines.append(f"- {ARM_LABELS[better]} > {ARM_LABELS[worse]} in held-out {what}: {verdict} "
                         f"({a['mean'] * 100:.1f} vs {b['mean'] * 100:.1f}).")
    gaps = {arm: m(arm, "heldout.gap") for arm in MODES}
    if all(gaps.values()):
        widest = max(gaps, key=lambda a: gaps[a]["mean"])
        if all(abs(g["mean"] - gaps[widest]["mean"]) < 1e-12 for g in gaps.values()):
            widest = None
        each = ", ".join(f"{ARM_LABELS[a]} {g['mean'] * 100:+.1f}" for a, g in gaps.items())
        lines.append(f"- \"Right answer, wrong logic\" (gap = final − step accuracy, held-out): largest under "
                     f"{ARM_LABELS[widest] if widest else 'no arm (all equal)'} ({each}); the paper expects "
                     "it largest under Terminal-GRPO.")
    return lines


def render_report(results: dict) -> str:
    """The Markdown report, from results.json alone (so it can be re-rendered without re-running anything)."""
    stats, plan, data, compute = results["stats"], results["plan"], results["data"], results["compute"]
    seeds = results["seeds"]
    sft_minutes = results["sft"]["seconds"] / 60
    reused = compute["sft_minutes"] < 0.5 * sft_minutes    # the SFT summary came with a reused checkpoint
    lines = [f"# Ablation study ({results['variant']}): SFT only vs Terminal-, Step- and Bi-Level GRPO", "",
             f"One SFT warm start of the `{results['model_size']}` model (profile `{results['profile']}`), then "
             f"{len(seeds)} seed(s) ({', '.join(map(str, seeds))}) of each GRPO arm from that same checkpoint, each "
             f"with {plan['grpo_steps']} GRPO steps, G = {results['grpo']['num_generations']}, "
             f"{results['grpo']['batch_size']} completions per step, at most "
             f"{results['grpo']['max_completion_length']} completion tokens, lr {results['grpo']['learning_rate']:g}; "
             f"λ = {results['lam']:g} for Bi-Level, 0 for Step-GRPO; Terminal-GRPO uses the final reward only. "
             f"Written by `stepcode study ablation` from `results.json` (MLflow parent run "
             f"`{results.get('mlflow', {}).get('parent_run_id') or '–'}`).", "",
             "## Headline (percent; mean over seeds [95% t-interval])", "",
             "| arm | " + " | ".join(label for _, label in HEADLINE) + " |",
             "|---|" + "---:|" * len(HEADLINE)]
    for arm in ARMS:
        if arm in stats:
            cells = [_cell(stats[arm].get(key), pct=not key.endswith("completion_tokens")) for key, _ in HEADLINE]
            lines.append(f"| {ARM_LABELS[arm]} | " + " | ".join(cells) + " |")
    lines += ["", "SFT only is one greedy evaluation of one checkpoint (n=1: nothing varies with the seed). "
              f"Held-out: the first {results['eval']['heldout_rows']} held-out rows (in-distribution, greedy). "
              f"CRUXEval-O: {results['eval']['cruxeval_problems']} CRUXEval programs in the StepCode format "
              "(out-of-distribution, greedy). At this scale the absolute CRUXEval numbers are expected to be near "
              f"zero: a `{results['model_size']}` model trained from scratch for minutes on synthesized programs; "
              "read them as a sanity check, not as a benchmark result.", "",
              "## What came out", "",
              f"- Held-out step accuracy, best first: {_order_line(stats, 'heldout.step_acc')}",
              f"- Held-out final accuracy, best first: {_order_line(stats, 'heldout.final_acc')}",
              f"- CRUXEval-O step accuracy, best first: {_order_line(stats, 'cruxeval.step_acc')}",
              "  (**>**: the 95% intervals separate — for SFT only, n=1, its single value lies outside the other "
              "arm's interval; ≈: they overlap)", ""]
    lines += _claims(stats)
    lines += ["", "## Compute", "",
              f"- Machine: {compute['machine']}; {compute['workers']} arm processes in parallel, "
              f"{compute['torch_threads']} torch thread each (SFT too: a second thread made it slower on this "
              "shared machine).",
              f"- Wall time: SFT {sft_minutes:.1f} min + arms {compute['arms_minutes']:.1f} min"
              + (f" (this run took {compute['wall_minutes']:.1f} min: it reused the SFT checkpoint of an earlier "
                 "run with the same settings and data)" if reused else "")
              + f"; budget {results['budget_minutes']:g} min, plan estimate {plan['estimated_minutes']:g} min "
              f"(GRPO steps capped by the {plan['capped_by']}).",
              f"- SFT: {results['sft']['steps']} steps, batch {results['sft_settings']['batch_size']}, lr "
              f"{results['sft_settings']['learning_rate']:g}, {results['sft']['tokens']:.0f} tokens seen.",
              f"- GRPO per arm and seed: {plan['grpo_steps']} steps; mean tokens processed per run "
              f"{compute['grpo_tokens_per_run']:.0f} (prompt + completion, TRL's num_tokens); mean "
              f"{compute['grpo_minutes_per_run']:.1f} min per run.",
              "", "## Data and choices", "",
              f"- Training data: {data.get('corpus', 'the built dataset')}; {data['sft_rows']} SFT rows and "
              f"{data['rl_rows']} RL rows; {data['heldout_rows']} "
              f"held-out rows (tasks {', '.join(data['tasks'])}; sources {', '.join(data['sources'])}; at most "
              f"{data['max_anchors']} anchors; user prompt at most {data['max_prompt_chars']} characters).",
              ]
    lines += [f"- {c}" for c in results.get("choices", [])]
    lines += ["", "## Plots", ""]
    for name, caption in (("metrics.png", "Evaluation metrics per arm (mean, 95% interval, seeds as dots)"),
                          ("curves.png", "Training curves (mean over seeds per arm)")):
        lines.append(f"![{caption}]({name})")
        lines.append("")
    lines += ["## Runs", "", "| arm | seed | MLflow run | held-out final | held-out step | CRUXEval-O final | "
              "CRUXEval-O step |", "|---|---:|---|---:|---:|---:|---:|"]
    for r in results["runs"]:
        m = r["metrics"]
        lines.append(f"| {ARM_LABELS[r['arm']]} | {r['seed'] if r['seed'] is not None else '–'} | "
                     f"`{r.get('run_id') or '–'}` | {m.get('heldout.final_acc', 0) * 100:.1f} | "
                     f"{m.get('heldout.step_acc', 0) * 100:.1f} | {m.get('cruxeval.final_acc', 0) * 100:.1f} | "
                     f"{m.get('cruxeval.step_acc', 0) * 100:.1f} |")
    ids = [r["run_id"] for r in results["runs"] if r.get("run_id")]
    if ids:
        lines += ["", "Compare any of them: `stepcode compare " + " ".join(ids[:4]) + " ...`"]
    return "\n".join(lines) + "\n"


def plot_results(results: dict, out_dir: str | Path) -> list[Path]:
    """metrics.png (bars with 95% intervals and the seeds as dots) and curves.png (training curves per arm)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    stats, runs = results["stats"], results["runs"]
    arms = [a for a in ARMS if a in stats]
    fig, axes = plt.subplots(2, 4, figsize=(18, 7.5), squeeze=False)
    for ax, (key, label) in zip(axes.flat, HEADLINE):
        for i, arm in enumerate(arms):
            s = stats[arm].get(key)
            if s is None:
                continue
            ax.bar(i, s["mean"], color=f"C{i}", yerr=[[s["mean"] - s["lo"]], [s["hi"] - s["mean"]]], capsize=4)
            seeds = [r["metrics"][key] for r in runs if r["arm"] == arm and key in r["metrics"]]
            ax.plot([i] * len(seeds), seeds, "k.", alpha=0.6)
        ax.set_xticks(range(len(arms)), [ARM_LABELS[a] for a in arms], rotation=20, ha="right", fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes.flat[-1].axis("off")
    fig.tight_layout()
    metrics_png = out_dir / "metrics.png"
    fig.savefig(metrics_png, dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(CURVES), figsize=(5 * len(CURVES), 3.6), squeeze=False)
    for ax, key in zip(axes.flat, CURVES.values()):
        for arm, points in curve_means(runs, key).items():
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, label=ARM_LABELS[arm], color=f"C{ARMS.index(arm)}")
        ax.set_title(key, fontsize=10)
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
    from stepcode.training.common import configure_torch
    from stepcode.training.grpo import bilevel_trainer_class, grpo_config, rl_dataset
    from stepcode.training.rewards import RewardScorer

    started = time.perf_counter()
    configure_torch(profile)
    model, tokenizer = load_model(job.sft_model)
    g = profile.grpo
    out = Path(job.out_dir) / "model"
    with RewardScorer(params, input_reference=g.input_reference, workers=g.reward_workers or None) as scorer:
        trainer = bilevel_trainer_class()(
            model=model, args=grpo_config(profile, out, f"{job.arm}-seed{job.seed}"),
            train_dataset=rl_dataset(list(read_jsonl(rl_path))), processing_class=tokenizer, scorer=scorer,
            mode=job.mode, lam=job.lam, span=g.span, max_anchors=params.trace.max_lines)
        trainer.train()
    trainer.save_model(str(out))
    tokenizer.save_pretrained(str(out))
    logs = trainer.state.log_history
    tokens = max((e.get("num_tokens", 0) for e in logs), default=0)
    return {"model": str(out), "steps": trainer.state.global_step, "seconds": time.perf_counter() - started,
            "tokens": float(tokens), "history": _history(logs)}


def _evaluate(model: str, job: Job, heldout_path: str, variant, params) -> dict[str, float]:
    from stepcode.evals.generate import evaluate as evaluate_benchmarks
    from stepcode.evals.generate import load_backend
    from stepcode.evals.heldout import evaluate_heldout

    backend = load_backend(model)
    m, _ = evaluate_heldout(model, heldout_path, params, limit=variant.heldout_limit, backend=backend,
                            progress=False)
    bench = evaluate_benchmarks(model, ["cruxeval"], params, out_dir=Path(job.out_dir) / "cruxeval",
                                limit=variant.cruxeval_limit, prompt="stepcode", backend=backend)
    final = bench.get("stepcode_cruxeval_output_greedy_pass_at_1", 0.0) / 100.0   # percent -> fraction
    step = bench.get("stepcode_cruxeval_output_greedy_step_accuracy", 0.0) / 100.0
    keep = ("final_acc", "step_acc", "gap", "completion_tokens", "rows")
    metrics = {f"heldout.{k}": v for k, v in ((k, m[f"heldout.{k}"]) for k in keep)}
    metrics.update({"cruxeval.final_acc": final, "cruxeval.step_acc": step, "cruxeval.gap": final - step,
                    "cruxeval.problems": float(bench.get("stepcode_cruxeval_output_problems", 0))})
    return metrics


def run_job(job: Job, paths: dict, profile, params, variant) -> dict:
    """Worker entry point: train the arm (unless SFT only), evaluate it; plain data back."""
    started = time.perf_counter()
    trained = None
    if job.mode is not None:
        trained = _train_grpo(job, paths["rl"], profile.model_copy(update={"seed": job.seed}), params)
    metrics = _evaluate(trained["model"] if trained else job.sft_model, job, paths["heldout"], variant, params)
    return {**asdict(job), "metrics": metrics, "history": trained["history"] if trained else {},
            "grpo_steps": trained["steps"] if trained else 0, "grpo_seconds": trained["seconds"] if trained else 0.0,
            "grpo_tokens": trained["tokens"] if trained else 0.0, "seconds": time.perf_counter() - started}


# --- orchestration ------------------------------------------------------------------------------------------------

def build_basic_dataset(params, variant, work_dir: Path) -> Path:
    """The variant's own corpus of `stepcode.data.synth_basic` programs, traced in the sandbox and built by the dataset
    builder (same split, decontamination and rendering as `dvc repro`) into work_dir/basic; reused when present for
    the same seed, size, trace and build settings. Returns the built dataset's directory."""
    from itertools import islice

    from stepcode.data.dataset import build_dataset
    from stepcode.data.synth_basic import basic_candidates
    from stepcode.data.traces import trace_rows
    from stepcode.evals.registry import decontamination_sources
    from stepcode.jsonl import write_jsonl

    params = params.model_copy(update={"build": params.build.model_copy(update={"reasoning": variant.reasoning})})
    out = work_dir / "basic"
    stamp = {"programs": variant.corpus_programs, "seed": variant.corpus_seed,
             "trace": params.trace.model_dump(mode="json"), "build": params.build.model_dump(mode="json")}
    stamp_path = out / "corpus.json"
    if stamp_path.is_file() and json.loads(stamp_path.read_text()).get("stamp") == stamp:
        return out / "dataset"
    out.mkdir(parents=True, exist_ok=True)
    programs = list(islice(basic_candidates(variant.corpus_seed), variant.corpus_programs))
    write_jsonl(out / "traces.jsonl", trace_rows(programs, params))
    stats = build_dataset(out / "traces.jsonl", out / "dataset", params,
                          benchmarks=decontamination_sources(params.build))
    stamp_path.write_text(json.dumps({"stamp": stamp, "build": stats}, indent=1))
    return out / "dataset"


def prepare_data(params, variant, work_dir: Path) -> dict:
    """Filtered sft / rl / held-out files under work_dir; returns their paths and counts."""
    from stepcode.jsonl import read_jsonl, write_jsonl

    src = (build_basic_dataset(params, variant, work_dir) if variant.corpus == "basic"
           else Path(params.study.data_dir))
    for name in ("sft.jsonl", "rl.jsonl", "heldout.jsonl"):
        if not (src / name).is_file():
            raise MissingInput(f"{src / name}: no such file (build the dataset: `dvc repro`)")
    rl = select_rows(list(read_jsonl(src / "rl.jsonl")), variant)
    heldout = select_rows(list(read_jsonl(src / "heldout.jsonl")), variant)
    keys = {(r["id"], r["task"]) for r in rl}
    # SFT and RL programs are disjoint (stepcode/data/dataset.py): an SFT row is kept by the same filter, through the
    # source and gold_trace it carries; a dataset built before the split (no gold_trace) is matched to the RL rows.
    sft = [r for r in read_jsonl(src / "sft.jsonl")
           if (select_rows([{**r, "prompt": r.get("messages")}], variant) if "gold_trace" in r
               else (r.get("id"), r.get("task")) in keys)]
    if not sft or not rl or not heldout:
        raise ValueError(f"the study's filter left {len(sft)} SFT, {len(rl)} RL and {len(heldout)} held-out rows "
                         f"of {src}: loosen study.variants (tasks, sources, max_anchors, max_prompt_chars)")
    work_dir.mkdir(parents=True, exist_ok=True)
    paths = {"sft": str(work_dir / "sft.jsonl"), "rl": str(work_dir / "rl.jsonl"),
             "heldout": str(work_dir / "heldout.jsonl")}
    for name, rows in (("sft", sft), ("rl", rl), ("heldout", heldout)):
        write_jsonl(paths[name], rows)
    corpus = (f"basic: {variant.corpus_programs} programs of stepcode/data/synth_basic.py "
              f"(seed {variant.corpus_seed}), SFT reasoning {variant.reasoning}" if variant.corpus == "basic"
              else f"the built dataset ({src})")
    return {"paths": paths, "corpus": corpus, "sft_rows": len(sft), "rl_rows": len(rl), "heldout_rows": len(heldout),
            "tasks": list(variant.tasks), "sources": list(variant.sources), "max_anchors": variant.max_anchors,
            "max_prompt_chars": variant.max_prompt_chars}


def _jobs(seeds: list[int], lam: float, sft_model: str, work_dir: Path) -> list[Job]:
    jobs = [Job("sft", None, None, None, sft_model, str(work_dir / "sft-only"))]
    for seed in seeds:
        for name, mode in MODES.items():   # one arm per advantage mode
            jobs.append(Job(name, seed, name, lam if mode.uses_lam else 0.0, sft_model,
                            str(work_dir / f"{name}-seed{seed}")))
    return jobs


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


def _log_run(params, run: dict, profile_name: str, profile) -> str | None:
    """One nested run (arm x seed) under the study's run: params, eval metrics, the training curves as step metrics.
    Returns its id (None when tracking is off)."""
    from stepcode.tracking.lineage import stage_run

    name = run["arm"] if run["seed"] is None else f"{run['arm']}-seed{run['seed']}"
    arm_params = {"arm": run["arm"], "seed": "-" if run["seed"] is None else run["seed"],
                  "mode": run["mode"] or "sft-only", "lam": "-" if run["lam"] is None else run["lam"],
                  "profile": profile_name, "grpo_steps": run["grpo_steps"],
                  **{f"grpo.{k}": str(v)[:250] for k, v in profile.grpo.model_dump().items() if k not in ("lam",)}}
    with stage_run("ablation-arm", params, run_name=name, stage_params=arm_params,
                   tags={"study": "ablation", "arm": run["arm"]}) as mlflow:
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


def default_report_dir(params, variant: str) -> Path:
    """Where a variant's report goes without -o: study.report_dir for the full study (the committed report), else
    under study.work_dir."""
    return Path(params.study.report_dir) if variant == "full" else Path(params.study.work_dir) / variant / "report"


def run_study(params, variant: str = "full", *, seeds: int | None = None, budget_minutes: float | None = None,
              out_dir: str | Path | None = None, work_dir: str | Path | None = None, echo=print) -> dict:
    """The whole study (module docstring); writes results.json, README.md and the plots to out_dir."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    if variant not in params.study.variants:
        raise ValueError(f"unknown study variant {variant!r}; defined: {sorted(params.study.variants)}")
    v = params.study.variants[variant]
    seeds = v.seeds if seeds is None else seeds
    budget = v.budget_minutes if budget_minutes is None else budget_minutes
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    profile = params.train.get(v.profile)
    plan = plan_steps(v, profile, seeds, budget)
    profile = profile.model_copy(update={"grpo": profile.grpo.model_copy(update={"max_steps": plan["grpo_steps"]}),
                                         "report_to": ["none"]})
    # Greedy evaluation with the variant's length cap, identical for every arm.
    params = params.model_copy(update={"evaluate": params.evaluate.model_copy(
        update={"greedy": True, "max_new_tokens": v.max_new_tokens})})
    out_dir = Path(out_dir or default_report_dir(params, variant))
    work_dir = Path(work_dir or Path(params.study.work_dir) / variant)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    echo(f"study {variant}: {seeds} seed(s), {plan['grpo_steps']} GRPO steps per arm, plan ~"
         f"{plan['estimated_minutes']} min")

    data = prepare_data(params, v, work_dir)
    paths = data.pop("paths")
    echo(f"data: {data['sft_rows']} SFT / {data['rl_rows']} RL / {data['heldout_rows']} held-out rows")

    from stepcode.jsonl import read_jsonl
    from stepcode.tracking.lineage import file_md5
    from stepcode.training.models import build_tiny_model, corpus_texts
    from stepcode.training.sft import run_sft

    # The SFT checkpoint is reused when the same settings already made it from the same data (a rerun of the arms
    # then costs no SFT time); its summary, stored beside it, still reports what it cost.
    stamp = {"sft": profile.sft.model_dump(mode="json"), "model_size": profile.model_size, "seed": profile.seed,
             "data": file_md5(paths["sft"])}
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
    jobs = _jobs(seed_list, params.study.lam, str(work_dir / "sft"), work_dir)
    runs: list[dict] = []
    arms_started = time.perf_counter()
    choices = read_choices(variant, out_dir, params.study.report_dir) or []
    with parent_run("ablation", params, tags={"study": "ablation", "variant": variant, "seeds": seeds,
                                              "budget_minutes": budget, "profile": v.profile}) as mlflow:
        parent_run_id = mlflow.active_run().info.run_id if mlflow else None
        if mlflow:
            mlflow.log_params({"variant": variant, "seeds": seeds, "budget_minutes": budget, "profile": v.profile,
                               "grpo_steps": plan["grpo_steps"], "lam": params.study.lam,
                               "sft_steps": sft_summary["steps"], **{f"data.{k}": str(x) for k, x in data.items()}})
            mlflow.log_metrics({"sft.seconds": sft_summary["seconds"], "sft.tokens": sft_tokens})
        ctx = multiprocessing.get_context("spawn")   # fresh interpreters: no forked torch/sandbox state
        with ProcessPoolExecutor(max_workers=v.workers, mp_context=ctx, max_tasks_per_child=1) as pool:
            futures = {pool.submit(run_job, job, paths, profile, params, v): job for job in jobs}
            for future in as_completed(futures):
                if future.exception() is not None:
                    pool.shutdown(cancel_futures=True)   # one failed arm fails the study: don't train the rest
                run = future.result()
                run_id = _log_run(params, run, v.profile, profile)
                if run_id:
                    run["run_id"] = run_id
                runs.append(run)
                m = run["metrics"]
                echo(f"  {run['arm']:>8} seed {run['seed']}: held-out final {m['heldout.final_acc']:.3f} step "
                     f"{m['heldout.step_acc']:.3f}; CRUXEval-O final {m['cruxeval.final_acc']:.3f} step "
                     f"{m['cruxeval.step_acc']:.3f} ({run['seconds']:.0f} s)")
        runs.sort(key=lambda r: (ARMS.index(r["arm"]), -1 if r["seed"] is None else r["seed"]))
        grpo_runs = [r for r in runs if r["mode"]]
        results = {
            "variant": variant, "profile": v.profile, "model_size": profile.model_size, "seeds": seed_list,
            "budget_minutes": budget, "lam": params.study.lam, "plan": plan, "data": data,
            "grpo": profile.grpo.model_dump(mode="json"), "sft_settings": profile.sft.model_dump(mode="json"),
            "sft": {"steps": sft_summary["steps"], "seconds": sft_summary["seconds"], "tokens": sft_tokens,
                    "last_log": sft_summary.get("last_log", {})},
            "eval": {"heldout_rows": v.heldout_limit, "cruxeval_problems": v.cruxeval_limit,
                     "max_new_tokens": v.max_new_tokens, "decoding": "greedy"},
            "compute": {"machine": _machine(), "workers": v.workers, "torch_threads": profile.torch_threads,
                        "wall_minutes": (time.perf_counter() - started) / 60, "sft_minutes": sft_minutes,
                        "arms_minutes": (time.perf_counter() - arms_started) / 60,
                        "grpo_tokens_per_run": (sum(r["grpo_tokens"] for r in grpo_runs) / len(grpo_runs)
                                                if grpo_runs else 0.0),
                        "grpo_minutes_per_run": (sum(r["grpo_seconds"] for r in grpo_runs) / len(grpo_runs) / 60
                                                 if grpo_runs else 0.0)},
            "choices": choices,
            "runs": runs, "stats": arm_stats(runs),
            "mlflow": {"parent_run_id": parent_run_id},
        }
        write_report(results, out_dir)
        if mlflow:
            mlflow.log_metrics({f"{arm}.{key}": s["mean"] for arm, per in results["stats"].items()
                                for key, s in per.items()})
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
