"""A stage never loses its rows to one program: whatever a program or a row does, the trace stage writes every row,
each with a status and a reason, and the files written read back. Real programs through the real sandbox."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stepcode.config import load_params
from stepcode.data.corpus import CorpusError, read_programs
from stepcode.data.dataset import _write_json
from stepcode.data.traces import STATUSES, trace_batch, trace_file, trace_rows, write_summary
from stepcode.evals import write_json
from stepcode.jsonl import JsonlError, atomic_file, atomic_write_text, read_jsonl, write_jsonl
from stepcode.sandbox.engine import Sandbox

ROOT = Path(__file__).resolve().parent.parent
SURROGATE = chr(0xD800)


@pytest.fixture(scope="module")
def params():
    return load_params(ROOT / "params.yaml")


@pytest.fixture(scope="module")
def sandbox(params):
    with Sandbox(params.sandbox, hash_seeds=params.trace.hash_seeds, workers=2) as sb:
        yield sb


def _row(name: str, code: str, inp: str = "1") -> dict:
    return {"id": name, "code": code, "input": inp, "entry_point": "f"}


def _has_surrogate(text) -> bool:
    return isinstance(text, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in text)


OK_ROW = _row("fine", "def f(x):\n    y = x + 1\n    return y\n", "2")

# --- 1. text that UTF-8 cannot encode ----------------------------------------------------------------------------

SURROGATE_ROWS = [
    _row("in_anchor", "def f(x):\n    s = chr(0xD800)\n    return len(s)\n"),
    _row("in_repr", "class R:\n    def __str__(self):\n        return 'r'\n    def __repr__(self):\n"
                    "        return chr(0xD800)\ndef f(x):\n    return R()\n"),
    _row("in_exception", "def f(x):\n    raise ValueError(chr(0xD800))\n"),
    _row("in_stdout_and_anchor", "def f(x):\n    print(chr(0xDFFF))\n    t = 'a' + chr(0xDFFF) + 'é'\n    return t\n"),
]


def test_lone_surrogates_from_a_program_are_escaped_and_the_rows_written_and_read_back(params, sandbox, tmp_path):
    rows = list(trace_rows(SURROGATE_ROWS + [OK_ROW], params, sandbox=sandbox))
    by_id = {r["id"]: r for r in rows}
    assert by_id["in_anchor"]["status"] == "ok" and by_id["in_anchor"]["trace"][0] == "s: \\ud800"
    assert by_id["in_repr"]["status"] == "ok" and by_id["in_repr"]["output"] == "\\ud800"
    assert by_id["in_exception"]["status"] == "runtime_error"
    assert by_id["in_exception"]["reason"] == "ValueError: \\ud800"
    assert by_id["in_stdout_and_anchor"]["trace"][0] == "t: a\\udfffé"   # other non-ASCII text is left alone
    assert by_id["fine"]["status"] == "ok"
    for r in rows:   # nothing downstream (pandas, great-expectations, a tokenizer) ever sees a lone surrogate
        assert not any(_has_surrogate(text) for text in [*r["trace"], r["output"], r["reason"]]), r
    write_jsonl(tmp_path / "traces.jsonl", rows)
    assert list(read_jsonl(tmp_path / "traces.jsonl")) == rows


def test_every_json_writer_escapes_a_lone_surrogate_instead_of_failing(tmp_path):
    """A raw lone surrogate reaching a writer is written as JSON's own `\\ud800` escape: the same string reads back."""
    row = {"id": "s", "text": f"a{SURROGATE}b é ✓"}
    write_jsonl(tmp_path / "rows.jsonl", [row, {"id": "plain"}])
    assert list(read_jsonl(tmp_path / "rows.jsonl")) == [row, {"id": "plain"}]
    assert (tmp_path / "rows.jsonl").read_bytes().startswith('{"id": "s", "text": "a\\ud800b é ✓"}'.encode())
    _write_json(tmp_path / "stats.json", row)     # ensure_ascii=False: the writer that used to raise
    write_json(tmp_path / "eval.json", row)
    for name in ("stats.json", "eval.json"):
        assert json.loads((tmp_path / name).read_text(encoding="utf-8")) == row


# --- 2. a program that tampers with its own report ---------------------------------------------------------------

# Module-level code runs inside the runner's exec: one frame up is run_trace, holding the `trace` list.
_FRAME = "import sys\nsys._getframe(1).f_locals['trace'].append({!s})\ndef f(x):\n    return 1\n"
# A finaliser of the return value runs as run_trace returns, after the report dict is built: it finds it with gc.
_FINALISER = ("import gc\n"
              "class E:\n"
              "    def __str__(self):\n        return 'e'\n"
              "    def __repr__(self):\n        return 'e'\n"
              "    def __del__(self):\n"
              "        for d in gc.get_objects():\n"
              "            if type(d) is dict and 'status' in d and 'trace' in d and 'output' in d:\n"
              "                d[{!r}] = {!s}\n"
              "def f(x):\n    return E()\n")

