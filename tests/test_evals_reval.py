"""REval: the tracer's truths on hand-written programs, the official parsing quirks, IC, prompts, and the real
truth build (counts, exclusions with reasons, caching). Expected values are worked out by hand in the comments."""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
from pathlib import Path

import pytest

from stepcode.config import load_params
from stepcode.evals import reval
from stepcode.evals.reval import (
    REVAL_RUNNERS,
    RevalError,
    compute_truths,
    coverage_metrics,
    ic_credit,
    load_reval,
    output_answer,
    parse_coverage,
    parse_path,
    parse_state,
    path_lines,
    penalized,
    prompt_text,
    read_truths,
    report_path,
    reval_prompts,
    reval_truth,
    score_reval,
    task_id,
)
from stepcode.sandbox.engine import Sandbox

ROOT = Path(__file__).resolve().parents[1]
REVAL_DIR = ROOT / "data" / "benchmarks" / "reval"

LOOP = """def f(n):
    s = 0
    for i in range(n):
        s += i
    if n < 0:
        return -1
    return s"""
# f(3) states, by line: 2, 3, 4, 3, 4, 3, 4, 3, 5, 7 (the for header fires again after each body run and once more
# when the iterator is exhausted; line 6 never runs).

RAISES = """def g(x):
    if x == 0:
        raise ValueError("zero")
    return 10 // x

def f(a):
    try:
        y = g(a)
    except ValueError:
        y = -1
    return y"""
# f(0): 7, 8, [g] 2, 3 (raise; its exception and return events merge into 3), then the exception event in f's
# frame at line 8 opens a NEW state with empty locals, 9, 10, 11.
# f(5): 7, 8, [g] 2, 4, 11 — f's line 8 does not fire again after g returns.

COUNTER = """class Counter:
    def __init__(self):
        self.n = 0

    def add(self, k):
        self.n += k
        return self.n"""
COUNTER_TEST = """import unittest


class CounterTestAdd(unittest.TestCase):
    def setUp(self):
        self.c = Counter()

    def test_add(self):
        self.assertEqual(self.c.add(2), 2)

    def test_never_run(self):
        self.assertEqual(self.c.add(5), 5)


class CounterTestTwice(unittest.TestCase):
    def test_twice(self):
        c = Counter()
        c.add(1)
        self.assertEqual(c.add(2), 3)
"""


def pair(idx, kind, code, input_idx, inp, tasks, *, entry="f", test=None, output_pred="assert f() == ??"):
    return {"id": f"DREval/{idx}/{input_idx}", "idx": idx, "input_idx": input_idx, "kind": kind, "entry_point": entry,
            "code": code, "test": test, "input": inp, "output_pred": output_pred,
            "tasks": [{"lineno": line, "var": var} for line, var in tasks]}


HAND_PAIRS = [
    pair(0, "humaneval", LOOP, 0, "(3,)", [(4, "s"), (3, "i"), (2, "s"), (6, "s"), (7, "s"), (7, "(n, s)")],
         output_pred="assert f(3) == ??"),
    pair(1, "humaneval", RAISES, 0, "(0,)", [(8, "y"), (3, "a"), (2, "x"), (10, "y"), (4, "x")],
         output_pred="assert f(0) == ??"),
    pair(1, "humaneval", RAISES, 1, "(5,)", [(8, "y"), (11, "y"), (3, "x")], output_pred="assert f(5) == ??"),
    pair(2, "classeval", COUNTER, 0, "assertEqual(self.c.add(2), 2)\n", [(3, "self.n"), (6, "self.n"), (7, "k")],
         entry="Counter", test=COUNTER_TEST, output_pred="assertEqual(self.c.add(2), ??)"),
    pair(2, "classeval", COUNTER, 1, "c = Counter()\nc.add(1)\nassertEqual(c.add(2), 3)\n",
         [(3, "self.n"), (7, "self.n"), (6, "self.n")], entry="Counter", test=COUNTER_TEST,
         output_pred="c = Counter()\nc.add(1)\nassertEqual(c.add(2), ??)"),
]


@pytest.fixture(scope="module")
def params():
    p = load_params(ROOT / "params.yaml")   # the repository's, not whatever params.yaml the cwd holds (if any)
    return p.model_copy(update={"evaluate": p.evaluate.model_copy(update={"check_timeout_s": 1.0})})


