"""StepCode rewards: per-anchor step rewards and the execution-checked final reward.

    from stepcode.training.rewards import RewardScorer, step_rewards
    step_rewards(["y: 2", "return_val: 3"], ["y: 2", "return_val: 2"])       # [1.0, 0.0]
    with RewardScorer(params) as scorer:                                   # one long-lived sandbox
        scores = scorer.score(rows, texts)                                 # one Score per (RL row, completion text)
        scores[0].steps, scores[0].final, scores[0].logged                 # r_i, r_final, (#correct/n) + r_final

Rules (the paper's, plus what keeps RL from gaming them):
- Step reward r_i = 1 if the i-th predicted <print> equals the i-th reference line after strip, else 0; a missing
  print scores 0; extra prints are ignored. There is one r_i per *reference* line, so n never depends on how many
  prints the model writes (in the input task it is the length of the committed input's trace, so rollouts of one
  prompt can differ in n: stepcode.training.advantages masks each to its own anchors).
- Final reward, output task: the check program is `code + "\\nassert GOLD == (\\nANSWER\\n)"`, run in the sandbox under
  the official harnesses' reliability guard (stepcode.sandbox.runners "check"); 1 only if it runs to the end.
- Final reward, input task: `code + "\\nassert f(\\nARGS\\n) == GOLD"` (f = the row's entry point), same runner,
  and only if the <answer> ARGS is the input the completion committed to in <input>: the same argument list once
  both are parsed as `f(\\n...\\n)` (`same_arguments`: whitespace, comments, redundant parentheses, a trailing comma
  and the spelling of a literal do not matter; order, keywords and values do). The step rewards judge the trace of
  the committed input, so this ties the two: no step credit for an easy committed input plus a final reward for
  another answer. It holds whatever `input_reference` is.
- Reference for the input task's step rewards (`input_reference`): "committed" (default) traces the <input> the
  completion committed to, with the same engine that made the ground truth (stepcode.data.traces.trace_one); if that
  input does not trace cleanly (missing, error, too long, nondeterministic ...) every r_i is 0 against the gold trace's
  length. "gold" compares with the trace of the row's original input instead.
- Score 0 without running anything: no <answer>, a blank one, an answer longer than MAX_ANSWER_CHARS, an answer that
  is not exactly one Python expression (output task) / one argument list (input task), an input-task answer that is
  not its committed <input> (or has none), and the echo guard: an output-task answer that names the entry point
  (`f(3)`, `f`) copies the question instead of answering it.

Two deliberate differences from the official harnesses (which splice the prediction in verbatim): the answer must
parse as a single expression and is parenthesised, so `0 or True` and `x) or (True` cannot pass by precedence or
injection; and the echo guard rejects any mention of the entry point, not only the literal `f(INPUT)` string. A
literal answer is unaffected by either. What still passes, as officially: any expression equal to the gold value
(`[1] * 3` for `[1, 1, 1]`), including objects with a custom `__eq__` — the sandbox contains them, not the reward.

Everything but `RewardScorer.score` (the sandbox calls) is a pure function.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass

from stepcode.anchors import AST_LOCK
from stepcode.prompts import parse_completion

# A correct answer is the repr of a traced value, at most trace.max_output_chars (2000 by default) characters; five
# times that leaves room for equivalent spellings and keeps ast.parse away from megabyte-sized junk.
MAX_ANSWER_CHARS = 10_000
INPUT_REFERENCES = ("committed", "gold")
TASKS = ("output", "input")


@dataclass(frozen=True)
class Score:
    """What one completion earned. `steps` has one entry per reference line (its length is n)."""

    steps: tuple[float, ...]
    final: float

    @property
    def n(self) -> int:
        return len(self.steps)

    @property
    def step_accuracy(self) -> float:
        return sum(self.steps) / self.n if self.n else 0.0

    @property
    def logged(self) -> float:
        """The paper's logged scalar: (#correct steps / n) + r_final, in [0, 2]."""
        return self.step_accuracy + self.final


def step_rewards(predicted: Sequence[str], reference: Sequence[str]) -> list[float]:
    """r_i for every reference line: 1.0 if the i-th prediction equals it after strip, else 0.0 (missing -> 0)."""
    return [float(i < len(predicted) and predicted[i].strip() == line.strip()) for i, line in enumerate(reference)]


def _parse_expression(text: str) -> ast.Expression | None:
    """The AST of `text` as one expression, or None (too long, not one expression, or too deep for the parser)."""
    if len(text) > MAX_ANSWER_CHARS:
        return None
    try:
        with AST_LOCK:   # the scorer parses in worker threads (see stepcode.anchors.AST_LOCK)
            return ast.parse(text, mode="eval")
    # MemoryError and RecursionError are how CPython 3.11 refuses deeply nested input; they are not our memory.
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None


def _mentions(tree: ast.AST, name: str) -> bool:
    return any(isinstance(node, ast.Name) and node.id == name for node in ast.walk(tree))


def output_check_program(code: str, gold_output: str, answer: str | None, entry_point: str = "f") -> str | None:
    """The check program of an output-task answer, or None if it scores 0 without running (see the module doc)."""
    if answer is None or not answer.strip():
        return None
    tree = _parse_expression(answer)
    if tree is None or _mentions(tree, entry_point):
        return None
    # Newlines around the answer: a trailing `# comment` in it cannot swallow the closing parenthesis.
    return f"{code}\nassert {gold_output} == (\n{answer}\n)\n"


def input_check_program(code: str, gold_output: str, args: str | None, entry_point: str = "f") -> str | None:
    """The check program of an input-task answer (an argument list), or None if it scores 0 without running."""
    call = entry_point_call(args, entry_point)
    return None if call is None else f"{code}\nassert {call} == (\n{gold_output}\n)\n"