TAMPERING = [
    (_FRAME.format("5"), "the trace holds a non-string (int)"),
    (_FRAME.format("None"), "the trace holds a non-string (NoneType)"),
    (_FRAME.format("{'a': 1}"), "the trace holds a non-string (dict)"),
    (_FRAME.format("'x' * 5000"), "a trace line is longer than 2000 characters"),
    (_FINALISER.format("output", "None"), "status 'ok' with an output of type NoneType"),
    (_FINALISER.format("output", "[1]"), "status 'ok' with an output of type list"),
    (_FINALISER.format("output", "'o' * 5000"), "the output is 5000 characters (max 2000)"),
    (_FINALISER.format("trace", "'abc'"), "the trace is not a list (str)"),
    (_FINALISER.format("status", "'banana'"), "unknown status 'banana'"),
    (_FINALISER.format("reason", "3"), "the reason is not a string (int)"),
]


def test_a_report_the_program_tampered_with_is_that_row_killed_and_the_batch_goes_on(params, sandbox):
    """Each hostile program really reaches the engine with a malformed report (the reason names what the engine
    received); it becomes that row's `killed`, and the ordinary rows of the same batch are traced as usual."""
    rows = [OK_ROW] + [_row(f"t{k}", code) for k, (code, _) in enumerate(TAMPERING)] + [OK_ROW]
    out = trace_batch(sandbox, rows, params)
    assert [r["status"] for r in (out[0], out[-1])] == ["ok", "ok"]
    for r, (_, why) in zip(out[1:-1], TAMPERING):
        assert (r["status"], r["reason"]) == ("killed", f"the program tampered with its report: {why}"), r["code"]
        assert (r["trace"], r["output"]) == ([], None)


# --- 3. the output cap, against a str whose __len__ lies ---------------------------------------------------------

# Methods as lambdas: the instrumenter anchors methods (a `return_val` line), never lambdas.
_LIAR = "class S(str):\n    __len__ = lambda self: 0\n"


def test_a_str_subclass_whose_len_lies_does_not_pass_the_output_caps(params, sandbox):
    repr_liar = _row("repr", _LIAR + "class R:\n    __str__ = lambda self: 'r'\n"
                             "    __repr__ = lambda self: S('a' * 3000000)\ndef f(x):\n    return R()\n")
    stdout_liar = _row("stdout", _LIAR + "import sys\ndef f(x):\n    sys.stdout.write(S('a' * 100000))\n    return 1\n")
    r, s = trace_batch(sandbox, [repr_liar, stdout_liar], params)
    assert r["status"] == "output_limit" and r["output"] is None
    assert r["reason"] == f"the return value's repr is 3000000 characters (max {params.trace.max_output_chars})"
    assert s["status"] == "output_limit" and "printed more than" in s["reason"]


def test_an_exit_code_whose_repr_raises_or_is_huge_is_still_a_runtime_error(params, sandbox):
    """The verdict's reason shows the exit code's repr: one that raises used to escape the runner (no report:
    `killed`), a huge one to overflow the report (`output_limit`)."""
    raising = _row("raising", "class B:\n    __repr__ = lambda self: 1 / 0\ndef f(x):\n    raise SystemExit(B())\n")
    huge = _row("huge", "def f(x):\n    raise SystemExit('x' * 5000000)\n")
    r, h = trace_batch(sandbox, [raising, huge], params)
    assert (r["status"], r["reason"]) == ("runtime_error", "the program called exit(<unprintable>)")
    assert h["status"] == "runtime_error" and h["reason"].startswith("the program called exit('xxx")
    assert len(h["reason"]) == 300


# --- 4. programs and inputs that blow up a parser ----------------------------------------------------------------

def test_programs_and_inputs_too_deep_for_the_parser_are_rows_with_a_reason(params, sandbox):
    identity = "def f(x):\n    return 1\n"
    rows = [_row("deep_program", "x = " + "x+" * 30000 + "x\n" + identity),
            _row("deep_walrus", "def f(x):\n    y = (z := " + "x+" * 600 + "x)\n    return y\n"),   # parses; walk fails
            _row("minus_input", identity, "-" * 100000 + "1"),
            _row("list_input", identity, "[" * 100000 + "]" * 100000),
            OK_ROW]
    out = {r["id"]: (r["status"], r["reason"]) for r in trace_batch(sandbox, rows, params)}
    assert out == {"deep_program": ("syntax_error", "too deeply nested to parse (RecursionError)"),
                   "deep_walrus": ("unsupported", "too deeply nested to instrument (RecursionError)"),
                   "minus_input": ("runtime_error", "the input does not parse: too deeply nested (MemoryError)"),
                   "list_input": ("runtime_error", "the input does not parse: SyntaxError: too many nested "
                                                   "parentheses (<input>, line 1)"),
                   "fine": ("ok", None)}


