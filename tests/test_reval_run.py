"""REval end to end (stepcode/evals/reval_run.py): real truths built in the real sandbox, the real scorer, scripted
backends that answer from the truth (an oracle) or with garbage, upstream's log layout read back the way upstream's
ReplayModel and Consistency read it, and a real micro model. The data is a slice of the real REval files: programs
0-3 (HumanEval) and 122 (the program numpy 2 cannot run: excluded), so the truth builds in about a second."""

from __future__ import annotations

import json
import platform
import zlib
from pathlib import Path

import pytest

from stepcode.config import load_params
from stepcode.evals.generate import Decoding
from stepcode.evals.reval import (
    REVAL_RUNNERS,
    RevalError,
    path_lines,
    prompt_text,
    read_truths,
    reval_prompts,
    reval_truth,
)
from stepcode.evals.reval_run import MAX_NEW_TOKENS, evaluate_reval, first_programs
from stepcode.sandbox.engine import Sandbox

ROOT = Path(__file__).resolve().parents[1]
REVAL_DIR = ROOT / "data" / "benchmarks" / "reval"
PROGRAMS = (0, 1, 2, 3, 122)
GREEDY = Decoding("greedy", 0.0, 1)
METRICS = ("coverage_acc", "coverage_f1", "state_acc", "path_acc", "output_acc", "ic")

pytestmark = pytest.mark.skipif(platform.python_version_tuple()[:2] != ("3", "11"),
                                reason="REval truths are pinned to Python 3.11")


@pytest.fixture(scope="module")
def params(tmp_path_factory):
    data = tmp_path_factory.mktemp("reval-data")
    for name in ("DREval_data.jsonl", "DREval_tasks.jsonl"):
        lines = (REVAL_DIR / name).read_text().splitlines()
        (data / name).write_text("".join(lines[i] + "\n" for i in PROGRAMS))
    p = load_params(ROOT / "params.yaml")
    return p.model_copy(update={"evaluate": p.evaluate.model_copy(update={
        "reval_dir": str(data), "reval_cache_dir": str(tmp_path_factory.mktemp("reval-cache")),
        "check_timeout_s": 2.0})})


@pytest.fixture(scope="module")
def sandbox(params):
    with Sandbox(params.sandbox.model_copy(update={"timeout_s": 30.0, "cpu_s": 30}), workers=2,
                 runners=REVAL_RUNNERS) as sb:
        yield sb


@pytest.fixture(scope="module")
def truths(params, sandbox):
    return read_truths(reval_truth(params, sandbox=sandbox))


# --- scripted backends -----------------------------------------------------------------------------------------------

def output_value(row: dict):
    """The program's real return value on the pair's input (HumanEval programs only: plain benchmark functions)."""
    ns: dict = {}
    exec(row["code"], ns)
    return ns[row["entry_point"]](*eval(row["input"]))


def oracle_answers(truths: list[dict]) -> dict[str, str]:
    """{prompt text: the right answer}: YES/NO, `value; type` of the first true value (or Nil), the stripped text of
    a true next line (or -1), the question's assertion completed with the real return value.
    Upstream's path question names its line by source text only, so two tasks on lines with the same text (in one
    pair) are one question; where their truths differ, the oracle gives the answer right for the most of them."""
    answers: dict[str, str] = {}
    paths: dict[str, list[tuple[list[int], str]]] = {}

    def put(text, answer):
        assert answers.setdefault(text, answer) == answer, "two questions with one text and different answers"

    for r in truths:
        if r["status"] != "ok":
            continue
        for j, t in enumerate(r["truth"]):
            put(prompt_text(r, "coverage", j), "YES" if t["covered"] else "NO")
            v = t["state"]
            put(prompt_text(r, "state", j), "Nil" if v is None else f"{v[0]['repr']}; {v[0]['type']}")
            paths.setdefault(prompt_text(r, "path", j), []).append((t["next_lines"], r["code"]))
        put(prompt_text(r, "output"), r["output_pred"].replace("??", repr(output_value(r))))
    for text, asked in paths.items():
        code = asked[0][1]
        lines = code.split("\n")
        candidates = ["-1" if n == -1 else lines[n - 1].strip() for next_lines, _ in asked for n in next_lines]
        answers[text] = max(candidates, key=lambda c: sum(
            any(x in next_lines for x in path_lines(-1 if c == "-1" else c, code)) for next_lines, _ in asked))
    return answers


