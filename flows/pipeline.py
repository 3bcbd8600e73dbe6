"""The StepCode pipeline as a Prefect flow: trace → validate → build → sft → grpo → evaluate.

    stepcode pipeline --profile tiny-cpu          # the main job (ephemeral Prefect, local MLflow, offline model)
    python -m flows.pipeline --profile micro      # the same flow, without the CLI

Wiring only: every task calls a stage function of `stepcode.pipeline.stages` (the same ones the CLI and dvc.yaml call).
- Tracing fans out over parts of the corpus (`trace.part_rows` programs each) on the task runner params choose
  (`flows.runners.task_runner`: a local process pool, or a dask.distributed cluster with orchestration.task_runner:
  dask). A task reads its part and writes its traces through `orchestration.storage` (an fsspec URL every worker
  reads: a local path here, s3://... on a cluster), and the flow assembles the traced parts into the folder DVC tracks
  (data/traces/part-00000.jsonl, ...), one part at a time: nothing holds the whole corpus.
- Caching is keyed on the DVC md5 of each task's inputs plus the params section it reads plus the code version, and
  results persist under `.prefect/results`; a re-run skips finished work (finished trace batches too, after a kill)
  and a changed param re-runs only what depends on it. A cached result is trusted only if the files it names still
  exist with the md5 it recorded; otherwise the task runs again.
- Inputs and options are checked first (`stepcode.pipeline.preflight`: the DVC-tracked corpus is pulled when missing).
  Transient failures are retried with backoff; a user error (`stepcode.errors.UserError`: a missing input, a bad
  parameter, a failed validation gate) is not transient and stops the flow at once, said once on the console.
- What each stage wrote is recorded in DVC as it finishes (`stepcode.dvcdata.record_outputs`: the dvc.yaml stages
  whose outputs this run produced are committed to the cache and dvc.lock), so `dvc status` is clean after a run,
  and pushed to the DVC remote (`stepcode.tracking.versions.Pusher`; params tracking.dvc_push; a failed push is one
  warning line in the summary, never a lost run).
- One parent MLflow run per pipeline run, named `<profile> <date>` (tag `stage`: pipeline), with the params that
  tell pipeline runs apart and the headline metrics; each stage logs a nested run under it (`STEPCODE_PARENT_RUN_ID`).
  When the stages end the parent records what the run points at: dvc.lock entries, params file, which logged digests
  the remote holds (`stepcode.tracking.versions.record_run`), so `stepcode lineage fetch` / `stepcode reproduce` work.
- What Prefect shows: the flow run is named by profile, GRPO mode, params hash and date ("micro grpo=bilevel
  params=3f9a1c 2026-12-06 18:40"); each stage's summary line goes to the run's logs; a markdown artifact
  (`stepcode-pipeline-summary`) holds the run's summary with links to its MLflow runs; the MLflow parent run links
  back (tags `prefect.flow_run_id`, `prefect.flow_run_name`, `prefect.flow_run_url` on a real server).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from flows.runners import storage_url, task_runner, url_md5
from stepcode.errors import UserError
from stepcode.pipeline import termination
from stepcode.pipeline.preflight import STOP_POINTS
from stepcode.tracking.lineage import dvc_md5

# What each cached task depends on comes from the one stage spec (stepcode/pipeline/spec.py), as dvc.yaml's deps do:
# its code (the import closure of the modules it runs: an edit there re-runs the task and what follows it) and the
# params it reads (a change elsewhere re-runs nothing).

def _code_version(task_name: str) -> str:
    from stepcode.pipeline.spec import BY_TASK, code_digest

    return code_digest(BY_TASK[task_name]) if task_name in BY_TASK else ""


def _relevant(task_name: str, params_json: str, profile: str | None = None) -> str:
    """The params a task reads, by their dotted keys (`train.profiles.<profile>`: the task's profile argument, else
    the configured one)."""
    from stepcode.pipeline.spec import BY_TASK, params_of

    full = json.loads(params_json)
    if task_name not in BY_TASK:
        return json.dumps(full, sort_keys=True)
    picked = {}
    for key in params_of(BY_TASK[task_name], profile or (full.get("train") or {}).get("profile", "")):
        value = full
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        picked[key] = value
    return json.dumps(picked, sort_keys=True)


def _digest_key(context: TaskRunContext, arguments: dict) -> str:
    """Cache key: the task, the md5 of every input path it gets, the params it reads, and its code version."""
    parts = [context.task.name, _code_version(context.task.name)]
    for name in sorted(arguments):
        value = arguments[name]
        if name.endswith(("_in", "_ins")):
            paths = value if isinstance(value, list) else [value]
            parts.append(f"{name}={[url_md5(str(p)) or 'missing' for p in paths]}")
        elif name == "params_json":
            parts.append(f"params={_relevant(context.task.name, value, arguments.get('profile'))}")
        else:
            parts.append(f"{name}={json.dumps(value, sort_keys=True, default=str)}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _outputs_intact(result: dict) -> bool:
    return all(url_md5(p) == md5 for p, md5 in result.get("outputs", {}).items())


DETERMINISTIC = (UserError, FileNotFoundError)   # a missing input, a bad parameter, a failed gate: same again


def _transient(task, task_run, state) -> bool:
    """Retry only what may be transient: never a user error (missing input, bad configuration, failed gate)."""
    try:
        state.result()
    except Exception as e:  # noqa: BLE001
        return not isinstance(e, DETERMINISTIC)
    return True


CACHED = dict(cache_key_fn=_digest_key, persist_result=True, retries=2, retry_delay_seconds=[5, 30],
              retry_condition_fn=_transient)


def load_project_params(root: str | Path, params_path: str = "params.yaml"):
    """`params_path` under the project root; the default file, when absent, means the embedded defaults (as for every
    `stepcode` command)."""
    from stepcode.config import load_params

    path = Path(root) / params_path
    return load_params(path if path.exists() or params_path != "params.yaml" else None)


def _params(params_json: str):
    from stepcode.config import parse_params

    return parse_params(json.loads(params_json))


@task(name="trace-batch", **CACHED)
def trace_batch(batch_in: str, out: str, params_json: str) -> dict:
    """Trace one part of the corpus: `batch_in` and `out` are URLs under orchestration.storage (any worker reads
    them); the work happens in a local temp folder of the worker."""
    import tempfile

    from flows.runners import download, upload
    from stepcode.pipeline import stages

    params = _params(params_json)
    with tempfile.TemporaryDirectory(prefix="stepcode-trace-") as tmp:
        local_in, local_out = Path(tmp) / "programs.jsonl", Path(tmp) / "traces.jsonl"
        download(batch_in, local_in)
        summary = stages.trace(params, local_in, local_out, workers=1, progress=False)
        md5 = dvc_md5(local_out)
        upload(local_out, out)
    get_run_logger().info(f"{batch_in.rsplit('/', 1)[-1]}: {summary['total']} programs traced: "
                          + ", ".join(f"{k} {v}" for k, v in summary["by_status"].items()))
    return {"summary": summary, "outputs": {out: md5}}


@task(name="validate", cache_policy=NO_CACHE, retries=0)
def validate(traces_in: str, report: str, params_json: str) -> dict:
    from stepcode.data.validation import require_gate
    from stepcode.pipeline import stages

    result = stages.validate(_params(params_json), traces_in, report)
    require_gate(result)  # raises GateFailed: the flow stops here, before any training
    return {"success": True, "rows": result.n_rows}


@task(name="build", **CACHED)
def build(traces_in: str, out_dir: str, metrics: str, params_json: str) -> dict:
    from stepcode.data.dataset import write_metrics
    from stepcode.pipeline import stages
    stats = stages.build(_params(params_json), traces_in, out_dir)
    write_metrics(stats, metrics)
    return {"stats": stats, "outputs": {out_dir: dvc_md5(out_dir), metrics: dvc_md5(metrics)}}


@task(name="init-model", **CACHED)
def init_model(corpus_in: str, out: str, profile: str, params_json: str) -> dict:
    from stepcode.pipeline import stages
    stages.init_model(_params(params_json), profile, corpus_in, out)
    return {"outputs": {out: dvc_md5(out)}}


@task(name="sft", **CACHED)
def sft(model_in: str, data_in: str, out: str, curves: str, profile: str, params_json: str) -> dict:
    from stepcode.pipeline import stages
    summary = stages.sft(_params(params_json), profile, model_in, data_in, out, curves=curves)
    return {"summary": summary, "outputs": {out: dvc_md5(out), curves: dvc_md5(curves)}}


@task(name="grpo", **CACHED)
def grpo(model_in: str, data_in: str, out: str, curves: str, profile: str, mode: str, params_json: str) -> dict:
    from stepcode.pipeline import stages
    summary = stages.grpo(_params(params_json), profile, model_in, data_in, out, mode, curves=curves)
    return {"summary": summary, "outputs": {out: dvc_md5(out), curves: dvc_md5(curves)}}


@task(name="evaluate", **CACHED)
def evaluate(model_in: str, baseline_in: str, heldout_in: str, out: str, profile: str, params_json: str) -> dict:
    from stepcode.pipeline import stages
    params = _params(params_json)
    p = params.pipeline
    params = params.model_copy(update={"evaluate": params.evaluate.model_copy(
        update={"greedy": p.eval_greedy or params.evaluate.greedy, "max_new_tokens": p.eval_max_new_tokens})})
    metrics = stages.evaluate(params, model_in, out, heldout=heldout_in, benchmarks=p.eval_benchmarks,
                              prompt=p.eval_prompt, limit=p.eval_limit, heldout_limit=p.heldout_limit,
                              baseline=baseline_in, sources=params.train.get(profile).sources)
    written = [f"{out}/metrics.json", f"{out}/heldout.json"]    # dvc.yaml's metric and plot
    return {"metrics": metrics, "outputs": {path: dvc_md5(path) for path in written}}


@task(name="register", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=_transient)
def register(model_dir: str, metrics: dict, params_json: str) -> dict:
    from stepcode.pipeline import stages
    version = stages.register(_params(params_json), model_dir, metrics)
    return {"name": version.name, "version": version.version, "run_id": version.run_id}


def _run_cached(t, cached: set[str] | None = None, **kwargs) -> dict:
    """Run a cached task; if its cached outputs were deleted or changed since, run it again for real. Adds the
    task's name to `cached` when its result came from the cache."""
    state = t(**kwargs, return_state=True)
    result = state.result()
    if not _outputs_intact(result):
        state = t.with_options(refresh_cache=True)(**kwargs, return_state=True)
        result = state.result()
    if cached is not None and state.name == "Cached":
        cached.add(t.name)
    return result