@pytest.fixture(scope="module")
def sandbox(params):
    with Sandbox(params.sandbox.model_copy(update={"timeout_s": 30.0, "cpu_s": 30}), workers=2,
                 runners=REVAL_RUNNERS) as sb:
        yield sb


@pytest.fixture(scope="module")
def hand_truths(sandbox):
    return compute_truths(HAND_PAIRS, sandbox, 10.0)


def truth(rows, pair_id, j):
    return next(r for r in rows if r["id"] == pair_id)["truth"][j]


def ints(*values):
    return [{"type": "int", "repr": repr(v)} for v in values]


# --- the tracer ------------------------------------------------------------------------------------------------------

def test_loop_truths(hand_truths):
    assert all(r["status"] == "ok" for r in hand_truths), [r["reason"] for r in hand_truths]
    # s after each run of line 4 is read at the following line-3 state: 0, 1, 3
    assert truth(hand_truths, "DREval/0/0", 0) == {"covered": True, "next_lines": [3], "state": ints(0, 1, 3)}
    # i after line 3: at 4, 4, 4 (i = 0, 1, 2), then at line 5 (i still 2); values are kept distinct
    assert truth(hand_truths, "DREval/0/0", 1) == {"covered": True, "next_lines": [4, 5], "state": ints(0, 1, 2)}
    assert truth(hand_truths, "DREval/0/0", 2) == {"covered": True, "next_lines": [3], "state": ints(0)}
    assert truth(hand_truths, "DREval/0/0", 3) == {"covered": False, "next_lines": [-1], "state": None}
    # the return line is the last state: it has no successor (-1) and stands for its own "after" locals
    assert truth(hand_truths, "DREval/0/0", 4) == {"covered": True, "next_lines": [-1], "state": ints(3)}
    assert truth(hand_truths, "DREval/0/0", 5)["state"] == [{"type": "tuple", "repr": "(3, 3)"}]


def test_exception_and_call_truths(hand_truths):
    # f(0): line 8 is followed by g's line 2, and (after the exception) by the except clause on line 9
    assert truth(hand_truths, "DREval/1/0", 0) == {"covered": True, "next_lines": [2, 9], "state": None}
    # after the raise comes the new, empty state that the exception event opened in f: `a` is not there
    assert truth(hand_truths, "DREval/1/0", 1) == {"covered": True, "next_lines": [8], "state": None}
    assert truth(hand_truths, "DREval/1/0", 2) == {"covered": True, "next_lines": [3], "state": ints(0)}
    assert truth(hand_truths, "DREval/1/0", 3) == {"covered": True, "next_lines": [11], "state": ints(-1)}
    assert truth(hand_truths, "DREval/1/0", 4) == {"covered": False, "next_lines": [-1], "state": None}
    # f(5): y after line 8 is looked up in g's next state, where there is no y: Nil (upstream's semantics)
    assert truth(hand_truths, "DREval/1/1", 0) == {"covered": True, "next_lines": [2], "state": None}
    assert truth(hand_truths, "DREval/1/1", 1) == {"covered": True, "next_lines": [-1], "state": ints(2)}
    assert truth(hand_truths, "DREval/1/1", 2)["covered"] is False


def test_classeval_truths(hand_truths):
    first, second = [r for r in hand_truths if r["idx"] == 2]
    # setUp builds the Counter before tracing starts: __init__ (line 3) is not covered
    assert first["truth"] == [{"covered": False, "next_lines": [-1], "state": None},
                              {"covered": True, "next_lines": [7], "state": ints(2)},
                              {"covered": True, "next_lines": [-1], "state": ints(2)}]
    assert first["setup_source"] == "    def setUp(self):\n        self.c = Counter()\n"
    # the second test class builds its own Counter inside the traced call: 3, 6, 7, 6, 7
    assert second["truth"] == [{"covered": True, "next_lines": [6], "state": ints(0)},
                               {"covered": True, "next_lines": [-1, 6], "state": ints(1, 3)},
                               {"covered": True, "next_lines": [7], "state": ints(1, 3)}]
    assert second["setup_source"] is None


