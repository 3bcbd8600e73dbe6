"""REval end to end: generate with a backend, score with the official scorer (stepcode/evals/reval.py), write the
generations in REval's own result format as well as ours.

    from stepcode.evals.generate import Decoding, load_backend
    from stepcode.evals.reval_run import evaluate_reval
    metrics = evaluate_reval(load_backend("models/run"), params, [Decoding("t0.8", 0.8, 1)], "eval/", limit=3)
    metrics["reval_coverage_acc"], metrics["reval_t0.8_ic"]          # percent (0-100), IC on its own 0-100 scale

Protocol (upstream r-eval/REval@2f148b9 `inference.py`, `evaluation.py`, `batch_run.py`; notes section 3):
- questions: `reval_prompts` (the official direct prompts) of every pair whose truth is ok; pairs the sandbox could
  not run here (DREval/122 under numpy 2) are neither asked nor scored, and counted (`excluded_*`), as
  `score_reval` does. A backend gets `Prompt(messages, raw)`: the system + user messages upstream sends OpenAI
  models, and the user prompt alone (what upstream's vLLM path sends as a plain completion) as `raw`.
- `limit` keeps the first N *programs* (DREval idx order, i.e. data order, an excluded program counting as one), so
  all the pairs and tasks of a program stay together; None = all 154.
- decoding: each `Decoding` of `runs` is one run; stop at "[/ANSWER]"; at most min(params.evaluate.max_new_tokens,
  256) new tokens (upstream: 256 direct, 1024 CoT, which reval_prompts does not offer yet); top_p and the seed
  come from params.evaluate (upstream leaves top_p at 1.0 and sets no seed). Prompts go to the backend CHUNK at a
  time (one progress step each), every call with that same seed.
- the stop string is cut off the text before parsing, as upstream's backends (OpenAI, vLLM) return it: upstream's
  path parser strips only after an `[ANSWER]` tag, so an answer "\\nreturn x\\n" parses as an empty first line
  (wrong) where "\\nreturn x\\n[/ANSWER]" would parse as "return x" (`reval.parse_path`). Keeping the stop would
  score path answers upstream scores wrong.
- repeats: upstream asks every question once per run and repeats the whole run 5 times (`batch_run.py`); here the
  k-th sample of every question (d.n samples: one `complete_many` call) makes repeat k, each repeat is scored on
  its own, and a run's metrics are the mean over its repeats (d.n = 1: one repeat, the scorer's own numbers).

Files under OUT_DIR, for each run <label> (`Decoding.label`):
    generations/reval_<label>.raw.json      {task_id: text} (d.n > 1: {task_id: [text per repeat]}), stop cut off
    scored/reval_<label>.json               d.n = 1: score_reval's result (metrics, tasks, judge_errors, excluded);
                                            d.n > 1: {"metrics": the mean, "repeats": [score_reval's result, ...]}
    model_generations/<type>@<model_id>_direct_temp<T>/<time>.jsonl
                                            upstream's own log (evaluation.py `Task.run`), one per question type
                                            (coverage, state, path, output) and repeat: one line per program,
                                            {"task_id": "DREval/<idx>", "generation": [{"input_idx": k, "results":
                                            [...]}]}, results per atomic task as upstream writes them (coverage and
                                            path {"generated", "response", "expected"}, state {"generated", "eq"},
                                            output one {"generated", "pass"}), then a last line with upstream's
                                            metrics (fractions: coverage acc/prec/rec/f1, else acc). <T> is
                                            str(float(temperature)), <time> upstream's `%y-%m-%d-%H-%M` in China
                                            time (UTC+8, no DST); with d.n > 1 the files are <time>_run<k>.jsonl.
Upstream's ReplayModel re-asks its questions in this file order and feeds back `generated`, so REval's harness can
re-score these files; it lines up exactly when no pair was excluded and no limit was set (REval's harness itself
cannot run DREval/122 under numpy 2 either). Upstream's `Consistency` aligns the four files per atomic task: it
recomputes the IC reported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

from stepcode.evals.benchmark import Prompt
from stepcode.evals.reval import TASK_TYPES, RevalError, read_truths, reval_prompts, reval_truth, score_reval

STOP = "[/ANSWER]"
KEEP_STOP = False                  # cut the stop off, as upstream's backends return the text (see the docstring)
MAX_NEW_TOKENS = {"direct": 256, "cot": 1024}      # upstream inference.py Model.max_new_tokens
CHUNK = 256                        # prompts per complete_many call: a progress bar step, and a backend batch
CHINA = timezone(timedelta(hours=8), "Asia/Shanghai")    # upstream get_time(); China has had no DST since 1991
# (flat key, path into score_reval's metrics): what evaluate_reval returns per run, in percent or counts
FLAT = (("coverage_acc", ("coverage", "acc")), ("coverage_f1", ("coverage", "f1")),
        ("coverage_precision", ("coverage", "precision")), ("coverage_recall", ("coverage", "recall")),
        ("state_acc", ("state",)), ("path_acc", ("path",)), ("output_acc", ("output",)), ("ic", ("ic",)),
        ("pairs", ("n_pairs",)), ("tasks", ("n_tasks",)), ("excluded_pairs", ("excluded_pairs",)),
        ("excluded_tasks", ("excluded_tasks",)), ("excluded_programs", ("excluded_programs",)),
        ("judge_errors", ("judge_errors",)))


def evaluate_reval(backend, params, runs: Sequence, out_dir, *, limit: int | None = None, sandbox=None,
                   progress: bool = True, model_id: str | None = None) -> dict[str, float]:
    """Generate an answer to every REval question with `backend` for each Decoding in `runs`, score each run with
    `score_reval`, write the files of the module docstring, and return flat metrics: `reval_<name>` for the first
    run and `reval_<label>_<name>` for every run, names from FLAT plus `programs` and `repeats`.

    `sandbox`: one started with `runners=reval.REVAL_RUNNERS` (it builds the truth if it is not cached, and judges
    state and output answers); None starts one for the call. `model_id` names upstream's log folders (default:
    the folder name of the backend's model, else the backend's name)."""
    from tqdm import tqdm

    from stepcode.evals.reval import reval_sandbox

    if not runs:
        raise ValueError("evaluate_reval needs at least one Decoding in runs")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    ev = params.evaluate
    prompt_type = "cot" if ev.cot else "direct"
    max_new_tokens = min(ev.max_new_tokens, MAX_NEW_TOKENS[prompt_type])
    model_id = model_id or default_model_id(backend)
    out = Path(out_dir)
    metrics: dict[str, float] = {}
    with reval_sandbox(params, sandbox) as sb:
        truths = first_programs(read_truths(reval_truth(params, sandbox=sb)), limit)
        questions = reval_prompts(truths, cot=ev.cot)          # raises for CoT: no official CoT prompts offline
        ids = [tid for tid, _, _ in questions]
        prompts = [Prompt(messages, messages[-1]["content"]) for _, _, messages in questions]
        n_programs = len({r["idx"] for r in truths})
        for i, d in enumerate(runs):
            texts: list[list[str]] = []
            with tqdm(total=len(prompts), desc=f"reval {d.label}", unit="prompt", dynamic_ncols=True,
                      disable=not progress) as bar:
                for k in range(0, len(prompts), CHUNK):
                    chunk = prompts[k:k + CHUNK]
                    got = backend.complete_many(chunk, d, top_p=ev.top_p, max_new_tokens=max_new_tokens,
                                                stops=[STOP], seed=ev.hash_seed)
                    if len(got) != len(chunk) or any(len(g) < d.n for g in got):
                        raise RevalError(f"the backend returned {len(got)} answer lists for {len(chunk)} prompts "
                                         f"(each needs {d.n} samples)")
                    texts += [[_cut(t) for t in g[:d.n]] for g in got]
                    bar.update(len(chunk))
            repeats = []
            for r in range(d.n):
                gens = {tid: t[r] for tid, t in zip(ids, texts)}
                result = score_reval(truths, gens, params=params, sandbox=sb, cot=ev.cot)
                repeats.append(result)
                stem = _time_stem() + (f"_run{r + 1}" if d.n > 1 else "")
                write_upstream_logs(out, truths, gens, result, model_id=model_id, prompt_type=prompt_type,
                                    temperature=d.temperature, stem=stem)
            run_metrics = repeats[0]["metrics"] if d.n == 1 else mean_metrics([x["metrics"] for x in repeats])
            _write_ours(out, d, ids, texts, repeats, run_metrics)
            flat = flat_metrics(run_metrics) | {"programs": n_programs, "repeats": d.n}
            metrics.update({f"reval_{d.label}_{k}": v for k, v in flat.items()})
            if i == 0:
                metrics.update({f"reval_{k}": v for k, v in flat.items()})
    return metrics


def first_programs(truths: list[dict], limit: int | None) -> list[dict]:
    """The truth rows of the first `limit` programs in data order (all of them for None)."""
    if limit is None:
        return truths
    keep: list[int] = []
    for r in truths:
        if r["idx"] not in keep:
            if len(keep) == limit:
                break
            keep.append(r["idx"])
    return [r for r in truths if r["idx"] in keep]


def default_model_id(backend) -> str:
    path = getattr(getattr(backend, "model", None), "name_or_path", None)
    name = Path(str(path)).name if path else getattr(backend, "name", None) or type(backend).__name__
    return name.replace("/", "_") or "model"


def _cut(text: str) -> str:
    from stepcode.evals.generate import cut_at_stop

    return cut_at_stop(text, [STOP], keep=KEEP_STOP)


def _time_stem() -> str:
    return datetime.now(CHINA).strftime("%y-%m-%d-%H-%M")


def flat_metrics(m: dict) -> dict[str, float]:
    flat = {}
    for key, path in FLAT:
        v = m
        for p in path:
            v = v[p]
        flat[key] = v
    return flat


def mean_metrics(ms: list[dict]) -> dict:
    """The mean of each number over the repeats' metrics (nested dicts too); judge_errors is summed; anything else
    (excluded_reasons) is the first repeat's, the same in all of them."""
    def mean(values):
        first = values[0]
        if isinstance(first, dict) and all(isinstance(v, (int, float)) for v in first.values()):
            return {k: mean([v[k] for v in values]) for k in first}
        if isinstance(first, (int, float)) and not isinstance(first, bool):
            return sum(values) / len(values)
        return first

    out = {k: mean([m[k] for m in ms]) for k in ms[0]}
    out["judge_errors"] = sum(m["judge_errors"] for m in ms)
    for k in ("n_pairs", "n_tasks", "excluded_pairs", "excluded_tasks", "excluded_programs"):
        out[k] = ms[0][k]
    return out