class Scripted:
    """A backend with `complete_many`: each sample is `answer(prompt text, sample index, decoding)` plus the stop
    string (a backend may return it; evaluate_reval cuts it). It records what it was asked."""

    name = "scripted"

    def __init__(self, answer):
        self.answer = answer
        self.calls: list[dict] = []

    def complete_many(self, prompts, d, *, top_p, max_new_tokens, stops, seed, batch_size=16):
        self.calls.append({"n": len(prompts), "top_p": top_p, "max_new_tokens": max_new_tokens, "stops": stops,
                           "seed": seed})
        for p in prompts:
            assert p.messages[-1]["content"] == p.raw and p.messages[0]["role"] == "system"
        return [[self.answer(p.raw, k, d) + "[/ANSWER]" for k in range(d.n)] for p in prompts]


def oracle(truths, lead: str = ""):
    answers = oracle_answers(truths)
    return Scripted(lambda text, k, d: lead + answers[text] + "\n")


def garbage():
    return Scripted(lambda text, k, d: "I am not sure.\n")


def run(tmp_path, backend, params, sandbox, runs=(GREEDY,), **kw):
    return evaluate_reval(backend, params, list(runs), tmp_path, sandbox=sandbox, progress=False, **kw)


def upstream_logs(out: Path, folder: str, stem: str | None = None) -> dict[str, list[dict]]:
    """{type: lines} of upstream's logs for one run, read as upstream reads them (JSON lines; the last one is the
    metrics)."""
    logs = {}
    for t in ("coverage", "state", "path", "output"):
        files = sorted((out / "model_generations" / f"{t}@{folder}").glob("*.jsonl"))
        if stem is not None:
            files = [f for f in files if f.stem.endswith(stem)]
        assert len(files) == 1, files
        logs[t] = [json.loads(line) for line in files[0].read_text().splitlines()]
    return logs


def upstream_consistency(logs: dict[str, list[dict]]) -> float:
    """Upstream evaluation.py `Consistency.run`, on the four logs as upstream loads them."""
    def stats(lines, rule):
        return [rule(a) for rec in lines[:-1] for g in rec["generation"] for a in g["results"]]

    coverage = stats(logs["coverage"], lambda x: x["response"] == x["expected"])
    state = stats(logs["state"], lambda x: x["eq"])
    path = stats(logs["path"], lambda x: any(y in x["expected"] for y in x["response"]))
    output = []
    for i, rec in enumerate(logs["output"][:-1]):
        for j, g in enumerate(rec["generation"]):
            output += [g["results"][0]["pass"]] * len(logs["coverage"][i]["generation"][j]["results"])
    assert len(coverage) == len(path) == len(state) == len(output)
    score = 0.0
    for c, s, p, o in zip(coverage, state, path, output):
        if c and s and p and o:
            score += 1
        elif c and s and p and not o:
            score += 0.5
        elif c and s and not p and not o:
            score += 0.25
        elif c and not s and not p and not o:
            score += 0.125
    return 100 * score / len(coverage)


# --- tests ------------------------------------------------------------------------------------------------------------

def test_the_truth_slice(truths):
    assert sorted({r["idx"] for r in truths}) == list(PROGRAMS)
    assert {r["id"] for r in truths if r["status"] != "ok"} == {"DREval/122/0", "DREval/122/1", "DREval/122/2"}


def test_the_oracle_scores_full_marks(tmp_path, params, sandbox, truths):
    backend = oracle(truths)
    m = run(tmp_path, backend, params, sandbox, limit=1)
    assert {k: m[f"reval_{k}"] for k in METRICS} == {k: 100.0 for k in METRICS}
    assert {k: m[f"reval_greedy_{k}"] for k in METRICS} == {k: 100.0 for k in METRICS}
    assert (m["reval_programs"], m["reval_pairs"], m["reval_tasks"], m["reval_excluded_pairs"],
            m["reval_excluded_tasks"], m["reval_judge_errors"], m["reval_repeats"]) == (1, 5, 10, 0, 0, 0, 1)
    # upstream's decoding: stop at [/ANSWER], 256 new tokens for direct prompts (params ask for more), one sample
    assert {c["max_new_tokens"] for c in backend.calls} == {MAX_NEW_TOKENS["direct"]} == {256}
    assert {tuple(c["stops"]) for c in backend.calls} == {("[/ANSWER]",)}
    assert {(c["top_p"], c["seed"]) for c in backend.calls} == {(params.evaluate.top_p, params.evaluate.hash_seed)}
    assert sum(c["n"] for c in backend.calls) == 3 * 10 + 5


