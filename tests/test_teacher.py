"""`stepcode reason`: teacher reasoning paths, kept only where the sandbox confirms every step and the answer.

Real throughout: the rows come from programs traced in the sandbox and rendered by the dataset builder; the filter
is the RL reward's sandboxed scorer; the endpoint is a real HTTP server (tests/_openai_server.py) serving the micro
model through transformers. An untrained model's paths are all rejected, which is the expected outcome there; the
acceptance path is checked on the filter itself with the rows' gold completions and broken variants of them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from stepcode import prompts
from stepcode.config import Params
from stepcode.jsonl import read_jsonl, write_jsonl
from stepcode.training import teacher as tm

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = [
    {"id": "t/double", "code": "def f(x):\n    y = x * 2\n    z = y + 1\n    return z\n", "input": "3"},
    {"id": "t/sum", "code": "def f(xs):\n    total = 0\n    for x in xs:\n        total += x\n    return total\n",
     "input": "[1, 2, 3]"},
    {"id": "t/shout", "code": "def f(s):\n    t = s.upper()\n    return t + '!'\n", "input": "'ab'"},
]


@pytest.fixture(scope="module")
def traced():
    from stepcode.data.traces import trace_rows

    rows = list(trace_rows([dict(p, entry_point="f") for p in PROGRAMS], Params(), workers=2))
    assert [r["status"] for r in rows] == ["ok"] * 3
    return {r["id"]: r for r in rows}


@pytest.fixture(scope="module")
def sft_rows(traced):
    """What `stepcode build` writes to sft.jsonl for these programs (both tasks), built by its own function."""
    from stepcode.data.dataset import task_examples

    out = []
    for row in traced.values():
        for task in ("output", "input"):
            sft, rl = task_examples(dict(row, source="synth"), task, "template")
            out.append({**sft, "source": rl["source"], "gold_trace": rl["gold_trace"]})
    return out


@pytest.fixture(scope="module")
def scorer():
    from stepcode.training.rewards import RewardScorer

    with RewardScorer(Params(), input_reference="gold", workers=2) as s:
        yield s


def _gold(row) -> str:
    return row["completion"][0]["content"]


def _variants(row, traced) -> dict:
    """Broken completions of `row`, by the reason each must be rejected for."""
    t = traced[row["id"]]
    trace, out, inp = t["trace"], t["output"], t["input"]
    bad_trace = [trace[0].split(": ")[0] + ": 12345", *trace[1:]]
    if row["task"] == "output":
        v = {"wrong_step": prompts.render_output_completion(bad_trace, out),
             "extra_prints": prompts.render_output_completion(trace + ["zz: 0"], out),
             "wrong_answer": prompts.render_output_completion(trace, "12345")}
    else:
        other = {"3": "4", "[1, 2, 3]": "[3, 2, 1]", "'ab'": "'AB'"}[inp]
        v = {"wrong_step": prompts.render_input_completion(inp, bad_trace),
             "extra_prints": prompts.render_input_completion(inp, trace + ["zz: 0"]),
             "other_input": prompts.render_input_completion(other, trace),
             # commits to the right input, answers another one: the final check fails
             "wrong_answer": prompts.render_input_completion(inp, trace).replace(f"<answer>{inp}</answer>",
                                                                                 "<answer>0</answer>")}
    v["no_answer"] = _gold(row).rsplit("<answer>", 1)[0]
    v["format"] = _gold(row).replace("<reasoning>", "", 1).replace("</reasoning>", "", 1)  # a print with no reasoning
    v["request_failed"] = None
    return v


def test_gold_row_reads_the_ground_truth_back_from_the_prompt(sft_rows, traced):
    for row in sft_rows:
        t, g = traced[row["id"]], tm.gold_row(row)
        assert (g["task"], g["entry_point"], g["gold_trace"], g["gold_output"], g["input"]) == \
            (row["task"], "f", t["trace"], t["output"], t["input"])
        assert g["code"] == t["instrumented_code"].strip("\n").rstrip()
    with pytest.raises(ValueError, match="not a StepCode output-task prompt"):
        tm.gold_row({**sft_rows[0], "messages": [{"role": "user", "content": "hello"}]})
    with pytest.raises(ValueError, match="task must be"):
        tm.gold_row({**sft_rows[0], "task": "other"})


def test_filter_accepts_the_gold_path_and_rejects_each_kind_of_error(sft_rows, traced, scorer):
    golds, texts, expected = [], [], []
    for row in sft_rows:
        for reason, text in [(None, _gold(row)), *_variants(row, traced).items()]:
            golds.append(tm.gold_row(row))
            texts.append(text)
            expected.append(reason)
    assert tm.judge(golds, texts, scorer) == expected
    assert set(expected) - {None} == set(tm.REASONS)   # every reason is exercised
    assert len(expected) == 45


class _Recorded:
    """A teacher that answers from a script: per row id and task, the text of each try (an exception: that try's
    request fails). The texts are the rows' real gold completions and the variants above."""

    name = "recorded"

    def __init__(self, script):
        self.script, self.calls = script, []

    def complete(self, messages, *, temperature, max_new_tokens, seed):
        key = next(k for k, v in self.script.items() if v["messages"] == messages)
        self.calls.append(key)
        text = self.script[key]["tries"][sum(1 for c in self.calls if c == key) - 1]
        if isinstance(text, Exception):
            raise text
        return text + "\n<reasoning>after the answer: cut</reasoning>"   # a generator running past </answer>


