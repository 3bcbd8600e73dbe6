"""`stepcode score` and `stepcode evaluate`: benchmark scoring with the official semantics (stepcode/evals).

    stepcode score --benchmark cruxeval --task output generations.json -o scored.json
    stepcode score --benchmark cruxeval --task input gens.json --skip-rule false --samples sample_1,sample_7
    stepcode score --benchmark lcb --task output raw_completions.json --extract direct
    stepcode evaluate --model models/run --benchmarks cruxeval,lcb --limit 3 --prompt official -o eval/
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stepcode.commands.common import ParamsOpt, fail as _fail, load_params as _params




def register(app: typer.Typer) -> None:
    @app.command()
    def score(generations: Path = typer.Argument(..., help='generations JSON: {"sample_<k>": list of strings}'),
              benchmark: str = typer.Option(..., "--benchmark", help="cruxeval | lcb"),
              task: str = typer.Option(..., "--task", help="output | input (lcb: output only)"),
              out: Optional[Path] = typer.Option(None, "-o", "--out", help="write the official result JSON here"),
              skip_rule: Optional[str] = typer.Option(
                  None, "--skip-rule", help="copied-input rule: drop (CRUXEval default) | false (older CRUXEval "
                                            "files) | lcb (LiveCodeBench default)"),
              samples: Optional[str] = typer.Option(
                  None, "--samples", help="comma-separated ids to score (default: every benchmark problem, and the "
                                          "file must have them all)"),
              extract: str = typer.Option(
                  "none", "--extract", help="none: the strings are extracted predictions (official generations.json"
                                            " / raw_generations); direct | cot: raw model text, extract first"),
              params_path: Path = ParamsOpt):
        """Score predictions by execution in the sandbox; write the official result format; print pass@1/pass@5."""
        from stepcode.evals import score_file

        params = _params(params_path)
        chosen = [s.strip() for s in samples.split(",") if s.strip()] if samples else None
        try:
            result = score_file(benchmark, task, generations, out, params, skip_rule=skip_rule, samples=chosen,
                                extract=extract, progress=True)
        except (ValueError, TypeError, FileNotFoundError) as e:
            _fail(str(e))
        n = len(result["raw_scored_generations"])
        typer.echo(f"{benchmark}-{task}: {n} samples, skip rule {result['skip_rule']}")
        typer.echo(f"pass@1: {result['pass_at_1']:.2f}  pass@5: {result['pass_at_5']:.2f}")
        if out:
            typer.echo(f"wrote {out}")

    @app.command()
    def evaluate(model: Path = typer.Option(..., "--model", help="local Hugging Face model folder"),
                 benchmarks: str = typer.Option("cruxeval,lcb", "--benchmarks", help="comma-separated: cruxeval,lcb"),
                 limit: Optional[int] = typer.Option(None, "--limit", help="only the first N problems of each"),
                 prompt: str = typer.Option("official", "--prompt", help="official | stepcode (instrumented task)"),
                 out: Path = typer.Option(Path("eval"), "-o", "--out", help="output folder"),
                 heldout: Optional[Path] = typer.Option(None, "--heldout", help="also the held-out RL rows "
                                                        "(in-distribution, greedy): final/step accuracy, gap"),
                 heldout_limit: Optional[int] = typer.Option(None, "--heldout-limit", help="first N held-out rows"),
                 greedy: bool = typer.Option(False, "--greedy", help="greedy decoding (paper-style, labelled)"),
                 register_as: Optional[str] = typer.Option(None, "--register", help="register the model under "
                                                           "this name in the MLflow registry, with its metrics"),
                 params_path: Path = ParamsOpt):
        """Generate with the model, extract, score in the sandbox; write generations, scored files, metrics.json.
        Logged to MLflow as the `evaluate` stage (metrics, per-row table, generations as artifacts)."""
        from stepcode import stages

        params = _params(params_path)
        if greedy:
            params = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"greedy": True})})
        names = tuple(b.strip() for b in benchmarks.split(",") if b.strip())
        try:
            metrics = stages.evaluate(params, model, out, heldout=heldout, benchmarks=names, prompt=prompt,
                                      limit=limit, heldout_limit=heldout_limit)
        except (ValueError, FileNotFoundError) as e:
            _fail(str(e))
        if register_as:
            version = stages.register(params, model, metrics, name=register_as)
            typer.echo(f"registered {register_as} v{version.version}")
        for key, value in metrics.items():
            typer.echo(f"{key:48s} {value:8.2f}")
        typer.echo(f"wrote {out}/metrics.json")
