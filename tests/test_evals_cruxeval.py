"""CRUXEval scoring: pass@k, extraction, skip rules, prompts, a hostile prediction, agreement with the published
scored files, and the `stepcode score` CLI. Every check runs in the real sandbox."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from stepcode.evals import cruxeval, official
from stepcode.evals.passk import mean_pass_at_k, pass_at_k
from stepcode.evals.scoring import combine, result_from_verdicts, score

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "benchmarks" / "cruxeval" / "cruxeval.jsonl"            # ships with the repository
FIXTURE = ROOT / "tests" / "fixtures" / "cruxeval_published"    # committed subsets of published files (README there)
# The developers' reference shelf beside the repository; users never have it, so only the full sweep reads it.
SHARED = Path(__file__).resolve().parents[2] / "shared"
PUBLISHED = SHARED / "reference-generations" / "cruxeval" / "evaluation_results"

PROBLEM = {"id": "sample_0", "code": "def f(x):\n    return x + 1", "input": "1", "output": "2"}


@pytest.fixture(scope="module")
def sandbox():
    from stepcode.sandbox.engine import Sandbox

    with Sandbox(hash_seeds=(0,)) as sb:
        yield sb


# --- pass@k ------------------------------------------------------------------------------------------------------

def test_pass_at_k_matches_hand_computed_values():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)        # 1 - C(7,5)/C(10,5)
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 6, 5) == 1.0                                  # n - c < k
    assert pass_at_k(3, 0, 5) == 1.0                                   # upstream quirk: n < k gives 1.0
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)
    assert pass_at_k(2000, 1000, 100) == pytest.approx(1.0)            # large n: no overflow
    assert mean_pass_at_k([[True, False], [False, False]], 1) == pytest.approx(25.0)


@pytest.mark.parametrize("n, c, k", [(0, 0, 1), (5, 6, 1), (5, -1, 1), (5, 1, 0)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


# --- extraction and skip rules -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, cot, expected", [
    ("assert f(17) == 17\n", False, "17"),
    ("assert f('a') == 'ab' == 'c'", False, "'ab'"),                      # only between the 1st and 2nd ==
    ("17", False, "17"),
    ("assert f(1) == 2\n[/ANSWER]\nassert f(3) == 4", False, "2"),      # cut at the stop string
    ("f is called; x == 1 so...\n[/THOUGHT]\n[ANSWER]\nassert f(1) == [1, 2]\n", True, "[1, 2]"),
    ("no answer tag, x == 3 here", True, "3 here"),
])
def test_output_extraction(text, cot, expected):
    assert cruxeval.extract(text, "output", cot) == expected


@pytest.mark.parametrize("text, cot, expected", [
    ("assert f([1, 2]) == 3", False, "f([1, 2])"),
    ("assert f('x') == 'y'\n", False, "f('x')"),
    ("[THOUGHT]\nwe need f(??) == 17\n[/THOUGHT]\n[ANSWER]\nassert f(16) == 17\n", True, "f(16)"),
    ("I cannot tell", False, "I cannot tell"),
])
def test_input_extraction(text, cot, expected):
    assert cruxeval.extract(text, "input", cot) == expected


def test_copied_input_rule():
    assert cruxeval.check_program(PROBLEM, "f(1)", "output") is None            # repeats the call
    assert cruxeval.check_program(PROBLEM, "2", "input") is None                # not a call
    assert cruxeval.check_program(PROBLEM, "2", "output") == "def f(x):\n    return x + 1\nassert 2 == 2"
    assert cruxeval.check_program(PROBLEM, "f(1)", "input") == "def f(x):\n    return x + 1\nassert 2 == f(1)"


def test_skip_rules_combine_as_documented():
    assert combine([None, False, True], "drop") == [False, True]
    assert combine([None, False, False], "drop") == [False, False, False]   # no True: padded to full length
    assert combine([None, False, True], "false") == [False, False, True]
    assert combine([None, False], "lcb") == [False]                          # lcb pads only when all dropped
    assert combine([None, None], "lcb") == [False, False]
    with pytest.raises(ValueError, match="skip rule"):
        combine([True], "keep")


# --- prompts -----------------------------------------------------------------------------------------------------

def test_prompts_end_with_the_official_slots():
    p = {"code": "def f(d):\n    return {k: v for k, v in d.items()}  # {input}", "input": "{'a': 1}", "output": "{'a': 1}"}
    out = cruxeval.make_prompt(p, "output")
    assert out.startswith("You are given a Python function and an assertion containing an input to the function.")
    assert out.endswith(f"[PYTHON]\n{p['code']}\nassert f({{'a': 1}}) == ??\n[/PYTHON]\n[ANSWER]\n")
    assert out.count("[PYTHON]") == 3 and "assert f(\"x9j\") == \"x9ja\"" in out
    assert cruxeval.make_prompt(p, "output", cot=True).endswith("== ??\n[/PYTHON]\n[THOUGHT]\n")
    inp = cruxeval.make_prompt(p, "input")
    assert inp.startswith("You will be given a function f and an output in the form f(??) == output.")
    assert inp.endswith(f"{p['code']}\nassert f(??) == {{'a': 1}}\n[/PYTHON]\n[ANSWER]\n")
    cot_in = cruxeval.make_prompt(p, "input", cot=True)
    assert "We know that f(??) == 17. \n\nSince" in cot_in and cot_in.endswith("[/PYTHON]\n[THOUGHT]\n")
    assert cruxeval.make_messages(p, "output")[0]["content"] == cruxeval.SYSTEM_MESSAGE


# --- execution ---------------------------------------------------------------------------------------------------

def test_checks_use_value_equality_and_fail_on_errors(sandbox):
    gens = {"sample_0": ["2", "2.0", "True + 1", "3", "1 / 0", "'2'", "f(1)"]}
    result = score(cruxeval.adapter("output"), [PROBLEM], gens, sandbox=sandbox)
    assert result["verdicts"]["sample_0"] == [True, True, True, False, False, False, None]
    assert result["raw_scored_generations"]["sample_0"] == [True, True, True, False, False, False]
    assert result["pass_at_1"] == pytest.approx(50.0)


def test_malicious_prediction_is_false_and_leaves_no_file(sandbox, tmp_path):
    target = tmp_path / "X"
    for task, pred in (("output", f"3 or __import__('os').system('touch {target}')"),
                       ("input", f"f(5) == 2 or __import__('os').system('touch {target}')")):
        result = score(cruxeval.adapter(task), [PROBLEM], {"sample_0": [pred]}, sandbox=sandbox)
        assert result["raw_scored_generations"]["sample_0"] == [False]
    assert not target.exists()


# --- agreement with the published scored files -------------------------------------------------------------------

# file -> skip rule its shelf README row says it was scored with; expected per-sample disagreements under that rule
AGREEMENT = {
    "gpt-4-0613_temp0.2_input.json": ("drop", {"sample_664"}),                 # hash-seed dependent sample
    "codellama-7b_temp0.8_output.json": ("false", set()),
    "gpt-4o+cot_temp0.2_input.json": ("drop", set()),
    "gpt-4o+cot_temp0.2_output.json": ("drop", set()),                        # drop rule only (n = 3)
}


def test_published_subsets_agree_generation_by_generation(sandbox):
    """The committed subsets of the four AGREEMENT files (how they were chosen: the fixture's README): our verdicts
    equal the official ones generation by generation, and pass@k the subset's, recomputed from those verdicts."""
    from stepcode.sandbox.engine import Sandbox

    problems = cruxeval.load_problems(DATA)
    for name, (rule, expected_diff) in AGREEMENT.items():
        published = json.loads((FIXTURE / name).read_text())
        task = "input" if name.endswith("_input.json") else "output"
        ours = score(cruxeval.adapter(task), problems, published["raw_generations"], skip_rule=rule,
                     samples=list(published["raw_generations"]), sandbox=sandbox)
        # what the subset must keep exercising: mixed verdicts and (but for the gpt-4 file) copied-input generations
        assert any(True in v and False in v for v in published["raw_scored_generations"].values()), name
        assert name.startswith("gpt-4-0613") or any(None in v for v in ours["verdicts"].values()), name
        diff = {k for k, v in ours["raw_scored_generations"].items() if v != published["raw_scored_generations"][k]}
        assert diff == expected_diff, name
        if not expected_diff:
            assert ours["pass_at_1"] == pytest.approx(published["pass_at_1"], abs=1e-9), name
            assert ours["pass_at_5"] == pytest.approx(published["pass_at_5"], abs=1e-9), name
        if name.startswith("codellama-7b_temp0.8"):   # README: the current drop rule disagrees on 11 samples
            dropped = result_from_verdicts(ours["raw_generations"], ours["verdicts"], "drop")
            assert sum(v != published["raw_scored_generations"][k]
                       for k, v in dropped["raw_scored_generations"].items()) == 11
    # sample 664 of the gpt-4 file: the prediction f({"3", "4"}) iterates a set of strings, so the verdict depends on
    # PYTHONHASHSEED; the README found it correct under seeds 5 and 6 only, and the published file says correct.
    published = json.loads((FIXTURE / "gpt-4-0613_temp0.2_input.json").read_text())
    gens = {"sample_664": published["raw_generations"]["sample_664"]}
    with Sandbox(hash_seeds=(5,), workers=1) as seed5:
        again = score(cruxeval.adapter("input"), problems, gens, samples=["sample_664"], sandbox=seed5)
    assert again["raw_scored_generations"]["sample_664"] == published["raw_scored_generations"]["sample_664"]


SWEEP = "published_sweep"       # the marker that selects the full sweep (registered in pyproject.toml)


def shelf_rescore_table() -> dict[str, dict]:
    """The shelf README's re-score table: file -> {rule: (pass@1 to 2 decimals, samples whose list differs from the
    published one)} for the "drop" and "false" skip rules."""
    table = {}
    for line in (PUBLISHED.parent / "README.md").read_text().splitlines():
        m = re.fullmatch(r"\| `([^`]+\.json)` \|.*\| ([\d.]+) \((\d+)\) \| ([\d.]+) \((\d+)\) \|[^|]*\|", line.strip())
        if m:
            table[m[1]] = {"drop": (float(m[2]), int(m[3])), "false": (float(m[4]), int(m[5]))}
    return table


@pytest.mark.published_sweep
@pytest.mark.skipif(not PUBLISHED.is_dir(), reason=f"the full sweep needs the developers' reference shelf "
                    f"({PUBLISHED} is absent); the committed subsets are checked without it")
def test_every_published_file_agrees_with_the_shelf_rescore(request, sandbox):
    """Every published file on the shelf (134 files, ~1M checks: about 1.5 hours on 2 cores, so it runs only when
    selected with -m published_sweep). Under each skip rule, as many samples differ from the published lists as the
    shelf README's re-score found (0 where a file was scored with that rule; sample_664 of the two gpt-4-0613 input
    files is hash-seed dependent), pass@1 matches that table to its 2 decimals, and where nothing differs, pass@1
    and pass@5 equal the published values."""
    if SWEEP not in (request.config.getoption("markexpr") or ""):
        pytest.skip(f"scores every published file (about 1.5 hours on 2 cores): select it with -m {SWEEP}")
    table = shelf_rescore_table()
    assert set(table) == {p.name for p in PUBLISHED.glob("*.json")}, "the README table must cover every file"
    problems = cruxeval.load_problems(DATA)
    failures = []
    for name, expected in sorted(table.items()):
        published = json.loads((PUBLISHED / name).read_text())
        task = "input" if name.endswith("_input.json") else "output"
        verdicts = score(cruxeval.adapter(task), problems, published["raw_generations"], sandbox=sandbox)["verdicts"]
        for rule, (readme_pass1, readme_diff) in expected.items():
            ours = result_from_verdicts(published["raw_generations"], verdicts, rule)
            diff = sorted((k for k, v in ours["raw_scored_generations"].items()
                           if v != published["raw_scored_generations"][k]), key=lambda k: int(k.split("_")[1]))
            if len(diff) != readme_diff:
                failures.append(f"{name} ({rule}): {len(diff)} samples differ, README {readme_diff}; e.g. {diff[:5]}")
            if abs(ours["pass_at_1"] - readme_pass1) > 0.005 + 1e-9:
                failures.append(f"{name} ({rule}): pass@1 {ours['pass_at_1']:.4f}, README {readme_pass1:.2f}")
            if not diff and (abs(ours["pass_at_1"] - published["pass_at_1"]) > 1e-9
                             or abs(ours["pass_at_5"] - published["pass_at_5"]) > 1e-9):
                failures.append(f"{name} ({rule}): same lists but pass@k {ours['pass_at_1']}/{ours['pass_at_5']} vs "
                                f"published {published['pass_at_1']}/{published['pass_at_5']}")
    assert not failures, "\n".join(failures)


# --- the CLI -----------------------------------------------------------------------------------------------------

def test_score_cli_end_to_end(tmp_path):
    from typer.testing import CliRunner

    from stepcode.cli import app

    params = tmp_path / "params.yaml"
    params.write_text(f"evaluate:\n  cruxeval_path: {DATA}\n")
    problems = {p["id"]: p for p in cruxeval.load_problems(DATA)}
    gold0, gold1 = problems["sample_0"]["output"], problems["sample_1"]["output"]
    gens = {"sample_0": [gold0, "None", gold0, "0", "0"], "sample_1": [f"f({problems['sample_1']['input']})", gold1]}
    path = tmp_path / "gens.json"
    path.write_text(json.dumps(gens))
    out = tmp_path / "scored.json"
    runner = CliRunner()
    r = runner.invoke(app, ["score", "--benchmark", "cruxeval", "--task", "output", str(path), "-o", str(out),
                            "--samples", "sample_0,sample_1", "--params", str(params)])
    assert r.exit_code == 0, r.output
    result = json.loads(out.read_text())
    assert list(result) == ["raw_generations", "raw_scored_generations", "pass_at_1", "pass_at_5"]
    assert result["raw_scored_generations"] == {"sample_0": [True, False, True, False, False], "sample_1": [True]}
    assert result["pass_at_1"] == pytest.approx(100 * (2 / 5 + 1) / 2)
    assert result["pass_at_5"] == pytest.approx(100.0)
    assert "pass@1: 70.00" in r.output
    # the older rule keeps the copied-input generation as False
    r = runner.invoke(app, ["score", "--benchmark", "cruxeval", "--task", "output", str(path), "-o", str(out),
                            "--samples", "sample_0,sample_1", "--skip-rule", "false", "--params", str(params)])
    assert r.exit_code == 0 and json.loads(out.read_text())["raw_scored_generations"]["sample_1"] == [False, True]
    # raw model text is extracted only when asked
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps({"sample_0": [f"assert f(x) == {gold0}\n[/ANSWER]"]}))
    r = runner.invoke(app, ["score", "--benchmark", "cruxeval", "--task", "output", str(raw), "-o", str(out),
                            "--samples", "sample_0", "--extract", "direct", "--params", str(params)])
    assert r.exit_code == 0 and json.loads(out.read_text())["raw_generations"]["sample_0"] == [gold0]
    # a partial file without --samples is an error, not a score of a different benchmark
    r = runner.invoke(app, ["score", "--benchmark", "cruxeval", "--task", "output", str(path), "--params", str(params)])
    assert r.exit_code == 2 and "no generations for 798" in r.output


