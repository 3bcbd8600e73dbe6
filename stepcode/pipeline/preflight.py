"""Check what a pipeline run needs before any work starts, so a run that cannot finish fails in a second with one line.

    from stepcode.pipeline.preflight import check_pipeline
    check_pipeline(params, profile="tiny-cpu", stop_after=None)   # raises a UserError naming the fix, or returns

It checks the options (profile, stop point), fetches the DVC-tracked corpus when it is missing (a fresh clone), and
checks every file a stage later reads: the benchmark files the decontamination needs, the benchmarks the evaluation
scores, and a profile's local base model. The CLI runs it before it starts Prefect; the flow runs it again first
thing, for runs started elsewhere (a deployment, a worker on a fresh machine).
"""

from __future__ import annotations

from pathlib import Path

from stepcode.errors import MissingInput, UserError

STOP_POINTS = ("trace", "validate", "build", "sft", "grpo")   # `--stop-after`: the stage a run may end after


def check_stop_after(stop_after: str | None) -> None:
    if stop_after is not None and stop_after not in STOP_POINTS:
        raise UserError(f"--stop-after {stop_after!r}: choose one of {', '.join(STOP_POINTS)}")


def _reached(stage: str, stop_after: str | None) -> bool:
    """Whether a run that stops after `stop_after` gets to `stage` (build, train, evaluate)."""
    order = [*STOP_POINTS, "evaluate"]
    return stop_after is None or order.index(stage) <= order.index(stop_after)


def local_base_model(prof, name: str, root: str | Path = ".") -> Path | None:
    """The profile's base model folder if it exists; None when the pipeline builds it (the profile names a
    `model_size`); else a MissingInput: nothing is downloaded at run time."""
    if prof.model and (Path(root) / prof.model / "config.json").is_file():
        return Path(prof.model)
    if prof.model_size is not None:
        return None
    raise MissingInput(f"profile {name!r} trains {prof.model}, which is not a local Hugging Face model folder "
                       "(put the model there first: nothing is fetched at run time)")


def check_pipeline(params, profile: str | None, stop_after: str | None, root: str | Path = ".") -> None:
    from stepcode.dvcdata import ensure_present

    root = Path(root)
    check_stop_after(stop_after)
    prof = params.train.get(profile)                  # ConfigError naming the defined profiles
    ensure_present(root / "data" / "raw",             # pulled from the DVC remote on a fresh clone
                   hint="run from the project folder, or make a corpus: `stepcode synth -o data/raw/synth.jsonl`")
    if _reached("build", stop_after):
        from stepcode.evals.registry import decontamination_sources

        for name, path in decontamination_sources(params.build).items():
            if not (root / path).is_file():
                raise MissingInput(f"benchmark {name!r}: no such file {path} (the decontamination needs it; "
                                   "set build.benchmarks_dir in params.yaml)")
    if _reached("sft", stop_after):
        local_base_model(prof, profile or params.train.profile, root)
    if _reached("evaluate", stop_after):
        from stepcode.evals import load_problems
        from stepcode.evals.generate import check_request

        try:                                          # before any model loads
            check_request(params.pipeline.eval_benchmarks, params.pipeline.eval_prompt)
        except UserError:
            raise
        except ValueError as e:
            raise UserError(f"params.yaml pipeline.eval_benchmarks / eval_prompt: {e}") from None
        for benchmark in params.pipeline.eval_benchmarks:
            load_problems(benchmark, params)          # MissingInput with the export command for LiveCodeBench
