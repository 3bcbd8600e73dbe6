"""Benchmark evaluation with the official semantics: one registered Benchmark per benchmark, shared execution scoring.

    stepcode score --benchmark cruxeval --task output generations.json -o scored.json      # score predictions
    stepcode evaluate --model models/run --benchmarks cruxeval,lcb --limit 3 -o eval/      # generate, then score

    from stepcode.evals import score_file
    score_file("cruxeval", "output", "generations.json", "scored.json", params)

Modules: `benchmark` (the Benchmark interface) and `registry` (name -> Benchmark, `BENCHMARKS`: name -> tasks);
one module per benchmark, each defining its Benchmark: `cruxeval`, `livecodebench`, `reval` (+ `reval_dynamics`,
its tracer); `passk` (unbiased pass@k), `scoring` (sandboxed checks, skip rules, the official result format),
`generate` (model completions and the `evaluate` stage), `stepcode_task` (our instrumented task: answer pass@1
beside step accuracy), `heldout`. The functions here take a benchmark name and go through the registry. This
package's import is light (the standard library only: the sandbox server imports `reval_dynamics` through it); the
registry and the benchmark modules load on first use.

Generations files come in the official format `{"sample_<k>": [prediction, ...]}`. Whether the strings are already
extracted predictions (what the official generations.json and the published `raw_generations` hold: a literal for
output tasks, a call `f(...)` for CRUXEval-I) or raw model text is not guessed: `extract="none"` (default) takes
them as predictions, `extract="direct"` / `"cot"` first applies the official extraction for that prompt style.
"""

from __future__ import annotations

import json
from pathlib import Path

EXTRACT_MODES = ("none", "direct", "cot")


def __getattr__(name: str):
    if name == "BENCHMARKS":     # name -> tasks, from the registry (loaded on first use)
        from stepcode.evals.registry import BENCHMARKS

        return BENCHMARKS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_benchmark(name: str):
    """The registered Benchmark called `name` (ValueError listing the known ones otherwise)."""
    from stepcode.evals.registry import get

    return get(name)


def check_task(benchmark_name: str, task: str) -> None:
    get_benchmark(benchmark_name).check_task(task)


def load_problems(benchmark_name: str, params) -> list[dict]:
    """The benchmark's problems from its path in params.evaluate."""
    return get_benchmark(benchmark_name).load_problems(params)


def adapter(benchmark_name: str, task: str):
    bench = get_benchmark(benchmark_name)
    bench.check_task(task)
    return bench.scoring_adapter(task)


def extract(benchmark_name: str, task: str, text: str, cot: bool) -> str:
    """The official extraction of one raw completion (prompt removed)."""
    bench = get_benchmark(benchmark_name)
    bench.check_task(task)
    return bench.extract(text, task, cot)


def extract_all(benchmark_name: str, task: str, generations: dict, mode: str) -> dict:
    if mode not in EXTRACT_MODES:
        raise ValueError(f"extract must be one of {EXTRACT_MODES}, got {mode!r}")
    if mode == "none":
        return generations
    return {k: [extract(benchmark_name, task, g, mode == "cot") for g in gens] for k, gens in generations.items()}


def official(result: dict) -> dict:
    """Only the official result keys, in the official order (the sample-format benchmarks' `official_export`)."""
    return {k: result[k] for k in ("raw_generations", "raw_scored_generations", "pass_at_1", "pass_at_5")}


def score_file(benchmark_name: str, task: str, generations_path, out_path, params, *, skip_rule: str | None = None,
               samples: list[str] | None = None, extract: str = "none", progress: bool = False) -> dict:
    """The `score` stage: a generations file in, the official result file out (when out_path is given).
    `Unsupported` for a benchmark without the "score" capability (before anything is read)."""
    from stepcode.evals.benchmark import SCORE
    from stepcode.evals.scoring import score_generations

    bench = get_benchmark(benchmark_name)
    bench.require(SCORE)
    bench.check_task(task)
    try:
        generations = json.loads(Path(generations_path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{generations_path}: not JSON: {e}") from None
    result = score_generations(benchmark_name, task, bench.load_problems(params), generations, params,
                               skip_rule=skip_rule, samples=samples, extract=extract, progress=progress)
    if out_path is not None:
        write_json(out_path, bench.official_export(result))
    return result


def write_json(path, obj) -> None:
    """Write JSON atomically: a crash never leaves half a file, and two writers never share a temp file."""
    from stepcode.jsonl import atomic_write_text  # here: this package's import stays standard-library only

    atomic_write_text(path, json.dumps(obj))
