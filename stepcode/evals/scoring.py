"""Execution scoring shared by the benchmark adapters: run check programs in the sandbox, apply a skip rule, count.

    from stepcode.evals import cruxeval
    from stepcode.evals.scoring import score
    result = score(cruxeval.adapter("output"), problems, {"sample_0": ["'bhihia'", ...]}, skip_rule="drop")
    result["pass_at_1"], result["raw_scored_generations"]["sample_0"]        # the official result format

The pipeline, each step a pure function but the one that executes:
1. the adapter turns (problem, prediction) into a check program, or None when its skip rule applies
   ("copied input": the prediction just repeats the call);
2. `run_checks` executes every program in ONE long-lived sandbox (PYTHONHASHSEED pinned, default 0), a batch of
   programs per round trip (`Sandbox.map_batches`); a check passes only if the program runs to the end (status
   "passed"): an assertion error, any exception, a timeout or a kill is a failure, as in the official harnesses;
3. `combine` turns the per-generation verdicts (None = skipped) into the official boolean list under a skip rule;
4. pass@1 / pass@5 with the unbiased estimator (`stepcode.evals.passk`).

Skip rules (`combine`):
- "drop"  (CRUXEval today; LiveCodeBench input prediction, scored as CRUXEval-I): skipped generations are removed;
           then, if no verdict is True, the sample becomes [False] * number of generations (so n is the full count
           again).
- "false" (older CRUXEval): skipped generations count as False; n stays the number of generations.
- "lcb"   (LiveCodeBench output prediction): skipped generations are removed; only when ALL were skipped does the
           sample become [False] * number of generations (a sample with survivors, none correct, keeps the shorter
           list).

Predictions are spliced verbatim into Python source: a prediction is untrusted code. Nothing here executes it in
this process; the sandbox (stepcode/sandbox/engine.py) does, with the official `reliability_guard` applied inside.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from stepcode.evals.passk import mean_pass_at_k

SKIP_RULES = ("drop", "false", "lcb")
CHECK_TIMEOUT_S = 3.0          # the official harnesses' per-check limit
_SAMPLE_ID = re.compile(r"sample_(\d+)")


@dataclass(frozen=True)
class Adapter:
    """What scoring needs to know about one benchmark task."""
    name: str                                               # e.g. "cruxeval-output"
    check_program: Callable[[dict, str], str | None]        # (problem, prediction) -> program, or None = skipped
    default_skip_rule: str


def sample_index(sample_id: str) -> int:
    """`sample_12` -> 12 (the official ids; results are ordered by this number, as upstream sorts them)."""
    m = _SAMPLE_ID.fullmatch(sample_id) if isinstance(sample_id, str) else None
    if not m:
        raise ValueError(f"sample id must look like 'sample_<k>', got {sample_id!r}")
    return int(m.group(1))


def combine(verdicts: Sequence[bool | None], skip_rule: str) -> list[bool]:
    """The official per-generation list from verdicts (None = skipped by the copied-input rule)."""
    if skip_rule not in SKIP_RULES:
        raise ValueError(f"unknown skip rule {skip_rule!r}; expected one of {SKIP_RULES}")
    if skip_rule == "false":
        return [v is True for v in verdicts]
    kept = [bool(v) for v in verdicts if v is not None]
    if skip_rule == "drop" and True not in kept:
        return [False] * len(verdicts)
    if skip_rule == "lcb" and not kept:
        return [False] * len(verdicts)
    return kept


def run_checks(programs: Iterable[str | None], *, sandbox=None, params=None, hash_seed: int = 0,
               timeout: float = CHECK_TIMEOUT_S, progress: bool = False, total: int | None = None) -> list[bool | None]:
    """Execute each check program in the sandbox; True iff it ran to the end. None (a skipped generation) passes
    through unexecuted. Pass `sandbox` to reuse one (its first hash seed is used); else one is started here."""
    from stepcode.sandbox.engine import Sandbox, preload_for

    own = sandbox is None
    if own:
        programs = list(programs)
        sandbox = Sandbox(params.sandbox if params is not None else None, hash_seeds=(hash_seed,),
                          preload=preload_for(p for p in programs if p is not None))

    def batch(programs: list[str | None]) -> list[bool | None]:
        todo = [{"program": p} for p in programs if p is not None]
        results = []
        if todo:
            with sandbox.slot() as slot:
                results = slot.run_many("check", todo, hash_seed=sandbox.hash_seeds[0], timeout=timeout)
        verdicts = iter(r["status"] == "passed" for r in results)
        return [None if p is None else next(verdicts) for p in programs]

    try:
        results = sandbox.map_batches(batch, programs)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=total, desc="checking", unit="check", dynamic_ncols=True)
        return list(results)
    finally:
        if own:
            sandbox.close()


def select(problems: Sequence[dict], generations: Mapping[str, Sequence[str]],
           samples: Sequence[str] | None = None) -> list[tuple[dict, list[str]]]:
    """Pair each selected problem with its generations, in sample order. Without `samples`, every problem of the
    benchmark must have generations (a partial file would silently score a different benchmark)."""
    if not isinstance(generations, Mapping):
        raise ValueError("generations must be a JSON object {\"sample_<k>\": [prediction, ...]}")
    by_id = {p["id"]: p for p in problems}
    unknown = [k for k in generations if k not in by_id]
    if unknown:
        raise ValueError(f"generations for ids the benchmark does not have: {unknown[:5]}")
    wanted = list(samples) if samples is not None else list(by_id)
    missing = [k for k in wanted if k not in by_id] if samples is not None else []
    if missing:
        raise ValueError(f"--samples names ids the benchmark does not have: {missing[:5]}")
    absent = [k for k in wanted if k not in generations]
    if absent:
        raise ValueError(f"no generations for {len(absent)} selected sample(s), e.g. {absent[:5]} "
                         "(score a subset explicitly with samples=/--samples)")
    pairs = []
    for k in sorted(dict.fromkeys(wanted), key=sample_index):
        gens = generations[k]
        if not isinstance(gens, list) or not gens or not all(isinstance(g, str) for g in gens):
            raise ValueError(f"{k}: generations must be a non-empty list of strings")
        pairs.append((by_id[k], list(gens)))
    return pairs


def score(adapter: Adapter, problems: Sequence[dict], generations: Mapping[str, Sequence[str]], *,
          skip_rule: str | None = None, samples: Sequence[str] | None = None, sandbox=None, params=None,
          hash_seed: int = 0, timeout: float = CHECK_TIMEOUT_S, progress: bool = False) -> dict:
    """Score extracted predictions; returns the official result format plus `verdicts` (None = skipped), so a
    caller can re-combine under another skip rule without re-executing."""
    rule = skip_rule or adapter.default_skip_rule
    if rule not in SKIP_RULES:
        raise ValueError(f"unknown skip rule {rule!r}; expected one of {SKIP_RULES}")
    pairs = select(problems, generations, samples)
    programs = [adapter.check_program(problem, g) for problem, gens in pairs for g in gens]
    flat = run_checks(programs, sandbox=sandbox, params=params, hash_seed=hash_seed, timeout=timeout,
                      progress=progress, total=len(programs))
    verdicts, i = {}, 0
    for problem, gens in pairs:
        verdicts[problem["id"]] = flat[i:i + len(gens)]
        i += len(gens)
    return result_from_verdicts({p["id"]: g for p, g in pairs}, verdicts, rule)


def result_from_verdicts(generations: Mapping[str, list[str]], verdicts: Mapping[str, list[bool | None]],
                         skip_rule: str) -> dict:
    """The official result object (`raw_generations`, `raw_scored_generations`, `pass_at_1`, `pass_at_5`) and our
    `verdicts` / `skip_rule` beside them."""
    scored = {k: combine(v, skip_rule) for k, v in verdicts.items()}
    lists = list(scored.values())
    return {"raw_generations": dict(generations), "raw_scored_generations": scored,
            "pass_at_1": mean_pass_at_k(lists, 1), "pass_at_5": mean_pass_at_k(lists, 5),
            "skip_rule": skip_rule, "verdicts": dict(verdicts)}


def score_generations(benchmark_name: str, task: str, problems: Sequence[dict], generations, params, *,
                      skip_rule: str | None = None, samples: Sequence[str] | None = None, extract: str = "none",
                      progress: bool = False) -> dict:
    """One generations file's content (already parsed), scored against `problems` (already loaded): what
    `stepcode.evals.score_file` does between reading its input and writing its output, with no file and no path, so
    a task can run it on any machine (`flows/score.py`: one task per file, the problems loaded once by the flow).
    Same result as `score_file` on that file: the benchmark's adapter, `extract_all`, the params' hash seed and
    check timeout."""
    from stepcode.evals import extract_all, get_benchmark
    from stepcode.evals.benchmark import SCORE

    bench = get_benchmark(benchmark_name)
    bench.require(SCORE)
    bench.check_task(task)
    if not isinstance(generations, Mapping):
        raise ValueError("generations must be a JSON object {\"sample_<k>\": [prediction, ...]}")
    generations = extract_all(benchmark_name, task, generations, extract)
    return score(bench.scoring_adapter(task), problems, generations, skip_rule=skip_rule, samples=samples,
                 params=params, hash_seed=params.evaluate.hash_seed, timeout=params.evaluate.check_timeout_s,
                 progress=progress)