def test_distill_keeps_the_first_passing_try_and_counts_rejections(sft_rows, traced, scorer, tmp_path):
    v = [_variants(row, traced) for row in sft_rows]
    fail = RuntimeError("HTTP 500")
    tries = [[_gold(sft_rows[0])],                                    # accepted at once
             [v[1]["wrong_step"], _gold(sft_rows[1])],                # accepted on the 2nd try
             [v[2]["wrong_answer"], v[2]["extra_prints"]],            # rejected: extra_prints (the last try)
             [v[3]["other_input"], v[3]["other_input"]],              # rejected: other_input
             [fail, v[4]["no_answer"]],                               # rejected: no_answer
             [v[5]["format"], fail]]                                  # rejected: request_failed
    script = {(r["id"], r["task"]): {"messages": r["messages"], "tries": t} for r, t in zip(sft_rows, tries)}
    teacher = _Recorded(script)
    rejected = []
    kept, summary = tm.distill(sft_rows, teacher, samples=2, chunk=4, scorer=scorer,
                               on_reject=lambda row, why, text: rejected.append((row["id"], row["task"], why)))
    d = summary.as_dict()
    assert (d["rows"], d["accepted"], d["rejected"], d["tries"]) == (6, 2, 4, 11)
    assert d["rejected_by_reason"] == {"request_failed": 1, "no_answer": 1, "other_input": 1, "extra_prints": 1}
    assert d["tries_by_reason"] == {"request_failed": 2, "no_answer": 1, "format": 1, "other_input": 2,
                                    "wrong_step": 1, "extra_prints": 1, "wrong_answer": 1}
    assert d["accepted_by_task"] == {"input": 1, "output": 1}
    assert rejected == [(r["id"], r["task"], w) for r, w in zip(sft_rows[2:], ["extra_prints", "other_input",
                                                                               "no_answer", "request_failed"])]
    assert len(teacher.calls) == 11
    # the kept rows are the SFT rows themselves (the teacher wrote their gold path): byte for byte, as files
    write_jsonl(tmp_path / "sft.jsonl", sft_rows[:2])
    write_jsonl(tmp_path / "kept.jsonl", kept)
    assert (tmp_path / "kept.jsonl").read_bytes() == (tmp_path / "sft.jsonl").read_bytes()
    assert "6 rows: 2 accepted, 4 rejected (request_failed 1, no_answer 1, other_input 1, extra_prints 1)" \
        in summary.line()


def test_clean_completion_and_stop_string():
    assert tm.clean_completion("  <answer>1</answer> more <answer>2</answer>") == "<answer>1</answer>"
    assert tm.clean_completion("\n<reasoning>x</reasoning>\n") == "<reasoning>x</reasoning>"


# --- the command, end to end ---------------------------------------------------------------------------------------

def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
    return dict(env, COLUMNS="80", OPENAI_API_KEY="")


def _reason(*args, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stepcode.cli", "reason", *args], cwd=cwd, capture_output=True,
                          text=True, env=_env(), timeout=timeout)


