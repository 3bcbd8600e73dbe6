"""Training commands: build the tiny model, SFT warm start, Bi-Level GRPO.

    stepcode train init-model -o models/tiny --corpus data/traces [--size tiny]
    stepcode train sft  --model models/tiny     --data data/sft.jsonl -o models/tiny-sft [--profile tiny-cpu]
    stepcode train grpo --model models/tiny-sft --data data/rl.jsonl  -o models/tiny-rl  --mode bilevel|step|terminal
    # --curves metrics/train-tiny-cpu/sft.json: the per-step curves `dvc plots show` draws (dvc.yaml passes it)
    # multi-GPU: accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m stepcode.cli train grpo ...

Exit codes: 0 done; 2 bad input (missing file, unknown profile, malformed rows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer

from stepcode.commands.common import (
    GRPO_MODES,
    ParamsOpt,
    ProfileOpt,
    check_output,
    check_params_workers,
    check_profile,
    check_workers,
    fail,
    require_file,
    require_model_dir,
    require_table,
    writing,
)
from stepcode.training.models import SIZES

MODEL_SIZES = tuple(SIZES)
RunNameOpt = typer.Option(None, "--run-name", help="name of the MLflow stage run and of the trainer's run "
                                                 "(reporters); default: the stage (sft, grpo)")
CurvesOpt = typer.Option(None, "--curves", help="also write the training curves (one JSON row per logged step: "
                                               "loss, learning rate; GRPO: reward, step accuracy...) for `dvc plots`")


def _model_path(model: Optional[Path], profile_name: Optional[str], params) -> Path:
    """--model, else the profile's model; a user error unless it is a local Hugging Face model directory."""
    if model is not None:
        require_model_dir(model, "--model")
        return model
    name = profile_name or params.train.profile
    if not params.train.get(name).model:
        fail(f"no --model given and profile {name!r} names no model (give --model DIR, e.g. models/{name}/base, "
             "which `stepcode train init-model` or the pipeline builds)")
    path = Path(params.train.get(name).model)
    require_model_dir(path, f"profile {name!r} model")
    return path


def _report(summary: dict) -> None:
    last = summary.get("last_log", {})
    keys = ("loss", "reward", "stepcode/final_accuracy", "stepcode/step_accuracy", "mean_token_accuracy")
    shown = ", ".join(f"{k}={last[k]:.4g}" for k in keys if isinstance(last.get(k), (int, float)))
    typer.echo(f"{summary['steps']} steps in {summary['seconds']} s -> {summary['out_dir']}"
               + (f" ({shown})" if shown else ""))


def init_model(out: Path = typer.Option(..., "-o", "--out", help="model directory to create (HF format)"),
               corpus: list[Path] = typer.Option(..., "--corpus", help="JSONL files whose text trains the tokenizer "
                                                 "(programs, traces, sft rows); repeat the option for several"),
               size: Optional[Literal[MODEL_SIZES]] = typer.Option(None, "--size", help="model size (default: the "
                                                                   "profile's model_size)"),
               profile: Optional[str] = ProfileOpt,
               seed: Optional[int] = typer.Option(None, "--seed", help="weight initialisation seed (default: the "
                                                                 "profile's seed, as the pipeline uses)"),
               params_path: Path = ParamsOpt):
    """Build the embedded tiny Llama and its byte-level BPE tokenizer, offline."""
    from stepcode.jsonl import read_table
    from stepcode.training.models import build_tiny_model, corpus_texts

    params = check_profile(profile, params_path)
    size = size or params.train.get(profile).model_size
    seed = params.train.get(profile).seed if seed is None else seed
    if size is None:
        fail(f"profile {profile or params.train.profile!r} builds no model (its model_size is null): give --size")
    for path in corpus:
        require_table(path, "--corpus")
    check_output(out, "-o", directory=True)
    from stepcode.pipeline.stages import of_sources

    rows = of_sources((row for path in corpus for row in read_table(path)), params.train.get(profile).sources)
    texts = corpus_texts(rows)   # a malformed line: CorpusError
    with writing("-o", out):
        out_dir = build_tiny_model(out, texts, size=size, seed=seed)
    typer.echo(f"built a {size} Llama from {len(texts)} texts -> {out_dir}")


def sft(model: Optional[Path] = typer.Option(None, "--model", help="model directory (default: the profile's)"),
        data: Path = typer.Option(..., "--data", help="SFT rows (JSONL), as written by `stepcode build`"),
        out: Path = typer.Option(..., "-o", "--out", help="output model directory"),
        profile: Optional[str] = ProfileOpt, run_name: Optional[str] = RunNameOpt,
        curves: Optional[Path] = CurvesOpt, params_path: Path = ParamsOpt):
    """SFT warm start (TRL SFTTrainer, loss on completions only). Logged to MLflow as the `sft` stage."""
    from stepcode.pipeline import stages
    params = check_profile(profile, params_path)
    model_path = _model_path(model, profile, params)
    require_file(data, "--data", "write it with `stepcode build`")
    check_output(out, "-o", directory=True)
    check_output(curves, "--curves")
    try:
        with writing("-o", out):   # a refused --curves write names its file
            summary = stages.sft(params, profile, model_path, data, out, run_name=run_name, curves=curves)
    except ValueError as e:  # bad rows the library reports as plain ValueErrors
        fail(str(e))
    _report(summary)


def grpo(model: Optional[Path] = typer.Option(None, "--model", help="model directory (default: the profile's)"),
         data: Path = typer.Option(..., "--data", help="RL rows (JSONL), as written by `stepcode build`"),
         out: Path = typer.Option(..., "-o", "--out", help="output model directory"),
         mode: Literal[GRPO_MODES] = typer.Option("bilevel", "--mode", help="bilevel; step (lambda = 0); terminal "
                                                  "(vanilla GRPO)"),
         profile: Optional[str] = ProfileOpt, run_name: Optional[str] = RunNameOpt,
         curves: Optional[Path] = CurvesOpt, params_path: Path = ParamsOpt):
    """Bi-Level GRPO (or an ablation) with sandbox-checked rewards. Logged to MLflow as the `grpo` stage."""
    from stepcode.pipeline import stages
    params = check_profile(profile, params_path)
    model_path = _model_path(model, profile, params)
    require_file(data, "--data", "write it with `stepcode build`")
    check_output(out, "-o", directory=True)
    check_output(curves, "--curves")
    reward_workers = params.train.get(profile).grpo.reward_workers
    if reward_workers:
        check_workers(reward_workers, f"{params_path}: train.profiles.{profile or params.train.profile}.grpo."
                      "reward_workers =", len(params.trace.hash_seeds))
    else:
        check_params_workers(params, params_path, len(params.trace.hash_seeds))
    try:
        with writing("-o", out):   # a refused --curves write names its file
            summary = stages.grpo(params, profile, model_path, data, out, mode, run_name=run_name, curves=curves)
    except ValueError as e:  # bad rows the library reports as plain ValueErrors
        fail(str(e))
    _report(summary)


def register(app: typer.Typer) -> None:
    train_app = typer.Typer(help="Train: tiny model, SFT warm start, Bi-Level GRPO.", no_args_is_help=True)
    train_app.command("init-model")(init_model)
    train_app.command("sft")(sft)
    train_app.command("grpo")(grpo)
    app.add_typer(train_app, name="train")
