"""Prompt templates, SFT target rendering and the completion parser for StepCode's two tasks.

Output prediction: given instrumented code and an input, predict every anchor line, then the return value.
Input prediction: given instrumented code and an output, commit to an input, predict the anchor lines of that
run, then answer with the input again.

    from stepcode.prompts import output_messages, render_output_completion, parse_completion
    messages = output_messages(code, "[1, 2], 3")            # chat: system + user
    target = render_output_completion(["total: 3", "return_val: 3"], "3")   # SFT target
    parsed = parse_completion(model_text)                      # never raises
    parsed.prints, parsed.answer, parsed.print_spans, parsed.segment_spans, parsed.flags

A full output-task example. `output_messages("def f(x):\\n    y = x + 1\\n    print(f'y: {y}')\\n    return y", "1")`
gives the system message SYSTEM_PROMPT and this user message:

    ```python
    def f(x):
        y = x + 1
        print(f'y: {y}')
        return y
    ```
    assert f(1) == ??
    For each print: <reasoning>...</reasoning><print>line</print>. Then <reasoning>...</reasoning><answer>literal</answer>.

and `render_output_completion(["y: 2", "return_val: 2"], "2")` gives:

    <reasoning>Step 1 of 2: compute y.</reasoning>
    <print>y: 2</print>
    <reasoning>Step 2 of 2: compute return_val.</reasoning>
    <print>return_val: 2</print>
    <reasoning>So the function returns this value.</reasoning>
    <answer>2</answer>

The input-task example, same code: `input_messages(code, "2")` gives SYSTEM_PROMPT and:

    ```python
    def f(x):
        y = x + 1
        print(f'y: {y}')
        return y
    ```
    assert f(??) == 2
    First <reasoning>...</reasoning><input>arguments</input>. Then for each print: <reasoning>...</reasoning><print>line</print>. Then <reasoning>...</reasoning><answer>arguments</answer>.

and `render_input_completion("1", ["y: 2", "return_val: 2"])` gives:

    <reasoning>Guess an input, then run the code on it.</reasoning>
    <input>1</input>
    <reasoning>Step 1 of 2: compute y.</reasoning>
    <print>y: 2</print>
    <reasoning>Step 2 of 2: compute return_val.</reasoning>
    <print>return_val: 2</print>
    <reasoning>The run gives the expected output, so this input works.</reasoning>
    <answer>1</answer>

Parsing rules (what `parse_completion` does with any text):
- Tags are the exact lowercase strings <reasoning> <print> <input> <answer> and their closers; anything else
  (`</PRINT>`, `< print>`, `</print >`) is plain text.
- A block runs from its opening tag to the FIRST closing tag of the same name (non-greedy). Every other tag in between
  is kept as content and flags "nested_tag"; a block never closed is dropped and flags "unclosed_tag"; a closer
  with no open block flags "stray_closing_tag". So `<print>a</print>b</print>` gives the print "a".
- `input` is the first <input> block, `answer` the last <answer> block, `prints` every <print> block; all stripped.
- The renderers refuse (ValueError) any value or reasoning that contains a tag, since the parser would split it;
  the dataset builder routes such rows out. Everything else (`<`, `>`, quotes, newlines, unicode) round-trips.
  Answer/input values are written stripped: surrounding whitespace means nothing in Python source.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

# Short on purpose: the default model is a tiny Llama trained from scratch, every prompt token costs.
SYSTEM_PROMPT = "You predict how Python code runs. Think step by step."

# The user message: code fence, the assertion with ??, then one line on the output format.
USER_TEMPLATE = "{fence}python\n{code}\n{fence}\n{assertion}\n{instruction}"
OUTPUT_ASSERTION = "assert {entry_point}({input}) == ??"
INPUT_ASSERTION = "assert {entry_point}(??) == {output}"
OUTPUT_INSTRUCTION = (
    "For each print: <reasoning>...</reasoning><print>line</print>. "
    "Then <reasoning>...</reasoning><answer>literal</answer>."
)
INPUT_INSTRUCTION = (
    "First <reasoning>...</reasoning><input>arguments</input>. "
    "Then for each print: <reasoning>...</reasoning><print>line</print>. "
    "Then <reasoning>...</reasoning><answer>arguments</answer>."
)

# Sentences of the SFT targets. They never mention a value: the value is what the <print>/<answer> must predict.
# (`build.reasoning: execution` replaces STEP_REASONING by a path derived from the run, stepcode/data/reasoning.py,
# which does state each value, computed step by step: `path_reasoning`.)
STEP_REASONING = "Step {step} of {n}: compute {name}."
INPUT_COMMIT_REASONING = "Guess an input, then run the code on it."
OUTPUT_FINAL_REASONING = "So the function returns this value."
INPUT_FINAL_REASONING = "The run gives the expected output, so this input works."

TAG_NAMES = ("reasoning", "print", "input", "answer")
# Literal alternatives only, so finditer is one linear scan: no backtracking whatever the text.
_TAG = re.compile(rf"<(/?)({'|'.join(TAG_NAMES)})>")


def _fence_for(code: str) -> str:
    # Markdown rule: a fence longer than any backtick run inside the code cannot be closed early by it.
    longest = max((len(run) for run in re.findall(r"`+", code)), default=0)
    return "`" * max(3, longest + 1)


def _user_message(code: str, assertion: str, instruction: str) -> dict:
    if not isinstance(code, str) or not code.strip():
        raise ValueError("instrumented_code must be a non-empty str")
    code = code.strip("\n").rstrip()
    content = USER_TEMPLATE.format(fence=_fence_for(code), code=code, assertion=assertion, instruction=instruction)
    return {"role": "user", "content": content}


def _check_entry_point(entry_point: str) -> None:
    if not isinstance(entry_point, str) or not entry_point.isidentifier():
        raise ValueError(f"entry_point must be a Python identifier, got {entry_point!r}")


def output_messages(instrumented_code: str, input: str, entry_point: str = "f") -> list[dict]:
    """Chat messages asking for the anchor lines and the return value of `entry_point(input)`."""
    _check_entry_point(entry_point)
    if not isinstance(input, str):
        raise ValueError(f"input must be the argument list as source text (str), got {type(input).__name__}")
    assertion = OUTPUT_ASSERTION.format(entry_point=entry_point, input=input.strip())
    return [{"role": "system", "content": SYSTEM_PROMPT},
            _user_message(instrumented_code, assertion, OUTPUT_INSTRUCTION)]


def input_messages(instrumented_code: str, output: str, entry_point: str = "f") -> list[dict]:
    """Chat messages asking for an input that makes `entry_point` return `output`, traced step by step."""
    _check_entry_point(entry_point)
    if not isinstance(output, str) or not output.strip():
        raise ValueError(f"output must be a non-empty literal as source text, got {output!r}")
    assertion = INPUT_ASSERTION.format(entry_point=entry_point, output=output.strip())
    return [{"role": "system", "content": SYSTEM_PROMPT},
            _user_message(instrumented_code, assertion, INPUT_INSTRUCTION)]


def _is_label(name: str) -> bool:
    """An anchor label: a name or an attribute chain (`total`, `self.count`, `obj.attr`; see stepcode/anchors.py)."""
    return all(part.isidentifier() for part in name.split("."))


def default_reasoning(step: int, line: str, n: int) -> str:
    """The template sentence before anchor `step` (1-based) of `n`; names the variable, never its value."""
    if not (isinstance(step, int) and isinstance(n, int) and 1 <= step <= n):
        raise ValueError(f"need 1 <= step <= n, got step={step!r}, n={n!r}")
    if not isinstance(line, str):
        raise ValueError(f"trace line must be a str, got {type(line).__name__}")
    name, sep, _ = line.lstrip().partition(": ")
    if not sep or not _is_label(name):
        raise ValueError(f"trace line is not 'NAME: VALUE': {line!r}")
    return STEP_REASONING.format(step=step, n=n, name=name)


def path_reasoning(steps: list[str | None]) -> Callable[[int, str, int], str]:
    """A `reasoning` callable for the renderers from a per-anchor path (stepcode/data/reasoning.py): step k's text,
    or the template sentence (`default_reasoning`) where the path has none."""
    def reasoning(step: int, line: str, n: int) -> str:
        text = steps[step - 1] if 1 <= step <= len(steps) else None
        return text if text is not None else default_reasoning(step, line, n)
    return reasoning


def _checked(text: str, what: str) -> str:
    """`text` unchanged, or ValueError if the parser would read a tag inside it."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a str, got {type(text).__name__}")
    tag = _TAG.search(text)
    if tag:
        raise ValueError(f"{what} contains the tag {tag.group(0)!r}, which cannot be rendered unambiguously: {text!r}")
    return text


