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

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SandboxParams(_Section):
    workers: int = Field(0, ge=0, description="parallel sandbox workers; 0 = all cores")
    timeout_s: float = Field(3.0, gt=0, description="wall-clock limit per program run")
    cpu_s: int = Field(4, ge=1, description="RLIMIT_CPU per program run")
    memory_mb: int = Field(1024, ge=64, description="RLIMIT_AS per program run")
    file_size_mb: int = Field(8, ge=0, description="RLIMIT_FSIZE per program run")
    open_files: int = Field(64, ge=8, description="RLIMIT_NOFILE per program run")
    processes: int = Field(32, ge=1, description="RLIMIT_NPROC for a worker's sandbox uid")
    stdout_kb: int = Field(64, ge=1, description="cap on the program's own captured output")
    disk_mb: int = Field(64, ge=1, description="size of the tmpfs holding a server's per-program temp dirs")

    @field_validator("timeout_s", mode="before")
    @classmethod
    def _int_is_a_float(cls, v):  # YAML `3` is an int; accept it where a float is meant
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v

    def resolved_workers(self) -> int:
        return self.workers or os.cpu_count() or 1


class TraceParams(_Section):
    max_lines: int = Field(10, ge=1, description="traces longer than this are too_long")
    max_output_chars: int = Field(2000, ge=16, description="longest accepted repr of a return value")
    max_line_chars: int = Field(2000, ge=16, description="longest accepted anchor line")
    hash_seeds: tuple[int, int] = Field((0, 1), description="PYTHONHASHSEED of the two runs")

    @field_validator("hash_seeds", mode="before")
    @classmethod
    def _list_is_a_pair(cls, v):
        return tuple(v) if isinstance(v, list) else v

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
    artifact_root: str = Field("mlruns", description="artifact folder for a new experiment (relative: to the cwd)")


class ValidateParams(_Section):
    """Bounds of the great-expectations gate over a trace table (stepcode/validation.py). The defaults accept both
    training data like the paper's (mean 4.1 anchors per ok row, range 1–10) and benchmark traces (CRUXEval: 2.5)."""

    min_ok_share: float = Field(0.5, ge=0, le=1, description="least share of rows with status ok; below it, "
                                "the tracer or the corpus is broken")
    max_nondeterministic_share: float = Field(0.05, ge=0, le=1, description="most share of nondeterministic rows")
    min_mean_anchors: float = Field(1.5, ge=0, description="least mean trace length of ok rows; near 1 means "
                                    "only return_val anchors, i.e. the instrumenter stopped anchoring assignments")
    max_mean_anchors: float = Field(8.0, ge=0, description="most mean trace length of ok rows")
    min_literal_output_share: float = Field(0.95, ge=0, le=1, description="least share of ok rows whose output "
                                            "is a Python literal (`mostly`); the others are flagged in the "
                                            "quarantine file, and only fail the gate below this share")

    @field_validator("max_mean_anchors")
    @classmethod
    def _ordered(cls, v, info):
        if v < info.data.get("min_mean_anchors", 0):
            raise ValueError("max_mean_anchors must be >= min_mean_anchors")
        return v


class Params(_Section):
    sandbox: SandboxParams = SandboxParams()
    trace: TraceParams = TraceParams()
    synth: SynthParams = SynthParams()
    tracking: TrackingParams = TrackingParams()
    # `validate` would shadow BaseModel.validate, so the attribute is `validate_`; the YAML key stays `validate`
    # (and a model_dump() round trip, which writes `validate_`, still loads).
    validate_: ValidateParams = Field(ValidateParams(), validation_alias=AliasChoices("validate", "validate_"),
                                      serialization_alias="validate")


class ConfigError(ValueError):
    """params.yaml is missing, malformed or invalid; the message names the file and the key."""


DEFAULT_PATH = Path("params.yaml")


def load_params(path: str | os.PathLike | None = None) -> Params:
    """Load and validate params.yaml (default: ./params.yaml; a missing default file means all defaults)."""
    p = Path(path) if path is not None else DEFAULT_PATH
    if not p.exists():
        if path is None:
            return Params()
        raise ConfigError(f"{p}: no such file")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
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
