"""Execution reasoning paths (stepcode/data/reasoning.py + the "reasoning" sandbox runner): hand-written expected text
for small programs of each kind, the invariant on real traced rows, fallback counting, and containment."""

from __future__ import annotations

import ast
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from stepcode.config import parse_params
from stepcode.data.reasoning import compose, execution_paths, open_sandbox, paths_batch, payload
from stepcode.data.traces import trace_batch
from stepcode.jsonl import read_table, write_jsonl
from stepcode.prompts import parse_completion, path_reasoning, render_output_completion
from stepcode.sandbox.engine import Sandbox

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT / "data" / "traces"
PARAMS = parse_params({})


@pytest.fixture(scope="module")
def sandboxes():
    with Sandbox(PARAMS.sandbox, hash_seeds=PARAMS.trace.hash_seeds, workers=1) as tracer, \
            open_sandbox(PARAMS, workers=1) as reasoner:
        yield tracer, reasoner


def traced(sandboxes, code: str, input: str, entry_point: str = "f") -> dict:
    row = trace_batch(sandboxes[0], [{"id": "t", "code": code, "input": input, "entry_point": entry_point}], PARAMS)[0]
    assert row["status"] == "ok", row["reason"]
    return row


def path(sandboxes, code: str, input: str, entry_point: str = "f") -> tuple[list, Counter, dict]:
    row = traced(sandboxes, code, input, entry_point)
    (steps, fallbacks), = paths_batch(sandboxes[1], [row], PARAMS)
    return steps, fallbacks, row


# ------------------------------------------------------------------------------------------ each kind, by hand

STRAIGHT = "def f(x):\n    y = x * 2 + 1\n    z = y - x\n    return z\n"
BRANCH = "def f(x):\n    if x > 2:\n        y = x - 2\n    elif x > 0:\n        y = x\n    else:\n        y = 0\n    return y\n"
LOOP = "def f(xs):\n    total = 0\n    for x in xs:\n        total += x\n    return total\n"
WHILE = "def f(n):\n    i = 0\n    while i * i < n:\n        i += 1\n    return i\n"
BREAK = "def f(xs):\n    found = -1\n    for x in xs:\n        if x < 0:\n            found = x\n            break\n" \
        "    return found\n"
HELPER = "def sq(a):\n    return a * a\n\ndef f(x):\n    y = sq(x) + 1\n    return y\n"
MUTATE = "def f(xs, v):\n    xs.append(v * 2)\n    return len(xs)\n"
POP = "def f(d, k):\n    x = d.pop(k)\n    return x + len(d)\n"


def test_straight_line(sandboxes):
    steps, fallbacks, _ = path(sandboxes, STRAIGHT, "3")
    assert steps == ["y = x * 2 + 1 = 3 * 2 + 1 = 6 + 1 = 7.",
                     "z = y - x = 7 - 3 = 4.",
                     "return_val = z = 4."]
    assert not fallbacks


@pytest.mark.parametrize("input, first", [
    ("5", "Check x > 2: 5 > 2 → True, so the if branch runs. y = x - 2 = 5 - 2 = 3."),
    ("1", "Check x > 2: 1 > 2 → False, so the next elif is checked. "
          "Check x > 0: 1 > 0 → True, so the elif branch runs. y = x = 1."),
    ("-4", "Check x > 2: -4 > 2 → False, so the next elif is checked. "
           "Check x > 0: -4 > 0 → False, so the else branch runs. y = 0."),
])
def test_branch(sandboxes, input, first):
    steps, fallbacks, row = path(sandboxes, BRANCH, input)
    assert steps[0] == first
    assert steps[1] == f"return_val = y = {row['trace'][1].split(': ')[1]}."
    assert not fallbacks


def test_loop_summary_up_to_the_post_loop_anchor(sandboxes):
    steps, fallbacks, _ = path(sandboxes, LOOP, "[1, 2, 3]")
    assert steps == ["total = 0.",
                     "The loop for x in xs runs 3 times: x = 1, total = 1; x = 2, total = 3; x = 3, total = 6. "
                     "After the loop, total = 6.",
                     "return_val = total = 6."]
    assert not fallbacks