def _assemble(parts: list[str], out: Path) -> None:
    """The traced parts (URLs, in order) as the folder `out` (part-00000.jsonl, ...), replaced whole: copied one at a
    time into a temp folder beside it that then takes its place."""
    import shutil
    import tempfile

    from flows.runners import download
    from stepcode.jsonl import part_name, replace_folder

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        for k, url in enumerate(parts):
            download(url, tmp / part_name(k))
        tmp.chmod(0o755)
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _batches(programs: Path, work: str, size: int) -> list[str]:
    """Split the corpus into deterministic part files under the storage URL `work`, streamed (one part in memory);
    a part is rewritten only when its content changes, so a finished part keeps its cache key."""
    import itertools

    from flows.runners import read_bytes, remove_stale, url_md5, write_bytes
    from stepcode.data.traces import iter_corpus
    from stepcode.jsonl import jsonl_line

    rows = iter_corpus(programs)
    urls = []
    for k in itertools.count():
        chunk = list(itertools.islice(rows, size))
        if not chunk:
            break
        url = f"{work}/{_part_in(k)}"
        data = b"".join(jsonl_line(r) for r in chunk)
        if url_md5(url) is None or read_bytes(url) != data:
            write_bytes(url, data)
        urls.append(url)
    remove_stale(work, set(urls), "batch-*.jsonl")
    return urls