def test_failures_are_statuses_per_pair(sandbox):
    rows = compute_truths([
        pair(5, "humaneval", "import not_a_module\ndef f():\n    return 1", 0, "(1,)", [(3, "x")]),
        pair(6, "humaneval", "def f(x):\n    return 1 // x", 0, "(0,)", [(2, "x")]),
        pair(6, "humaneval", "def f(x):\n    return 1 // x", 1, "(1,)", [(2, "x")]),
        pair(7, "humaneval", "def f(x):\n    while True:\n        x += 1", 0, "(0,)", [(3, "x")]),
    ], sandbox, 0.5)
    assert [(r["status"], r["reason"]) for r in rows[:3]] == [
        ("load_error", "ModuleNotFoundError: No module named 'not_a_module'"),
        ("runtime_error", "ZeroDivisionError: integer division or modulo by zero"),
        ("ok", None)]
    assert rows[3]["status"] == "timeout" and rows[3]["truth"] is None


# --- parsing quirks (pure) -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("YES", True), ("yes", True), ("[ANSWER]\nNO\n[/ANSWER]", False), ("[ANSWER]\nYes, it is\n[/ANSWER]", True),
    ("YES, NO", True),            # only the first 3 characters count
    ("NOYES", False), ("", False), ("Maybe", False), ("[ANSWER]\n\n[/ANSWER]", False),
    ("  [ANSWER] yes [/ANSWE", True),   # a truncated closing tag is cut too
])
def test_parse_coverage(text, expected):
    assert parse_coverage(text) is expected


def test_parse_coverage_cot_needs_the_closing_thought():
    assert parse_coverage("[THOUGHT] ... [ANSWER]YES[/ANSWER]", cot=True) is False
    assert parse_coverage("[THOUGHT] ... [/THOUGHT][ANSWER]YES[/ANSWER]", cot=True) is True


@pytest.mark.parametrize("text, expected", [
    ("[ANSWER]\n1; int\n[/ANSWER]", ("1", "int")),
    ("'a;b'; str", ("'a;b'", "str")),               # split at the LAST ;
    ("5", None),                                     # no ; at all: ERROR even if the value is right
    ("Nil", "Nil"), ("nil", "Nil"), ("[Nil]", "Nil"), ("Nil; NoneType", "Nil"),
    ("[1, 2]; List[int]", ("[1, 2]", "list")),
    ("(1, 'a'); Tuple[int, str]", ("(1, 'a')", "tuple")),
    ("(1, 2); int, int", ("(1, 2)", "tuple")),       # a comma in the type means tuple
    ("3; <class 'int'>", ("3", "int")), ("7; Integer", ("7", "int")), ("'x'; String", ("'x'", "str")),
    ("\u2018x\u2019; str", ("'x'", "str")),          # curly quotes are straightened
])
def test_parse_state(text, expected):
    assert parse_state(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("[ANSWER]\nreturn ans\n[/ANSWER]", "return ans"),
    ("[ANSWER]\n    return ans   \nsecond line\n[/ANSWER]", "return ans"),
    ("return ans", "return ans"),
    ("\nreturn ans\n", -2),                        # untagged text is not stripped first: the first line is empty
    ("-1", -1), ("[ANSWER]-1[/ANSWER]", -1), ("", -2),
])
def test_parse_path(text, expected):
    assert parse_path(text) == expected


def test_path_answers_are_matched_by_stripped_source_text():
    code = "def f(x):\n    x += 1\n    if x:\n        x += 1\n    return x"
    assert path_lines("x += 1", code) == [2, 4]                 # every line with that text
    assert path_lines("return x", code) == [5]
    assert path_lines("5", code) == [-2]                        # a line number is not an answer
    assert path_lines("return x  # done", code) == [-2]         # nor is text with a comment
    assert path_lines(-1, code) == [-1]


