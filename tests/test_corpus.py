"""Program rows, the offline synthesizer, the static filter, diversity stats and the HumanEval importer."""

import ast
import itertools
import json
import re
import signal

import pytest

from stepcode.data.corpus import (
    CorpusError,
    diversity,
    humaneval_inputs,
    import_humaneval,
    read_programs,
    static_filter,
)
from stepcode.data.synth import synth_candidates
from stepcode.jsonl import read_jsonl, write_jsonl

GOOD = {"id": "a", "code": "def f(x):\n    return x\n", "input": "1", "entry_point": "f"}


def _write_lines(path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------- reading and writing

def test_read_programs_returns_rows_and_skips_blank_lines(tmp_path):
    p = tmp_path / "c.jsonl"
    second = {**GOOD, "id": "b", "output": "1", "source": "hand", "extra": [1]}
    _write_lines(p, [json.dumps(GOOD), "", "   ", json.dumps(second)])
    assert read_programs(p) == [GOOD, second]


@pytest.mark.parametrize("bad_line, reason", [
    ('{"id": "x", "code": ', "bad JSON (Expecting value at column 21)"),
    ("[1, 2]", "expected a JSON object, got list"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "code"} | {"id": "x"}), "missing field 'code'"),
    (json.dumps({**GOOD, "id": "x", "code": 3}), "field 'code' must be a string, got int"),
    (json.dumps({**GOOD, "id": "x", "input": ["1"]}), "field 'input' must be a string, got list"),
    (json.dumps({**GOOD, "id": "x", "output": 5}), "field 'output' must be a string, got int"),
    (json.dumps({**GOOD, "id": "  "}), "empty id"),
    (json.dumps(GOOD), "duplicate id 'a' (first on line 1)"),
])
def test_read_programs_names_file_and_line_of_each_malformed_row(tmp_path, bad_line, reason):
    p = tmp_path / "corpus.jsonl"
    _write_lines(p, [json.dumps(GOOD), "", bad_line])  # the blank line still counts: the bad row is line 3
    with pytest.raises(CorpusError) as err:
        read_programs(p)
    assert str(err.value) == f"{p}:3: {reason}"


def test_read_programs_reports_invalid_utf8_with_its_line(tmp_path):
    p = tmp_path / "corpus.jsonl"
    p.write_bytes(json.dumps(GOOD).encode() + b'\n{"id": "\xff"}\n')
    with pytest.raises(CorpusError, match=re.escape(f"{p}:2: not valid UTF-8")):
        read_programs(p)


def test_read_jsonl_yields_objects_then_fails_at_the_bad_line(tmp_path):
    p = tmp_path / "x.jsonl"
    _write_lines(p, ['{"a": 1}', '"just a string"'])
    rows = read_jsonl(p)
    assert next(rows) == {"a": 1}
    with pytest.raises(CorpusError, match=re.escape(f"{p}:2: expected a JSON object, got str")):
        next(rows)


def test_skip_bad_returns_good_rows_and_writes_rejects_with_line_and_reason(tmp_path):
    p, rejects = tmp_path / "c.jsonl", tmp_path / "out" / "rejects.jsonl"
    lines = [json.dumps(GOOD), "not json", json.dumps({**GOOD, "id": "b"}), json.dumps(GOOD)]
    _write_lines(p, lines)
    assert read_programs(p, skip_bad=True, rejects_path=rejects) == [GOOD, {**GOOD, "id": "b"}]
    assert list(read_jsonl(rejects)) == [
        {"line": 2, "reason": "bad JSON (Expecting value at column 1)", "text": "not json"},
        {"line": 4, "reason": "duplicate id 'a' (first on line 1)", "text": lines[3]},
    ]


def test_skip_bad_overwrites_stale_rejects_and_requires_a_rejects_path(tmp_path):
    p, rejects = tmp_path / "c.jsonl", tmp_path / "rejects.jsonl"
    _write_lines(p, [json.dumps(GOOD)])
    rejects.write_text('{"line": 9, "reason": "old", "text": ""}\n')
    assert read_programs(p, skip_bad=True, rejects_path=rejects) == [GOOD]
    assert rejects.read_text() == ""
    with pytest.raises(ValueError, match="rejects_path"):
        read_programs(p, skip_bad=True)


def test_write_jsonl_round_trips_unicode(tmp_path):
    p = tmp_path / "sub" / "rows.jsonl"
    rows = [{**GOOD, "input": "'héllo ✓'"}, {**GOOD, "id": "b"}]
    write_jsonl(p, rows)
    assert "héllo ✓" in p.read_text(encoding="utf-8")
    assert read_programs(p) == rows


