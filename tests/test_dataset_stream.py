"""The build stage streams (stepcode.data.dataset.build_dataset): a trace table is a JSONL file or a folder of part
files, read a row at a time; the output is the same either way, and the builder never holds the table."""

import tracemalloc

import pytest
from test_dataset import FILES, cruxeval, params, trace_row

import stepcode.jsonl
from stepcode.data import dataset
from stepcode.data.corpus import CorpusError
from stepcode.data.dataset import build_dataset
from stepcode.evals.registry import decontamination_sources
from stepcode.jsonl import write_jsonl, write_parts


def rows_of(n, sources=("hand",)):
    """n distinct trace rows (a program key shared by pairs of them), cycling through `sources`, with a few that the
    build drops or refuses: a failed run, a too-long trace, a renderer's refusal."""
    rows = []
    for k in range(n):
        row = trace_row(f"prog{k // 2}#{k % 2}", trace=[f"y: {k + 1}", f"return_val: {k + 1}"], input=str(k),
                        output=str(k + 1))
        row["source"] = sources[k % len(sources)]
        if k % 17 == 5:
            row.update(status="timeout", trace=[], output=None)
        elif k % 19 == 7:
            row["trace"] = [f"y: {i}" for i in range(11)]
        elif k % 23 == 11:
            row["trace"] = ["y: <print>", "return_val: 2"]
        rows.append(row)
    return rows


def same_files(a, b):
    return {name: (a / name).read_bytes() == (b / name).read_bytes() for name in FILES}


@pytest.mark.parametrize("reasoning", ["template", "execution"])
def test_a_folder_of_parts_gives_the_files_of_one_file(tmp_path, reasoning):
    rows = rows_of(40, sources=("hand", "hand", "other"))
    rows.insert(13, {**trace_row("copied"), "code": cruxeval("sample_0")["code"]})   # contaminated
    write_jsonl(tmp_path / "traces.jsonl", rows)
    write_parts(tmp_path / "parts", rows, 3)       # 14 parts
    # execution reasoning for two sources of three: the sandbox's batches mix with rows that need none
    p = params(heldout_fraction=0.2, reasoning=reasoning, reasoning_by_source={"other": "none"})
    one = build_dataset(tmp_path / "traces.jsonl", tmp_path / "one", p, benchmarks=decontamination_sources(p.build))
    parts = build_dataset(tmp_path / "parts", tmp_path / "many", p, benchmarks=decontamination_sources(p.build))
    assert one == parts
    assert same_files(tmp_path / "one", tmp_path / "many") == dict.fromkeys(FILES, True)
    assert one["rows_in"] == 41 and one["rows_out"]["contaminated"] == 1 and one["split"]["rows"]["heldout"] > 0
    if reasoning == "execution":
        narrated = [r for r in rows if r["source"] == "hand" and r["id"] != "copied" and r["status"] == "ok"
                    and len(r["trace"]) <= 10]
        assert one["reasoning"]["rows"] == len(narrated)


def test_an_error_in_a_part_names_the_part_and_writes_nothing(tmp_path):
    rows = rows_of(10)
    rows[7]["trace"] = "y: 2"
    write_parts(tmp_path / "parts", rows, 3)
    with pytest.raises(CorpusError, match=r"part-00002\.jsonl: row 2 .*'trace' must be a list"):
        build_dataset(tmp_path / "parts", tmp_path / "out", params(), benchmarks={})
    rows[7] = rows_of(2)[0]    # a duplicate id, late in the table
    write_parts(tmp_path / "parts", rows, 3)
    with pytest.raises(ValueError, match="duplicate id 'prog0#0'"):
        build_dataset(tmp_path / "parts", tmp_path / "out", params(), benchmarks={})
    assert not (tmp_path / "out").exists()     # the table is checked whole before anything is written


def test_chunks_batch_the_narrated_rows_as_map_batches_does():
    rows = [{"n": k, "narrated": k % 3 != 0} for k in range(100)]
    chunks = list(dataset._chunks(iter(rows), lambda r: r["narrated"], 16, 64))
    assert [r for c in chunks for r in c] == rows
    narrated = [[r["n"] for r in c if r["narrated"]] for c in chunks]
    every = [r["n"] for r in rows if r["narrated"]]
    assert narrated == [every[k:k + 16] for k in range(0, len(every), 16)]
    # a long run of rows that need no sandbox does not grow a chunk past its cap
    rows = [{"narrated": False}] * 1000 + [{"narrated": True}]
    assert max(len(c) for c in dataset._chunks(iter(rows), lambda r: r["narrated"], 16, 64)) == 64


class LiveRow(dict):
    """A trace row that counts how many rows are alive at once."""
    alive = peak = 0

    def __init__(self, *args):
        super().__init__(*args)
        LiveRow.alive += 1
        LiveRow.peak = max(LiveRow.peak, LiveRow.alive)

    def __del__(self):
        LiveRow.alive -= 1


def test_the_builder_holds_a_row_at_a_time(tmp_path, monkeypatch):
    write_parts(tmp_path / "parts", rows_of(300), 7)
    read = stepcode.jsonl.read_jsonl
    monkeypatch.setattr(stepcode.jsonl, "read_jsonl", lambda path: (LiveRow(row) for row in read(path)))
    LiveRow.alive = LiveRow.peak = 0
    stats = build_dataset(tmp_path / "parts", tmp_path / "out", params(heldout_fraction=0.2), benchmarks={})
    assert stats["rows_in"] == 300 and stats["rows_kept"] > 250
    assert LiveRow.peak <= 3      # a table's worth would be 300


def peak_bytes(tmp_path, n):
    write_parts(tmp_path / f"parts{n}", rows_of(n), 50)
    tracemalloc.start()
    try:
        build_dataset(tmp_path / f"parts{n}", tmp_path / f"out{n}", params(heldout_fraction=0.2), benchmarks={})
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_grows_by_small_keys_only(tmp_path):
    # ten times the rows: the peak grows by the ids and program keys the build keeps (~0.1 KB a row), not by the
    # rows and their examples (several KB a row)
    small, large = peak_bytes(tmp_path, 100), peak_bytes(tmp_path, 1000)
    assert large - small < 900 * 1024, (small, large)