def test_output_answers_padding_and_penalties():
    question = "c = Counter()\nc.add(1)\nassertEqual(c.add(2), ??)"
    # fewer lines than the question: its first lines are put in front
    assert output_answer("[ANSWER]\nassertEqual(c.add(2), 3)\n[/ANSWER]", question) == \
        "c = Counter()\nc.add(1)\nassertEqual(c.add(2), 3)"
    assert output_answer("assert f(3) == 3", "assert f(3) == ??") == "assert f(3) == 3"
    assert output_answer("no thought", "assert f(3) == ??", cot=True) == "assert False"
    assert penalized("assert True", "assert f(3) == ??")
    assert penalized("c = 1\nassertTrue(True)", "assertTrue(??)")
    assert penalized("x = 1", "assert f(3) == ??")                            # fewer asserts than asked
    assert not penalized("assert f(3) == 3", "assert f(3) == ??")


# --- metrics ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, credit", [
    ((1, 1, 1, 1), 1.0), ((1, 1, 1, 0), 0.5), ((1, 1, 0, 0), 0.25), ((1, 0, 0, 0), 0.125), ((0, 0, 0, 0), 0.0),
    ((0, 1, 1, 1), 0.0), ((1, 0, 1, 1), 0.0), ((1, 1, 0, 1), 0.0), ((1, 0, 0, 1), 0.0),
])
def test_ic_credit(flags, credit):
    assert ic_credit(*map(bool, flags)) == credit


def test_coverage_metrics():
    # tp=2, fp=1, fn=1, tn=1: precision 2/3, recall 2/3, F1 2/3, accuracy 3/5
    m = coverage_metrics([(True, True), (True, True), (True, False), (False, True), (False, False)])
    assert m == pytest.approx({"acc": 60.0, "precision": 200 / 3, "recall": 200 / 3, "f1": 200 / 3})
    assert coverage_metrics([(False, True)])["f1"] == 0.0          # no positive prediction: 0, not a crash


def answers_for(rows, overrides):
    """Every task answered wrong-ish by default (NO / ERROR / -2 / a wrong assert), then the overrides."""
    gens = {}
    for r in rows:
        for j in range(len(r["tasks"])):
            gens[task_id(r, j, "coverage")] = "NO"
            gens[task_id(r, j, "state")] = "no semicolon"
            gens[task_id(r, j, "path")] = ""
        gens[task_id(r, None, "output")] = "assert f(0) == 'wrong'"
    gens.update(overrides)
    return gens


def test_score_reval_hand_checked(hand_truths, params, sandbox):
    rows = [r for r in hand_truths if r["id"] in ("DREval/0/0", "DREval/2/1")]
    gens = answers_for(rows, {
        # DREval/0/0 task 0 (line 4, s): C, S, P right, output right -> credit 1
        "DREval/0/0/0/coverage": "[ANSWER]\nYES\n[/ANSWER]", "DREval/0/0/0/state": "[ANSWER]\n1; int\n[/ANSWER]",
        "DREval/0/0/0/path": "[ANSWER]\nfor i in range(n):\n[/ANSWER]",
        "DREval/0/0/output": "[ANSWER]\nassert f(3) == 3\n[/ANSWER]",
        # task 1 (line 3, i): C right, S wrong type (1.0 is a float, the values are ints), P right -> credit 0
        "DREval/0/0/1/coverage": "YES", "DREval/0/0/1/state": "1.0; float", "DREval/0/0/1/path": "[ANSWER]\nif n < 0:",
        # task 3 (line 6, not run): NO is right, Nil is right, -1 is right, output right -> 1
        "DREval/0/0/3/state": "Nil", "DREval/0/0/3/path": "-1",
        # DREval/2/1 (output wrong): task 0 C, S right (value 0), path wrong -> 0.25;
        "DREval/2/1/0/coverage": "YES", "DREval/2/1/0/state": "0; int",
        # task 1: C, S ("3" is one of the values 1 and 3), P ("self.n += k" follows) right -> 0.5
        "DREval/2/1/1/coverage": "YES", "DREval/2/1/1/state": "3; int", "DREval/2/1/1/path": "self.n += k",
        # task 2: C right only -> 0.125
        "DREval/2/1/2/coverage": "YES", "DREval/2/1/2/state": "'3'; str",
        # `self.assert...` in an answer becomes `self.self.assert...`: a failure, as upstream
        "DREval/2/1/output": "c = Counter()\nc.add(1)\nself.assertEqual(c.add(2), 3)",
    })
    result = score_reval(rows, gens, params=params, sandbox=sandbox)
    m = result["metrics"]
    # coverage: DREval/0/0 truths T,T,T,F,T,T; answers Y,Y,N,N,N,N -> right on tasks 0,1,3 (3/6); DREval/2/1 all
    # covered, answered Y,Y,Y (3/3) -> 6/9; tp=5, fp=0, fn=3 -> precision 1, recall 5/8, F1 10/13
    assert m["coverage"] == pytest.approx({"acc": 600 / 9, "precision": 100.0, "recall": 62.5, "f1": 1000 / 13})
    # state right: 0/0 task 0 ("1" in [0, 1, 3]) and task 3 (Nil); 2/1 tasks 0 and 1 -> 4/9
    assert m["state"] == pytest.approx(400 / 9)
    # path right: 0/0 tasks 0 (line 3 follows line 4), 1 (line 5 is among {4, 5}), 3 (-1); 2/1 task 1 -> 4/9
    assert m["path"] == pytest.approx(400 / 9)
    assert m["output"] == 50.0
    # IC over 9 tasks: 1 + 0 + (task 2: C wrong -> 0) + 1 + 0 + 0 + 0.25 + 0.5 + 0.125
    assert m["ic"] == pytest.approx(100 * 2.875 / 9)
    assert (m["n_pairs"], m["n_tasks"], m["excluded_pairs"], m["judge_errors"]) == (2, 9, 0, 0)
    by_id = {e["task_id"]: e for e in result["tasks"]}
    assert by_id["DREval/0/0/0/path"]["response"] == [3] and by_id["DREval/0/0/0/path"]["correct"]
    assert by_id["DREval/0/0/1/state"]["correct"] is False


