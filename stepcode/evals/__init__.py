"""Benchmark evaluation with the official semantics: one adapter per benchmark, shared execution scoring.

    stepcode score --benchmark cruxeval --task output generations.json -o scored.json      # score predictions
    stepcode evaluate --model models/run --benchmarks cruxeval,lcb --limit 3 -o eval/      # generate, then score

    from stepcode.evals import score_file
    score_file("cruxeval", "output", "generations.json", "scored.json", params)

Modules: `passk` (unbiased pass@k), `scoring` (sandboxed checks, skip rules, the official result format),
`cruxeval` and `livecodebench` (load, prompt, extract, check program), `generate` (model completions and the
`evaluate` stage), `stepcode_task` (our instrumented task: answer pass@1 beside step accuracy). This package's
import is light: heavy modules load inside the functions that need them.

Generations files come in the official format `{"sample_<k>": [prediction, ...]}`. Whether the strings are already
extracted predictions (what the official generations.json and the published `raw_generations` hold: a literal for
output tasks, a call `f(...)` for CRUXEval-I) or raw model text is not guessed: `extract="none"` (default) takes
them as predictions, `extract="direct"` / `"cot"` first applies the official extraction for that prompt style.
"""

from __future__ import annotations

import json
from pathlib import Path

BENCHMARKS = {"cruxeval": ("output", "input"), "lcb": ("output",)}
EXTRACT_MODES = ("none", "direct", "cot")


def _module(benchmark: str):
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {sorted(BENCHMARKS)}")
    if benchmark == "cruxeval":
        from stepcode.evals import cruxeval as module
    else:
        from stepcode.evals import livecodebench as module
    return module


def check_task(benchmark: str, task: str) -> None:
    _module(benchmark)
    if task not in BENCHMARKS[benchmark]:
        raise ValueError(f"{benchmark} has the task(s) {BENCHMARKS[benchmark]}, not {task!r}")


def load_problems(benchmark: str, params) -> list[dict]:
    """The benchmark's problems from the path in params.evaluate."""
    path = params.evaluate.cruxeval_path if benchmark == "cruxeval" else params.evaluate.lcb_path
    return _module(benchmark).load_problems(path)


def adapter(benchmark: str, task: str):
    check_task(benchmark, task)
    return _module(benchmark).adapter(task)


def extract(benchmark: str, task: str, text: str, cot: bool) -> str:
    """The official extraction of one raw completion (prompt removed)."""
    check_task(benchmark, task)
    if benchmark == "cruxeval":
        return _module(benchmark).extract(text, task, cot)
    return _module(benchmark).extract(text, cot)


def extract_all(benchmark: str, task: str, generations: dict, mode: str) -> dict:
    if mode not in EXTRACT_MODES:
        raise ValueError(f"extract must be one of {EXTRACT_MODES}, got {mode!r}")
    if mode == "none":
        return generations
    return {k: [extract(benchmark, task, g, mode == "cot") for g in gens] for k, gens in generations.items()}


def official(result: dict) -> dict:
    """Only the official result keys, in the official order."""
    return {k: result[k] for k in ("raw_generations", "raw_scored_generations", "pass_at_1", "pass_at_5")}


def score_file(benchmark: str, task: str, generations_path, out_path, params, *, skip_rule: str | None = None,
               samples: list[str] | None = None, extract: str = "none", progress: bool = False) -> dict:
    """The `score` stage: a generations file in, the official result file out (when out_path is given)."""
    from stepcode.evals.scoring import score

    try:
        generations = json.loads(Path(generations_path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{generations_path}: not JSON: {e}") from None
    problems = load_problems(benchmark, params)
    generations = extract_all(benchmark, task, generations, extract)
    result = score(adapter(benchmark, task), problems, generations, skip_rule=skip_rule, samples=samples,
                   params=params, hash_seed=params.evaluate.hash_seed, timeout=params.evaluate.check_timeout_s,
                   progress=progress)
    if out_path is not None:
        write_json(out_path, official(result))
    return result


def write_json(path, obj) -> None:
    """Write JSON atomically (a crash never leaves half a file)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(obj))
    tmp.replace(p)