def test_official_keeps_only_the_official_keys():
    result = result_from_verdicts({"sample_0": ["1"]}, {"sample_0": [True]}, "drop")
    assert list(official(result)) == ["raw_generations", "raw_scored_generations", "pass_at_1", "pass_at_5"]


# --- StepCode's own task (pure judging) ---------------------------------------------------------------------------

def test_stepcode_task_scores_answers_and_steps_as_the_training_reward_does():
    from stepcode.config import Params
    from stepcode.evals import stepcode_task as st

    params = Params()
    row = {"id": "sample_0", "code": "def f(x):\n    y = x + 1\n    return y * 2", "input": "1", "entry_point": "f",
           "gold_output": "4"}
    (item,), excluded = st.build_items([row], params)
    assert excluded == 0 and item["trace"] == ["y: 2", "return_val: 4"]
    assert "print(f'y: {y}')" in st.messages(item, "output")[1]["content"]
    assert "assert f(??) == 4" in st.messages(item, "input")[1]["content"]
    out = ["<print>y: 2</print><print>return_val: 5</print><answer>4</answer>",      # right answer, one wrong step
           "<print>y: 2</print><answer>f(1)</answer>",                                # echo guard: 0, 1 of 2 steps
           "<answer>2) or (True</answer>"]                                             # not one expression
    inp = ["<input>1</input><print>y: 2</print><print>return_val: 4</print><answer>1</answer>",  # all right
           "<input>0</input><print>y: 1</print><print>return_val: 2</print><answer>0</answer>",  # steps of ITS input
           "<input>1</input><print>y: 2</print><answer>2</answer>"]                    # answer != committed input
    (o,), (i,) = st.score([item], [out], "output", params), st.score([item], [inp], "input", params)
    assert [(s.final, s.steps) for s in o] == [(1.0, (1.0, 0.0)), (0.0, (1.0, 0.0)), (0.0, (0.0, 0.0))]
    assert [(s.final, s.steps) for s in i] == [(1.0, (1.0, 1.0)), (0.0, (1.0, 1.0)), (0.0, (1.0, 0.0))]
    assert st.step_accuracy(["a", "b"], ["a"]) == 0.5                  # a missing print counts 0
    assert st.step_accuracy(["a"], ["a", "b", "c"]) == 1.0             # extra prints are ignored
    assert st.step_accuracy(["a", "b"], ["b", "a"]) == 0.0             # position by position
    with pytest.raises(ValueError):
        st.step_accuracy([], ["a"])
    with pytest.raises(ValueError, match="output or input"):
        st.messages(item, "sideways")
