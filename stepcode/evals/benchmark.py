"""The benchmark interface: everything the evaluation package, the CLI and the dataset builder know about one
benchmark, in one object. Each benchmark module (cruxeval.py, livecodebench.py, reval.py) defines a subclass and
one instance; stepcode/evals/registry.py lists them (docs/adding-a-benchmark.md).

    from stepcode.evals.registry import get
    bench = get("cruxeval")
    problems = bench.load_problems(params)                      # from its path in params.evaluate
    [(sample_id, prompt)] = bench.prompts(problems[0], "output", "official", cot=False)
    prompt.messages, prompt.raw                                 # chat messages; the plain completion prompt
    pred = bench.extract(model_text, "output", cot=False)       # the official extraction
    score(bench.scoring_adapter("output"), problems, {sample_id: [pred]})   # stepcode.evals.scoring.score
    bench.official_export(result)                               # the official result file's content
    bench.decontamination_sources(params.build)                 # {"cruxeval": Path(".../cruxeval.jsonl")}

Contracts a subclass keeps:
- `name` is the registry key, the CLI choice and the prefix of metric keys and file names; `tasks` its tasks, in the
  order `stepcode evaluate` runs them. Every method taking a task raises ValueError for a task not in `tasks`.
- `load_problems(params)` reads the path(s) in `params.evaluate` (a missing file: `MissingInput` saying how to get
  it); each problem is a dict with a unique str "id".
- `prompts(problem, task, style)` gives (id, Prompt) pairs: the id the completion is filed under (the official
  "sample_<k>" for CRUXEval and LiveCodeBench: one prompt per problem; REval asks several questions per problem).
  Style "official" is the benchmark's own prompt, byte for byte; style "stepcode" (our instrumented task,
  stepcode_task.py) exists for the tasks in `stepcode_tasks`, and takes a traced item of `stepcode_task.build_items`
  made from `stepcode_program(problem, task)` rows.
- `extract(text, task, cot)` is the official extraction of the prediction from raw model text (prompt removed).
- `scoring_adapter(task)` is the `stepcode.evals.scoring.Adapter` (check program, default skip rule) with which
  official `{"sample_<k>": [prediction, ...]}` files are scored by execution.
- `decontamination_sources(build)` maps a label to each program file (JSONL, a "code" field per row) training data
  must not copy, from `params.build`; the label names the benchmark in the decontamination report.
- `official_export(result)` turns a scoring result into the official result file (default: the four official keys).

Capabilities. A benchmark declares which commands run it: SCORE (`stepcode score` / `score_file` score an official
`{"sample_<k>": [prediction, ...]}` file through `scoring_adapter`, keyed by problem id) and GENERATE (`stepcode
evaluate` generates, extracts and scores the same way, so it needs SCORE and one prompt per problem under the
problem's id — unless the benchmark runs its own protocol in `run_evaluation`, as REval does). A benchmark without
one says what to run instead (`instead`); `require()` raises `Unsupported`, one line, instead of pretending.

This module is light: it imports nothing beyond the standard library and stepcode.errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stepcode.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from stepcode.evals.scoring import Adapter

GENERATE = "generate"        # `stepcode evaluate`: generate completions with a model, extract, score
SCORE = "score"              # `stepcode score` / score_file: an official generations file, scored by execution
CAPABILITIES = (GENERATE, SCORE)
STYLES = ("official", "stepcode")
COMMANDS = {GENERATE: "stepcode evaluate", SCORE: "stepcode score"}


class Unsupported(UserError, ValueError):
    """A command asked a benchmark for something it does not do (yet); the message says what to run instead."""


@dataclass(frozen=True)
class Prompt:
    messages: list[dict]      # for a tokenizer with a chat template
    raw: str                  # for one without: the plain completion prompt


class Benchmark:
    """One benchmark. Subclasses set the class attributes and implement the five methods marked "implement"."""

    name: str = ""
    title: str = ""                                   # how messages name it: "CRUXEval"
    tasks: tuple[str, ...] = ()
    stepcode_tasks: tuple[str, ...] = ()              # tasks with the "stepcode" prompt style
    capabilities: frozenset[str] = frozenset(CAPABILITIES)
    instead: str = ""                                 # one line: what to run for a capability it lacks

    # --- implement ------------------------------------------------------------------------------------------------

    def load_problems(self, params) -> list[dict]:
        raise NotImplementedError

    def official_prompts(self, problem: dict, task: str, cot: bool = False) -> list[tuple[str, Prompt]]:
        """The benchmark's own prompt(s) for one problem (what `prompts(..., "official")` returns)."""
        raise NotImplementedError

    def extract(self, text: str, task: str, cot: bool = False) -> str:
        raise NotImplementedError

    def scoring_adapter(self, task: str) -> Adapter:
        raise NotImplementedError

    def decontamination_sources(self, build) -> dict[str, Path]:
        raise NotImplementedError

    # --- optional -------------------------------------------------------------------------------------------------

    def stepcode_program(self, problem: dict, task: str) -> dict:
        """The program row our instrumented task traces: {id, code, input, entry_point, gold_output}."""
        raise Unsupported(f"{self.title or self.name} has no stepcode prompt style")

    def run_evaluation(self, backend, params, runs, out_dir, *, prompt: str, limit: int | None,
                       sandbox) -> dict | None:
        """`stepcode evaluate` for a benchmark with its own protocol (REval: several questions per program, its own
        scorer): generate with `backend` for each Decoding in `runs`, score, write under out_dir, return flat
        metrics. None (the default): the generic per-problem path (prompts, extract, scoring adapter)."""
        return None

    def has_own_evaluation(self) -> bool:
        return type(self).run_evaluation is not Benchmark.run_evaluation

    def official_export(self, result: dict) -> dict:
        """Only the official result keys, in the official order."""
        return {k: result[k] for k in ("raw_generations", "raw_scored_generations", "pass_at_1", "pass_at_5")}

    # --- provided -------------------------------------------------------------------------------------------------

    def check_task(self, task: str) -> None:
        if task not in self.tasks:
            raise ValueError(f"{self.name} has the task(s) {self.tasks}, not {task!r}")

    def prompt_styles(self, task: str) -> tuple[str, ...]:
        self.check_task(task)
        return ("official", "stepcode") if task in self.stepcode_tasks else ("official",)

    def prompts(self, problem: dict, task: str, style: str = "official", *, cot: bool = False) \
            -> list[tuple[str, Prompt]]:
        """(id, Prompt) pairs for one problem (style "stepcode": one traced item; see the module docstring)."""
        if style not in self.prompt_styles(task):
            raise ValueError(f"{self.name}-{task} has the prompt style(s) {self.prompt_styles(task)}, not {style!r}")
        if style == "official":
            return self.official_prompts(problem, task, cot)
        from stepcode.evals.stepcode_task import messages

        chat = messages(problem, task)
        return [(problem["id"], Prompt(chat, "\n\n".join(m["content"] for m in chat)))]

    def supports(self, capability: str) -> bool:
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown capability {capability!r}; expected one of {CAPABILITIES}")
        return capability in self.capabilities

    def require(self, capability: str) -> None:
        """Raise `Unsupported` (one line, naming what to run instead) unless the benchmark has `capability`."""
        if not self.supports(capability):
            raise Unsupported(f"`{COMMANDS[capability]}` does not run {self.title or self.name} yet; {self.instead}")

    def __repr__(self) -> str:
        return f"<benchmark {self.name}: tasks {self.tasks}, capabilities {sorted(self.capabilities)}>"