def _call(args: str | None, entry_point: str) -> tuple[str, ast.Call] | None:
    """(`f(\nARGS\n)`, its AST) if ARGS is exactly one argument list, else None."""
    if args is None or not args.strip():
        return None
    call = f"{entry_point}(\n{args}\n)"
    tree = _parse_expression(call)
    # Must be exactly one call of the entry point: `1), (2` would otherwise make `f(1), (2) == GOLD`, a truthy tuple.
    if tree is None or not (isinstance(tree.body, ast.Call) and isinstance(tree.body.func, ast.Name)
                            and tree.body.func.id == entry_point):
        return None
    return call, tree.body


def entry_point_call(args: str | None, entry_point: str = "f") -> str | None:
    """`f(\nARGS\n)` if ARGS is exactly one argument list, else None."""
    parsed = _call(args, entry_point)
    return None if parsed is None else parsed[0]


def same_arguments(answer: str | None, committed: str | None, entry_point: str = "f") -> bool:
    """True if both are exactly one argument list and the same one once parsed (`1,2` == `1, 2  # x` == `(1), 2,`;
    `1, 2` != `2, 1` != `x=1, y=2`; `f(1, 2)` is the single argument `f(1, 2)`, as in the check and the trace)."""
    a, b = _call(answer, entry_point), _call(committed, entry_point)
    if a is None or b is None:
        return False
    try:    # ast.dump leaves out positions, so only the parsed structure and the literal values are compared
        return ast.dump(a[1]) == ast.dump(b[1])
    except RecursionError:   # parsed, but too deep to walk here: scores 0, like an answer too deep to parse
        return False


def check_program(row: dict, answer: str | None, committed: str | None = None) -> str | None:
    """The check program for `answer` to RL row `row` (either task), or None when it scores 0 statically.

    committed: the completion's <input> (input task: `answer` must be the same argument list, see the module doc).
    """
    task = row["task"]
    entry_point = row.get("entry_point", "f")
    if task == "output":
        return output_check_program(row["code"], row["gold_output"], answer, entry_point)
    if task == "input":
        if not same_arguments(answer, committed, entry_point):
            return None
        return input_check_program(row["code"], row["gold_output"], answer, entry_point)
    raise ValueError(f"row {row.get('id')!r}: task must be one of {TASKS}, got {task!r}")


def _check_row(row: dict) -> None:
    missing = [k for k in ("task", "code", "gold_output", "gold_trace") if k not in row]
    if missing:
        raise ValueError(f"RL row {row.get('id')!r} lacks {missing}")
    if row["task"] not in TASKS:
        raise ValueError(f"RL row {row.get('id')!r}: task must be one of {TASKS}, got {row['task']!r}")
    if not isinstance(row["gold_trace"], list) or not all(isinstance(x, str) for x in row["gold_trace"]):
        raise ValueError(f"RL row {row.get('id')!r}: gold_trace must be a list of str")


class RewardScorer:
    """Scores completions of RL rows; owns one sandbox (start-up ~0.3 s) for its whole life. Close it, or use `with`.

    params: the full `stepcode.config.Params` (sandbox limits, trace limits for re-tracing committed inputs).
    input_reference: "committed" or "gold" (see the module doc). workers: sandbox slots (None: params / all cores).
    """

    def __init__(self, params=None, *, input_reference: str = "committed", workers: int | None = None):
        from stepcode.config import Params
        from stepcode.sandbox.engine import Sandbox

        if input_reference not in INPUT_REFERENCES:
            raise ValueError(f"input_reference must be one of {INPUT_REFERENCES}, got {input_reference!r}")
        self.params = params if params is not None else Params()
        self.input_reference = input_reference
        # Both trace seeds, because re-tracing a committed input uses the ground-truth engine and its determinism check.
        self.sandbox = Sandbox(self.params.sandbox, hash_seeds=self.params.trace.hash_seeds, workers=workers)

    def score(self, rows: Sequence[dict], texts: Sequence[str]) -> list[Score]:
        """One Score per (row, completion text), in order. Never raises on a text; raises on a malformed row."""
        if len(rows) != len(texts):
            raise ValueError(f"{len(rows)} rows but {len(texts)} completions")
        for row in rows:
            _check_row(row)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"completion {i} is {type(text).__name__}, not str")
        jobs = list(zip(rows, texts))
        return list(self.sandbox.map(lambda job: self._score_one(*job), jobs))

    def _score_one(self, row: dict, text: str) -> Score:
        parsed = parse_completion(text, task=row["task"])
        program = check_program(row, parsed.answer, parsed.input)
        final = 0.0
        if program is not None:
            verdict = self.sandbox.run("check", {"program": program})
            final = float(verdict["status"] == "passed")
        reference = self._reference(row, parsed.input)
        steps = step_rewards(parsed.prints, reference) if reference is not None else [0.0] * len(row["gold_trace"])
        return Score(steps=tuple(steps), final=final)

    def _reference(self, row: dict, committed: str | None) -> list[str] | None:
        """The lines the prints are judged against; None when the committed input does not trace cleanly."""
        if row["task"] == "output" or self.input_reference == "gold":
            return row["gold_trace"]
        if entry_point_call(committed, row.get("entry_point", "f")) is None:
            return None
        from stepcode.data.traces import trace_one

        program = {"id": row.get("id"), "code": row["code"], "input": committed,
                   "entry_point": row.get("entry_point", "f")}
        traced = trace_one(self.sandbox, program, self.params)
        return traced["trace"] if traced["status"] == "ok" else None

    def close(self) -> None:
        self.sandbox.close()

    def __enter__(self) -> "RewardScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