def _part_in(k: int) -> str:
    return f"batch-{k:05d}.jsonl"


def _started() -> datetime:
    """When this flow run was due to start (local time): the one date in its Prefect name and its MLflow run's."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    when = ctx.flow_run.expected_start_time if ctx is not None and ctx.flow_run is not None else None
    return (when or datetime.now(timezone.utc)).astimezone()


def _run_name(prefix: str = "") -> str:
    """The flow run's name: profile, GRPO mode, params hash, date (`stepcode.pipeline.summary.flow_run_label`)."""
    from prefect.runtime import flow_run

    from stepcode.pipeline.summary import flow_run_label

    p = flow_run.parameters or {}
    try:
        params = load_project_params(p.get("root") or ".", p.get("params_path") or "params.yaml")
        return prefix + flow_run_label(params, p.get("profile"), _started(), p.get("stop_after"))
    except Exception:  # noqa: BLE001 - unreadable params: the flow's own check says why; the run still gets a name
        return f"{prefix}{p.get('profile') or 'default profile'} {_started():%Y-%m-%d %H:%M}"


_TEMPORARY_API: str | None = None   # the URL of `local_api()`'s server while it runs: gone when the run ends


def _prefect_link(flow_run_id: str, name: str) -> tuple[str | None, str]:
    """The flow run's UI address on a real Prefect server (None on the temporary one) and a line for the MLflow run's
    description that leads there."""
    from prefect.settings import PREFECT_API_URL
    from prefect.utilities.urls import url_for

    if _TEMPORARY_API is None and PREFECT_API_URL.value():
        url = url_for("flow-run", obj_id=flow_run_id)
        if url:
            return url, f"Prefect flow run [{name}]({url})."
    home = os.environ.get("PREFECT_HOME")
    serve = f"PREFECT_HOME={home} prefect server start" if home else "prefect server start"
    return None, (f"Prefect flow run **{name}** (`{flow_run_id}`), on the run's temporary Prefect server. To browse "
                  f"it: `{serve}`, then http://127.0.0.1:4200/runs/flow-run/{flow_run_id}")