def test_a_too_deep_json_line_is_a_bad_line_named_by_file_and_number(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text(json.dumps(OK_ROW) + "\n" + "[" * 100000 + "]" * 100000 + "\n")
    rows = read_jsonl(p)
    assert next(rows) == OK_ROW
    with pytest.raises(JsonlError, match=rf"^{p}:2: JSON nested too deeply to read$"):
        next(rows)
    with pytest.raises(CorpusError, match=r":2: JSON nested too deeply to read$"):
        read_programs(p)


# --- 5. whatever a row holds, the stage writes every row ---------------------------------------------------------

def test_a_row_our_code_fails_on_is_its_own_engine_error(params, sandbox):
    rows = [OK_ROW, {"id": "no_code", "code": None, "input": "1"}, {"id": "int_input", "code": OK_ROW["code"],
                                                                    "input": 3}, {"id": "no_input", "code": "x"}]
    out = {r["id"]: (r["status"], r["reason"]) for r in trace_rows(rows, params, sandbox=sandbox)}
    assert out == {"fine": ("ok", None),
                   "no_code": ("engine_error", "TypeError: instrument() expects source text (str), got NoneType"),
                   "int_input": ("engine_error", "TypeError: entry_point and input must be str, not str and int"),
                   "no_input": ("engine_error", "KeyError: 'input'")}
    assert "engine_error" in STATUSES


def test_the_trace_stage_writes_every_row_of_a_hostile_file(params, tmp_path):
    """The stage end to end (`trace_file`, its own sandbox): a file holding every kind of trouble above. The line no
    JSON reader can take is a rejected line; every other row is written, with a status and a reason, and the output
    reads back."""
    inp, out, rejects = tmp_path / "programs.jsonl", tmp_path / "traces.jsonl", tmp_path / "rejects.jsonl"
    rows = [OK_ROW, *SURROGATE_ROWS, *(_row(f"t{k}", code) for k, (code, _) in enumerate(TAMPERING)),
            _row("deep_program", "x = " + "x+" * 30000 + "x\n"), _row("deep_input", OK_ROW["code"], "-" * 100000),
            _row("list_input", OK_ROW["code"], "[" * 100000 + "]" * 100000),
            _row("surrogate_source", f"def f(x):\n    return '{SURROGATE}'\n")]
    lines = [json.dumps(row) for row in rows]
    lines.insert(3, "[" * 100000 + "]" * 100000)   # line 4
    inp.write_text("\n".join(lines) + "\n")
    summary = trace_file(inp, out, params, workers=2, skip_bad=True, rejects_path=rejects, progress=False)
    traced = list(read_jsonl(out))
    assert [r["id"] for r in traced] == [r["id"] for r in rows]
    assert summary["total"] == len(rows)
    for r in traced:
        assert r["status"] in STATUSES and (r["status"] == "ok") == (r["reason"] is None), r["id"]
    assert [(r["line"], r["reason"]) for r in read_jsonl(rejects)] == [(4, "JSON nested too deeply to read")]
    assert traced[-1]["code"] == rows[-1]["code"]   # the row's own text, lone surrogate included, is kept
    assert (traced[-1]["status"], traced[-1]["reason"]) == (
        "syntax_error", "the source holds a lone surrogate, which is not valid text")


# --- 6. one atomic writer for every JSON file --------------------------------------------------------------------

def test_the_json_writers_keep_their_bytes_and_never_share_a_temp_file(tmp_path):
    obj = {"b": [1, 2.5, None, True], "a": "é ✓ \"q\"\n"}
    # The bytes each writer has always produced (DVC-tracked outputs must not change).
    write_json(tmp_path / "e.json", obj)
    assert (tmp_path / "e.json").read_bytes() == json.dumps(obj).encode()
    _write_json(tmp_path / "d.json", obj)
    assert (tmp_path / "d.json").read_bytes() == (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode()
    write_summary({"total": 2, "by_status": {"ok": 2}, "seconds": 9.0}, tmp_path / "m" / "trace.json")
    assert (tmp_path / "m" / "trace.json").read_text() == json.dumps({"total": 2, "by_status": {"ok": 2}},
                                                                     indent=2) + "\n"
    # A fixed temp name (`x.json.tmp`, `.x.json.tmp`) was shared by concurrent writers; squat on both: no matter.
    for name in ("e.json.tmp", ".e.json.tmp", ".d.json.tmp", "d.json.tmp"):
        (tmp_path / name).mkdir()
    write_json(tmp_path / "e.json", {"new": 1})
    _write_json(tmp_path / "d.json", {"new": 2})
    assert json.loads((tmp_path / "e.json").read_text()) == {"new": 1}
    assert json.loads((tmp_path / "d.json").read_text()) == {"new": 2}


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temp_file(tmp_path):
    p = tmp_path / "x.json"
    atomic_write_text(p, "old\n")
    with pytest.raises(RuntimeError, match="midway"), atomic_file(p) as fh:
        fh.write(b"half")
        raise RuntimeError("midway")
    assert p.read_text() == "old\n"
    assert [f.name for f in tmp_path.iterdir()] == ["x.json"]
