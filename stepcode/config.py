"""Typed configuration: `params.yaml` is the one source of every knob.

    from stepcode.config import load_params
    params = load_params()            # ./params.yaml, validated
    params.sandbox.timeout_s          # 3.0

Every section is a pydantic model with `extra="forbid"` and strict types, so an unknown key (a typo) or a value of
the wrong type fails at load time with a message that names the key, instead of silently falling back to a default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from stepcode.errors import UserError


def _int_to_float(v):
    """YAML `3` is an int: accept it where a float is meant (the sections are strict otherwise; a bool stays
    refused)."""
    return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


Float = Annotated[float, BeforeValidator(_int_to_float)]   # every float field of the params


def _list_to_tuple(cls, v):
    """YAML has lists, the params hold tuples (hashable, frozen): accept a list where a tuple is meant."""
    return tuple(v) if isinstance(v, list) else v


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SandboxParams(_Section):
    workers: int = Field(0, ge=0, description="parallel sandbox workers; 0 = all cores")
    timeout_s: Float = Field(3.0, gt=0, description="wall-clock limit per program run")
    cpu_s: int = Field(4, ge=1, description="RLIMIT_CPU per program run")
    memory_mb: int = Field(1024, ge=64, description="RLIMIT_AS per program run")
    file_size_mb: int = Field(8, ge=0, description="RLIMIT_FSIZE per program run")
    open_files: int = Field(64, ge=8, description="RLIMIT_NOFILE per program run")
    processes: int = Field(32, ge=1, description="RLIMIT_NPROC for a worker's sandbox uid")
    stdout_kb: int = Field(64, ge=1, description="cap on the program's own captured output")
    disk_mb: int = Field(64, ge=1, description="size of the tmpfs holding a server's per-program temp dirs")
    fork_loop: Literal["c", "python"] = Field("c", description="the servers' fork loop: c "
                                                                "(stepcode/sandbox/_forkloop.c, "
                                              "when built) or python (the fallback; same verdicts, slower)")


    def resolved_workers(self) -> int:
        return self.workers or os.cpu_count() or 1


class TraceParams(_Section):
    max_lines: int = Field(10, ge=1, description="traces longer than this are too_long")
    max_output_chars: int = Field(2000, ge=16, description="longest accepted repr of a return value")
    max_line_chars: int = Field(2000, ge=16, description="longest accepted anchor line")
    hash_seeds: tuple[int, int] = Field((0, 1), description="PYTHONHASHSEED of the two runs")
    part_rows: int = Field(500, ge=1, description="rows per part file of a trace folder (part-00000.jsonl, ...); "
                           "also the flow's fan-out unit: one trace task per part")

    _list_is_a_pair = field_validator("hash_seeds", mode="before")(_list_to_tuple)

    @field_validator("hash_seeds")
    @classmethod
    def _distinct(cls, v):
        if v[0] == v[1]:
            raise ValueError("the two hash seeds must differ, or nondeterminism goes undetected")
        return v


class SynthParams(_Section):
    n: int = Field(2000, ge=1, description="programs the synthesizer emits")
    seed: int = Field(1234, description="synthesizer seed")


class TrackingParams(_Section):
    enabled: bool = Field(True, description="log stages to MLflow (lineage); off for quick experiments")
    uri: str = Field("sqlite:///mlflow.db", description="MLflow store; env MLFLOW_TRACKING_URI overrides it")
    experiment: str = Field("stepcode", description="MLflow experiment of every run")
    artifact_root: str = Field("mlruns", description="artifact folder for a new experiment in a local store "
                               "(relative: to the cwd); never used with a tracking server (http/https), whose "
                               "artifact store decides")
    system_metrics: bool = Field(True, description="stage runs log CPU, memory, disk, network (and GPU, with "
                                 "nvidia-ml-py) as system/* metrics while they run, sampled every 2 s")
    dvc_push: bool = Field(True, description="the pipeline pushes what it records in DVC to the default remote, so "
                           "`stepcode lineage fetch` gets any run's data back; off: cache + dvc.lock only")
    log_in_background: bool = Field(True, description="a data stage started alone (stepcode trace/validate/build, "
                                    "dvc repro) records its run to pending_dir and a background process logs it to "
                                    "MLflow after the command exits (seconds later), so MLflow's ~4 s import is not "
                                    "in front of the work; off: log inline")
    pending_dir: str = Field(".stepcode/pending-runs", description="recorded runs not yet logged to MLflow "
                             "(relative: to the cwd); any command that opens the store logs them first")


class OrchestrationParams(_Section):
    """Where the flows' fanned-out tasks (trace parts, score files) run, and where their inputs and outputs live."""
    task_runner: Literal["process", "dask"] = Field("process", description="process: a local process pool as wide as "
                                                    "sandbox.workers; dask: a dask.distributed cluster (prefect-dask)")
    dask_address: str = Field("", description="scheduler address (tcp://host:8786) of a running cluster; empty: a "
                              "LocalCluster started for the run")
    dask_workers: int = Field(0, ge=0, description="worker processes of that LocalCluster (0: sandbox.workers)")
    storage: str = Field("data/work/flow", description="an fsspec URL (s3://bucket/prefix, gs://...) or a path "
                         "(relative: to the project root) that every worker reads and writes: the tasks' inputs "
                         "and outputs go there, never a path only the flow's machine sees")