def test_state_and_output_judging_in_the_sandbox(hand_truths, params, sandbox):
    rows = [r for r in hand_truths if r["id"] == "DREval/1/0"]
    gens = answers_for(rows, {
        "DREval/1/0/3/state": "-1; int",      # y after line 10 is -1
        "DREval/1/0/2/state": "0.0; int",     # a float value with type int: the value's type must match
        "DREval/1/0/output": "while True:\n    pass\nassert f(0) == -1",   # runs out of time: a failure
    })
    result = score_reval(rows, gens, params=params, sandbox=sandbox)
    by_id = {e["task_id"]: e["correct"] for e in result["tasks"]}
    assert by_id["DREval/1/0/3/state"] and not by_id["DREval/1/0/2/state"]
    assert not by_id["DREval/1/0/output"]
    gens["DREval/1/0/output"] = "assert f(0) == -1"
    assert score_reval(rows, gens, params=params, sandbox=sandbox)["metrics"]["output"] == 100.0
    gens["DREval/1/0/output"] = "assert f(0) == f(0)"     # a tautology that avoids the penalty patterns passes
    assert score_reval(rows, gens, params=params, sandbox=sandbox)["metrics"]["output"] == 100.0


def test_generations_must_match_the_tasks(hand_truths, params, sandbox):
    rows = [r for r in hand_truths if r["id"] == "DREval/0/0"]
    gens = answers_for(rows, {})
    del gens["DREval/0/0/0/state"]
    with pytest.raises(RevalError, match="1 missing"):
        score_reval(rows, gens, params=params, sandbox=sandbox)
    with pytest.raises(RevalError, match="1 unknown"):
        score_reval(rows, dict(answers_for(rows, {}), typo="YES"), params=params, sandbox=sandbox)


# --- prompts ---------------------------------------------------------------------------------------------------------

def test_templates_are_the_official_ones_byte_for_byte():
    # sha256 of upstream prompts/direct_{task}.txt at r-eval/REval@2f148b9 (995, 1857, 1979, 972 characters)
    expected = {"coverage": "1a96d57e3d7eec08c8b757381ba7d9d3ee4b77dfd631a009aae685f504a7629d",
                "state": "eea297983e6bafd51ed950d599efe7151eba01815e744efe243eae647074e353",
                "path": "ecf6b4df7c14f2aac495e943a5c531a7f2dca554455440415fccafca08e3d30e",
                "output": "4bf741cf64666b4468684f4c08a06a0026586173d1d1df6af138793ebd522ff9"}
    assert {k: hashlib.sha256(v.encode()).hexdigest() for k, v in reval.TEMPLATES.items()} == expected