def test_write_jsonl_leaves_the_old_file_and_no_temp_file_when_the_writer_fails_midway(tmp_path):
    p = tmp_path / "rows.jsonl"
    write_jsonl(p, [GOOD])
    before = p.read_bytes()

    def rows():
        yield {**GOOD, "id": "new"}
        raise RuntimeError("upstream died")

    with pytest.raises(RuntimeError, match="upstream died"):
        write_jsonl(p, rows())
    with pytest.raises(TypeError):  # a value JSON cannot encode, on the second row
        write_jsonl(p, [{**GOOD, "id": "new"}, {"x": {1, 2}}])
    assert p.read_bytes() == before
    assert sorted(f.name for f in tmp_path.iterdir()) == ["rows.jsonl"]


# ----------------------------------------------------------------------------------------------------- static filter

@pytest.mark.parametrize("change, reason", [
    ({}, None),
    ({"code": "def f(x)\n    return x\n"}, "does not compile"),
    ({"code": "import os\ndef f(x):\n    return x\n"}, "has imports"),
    ({"code": "def f(x):\n    from os import path\n    return x\n"}, "has imports"),
    ({"code": "def f(x):\n    return open(x)\n"}, "calls open()"),
    ({"code": "def f(x):\n    print(x)\n    return x\n"}, "calls print()"),
    ({"code": "def f(x):\n    return eval(x)\n"}, "calls eval()"),
    ({"code": "def f(x):\n    return x.__class__\n"}, "uses dunder attribute __class__"),
    ({"code": "def f(x):\n" + "    x += 1\n" * 30 + "    return x\n"}, "too long: 32 lines > 25"),
    ({"code": "def f(x):\n    return x + " + "1 + " * 40 + "1\n"}, "a line is longer than 120 characters"),
    ({"entry_point": "g"}, "no top-level function 'g'"),
    ({"input": "x"}, "input is not a literal argument list"),
    ({"input": ""}, "input is not a literal argument list"),
    ({"input": "print(1)"}, "input is not a literal argument list"),
    ({"input": "1, 2"}, "input has 2 arguments, f takes 1..1"),
    ({"code": "def f(x, y=2):\n    return x\n", "input": "1, 2"}, None),
    ({"code": 7}, "field 'code' must be a string, got int"),
])
def test_static_filter_keeps_good_rows_and_names_the_reason_otherwise(change, reason):
    got = static_filter({**GOOD, **change})
    assert got == reason if reason is None else got.startswith(reason)


# ----------------------------------------------------------------------------------------------------- synthesizer

def test_synth_is_deterministic_per_seed_and_differs_across_seeds():
    first = list(itertools.islice(synth_candidates(3), 40))
    assert first == list(itertools.islice(synth_candidates(3), 40))
    other = list(itertools.islice(synth_candidates(4), 40))
    assert [r["code"] for r in first] != [r["code"] for r in other]
    assert len({r["code"] for r in first} & {r["code"] for r in other}) <= 2
    assert [r["id"] for r in first[:3]] == ["synth-3-0", "synth-3-1", "synth-3-2"]
    assert all(r["entry_point"] == "f" and r["source"] == "synth" for r in first)
    with pytest.raises(TypeError):
        next(synth_candidates("3"))


class _Timeout(Exception):
    pass


def _run(code: str, args: str):
    """Run a synthesized program in-process, at most 0.5 s (they are ours: no imports, no I/O, by static_filter)."""
    def alarm(*_):
        raise _Timeout

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        namespace = {}
        exec(code, namespace)
        return repr(eval(f"f({args})", namespace))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_synthesized_candidates_are_small_valid_programs_that_run():
    rows = list(itertools.islice(synth_candidates(2024), 300))
    kept = [r for r in rows if static_filter(r) is None]
    assert len(kept) >= 0.97 * len(rows)  # measured: 2,000 of 2,000 on seeds 0 and 1234
    outputs = {}
    for r in kept:
        tree = ast.parse(r["code"])
        compile(tree, r["id"], "exec")
        assert isinstance(ast.literal_eval(f"({r['input']},)"), tuple)
        fn = tree.body[-1]
        assert fn.name == "f" and 3 <= len(ast.unparse(fn).splitlines()) <= 15
        assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
        try:
            outputs[r["id"]] = _run(r["code"], r["input"])
        except Exception:  # noqa: BLE001 - counted below; the trace engine drops such rows
            pass
    assert len(outputs) >= 0.95 * len(kept)  # measured: every one of 2,000 ran without error
    short = [o for o in outputs.values() if len(o) <= 100]
    assert len(short) >= 0.95 * len(outputs)  # small values, short traces
    for r in kept[:60]:  # a second run gives the same value: no hidden state, no randomness
        if r["id"] in outputs:
            assert _run(r["code"], r["input"]) == outputs[r["id"]]