class ValidateParams(_Section):
    """Bounds of the great-expectations gate over a trace table (stepcode/data/validation.py). The defaults accept both
    training data like the paper's (mean 4.1 anchors per ok row, range 1–10) and benchmark traces (CRUXEval: 2.5)."""

    min_ok_share: Float = Field(0.5, ge=0, le=1, description="least share of rows with status ok; below it, "
                                "the tracer or the corpus is broken")
    max_nondeterministic_share: Float = Field(0.05, ge=0, le=1, description="most share of nondeterministic rows")
    min_mean_anchors: Float = Field(1.5, ge=0, description="least mean trace length of ok rows; near 1 means "
                                    "only return_val anchors, i.e. the instrumenter stopped anchoring assignments")
    max_mean_anchors: Float = Field(8.0, ge=0, description="most mean trace length of ok rows")
    min_literal_output_share: Float = Field(0.95, ge=0, le=1, description="least share of ok rows whose output "
                                            "is a Python literal (`mostly`); the others are flagged in the "
                                            "quarantine file, and only fail the gate below this share")

    @field_validator("max_mean_anchors")
    @classmethod
    def _ordered(cls, v, info):
        if v < info.data.get("min_mean_anchors", 0):
            raise ValueError("max_mean_anchors must be >= min_mean_anchors")
        return v