def test_prompt_details(hand_truths):
    loop = next(r for r in hand_truths if r["id"] == "DREval/0/0")
    cov = prompt_text(loop, "coverage", 0)
    assert cov.endswith("[PYTHON]\n" + LOOP + "\nf(3)\n[/PYTHON]\n[QUESTION]\nIs Line 4 (        s += i) executed "
                        "when f(3) is called?\n[/QUESTION]\n[ANSWER]")
    assert "1\tdef f(n):\n2\t    s = 0\n" in prompt_text(loop, "path", 0)      # HumanEval path: numbered lines
    counter = next(r for r in hand_truths if r["id"] == "DREval/2/0")
    # the setUp quirk: coverage/state leave the first body line uncommented, path/output comment every line
    assert "\n# setup code executed previously\n        self.c = Counter()\n# \nassertEqual(self.c.add(2), 2)\n" \
           "[/PYTHON]" in prompt_text(counter, "state", 0)
    assert "\n# setup code executed previously\n#         self.c = Counter()\n# \nassertEqual" in \
           prompt_text(counter, "path", 0)
    assert "#         self.c = Counter()\n# \n# Test code starts here. Only write the completed test code in your " \
           "answer.\nassertEqual(self.c.add(2), ??)\n[/PYTHON]\n[ANSWER]" in prompt_text(counter, "output")
    assert "when the above test code is called" in prompt_text(counter, "coverage", 1)
    prompts = reval_prompts(hand_truths)
    assert len(prompts) == 3 * 20 + 5   # 20 atomic tasks in 5 pairs
    assert prompts[0][2][0]["content"].startswith("You are an expert at Python programming")
    with pytest.raises(RevalError, match="CoT"):
        reval_prompts(hand_truths, cot=True)


# --- the real data -------------------------------------------------------------------------------------------------

def test_load_reval_counts_and_validation(tmp_path):
    pairs = load_reval(REVAL_DIR)
    assert len(pairs) == 690 and sum(len(p["tasks"]) for p in pairs) == 3152
    assert sum(p["kind"] == "humaneval" for p in pairs) == 396
    lines = (REVAL_DIR / "DREval_tasks.jsonl").read_text().splitlines()
    spec = json.loads(lines[0])
    spec["tasks"][0]["task"][0]["var"] = "a + b"
    (tmp_path / "DREval_tasks.jsonl").write_text("\n".join([json.dumps(spec)] + lines[1:]))
    shutil.copy(REVAL_DIR / "DREval_data.jsonl", tmp_path)
    with pytest.raises(RevalError, match="DREval/0 input 0: state variable 'a \\+ b'"):
        load_reval(tmp_path)
    with pytest.raises(RevalError, match="no such file"):
        load_reval(tmp_path / "missing")


# The one program the project's environment cannot run: KappaCalculator calls np.mat, which numpy 2 removed
# (upstream ran numpy 1; we stay on numpy 2). Its 3 pairs hold 18 tasks. Everything else runs, DREval/117 (gensim,
# bs4 + lxml) and DREval/149 (gensim) included: those packages are project dependencies.
NP_MAT = "runtime_error: AttributeError: `np.mat` was removed in the NumPy 2.0 release. Use `np.asmatrix` instead."
EXCLUDED = {"DREval/122/0", "DREval/122/1", "DREval/122/2"}
NEEDS_PACKAGES = {117: 4, 149: 4}       # program -> its pairs in DREval_tasks.jsonl


def test_third_party_programs_run_under_tight_process_limits(params):
    """gensim imports scipy, and numpy's and scipy's OpenBLAS each start a thread per core at import: past the
    sandbox's RLIMIT_NPROC (or, with many cores, its RLIMIT_AS) OpenBLAS raised SIGINT and the import died as a
    KeyboardInterrupt — on 2 cores with processes=2 it did. The runner pins those pools to one thread."""
    pairs = [p for p in load_reval(REVAL_DIR) if p["idx"] in NEEDS_PACKAGES]
    limits = params.sandbox.model_copy(update={"timeout_s": 60.0, "cpu_s": 60, "processes": 2})
    with Sandbox(limits, workers=2, runners=REVAL_RUNNERS) as sb:
        rows = compute_truths(pairs, sb, 30.0)
    assert [(r["id"], r["status"], r["reason"]) for r in rows if r["status"] != "ok"] == []
    assert {idx: sum(r["idx"] == idx for r in rows) for idx in NEEDS_PACKAGES} == NEEDS_PACKAGES