def test_long_loop_lists_first_and_last_iterations(sandboxes):
    steps, _, _ = path(sandboxes, LOOP, "list(range(10))")
    assert steps[1] == ("The loop for x in xs runs 10 times: x = 0, total = 0; x = 1, total = 1; x = 2, total = 3; "
                        "...; x = 8, total = 36; x = 9, total = 45. After the loop, total = 45.")


def test_empty_loop_and_while_loop_exit_test(sandboxes):
    steps, _, _ = path(sandboxes, LOOP, "[]")
    assert steps[1] == "The loop for x in xs runs 0 times. After the loop, total = 0."
    steps, fallbacks, _ = path(sandboxes, WHILE, "5")
    assert steps == ["i = 0.",
                     "The loop while i * i < n runs 3 times: i = 1; i = 2; i = 3. "
                     "Then i * i < n: 3 * 3 < 5 → 9 < 5 → False, so the loop ends. After the loop, i = 3.",
                     "return_val = i = 3."]
    assert not fallbacks


def test_loop_left_by_break(sandboxes):
    steps, fallbacks, _ = path(sandboxes, BREAK, "[4, -2, 7]")
    assert steps == ["found = -1.",
                     "The loop for x in xs breaks in iteration 2: x = 4, found = -1; x = -2, found = -2. "
                     "After the loop, found = -2.",
                     "return_val = found = -2."]
    assert not fallbacks


def test_helper_call(sandboxes):
    steps, fallbacks, row = path(sandboxes, HELPER, "3")
    assert row["trace"] == ["return_val: 9", "y: 10", "return_val: 10"]
    assert steps == ["Call sq(3). return_val = a * a = 3 * 3 = 9.",
                     "sq(3) returns 9. y = sq(x) + 1 = sq(3) + 1 = 9 + 1 = 10.",
                     "return_val = y = 10."]
    assert not fallbacks


def test_mutating_method_calls(sandboxes):
    steps, fallbacks, _ = path(sandboxes, MUTATE, "[1], 4")
    assert steps == ["xs.append(8), so xs = [1, 8].", "return_val = len(xs) = len([1, 8]) = 2."]
    assert not fallbacks
    # the update anchor of `d` comes first, then `x`: the call is never re-run, its value is the printed one
    steps, fallbacks, row = path(sandboxes, POP, "{'a': 1, 'b': 2}, 'a'")
    assert row["trace"] == ["d: {'b': 2}", "x: 1", "return_val: 2"]
    assert steps == ["x = d.pop(k) = d.pop('a'), so d = {'b': 2}.", "x = 1.",
                     "return_val = x + len(d) = 1 + len({'b': 2}) = 1 + 1 = 2."]
    assert not fallbacks


def test_values_are_never_re_run_through_program_calls(sandboxes):
    """A helper with a side effect on a global: the caller's chain uses the result the run returned, and the global
    read after the call is not substituted from a stale snapshot."""
    code = ("N = [0]\n\ndef bump(a):\n    N[0] += a\n    return N[0]\n\n"
            "def f(x):\n    y = bump(x) + N[0]\n    return y\n")
    steps, fallbacks, row = path(sandboxes, code, "2")
    assert row["trace"][-2:] == ["y: 4", "return_val: 4"]
    assert steps[-2] == "bump(2) returns 2. y = bump(x) + N[0] = bump(2) + N[0] = 2 + N[0] = 4."


# ------------------------------------------------------------------------------------------ fallbacks, counted

def test_trace_mismatch_falls_back_for_the_whole_row(sandboxes):
    row = traced(sandboxes, STRAIGHT, "3")
    forged = dict(row, trace=["y: 8", *row["trace"][1:]])
    (steps, fallbacks), = paths_batch(sandboxes[1], [forged], PARAMS)
    assert steps == [None, None, None]
    assert fallbacks == Counter({"trace_mismatch": 3})
    target = render_output_completion(forged["trace"], forged["output"], reasoning=path_reasoning(steps))
    assert "<reasoning>Step 1 of 3: compute y.</reasoning>" in target


