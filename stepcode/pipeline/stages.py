"""The stage functions: one per arrow of the data flow, each with explicit input and output paths and the params.

    corpus → trace → validate → build → sft → grpo → evaluate

The CLI calls them, `dvc.yaml` calls the CLI, and the Prefect flow's tasks call them too, so a stage does the same
thing however it is started. Each one wraps a library function with its MLflow lineage (`stepcode.tracking.lineage`):
params, counts, and the DVC digests of what it read and wrote; a stage that raises is marked FAILED. The library
modules compute and never log to MLflow; the tracking is here (off with params tracking.enabled: false).
"""

from __future__ import annotations

from pathlib import Path

from stepcode.tracking.lineage import stage_run  # light: mlflow is imported when a run starts


def _flat(prefix: str, section) -> dict:
    return {f"{prefix}.{k}": v for k, v in section.model_dump().items()}


# What each stage's run holds, for its reader (the run's description in the MLflow UI; markdown). Every stage run also
# has its inputs and outputs as Datasets (by DVC md5, tags `dvc.md5.<role>`), `seconds` and `system/*` metrics.
NOTES = {
    "trace": "Instruments each program with execution anchors and runs it twice in the sandbox, into a trace table "
             "(one status per program). Metrics: rows, `status.<status>` counts, programs per second; "
             "`trace_summary.json`.",
    "validate": "The data gate: great-expectations checks over the trace table; nothing trains on data that fails "
                "it. Metrics `gate.*`. Artifacts: `validation/report.html`, this validation's Data Docs page (open "
                "it here); `validation/summary.json`, one entry per expectation; `validation/quarantine.jsonl`, the "
                "rows that broke one. The whole Data Docs site, with the runs before, is under `data_docs/`: "
                "`mlflow artifacts download -r {run_id} -a data_docs -d DIR`, then open `DIR/data_docs/index.html` "
                "(no network needed).",
    "build": "Builds the SFT, RL and held-out sets (disjoint programs, decontaminated against the benchmarks) from "
             "the trace rows that passed. Metrics: rows kept and dropped by reason, examples per split and task, "
             "`anchors.<n>` (programs with n anchors); `build_stats.json`.",
    "init-model": "Builds the offline tiny model of the profile: a tokenizer trained on the corpus, random weights.",
    "sft": "SFT warm start (TRL SFTTrainer, loss on the completion only). Metrics per step: loss, token accuracy "
           "(a fraction), learning rate; `train_seconds`, `steps`.",
    "grpo": "Bi-Level GRPO (or the ablation mode in the `mode` tag) from the SFT model. Metrics per step: reward, "
            "`stepcode/step_accuracy` and `stepcode/final_accuracy` of the rollouts (fractions), "
            "`frac_reward_zero_std` (groups without signal), loss, KL (if beta > 0). The trained model is this run's "
            "logged model.",
    "evaluate": "Held-out rows (greedy; `heldout.*`, and `baseline.heldout.*` for the SFT checkpoint on the same "
                "rows; accuracies are fractions, 0-1) and benchmarks (`*_pass_at_1`, `*_step_accuracy`: percent). "
                "Per-row predictions: `heldout_predictions.json`; generations and official result files: "
                "`evaluation/`.",
    "register": "Registers the trained model as a new version (alias `candidate`), with the evaluation metrics on "
                "it and its model card (`model_card.md`).",
}


