"""`stepcode score` over a folder: every generations file in it scored as one Prefect task, all in one flow run, on the
task runner the params choose (flows/runners.py: a local process pool, or a dask.distributed cluster).

    stepcode score --benchmark cruxeval --task output gens/ -o scored/        # the CLI (stepcode/commands/evaluate.py)
    stepcode score --benchmark cruxeval --task output s3://bucket/gens -o s3://bucket/scored   # with s3fs installed
    python -m flows.score --benchmark cruxeval --task output gens/ -o scored/   # the same flow, without the CLI

- Which files: `GLOB` (`**/*.json`: every .json file in the folder and its subfolders, in name order), except the
  results of this command (`*.scored.json`) and anything under the output folder when it lies inside the input
  folder; the CLI says how many it left out.
- What each task does: read one file through fsspec, score it with `stepcode.evals.scoring.score_generations` (what
  `stepcode score FILE` runs: same result), write `OUT/<relative path without .json>.scored.json` (the official result
  format, as `stepcode score FILE -o` writes it). The benchmark's problems are loaded once, by the flow, and handed
  to the tasks, and every input and output is an fsspec URL (a local path made absolute), so a task needs no path
  that only the flow's machine can see: it runs on a remote Dask worker as well (on a cluster across machines, give
  URLs every worker reaches: s3://, gs://, a shared mount).
- A file that cannot be scored (bad JSON, not the official format, ids the benchmark lacks, ...) does not stop the
  others: its row in the summary holds the error (`file:line: ...` for bad JSON), no result file is written for it (an
  earlier run's is removed), and the CLI ends with one error line and exit 2 once the rest are scored.
- `OUT/summary.json`: one row per file (file, result, samples, generations, pass@1, pass@5, skip rule, seconds, or
  error); the CLI prints the same as a table. Progress: one line per finished file.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

GLOB = "**/*.json"
RESULT_SUFFIX = ".scored.json"
SUMMARY = "summary.json"


def as_url(path_or_url: str) -> str:
    """An fsspec URL every worker can use: a URL unchanged, a local path made absolute."""
    s = str(path_or_url)
    if "://" in s:
        return s.rstrip("/") or s
    return os.path.abspath(s)


def is_folder(url: str) -> bool:
    """Whether `url` (a local path or an fsspec URL) names a folder."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return fs.isdir(path)


def _join(url: str, name: str) -> str:
    return f"{url.rstrip('/')}/{name}"


def result_name(name: str) -> str:
    """`sub/ckpt-300.json` -> `sub/ckpt-300.scored.json`: the result file of a generations file, relative to OUT."""
    return (name[:-len(".json")] if name.endswith(".json") else name) + RESULT_SUFFIX


def list_generations(folder: str, pattern: str = GLOB, out: str | None = None) -> tuple[list[str], list[str]]:
    """(generations files, files left out), each a path relative to `folder`, in name order. Left out: this command's
    results (`*.scored.json`) and every file under `out` when that lies inside `folder`."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(folder)
    root = root.rstrip("/")
    out_root = None
    if out is not None:
        out_fs, out_path = fsspec.core.url_to_fs(out)
        if type(out_fs) is type(fs):
            out_root = out_path.rstrip("/")
    names, left = [], []
    for path in sorted(fs.glob(f"{root}/{pattern}")):
        if fs.isdir(path):
            continue
        name = path[len(root) + 1:]
        under_out = out_root is not None and (path == out_root or path.startswith(out_root + "/"))
        (left if under_out or name.endswith(RESULT_SUFFIX) else names).append(name)
    return names, left


def read_generations(url: str, name: str):
    """The JSON in one generations file; bad UTF-8 or JSON is a ValueError naming `name:LINE`."""
    import fsspec

    with fsspec.open(url, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{name}:{line}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name}:{e.lineno}: bad JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise ValueError(f"{name}: JSON nested too deeply to read") from None


def write_json_url(url: str, obj) -> None:
    """Write JSON to a local path (atomically) or an fsspec URL (an object store's put is whole or nothing)."""
    from flows.runners import is_local

    if is_local(url):
        from stepcode.evals import write_json

        write_json(url[len("file://"):] if url.startswith("file://") else url, obj)
        return
    import fsspec

    with fsspec.open(url, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj))


