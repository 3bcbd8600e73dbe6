"""Rewards: step rewards, static answer checks, and the sandboxed final reward (real sandbox, one per module)."""

import pytest

from stepcode.prompts import input_messages, output_messages, render_input_completion, render_output_completion
from stepcode.training.rewards import (
    MAX_ANSWER_CHARS,
    RewardScorer,
    Score,
    check_program,
    entry_point_call,
    input_check_program,
    output_check_program,
    same_arguments,
    step_rewards,
)

CODE = "def f(xs, k):\n    total = 0\n    for x in xs:\n        total += x * k\n    return total\n"
INSTRUMENTED = ("def f(xs, k):\n    total = 0\n    print(f'total: {total}')\n    for x in xs:\n        total += x * k\n"
                "    print(f'total: {total}')\n    return_val = total\n    print(f'return_val: {return_val}')\n"
                "    return return_val")
GOLD_TRACE = ["total: 0", "total: 9", "return_val: 9"]        # f([1, 2], 3), traced by hand


def rl_row(task: str) -> dict:
    prompt = output_messages(INSTRUMENTED, "[1, 2], 3") if task == "output" else input_messages(INSTRUMENTED, "9")
    return {"id": f"t-{task}", "task": task, "prompt": prompt, "gold_trace": GOLD_TRACE, "gold_output": "9",
            "code": CODE, "instrumented_code": INSTRUMENTED, "input": "[1, 2], 3", "entry_point": "f",
            "terminal_only": False}


@pytest.fixture(scope="module")
def scorer():
    with RewardScorer(workers=2) as s:
        yield s


# --- pure functions -------------------------------------------------------------------------------------------

def test_step_rewards_position_by_position():
    gold = ["a: 1", "b: 2", "c: 3"]
    assert step_rewards(["a: 1", "b: 3", "c: 3"], gold) == [1.0, 0.0, 1.0]
    assert step_rewards(["  a: 1 ", "b: 2"], gold) == [1.0, 1.0, 0.0]            # strip; missing -> 0
    assert step_rewards(["a: 1", "b: 2", "c: 3", "d: 4", "e"], gold) == [1.0, 1.0, 1.0]  # extras ignored
    assert step_rewards(["b: 2", "c: 3"], gold) == [0.0, 0.0, 0.0]               # shifted by one: all wrong
    assert step_rewards([], gold) == [0.0, 0.0, 0.0]


def test_score_logged_scalar():
    s = Score(steps=(1.0, 0.0, 1.0, 1.0), final=1.0)
    assert (s.n, s.step_accuracy, s.logged) == (4, 0.75, 1.75)
    assert Score(steps=(), final=0.0).logged == 0.0


def test_output_check_program_parenthesises_a_single_expression():
    assert output_check_program(CODE, "9", "9") == CODE + "\nassert 9 == (\n9\n)\n"
    assert output_check_program(CODE, "9", "9  # my answer") == CODE + "\nassert 9 == (\n9  # my answer\n)\n"
    for not_one_expression in ("0) or (True", "x) or (True", "9\nimport os", "", "   ", None, "(" * 300):
        assert output_check_program(CODE, "9", not_one_expression) is None, not_one_expression
    assert output_check_program(CODE, "9", "1" * (MAX_ANSWER_CHARS + 1)) is None


def test_echo_guard_rejects_any_mention_of_the_entry_point():
    for echo in ("f([1, 2], 3)", "f([1,2],3) + 0", "(lambda g: g([1, 2], 3))(f)"):
        assert output_check_program(CODE, "9", echo) is None, echo
    assert output_check_program(CODE, "'f(x)'", "'f(x)'") is not None   # the text f( inside a string is fine
    assert output_check_program(CODE, "9", "g(3)", entry_point="g") is None


def test_input_check_program_needs_exactly_one_call():
    assert input_check_program(CODE, "9", "[1, 2], 3") == CODE + "\nassert f(\n[1, 2], 3\n) == (\n9\n)\n"
    assert entry_point_call("1), (2") is None                               # would be a truthy tuple
    assert entry_point_call("1) or (2") is None
    assert entry_point_call("") is None and entry_point_call(None) is None
    assert entry_point_call("xs=[3], k=3") == "f(\nxs=[3], k=3\n)"