def _one_line_error(r, *words) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr[-3000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def workdir(sft_rows, tmp_path_factory):
    from stepcode.training.models import build_tiny_model, corpus_texts

    d = tmp_path_factory.mktemp("teacher")
    write_jsonl(d / "sft.jsonl", sft_rows)
    build_tiny_model(d / "micro", corpus_texts(sft_rows), size="micro")
    return d


@pytest.fixture(scope="module")
def server(workdir):
    """The real endpoint: the micro model behind tests/_openai_server.py; its first 2 completions answer 503."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "_openai_server.py"), "--model",
                             str(workdir / "micro"), "--name", "micro-teacher", "--fail-first", "2"],
                            stdout=subprocess.PIPE, stderr=open(workdir / "server.log", "w"), text=True, env=_env())
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening "), (line, (workdir / "server.log").read_text()[-3000:])
        yield f"http://127.0.0.1:{int(line.split()[1])}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow   # the micro model behind a real HTTP server, 4 rows x 2 tries through the CLI: ~20 s on 2 cores
def test_reason_against_a_real_endpoint(workdir, server):
    r = _reason("--teacher", server, "--data", "sft.jsonl", "-o", "out/sft-teacher.jsonl", "--limit", "4",
                "--samples", "2", "--temperature", "0.8", "--max-new-tokens", "48", "--concurrency", "2",
                "--rejects", "out/rejects.jsonl", cwd=workdir)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((workdir / "out" / "sft-teacher.summary.json").read_text())
    # untrained: every path is rejected; the two 503s were retried, so no try lacks a completion
    assert (s["rows"], s["accepted"], s["rejected"], s["tries"]) == (4, 0, 4, 8), s
    assert sum(s["rejected_by_reason"].values()) == 4 and sum(s["tries_by_reason"].values()) == 8
    assert "request_failed" not in s["tries_by_reason"], s
    assert set(s["tries_by_reason"]) <= set(tm.REASONS)
    assert (s["teacher_model"], s["samples"], s["max_new_tokens"]) == ("micro-teacher", 2, 48)
    assert (workdir / "out" / "sft-teacher.jsonl").read_text() == ""
    rejects = list(read_jsonl(workdir / "out" / "rejects.jsonl"))
    assert [x["id"] for x in rejects] == [row["id"] for row in list(read_jsonl(workdir / "sft.jsonl"))[:4]]
    assert all(isinstance(x["text"], str) for x in rejects)
    assert "4 rows: 0 accepted, 4 rejected" in r.stdout
    log = (workdir / "server.log").read_text()
    assert log.count("POST /v1/chat/completions") == 10 and log.count('" 503 ') == 2, log[-2000:]


@pytest.mark.slow   # loads the micro model in the CLI process: ~10 s
def test_reason_with_a_local_model_folder(workdir):
    r = _reason("--teacher", "micro", "--data", "sft.jsonl", "-o", "local.jsonl", "--limit", "2",
                "--max-new-tokens", "32", "--temperature", "0", cwd=workdir)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((workdir / "local.summary.json").read_text())
    assert (s["rows"], s["accepted"], s["rejected"], s["tries"]) == (2, 0, 2, 2), s
    assert s["teacher"] == "micro"


def test_reason_errors_are_one_line(workdir, tmp_path):
    with socket.socket() as sock:   # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = ("--data", "sft.jsonl", "-o", str(tmp_path / "o.jsonl"))
    _one_line_error(_reason("--teacher", f"http://127.0.0.1:{port}/v1", *args, cwd=workdir), "cannot reach")
    _one_line_error(_reason("--teacher", "http://", *args, cwd=workdir), "not an http(s) URL")
    _one_line_error(_reason("--teacher", "ftp://example.org/v1", *args, cwd=workdir), "not an http(s) URL")
    _one_line_error(_reason("--teacher", "http://127.0.0.1:99999/v1", *args, cwd=workdir), "bad port")
    _one_line_error(_reason("--teacher", "no-such-model", *args, cwd=workdir), "no-such-model",
                    "not a local Hugging Face model folder", "no such directory")
    _one_line_error(_reason("--teacher", "micro", "--samples", "3", "--temperature", "0", *args, cwd=workdir),
                    "--samples 3 with --temperature 0")
    _one_line_error(_reason("--teacher", "micro", "--data", "nope.jsonl", "-o", "o.jsonl", cwd=workdir),
                    "--data nope.jsonl")
    (tmp_path / "rl.jsonl").write_text(json.dumps({"id": "x", "task": "output", "prompt": []}) + "\n")
    _one_line_error(_reason("--teacher", "micro", "--data", str(tmp_path / "rl.jsonl"), "-o", "o.jsonl",
                            cwd=workdir), "row 1", "SFT file")
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.slow   # needs the server
def test_reason_unknown_endpoint_model_is_one_line(workdir, server, tmp_path):
    _one_line_error(_reason("--teacher", server, "--teacher-model", "gpt-x", "--data", "sft.jsonl", "-o",
                            str(tmp_path / "o.jsonl"), cwd=workdir), "--teacher-model gpt-x", "micro-teacher")