class EvaluateParams(_Section):
    """Benchmark evaluation (stepcode/evals). Defaults are the official CRUXEval/LCB protocol."""
    cruxeval_path: str = Field("data/benchmarks/cruxeval/cruxeval.jsonl",
                               description="CRUXEval JSONL (800 rows); relative paths are relative to the cwd")
    lcb_path: str = Field("data/benchmarks/lcb_execution.jsonl",
                          description="JSONL export of HF livecodebench/execution-v2, split test (479 rows); it "
                                      "cannot be fetched offline, see stepcode/evals/livecodebench.py")
    n: int = Field(10, ge=1, description="generations per problem (official: 10)")
    temperatures: tuple[Float, ...] = Field((0.2, 0.8), min_length=1,
                                            description="one run per temperature; pass@1 is read from the first, "
                                                        "pass@5 from the last (official: 0.2 and 0.8)")
    top_p: Float = Field(0.95, gt=0, le=1, description="nucleus sampling (official: 0.95)")
    max_new_tokens: int = Field(1024, ge=1, description="generated tokens per completion (LCB official: 2000)")
    stop: tuple[str, ...] = Field(("[/ANSWER]",), description="stop strings of the official prompts; the text is "
                                                                "cut at the first one")
    greedy: bool = Field(False, description="paper-style run: one greedy completion per problem (n and "
                                            "temperatures ignored); labelled greedy, not leaderboard-comparable")
    cot: bool = Field(False, description="official chain-of-thought prompts instead of the direct ones")
    check_timeout_s: Float = Field(3.0, gt=0, description="per-check limit (official: 3 s)")
    hash_seed: int = Field(0, ge=0, description="PYTHONHASHSEED of the checks (upstream leaves it random)")
    reval_dir: str = Field("data/benchmarks/reval", description="holds DREval_data.jsonl and "
                           "DREval_tasks.jsonl; relative paths are relative to the cwd")
    reval_cache_dir: str = Field("data/reval", description="REval ground-truth cache: truth-<digest>.jsonl and its "
                                 ".report.json (excluded pairs with reasons)")
    reval_python: str = Field("3.11", pattern=r"^3\.\d+$", description="the Python minor version REval truths "
                              "are pinned to (they differ across 3.10/3.11/3.12); building under another one fails")
    reval_timeout_s: Float = Field(120.0, gt=0, description="limit per traced REval call (upstream: 120 s)")

    _list_is_a_tuple = field_validator("temperatures", "stop", mode="before")(_list_to_tuple)

    @field_validator("temperatures")
    @classmethod
    def _non_negative(cls, v):
        if any(t < 0 for t in v):
            raise ValueError("temperatures must be >= 0")
        return v


class BuildParams(_Section):
    """The build stage (stepcode/data/dataset.py): trace rows -> SFT, RL and held-out examples, decontaminated."""
    input_task: bool = Field(True, description="also emit an input-prediction example per row (besides output)")
    reasoning: Literal["execution", "template", "none"] = Field(
        "template", description="the <reasoning> before each anchor in SFT targets: execution (derived from the "
                                "sandboxed run, stepcode/data/reasoning.py), a template sentence naming the "
                                "variable, or empty")
    reasoning_by_source: dict[str, Literal["execution", "template", "none"]] = Field(
        default_factory=dict, description="program source -> the reasoning style of its rows, overriding "
                                          "`reasoning` (e.g. synth-logic: none, the tiny main job's corpus)")
    heldout_fraction: Float = Field(0.1, ge=0, le=1, description="share of programs (sha256 of the id before any "
                                                                 "'#') held out of sft/rl for evaluation")
    rl_fraction: Float = Field(0.5, ge=0, le=1, description="share of the programs not held out that go to rl.jsonl "
                               "(sha256 of the id before any '#', an independent coordinate); the rest go to "
                               "sft.jsonl: no program is in two of sft, rl and held-out")
    benchmarks_dir: str = Field("data/benchmarks", description="holds cruxeval/cruxeval.jsonl and "
                                "reval/DREval_data.jsonl; relative to the cwd (the project root)")
    lcb_path: str | None = Field(None, description="LiveCodeBench-Exec JSONL export (`code` field) to "
                                 "decontaminate against too; relative to the project root; null = skip it")
    decontam_n: int = Field(10, ge=1, description="n of the code-token n-grams (stepcode/data/decontam.py)")
    decontam_min_coverage: Float = Field(0.8, gt=0, le=1, description="a row is dropped when it contains this "
                                         "share of one benchmark program's n-grams")



class SFTSettings(_Section):
    """SFT warm start (stepcode/training/sft.py run_sft, TRL SFTTrainer with a completion-only loss)."""
    learning_rate: Float = Field(1e-4, gt=0, description="peak learning rate")
    epochs: Float = Field(1.0, gt=0, description="passes over data/sft.jsonl (ignored when max_steps > 0)")
    max_steps: int = Field(-1, description="optimizer steps; -1 = run `epochs` passes")
    batch_size: int = Field(8, ge=1, description="examples per device per forward pass")
    grad_accum: int = Field(1, ge=1, description="forward passes per optimizer step")
    max_length: int = Field(1024, ge=16, description="prompt + completion tokens; longer examples are truncated")