def test_same_arguments_compares_parsed_argument_lists():
    # Both sides are parsed as f(\nARGS\n) and compared as ASTs (ast.dump: no positions), so layout is free ...
    for a, b in [("1,2", "1, 2"), ("(1), 2,", "1, 2"), ("1, 2  # why", "1,2"), ("'a'", '"a"'), ("1.", "1.0"),
                 ("[1,2],3", "[1, 2], 3"), ("xs=[3], k=3", "xs = [3] , k = 3"), ("0x1", "1")]:
        assert same_arguments(a, b) and same_arguments(b, a), (a, b)
    # ... but order, keywords, values and their written form are not: `[1] * 2` is not the literal it equals, and
    # `f(1, 2)` is ONE argument (the call f(1, 2)), exactly as the check program and the trace read it.
    for a, b in [("2, 1", "1, 2"), ("x=1", "1"), ("1", "True"), ("[1] * 2", "[1, 1]"), ("f(1, 2)", "1, 2"),
                 ("xs=[3], k=3", "k=3, xs=[3]")]:
        assert not same_arguments(a, b) and not same_arguments(b, a), (a, b)
    # Not one argument list on either side: never the same, not even as itself.
    for bad in (None, "", "   ", "1), (2", "1) or (2", "1" * (MAX_ANSWER_CHARS + 1)):
        assert not same_arguments(bad, "1") and not same_arguments("1", bad) and not same_arguments(bad, bad)
    deep = "-" * 1500 + "1"                       # parses, but too deep for ast.dump: 0, like a too-deep parse
    assert entry_point_call(deep) is not None and not same_arguments(deep, deep)


def test_input_check_program_requires_the_committed_input():
    row = rl_row("input")
    # Answer == committed (respelled): the usual check program of the answer.
    assert check_program(row, "[1, 2], 3", "[1,2],3") == CODE + "\nassert f(\n[1, 2], 3\n) == (\n9\n)\n"
    # A right answer that is not the committed input, or with no committed input at all: 0 without running.
    assert check_program(row, "[1, 2], 3", "[3], 3") is None
    assert check_program(row, "[1, 2], 3", None) is None and check_program(row, "[1, 2], 3") is None
    # The output task has no committed input: unchanged.
    assert check_program(rl_row("output"), "9", "[3], 3") == output_check_program(CODE, "9", "9")


# --- sandboxed scoring ----------------------------------------------------------------------------------------

def test_output_task_scores(scorer):
    row = rl_row("output")
    right = render_output_completion(GOLD_TRACE, "9")
    wrong_steps = render_output_completion(["total: 1", "total: 3", "return_val: 9"], "9")
    wrong_answer = render_output_completion(GOLD_TRACE, "10")
    equal_expression = render_output_completion(GOLD_TRACE, "4 + 5")
    scores = scorer.score([row] * 4, [right, wrong_steps, wrong_answer, equal_expression])
    assert [(s.steps, s.final) for s in scores] == [
        ((1.0, 1.0, 1.0), 1.0), ((0.0, 0.0, 1.0), 1.0), ((1.0, 1.0, 1.0), 0.0), ((1.0, 1.0, 1.0), 1.0)]
    # Reward hacking: the right answer with wrong steps is worth less than a fully consistent completion.
    assert scores[1].logged == pytest.approx(1 + 1 / 3) and scores[1].logged < scores[0].logged == 2.0


def test_output_task_precedence_and_echo_tricks_score_zero(scorer):
    row = rl_row("output")
    texts = [render_output_completion(GOLD_TRACE, a) for a in ("0 or True", "f([1, 2], 3)", "True or 0")]
    texts.append("<reasoning>x</reasoning><answer>0) or (True</answer>")     # renderer refuses nothing here
    assert [s.final for s in scorer.score([row] * 4, texts)] == [0.0, 0.0, 0.0, 0.0]


def test_junk_empty_huge_and_tag_spam_score_zero(scorer):
    row = rl_row("output")
    junk = ["", "hello world", "<print>", "</answer><answer>", "<answer></answer>", "\x00\xff" * 50,
            "<print>total: 0</print>" * 20000 + "<answer>" + "(" * 500_000 + "</answer>",   # ~1 MB
            "<reasoning>" * 100_000, "x" * (1 << 20), "<answer>" + "9" * (1 << 20) + "</answer>"]
    scores = scorer.score([row] * len(junk), junk)
    assert [s.final for s in scores] == [0.0] * len(junk)
    assert [s.logged for s in scores[:6]] == [0.0] * 6
    # Spam of one correct print earns only the first anchor: position matters, repetition does not.
    assert scores[6].steps == (1.0, 0.0, 0.0)


