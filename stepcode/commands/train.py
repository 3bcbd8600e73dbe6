"""Training commands: build the tiny model, SFT warm start, Bi-Level GRPO.

    stepcode train init-model -o models/tiny --corpus data/traces.jsonl [--size tiny]
    stepcode train sft  --model models/tiny     --data data/sft.jsonl -o models/tiny-sft [--profile tiny-cpu]
    stepcode train grpo --model models/tiny-sft --data data/rl.jsonl  -o models/tiny-rl  --mode bilevel|step|terminal
    # multi-GPU: accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m stepcode.cli train grpo ...

Exit codes: 0 done; 2 bad input (missing file, unknown profile, malformed rows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stepcode.commands.common import ParamsOpt, load_params as _params

ProfileOpt = typer.Option(None, "--profile", help="training profile from params.yaml (default: train.profile)")
RunNameOpt = typer.Option(None, "--run-name", help="run name for the reporters (MLflow, ...)")



def _profile(params, name: Optional[str]):
    try:
        return params.train.get(name)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def _model_path(model: Optional[Path], profile) -> Path:
    path = model or (Path(profile.model) if profile.model else None)
    if path is None:
        raise typer.BadParameter("no --model given and the profile names no model")
    if not (path / "config.json").is_file():
        typer.echo(f"error: {path} is not a local Hugging Face model directory (no config.json)", err=True)
        raise typer.Exit(2)
    return path


def _require(path: Path) -> None:
    if not path.is_file():
        typer.echo(f"error: {path}: no such file", err=True)
        raise typer.Exit(2)


def _report(summary: dict) -> None:
    last = summary.get("last_log", {})
    keys = ("loss", "reward", "stepcode/final_accuracy", "stepcode/step_accuracy", "mean_token_accuracy")
    shown = ", ".join(f"{k}={last[k]:.4g}" for k in keys if isinstance(last.get(k), (int, float)))
    typer.echo(f"{summary['steps']} steps in {summary['seconds']} s -> {summary['out_dir']}"
               + (f" ({shown})" if shown else ""))


def init_model(out: Path = typer.Option(..., "-o", "--out", help="model directory to create (HF format)"),
               corpus: list[Path] = typer.Option(..., "--corpus", help="JSONL files whose text trains the tokenizer "
                                                 "(programs, traces, sft rows); repeat the option for several"),
               size: Optional[str] = typer.Option(None, "--size", help="micro | tiny | 0.5b (default: the profile's)"),
               profile: Optional[str] = ProfileOpt,
               seed: int = typer.Option(0, "--seed", help="weight initialisation seed"),
               params_path: Path = ParamsOpt):
    """Build the embedded tiny Llama and its byte-level BPE tokenizer, offline."""
    from stepcode.corpus import CorpusError, read_jsonl
    from stepcode.models import SIZES, build_tiny_model, corpus_texts

    size = size or _profile(_params(params_path), profile).model_size
    if size not in SIZES:
        raise typer.BadParameter(f"unknown size {size!r}; expected one of {sorted(SIZES)}")
    for path in corpus:
        _require(path)
    try:
        texts = corpus_texts(row for path in corpus for row in read_jsonl(path))
    except CorpusError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    out_dir = build_tiny_model(out, texts, size=size, seed=seed)
    typer.echo(f"built a {size} Llama from {len(texts)} texts -> {out_dir}")


def sft(model: Optional[Path] = typer.Option(None, "--model", help="model directory (default: the profile's)"),
        data: Path = typer.Option(..., "--data", help="SFT rows (JSONL), as written by `stepcode build`"),
        out: Path = typer.Option(..., "-o", "--out", help="output model directory"),
        profile: Optional[str] = ProfileOpt, run_name: Optional[str] = RunNameOpt, params_path: Path = ParamsOpt):
    """SFT warm start (TRL SFTTrainer, loss on completions only). Logged to MLflow as the `sft` stage."""
    from stepcode import stages

    params = _params(params_path)
    prof = _profile(params, profile)
    model_path = _model_path(model, prof)
    _require(data)
    try:
        summary = stages.sft(params, profile, model_path, data, out)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    _report(summary)


def grpo(model: Optional[Path] = typer.Option(None, "--model", help="model directory (default: the profile's)"),
         data: Path = typer.Option(..., "--data", help="RL rows (JSONL), as written by `stepcode build`"),
         out: Path = typer.Option(..., "-o", "--out", help="output model directory"),
         mode: str = typer.Option("bilevel", "--mode", help="bilevel | step (lambda = 0) | terminal (vanilla GRPO)"),
         profile: Optional[str] = ProfileOpt, run_name: Optional[str] = RunNameOpt, params_path: Path = ParamsOpt):
    """Bi-Level GRPO (or an ablation) with sandbox-checked rewards. Logged to MLflow as the `grpo` stage."""
    from stepcode import stages
    from stepcode.bilevel import MODES

    if mode not in MODES:
        raise typer.BadParameter(f"unknown mode {mode!r}; expected one of {MODES}")
    params = _params(params_path)
    prof = _profile(params, profile)
    model_path = _model_path(model, prof)
    _require(data)
    try:
        summary = stages.grpo(params, profile, model_path, data, out, mode)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    _report(summary)


def register(app: typer.Typer) -> None:
    train_app = typer.Typer(help="Train: tiny model, SFT warm start, Bi-Level GRPO.", no_args_is_help=True)
    train_app.command("init-model")(init_model)
    train_app.command("sft")(sft)
    train_app.command("grpo")(grpo)
    app.add_typer(train_app, name="train")
