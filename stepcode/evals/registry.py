"""The benchmark registry: name -> Benchmark (stepcode/evals/benchmark.py). Adding a benchmark is one module that
defines its Benchmark, plus one line in BUILTIN below (docs/adding-a-benchmark.md).

    from stepcode.evals.registry import BENCHMARKS, REGISTRY, get, names
    get("lcb").tasks                        # ("output",); an unknown name is a ValueError listing the known ones
    BENCHMARKS                              # {"cruxeval": ("output", "input"), "lcb": ("output",), "reval": (...)}
    names("generate")                       # ("cruxeval", "lcb"): what `stepcode evaluate` can run
    decontamination_sources(params.build)   # every benchmark's program files, for the dataset builder

`BENCHMARKS` is a live read-only view (name -> tasks) of REGISTRY, in registration order: the CLI's choices.
`register()` / `unregister()` add and remove benchmarks at run time (a test registers a toy one this way).
Importing this module imports the benchmark modules, which are light (their heavy work loads inside functions).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from stepcode.evals.benchmark import CAPABILITIES, GENERATE, SCORE, Benchmark
from stepcode.evals.cruxeval import CRUXEVAL
from stepcode.evals.livecodebench import LIVECODEBENCH
from stepcode.evals.reval import REVAL

BUILTIN: tuple[Benchmark, ...] = (CRUXEVAL, LIVECODEBENCH, REVAL)
REGISTRY: dict[str, Benchmark] = {}


def register(benchmark: Benchmark) -> Benchmark:
    """Add a benchmark; ValueError if it is not a Benchmark, its name is taken, or it lacks a capability without
    saying what to run instead."""
    if not isinstance(benchmark, Benchmark):
        raise ValueError(f"register() takes a Benchmark instance, got {type(benchmark).__name__}")
    if not benchmark.name or not benchmark.tasks:
        raise ValueError(f"{type(benchmark).__name__}: a benchmark needs a name and at least one task")
    if benchmark.name in REGISTRY:
        raise ValueError(f"a benchmark named {benchmark.name!r} is already registered")
    unknown = set(benchmark.capabilities) - set(CAPABILITIES)
    if unknown:
        raise ValueError(f"{benchmark.name}: unknown capabilities {sorted(unknown)}; expected some of {CAPABILITIES}")
    if set(benchmark.stepcode_tasks) - set(benchmark.tasks):
        raise ValueError(f"{benchmark.name}: stepcode_tasks {benchmark.stepcode_tasks} not among {benchmark.tasks}")
    if GENERATE in benchmark.capabilities and SCORE not in benchmark.capabilities \
            and not benchmark.has_own_evaluation():
        raise ValueError(f"{benchmark.name}: `generate` scores what it generates as `score` does; it needs `score` "
                         "(or its own run_evaluation)")
    if set(CAPABILITIES) - set(benchmark.capabilities) and not benchmark.instead:
        raise ValueError(f"{benchmark.name}: a benchmark without every capability must say what to run instead")
    REGISTRY[benchmark.name] = benchmark
    return benchmark


def unregister(name: str) -> Benchmark:
    return REGISTRY.pop(get(name).name)


def get(name: str) -> Benchmark:
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown benchmark {name!r}; expected one of {sorted(REGISTRY)}") from None


def names(capability: str | None = None) -> tuple[str, ...]:
    """Registered names, in registration order; with a capability, only the benchmarks that have it."""
    return tuple(n for n, b in REGISTRY.items() if capability is None or b.supports(capability))


def decontamination_sources(build) -> dict[str, Path]:
    """{label: program file} of every registered benchmark, from `params.build` (labels must not collide)."""
    sources: dict[str, Path] = {}
    for bench in REGISTRY.values():
        for label, path in bench.decontamination_sources(build).items():
            if label in sources:
                raise ValueError(f"decontamination label {label!r} of {bench.name} is already used")
            sources[label] = Path(path)
    return sources


class _Tasks(Mapping):
    """name -> tasks, read through to REGISTRY (so a benchmark registered later shows up)."""

    def __getitem__(self, name: str) -> tuple[str, ...]:
        return REGISTRY[name].tasks

    def __iter__(self) -> Iterator[str]:
        return iter(list(REGISTRY))

    def __len__(self) -> int:
        return len(REGISTRY)

    def __repr__(self) -> str:
        return repr(dict(self))


BENCHMARKS: Mapping[str, tuple[str, ...]] = _Tasks()

for _benchmark in BUILTIN:
    register(_benchmark)
