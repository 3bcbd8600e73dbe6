"""The data gate in bounded memory (stepcode/data/validation.py): a table validated CHUNK_ROWS rows at a time, or read
from a folder of part files, gives the summary, quarantine and Data Docs that one whole-table validation gives.
Hand-written rows (no sandbox), real great-expectations runs."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from stepcode.config import parse_params
from stepcode.data import validation
from stepcode.data.validation import scan_table, validate_traces
from stepcode.jsonl import read_jsonl, write_jsonl, write_parts


def _row(i: int, **fields) -> dict:
    n = 2 + i % 3  # ok traces of 2..4 lines
    return {"id": f"r{i}", "code": f"def f(x):\n    y = x + {i}\n    return y\n", "input": "1", "entry_point": "f",
            "instrumented_code": "def f(x):\n    y = x + 1\n    return y\n",
            "trace": [f"v{k}: {k}" for k in range(n - 1)] + ["return_val: 2"], "output": "2", "status": "ok",
            "reason": None, **fields}


def _defective(n: int = 23) -> list[dict]:
    """Defects spread over the table, so that most of them cross a chunk boundary at small chunk sizes."""
    rows = [_row(i) for i in range(n)]
    rows[20]["id"] = "r1"                                   # ids_unique: rows 1 and 20
    rows[17]["code"] = rows[3]["code"]                      # code_input_unique: rows 3 and 17
    rows[15]["input"] = 5                                   # input_is_str: the only non-string input
    rows[9]["id"] = None                                    # id_not_null
    rows[6]["status"] = "finished"                          # status_known
    rows[11]["output"] = "<generator object>"               # ok_output_is_literal (tolerated: flagged only)
    rows[12]["trace"] = ["x = 1", "return_val: 2"]          # ok_lines_are_anchors
    for i in (2, 5, 8, 13, 19):
        rows[i].update(status="runtime_error", trace=[])    # ok_share
    for i in (4, 21):
        rows[i]["status"] = "nondeterministic"              # nondeterministic_share
    return rows


PARAMS = parse_params({"validate": {"min_ok_share": 0.8, "max_nondeterministic_share": 0.05,
                                    "min_literal_output_share": 0.9}})


def _run(tmp_path, name: str, rows=None, table=None, **kwargs):
    if table is None:
        table = tmp_path / f"{name}.jsonl"
        write_jsonl(table, rows)
    result = validate_traces(table, tmp_path / name, PARAMS, **kwargs)
    return result, result.summary_path.read_text(), result.quarantine_path.read_bytes()


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The defective table validated in one chunk: (result, summary.json text, quarantine.jsonl bytes)."""
    return _run(tmp_path_factory.mktemp("whole"), "traces", _defective())


def test_the_defective_table_fails_what_it_should(whole):
    result, _, _ = whole
    by_name = {o.name: o for o in result.outcomes}
    assert {o.name for o in result.failed} == {
        "id_not_null", "input_is_str", "ids_unique", "status_known", "ok_lines_are_anchors", "code_input_unique",
        "ok_share", "nondeterministic_share"}
    assert by_name["ok_output_is_literal"].success and by_name["ok_output_is_literal"].unexpected_count == 1
    assert by_name["ids_unique"].example_ids == ["r1"] and by_name["ids_unique"].unexpected_count == 2
    assert by_name["code_input_unique"].example_ids == ["r3", "r17"]
    assert by_name["input_is_str"].unexpected_count == 1  # object dtype: GX checks each value
    assert by_name["ok_share"].unexpected_count == 8  # 5 runtime errors, 2 nondeterministic, 1 unknown status


@pytest.mark.parametrize("chunk_rows", [1, 4])
def test_several_chunks_give_what_one_chunk_gives(tmp_path, whole, chunk_rows):
    _, summary, quarantine = whole
    _, chunked_summary, chunked_quarantine = _run(tmp_path, "traces", _defective(), chunk_rows=chunk_rows)
    assert chunked_summary == summary
    assert chunked_quarantine == quarantine


def test_a_failed_mean_and_a_failed_mostly_over_chunks(tmp_path):
    """A mean and a `mostly` share are whole-table verdicts: added up exactly across chunks, decided once."""
    rows = [_row(i, trace=["return_val: 1"]) for i in range(10)]  # mean 1 < 1.5
    rows[3]["output"], rows[9]["output"] = "<object>", "nan"  # 8 of 10 literal < 90%
    _, summary, quarantine = _run(tmp_path, "whole", rows)
    result, chunked_summary, chunked_quarantine = _run(tmp_path, "chunked", rows, chunk_rows=3)
    assert chunked_summary == summary and chunked_quarantine == quarantine
    assert {o.name for o in result.failed} == {"ok_mean_anchors", "ok_output_is_literal"}
    by_name = {o.name: o for o in result.outcomes}
    assert by_name["ok_mean_anchors"].observed == 1.0 and by_name["ok_mean_anchors"].unexpected_count == 10
    assert by_name["ok_output_is_literal"].unexpected_count == 2
    assert by_name["ok_share"].observed == 1.0