def test_identical_path_questions_cap_even_the_oracle(tmp_path, params, sandbox, truths):
    """DREval/1 has `current_string.append(c)` on lines 19 and 22, both asked about in each of its pairs 0-3: one
    path question text, next lines 16 and 24. A model answers it once, so 1 of those 2 tasks is wrong whatever it
    says (on the whole data set 44 of 3,134 path tasks are capped so: at most 98.60% path accuracy). Their IC credit
    is 0 (C, S right, P wrong, O right); everything else stays full."""
    m = run(tmp_path, oracle(truths), params, sandbox, limit=3)
    assert (m["reval_programs"], m["reval_pairs"], m["reval_tasks"]) == (3, 14, 41)
    assert (m["reval_coverage_acc"], m["reval_coverage_f1"], m["reval_state_acc"], m["reval_output_acc"]) == \
        (100.0, 100.0, 100.0, 100.0)
    assert m["reval_path_acc"] == pytest.approx(100 * 37 / 41) and m["reval_ic"] == pytest.approx(100 * 37 / 41)


def test_garbage_scores_zero_and_coverage_defaults_to_no(tmp_path, params, sandbox, truths):
    m = run(tmp_path, garbage(), params, sandbox)
    ok = [t for r in truths if r["status"] == "ok" for t in r["truth"]]
    not_run = 100 * sum(not t["covered"] for t in ok) / len(ok)
    assert 0 < not_run < 100
    # every unparseable coverage answer is a NO (upstream's default): right exactly on the lines that never run
    assert m["reval_coverage_acc"] == pytest.approx(not_run)
    assert (m["reval_coverage_f1"], m["reval_state_acc"], m["reval_path_acc"], m["reval_output_acc"]) == (0, 0, 0, 0)
    assert m["reval_ic"] == pytest.approx(not_run / 8)      # credit 1/8 for C right and everything after it wrong
    # all five programs; DREval/122's 3 pairs (18 tasks) are neither asked nor scored, and counted
    assert (m["reval_programs"], m["reval_pairs"], m["reval_tasks"]) == (5, 17, len(ok))
    assert (m["reval_excluded_pairs"], m["reval_excluded_tasks"], m["reval_excluded_programs"]) == (3, 18, 1)
    scored = json.loads((tmp_path / "scored" / "reval_greedy.json").read_text())
    assert list(scored["metrics"]["excluded_reasons"]) == ["DREval/122"]
    assert "np.mat" in scored["metrics"]["excluded_reasons"]["DREval/122"]
    assert [e["id"] for e in scored["excluded"]] == ["DREval/122/0", "DREval/122/1", "DREval/122/2"]


def test_the_stop_is_cut_as_upstreams_backends_return_text(tmp_path, params, sandbox, truths):
    """A backend that starts its answer on a new line ("[ANSWER]\\n...\\n[/ANSWER]", as the few-shot examples do):
    upstream gets the text without the stop and its path parser keeps the empty first line: every path answer is
    wrong, the other parsers strip first and are right."""
    m = run(tmp_path, oracle(truths, lead="\n"), params, sandbox, limit=3)
    assert (m["reval_coverage_acc"], m["reval_state_acc"], m["reval_output_acc"]) == (100.0, 100.0, 100.0)
    assert m["reval_path_acc"] == 0.0
    raw = json.loads((tmp_path / "generations" / "reval_greedy.raw.json").read_text())
    assert all("[/ANSWER]" not in t and t.startswith("\n") for t in raw.values())


