"""`stepcode compare` (and the orchestration commands): thin wrappers over stepcode.compare and flows/."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def compare(run_ids: List[str] = typer.Argument(..., help="two or more MLflow run ids"),
                metric: Optional[List[str]] = typer.Option(None, "--metric", help="metrics to show (default: all)"),
                out: Path = typer.Option(Path("reports/compare.png"), "--out", help="where to write the PNG"),
                log_artifact: bool = typer.Option(True, "--log/--no-log", help="log the PNG to every run"),
                params_path: Path = typer.Option(Path("params.yaml"), "--params")):
        """Params that differ and metrics side by side, plus a PNG of training curves and benchmark bars."""
        from stepcode.compare import compare as run_compare
        from stepcode.config import load_params
        from stepcode.tracking import configure

        if len(run_ids) < 2:
            raise typer.BadParameter("give at least two run ids")
        configure(load_params(params_path if params_path.exists() else None))
        comparison = run_compare(run_ids, metric, out, log_artifact=log_artifact)
        typer.echo(comparison.table())
        typer.echo(f"\nplot: {out}" + (" (also logged to each run under comparisons/)" if log_artifact else ""))