class GRPOSettings(_Section):
    """Bi-Level GRPO (stepcode/training/grpo.py run_grpo, a TRL GRPOTrainer subclass)."""
    learning_rate: Float = Field(1e-6, gt=0, description="peak learning rate (paper: 1e-6)")
    epochs: Float = Field(1.0, gt=0, description="passes over data/rl.jsonl (ignored when max_steps > 0)")
    max_steps: int = Field(-1, description="optimizer steps; -1 = run `epochs` passes")
    batch_size: int = Field(8, ge=1, description="completions per device per forward pass; times the number of "
                                                 "processes it must be a multiple of num_generations")
    grad_accum: int = Field(1, ge=1, description="forward passes per optimizer step")
    num_generations: int = Field(8, ge=2, description="G, rollouts per prompt (paper: 5)")
    max_completion_length: int = Field(512, ge=1, description="generated tokens per rollout; longer are cut")
    temperature: Float = Field(1.0, gt=0, description="sampling temperature of the rollouts")
    beta: Float = Field(0.0, ge=0, description="KL coefficient (Eq. 15: beta * KL to the starting model, TRL's k3 "
                        "estimator per token, logged as `kl`); > 0 loads a frozen reference copy of the model; 0 "
                        "loads none")
    lam: Float = Field(0.3, ge=0, description="lambda, weight of the intra-trajectory term (paper: 0.3)")
    span: Literal["segment", "print"] = Field("segment", description="tokens that carry an anchor's step "
                                              "advantage: its reasoning+print segment, or the <print> block only")
    input_reference: Literal["committed", "gold"] = Field(
        "committed", description="input task: judge the prints against the trace of the committed <input> "
                                 "(stepcode/training/rewards.py), or against the original input's gold trace")
    use_vllm: bool = Field(False, description="generate rollouts with vLLM (GPU only; pip install .[gpu])")
    vllm_mode: Literal["colocate", "server"] = Field("colocate", description="vLLM in the training processes, "
                                                     "or a separate `trl vllm-serve` server")
    reward_workers: int = Field(0, ge=0, description="sandbox slots scoring the rewards; 0 = sandbox.workers")



class TrainProfile(_Section):
    """One named training setup: where it runs and the SFT and GRPO settings."""
    model: str | None = Field(None, description="model directory used when the command gets no --model")
    model_size: Literal["micro", "mini", "tiny", "0.5b"] | None = Field(
        "tiny", description="size of the model `stepcode train init-model` builds "
                    "(stepcode/training/models.py SIZES), which "
                            "the pipeline trains when `model` is not a local folder; null: never build one (the "
                            "profile needs its local `model`)")
    use_cpu: bool = Field(True, description="train on the CPU even if an accelerator is present")
    bf16: bool = Field(False, description="bfloat16 mixed precision (GPU)")
    torch_threads: int = Field(1, ge=0, description="torch.set_num_threads per process; 1 is far faster for tiny "
                                                    "models on a shared CPU (stack.md pitfall 6); 0 = torch default")
    gradient_checkpointing: bool = Field(False, description="trade compute for activation memory (large models)")
    seed: int = Field(0, description="seed of data order, initialisation and sampling")
    logging_steps: int = Field(1, ge=1, description="log metrics every this many optimizer steps")
    save_steps: int = Field(0, ge=0, description="checkpoint every this many steps; 0 = only the final model")
    report_to: list[str] = Field(["none"], description="transformers reporters: none, mlflow, tensorboard, ...")
    sources: tuple[str, ...] | None = Field(
        None, description="program sources (the rows' `source`: synth, synth-logic, humaneval, ...) this profile's "
                          "tokenizer, SFT, GRPO and held-out evaluation use; null = every source")
    sft: SFTSettings = SFTSettings()
    grpo: GRPOSettings = GRPOSettings()

    _list_is_a_tuple = field_validator("sources", mode="before")(_list_to_tuple)