def _stage_run_ids(mlflow, parent_id: str) -> dict[str, str]:
    """Stage → run id of the stage runs nested under the parent run (this flow run's, not cached stages')."""
    client = mlflow.MlflowClient()
    parent = client.get_run(parent_id)
    runs = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'",
                              order_by=["attributes.start_time ASC"])
    return {r.data.tags.get("stage", r.info.run_name): r.info.run_id for r in runs}


def _publish(outcome: dict, about: str, links, cached: set[str], error: str | None) -> None:
    """The flow run's markdown artifact (Prefect UI: the run's Artifacts tab, and Artifacts > stepcode-pipeline-summary
    for its history). A failure here is a warning in the run's log, never a failed run."""
    from prefect.artifacts import create_markdown_artifact

    from stepcode.pipeline.summary import pipeline_markdown

    try:
        create_markdown_artifact(key=SUMMARY_KEY, markdown=pipeline_markdown(outcome, about=about, links=links,
                                                                            cached=cached, error=error),
                                 description="StepCode pipeline run: SFT vs RL on held-out rows, benchmark scores, "
                                             "each stage with its MLflow run, the model version, the lineage")
    except Exception as e:  # noqa: BLE001
        get_run_logger().warning(f"could not create the summary artifact: {type(e).__name__}: {e}")


SUMMARY_KEY = "stepcode-pipeline-summary"


