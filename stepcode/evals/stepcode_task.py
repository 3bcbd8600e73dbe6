"""StepCode's own instrumented task on the benchmark programs: final-answer pass@1 beside step accuracy.

    from stepcode.evals import stepcode_task as st
    from stepcode.evals.cruxeval import CRUXEVAL
    rows = [CRUXEVAL.stepcode_program(p, "input") for p in problems]     # {id, code, input, entry_point, gold_output}
    items, excluded = st.build_items(rows, params)        # instrument + trace (sandbox); only status "ok" rows kept
    messages = st.messages(items[0], "input")             # stepcode.prompts.input_messages on the anchored code
    scores = st.score(items, [[text, ...], ...], "input", params)   # per item, one training Score per completion
    st.step_accuracy(["x: 1", "return_val: 2"], ["x: 1", "return_val: 3"])     # 0.5

Each benchmark program (a row of `Benchmark.stepcode_program`: CRUXEval's with entry point `f`, LiveCodeBench's
with its own function name and keyword arguments) is instrumented by `stepcode.anchors.instrument`; the gold anchor
lines come from running it (`stepcode.data.traces.trace_rows`, two hash seeds; rows whose trace is not "ok" —
unsupported, too long, nondeterministic — are left out and counted). The model sees the anchored code and writes
<print> lines and an <answer> (the input task first commits to an <input>); `stepcode.prompts.parse_completion`
reads them.

A completion is judged exactly as the training reward judges it (`stepcode.training.rewards.RewardScorer`), so the
numbers measure what RL optimises:
- output task: pass@1 on the final <answer> alone, by execution in the sandbox: `assert <gold output> == (<answer>)`
  after the ORIGINAL code. A missing or blank answer, one that is not a single expression, or one that names the
  entry point (the echo guard, stricter than CRUXEval's `f(<input>)` substring) is False without running anything.
- input task: `assert f(<answer>) == <gold output>` (CRUXEval-I's check, f = the entry point), and only when the
  <answer> is the argument list the completion committed to in <input>.
- step accuracy = share of reference anchor lines that the model printed exactly (after strip), position by
  position (`stepcode.training.rewards.step_rewards`): the gold trace for the output task; for the input task the
  trace of the committed input (0 against the gold trace's length when it does not trace cleanly). Missing prints
  count 0, extra prints are ignored. Reported as the share over all reference lines of all completions.
The official CRUXEval / LiveCodeBench numbers come from `--prompt official`.
"""

from __future__ import annotations

from collections.abc import Sequence

STOP = "</answer>"


def step_accuracy(gold: Sequence[str], predicted: Sequence[str]) -> float:
    """Share of gold lines matched by the prediction at the same position (both stripped)."""
    from stepcode.training.rewards import step_rewards

    if not gold:
        raise ValueError("step_accuracy: the gold trace is empty (every traced program prints return_val)")
    return sum(step_rewards(predicted, gold)) / len(gold)


def build_items(programs: Sequence[dict], params) -> tuple[list[dict], int]:
    """Trace rows (program row + instrumented_code, trace, output) for the programs whose trace is "ok", and the
    number left out. A program row is {id, code, input, entry_point, gold_output} (`Benchmark.stepcode_program`)."""
    from stepcode.data.traces import trace_rows

    rows = [{k: p[k] for k in ("id", "code", "input", "entry_point", "gold_output")} for p in programs]
    traced = list(trace_rows(rows, params))
    items = [r for r in traced if r["status"] == "ok"]
    return items, len(traced) - len(items)


def messages(item: dict, task: str = "output") -> list[dict]:
    """The chat messages of the instrumented task for one traced item."""
    from stepcode.prompts import input_messages, output_messages

    entry_point = item.get("entry_point", "f")
    if task == "output":
        return output_messages(item["instrumented_code"], item["input"], entry_point)
    if task == "input":
        return input_messages(item["instrumented_code"], item["gold_output"], entry_point)
    raise ValueError(f"the stepcode task is output or input, got {task!r}")


def rl_row(item: dict, task: str) -> dict:
    """The traced item as an RL row, the shape `RewardScorer` scores."""
    return {"id": item["id"], "task": task, "code": item["code"], "input": item["input"],
            "entry_point": item.get("entry_point", "f"), "gold_output": item["gold_output"],
            "gold_trace": list(item["trace"])}


def score(items: Sequence[dict], texts: Sequence[Sequence[str]], task: str, params, *, scorer=None) -> list[list]:
    """One `rewards.Score` per completion, grouped per item (`texts[i]` are item i's completions)."""
    from stepcode.training.rewards import RewardScorer

    if len(items) != len(texts):
        raise ValueError(f"{len(items)} items but {len(texts)} lists of completions")
    rows = [rl_row(it, task) for it, group in zip(items, texts) for _ in group]
    flat_texts = [t for group in texts for t in group]
    own = scorer is None
    scorer = scorer or RewardScorer(params)
    try:
        flat = scorer.score(rows, flat_texts)
    finally:
        if own:
            scorer.close()
    out, i = [], 0
    for group in texts:
        out.append(flat[i:i + len(group)])
        i += len(group)
    return out