def _default_profiles() -> dict[str, TrainProfile]:
    # The same three as params.yaml, so a checkout without params.yaml can still train.
    return {
        "micro": TrainProfile(model="models/micro", model_size="micro",
                              sft=SFTSettings(learning_rate=1e-3, max_steps=5, batch_size=4, max_length=512),
                              grpo=GRPOSettings(learning_rate=1e-3, max_steps=3, batch_size=8, num_generations=4,
                                                max_completion_length=32)),
        "tiny-cpu": TrainProfile(model=None, model_size="mini", sources=("synth-logic",),
                                 sft=SFTSettings(learning_rate=3e-3, max_steps=400, batch_size=16, max_length=512),
                                 grpo=GRPOSettings(learning_rate=1e-4, max_steps=120, batch_size=16, num_generations=4,
                                                   max_completion_length=160, beta=0.001)),
        "qwen7b-gpu": TrainProfile(model="models/Qwen2.5-Coder-7B-Instruct", model_size=None, use_cpu=False,
                                   bf16=True, torch_threads=0, gradient_checkpointing=True, save_steps=500,
                                   report_to=["mlflow"],
                                   sft=SFTSettings(learning_rate=1e-5, epochs=2.0, batch_size=4, grad_accum=4,
                                                   max_length=4096),
                                   grpo=GRPOSettings(learning_rate=1e-6, epochs=2.0, batch_size=5, grad_accum=4,
                                                     num_generations=5, max_completion_length=4096, beta=0.001,
                                                     use_vllm=True)),
    }


class TrainParams(_Section):
    """Training (stepcode/training/sft.py, grpo.py): the active profile and the named profiles."""
    # profiles before profile: pydantic validates in this order, and the name check needs the profiles.
    profiles: dict[str, TrainProfile] = Field(default_factory=_default_profiles,
                                              description="name -> settings (micro, tiny-cpu, qwen7b-gpu, ...)")
    profile: str = Field("tiny-cpu", description="profile used when a command gets no --profile")

    @field_validator("profile")
    @classmethod
    def _known(cls, v, info):
        profiles = info.data.get("profiles")
        if profiles is not None and v not in profiles:
            raise ValueError(f"unknown profile {v!r}; defined: {sorted(profiles)}")
        return v

    def get(self, name: str | None = None) -> TrainProfile:
        """The profile called `name` (default: `profile`); a clear error for an unknown name."""
        name = name or self.profile
        if name not in self.profiles:
            raise ConfigError(f"unknown training profile {name!r}: choose one of {', '.join(sorted(self.profiles))} "
                              "(params.yaml: train.profiles)")
        return self.profiles[name]


class PipelineParams(_Section):
    """The Prefect flows (flows/pipeline.py, flows/retrain.py)."""
    grpo_mode: str = Field("bilevel", description="an advantage mode (stepcode.training.modes): bilevel | step | "
                                                  "terminal")
    eval_benchmarks: tuple[str, ...] = Field(("cruxeval",), description="benchmarks the evaluate stage scores")
    eval_prompt: str = Field("stepcode", description="official | stepcode (our instrumented task)")
    eval_greedy: bool = Field(True, description="greedy decoding in the pipeline's evaluation (paper-style, "
                                                "labelled 'greedy'); false: the official sampling of `evaluate:`")
    eval_max_new_tokens: int = Field(512, ge=1, description="generation cap in the pipeline's evaluation "
                                                          "(execution reasoning: ~240 tokens a completion, median)")
    eval_limit: int | None = Field(10, ge=1, description="benchmark problems evaluated (null: all)")
    heldout_limit: int | None = Field(30, ge=1, description="held-out rows evaluated (null: all)")
    model_name: str = Field("stepcode", description="registered model name in the MLflow registry")
    promote_metrics: tuple[str, ...] = Field(("heldout.final_acc", "heldout.step_acc"),
                                             description="a candidate must be no worse on all, better on one")
    min_improvement: Float = Field(0.0, ge=0, description="the least gain that counts as better")
    schedule_cron: str = Field("0 3 * * 1", description="when `stepcode schedule` retrains (cron, UTC)")

    _list_is_a_tuple = field_validator("eval_benchmarks", "promote_metrics", mode="before")(_list_to_tuple)

    @field_validator("grpo_mode")
    @classmethod
    def _known_mode(cls, v):
        from stepcode.training.modes import check_mode  # the one list of modes (a light module)

        return check_mode(v)