@pytest.fixture(scope="module")
def real(tmp_path_factory, params):
    """(params, truth path) of the real build, made once for the module: ~7 s of CPU, 8-12 s on 2 cores (about 4 s of
    it importing gensim for DREval/117 and /149; 5 s before they ran)."""
    if platform.python_version_tuple()[:2] != ("3", "11"):
        pytest.skip("REval truths are pinned to Python 3.11")
    p = params.model_copy(update={"evaluate": params.evaluate.model_copy(
        update={"reval_dir": str(REVAL_DIR), "reval_cache_dir": str(tmp_path_factory.mktemp("reval-cache"))})})
    return p, reval_truth(p)


@pytest.mark.slow  # the `real` fixture: all 690 truths in the sandbox, ~8 s on 2 cores (once)
def test_full_truth_build_excludes_only_dreval_122(real):
    p, path = real
    report = json.loads(report_path(path).read_text())
    assert {e["id"] for e in report["excluded"]} == EXCLUDED
    assert {(e["status"], e["reason"]) for e in report["excluded"]} == {tuple(NP_MAT.split(": ", 1))}
    assert report["excluded_reasons"] == {"DREval/122": NP_MAT}
    assert (report["pairs"], report["pairs_ok"], report["pairs_excluded"]) == (690, 687, 3)
    assert (report["tasks"], report["tasks_ok"], report["tasks_excluded"]) == (3152, 3134, 18)
    assert report["packages"]["gensim"] and report["packages"]["beautifulsoup4"] and report["packages"]["lxml"]
    rows = read_truths(path)
    for idx, n_pairs in NEEDS_PACKAGES.items():
        mine = [r for r in rows if r["idx"] == idx]
        assert len(mine) == n_pairs and all(r["status"] == "ok" and r["truth"] for r in mine), \
            [(r["id"], r["reason"]) for r in mine]
        assert all(len(r["truth"]) == len(r["tasks"]) for r in mine)
    # Values only these packages make: bs4's ResultSet (117), numpy floats from gensim's unitvec (149).
    types = {v["type"] for r in rows if r["idx"] in NEEDS_PACKAGES for t in r["truth"] for v in t["state"] or []}
    assert {"bs4.element.ResultSet", "numpy.float64"} <= types


@pytest.mark.slow  # the `real` fixture: all 690 truths in the sandbox, ~8 s on 2 cores (once)
def test_full_truth_build_is_reported_and_cached(real):
    p, path = real
    report = json.loads(report_path(path).read_text())
    assert all(e["status"] != "ok" and e["reason"] for e in report["excluded"])
    assert report["pairs"] == 690 and report["pairs_ok"] + report["pairs_excluded"] == 690
    assert report["tasks"] == 3152 and report["tasks_ok"] + report["tasks_excluded"] == 3152
    assert report["python"] == platform.python_version()
    rows = read_truths(path)
    ok = [t for r in rows if r["status"] == "ok" for t in r["truth"]]
    counts = (sum(t["covered"] for t in ok), sum(t["next_lines"] == [-1] for t in ok),
              sum(t["state"] is None for t in ok))
    # The notes' reference run (3.11.7, numpy 1.26, gensim, bs4: nothing excluded) found 1,694 executed lines,
    # 1,839 path truths that are only -1 and 1,581 Nil states. DREval/122 (excluded here) holds 12, 7 and 7 of
    # those (traced under numpy 1.26 outside the project), so the other 687 pairs match the reference exactly.
    assert counts == (1694 - 12, 1839 - 7, 1581 - 7)
    assert report["lines_executed"] == counts[0]
    # a second call is a cache hit: same file, not rewritten
    mtime = path.stat().st_mtime_ns
    assert reval_truth(p) == path and path.stat().st_mtime_ns == mtime
    # real prompts: one per atomic task and type, plus one output question per pair
    assert len(reval_prompts(rows)) == 3 * report["tasks_ok"] + report["pairs_ok"]


