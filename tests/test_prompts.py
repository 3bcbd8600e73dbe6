"""Tests for stepcode.prompts: exact rendered messages, SFT target round-trips, the parser's rules and its robustness."""

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from stepcode.prompts import (
    SYSTEM_PROMPT,
    default_reasoning,
    input_messages,
    output_messages,
    parse_completion,
    render_input_completion,
    render_output_completion,
)

CODE = "def f(x):\n    y = x + 1\n    print(f'y: {y}')\n    return y"
TAGS = ["<reasoning>", "</reasoning>", "<print>", "</print>", "<input>", "</input>", "<answer>", "</answer>"]


# ---------------------------------------------------------------- messages

def test_output_messages_exact():
    assert output_messages(CODE, "1") == [
        {"role": "system", "content": "You predict how Python code runs. Think step by step."},
        {"role": "user", "content": (
            "```python\n"
            "def f(x):\n"
            "    y = x + 1\n"
            "    print(f'y: {y}')\n"
            "    return y\n"
            "```\n"
            "assert f(1) == ??\n"
            "For each print: <reasoning>...</reasoning><print>line</print>. "
            "Then <reasoning>...</reasoning><answer>literal</answer>."
        )},
    ]


def test_input_messages_exact_with_entry_point():
    messages = input_messages(CODE.replace("def f", "def g") + "\n", "2", entry_point="g")
    assert messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert messages[1] == {"role": "user", "content": (
        "```python\n"
        "def g(x):\n"
        "    y = x + 1\n"
        "    print(f'y: {y}')\n"
        "    return y\n"
        "```\n"
        "assert g(??) == 2\n"
        "First <reasoning>...</reasoning><input>arguments</input>. "
        "Then for each print: <reasoning>...</reasoning><print>line</print>. "
        "Then <reasoning>...</reasoning><answer>arguments</answer>."
    )}


def test_output_messages_multi_argument_and_no_argument_inputs():
    assert "\nassert f([1, 2], 3) == ??\n" in output_messages(CODE, "[1, 2], 3")[1]["content"]
    assert "\nassert f() == ??\n" in output_messages("def f():\n    return 1", "")[1]["content"]


def test_code_containing_a_fence_gets_a_longer_fence():
    code = "def f():\n    return '```'"
    content = output_messages(code, "")[1]["content"]
    assert content.startswith("````python\ndef f():\n    return '```'\n````\n")


@pytest.mark.parametrize("call", [
    lambda: output_messages(CODE, "1", entry_point="not a name"),
    lambda: output_messages("  \n", "1"),
    lambda: output_messages(CODE, None),
    lambda: input_messages(CODE, ""),
    lambda: input_messages(CODE, "2", entry_point=""),
])
def test_messages_reject_bad_input(call):
    with pytest.raises(ValueError):
        call()


# ---------------------------------------------------------------- rendering

def test_render_output_completion_exact():
    assert render_output_completion(["y: 2", "return_val: 2"], "2") == (
        "<reasoning>Step 1 of 2: compute y.</reasoning>\n"
        "<print>y: 2</print>\n"
        "<reasoning>Step 2 of 2: compute return_val.</reasoning>\n"
        "<print>return_val: 2</print>\n"
        "<reasoning>So the function returns this value.</reasoning>\n"
        "<answer>2</answer>"
    )


def test_render_input_completion_exact():
    assert render_input_completion("1", ["y: 2", "return_val: 2"]) == (
        "<reasoning>Guess an input, then run the code on it.</reasoning>\n"
        "<input>1</input>\n"
        "<reasoning>Step 1 of 2: compute y.</reasoning>\n"
        "<print>y: 2</print>\n"
        "<reasoning>Step 2 of 2: compute return_val.</reasoning>\n"
        "<print>return_val: 2</print>\n"
        "<reasoning>The run gives the expected output, so this input works.</reasoning>\n"
        "<answer>1</answer>"
    )


def test_render_with_custom_reasoning():
    text = render_output_completion(["a: 1"], "1", reasoning=lambda step, line, n: f"{step}/{n}")
    assert text == "<reasoning>1/1</reasoning>\n<print>a: 1</print>\n" \
                   "<reasoning>So the function returns this value.</reasoning>\n<answer>1</answer>"


def test_default_reasoning_names_the_variable_not_the_value():
    sentence = default_reasoning(2, "total: 'secret_value'", 5)
    assert sentence == "Step 2 of 5: compute total."
    assert "secret_value" not in sentence


