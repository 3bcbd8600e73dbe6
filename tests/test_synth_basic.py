"""The basic program distribution (stepcode/data/synth_basic.py): deterministic, well-formed, small, and traceable."""

import ast
from itertools import islice
from pathlib import Path

import pytest

from stepcode.anchors import instrument
from stepcode.config import load_params
from stepcode.data.synth_basic import basic_candidates, one_program

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def params():
    return load_params(ROOT / "params.yaml")


def test_same_seed_same_rows_and_different_seeds_differ():
    a = list(islice(basic_candidates(3), 50))
    assert a == list(islice(basic_candidates(3), 50))
    assert [r["code"] for r in a] != [r["code"] for r in islice(basic_candidates(4), 50)]
    assert [r["id"] for r in a[:2]] == ["basic-3-0", "basic-3-1"]
    assert {r["source"] for r in a} == {"synth-basic"} and {r["entry_point"] for r in a} == {"f"}


def test_seed_must_be_an_int():
    with pytest.raises(TypeError, match="seed must be an int"):
        next(basic_candidates("1"))


def test_programs_are_straight_line_with_fresh_names_and_a_final_return():
    import random

    for k in range(300):
        code, args = one_program(random.Random(k))
        fn = ast.parse(code).body[0]
        assert isinstance(fn, ast.FunctionDef) and fn.name == "f"
        assert isinstance(fn.body[-1], ast.Return)
        assert not any(isinstance(n, (ast.For, ast.While, ast.FunctionDef)) for n in ast.walk(fn) if n is not fn)
        bound = [t.id for n in ast.walk(fn) if isinstance(n, ast.Assign) for t in n.targets]
        # every assignment binds a new name, except the two branches of an if/else, which bind the same one
        branches = [n for n in fn.body if isinstance(n, ast.If)]
        assert len(bound) - len(set(bound)) == len(branches) <= 1
        assert 2 <= len(set(bound)) <= 4
        ast.literal_eval(f"({args},)")                    # the input is a literal argument list
        assert instrument(code).status == "ok"


def test_traced_programs_are_ok_and_short(params):
    from stepcode.data.traces import trace_rows

    rows = list(islice(basic_candidates(0), 200))
    traced = list(trace_rows(rows, params, workers=2))
    ok = [r for r in traced if r["status"] == "ok"]
    assert len(ok) >= 195                                    # a few index an emptied list: runtime_error, recorded
    assert all(r["reason"] for r in traced if r["status"] != "ok")
    assert all(3 <= len(r["trace"]) <= 5 for r in ok)        # 2-4 steps + return_val
    assert max(len(line) for r in ok for line in r["trace"]) <= 40