@pytest.mark.slow  # the `real` fixture: all 690 truths in the sandbox, ~8 s on 2 cores (once)
def test_exclusions_and_reasons_reach_the_metrics(real, sandbox):
    """What a user sees next to the scores: how many pairs/tasks/programs were left out, and why."""
    p, path = real
    rows = [r for r in read_truths(path) if r["idx"] == 122 or r["id"] == "DREval/0/0"]
    result = score_reval(rows, answers_for([r for r in rows if r["status"] == "ok"], {}), params=p, sandbox=sandbox)
    m = result["metrics"]
    assert (m["n_pairs"], m["excluded_pairs"], m["excluded_tasks"], m["excluded_programs"]) == (1, 3, 18, 1)
    assert m["excluded_reasons"] == {"DREval/122": NP_MAT}
    assert [e["id"] for e in result["excluded"]] == sorted(EXCLUDED)
    assert all(e["reason"] and e["tasks"] == 6 for e in result["excluded"])


def test_the_cache_key_follows_the_inputs_and_python_is_pinned(tmp_path, params):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("DREval_data.jsonl", "DREval_tasks.jsonl"):
        (data / name).write_text((REVAL_DIR / name).read_text().splitlines()[0] + "\n")   # program 0 only
    p = params.model_copy(update={"evaluate": params.evaluate.model_copy(
        update={"reval_dir": str(data), "reval_cache_dir": str(tmp_path / "cache")})})
    if platform.python_version_tuple()[:2] == ("3", "11"):
        first = reval_truth(p)
        assert len(read_truths(first)) == 5
        (data / "DREval_data.jsonl").write_text((data / "DREval_data.jsonl").read_text().replace("0.3", "0.4", 1))
        assert reval_truth(p) != first
    other = "3.10" if platform.python_version_tuple()[:2] != ("3", "10") else "3.12"
    with pytest.raises(RevalError, match="pinned to Python"):
        reval_truth(p.model_copy(update={"evaluate": p.evaluate.model_copy(update={"reval_python": other})}))


@pytest.mark.slow
def test_oracle_answers_score_full_marks_where_upstream_can_parse_them(real, sandbox):
    p, path = real
    rows = [r for r in read_truths(path) if r["status"] == "ok"]
    gens = {}
    for r in rows:
        lines = r["code"].split("\n")
        for j, t in enumerate(r["truth"]):
            gens[task_id(r, j, "coverage")] = "[ANSWER]\n" + ("YES" if t["covered"] else "NO") + "\n[/ANSWER]"
            n = t["next_lines"][0]
            gens[task_id(r, j, "path")] = "[ANSWER]\n" + ("-1" if n == -1 else lines[n - 1].strip()) + "\n[/ANSWER]"
            v = t["state"]
            gens[task_id(r, j, "state")] = "[ANSWER]\n" + ("Nil" if v is None else f"{v[0]['repr']}; {v[0]['type']}")
        gens[task_id(r, None, "output")] = r["output_pred"].replace("??", "None")
    result = score_reval(rows, gens, params=p, sandbox=sandbox)
    m = result["metrics"]
    assert (m["coverage"]["acc"], m["coverage"]["f1"], m["path"], m["judge_errors"]) == (100.0, 100.0, 100.0, 0)
    # A state answer written as the value's repr is right unless upstream's parser cannot read that repr back:
    # datetime (dateutil can't parse a constructor call), ndarray and deque (no such names in scope), classes;
    # or cannot find its type: upstream lowercases the type name before `locate`, so a class spelled with
    # capitals (DREval/117's bs4.element.ResultSet, NavigableString) is never found and the answer is ERROR.
    unreadable = ("datetime.datetime(", "array(", "deque(", "<class ")
    wrong = [e for e in result["tasks"] if e["type"] == "state" and not e["correct"]]
    assert wrong and all(any(u in e["response"][0] for u in unreadable)
                         or e["expected"][0]["type"] != e["expected"][0]["type"].lower() for e in wrong)
    assert any(e["idx"] == 117 for e in wrong)
    assert m["state"] > 98.0
