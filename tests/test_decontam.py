"""Decontamination's boundary (stepcode.data.decontam): a row covering exactly `decontam_min_coverage` of a benchmark
program's n-grams is dropped, one just below it is kept. The coverages are counted by hand below."""

import json
from pathlib import Path

import pytest

from stepcode.config import load_params
from stepcode.data.decontam import code_tokens, decontaminate, ngrams

# Tokens (decontam's normalization: NEWLINE kept as "\n", INDENT/DEDENT dropped):
#   def f ( ) : \n return [ 1 , 2 , 3 , 4 , 5 , 6 , 7 , 8 , 9 , 10 ] \n
# that is 6 + 2 + (10 literals + 9 commas) + 2 = 29 tokens, so 29 - 10 + 1 = 20 windows of n = 10. Every window holds
# a literal, and every literal occurs once, so the 20 windows are 20 distinct n-grams.
BENCH = "def f():\n    return [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n"
# A row shares the windows that lie inside its common prefix with BENCH: a prefix of P tokens shares P - 9 of them.
# Token 8 + 2 (k - 1) is the literal k, so "... 8, 9]" shares 25 tokens (up to the literal 9): 16 windows, 16/20 = 0.8.
AT_08 = "def f():\n    return [1, 2, 3, 4, 5, 6, 7, 8, 9]\n"
# "... 8, 99]" shares 24 tokens (up to the comma after 8): 15 windows, 15/20 = 0.75. Its other windows hold 99 or
# "]" after a literal below 10, which no BENCH window does.
AT_075 = "def f():\n    return [1, 2, 3, 4, 5, 6, 7, 8, 99]\n"
N = 10


@pytest.fixture
def bench(tmp_path):
    path = tmp_path / "bench.jsonl"
    path.write_text(json.dumps({"id": "b0", "code": BENCH}) + "\n")
    return {"tiny": path}


def coverage_by_the_module(code):
    grams = set(ngrams(code_tokens(BENCH), N))
    return len(grams & set(ngrams(code_tokens(code), N))) / len(grams)


def test_the_hand_counts():
    assert len(code_tokens(BENCH)) == 29 and len(set(ngrams(code_tokens(BENCH), N))) == 20
    assert coverage_by_the_module(AT_08) == 16 / 20 == 0.8
    assert coverage_by_the_module(AT_075) == 15 / 20 == 0.75
    assert coverage_by_the_module(BENCH.replace("f(", "g(")) == 1.0      # a renamed copy covers everything


def test_exactly_min_coverage_is_dropped_just_below_is_kept(bench):
    build = load_params(Path(__file__).resolve().parents[1] / "params.yaml").build
    assert (build.decontam_n, build.decontam_min_coverage) == (N, 0.8)   # the counts above assume these
    rows = [{"id": "at", "code": AT_08}, {"id": "below", "code": AT_075}]
    kept, report = decontaminate(rows, bench, n=build.decontam_n, min_coverage=build.decontam_min_coverage)
    assert [r["id"] for r in kept] == ["below"]
    assert report["dropped"] == 1 and report["benchmarks"]["tiny"]["dropped"] == 1 and report["rows"] == 2
    [dropped] = report["dropped_rows"]
    assert dropped["id"] == "at"
    assert dropped["matches"] == [{"benchmark": "tiny", "benchmark_id": "b0", "coverage": 0.8,
                                   "ngram": "def f ( ) : \n return [ 1 ,"}]


def test_the_boundary_moves_with_min_coverage(bench):
    rows = [{"id": "at", "code": AT_08}, {"id": "below", "code": AT_075}]
    # At 0.75 the 15/20 row is exactly at the threshold: both are dropped.
    kept, report = decontaminate(rows, bench, n=N, min_coverage=0.75)
    assert kept == [] and [(d["id"], d["matches"][0]["coverage"]) for d in report["dropped_rows"]] == \
           [("at", 0.8), ("below", 0.75)]
    # Just above 0.8: both are kept.
    kept, report = decontaminate(rows, bench, n=N, min_coverage=0.8 + 1e-9)
    assert kept == rows and report["dropped"] == 0