@pytest.mark.parametrize("line, name", [("self.count: 3", "self.count"), ("obj.attr.x: [1]", "obj.attr.x"),
                                        ("_total2: 0", "_total2"), ("return_val: a: b", "return_val")])
def test_default_reasoning_accepts_attribute_chain_labels(line, name):
    # The anchors print attribute-chain labels (stepcode/anchors.py rule 1), e.g. `self.count = 0` -> "self.count: 0".
    assert default_reasoning(1, line, 2) == f"Step 1 of 2: compute {name}."


@pytest.mark.parametrize("step, line, n", [(0, "a: 1", 2), (3, "a: 1", 2), (1, "no separator", 1),
                                           (1, "not a name: 1", 1), (1, ": 1", 1), (1, None, 1),
                                           (1, "a..b: 1", 1), (1, ".a: 1", 1), (1, "a.: 1", 1), (1, "1a.b: 1", 1),
                                           (1, "a[0]: 1", 1)])
def test_default_reasoning_rejects_bad_input(step, line, n):
    with pytest.raises(ValueError):
        default_reasoning(step, line, n)


TRICKY_TRACE = [
    "s: a<b>c",
    "t: </print >",
    "u: </PRINT> and <Answer>",
    "v: line1\nline2",
    "w: {'k': \"q\"}",
    "x: héllo ✓ 日本",
    "y: <print",
    "z: /print> >",
    "e: ",
]


def test_output_round_trip_with_tricky_values():
    parsed = parse_completion(render_output_completion(TRICKY_TRACE, "'<b>'"), task="output")
    assert parsed.prints == [line.strip() for line in TRICKY_TRACE]
    assert parsed.answer == "'<b>'"
    assert parsed.input is None
    assert parsed.flags == frozenset()


def test_input_round_trip_with_tricky_values():
    parsed = parse_completion(render_input_completion(" '\\n<x>', {1: 2}", TRICKY_TRACE), task="input")
    assert parsed.prints == [line.strip() for line in TRICKY_TRACE]
    assert parsed.input == parsed.answer == "'\\n<x>', {1: 2}"   # surrounding whitespace dropped on render
    assert parsed.flags == frozenset()


def test_round_trip_with_empty_trace():
    parsed = parse_completion(render_output_completion([], "None"))
    assert (parsed.prints, parsed.answer, parsed.flags) == ([], "None", frozenset())


@pytest.mark.parametrize("call", [
    lambda: render_output_completion(["s: a</print>b"], "1"),
    lambda: render_output_completion(["s: <answer>"], "1"),
    lambda: render_output_completion(["s: 1"], "'</answer>'"),
    lambda: render_output_completion(["s: 1"], "  "),
    lambda: render_output_completion(["s: 1"], "1", reasoning=lambda s, line, n: "<print>"),
    lambda: render_output_completion("s: 1", "1"),
    lambda: render_output_completion([1], "1"),
    lambda: render_input_completion("", ["s: 1"]),          # no-argument function: nothing to predict
    lambda: render_input_completion("'<input>'", ["s: 1"]),
    lambda: render_input_completion("1", ["s: </reasoning>"]),
])
def test_renderers_refuse_what_the_parser_would_misread(call):
    with pytest.raises(ValueError):
        call()


# ---------------------------------------------------------------- parser, hand-written cases

def test_spans_of_output_completion():
    text = ("<reasoning>a</reasoning><print>x: 1</print>\n"
            "<reasoning>b</reasoning><print>y: 2</print><reasoning>c</reasoning><answer>2</answer>")
    parsed = parse_completion(text)
    assert parsed.print_spans == [(24, 43), (68, 87)]
    assert parsed.segment_spans == [(0, 43), (43, 87)]
    assert [text[s:e] for s, e in parsed.print_spans] == ["<print>x: 1</print>", "<print>y: 2</print>"]
    assert [text[s:e] for s, e in parsed.segment_spans] == [
        "<reasoning>a</reasoning><print>x: 1</print>",
        "\n<reasoning>b</reasoning><print>y: 2</print>",
    ]


def test_segments_of_input_completion_start_after_the_input_block():
    text = render_input_completion("3", ["a: 1", "return_val: 1"])
    parsed = parse_completion(text, task="input")
    first, second = [text[s:e] for s, e in parsed.segment_spans]
    assert text[:parsed.segment_spans[0][0]].endswith("<input>3</input>")
    assert first == "\n<reasoning>Step 1 of 2: compute a.</reasoning>\n<print>a: 1</print>"
    assert second == "\n<reasoning>Step 2 of 2: compute return_val.</reasoning>\n<print>return_val: 1</print>"


