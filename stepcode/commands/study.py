"""Study commands: `stepcode study ablation` — the paper's ablation (SFT only, Terminal-, Step-, Bi-Level GRPO, each
GRPO arm at the learning rate a validation sweep chose) at toy scale, in one command (stepcode/pipeline/study.py).

    stepcode study ablation [--seeds 3] [--budget-minutes 150]     # full: reports/ablation/README.md + plots + MLflow
    stepcode study ablation --micro                                 # = --variant micro: a few minutes (CI)
    stepcode study ablation --variant gpu --device cuda             # any study.variants entry; cuda: bf16 on the GPU
    stepcode study report reports/ablation/results.json             # re-render README.md and plots from results
                                                                    # (and the lab notebook choices.yaml beside it)

Exit codes: 0 done; 2 bad input (unknown variant, missing dataset, a budget that leaves no GRPO step, --device cuda
without a GPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stepcode.commands.common import (
    ParamsOpt,
    check_output,
    check_params_workers,
    fail,
    load_json,
    load_params,
    writing,
)


def register(app: typer.Typer) -> None:
    study = typer.Typer(help="Studies: the ablation of the paper's supervision choices.", no_args_is_help=True)
    app.add_typer(study, name="study")

    @study.command()
    def ablation(seeds: Optional[int] = typer.Option(None, "--seeds", min=1, help="GRPO seeds per arm (default: "
                                                     "the variant's, study.variants in params.yaml)"),
                 budget_minutes: Optional[float] = typer.Option(
                     None, "--budget-minutes", help="planned wall time; caps GRPO steps through the cost model, "
                                                    "never by the clock (arms stay equal)"),
                 variant: str = typer.Option("full", "--variant", help="a study variant: any key of "
                                             "study.variants in params.yaml (full, micro, gpu, ...)"),
                 micro: bool = typer.Option(False, "--micro", help="shortcut for --variant micro: a few minutes, "
                                                                   "for CI"),
                 device: Optional[str] = typer.Option(
                     None, "--device", help="cpu or cuda (cuda: bf16 on the GPU, torch's default threads); default: "
                                            "what the variant's training profile says (use_cpu)"),
                 out: Optional[Path] = typer.Option(None, "-o", "--out", help="report folder (default: "
                                                    "study.report_dir for the full study)"),
                 params_path: Path = ParamsOpt):
        """One SFT warm start; a learning-rate sweep per GRPO arm on a validation split; then SFT only /
        Terminal-GRPO / Step-GRPO / Bi-Level GRPO with equal steps over seeds; held-out (greedy and sampled) and
        CRUXEval-O (StepCode format) evaluation; means with 95% intervals; the paper's claims; report + MLflow runs."""
        from stepcode.pipeline.study import default_report_dir, run_study

        params = load_params(params_path)
        if micro and variant not in ("full", "micro"):
            fail(f"--micro is --variant micro; it cannot be combined with --variant {variant}")
        variant = "micro" if micro else variant
        if variant not in params.study.variants:
            fail(f"unknown study variant {variant!r} (--variant): choose one of "
                 f"{', '.join(sorted(params.study.variants))} (study.variants in {params_path})")
        if device not in (None, "cpu", "cuda"):
            fail(f"--device must be cpu or cuda, got {device!r}")
        check_params_workers(params, params_path)
        report_dir = out or default_report_dir(params, variant)
        check_output(report_dir, "-o" if out else "the report folder", directory=True)
        check_output(Path(params.study.work_dir), f"study.work_dir in {params_path}", directory=True)
        try:
            with writing("-o" if out else "the report folder", report_dir):
                results = run_study(params, variant, seeds=seeds, budget_minutes=budget_minutes, out_dir=out,
                                    device=device, echo=typer.echo)
        except ValueError as e:  # checks of the study's settings (variant, budget, data) the library words itself
            fail(str(e))
        out_dir = out or default_report_dir(params, variant)
        typer.echo(f"report: {out_dir / 'README.md'} (MLflow parent run {results['mlflow']['parent_run_id']})")

    @study.command()
    def report(results_json: Path = typer.Argument(..., help="results.json written by `stepcode study ablation`"),
               params_path: Path = ParamsOpt):
        """Re-render README.md and the plots beside results.json (no training, no evaluation)."""
        from stepcode.pipeline.study import read_choices, write_report

        params = load_params(params_path)
        results = load_json(results_json, "RESULTS_JSON", "written by `stepcode study ablation`")
        if not isinstance(results, dict):
            fail(f"RESULTS_JSON {results_json}: expected a JSON object (written by `stepcode study ablation`), got "
                 f"{type(results).__name__}")
        check_output(results_json.parent, "RESULTS_JSON's folder", directory=True)   # README.md, plots go there
        # The lab notebook (choices.yaml beside results.json, else in study.report_dir) records how the settings were
        # found; a re-render refreshes the report's choices from it (no entry for the variant: results.json's own).
        choices = read_choices(results.get("variant"), results_json.parent, params.study.report_dir)
        if choices is not None:
            results["choices"] = choices
        typer.echo(str(write_report(results, results_json.parent)))