class StudyVariant(_Section):
    """One size of the ablation study (`stepcode study ablation`, stepcode/pipeline/study.py): data, evaluation and
    budget.
    Every arm gets the same settings; the training settings come from the named training profile."""
    profile: str = Field("ablation", description="training profile (train.profiles) shared by every arm")
    seeds: int = Field(3, ge=1, description="GRPO seeds per arm (data order and rollout sampling)")
    budget_minutes: Float = Field(60.0, gt=0, description="planned wall time; caps GRPO steps through the cost "
                                                         "model below, never by the clock, so arms stay equal")
    corpus: Literal["dataset", "basic", "logic"] = Field(
        "dataset", description="dataset: the built dataset (study.data_dir); basic / logic: the variant's own corpus "
                               "(stepcode/data/synth_basic.py: short straight-line programs returning their last "
                               "step; synth_logic.py: the same steps, loops, and a verdict over them as the answer), "
                               "traced and built on the fly")
    corpus_programs: int = Field(12000, ge=10, description="basic / logic corpus: programs synthesized (before "
                                                           "the split)")
    corpus_seed: int = Field(0, description="basic / logic corpus: synthesizer seed")
    reasoning: Literal["execution", "template", "none"] = Field(
        "template", description="basic / logic corpus: the SFT <reasoning> before each anchor (build.reasoning's "
                                "values)")
    tasks: tuple[str, ...] = Field(("output", "input"), description="example tasks kept (output, input); the "
                                   "report has a table per task")
    sources: tuple[str, ...] = Field(("synth",), description="program sources kept (synth, synth-basic, humaneval)")
    max_anchors: int = Field(6, ge=1, description="keep programs with at most this many gold anchor lines")
    max_prompt_chars: int = Field(700, ge=1, description="keep programs whose user prompt is at most this long")
    heldout_limit: int = Field(60, ge=1, description="held-out rows evaluated (greedy), the same for every arm")
    cruxeval_limit: int = Field(30, ge=1, description="CRUXEval problems in the StepCode format evaluated")
    max_new_tokens: int = Field(200, ge=1, description="greedy evaluation length cap")
    workers: int = Field(2, ge=1, description="arms trained in parallel processes (one torch thread each)")
    sft_step_s: Float = Field(2.2, gt=0, description="cost model: seconds per SFT step (measured on 2 cores)")
    grpo_step_s: Float = Field(8.0, gt=0, description="cost model: seconds per GRPO step of one arm")
    eval_row_s: Float = Field(1.0, gt=0, description="cost model: seconds per evaluated completion (a greedy row, "
                                                     "or one of a row's sampled completions)")
    validation_programs: int = Field(0, ge=0, description="RL programs (both tasks of each) carved out as the "
                                     "validation split that picks each arm's GRPO learning rate (sha256 of the "
                                     "program id); the held-out split is never used for a choice; 0 = none (then "
                                     "lr_sweep must be empty)")
    validation_limit: int = Field(200, ge=1, description="validation rows evaluated (greedy) after each sweep run")
    lr_sweep: tuple[Float, ...] = Field((), description="GRPO learning rates tried per arm (seed 0, sweep_steps "
                                        "steps, validation step accuracy); empty: no sweep, every arm uses the "
                                        "profile's grpo.learning_rate")
    sweep_steps: int = Field(0, ge=0, description="GRPO steps of each sweep run; 0 = the main runs' steps, and then "
                             "each arm's seed-0 run at its chosen rate is its sweep run (reused, not retrained): the "
                             "rate is chosen at the horizon it is used for")
    samples: int = Field(0, ge=0, description="held-out completions per row sampled at the rollout temperature "
                                              "(pass@k, sampled accuracies); 0 = greedy only")

    _list_is_a_tuple = field_validator("tasks", "sources", "lr_sweep", mode="before")(_list_to_tuple)

    @field_validator("lr_sweep")
    @classmethod
    def _sweepable(cls, v, info):
        if any(lr <= 0 for lr in v):
            raise ValueError("learning rates must be > 0")
        if v and info.data.get("validation_programs", 1) < 1:
            raise ValueError("lr_sweep needs validation_programs >= 1 (the sweep is judged on the validation split)")
        return v