def test_first_closing_tag_ends_a_block():
    parsed = parse_completion("<reasoning>r</reasoning><print>a</print>b</print>"
                              "<reasoning>r</reasoning><answer>1</answer>")
    assert parsed.prints == ["a"]
    assert parsed.answer == "1"
    assert parsed.flags == {"stray_closing_tag"}


def test_unclosed_block_is_dropped():
    parsed = parse_completion("<reasoning>r</reasoning><print>x: 1</print><reasoning>r</reasoning><print>y: 2")
    assert parsed.prints == ["x: 1"]
    assert parsed.answer is None
    assert parsed.flags == {"unclosed_tag", "no_answer"}


def test_truncated_answer_is_no_answer():
    parsed = parse_completion("<reasoning>r</reasoning><answer>[1, 2")
    assert parsed.answer is None
    assert parsed.flags == {"unclosed_tag", "no_answer"}


def test_tags_inside_a_block_are_its_text():
    parsed = parse_completion("<reasoning>think <print>x: 1</print></reasoning><answer>1</answer>")
    assert parsed.prints == []
    assert parsed.answer == "1"
    assert parsed.flags == {"nested_tag"}
    parsed = parse_completion("<reasoning>r</reasoning><print>x: <answer>2</print>")
    assert parsed.prints == ["x: <answer>2"]
    assert parsed.flags == {"nested_tag", "no_answer"}


def test_repeated_answers_last_wins():
    parsed = parse_completion("<reasoning>a</reasoning><answer>1</answer><reasoning>b</reasoning><answer> 2 </answer>")
    assert parsed.answer == "2"
    assert parsed.flags == {"multiple_answers"}


def test_repeated_inputs_first_wins():
    parsed = parse_completion("<reasoning>a</reasoning><input>1</input><reasoning>b</reasoning><input>2</input>"
                              "<reasoning>c</reasoning><answer>2</answer>", task="input")
    assert parsed.input == "1"
    assert parsed.flags == {"multiple_inputs"}


def test_whitespace_everywhere_is_ignored():
    parsed = parse_completion("  <reasoning>\n</reasoning>\n<print>\n  x: 1 \n</print>\n\n"
                              "<reasoning></reasoning><answer>\n 1 \n</answer>\n\n")
    assert (parsed.prints, parsed.answer, parsed.flags) == (["x: 1"], "1", frozenset())


def test_missing_reasoning():
    parsed = parse_completion("<print>x: 1</print><answer>1</answer>")
    assert (parsed.prints, parsed.answer) == (["x: 1"], "1")
    assert parsed.flags == {"missing_reasoning"}
    assert parsed.segment_spans == [(0, 19)]


def test_wrong_order():
    parsed = parse_completion("<reasoning>r</reasoning><answer>1</answer><reasoning>r</reasoning><print>x: 1</print>")
    assert parsed.prints == ["x: 1"] and parsed.answer == "1"
    assert parsed.flags == {"out_of_order", "text_after_answer"}
    parsed = parse_completion("<reasoning>r</reasoning><print>x: 1</print><reasoning>r</reasoning><input>3</input>"
                              "<reasoning>r</reasoning><answer>3</answer>")
    assert parsed.input == "3"
    assert parsed.flags == {"out_of_order"}


def test_empty_answer_and_text_after_answer():
    assert parse_completion("<reasoning>r</reasoning><answer>  </answer>").flags == {"empty_answer"}
    parsed = parse_completion("<reasoning>r</reasoning><answer>1</answer> and more")
    assert parsed.answer == "1"
    assert parsed.flags == {"text_after_answer"}


def test_no_tags_at_all():
    for text in ["", "the answer is 42", "</>", "<print >x</print >", "</PRINT>"]:
        parsed = parse_completion(text)
        assert (parsed.input, parsed.prints, parsed.answer) == (None, [], None)
        assert parsed.print_spans == parsed.segment_spans == []
        assert parsed.flags == {"no_answer"}


def test_stray_closers_and_openers():
    parsed = parse_completion("</answer>1<answer>")
    assert parsed.answer is None
    assert parsed.flags == {"stray_closing_tag", "unclosed_tag", "no_answer"}