def _write_ours(out: Path, d, ids: list[str], texts: list[list[str]], repeats: list[dict], run_metrics: dict) -> None:
    from stepcode.evals import write_json

    raw = {tid: (t[0] if d.n == 1 else t) for tid, t in zip(ids, texts)}
    write_json(out / "generations" / f"reval_{d.label}.raw.json", raw)
    scored = repeats[0] if d.n == 1 else {"metrics": run_metrics, "repeats": repeats}
    write_json(out / "scored" / f"reval_{d.label}.json", scored)


def upstream_records(truths: list[dict], generations: dict[str, str], result: dict) -> dict[str, list[dict]]:
    """{question type: the lines of upstream's log} for one scored run (see the module docstring)."""
    from stepcode.evals.reval import task_id

    table = {e["task_id"]: e for e in result["tasks"]}
    logs: dict[str, list[dict]] = {t: [] for t in TASK_TYPES}
    last_idx = None
    for row in truths:
        if row["idx"] != last_idx:
            for t in TASK_TYPES:
                logs[t].append({"task_id": f"DREval/{row['idx']}", "generation": []})
            last_idx = row["idx"]
        if row["status"] != "ok":
            continue
        n = range(len(row["tasks"]))
        per_type = {
            "coverage": [_upstream_entry(table, generations, task_id(row, j, "coverage"), "response") for j in n],
            "state": [_upstream_entry(table, generations, task_id(row, j, "state"), "eq") for j in n],
            "path": [_upstream_entry(table, generations, task_id(row, j, "path"), "response") for j in n],
            "output": [_upstream_entry(table, generations, task_id(row, None, "output"), "pass")],
        }
        for t in TASK_TYPES:
            logs[t][-1]["generation"].append({"input_idx": row["input_idx"], "results": per_type[t]})
    m = result["metrics"]
    cov = m["coverage"]
    logs["coverage"].append({"acc": cov["acc"] / 100, "prec": cov["precision"] / 100, "rec": cov["recall"] / 100,
                             "f1": cov["f1"] / 100})
    for t in ("state", "path", "output"):
        logs[t].append({"acc": m[t] / 100})
    return logs


def _upstream_entry(table: dict, generations: dict, tid: str, kind: str) -> dict:
    e = table[tid]
    if kind == "response":
        return {"generated": generations[tid], "response": e["response"], "expected": e["expected"]}
    return {"generated": generations[tid], kind: e["correct"]}


def write_upstream_logs(out: Path, truths: list[dict], generations: dict[str, str], result: dict, *, model_id: str,
                        prompt_type: str, temperature: float, stem: str) -> list[Path]:
    """Write upstream's four logs (`model_generations/<type>@<model_id>_<prompt_type>_temp<T>/<stem>.jsonl`)."""
    from stepcode.jsonl import write_jsonl

    info = f"{model_id}_{prompt_type}_temp{float(temperature)}"      # upstream Model.info
    paths = []
    for t, lines in upstream_records(truths, generations, result).items():
        path = out / "model_generations" / f"{t}@{info}" / f"{stem}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(path, lines)
        paths.append(path)
    return paths