def trace(params, programs: str | Path, out: str | Path, *, workers: int | None = None, progress: bool = True,
          skip_bad: bool = False, rejects_path: str | Path | None = None) -> dict:
    """Instrument and trace a corpus (a JSONL file or a directory of them) into `out`: a folder of part files, or one
    JSONL file when `out` ends in `.jsonl`. Returns the summary (counts per status, seconds, programs/s). `skip_bad`:
    malformed rows go to `rejects_path` instead of failing the stage.

    The input is checked before the run starts, so a malformed corpus fails without leaving a FAILED run behind."""
    from stepcode.data.traces import open_corpus, trace_to_file

    rows, total, preload = open_corpus(programs, skip_bad=skip_bad, rejects_path=rejects_path)
    with stage_run("trace", params, inputs={"programs": str(programs)}, outputs={"traces": str(out)},
                   stage_params={**_flat("trace", params.trace), **_flat("sandbox", params.sandbox)},
                   description=NOTES["trace"], deferrable=True) as mlflow:
        summary = trace_to_file(rows, out, params, workers=workers, progress=progress, total=total, preload=preload)
        if mlflow is not None:
            mlflow.log_metrics({"rows": summary["total"], "programs_per_s": summary["programs_per_s"] or 0,
                                **{f"status.{k}": v for k, v in summary["by_status"].items()}})
            mlflow.log_dict(summary, "trace_summary.json")
    return summary


def trace_merged(params, programs: str | Path, traces: str | Path, *, batches: int, started: float) -> dict:
    """The trace stage's run for a table traced elsewhere: the flow traces batches in worker processes (untracked)
    and merges them into `traces`. Logs what `trace` logs (params, lineage, counts; `programs_per_s` over the wall
    time) with the run starting at `started` (the time.time() when the fan-out began), so the run's duration and its
    `seconds` metric are the tracing's, not the logging's. Returns the summary (counts, `batches`: what the flow
    writes to the DVC metric metrics/trace.json, so nothing in it changes from run to run)."""
    import time

    from stepcode.data.traces import summarize
    from stepcode.jsonl import read_table

    summary = dict(summarize(read_table(traces)), batches=batches)
    with stage_run("trace", params, inputs={"programs": str(programs)}, outputs={"traces": str(traces)},
                   stage_params={**_flat("trace", params.trace), **_flat("sandbox", params.sandbox)},
                   started=started, description=NOTES["trace"]) as mlflow:
        seconds = round(time.time() - started, 3)
        if mlflow is not None:
            mlflow.log_metrics({"rows": summary["total"], "batches": batches, "seconds": seconds,
                                "programs_per_s": round(summary["total"] / max(seconds, 1e-9), 2),
                                **{f"status.{k}": v for k, v in summary["by_status"].items()}})
            mlflow.log_dict({**summary, "seconds": seconds}, "trace_summary.json")
    return summary


def validate(params, traces: str | Path, report_dir: str | Path):
    """The great-expectations gate. Returns the GateResult (the caller decides: CLI exit code, flow stop). The run
    holds the summary, quarantine and this validation's Data Docs page as one file (`report.html`) under
    `validation/`, and the Data Docs site (it renders offline) under `data_docs/`: `mlflow artifacts download -r
    RUN_ID -a data_docs -d DIR`, then open DIR/data_docs/index.html."""
    from stepcode.data.validation import validate_traces

    with stage_run("validate", params, inputs={"traces": str(traces)},
                   stage_params=_flat("validate", params.validate_), description=NOTES["validate"],
                   deferrable=True) as mlflow:
        result = validate_traces(traces, report_dir, params)
        if mlflow is not None:
            mlflow.log_metrics({"gate.success": float(result.success), "gate.rows": result.n_rows,
                                "gate.quarantined": result.n_quarantined, "gate.failed": len(result.failed)})
            mlflow.set_tag("gate", "passed" if result.success else "failed")
            mlflow.log_artifact(str(result.summary_path), "validation")
            if Path(result.quarantine_path).exists():
                mlflow.log_artifact(str(result.quarantine_path), "validation")
            if Path(result.report_path).exists():
                _log_data_docs(mlflow, Path(result.report_path).parent)
    return result


def _log_data_docs(mlflow, site: Path) -> None:
    """The Data Docs site (its pages and what they load) under `data_docs/`, and this run's validation page as one
    self-contained file, `validation/report.html`, which the MLflow UI's artifact view renders (the site's pages
    need their neighbours: download the folder)."""
    import shutil
    import tempfile

    from stepcode.data.datadocs import latest_validation, site_files, standalone

    with tempfile.TemporaryDirectory(prefix="stepcode-datadocs-") as tmp:
        copy = Path(tmp) / "data_docs"
        for f in site_files(site):
            target = copy / f.relative_to(site.resolve())
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
        mlflow.log_artifacts(str(copy), "data_docs")
    page = latest_validation(site)
    if page is not None:
        mlflow.log_text(standalone(page), "validation/report.html")