def test_files_follow_upstreams_layout_and_rescore(tmp_path, params, sandbox, truths):
    answers = oracle_answers(truths)
    # right on about two thirds of the questions, garbage on the rest: every IC credit level occurs
    backend = Scripted(lambda text, k, d: answers[text] if zlib.crc32(text.encode()) % 3 else "??")
    m = run(tmp_path, backend, params, sandbox, model_id="my-model")
    assert 0 < m["reval_ic"] < 100 and 0 < m["reval_path_acc"] < 100
    raw = json.loads((tmp_path / "generations" / "reval_greedy.raw.json").read_text())
    questions = reval_prompts(truths)
    assert list(raw) == [tid for tid, _, _ in questions]
    assert all(isinstance(t, str) and "[/ANSWER]" not in t for t in raw.values())
    scored = json.loads((tmp_path / "scored" / "reval_greedy.json").read_text())
    assert set(scored) == {"metrics", "tasks", "judge_errors", "excluded"}
    assert scored["metrics"]["ic"] == m["reval_ic"]

    folders = sorted(p.name for p in (tmp_path / "model_generations").iterdir())
    assert folders == [f"{t}@my-model_direct_temp0.0" for t in ("coverage", "output", "path", "state")]
    logs = upstream_logs(tmp_path, "my-model_direct_temp0.0")
    stem = next((tmp_path / "model_generations" / "state@my-model_direct_temp0.0").glob("*.jsonl")).stem
    assert len(stem) == len("25-01-31-23-59") and stem[2] == stem[5] == stem[8] == stem[11] == "-"
    for t, lines in logs.items():
        # one line per program in data order (DREval/122's pairs left out), then the metrics
        assert [rec["task_id"] for rec in lines[:-1]] == [f"DREval/{i}" for i in PROGRAMS]
        assert lines[-2]["generation"] == []
        assert [g["input_idx"] for g in lines[0]["generation"]] == [0, 1, 2, 3, 4]
        keys = {"coverage": {"generated", "response", "expected"}, "path": {"generated", "response", "expected"},
                "state": {"generated", "eq"}, "output": {"generated", "pass"}}[t]
        results = [a for rec in lines[:-1] for g in rec["generation"] for a in g["results"]]
        assert all(set(a) == keys for a in results)
        # upstream's ReplayModel feeds `generated` back in file order: upstream's question order of this type
        assert [a["generated"] for a in results] == [raw[tid] for tid, typ, _ in questions if typ == t]
    first = logs["coverage"][0]["generation"][0]["results"][0]
    assert isinstance(first["response"], bool) and isinstance(first["expected"], bool)
    path = logs["path"][0]["generation"][0]["results"][0]
    assert all(isinstance(x, int) for x in path["response"] + path["expected"])
    assert all(len(g["results"]) == 1 for rec in logs["output"][:-1] for g in rec["generation"])
    # the metrics lines are upstream's: fractions
    assert logs["coverage"][-1] == pytest.approx({"acc": m["reval_coverage_acc"] / 100,
                                                  "prec": m["reval_coverage_precision"] / 100,
                                                  "rec": m["reval_coverage_recall"] / 100,
                                                  "f1": m["reval_coverage_f1"] / 100})
    for t in ("state", "path", "output"):
        assert logs[t][-1] == pytest.approx({"acc": m[f"reval_{t}_acc"] / 100})
    # upstream's Consistency on the four files gives our IC
    assert upstream_consistency(logs) == pytest.approx(m["reval_ic"])


def test_limit_keeps_the_first_programs(tmp_path, params, sandbox, truths):
    assert [r["idx"] for r in first_programs(truths, 2)] == [0] * 5 + [1] * 4
    assert first_programs(truths, None) == truths and first_programs(truths, 99) == truths
    m = run(tmp_path, garbage(), params, sandbox, limit=2, model_id="m")
    assert (m["reval_programs"], m["reval_pairs"], m["reval_tasks"], m["reval_excluded_pairs"]) == (2, 9, 26, 0)
    raw = json.loads((tmp_path / "generations" / "reval_greedy.raw.json").read_text())
    assert {tid.split("/")[1] for tid in raw} == {"0", "1"} and len(raw) == 3 * 26 + 9
    logs = upstream_logs(tmp_path, "m_direct_temp0.0")
    assert [rec["task_id"] for rec in logs["output"][:-1]] == ["DREval/0", "DREval/1"]
    with pytest.raises(ValueError, match="limit"):
        run(tmp_path, garbage(), params, sandbox, limit=0)