# log_prints stays off: the stages do not print, and libraries that capture their own prints would lose them to the
# log (dill disassembles a function into a redirected stdout while `datasets` hashes a map: the disassembly would
# flood the run's log, and dill would not see the function's globals).
@flow(name="stepcode-pipeline", log_prints=False, flow_run_name=_run_name)
def pipeline(profile: str | None = None, params_path: str = "params.yaml", root: str = ".",
             stop_after: str | None = None) -> dict:
    """The whole pipeline on embedded defaults. `stop_after` ends it early (trace, validate, build, sft, grpo)."""
    from prefect.runtime import flow_run

    from stepcode.data.traces import write_summary
    from stepcode.dvcdata import record_outputs
    from stepcode.pipeline.learning import learning_lines, learning_summary, log_learning
    from stepcode.pipeline.preflight import check_pipeline, local_base_model
    from stepcode.pipeline.summary import RunLinks, run_about, run_label, run_params, stage_lines, summarize_outcome
    from stepcode.tracking.lineage import parent_run
    from stepcode.tracking.versions import Pusher

    termination.install()
    root = Path(root).resolve()
    os.chdir(root)
    params = load_project_params(root, params_path)
    check_pipeline(params, profile, stop_after, root)   # again here: a deployment's run skips the CLI's check
    params_json = json.dumps(params.model_dump(mode="json", by_alias=True))
    outcome: dict = {"profile": profile}
    logger = get_run_logger()
    profile_name = profile or params.train.profile   # the profile the training stages use
    title = flow_run.name or _run_name()
    cached: set[str] = set()                         # stages whose result came from Prefect's cache

    def said(stage: str, note: str = "") -> None:
        """The stage's summary line (as the CLI prints it) in the flow run's log."""
        for line in stage_lines(stage, outcome):
            head, _, rest = line.partition(" ")
            logger.info(f"{head}: {rest.strip()}" + (note or (" (cached: an earlier run's result)"
                                                               if stage in cached else "")))

    written: set[Path] = set()
    outcome["dvc_recorded"] = []

    push = Pusher(root, enabled=params.tracking.dvc_push)

    def versioned(*paths: Path) -> None:
        """Record in DVC (cache + dvc.lock) each dvc.yaml stage whose outputs this run has now all written, and push
        them to the DVC remote (params tracking.dvc_push; a failed push is a warning in the summary)."""
        written.update(paths)
        recorded = record_outputs(root, written, skip=outcome["dvc_recorded"])
        outcome["dvc_recorded"] += recorded
        push(recorded)

    def run_stages(mlflow) -> None:
        nonlocal profile
        # trace: fan out over parts of the corpus, assemble them in order
        started = time.time()   # the trace stage's MLflow run spans the fan-out, not only its logging
        batches = _batches(root / "data" / "raw", storage_url(params, root, "trace", "in"), params.trace.part_rows)
        out_dir = storage_url(params, root, "trace", "out")
        # Batches are not logged one by one: the assembled table is logged once, as the trace stage, below.
        trace_params = json.dumps({**{k: v for k, v in json.loads(params_json).items() if k in ("sandbox", "trace")},
                                   "tracking": {"enabled": False}}, sort_keys=True)
        outs = [f"{out_dir}/{b.rsplit('/', 1)[-1]}" for b in batches]
        futures = [trace_batch.submit(b, out, trace_params) for b, out in zip(batches, outs)]
        reused = 0
        for b, out, fut in zip(batches, outs, futures):
            result = fut.result()
            if not _outputs_intact(result):
                trace_batch.with_options(refresh_cache=True)(b, out, trace_params)
            else:
                reused += fut.state.name == "Cached"
        traces = root / "data" / "traces"
        _assemble(outs, traces)
        from stepcode.pipeline.stages import trace_merged

        outcome["trace"] = trace_merged(params, root / "data" / "raw", traces, batches=len(outs), started=started)
        said("trace", f" ({len(outs)} parts, {reused} from the cache)")
        write_summary(outcome["trace"], root / "metrics" / "trace.json")
        versioned(traces, root / "metrics" / "trace.json")
        termination.checkpoint()
        if stop_after == "trace":
            return

        report = root / "reports" / "validation"
        outcome["validate"] = validate(str(traces), str(report), params_json)
        said("validate")
        versioned(report / "summary.json", report / "quarantine.jsonl")
        termination.checkpoint()
        if stop_after == "validate":
            return

        outcome["build"] = _run_cached(build, cached, traces_in=str(traces), out_dir=str(root / "data" / "dataset"),
                                       metrics=str(root / "metrics" / "build.json"), params_json=params_json)["stats"]
        said("build")
        versioned(root / "data" / "dataset", root / "metrics" / "build.json")
        termination.checkpoint()
        if stop_after == "build":
            return

        profile = profile or params.train.profile
        prof = params.train.get(profile)
        dataset = root / "data" / "dataset"
        models = root / "models" / profile
        base = local_base_model(prof, profile, root)
        if base is None:
            base = models / "base"
            _run_cached(init_model, cached, corpus_in=str(traces), out=str(base), profile=profile,
                        params_json=params_json)
            versioned(base)
        sft_out = models / "sft"
        curves = root / "metrics" / f"train-{profile}"     # the training curves dvc.yaml declares as plots
        outcome["sft"] = _run_cached(sft, cached, model_in=str(base), data_in=str(dataset / "sft.jsonl"),
                                     out=str(sft_out), curves=str(curves / "sft.json"), profile=profile,
                                     params_json=params_json)["summary"]
        said("sft")
        versioned(sft_out, curves / "sft.json")
        termination.checkpoint()
        if stop_after == "sft":
            return
        mode = params.pipeline.grpo_mode
        grpo_out = models / f"grpo-{mode}"
        outcome["grpo"] = _run_cached(grpo, cached, model_in=str(sft_out), data_in=str(dataset / "rl.jsonl"),
                                      out=str(grpo_out), curves=str(curves / f"grpo-{mode}.json"), profile=profile,
                                      mode=mode, params_json=params_json)["summary"]
        said("grpo")
        versioned(grpo_out, curves / f"grpo-{mode}.json")
        termination.checkpoint()
        if stop_after == "grpo":
            return
        metrics = _run_cached(evaluate, cached, model_in=str(grpo_out), baseline_in=str(sft_out),
                              heldout_in=str(dataset / "heldout.jsonl"), out=str(root / "metrics" / f"eval-{profile}"),
                              profile=profile, params_json=params_json)["metrics"]
        versioned(*(root / "metrics" / f"eval-{profile}" / name for name in ("metrics.json", "heldout.json")))
        termination.checkpoint()
        outcome["evaluate"] = metrics
        said("evaluate")
        outcome["learning"] = learning_summary(outcome["grpo"], metrics)
        for line in learning_lines(outcome["learning"], metrics.get("heldout.rows")):
            logger.info(line.replace("learning  ", "learning: ", 1).strip())
        if mlflow:
            log_learning(mlflow, outcome["learning"], outcome["sft"], outcome["grpo"], metrics)
            outcome["model"] = register(str(grpo_out), metrics, params_json)
            outcome["mlflow_run_id"] = mlflow.active_run().info.run_id
            logger.info(f"model: registered {outcome['model']['name']} v{outcome['model']['version']}")

    # The pipeline's MLflow run: every stage run nests under it; FAILED if a stage raises, KILLED on a signal. When
    # the stages end, however they end, the run records what it points at (stepcode.tracking.versions). Named
    # `<profile> <date>`; its `stage` tag says what it is (pipeline), and its tags and description lead to the flow run.
    prefect_url, note = _prefect_link(str(flow_run.id), title)
    tags = {"stage": "pipeline", "profile": profile_name, "prefect.flow_run_id": str(flow_run.id),
            "prefect.flow_run_name": title, "mlflow.note.content": note,
            **({"prefect.flow_run_url": prefect_url} if prefect_url else {})}
    links, error, finished = None, None, False
    with parent_run(run_label(profile_name, _started()), params, tags=tags, killed=termination.requested,
                    on_killed=termination.kill_runs) as mlflow:
        if mlflow is not None:
            run = mlflow.active_run()
            mlflow.log_params(run_params(params, profile_name, stop_after))
            links = RunLinks(mlflow.get_tracking_uri(), run.info.experiment_id, run.info.run_id, run.info.run_name,
                             experiment_name=params.tracking.experiment)
            logger.info(f"MLflow run {run.info.run_name!r} ({run.info.run_id}) in {links.tracking_uri}: "
                        f"{links.url(run.info.run_id)}" + ("" if links.server else " (once `mlflow ui --backend-store-"
                                                           f"uri {links.tracking_uri}` runs in the project folder)"))
        try:
            run_stages(mlflow)
            finished = True
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
            raise
        finally:
            outcome["dvc_push"] = push.outcome()
            if mlflow is not None:
                outcome["lineage"] = _record_lineage(mlflow, root, params_path, params, outcome)
                with contextlib.suppress(Exception):   # the links are a convenience: never a failed run
                    links.stages = _stage_run_ids(mlflow, links.parent_id)
            if finished:
                logger.info("summary (the Artifacts tab has it as tables, with links to the MLflow runs)\n"
                            + summarize_outcome(outcome))
            if finished or error is not None:   # not when killed: the process is on its way out
                _publish(outcome, run_about(params, profile_name, _started(), stop_after), links, cached, error)
        return outcome


