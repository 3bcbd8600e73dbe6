"""`stepcode reason`: teacher-written reasoning paths for the SFT rows, kept only where the sandbox confirms every
step and the answer (stepcode/training/teacher.py).

    stepcode reason --teacher models/Qwen2.5-Coder-7B-Instruct -o data/dataset/sft-teacher.jsonl
    stepcode reason --teacher http://localhost:8000/v1 --teacher-model NAME --samples 4 --concurrency 16 \\
        -o data/dataset/sft-teacher.jsonl
    stepcode train sft --data data/dataset/sft-teacher.jsonl ...
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

from stepcode.commands.common import ParamsOpt, atomic_output, check_output, fail, load_params, require_file, writing


def register(app: typer.Typer) -> None:
    @app.command()
    def reason(teacher: str = typer.Option(..., "--teacher", help="a local Hugging Face model folder, or an "
                                           "OpenAI-compatible endpoint's base URL (http://HOST:PORT/v1, e.g. "
                                           "`vllm serve`; key: $OPENAI_API_KEY if set)"),
               teacher_model: Optional[str] = typer.Option(None, "--teacher-model", help="the endpoint's model "
                                                           "name (default: the one model it serves)"),
               data: Path = typer.Option(Path("data/dataset/sft.jsonl"), "--data", help="SFT rows (JSONL), as "
                                         "written by `stepcode build`"),
               out: Path = typer.Option(..., "-o", "--out", help="the accepted rows, an SFT file "
                                        "(e.g. data/dataset/sft-teacher.jsonl)"),
               summary_path: Optional[Path] = typer.Option(None, "--summary", help="summary JSON (default: "
                                                           "OUT with .summary.json)"),
               rejects: Optional[Path] = typer.Option(None, "--rejects", help="also write each rejected row's "
                                                      "id, task, reason and last text (JSONL)"),
               limit: Optional[int] = typer.Option(None, "--limit", min=1, help="only the first N rows"),
               samples: int = typer.Option(1, "--samples", min=1, max=64, help="tries per row; the first that "
                                           "passes is kept"),
               temperature: float = typer.Option(0.7, "--temperature", min=0.0, max=2.0,
                                                 help="sampling temperature (0: greedy)"),
               max_new_tokens: int = typer.Option(1024, "--max-new-tokens", min=1, help="generation cap per try"),
               concurrency: int = typer.Option(8, "--concurrency", min=1, max=256, help="requests in flight "
                                               "(endpoint only; a local model generates one at a time)"),
               retries: int = typer.Option(3, "--retries", min=0, max=20, help="endpoint: retries per request on "
                                           "a connection error, timeout, 429 or 5xx (backoff 1, 2, 4 ... s)"),
               timeout: float = typer.Option(600.0, "--timeout", min=1.0, help="endpoint: seconds per request"),
               seed: int = typer.Option(0, "--seed", help="sampling seed (per row and try)"),
               params_path: Path = ParamsOpt):
        """Have a teacher model write the reasoning of each SFT prompt; keep a row only when every <print> and the
        <answer> match the ground truth (sandboxed, as the RL reward judges: all steps 1 and final 1). Writes the
        kept rows as an SFT file for `stepcode train sft --data`, and a summary of the rejections by reason."""
        from stepcode.jsonl import read_jsonl, write_jsonl
        from stepcode.training import teacher as tm

        if samples > 1 and temperature == 0:
            fail(f"--samples {samples} with --temperature 0: greedy tries are all the same; give a temperature > 0")
        params = load_params(params_path)
        require_file(data, "--data", "write it with `stepcode build`")
        summary_path = summary_path or out.with_suffix(".summary.json")
        for what, path in (("-o", out), ("--summary", summary_path), ("--rejects", rejects)):
            check_output(path, what)
        rows = []
        for row in read_jsonl(data):
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
        for k, row in enumerate(rows, 1):
            try:
                tm.gold_row(row)
            except ValueError as e:
                fail(f"--data {data}: row {k}: {e} (give the SFT file `stepcode build` writes)")
        if not tm.is_url(teacher) and not (Path(teacher) / "config.json").is_file():
            p = Path(teacher)
            fail(f"--teacher {teacher}: not a local Hugging Face model folder (no config.json"
                 + ("" if p.exists() else "; no such directory") + ") and not an http(s)://HOST:PORT/v1 URL")
        options = {"retries": retries, "timeout_s": timeout, "api_key": os.environ.get("OPENAI_API_KEY")} \
            if tm.is_url(teacher) else {}
        t = tm.open_teacher(teacher, teacher_model, **options)   # an endpoint is contacted now: one-line errors
        rejected = []

        def on_reject(row, why, text):
            rejected.append({"id": row.get("id"), "task": row.get("task"), "reason": why, "text": text})

        try:
            kept, summary = tm.distill(rows, t, params, samples=samples, temperature=temperature,
                                       max_new_tokens=max_new_tokens,
                                       concurrency=concurrency if t.kind == "endpoint" else 1, seed=seed,
                                       progress=True, on_reject=on_reject)
        finally:
            t.close()
        summary.settings = {"teacher_model": getattr(t, "model", None) if t.kind == "endpoint" else None,
                            "data": str(data), "out": str(out), "limit": limit, "samples": samples,
                            "temperature": temperature, "max_new_tokens": max_new_tokens}
        with writing("-o", out):
            write_jsonl(out, kept)
        with writing("--summary", summary_path), atomic_output(summary_path) as tmp:
            Path(tmp).write_text(json.dumps(summary.as_dict(), indent=2) + "\n")
        if rejects:
            with writing("--rejects", rejects):
                write_jsonl(rejects, rejected)
        typer.echo(summary.line())
        typer.echo(f"wrote {len(kept)} rows to {out}, summary to {summary_path}")