def test_opaque_value_falls_back_for_that_anchor_only(sandboxes):
    code = "from fractions import Fraction\n\ndef f(x):\n    h = Fraction(x, 2)\n    y = x + 1\n    return y\n"
    steps, fallbacks, row = path(sandboxes, code, "1")
    assert row["trace"] == ["h: 1/2", "y: 2", "return_val: 2"]
    assert steps == [None, "y = x + 1 = 1 + 1 = 2.", "return_val = y = 2."]
    assert fallbacks == Counter({"opaque_value": 1})


def test_a_program_that_stops_the_tracer_is_unexplained_not_wrong(sandboxes):
    code = "import sys\n\ndef f(x):\n    sys.settrace(None)\n    y = x + 1\n    return y\n"
    steps, fallbacks, row = path(sandboxes, code, "1")
    assert steps == [None, None]
    assert fallbacks == Counter({"unexplained": 2})


def test_compose_refuses_malformed_reports():
    row = {"id": "r", "trace": ["y: 1"]}
    assert compose(row, "junk") == ([None], Counter({"malformed_report": 1}))
    assert compose(row, {"status": "ok", "trace": ["y: 1"], "facts": [{"k": "anchor"}]}) == \
        ([None], Counter({"malformed_report": 1}))
    assert compose(row, {"status": "timeout", "trace": []}) == ([None], Counter({"run/timeout": 1}))


# ------------------------------------------------------------------------------------------ containment

@pytest.mark.parametrize("code, statuses", [
    ("def f(x):\n    while True:\n        pass\n", {"timeout"}),
    ("def f(x):\n    y = [0] * (10**10)\n    return len(y)\n", {"memory"}),
    ("def f(x):\n    l = []\n    while True:\n        l.append('x' * 10**6)\n", {"memory", "timeout"}),
    ("import os\ndef f(x):\n    os._exit(0)\n", {"killed"}),
])
def test_hostile_programs_are_contained(code, statuses):
    params = PARAMS.model_copy(update={"sandbox": PARAMS.sandbox.model_copy(update={"timeout_s": 0.5, "cpu_s": 1})})
    row = {"id": "h", "code": code, "input": "1", "entry_point": "f", "instrumented_code": code, "trace": ["y: 1"]}
    with open_sandbox(params, workers=1) as sb:
        with sb.slot() as slot:
            report = slot.run("reasoning", payload(row, params))
        assert report["status"] in statuses, report
        assert compose(row, report) == ([None], Counter({f"run/{report['status']}": 1}))
        with sb.slot() as slot:    # the server survives for the next program
            assert slot.run("reasoning", payload(dict(row, instrumented_code=STRAIGHT), params))["status"] == "ok"


# ------------------------------------------------------------------------------------------ real rows

def _stated_value(text: str, label: str) -> str:
    assert text.endswith(".") and " = " in text
    return text[:-1].rsplit(" = ", 1)[1]


@pytest.mark.skipif(not TRACES.is_dir(), reason="data/traces not pulled")
def test_every_value_stated_for_an_anchor_is_its_printed_value():
    rows = [r for r in read_table(TRACES) if r["status"] == "ok"]
    rows = random.Random(14).sample(rows, min(300, len(rows)))
    paths, stats = execution_paths(rows, PARAMS, workers=2)
    assert stats["rows"] == len(rows) and stats["anchors"] == sum(len(r["trace"]) for r in rows)
    assert stats["explained"] >= 0.95 * stats["anchors"], stats
    checked = 0
    for row in rows:
        steps = paths[row["id"]]
        assert len(steps) == len(row["trace"])
        for text, line in zip(steps, row["trace"]):
            if text is None:
                continue
            label, _, printed = line.partition(": ")
            stated = _stated_value(text, label)
            try:
                value = ast.literal_eval(stated)
            except (ValueError, SyntaxError):
                continue
            checked += 1
            same = format(value, "") == printed
            if not same and isinstance(value, (set, frozenset, dict)):
                same = ast.literal_eval(printed) == value
            assert same, (row["id"], text, line)
            assert f"{label} = " in text or f"{label}: " in text, (row["id"], text)
        target = render_output_completion(row["trace"], row["output"], reasoning=path_reasoning(steps))
        assert parse_completion(target, task="output").prints == [line.strip() for line in row["trace"]]
    assert checked >= 0.9 * stats["explained"]


