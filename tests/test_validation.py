"""The data gate (stepcode/data/validation.py) with real great-expectations runs: a clean table traced through the real
sandbox passes; each seeded defect fails exactly the expectation written for it and quarantines the bad row."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from stepcode.config import ConfigError, Params, parse_params
from stepcode.data.traces import trace_rows
from stepcode.data.validation import GateFailed, derive_columns, require_gate, validate_traces
from stepcode.jsonl import read_jsonl, write_jsonl

CRUXEVAL = Path(__file__).resolve().parents[1] / "data" / "benchmarks" / "cruxeval" / "cruxeval.jsonl"

PROGRAMS = [
    ("def f(x):\n    y = x + 1\n    return y * 2\n", "3"),
    ("def f(s):\n    t = s.upper()\n    n = len(t)\n    return t * n\n", "'ab'"),
    ("def f(nums):\n    total = 0\n    for n in nums:\n        total += n\n    return total\n", "[1, 2, 3]"),
    ("def f(d):\n    d['k'] = 1\n    keys = sorted(d)\n    return keys\n", "{'a': 2}"),
    ("def f(a, b):\n    c = a * b\n    d = c - a\n    return [c, d]\n", "4, 5"),
    ("class C:\n    def __init__(self):\n        self.count = 0\n    def bump(self, k):\n        self.count += k\n"
     "        return self.count\ndef f(k):\n    v = C().bump(k)\n    return v\n", "2"),
    ("def f(x):\n    return 1 // x\n", "0"),  # runtime_error: a failed row belongs in the table too
]


@pytest.fixture(scope="module")
def clean_rows() -> list[dict]:
    rows = [{"id": f"p{i}", "code": code, "input": args, "entry_point": "f"} for i, (code, args) in enumerate(PROGRAMS)]
    return list(trace_rows(rows, Params(), workers=2))


@pytest.fixture
def rows(clean_rows) -> list[dict]:
    return copy.deepcopy(clean_rows)


def gate(tmp_path, rows, params=None):
    path = tmp_path / "traces.jsonl"
    write_jsonl(path, rows)
    return validate_traces(path, tmp_path / "report", params or Params())


def failed_names(result) -> set[str]:
    return {o.name for o in result.failed}


def quarantined(result) -> dict[str, list[str]]:
    return {row["id"]: row["failed_expectations"] for row in read_jsonl(result.quarantine_path)}


def test_the_fixture_is_what_the_tests_assume(clean_rows):
    assert [r["status"] for r in clean_rows] == ["ok"] * 6 + ["runtime_error"]
    assert clean_rows[0]["trace"] == ["y: 4", "return_val: 8"]
    assert clean_rows[5]["trace"][0] == "self.count: 0"  # a dotted anchor name, which the gate must accept


def test_a_clean_table_passes_and_writes_the_report(tmp_path, rows):
    result = gate(tmp_path, rows)
    assert result.success, result.describe()
    assert result.failed == [] and result.n_rows == 7 and result.n_quarantined == 0
    assert result.quarantine_path.read_text() == ""
    assert result.report_path.name == "index.html" and result.report_path.is_file()
    summary = json.loads(result.summary_path.read_text())
    assert summary["success"] is True and summary["n_rows"] == 7
    assert summary["statistics"]["unsuccessful_expectations"] == 0
    by_name = {e["name"]: e for e in summary["expectations"]}
    assert by_name["ok_share"]["observed"] == pytest.approx(6 / 7)
    # the mean is over the ok rows only: the runtime_error row's empty trace does not count
    ok_lengths = [len(r["trace"]) for r in rows if r["status"] == "ok"]
    assert by_name["ok_mean_anchors"]["observed"] == pytest.approx(sum(ok_lengths) / 6)
    require_gate(result)  # passes silently


def _set(i, **fields):
    def seed(rows):
        rows[i].update(fields)
    return seed


def _edit_trace(i, fn):
    def seed(rows):
        rows[i]["trace"] = fn(rows[i]["trace"])
    return seed


def _duplicate_row(rows):
    rows.append(dict(rows[0], id="copy_of_p0"))


# (defect, seed, the one expectation it must fail, ids the quarantine must hold with that reason)
DEFECTS = [
    ("duplicate id", _set(1, id="p0"), "ids_unique", {"p0"}),
    ("unknown status", _set(2, status="finished"), "status_known", {"p2"}),
    ("empty trace on an ok row", _set(0, trace=[]), "ok_trace_length", {"p0"}),
    ("trace over max_lines", _edit_trace(1, lambda t: ["n: 1"] * 10 + t), "ok_trace_length", {"p1"}),
    ("a line that is not NAME: value", _edit_trace(2, lambda t: ["total = 0"] + t), "ok_lines_are_anchors", {"p2"}),
    ("a line without the space after the colon", _edit_trace(2, lambda t: ["total:0"] + t),
     "ok_lines_are_anchors", {"p2"}),
    ("last line not return_val", _edit_trace(3, lambda t: t + ["keys: []"]), "ok_last_line_is_return", {"p3"}),
    ("instrumented_code does not compile", _set(4, instrumented_code="def f(a, b:\n    return a\n"),
     "ok_instrumented_compiles", {"p4"}),
    ("a non-literal output", _set(0, output="<generator object>"), "ok_output_is_literal", {"p0"}),
    ("duplicate (code, input)", _duplicate_row, "code_input_unique", {"p0", "copy_of_p0"}),
    ("a null id", _set(3, id=None), "id_not_null", {None}),
    ("an input that is not a string", _set(3, input=2), "input_is_str", {"p3"}),
    ("a trace that is not a list", _set(1, trace="t: AB"), "trace_is_list_of_str", {"p1"}),
    ("a trace holding a non-string", _edit_trace(4, lambda t: [20] + t), "trace_is_list_of_str", {"p4"}),
    ("ok share too low", lambda rows: [r.update(status="runtime_error") for r in rows[:4]], "ok_share",
     {"p0", "p1", "p2", "p3", "p6"}),
    ("nondeterministic share too high", _set(5, status="nondeterministic"), "nondeterministic_share", {"p5"}),
    ("anchor mean too low", lambda rows: [r.update(trace=r["trace"][-1:]) for r in rows if r["trace"]],
     "ok_mean_anchors", {"p0", "p1", "p2", "p3", "p4", "p5"}),
    ("anchor mean too high",  # 9 lines each: over max_mean_anchors (8), within max_lines (10)
     lambda rows: [r.update(trace=["x: 1"] * (9 - len(r["trace"])) + r["trace"]) for r in rows if r["trace"]],
     "ok_mean_anchors", {"p0", "p1", "p2", "p3", "p4", "p5"}),
]


@pytest.mark.parametrize("defect, seed, expectation, bad_ids", DEFECTS, ids=[d[0] for d in DEFECTS])
def test_each_defect_fails_exactly_its_expectation(tmp_path, rows, defect, seed, expectation, bad_ids):
    seed(rows)
    result = gate(tmp_path, rows)
    assert not result.success
    assert failed_names(result) == {expectation}, result.describe()
    (outcome,) = result.failed
    held = [row["id"] for row in read_jsonl(result.quarantine_path) if expectation in row["failed_expectations"]]
    assert set(held) == bad_ids
    assert outcome.unexpected_count == len(held)
    assert set(outcome.example_ids) <= bad_ids and len(outcome.example_ids) == min(5, len(bad_ids))
    assert result.report_path.is_file()
    summary = json.loads(result.summary_path.read_text())
    assert summary["success"] is False
    assert [e["name"] for e in summary["expectations"] if not e["success"]] == [expectation]


def test_a_missing_column_fails_required_columns(tmp_path, rows):
    for r in rows:
        del r["reason"]
    result = gate(tmp_path, rows)
    assert failed_names(result) == {"required_columns"}
    assert result.failed[0].observed == {"missing": ["reason"]}
    assert "missing" in result.describe() and "reason" in result.describe()


def test_an_empty_table_fails(tmp_path):
    result = gate(tmp_path, [])
    assert not result.success and "table_not_empty" in failed_names(result)


def test_a_tolerated_non_literal_output_passes_but_is_flagged(tmp_path, rows):
    rows[0]["output"] = "inf"  # repr(float('inf')): a real value that ast.literal_eval cannot read back
    params = parse_params({"validate": {"min_literal_output_share": 0.8}})  # 5 of 6 ok outputs are literals
    result = gate(tmp_path, rows, params)
    assert result.success, result.describe()
    assert quarantined(result) == {"p0": ["ok_output_is_literal"]}


def test_a_row_failing_two_expectations_lists_both(tmp_path, rows):
    rows[1]["id"] = "p0"
    rows[1]["trace"] = ["t: AB"]  # ends without return_val
    result = gate(tmp_path, rows)
    assert failed_names(result) == {"ids_unique", "ok_last_line_is_return"}
    assert [(r["code"], r["failed_expectations"]) for r in read_jsonl(result.quarantine_path)] == [
        (rows[0]["code"], ["ids_unique"]), (rows[1]["code"], ["ids_unique", "ok_last_line_is_return"])]


def test_wrong_types_fail_their_expectations_without_crashing(tmp_path, rows):
    rows[0]["id"] = ["p0"]  # unhashable
    rows[1]["trace"] = {"t": "AB"}
    rows[2]["status"] = None
    rows[3]["output"] = "[" * 3000 + "]" * 3000  # too deep for ast.literal_eval: not a literal, not a crash
    result = gate(tmp_path, rows, parse_params({"validate": {"min_literal_output_share": 0.5}}))
    assert failed_names(result) == {"id_is_str", "trace_is_list_of_str", "status_not_null"}
    assert [r["failed_expectations"] for r in read_jsonl(result.quarantine_path)] == [
        ["id_is_str"], ["trace_is_list_of_str"], ["status_not_null"], ["ok_output_is_literal"]]


def test_require_gate_stops_with_the_failed_names(tmp_path, rows):
    rows[2]["status"] = "finished"
    result = gate(tmp_path, rows)
    with pytest.raises(GateFailed, match="status_known") as err:
        require_gate(result)
    assert "p2" in str(err.value) and "1 unexpected" in str(err.value)


def test_derived_columns():
    df = derive_columns([
        {"trace": ["self.count: 1", "a_1.b: x", "return_val: 2"], "instrumented_code": "x = 1", "output": "[1, (2,)]",
         "status": "ok"},
        {"trace": ["1x: 2", "return_val: 2"], "instrumented_code": "x = \0", "output": "f(1)", "status": "timeout"},
        {"trace": None, "instrumented_code": None, "output": None, "status": "nondeterministic"},
    ])
    assert list(df["trace_is_list"]) == [True, True, False]
    assert list(df["n_lines"].astype(object).where(df["n_lines"].notna(), None)) == [3, 2, None]
    assert list(df["non_anchor_line"]) == [None, "1x: 2", None]
    assert list(df["last_line"]) == ["return_val: 2", "return_val: 2", None]
    assert list(df["instrumented_compiles"]) == [True, False, False]
    assert list(df["output_is_literal"]) == [True, False, False]
    assert list(df["is_ok"]) == [1, 0, 0] and list(df["is_nondeterministic"]) == [0, 0, 1]


def test_validate_params_bounds():
    with pytest.raises(ConfigError, match="max_mean_anchors"):
        parse_params({"validate": {"min_mean_anchors": 5, "max_mean_anchors": 4}})
    with pytest.raises(ConfigError, match="validate.min_ok_share"):
        parse_params({"validate": {"min_ok_share": 1.5}})
    params = parse_params({"validate": {"max_nondeterministic_share": 0.1}})
    assert parse_params(params.model_dump()) == params  # a dump (key `validate_`) loads back


def test_cli_exit_codes(tmp_path, rows):
    from typer.testing import CliRunner

    from stepcode.cli import app

    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    write_jsonl(good, rows)
    rows[3]["trace"] = rows[3]["trace"][:-1]
    write_jsonl(bad, rows)
    runner = CliRunner()
    ok = runner.invoke(app, ["validate", str(good), "--report", str(tmp_path / "r")])
    assert ok.exit_code == 0, ok.output
    assert "PASSED" in ok.output
    failed = runner.invoke(app, ["validate", str(bad), "--report", str(tmp_path / "r")])  # same dir, second run
    assert failed.exit_code == 1
    assert "ok_last_line_is_return: FAILED; 1 unexpected" in failed.output and "'p3'" in failed.output
    assert [r["id"] for r in read_jsonl(tmp_path / "r" / "quarantine.jsonl")] == ["p3"]
    assert runner.invoke(app, ["validate", str(tmp_path / "nope.jsonl"), "--report", str(tmp_path / "r")]).exit_code == 2
    (tmp_path / "broken.jsonl").write_text('{"id": "a"}\nnot json\n')
    broken = runner.invoke(app, ["validate", str(tmp_path / "broken.jsonl"), "--report", str(tmp_path / "r")])
    assert broken.exit_code == 2 and "broken.jsonl:2" in broken.output


@pytest.mark.slow  # traces 800 programs twice in the sandbox: ~9 s on 2 cores
def test_cruxeval_traces_pass_the_default_gate(tmp_path):
    programs = [{"id": r["id"], "code": r["code"], "input": r["input"], "entry_point": "f"} for r in read_jsonl(CRUXEVAL)]
    result = gate(tmp_path, list(trace_rows(programs, Params())))
    assert result.success, result.describe()
    assert result.n_rows == 800
    observed = {o.name: o.observed for o in result.outcomes}
    assert 2.0 < observed["ok_mean_anchors"] < 3.5  # benchmark-like: shorter than the paper's training traces