def test_input_task_committed_reference(scorer):
    row = rl_row("input")
    # Commits to [3], 3: its run prints total: 0, total: 9, return_val: 9 -> all steps right; answer right.
    other_input = render_input_completion("[3], 3", GOLD_TRACE)
    # Commits to [1], 1 (prints total: 0, total: 1, return_val: 1) but writes the gold trace: 1 of 3 steps. Its
    # answer [1, 2], 3 is right but is not the committed input: final 0 (it was 1 before the answer had to be it).
    inconsistent = render_input_completion("[1], 1", GOLD_TRACE).replace("<answer>[1], 1", "<answer>[1, 2], 3")
    consistent_wrong = render_input_completion("[1], 1", ["total: 0", "total: 1", "return_val: 1"])
    crashing = render_input_completion("None, 1", GOLD_TRACE)                # TypeError: not a clean trace
    scores = scorer.score([row] * 4, [other_input, inconsistent, consistent_wrong, crashing])
    assert [(s.steps, s.final) for s in scores] == [
        ((1.0, 1.0, 1.0), 1.0), ((1.0, 0.0, 0.0), 0.0), ((1.0, 1.0, 1.0), 0.0), ((0.0, 0.0, 0.0), 0.0)]


def test_input_task_final_reward_is_for_the_committed_input_only(scorer):
    """The exploit the rule closes: commit an easy input, trace it right, answer another (correct) input."""
    row = rl_row("input")
    # Commits [3], 3 and traces it exactly (total: 0, total: 9, return_val: 9 -> steps 1, 1, 1), answers it in
    # another spelling ([3],3): same arguments, f([3], 3) == 9 -> final 1.
    respelled = render_input_completion("[3], 3", GOLD_TRACE).replace("<answer>[3], 3", "<answer>[3],3")
    # Commits [1], 1 and traces IT exactly (total: 0, total: 1, return_val: 1 -> steps 1, 1, 1), then answers the
    # correct [1, 2], 3: before, steps 1, 1, 1 and final 1 (logged 2.0, the maximum); now final 0 (logged 1.0).
    easy = render_input_completion("[1], 1", ["total: 0", "total: 1", "return_val: 1"]).replace(
        "<answer>[1], 1", "<answer>[1, 2], 3")
    # No <input> at all, right answer: no committed input -> steps 0, 0, 0 (against the gold trace's length), final 0.
    uncommitted = "<reasoning>r</reasoning>\n<answer>[1, 2], 3</answer>"
    # The committed input as one argument and the answer as the CRUXEval-style call: different argument lists -> 0.
    call_form = render_input_completion("[1, 2], 3", GOLD_TRACE).replace("<answer>[1, 2], 3", "<answer>f([1, 2], 3)")
    scores = scorer.score([row] * 4, [respelled, easy, uncommitted, call_form])
    assert [(s.steps, s.final) for s in scores] == [
        ((1.0, 1.0, 1.0), 1.0), ((1.0, 1.0, 1.0), 0.0), ((0.0, 0.0, 0.0), 0.0), ((1.0, 1.0, 1.0), 0.0)]
    assert [s.logged for s in scores] == [2.0, 1.0, 0.0, 1.0]


def test_input_task_gold_reference():
    row = rl_row("input")
    text = render_input_completion("[1], 1", ["total: 0", "total: 1", "return_val: 1"])
    # The answer must be the committed input whatever the step reference: commit [1], 1, answer the right [1, 2], 3.
    switched = render_input_completion("[1], 1", GOLD_TRACE).replace("<answer>[1], 1", "<answer>[1, 2], 3")
    consistent = render_input_completion("[1, 2], 3", GOLD_TRACE)
    with RewardScorer(input_reference="gold", workers=1) as s:
        scores = s.score([row] * 3, [text, switched, consistent])
    assert [(score.steps, score.final) for score in scores] == [
        ((1.0, 0.0, 0.0), 0.0), ((1.0, 1.0, 1.0), 0.0), ((1.0, 1.0, 1.0), 1.0)]


def test_unknown_input_reference_raises():
    with pytest.raises(ValueError, match="input_reference"):
        RewardScorer(input_reference="latest")


def test_malformed_rows_raise(scorer):
    with pytest.raises(ValueError, match="lacks"):
        scorer.score([{"id": "x", "task": "output"}], ["<answer>1</answer>"])
    with pytest.raises(ValueError, match="task"):
        scorer.score([dict(rl_row("output"), task="both")], ["<answer>1</answer>"])
    with pytest.raises(ValueError, match="rows but"):
        scorer.score([rl_row("output")], [])
    with pytest.raises(TypeError, match="not str"):
        scorer.score([rl_row("output")], [None])