def _record_lineage(mlflow, root: Path, params_path: str, params, outcome: dict) -> dict | None:
    """The parent run's lineage (dvc.lock entries, params file, datasets on the remote). A failure here is a warning
    in the summary: the run and its data are already recorded."""
    from stepcode.tracking.versions import one_line, record_run

    try:
        return record_run(mlflow, root, params_path, params, outcome["dvc_recorded"], outcome["dvc_push"])
    except Exception as e:  # noqa: BLE001
        return {"warning": f"recording the run's lineage failed ({one_line(e)})"}


@contextlib.contextmanager
def local_api():
    """Without PREFECT_API_URL, run on one temporary local API server for the whole run, and export its URL so the
    process-pool workers use it too (left alone, each worker process would start a temporary server of its own)."""
    if os.environ.get("PREFECT_API_URL"):
        yield None
        return
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    global _TEMPORARY_API
    server = SubprocessASGIServer()
    server.start()
    os.environ["PREFECT_API_URL"] = _TEMPORARY_API = server.api_url
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)   # send the last logs before the server goes (else: "Error logging to API")
        os.environ.pop("PREFECT_API_URL", None)
        _TEMPORARY_API = None
        server.stop()


class _UserErrorsOnce(logging.Filter):
    """A user error (a missing input, a failed gate) reaches the console once, as the CLI's own message. Prefect's
    lines about it (the task's and the flow's failure, each with the message and a traceback) still go to the Prefect
    API and its UI; the console handler drops them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], DETERMINISTIC):
            return False
        if record.levelno >= logging.ERROR and record.name.startswith(("prefect.flow_runs", "prefect.task_runs")):
            return not _user_error_named(record.getMessage())
        return True


def _user_error_named(message: str) -> bool:
    """Whether a Prefect state message ("... encountered an exception GateFailed: ...") is about a user error."""
    kinds, names = [UserError], {"FileNotFoundError"}
    while kinds:
        kind = kinds.pop()
        names.add(kind.__name__)
        kinds.extend(kind.__subclasses__())
    return any(f"{name}:" in message or f"{name}(" in message for name in names)


@contextlib.contextmanager
def quiet_user_errors():
    from prefect.logging.handlers import PrefectConsoleHandler

    handlers = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    once = _UserErrorsOnce()
    for handler in handlers:
        handler.addFilter(once)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(once)


def run_pipeline(profile: str | None = None, params_path: str = "params.yaml", root: str = ".",
                 stop_after: str | None = None) -> dict:
    """Run the flow on the task runner params choose (`flows.runners.task_runner`). What cannot work (a bad option, a
    missing input) fails here, in one line, before Prefect starts."""
    from stepcode.pipeline.preflight import check_pipeline

    params = load_project_params(root, params_path)
    check_pipeline(params, profile, stop_after, root)
    configured = pipeline.with_options(task_runner=task_runner(params))
    with local_api(), quiet_user_errors():
        return configured(profile=profile, params_path=params_path, root=root, stop_after=stop_after)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Run the StepCode pipeline flow.")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--stop-after", default=None, choices=STOP_POINTS)
    args = ap.parse_args()
    print(json.dumps(run_pipeline(profile=args.profile, params_path=args.params, stop_after=args.stop_after),
                     indent=2, default=str))