class StudyParams(_Section):
    """`stepcode study ablation`: SFT only vs Terminal-, Step- and Bi-Level GRPO from one SFT checkpoint."""
    data_dir: str = Field("data/dataset", description="built dataset (sft.jsonl, rl.jsonl, heldout.jsonl)")
    work_dir: str = Field("data/work/study", description="filtered data, models and per-arm evaluations")
    report_dir: str = Field("reports/ablation", description="where the full study writes its report")
    lam: Float = Field(0.3, ge=0, description="lambda of the Bi-Level arm (Step-GRPO is lambda = 0)")
    variants: dict[str, StudyVariant] = Field(
        default_factory=lambda: {"full": StudyVariant(), "micro": StudyVariant(
            profile="micro", seeds=2, budget_minutes=5.0, max_anchors=10, max_prompt_chars=100000,
            heldout_limit=3, cruxeval_limit=2, max_new_tokens=32, sft_step_s=0.5, grpo_step_s=2.0,
            eval_row_s=0.5, validation_programs=3, validation_limit=4, lr_sweep=(1e-3, 3e-3), sweep_steps=1,
            samples=2)},
        description="full (the committed report) and micro (CI: a few minutes)")



class Params(_Section):
    sandbox: SandboxParams = SandboxParams()
    trace: TraceParams = TraceParams()
    synth: SynthParams = SynthParams()
    tracking: TrackingParams = TrackingParams()
    orchestration: OrchestrationParams = OrchestrationParams()
    pipeline: PipelineParams = PipelineParams()
    # `validate` would shadow BaseModel.validate, so the attribute is `validate_`; the YAML key stays `validate`
    # (and a model_dump() round trip, which writes `validate_`, still loads).
    validate_: ValidateParams = Field(ValidateParams(), validation_alias=AliasChoices("validate", "validate_"),
                                      serialization_alias="validate")
    evaluate: EvaluateParams = EvaluateParams()
    build: BuildParams = BuildParams()
    train: TrainParams = TrainParams()
    study: StudyParams = StudyParams()


class ConfigError(UserError, ValueError):
    """params.yaml is missing, malformed or invalid; the message names the file and the key."""


DEFAULT_PATH = Path("params.yaml")


def load_params(path: str | os.PathLike | None = None) -> Params:
    """Load and validate params.yaml (default: ./params.yaml; a missing default file means all defaults)."""
    p = Path(path) if path is not None else DEFAULT_PATH
    if not p.exists():
        if path is None:
            return Params()
        raise ConfigError(f"{p}: no such file")
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory, not a params file (give the YAML file, e.g. {p / 'params.yaml'})")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not a YAML text file (invalid UTF-8 at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read it: {e.strerror}") from None
    try:
        # libyaml's loader when PyYAML was built with it: the pure-Python one takes ~0.1 s of every command's start
        raw = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{p}: not a params file: nested too deeply to read") from None
    return parse_params(raw, source=str(p))


def parse_params(raw: dict, source: str = "params") -> Params:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            key = ".".join(str(x) for x in err["loc"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"  {key}: {msg}")
        raise ConfigError(f"{source}: invalid configuration\n" + "\n".join(problems)) from None
