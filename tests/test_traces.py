"""The trace stage on real programs, through the real sandbox and the real CLI."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from stepcode.config import load_params, parse_params
from stepcode.data.traces import STATUSES, trace_batch, trace_one, trace_rows
from stepcode.sandbox.engine import Sandbox

ROOT = Path(__file__).resolve().parent.parent
CRUXEVAL = ROOT / "data" / "benchmarks" / "cruxeval" / "cruxeval.jsonl"


@pytest.fixture(scope="module")
def params():
    return load_params(ROOT / "params.yaml")


@pytest.fixture(scope="module")
def sandbox(params):
    with Sandbox(params.sandbox, hash_seeds=params.trace.hash_seeds) as sb:
        yield sb


def _trace(sandbox, params, code, inp="0"):
    return trace_one(sandbox, {"id": "t", "code": code, "input": inp, "entry_point": "f"}, params)


def test_cruxeval_traces_reproduce_the_gold_outputs(params, sandbox):
    """All 800 CRUXEval programs, instrumented: the instrumented program returns exactly the original's value (the
    gold output), except the rows rightly rejected: one prints a set of strings whose order follows the hash seed,
    three print iterator objects whose text holds a memory address."""
    rows = [dict(json.loads(line), entry_point="f") for line in CRUXEVAL.read_text().splitlines()]
    traced = list(trace_rows(rows, params, sandbox=sandbox))
    rejected = {r["id"]: r["status"] for r in traced if r["status"] != "ok"}
    assert rejected == {"sample_736": "nondeterministic", "sample_400": "unreproducible",
                        "sample_422": "unreproducible", "sample_748": "unreproducible"}
    gold = {json.loads(line)["id"]: json.loads(line)["output"] for line in CRUXEVAL.read_text().splitlines()}
    mismatched = [r["id"] for r in traced
                  if r["status"] == "ok" and ast.literal_eval(r["output"]) != ast.literal_eval(gold[r["id"]])]
    assert mismatched == []
    for r in traced:
        if r["status"] == "ok":
            assert 1 <= len(r["trace"]) <= params.trace.max_lines
            assert r["trace"][-1].startswith("return_val: ")


def test_trace_is_captured_per_print_call(params, sandbox):
    r = _trace(sandbox, params, "def f(x):\n    s = 'a\\nb: c'\n    print('s: fake')\n    return s\n")
    assert r["status"] == "ok"
    assert r["trace"] == ["s: a\nb: c", "return_val: a\nb: c"]   # a newline stays inside one anchor
    assert r["output"] == "'a\\nb: c'"
    assert "print(f's: {s}')" in r["instrumented_code"]


def test_too_long_and_failures_keep_a_reason(params, sandbox):
    long_code = "def g(x):\n    y = x + 1\n    return y\ndef f(x):\n    return [g(i) for i in range(x)]\n"
    r = _trace(sandbox, params, long_code, "8")
    assert r["status"] == "too_long" and "17 anchor lines" in r["reason"]
    r = _trace(sandbox, params, "def f(x):\n    return x[3]\n", "[1]")
    assert r["status"] == "runtime_error" and "IndexError" in r["reason"]
    r = _trace(sandbox, params, "def f(x)\n    return x\n")
    assert r["status"] == "syntax_error" and r["reason"]
    assert set(STATUSES) >= {"ok", "syntax_error", "runtime_error", "timeout", "memory", "output_limit", "killed",
                             "nondeterministic", "too_long", "unsupported", "unreproducible"}


def test_a_batch_traces_each_row_as_trace_one_does(params, sandbox):
    """Rows that never reach the sandbox (syntax error, unsupported) keep their place among the rows that run."""
    codes = ["def f(x):\n    y = x + 1\n    return y\n", "def f(x)\n    return x\n",
             "def f(x):\n    print = len\n    return x\n", "def f(x):\n    return 1 // x\n",
             "def f(x):\n    z = [x] * 2\n    return z\n"]
    rows = [{"id": str(k), "code": code, "input": "0", "entry_point": "f"} for k, code in enumerate(codes)]
    batch = trace_batch(sandbox, rows, params)
    assert [r["status"] for r in batch] == ["ok", "syntax_error", "unsupported", "runtime_error", "ok"]
    assert batch == [trace_one(sandbox, row, params) for row in rows]
    assert batch[4]["trace"] == ["z: [0, 0]", "return_val: [0, 0]"]


def test_max_lines_is_a_parameter(sandbox):
    tight = parse_params({"trace": {"max_lines": 2}})
    r = _trace(sandbox, tight, "def f(x):\n    a = x\n    b = a\n    return b\n")
    assert r["status"] == "too_long"


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "stepcode.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_cli_trace_summary_and_output_rows(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "a", "code": "def f(x):\n    y = x * 2\n    return y\n", "input": "3",
                               "entry_point": "f"}) + "\n" +
                   json.dumps({"id": "b", "code": "def f(x):\n    return 1 / x\n", "input": "0",
                               "entry_point": "f"}) + "\n")
    out = tmp_path / "out.jsonl"
    proc = _cli("trace", str(src), "-o", str(out), "--workers", "1", "--no-track", "--summary", str(tmp_path / "s.json"))
    assert proc.returncode == 0, proc.stderr
    assert "2 programs" in proc.stdout and "programs/s" in proc.stdout
    assert "runtime_error" in proc.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b"]
    assert set(rows[0]) >= {"id", "code", "input", "entry_point", "instrumented_code", "trace", "output", "status",
                            "reason"}
    assert rows[0]["trace"] == ["y: 6", "return_val: 6"] and rows[0]["output"] == "6"
    assert json.loads((tmp_path / "s.json").read_text())["by_status"] == {"ok": 1, "runtime_error": 1}


def test_cli_malformed_input_names_the_line(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps({"id": "a", "code": "def f(x):\n    return x\n", "input": "1", "entry_point": "f"})
                   + "\n{not json\n")
    proc = _cli("trace", str(src), "-o", str(tmp_path / "o.jsonl"), "--no-track")
    assert proc.returncode == 2
    assert "bad.jsonl:2" in proc.stderr
    assert not (tmp_path / "o.jsonl").exists()
    proc = _cli("trace", str(src), "-o", str(tmp_path / "o.jsonl"), "--skip-bad", "--no-track")
    assert proc.returncode == 0, proc.stderr
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 1
    rejects = (tmp_path / "o.rejects.jsonl").read_text()
    assert '"line": 2' in rejects


def test_cli_help_lists_the_commands():
    proc = _cli("--help")
    assert proc.returncode == 0
    for command in ("trace", "synth", "corpus", "doctor"):
        assert command in proc.stdout