def _block(name: str, content: str) -> str:
    return f"<{name}>{content}</{name}>"


def _trace_blocks(trace: list[str], reasoning: Callable[[int, str, int], str]) -> list[str]:
    if not isinstance(trace, list):
        raise ValueError(f"trace must be a list of printed lines, got {type(trace).__name__}")
    blocks = []
    for step, line in enumerate(trace, start=1):
        _checked(line, f"trace line {step}")
        blocks.append(_block("reasoning", _checked(reasoning(step, line, len(trace)), f"reasoning for step {step}")))
        blocks.append(_block("print", line))
    return blocks


def _answer_value(value: str, what: str) -> str:
    value = _checked(value, what).strip()
    if not value:
        raise ValueError(f"{what} is empty: there is nothing to answer")
    return value


def render_output_completion(trace: list[str], output: str,
                             reasoning: Callable[[int, str, int], str] = default_reasoning) -> str:
    """SFT target of the output task: reasoning+print per trace line, then reasoning+answer."""
    output = _answer_value(output, "output")
    blocks = _trace_blocks(trace, reasoning)
    blocks += [_block("reasoning", OUTPUT_FINAL_REASONING), _block("answer", output)]
    return "\n".join(blocks)


def render_input_completion(input: str, trace: list[str],
                            reasoning: Callable[[int, str, int], str] = default_reasoning) -> str:
    """SFT target of the input task: commit to `input`, trace the run on it, answer `input` again."""
    # A function without arguments has no input to predict (its empty answer would parse as "empty_answer").
    input = _answer_value(input, "input")
    blocks = [_block("reasoning", INPUT_COMMIT_REASONING), _block("input", input)]
    blocks += _trace_blocks(trace, reasoning)
    blocks += [_block("reasoning", INPUT_FINAL_REASONING), _block("answer", input)]
    return "\n".join(blocks)