def build(params, traces: str | Path, out_dir: str | Path) -> dict:
    """Prompts, SFT targets, RL rows, held-out split, decontamination. Returns the stats."""
    from stepcode.data.dataset import build_dataset
    from stepcode.evals.registry import decontamination_sources

    out_dir = Path(out_dir)
    with stage_run("build", params, inputs={"traces": str(traces)}, outputs={"dataset": str(out_dir)},
                   stage_params=_flat("build", params.build), description=NOTES["build"],
                   deferrable=True) as mlflow:
        stats = build_dataset(traces, out_dir, params, benchmarks=decontamination_sources(params.build))
        if mlflow is not None:
            mlflow.log_metrics({k: v for k, v in _numbers(stats).items()})
            mlflow.log_dict(stats, "build_stats.json")
    return stats


def _numbers(d: dict, prefix: str = "") -> dict[str, float]:
    """Flatten the numeric leaves of a nested dict into metric names (a.b.c)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}".replace(" ", "_")
        if isinstance(v, bool):
            out[key] = float(v)
        elif isinstance(v, (int, float)):
            out[key] = float(v)
        elif isinstance(v, dict):
            out.update(_numbers(v, key + "."))
    return out


# --- training and evaluation ------------------------------------------------------------------------------------

def _profile(params, name: str | None, track: bool):
    """The named training profile; when tracking, its reporters include MLflow (so the trainer's step metrics land
    in the stage's run: transformers' MLflow callback logs into the active run)."""
    profile = params.train.get(name)
    if track and "mlflow" not in profile.report_to:
        profile = profile.model_copy(update={"report_to": tuple(r for r in profile.report_to if r != "none")
                                             + ("mlflow",)})
    return profile


def init_model(params, profile_name: str | None, corpus: str | Path, out: str | Path) -> Path:
    """Build the embedded tiny model (tokenizer trained on the corpus) for profiles that name a tiny size."""
    from stepcode.jsonl import read_table
    from stepcode.training.models import build_tiny_model, corpus_texts

    profile = params.train.get(profile_name)
    with stage_run("init-model", params, inputs={"corpus": str(corpus)},
                   stage_params={"size": profile.model_size, "seed": profile.seed}, description=NOTES["init-model"]):
        rows = of_sources(read_table(corpus), profile.sources)
        return build_tiny_model(out, corpus_texts(rows), size=profile.model_size, seed=profile.seed)


def of_sources(rows, sources) -> list[dict]:
    """The rows of a profile's program sources (`sources` None: all): what its tokenizer is trained on, whether the
    flow or `stepcode train init-model` (dvc.yaml's init_model) builds the model, so both build the same one."""
    return [r for r in rows if sources is None or r.get("source") in sources]


def sft(params, profile_name: str | None, model: str | Path, data: str | Path, out: str | Path, *,
        run_name: str | None = None, curves: str | Path | None = None) -> dict:
    """SFT warm start. `run_name` names the MLflow stage run and the trainer's run (default: sft); the run's `stage`
    tag stays sft. `curves`: where to write the training curves for `dvc plots` (None: nowhere)."""
    from stepcode.training.sft import run_sft

    track = params.tracking.enabled
    profile = _profile(params, profile_name, track)
    with stage_run("sft", params, run_name=run_name, inputs={"sft_data": str(data)}, outputs={"model": str(out)},
                   stage_params={"profile": profile_name or params.train.profile, "base_model": str(model),
                                 **{f"sft.{k}": v for k, v in profile.sft.model_dump().items()}},
                   description=NOTES["sft"]) as mlflow:
        summary = run_sft(model, data, out, profile, run_name=run_name or "sft", curves=curves)
        if mlflow is not None:
            mlflow.log_metrics({"train_seconds": summary["seconds"], "steps": summary["steps"]})
    return summary


def grpo(params, profile_name: str | None, model: str | Path, data: str | Path, out: str | Path,
         mode: str = "bilevel", *, run_name: str | None = None, curves: str | Path | None = None) -> dict:
    """Bi-Level GRPO (or an ablation mode). `run_name` names the MLflow stage run and the trainer's run (default:
    grpo, and grpo-<mode> for the trainer); the run's `stage` tag stays grpo. `curves`: where to write the training
    curves for `dvc plots` (None: nowhere)."""
    from stepcode.training.grpo import run_grpo

    track = params.tracking.enabled
    profile = _profile(params, profile_name, track)
    with stage_run("grpo", params, run_name=run_name, inputs={"rl_data": str(data)}, outputs={"model": str(out)},
                   stage_params={"profile": profile_name or params.train.profile, "base_model": str(model),
                                 "mode": mode, **{f"grpo.{k}": v for k, v in profile.grpo.model_dump().items()}},
                   tags={"mode": mode}, description=NOTES["grpo"]) as mlflow:
        summary = run_grpo(model, data, out, profile, mode=mode, params=params,
                           run_name=run_name or f"grpo-{mode}", curves=curves)
        if mlflow is not None:
            from stepcode.tracking.registry import log_model

            mlflow.log_metrics({"train_seconds": summary["seconds"], "steps": summary["steps"]})
            log_model(str(out))   # an MLflow transformers model of the run that made it (what `register` registers)
    return summary


def evaluate(params, model: str | Path, out_dir: str | Path, *, heldout: str | Path | None = None,
             benchmarks: tuple[str, ...] = (), prompt: str = "stepcode", limit: int | None = None,
             heldout_limit: int | None = None, baseline: str | Path | None = None, sources=None,
             backend=None) -> dict:
    """Held-out (in-distribution, StepCode format, greedy) and benchmark scores; metrics JSON for `dvc metrics` (and
    `heldout.json` beside it for `dvc plots`: the held-out accuracies of the model and its baseline per task),
    per-row tables and generations in MLflow. `baseline` (e.g. the SFT checkpoint the model was trained from) is
    evaluated on the same held-out rows with the same decoding, under `baseline.heldout.*`; `sources` keeps the
    held-out rows of those program sources (a profile's `sources`; None: all). `backend`: the model already opened
    (e.g. an endpoint, `generate.open_backend`); None: load the folder `model`."""
    import json

    from stepcode.evals.generate import decoding_name, load_backend
    from stepcode.evals.generate import evaluate as evaluate_benchmarks
    from stepcode.evals.heldout import evaluate_heldout
    from stepcode.plots import heldout_rows, write_rows

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = {"heldout": str(heldout)} if heldout else {}
    with stage_run("evaluate", params, inputs=inputs, stage_params={"model": str(model), "benchmarks":
                   ",".join(benchmarks), "prompt": prompt, "limit": limit, "heldout_limit": heldout_limit,
                   "baseline": str(baseline) if baseline else "-",
                   "heldout_sources": ",".join(sources) if sources else "all",
                   "decoding": decoding_name(params.evaluate), "backend": getattr(backend, "name", "local folder"),
                   **_flat("evaluate", params.evaluate)}, description=NOTES["evaluate"]) as mlflow:
        from stepcode.evals import load_problems

        for b in benchmarks:   # fail early (e.g. a missing LiveCodeBench export) before loading a model
            load_problems(b, params)
        backend = backend or load_backend(str(model))
        metrics: dict[str, float] = {}
        records: list[dict] = []
        if heldout:
            m, records = evaluate_heldout(str(model), heldout, params, limit=heldout_limit, backend=backend,
                                          sources=sources)
            metrics.update(m)
            if baseline:
                m, _ = evaluate_heldout(str(baseline), heldout, params, limit=heldout_limit, sources=sources,
                                        prefix="baseline.heldout")
                metrics.update(m)
        if benchmarks:
            bench = evaluate_benchmarks(str(model), list(benchmarks), params, out_dir=out_dir, limit=limit,
                                        prompt=prompt, backend=backend)
            metrics.update({k: float(v) for k, v in bench.items() if isinstance(v, (int, float))})
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        compared = heldout_rows(metrics, Path(model).name, Path(baseline).name if baseline else None)
        if compared:   # the held-out bars of `dvc plots show` (model vs baseline, per task)
            write_rows(out_dir / "heldout.json", compared)
        if mlflow is not None:
            mlflow.log_metrics({k.replace("/", "."): v for k, v in metrics.items()})
            if records:
                mlflow.log_table({k: [r[k] for r in records] for k in records[0]}, "heldout_predictions.json")
            mlflow.log_artifacts(str(out_dir), "evaluation")
    return metrics


def evaluate_suite(params, name: str, out_dir: str | Path, *, backend, model: str, limit: int | None = None) -> dict:
    """`stepcode evaluate --suite NAME` (stepcode/evals/suite.py): one parent MLflow run `suite NAME` with the
    headline metrics and the tables, one nested `evaluate <Benchmark>` run per benchmark; returns the flat metrics."""
    from stepcode.evals.generate import decoding_name
    from stepcode.evals.registry import get
    from stepcode.evals.suite import SUITES, headline, run_benchmark, styles_of, suite_benchmarks, write_report
    from stepcode.sandbox.engine import Sandbox
    from stepcode.tracking.lineage import parent_run

    suite_benchmarks(name)   # ValueError for an unknown suite
    out, ep = Path(out_dir), params.evaluate
    metrics: dict[str, float] = {}
    skipped: dict[str, str] = {}
    backend_name = getattr(backend, "name", type(backend).__name__)
    with parent_run(f"suite {name}", params, tags={"suite": name, "model": str(model),
                                                   "decoding": decoding_name(ep)}) as mlflow, \
            Sandbox(params.sandbox, hash_seeds=(ep.hash_seed,)) as sb:
        if mlflow is not None:
            mlflow.log_params({"suite": name, "model": str(model), "limit": limit, "decoding": decoding_name(ep),
                               "max_new_tokens": ep.max_new_tokens, "backend": backend_name})
        for bench_name, tasks in SUITES[name]:
            bench = get(bench_name)
            with stage_run("evaluate", params, run_name=f"evaluate {bench.title}",
                           stage_params={"benchmark": bench_name, "suite": name, "model": str(model),
                                         "prompts": ",".join(styles_of(bench)), "limit": limit}) as run:
                got, why = run_benchmark(bench_name, tasks, params, out, backend=backend, limit=limit, sandbox=sb)
                if why is not None:
                    skipped[bench_name] = why
                    if run is not None:
                        run.set_tag("skipped", why[:5000])
                    continue
                if run is not None:
                    run.log_metrics({k: float(v) for k, v in got.items()})
                metrics.update(got)
        write_report(name, metrics, skipped, out, params=params, model=model, limit=limit, backend=backend)
        if mlflow is not None:
            mlflow.log_metrics({k: float(v) for k, v in headline(metrics, name).items()})
            for f in ("table.md", "table.html", "run.json"):
                mlflow.log_artifact(str(out / f))
    return metrics


def register(params, model_dir: str | Path, metrics: dict[str, float], name: str | None = None):
    """Register the trained model as a new version of the model its training run logged (found by its DVC md5; the
    version's source run is that training run), with the metrics on it, its model card, and the alias `candidate`."""
    import mlflow

    from stepcode.tracking.registry import register_model

    name = name or params.pipeline.model_name
    with stage_run("register", params, stage_params={"model_name": name},
                   description=NOTES["register"]) as run_mlflow:
        run_id = run_mlflow.active_run().info.run_id if run_mlflow is not None else None
        if run_id is None:
            raise RuntimeError("registering a model needs tracking enabled (params: tracking.enabled)")
        version = register_model(str(model_dir), name, run_id, metrics)
        mlflow.set_tag("model_version", version.version)
    return version
