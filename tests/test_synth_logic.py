"""The logic program distribution (stepcode/data/synth_logic.py): the answer is a verdict over the steps, not a copy
of the last one, so a right answer with wrong steps is possible; deterministic, traceable and short."""

import ast
import random
from collections import Counter
from itertools import islice
from pathlib import Path

import pytest

from stepcode.anchors import instrument
from stepcode.config import load_params
from stepcode.data.synth import candidates_of
from stepcode.data.synth_logic import logic_candidates, one_program

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def params():
    return load_params(ROOT / "params.yaml")


def test_same_seed_same_rows_and_different_seeds_differ():
    a = list(islice(logic_candidates(3), 50))
    assert a == list(islice(logic_candidates(3), 50)) == list(islice(candidates_of("logic", 3), 50))
    assert [r["code"] for r in a] != [r["code"] for r in islice(logic_candidates(4), 50)]
    assert [r["id"] for r in a[:2]] == ["logic-3-0", "logic-3-1"]
    assert {r["source"] for r in a} == {"synth-logic"} and {r["entry_point"] for r in a} == {"f"}
    with pytest.raises(ValueError, match="unknown synthesizer 'nope'; one of cruxeval, basic, logic"):
        candidates_of("nope", 0)


def test_the_return_is_a_verdict_that_reads_a_step_and_is_never_a_bare_name():
    loops = branches = 0
    for k in range(400):
        code, args = one_program(random.Random(k))
        fn = ast.parse(code).body[0]
        assert isinstance(fn, ast.FunctionDef) and fn.name == "f"
        ret = fn.body[-1]
        assert isinstance(ret, ast.Return) and not isinstance(ret.value, ast.Name)   # not `return d`
        params = {a.arg for a in fn.args.args}
        steps = {t.id for n in ast.walk(fn) if isinstance(n, ast.Assign) for t in n.targets} - params
        read = {n.id for n in ast.walk(ret.value) if isinstance(n, ast.Name)}
        assert read & steps, code                                     # the answer depends on a computed step
        if isinstance(ret.value, ast.Compare) and len(ret.value.ops) == 1 and \
                isinstance(ret.value.left, ast.Name) and isinstance(ret.value.comparators[0], ast.Name):
            assert ret.value.left.id != ret.value.comparators[0].id, code       # no `b > b`
        loops += any(isinstance(n, ast.For) for n in fn.body)
        branches += any(isinstance(n, ast.If) for n in fn.body)
        ast.literal_eval(f"({args},)")
        assert instrument(code).status == "ok"
    assert 0.2 < loops / 400 < 0.45 and 0.15 < branches / 400 < 0.45     # both kinds of control flow, often


def test_traced_answers_have_a_small_range_and_traces_are_short(params):
    from stepcode.data.traces import trace_rows

    rows = list(islice(logic_candidates(0), 300))
    traced = list(trace_rows(rows, params, workers=2))
    ok = [r for r in traced if r["status"] == "ok"]
    assert len(ok) >= 290
    assert all(r["reason"] for r in traced if r["status"] != "ok")
    assert all(3 <= len(r["trace"]) <= 7 for r in ok)                  # 2-4 steps (+ a loop's anchor) + return_val
    assert all(r["trace"][-1].startswith("return_val: ") for r in ok)
    answers = Counter(r["output"] for r in ok)
    # a small answer range: booleans about half the time, the rest small ints; one answer guessed blindly is right
    # for a good share of programs, which is what lets a policy get the answer right with wrong steps
    assert 0.35 < (answers["True"] + answers["False"]) / len(ok) < 0.75
    assert sum(answers[a] for a in ("True", "False", "0", "1", "2", "3", "4")) / len(ok) > 0.85
    # the answer is not the last step's value copied (basic's `return d`): for most programs it differs
    differs = sum(r["output"] != r["trace"][-2].split(": ", 1)[1] for r in ok)
    assert differs / len(ok) > 0.6