@dataclass(frozen=True)
class Parsed:
    """What a completion says. Spans are [start, end) character offsets into the parsed text."""

    input: str | None                       # first <input> block, stripped
    prints: list[str]                       # every <print> block in order, stripped
    answer: str | None                      # last <answer> block, stripped
    print_spans: list[tuple[int, int]]      # each whole <print>...</print> block
    segment_spans: list[tuple[int, int]]    # from the end of the previous <print> or <input> block (or 0) to </print>
    flags: frozenset[str]                   # format problems, see FLAGS


FLAGS = {
    "no_answer": "no complete <answer> block",
    "empty_answer": "the last <answer> is blank",
    "multiple_answers": "more than one <answer> block (the last one counts)",
    "multiple_inputs": "more than one <input> block (the first one counts)",
    "unclosed_tag": "an opened block never closed (it is dropped)",
    "nested_tag": "a tag inside another block (kept as that block's text)",
    "stray_closing_tag": "a closing tag with no open block",
    "out_of_order": "an <input> after a <print>/<answer>, or a <print> after an <answer>",
    "missing_reasoning": "a <print>/<input>/<answer> block with no <reasoning> block since the previous one",
    "text_after_answer": "non-blank text after the last </answer>",
    "no_input": "task='input' but no <input> block",
    "unexpected_input": "task='output' but an <input> block is present",
}


def _blocks(text: str, flags: set[str]) -> list[tuple[str, int, int, int, int]]:
    """Top-level blocks as (name, start, content_start, content_end, end), in text order."""
    blocks = []
    open_name, start, content_start = None, 0, 0
    for tag in _TAG.finditer(text):
        closing, name = tag.group(1) == "/", tag.group(2)
        if open_name is None:
            if closing:
                flags.add("stray_closing_tag")
            else:
                open_name, start, content_start = name, tag.start(), tag.end()
        elif closing and name == open_name:
            blocks.append((name, start, content_start, tag.start(), tag.end()))
            open_name = None
        else:
            flags.add("nested_tag")
    if open_name is not None:
        flags.add("unclosed_tag")
    return blocks


def parse_completion(text: str, *, task: str | None = None) -> Parsed:
    """Read a model completion; never raises on a str. `task` ("output"/"input") adds the task-specific flags."""
    if not isinstance(text, str):
        raise TypeError(f"parse_completion needs a str, got {type(text).__name__}")
    if task not in (None, "output", "input"):
        raise ValueError(f"task must be None, 'output' or 'input', got {task!r}")
    flags: set[str] = set()
    inputs, prints, answers = [], [], []
    print_spans, segment_spans = [], []
    boundary = 0                     # where the next reasoning+print segment starts
    answer_end = None
    reasoned = False                 # a <reasoning> block closed since the previous non-reasoning block
    for name, start, content_start, content_end, end in _blocks(text, flags):
        if name == "reasoning":
            reasoned = True
            continue
        if not reasoned:
            flags.add("missing_reasoning")
        reasoned = False
        content = text[content_start:content_end].strip()
        if name == "print":
            if answers:
                flags.add("out_of_order")
            prints.append(content)
            print_spans.append((start, end))
            segment_spans.append((boundary, end))
            boundary = end
        elif name == "input":
            if prints or answers:
                flags.add("out_of_order")
            inputs.append(content)
            boundary = end
        else:
            answers.append(content)
            answer_end = end
    if len(inputs) > 1:
        flags.add("multiple_inputs")
    if len(answers) > 1:
        flags.add("multiple_answers")
    if not answers:
        flags.add("no_answer")
    elif not answers[-1]:
        flags.add("empty_answer")
    if answer_end is not None and text[answer_end:].strip():
        flags.add("text_after_answer")
    if task == "input" and not inputs:
        flags.add("no_input")
    if task == "output" and inputs:
        flags.add("unexpected_input")
    return Parsed(input=inputs[0] if inputs else None, prints=prints, answer=answers[-1] if answers else None,
                  print_spans=print_spans, segment_spans=segment_spans, flags=frozenset(flags))