# ----------------------------------------------------------------------------------------------------- diversity

def test_diversity_counts_shapes_operations_and_lines_by_hand():
    rows = [
        {"code": "def f(a):\n    b = a.upper()\n    return b[1:]\n"},
        {"code": "def f(xs):\n    ys = xs.upper()\n    return ys[2:]\n"},  # same shape: only names/constants differ
        {"code": "def f(n):\n    t = 0\n    for i in range(n):\n        t += i\n    return t\n"},
    ]
    d = diversity(rows)
    assert d["programs"] == 3 and d["distinct_shapes"] == 2 and d["distinct_shape_ratio"] == pytest.approx(0.6667)
    assert d["operations"] == {".upper": 2, "slice": 2, "for": 1, "range()": 1, "Add=": 1}
    assert d["distinct_operations"] == 5
    assert d["feature_share"] == {"for": pytest.approx(0.3333)}
    assert d["lines"] == {"min": 3, "mean": 3.67, "max": 5}
    json.dumps(d)  # printable and loggable as is
    with pytest.raises(ValueError):
        diversity([])


def test_synth_diversity_stays_above_measured_floors():
    # Measured on 2,000 candidates of seeds 0, 3 and 1234: 99.7-99.9% distinct shapes, 112 distinct operations,
    # for-loops in ~47% of programs, while ~17%, if ~67%, list comprehensions ~22%, dict comprehensions ~15%,
    # helpers ~15%, 9.2 lines on average. The floors sit well below, so tuning templates does not break the test,
    # while a generator that collapses onto a few shapes or loses a construct does.
    d = diversity(itertools.islice(synth_candidates(0), 2000))
    assert d["programs"] == 2000
    assert d["distinct_shape_ratio"] >= 0.95
    assert d["distinct_operations"] >= 90
    share = d["feature_share"]
    assert share["for"] >= 0.3 and share["while"] >= 0.1 and share["if"] >= 0.5
    assert share["listcomp"] >= 0.15 and share["dictcomp"] >= 0.08 and share["helper_def"] >= 0.08
    assert 3 <= d["lines"]["min"] and d["lines"]["max"] <= 25 and 6 <= d["lines"]["mean"] <= 12


# ----------------------------------------------------------------------------------------------------- HumanEval

def test_humaneval_inputs_keeps_distinct_literal_calls_in_order_and_counts_skipped():
    test = (
        "def check(candidate):\n"
        "    assert candidate([1,2], 3) == 1\n"
        "    assert candidate([1, 2],  3) == 1\n"          # same arguments, other spacing: deduplicated
        "    x = 5\n"
        "    assert candidate(x) == 2\n"                    # a variable of the test: skipped
        "    assert abs(candidate('a', k=-1.5) - 1) < 1e-6\n"
        "    for i in range(3):\n"
        "        assert candidate(*[i]) == i\n"             # starred: skipped
        "    candidate(7)\n"                                # not inside an assert: ignored
    )
    assert humaneval_inputs(test) == (["[1,2], 3", "'a', k=-1.5"], 2)


def test_import_humaneval_count_and_a_hand_checked_row():
    rows = import_humaneval()
    # 164 problems; 32 (find_zero), 38 (decode_cyclic) and 50 (decode_shift) test only through variables.
    assert len(rows) == 1108
    assert len({r["id"].split("#")[0] for r in rows}) == 161
    assert len({r["id"] for r in rows}) == len(rows)
    by_id = {r["id"]: r for r in rows}
    row = by_id["HumanEval/0#1"]  # the test's second assert: candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05)
    assert row["input"] == "[1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05"
    assert row["entry_point"] == "has_close_elements" and row["source"] == "humaneval"
    assert row["code"].startswith("from typing import List\n\n\ndef has_close_elements(")
    assert row["code"].rstrip().endswith("return False")
    assert [k for k in by_id if k.startswith("HumanEval/0#")] == [f"HumanEval/0#{j}" for j in range(7)]
    assert [by_id[f"HumanEval/2#{j}"]["input"] for j in range(3)] == ["3.5", "1.33", "123.456"]
    assert "HumanEval/2#3" not in by_id
    namespace = {}
    exec(row["code"], namespace)
    assert namespace["has_close_elements"](*ast.literal_eval(f"({row['input']},)")) is False