def test_task_specific_flags():
    output_text = render_output_completion(["a: 1"], "1")
    input_text = render_input_completion("1", ["a: 1"])
    assert parse_completion(output_text, task="input").flags == {"no_input"}
    assert parse_completion(input_text, task="output").flags == {"unexpected_input"}
    assert parse_completion(input_text).flags == frozenset()
    with pytest.raises(ValueError):
        parse_completion(output_text, task="both")


def test_non_str_is_a_type_error():
    with pytest.raises(TypeError):
        parse_completion(b"<answer>1</answer>")


# ---------------------------------------------------------------- properties

def _check_invariants(text, parsed):
    assert len(parsed.prints) == len(parsed.print_spans) == len(parsed.segment_spans)
    previous_end = 0
    for value, (start, end), (seg_start, seg_end) in zip(parsed.prints, parsed.print_spans, parsed.segment_spans):
        block = text[start:end]
        assert block.startswith("<print>") and block.endswith("</print>")
        assert block[len("<print>"):-len("</print>")].strip() == value
        assert seg_end == end and previous_end <= seg_start <= start
        previous_end = end


tag_soup = st.lists(st.one_of(st.sampled_from(TAGS + ["<", ">", "/", "print", "answer", "\n", " "]),
                              st.text(max_size=4)), max_size=60).map("".join)


@given(st.text())
def test_parser_never_raises_on_arbitrary_text(text):
    _check_invariants(text, parse_completion(text))


@settings(max_examples=300)
@given(tag_soup, st.sampled_from([None, "output", "input"]))
def test_parser_never_raises_on_tag_soup(text, task):
    _check_invariants(text, parse_completion(text, task=task))


# Near-misses of the tags (and everything st.text() draws) must round-trip; exact tags never appear in them.
NEAR_MISSES = ["<", ">", "/", "<print", "/print>", "</print >", "</PRINT>", "< answer>", "<input/>", "\n", "'", "{", "é"]
value_text = st.lists(st.one_of(st.sampled_from(NEAR_MISSES), st.text(max_size=3)), max_size=8).map("".join)
trace_line = st.builds(lambda name, value: f"{name}: {value}",
                       st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True), value_text)


@settings(max_examples=200)
@given(st.lists(trace_line, max_size=10), value_text, st.booleans())
def test_render_round_trips(trace, value, input_task):
    assume(value.strip() and not any(tag in item for item in trace + [value] for tag in TAGS))
    if input_task:
        text = render_input_completion(value, trace)
    else:
        text = render_output_completion(trace, value)
    parsed = parse_completion(text, task="input" if input_task else "output")
    assert parsed.prints == [line.strip() for line in trace]
    assert parsed.answer == value.strip()
    assert parsed.input == (value.strip() if input_task else None)
    assert parsed.flags == frozenset()
    _check_invariants(text, parsed)


@given(st.lists(trace_line, min_size=1, max_size=5), st.data(), st.sampled_from(TAGS))
def test_render_refuses_any_tag_inside_a_trace_line(trace, data, tag):
    index = data.draw(st.integers(0, len(trace) - 1))
    line = trace[index]
    cut = data.draw(st.integers(len(line.partition(": ")[0]) + 2, len(line)))
    trace[index] = line[:cut] + tag + line[cut:]
    with pytest.raises(ValueError, match="cannot be rendered unambiguously"):
        render_output_completion(trace, "1")


MEGABYTE = 1_000_000


@pytest.mark.parametrize("text", [
    "<" * MEGABYTE,
    "<print>" * (MEGABYTE // 7),
    "</print>" * (MEGABYTE // 8),
    "<print" * (MEGABYTE // 6),
    ("<reasoning>" + "<print>x" * 10) * (MEGABYTE // 91),
    "<reasoning>r</reasoning><print>x: 1</print>" * (MEGABYTE // 43),
    "<answer>" + "a" * MEGABYTE,
    ("<reasoning>r</reasoning><answer>1</answer>" + " " * 50) * (MEGABYTE // 92),
])
def test_one_megabyte_adversarial_inputs(text):
    parsed = parse_completion(text)
    assert isinstance(parsed.flags, frozenset)


def test_one_megabyte_of_valid_prints_is_fully_parsed():
    text = "<reasoning>r</reasoning><print>x: 1</print>" * (MEGABYTE // 43) + "<reasoning>r</reasoning><answer>1</answer>"
    parsed = parse_completion(text)
    assert len(parsed.prints) == MEGABYTE // 43
    assert parsed.answer == "1" and parsed.flags == frozenset()