def test_a_folder_of_part_files_gives_what_one_file_gives(tmp_path, whole):
    _, summary, quarantine = whole
    folder = tmp_path / "traces"
    write_parts(folder, _defective(), part_rows=4)
    assert len(list(folder.glob("part-*.jsonl"))) == 6
    result, folder_summary, folder_quarantine = _run(tmp_path / "report", "traces", table=folder, chunk_rows=5)
    assert folder_summary == summary and folder_quarantine == quarantine
    assert "traces" in result.report_path.read_text(encoding="utf-8")  # the run is named after the folder


def test_a_bad_line_in_a_part_file_names_the_part(tmp_path):
    folder = tmp_path / "traces"
    write_parts(folder, [_row(i) for i in range(4)], part_rows=2)
    with open(folder / "part-00001.jsonl", "a") as fh:
        fh.write("not json\n")
    with pytest.raises(ValueError, match=r"part-00001\.jsonl:3"):
        validate_traces(folder, tmp_path / "report", PARAMS)


def test_each_chunk_is_one_gx_validation_of_at_most_chunk_rows_rows(tmp_path, monkeypatch):
    frames = []
    validate = validation._Gx.validate

    def spy(self, df, expectations):
        frames.append((len(df), len(expectations)))
        return validate(self, df, expectations)

    monkeypatch.setattr(validation._Gx, "validate", spy)
    rows = [_row(i) for i in range(10)]
    result, _, _ = _run(tmp_path, "t", rows, chunk_rows=4)
    assert result.success, result.describe()
    n_chunks = math.ceil(10 / 4)
    suite = len(validation.build_expectations(PARAMS))
    # the row-wise expectations chunk by chunk, then each uniqueness expectation over chunks of hashed values
    assert [n for n, _ in frames[:n_chunks]] == [4, 4, 2]
    assert all(k == suite - 2 for _, k in frames[:n_chunks])
    assert len(frames) == 3 * n_chunks and all(n <= 4 for n, _ in frames)
    assert all(k == 1 for _, k in frames[n_chunks:])


def test_rows_sharing_a_value_meet_in_one_chunk(tmp_path):
    """ids_unique sees a duplicate whatever chunks the two rows fall in."""
    rows = [_row(i) for i in range(6)]
    rows[5]["id"] = "r0"
    rows[2]["id"] = rows[4]["id"] = "r2"
    result, _, _ = _run(tmp_path, "t", rows, chunk_rows=1)
    (failed,) = result.failed
    assert failed.name == "ids_unique" and failed.unexpected_count == 4 and failed.example_ids == ["r0", "r2"]
    assert [r["id"] for r in read_jsonl(result.quarantine_path)] == ["r0", "r2", "r2", "r0"]


def test_one_validation_page_holds_the_whole_table(tmp_path):
    rows = _defective()
    result, _, _ = _run(tmp_path, "t", rows, chunk_rows=5)
    stored = list((tmp_path / "t" / "gx" / "uncommitted" / "validations").rglob("*.json"))
    assert len(stored) == 1  # one result for the table, not one per chunk
    stored = json.loads(stored[0].read_text())
    by_name = {r["expectation_config"]["meta"]["name"]: r for r in stored["results"]}
    assert by_name["status_known"]["result"]["element_count"] == len(rows)
    assert by_name["status_known"]["result"]["partial_unexpected_counts"] == [{"value": "finished", "count": 1}]
    assert by_name["ids_unique"]["result"]["partial_unexpected_index_list"] == [1, 20]
    assert stored["statistics"]["unsuccessful_expectations"] == len(result.failed)
    pages = list(result.report_path.parent.rglob("validations/**/*.html"))
    assert len(pages) == 1 and "Expectation Validation Result" in pages[0].read_text(encoding="utf-8")


MIXED = [  # column -> values over the rows; a column missing from a row is a key the row does not have
    {"s": "a", "n": 1, "f": 1, "m": "a", "b": True, "l": ["x"], "z": None, "u": 2**63},
    {"s": None, "n": 2, "f": 2.5, "m": 1, "b": None, "l": None, "z": None, "u": 1},
    {"s": "c", "n": -3, "m": None, "b": False, "l": "y", "u": 5},
    {"s": float("nan"), "n": 4, "f": None, "m": [1], "b": True},
]


@pytest.mark.parametrize("k", range(1, len(MIXED) + 1))
def test_scan_infers_the_dtypes_of_one_frame(tmp_path, k):
    """A chunk's frame gets the dtype pandas would give the whole table (GX's type check goes by dtype)."""
    rows = MIXED[:k]
    write_jsonl(tmp_path / "t.jsonl", rows)
    assert scan_table(tmp_path / "t.jsonl").dtypes == dict(pd.DataFrame(rows).dtypes)
    frame = validation.derive_columns(rows[-1:], start=k - 1, dtypes=scan_table(tmp_path / "t.jsonl").dtypes)
    assert dict(frame.dtypes[list(pd.DataFrame(rows).columns)]) == dict(pd.DataFrame(rows).dtypes)
    assert list(frame.index) == [k - 1]
