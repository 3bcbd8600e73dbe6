"""The stage functions: one per arrow of the data flow, each with explicit input and output paths and the params.

    corpus → trace → validate → build → sft → grpo → evaluate

The CLI calls them, `dvc.yaml` calls the CLI, and the Prefect flow's tasks call them too, so a stage does the same
thing however it is started. Each one wraps a library function with its MLflow lineage (`stepcode.tracking`):
params, counts, and the DVC digests of what it read and wrote; a stage that raises is marked FAILED.
"""

from __future__ import annotations

import contextlib
from pathlib import Path


def _tracked(params, stage: str, **kwargs):
    if not params.tracking.enabled:
        return contextlib.nullcontext()
    from stepcode.tracking import stage_run

    return stage_run(stage, params, **kwargs)


def _flat(prefix: str, section) -> dict:
    return {f"{prefix}.{k}": v for k, v in section.model_dump().items()}


def trace(params, programs: str | Path, out: str | Path, *, workers: int | None = None,
          progress: bool = True) -> dict:
    """Instrument and trace a corpus (tracked inside `trace_file`). Returns the summary."""
    from stepcode.traces import trace_file

    return trace_file(programs, out, params, workers=workers, progress=progress)


def validate(params, traces: str | Path, report_dir: str | Path):
    """The great-expectations gate. Returns the GateResult (the caller decides: CLI exit code, flow stop)."""
    from stepcode.validation import validate_traces

    with _tracked(params, "validate", inputs={"traces": str(traces)},
                  stage_params=_flat("validate", params.validate_)) as mlflow:
        result = validate_traces(traces, report_dir, params)
        if mlflow is not None:
            mlflow.log_metrics({"gate.success": float(result.success), "gate.rows": result.n_rows,
                                "gate.quarantined": result.n_quarantined, "gate.failed": len(result.failed)})
            mlflow.set_tag("gate", "passed" if result.success else "failed")
            mlflow.log_artifact(str(result.summary_path), "validation")
            if Path(result.quarantine_path).exists():
                mlflow.log_artifact(str(result.quarantine_path), "validation")
    return result


def build(params, traces: str | Path, out_dir: str | Path) -> dict:
    """Prompts, SFT targets, RL rows, held-out split, decontamination. Returns the stats."""
    from stepcode.dataset import build_dataset

    out_dir = Path(out_dir)
    with _tracked(params, "build", inputs={"traces": str(traces)}, outputs={"dataset": str(out_dir)},
                  stage_params=_flat("build", params.build)) as mlflow:
        stats = build_dataset(traces, out_dir, params)
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