def test_build_with_execution_reasoning(tmp_path):
    from stepcode.data.dataset import build_dataset

    code = "def f(x):\n    y = x + 1\n    return y"
    shown = "def f(x):\n    y = x + 1\n    print(f'y: {y}')\n    return_val = y\n    print(f'return_val: {return_val}')\n" \
            "    return return_val"
    row = {"id": "p1", "code": code, "input": "1", "entry_point": "f", "source": "hand", "instrumented_code": shown,
           "trace": ["y: 2", "return_val: 2"], "output": "2", "status": "ok", "reason": None}
    write_jsonl(tmp_path / "traces.jsonl", [row])
    params = parse_params({"build": {"reasoning": "execution", "heldout_fraction": 0.0}})
    stats = build_dataset(tmp_path / "traces.jsonl", tmp_path / "out", params, benchmarks={})
    assert stats["reasoning"] == {"rows": 1, "anchors": 2, "explained": 2, "rows_with_fallback": 0, "fallback": {}}
    sft = [json.loads(line) for line in (tmp_path / "out/sft.jsonl").read_text().splitlines()]
    assert sft[0]["completion"][0]["content"] == (
        "<reasoning>y = x + 1 = 1 + 1 = 2.</reasoning>\n<print>y: 2</print>\n"
        "<reasoning>return_val = y = 2.</reasoning>\n<print>return_val: 2</print>\n"
        "<reasoning>So the function returns this value.</reasoning>\n<answer>2</answer>")
    assert "<reasoning>y = x + 1 = 1 + 1 = 2.</reasoning>" in sft[1]["completion"][0]["content"]   # input task


def test_reasoning_by_source_overrides_the_style_of_that_source_only(tmp_path):
    from stepcode.data.dataset import build_dataset

    code = "def f(x):\n    y = x + 1\n    return y"
    shown = "def f(x):\n    y = x + 1\n    print(f'y: {y}')\n    return_val = y\n    print(f'return_val: {return_val}')\n" \
            "    return return_val"
    rows = [{"id": pid, "code": code, "input": "1", "entry_point": "f", "source": source, "instrumented_code": shown,
             "trace": ["y: 2", "return_val: 2"], "output": "2", "status": "ok", "reason": None}
            for pid, source in (("p1", "hand"), ("p2", "synth-logic"))]
    write_jsonl(tmp_path / "traces.jsonl", rows)
    params = parse_params({"build": {"reasoning": "execution", "reasoning_by_source": {"synth-logic": "none"},
                                     "heldout_fraction": 0.0, "input_task": False}})
    stats = build_dataset(tmp_path / "traces.jsonl", tmp_path / "out", params, benchmarks={})
    assert stats["reasoning"]["rows"] == 1            # only the narrated source's row ran for a reasoning path
    sft = {r["id"]: r["completion"][0]["content"]
           for r in map(json.loads, (tmp_path / "out/sft.jsonl").read_text().splitlines())}
    assert sft["p1"].startswith("<reasoning>y = x + 1 = 1 + 1 = 2.</reasoning>")
    assert sft["p2"].startswith("<reasoning></reasoning>\n<print>y: 2</print>")
    with pytest.raises(ValueError, match="reasoning_by_source"):
        parse_params({"build": {"reasoning_by_source": {"synth-logic": "poetry"}}})