def _remove(url: str) -> None:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        fs.rm(path)


# Retried once: a user error is caught and reported in the row, so what raises is the machine (a sandbox that
# crashed, a worker that went away).
@task(name="score-file", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def score_one(source: str, name: str, out: str | None, benchmark: str, task_name: str, problems: list[dict],
              params_json: str, skip_rule: str | None = None, samples: list[str] | None = None,
              extract: str = "none") -> dict:
    """One generations file: read, score, write its result; the summary row (with `error` when it could not be
    scored)."""
    from stepcode.config import parse_params
    from stepcode.errors import UserError
    from stepcode.evals import get_benchmark
    from stepcode.evals.scoring import score_generations

    started = time.perf_counter()
    target = _join(out, result_name(name)) if out is not None else None
    try:
        generations = read_generations(source, name)
        result = score_generations(benchmark, task_name, problems, generations, parse_params(json.loads(params_json)),
                                   skip_rule=skip_rule, samples=samples, extract=extract)
    except (ValueError, TypeError, UserError) as e:
        if target is not None:
            _remove(target)   # never an earlier run's result beside this run's error
        message = str(e) if str(e).startswith(name) else f"{name}: {e}"
        return {"file": name, "error": " ".join(message.split())}
    if target is not None:
        write_json_url(target, get_benchmark(benchmark).official_export(result))
    scored = result["raw_scored_generations"]
    return {"file": name, "result": result_name(name) if target is not None else None, "samples": len(scored),
            "generations": sum(len(v) for v in result["raw_generations"].values()),
            "pass_at_1": result["pass_at_1"], "pass_at_5": result["pass_at_5"], "skip_rule": result["skip_rule"],
            "seconds": round(time.perf_counter() - started, 3)}


def _flow_run_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters or {}
    folder = str(p.get("generations", "")).rstrip("/").rsplit("/", 1)[-1]
    return f"score {p.get('benchmark')}-{p.get('task')} {folder} {datetime.now():%Y-%m-%d %H:%M}"


def task_sandbox_workers(params, n_files: int) -> int:
    """Sandbox workers per task: the runner's width shared among the files (a process pool or a LocalCluster this
    run starts: `sandbox.workers` / `orchestration.dask_workers` wide), else 1 (a cluster of one-thread workers)."""
    o = params.orchestration
    if o.task_runner == "dask" and o.dask_address:
        return 1
    width = (o.dask_workers if o.task_runner == "dask" else 0) or params.sandbox.resolved_workers()
    return max(1, width // max(1, n_files))


def load_problems(benchmark: str, params) -> list[dict]:
    """The benchmark's problems, read on the flow's machine (paths in params.evaluate: relative to the cwd)."""
    from stepcode.evals import get_benchmark

    return get_benchmark(benchmark).load_problems(params)


@flow(name="stepcode-score", log_prints=False, flow_run_name=_flow_run_name)
def score_folder(generations: str, benchmark: str, task: str, out: str | None = None,
                 params_path: str = "params.yaml", root: str = ".", pattern: str = GLOB,
                 skip_rule: str | None = None, samples: list[str] | None = None, extract: str = "none",
                 echo: bool = False) -> dict:
    """Score every generations file of the folder `generations` (see the module docstring); the summary."""
    from prefect.futures import as_completed

    from flows.pipeline import load_project_params

    logger = get_run_logger()

    def say(line: str) -> None:
        logger.info(line)
        if echo:   # the CLI's console shows Prefect's warnings only: progress goes to stderr itself
            print(line, file=sys.stderr, flush=True)

    started = time.perf_counter()
    params = load_project_params(root, params_path)
    folder, out = as_url(generations), (as_url(out) if out is not None else None)
    names, left = list_generations(folder, pattern, out)
    if not names:
        raise ValueError(f"{generations}: no generations files ({pattern}) in this folder")
    problems = load_problems(benchmark, params)
    workers = task_sandbox_workers(params, len(names))
    raw = params.model_dump(mode="json", by_alias=True)
    task_params = json.dumps({"sandbox": {**raw["sandbox"], "workers": workers}, "evaluate": raw["evaluate"]})
    say(f"scoring {len(names)} file(s) of {generations} ({benchmark}-{task}) on the {params.orchestration.task_runner}"
        f" task runner, {workers} sandbox worker(s) per file" + (f"; left out {len(left)} result file(s)"
                                                                   if left else ""))
    futures = {score_one.submit(_join(folder, name), name, out, benchmark, task, problems, task_params,
                                skip_rule, samples, extract): name for name in names}
    rows: dict[str, dict] = {}
    for done, future in enumerate(as_completed(list(futures)), 1):
        name = futures[future]
        try:
            row = future.result()
        except Exception as e:  # noqa: BLE001 - the machine failed this file twice: report it, keep the others
            row = {"file": name, "error": f"{name}: {type(e).__name__}: {' '.join(str(e).split())}"}
        rows[name] = row
        what = row.get("error") or (f"pass@1 {row['pass_at_1']:.2f}  pass@5 {row['pass_at_5']:.2f}  "
                                     f"({row['samples']} samples, {row['seconds']:.1f} s)")
        say(f"[{done}/{len(names)}] {name}: {what}" if "error" not in row else f"[{done}/{len(names)}] error: {what}")
    _drain_worker_logs()
    summary = {"benchmark": benchmark, "task": task, "generations": folder, "glob": pattern,
               "left_out": left, "files": [rows[n] for n in names],
               "scored": sum("error" not in r for r in rows.values()),
               "failed": sum("error" in r for r in rows.values()),
               "seconds": round(time.perf_counter() - started, 3)}
    if out is not None:
        write_json_url(_join(out, SUMMARY), summary)
    return summary


def _drain_worker_logs() -> None:
    """On a Dask cluster, have each worker send its buffered task-run logs to the Prefect API now, while it is up (the
    temporary local server stops when the flow returns; a worker would then say "Error logging to API")."""
    import contextlib

    from prefect.context import FlowRunContext

    client = getattr(getattr(FlowRunContext.get(), "task_runner", None), "_client", None)
    if client is None:
        return

    def drain() -> None:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)

    with contextlib.suppress(Exception):   # the logs are a convenience: never a failed run
        client.run(drain)


def table(summary: dict) -> str:
    """The summary as a text table: one line per file."""
    rows = summary["files"]
    width = max([len("file"), *(len(r["file"]) for r in rows)])
    lines = [f"{'file':{width}s}  {'samples':>7s}  {'pass@1':>7s}  {'pass@5':>7s}  {'seconds':>7s}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['file']:{width}s}  error: {r['error']}")
        else:
            lines.append(f"{r['file']:{width}s}  {r['samples']:7d}  {r['pass_at_1']:7.2f}  {r['pass_at_5']:7.2f}  "
                         f"{r['seconds']:7.1f}")
    return "\n".join(lines)


def run_score_folder(generations: str, benchmark: str, task: str, out: str | None = None,
                     params_path: str = "params.yaml", root: str = ".", **options) -> dict:
    """Run the flow on `task_runner(params)` (one temporary local Prefect API server unless PREFECT_API_URL is set).
    What cannot work (no files, the benchmark's data missing) fails here, before Prefect starts."""
    from flows.pipeline import load_project_params, local_api, quiet_user_errors
    from flows.runners import task_runner

    params = load_project_params(root, params_path)
    names, _ = list_generations(as_url(generations), options.get("pattern", GLOB),
                                as_url(out) if out is not None else None)
    if not names:
        raise ValueError(f"{generations}: no generations files ({options.get('pattern', GLOB)}) in this folder")
    load_problems(benchmark, params)   # a missing benchmark file: one line now, not after Prefect starts
    configured = score_folder.with_options(task_runner=task_runner(params))
    with local_api(), quiet_user_errors():
        return configured(generations=generations, benchmark=benchmark, task=task, out=out, params_path=params_path,
                          root=root, **options)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Score every generations file of a folder (one Prefect task each).")
    ap.add_argument("generations")
    ap.add_argument("--benchmark", required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("-o", "--out", default=None)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--glob", default=GLOB)
    args = ap.parse_args()
    result = run_score_folder(args.generations, args.benchmark, args.task, args.out, params_path=args.params,
                              pattern=args.glob)
    print(table(result))
