"""StepCode's own instrumented task on the benchmark programs: final-answer pass@1 beside step accuracy.

    from stepcode.evals import stepcode_task as st
    from stepcode.evals.cruxeval import CRUXEVAL
    rows = [CRUXEVAL.stepcode_program(p, "output") for p in problems]    # {id, code, input, entry_point, gold_output}
    items, excluded = st.build_items(rows, params)        # instrument + trace (sandbox); only status "ok" rows kept
    messages = st.messages(items[0])                      # stepcode.prompts.output_messages on the anchored code
    program, steps = st.judge(items[0], model_text)       # check program (or None) and step accuracy, pure
    st.step_accuracy(["x: 1", "return_val: 2"], ["x: 1", "return_val: 3"])     # 0.5

Each benchmark program (a row of `Benchmark.stepcode_program`: today CRUXEval-O's, entry point `f`) is instrumented
by `stepcode.anchors.instrument`; the gold anchor lines come from running it (`stepcode.data.traces.trace_rows`, two
hash seeds; rows whose trace is not "ok" — unsupported, too long, nondeterministic — are left out and counted). The
model sees the anchored code and writes <print> lines and an <answer>; `stepcode.prompts.parse_completion` reads them.

- pass@1 is judged on the final <answer> alone, by execution in the sandbox, with the SAME check as the training
  reward (`stepcode.training.rewards.output_check_program`): `assert <gold output> == (<answer>)` after the
  ORIGINAL code.
  A missing or blank answer, one that is not a single expression, or one that names `f` (the echo guard, stricter
  than CRUXEval's `f(<input>)` substring) is False without running anything. So the number measures what RL
  optimises; the official CRUXEval-O number comes from `--prompt official`.
- step accuracy = share of gold anchor lines that the model printed exactly (after strip), position by position:
  the i-th <print> against the i-th gold line (`stepcode.training.rewards.step_rewards`); missing prints count 0, extra
  prints are ignored.
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


def messages(item: dict) -> list[dict]:
    from stepcode.prompts import output_messages

    return output_messages(item["instrumented_code"], item["input"], item.get("entry_point", "f"))


def judge(item: dict, text: str) -> tuple[str | None, float]:
    """(check program for the final answer, or None when it fails without running; step accuracy)."""
    from stepcode.prompts import parse_completion
    from stepcode.training.rewards import output_check_program

    parsed = parse_completion(text, task="output")
    steps = step_accuracy(item["trace"], parsed.prints)
    return output_check_program(item["code"], item["gold_output"], parsed.answer, item.get("entry_point", "f")), steps