def test_runs_and_repeats(tmp_path, params, sandbox, truths):
    """Each Decoding is a run with its own keys (the first one's are also the headline keys); with n samples, sample
    k of every question is repeat k (upstream repeats a whole run 5 times), scored alone, and the run's metrics are
    the mean over the repeats."""
    answers = oracle_answers(truths)
    backend = Scripted(lambda text, k, d: answers[text] if d.temperature == 0 or k == 0 else "no idea")
    m = run(tmp_path, backend, params, sandbox, runs=[GREEDY, Decoding("t0.8", 0.8, 2)], limit=1, model_id="m")
    assert all(m[f"reval_{k}"] == m[f"reval_greedy_{k}"] == 100.0 for k in METRICS)
    assert m["reval_t0.8_repeats"] == 2 and m["reval_repeats"] == 1
    assert m["reval_t0.8_state_acc"] == m["reval_t0.8_path_acc"] == m["reval_t0.8_output_acc"] == 50.0
    scored = json.loads((tmp_path / "scored" / "reval_t0.8.json").read_text())
    assert [r["metrics"]["state"] for r in scored["repeats"]] == [100.0, 0.0]
    assert scored["metrics"]["coverage"]["acc"] == pytest.approx(m["reval_t0.8_coverage_acc"])
    assert m["reval_t0.8_coverage_acc"] == pytest.approx((100 + scored["repeats"][1]["metrics"]["coverage"]["acc"]) / 2)
    raw = json.loads((tmp_path / "generations" / "reval_t0.8.raw.json").read_text())
    assert all(len(v) == 2 and v[1] == "no idea" for v in raw.values())
    for stem, ic in (("_run1", 100.0), ("_run2", scored["repeats"][1]["metrics"]["ic"])):
        assert upstream_consistency(upstream_logs(tmp_path, "m_direct_temp0.8", stem)) == pytest.approx(ic)
    assert len(list((tmp_path / "model_generations" / "state@m_direct_temp0.0").glob("*.jsonl"))) == 1


def test_cot_and_bad_backends_are_refused(tmp_path, params, sandbox):
    cot = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"cot": True})})
    with pytest.raises(RevalError, match="CoT"):
        run(tmp_path, garbage(), cot, sandbox)

    class Short(Scripted):
        def complete_many(self, prompts, d, **kw):
            return super().complete_many(prompts, d, **kw)[:-1]

    with pytest.raises(RevalError, match="answer lists"):
        run(tmp_path, Short(lambda *a: ""), params, sandbox, limit=1)
    with pytest.raises(ValueError, match="Decoding"):
        run(tmp_path, garbage(), params, sandbox, runs=[])


@pytest.mark.slow   # builds a micro model (tokenizer training) and generates for 87 questions on the CPU
def test_a_real_micro_model_end_to_end(tmp_path, params, sandbox, truths):
    from stepcode.evals.generate import TransformersBackend
    from stepcode.training.models import build_tiny_model, corpus_texts

    texts = corpus_texts([{"code": r["code"]} for r in truths] + [{"q": q[2][1]["content"]}
                                                                   for q in reval_prompts(truths)[:20]])
    model = build_tiny_model(tmp_path / "micro", texts, size="micro")
    p = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"max_new_tokens": 6})})
    m = run(tmp_path / "out", TransformersBackend(str(model)), p, sandbox, limit=2)
    assert (m["reval_programs"], m["reval_pairs"], m["reval_tasks"]) == (2, 9, 26)
    assert all(0 <= m[f"reval_{k}"] <= 100 for k in METRICS)
    raw = json.loads((tmp_path / "out" / "generations" / "reval_greedy.raw.json").read_text())
    assert len(raw) == 3 * 26 + 9 and all(isinstance(t, str) for t in raw.values())
    logs = upstream_logs(tmp_path / "out", "micro_direct_temp0.0")
    assert upstream_consistency(logs) == pytest.approx(m["reval_ic"])
    assert (tmp_path / "out" / "scored" / "reval_greedy.json").exists()


@pytest.mark.slow   # the whole data set: the truth of all 690 pairs (~5 s on 2 cores) and 10,089 questions scored
def test_the_whole_data_set_with_garbage(tmp_path, params, sandbox):
    full = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={
        "reval_dir": str(REVAL_DIR), "reval_cache_dir": str(tmp_path / "cache")})})
    m = run(tmp_path / "out", garbage(), full, sandbox, model_id="m")
    assert (m["reval_programs"], m["reval_pairs"], m["reval_tasks"]) == (154, 687, 3134)
    assert (m["reval_excluded_pairs"], m["reval_excluded_tasks"], m["reval_excluded_programs"]) == (3, 18, 1)
    # 1,682 of the 3,134 lines run (test_evals_reval): NO is right on the other 1,452
    assert m["reval_coverage_acc"] == pytest.approx(100 * 1452 / 3134)
    logs = upstream_logs(tmp_path / "out", "m_direct_temp0.0")
    assert [rec["task_id"] for rec in logs["state"][:-1]] == [f"DREval/{i}" for i in range(154)]
    assert logs["state"][122]["generation"] == []
    assert upstream_consistency(logs) == pytest.approx(m["reval_ic"])
    raw = json.loads((tmp_path / "out" / "generations" / "reval_greedy.raw.json").read_text())
    assert len(raw) == 3 * 3134 + 687
