'''CRUXEval adapter (Gu et al. 2024): load the 800 problems, build the official prompts, extract and check predictions.

    from stepcode.evals import cruxeval
    problems = cruxeval.load_problems("data/benchmarks/cruxeval/cruxeval.jsonl")
    prompt = cruxeval.make_prompt(problems[0], task="output", cot=False)     # upstream prompts.py, verbatim
    pred = cruxeval.extract(model_text, task="output", cot=False)           # upstream postprocess_generation
    cruxeval.check_program(problems[0], pred, task="output")                # "CODE\nassert GOLD == PRED", or None
    cruxeval.adapter("input")                                               # for stepcode.evals.scoring.score
    cruxeval.CRUXEVAL                                   # the Benchmark (stepcode/evals/benchmark.py) the registry lists

Tasks: "output" (CRUXEval-O: given f and an input, predict the return value as a literal) and "input" (CRUXEval-I:
given f and the output, predict a call `f(...)`). Both are checked the same way, `assert <gold output> == <pred>`
after the function code, so correctness is Python `==` on evaluated values, not string equality.

Copied-input rule ("echo guard"): an output prediction containing the call `f(<input>)` is skipped (it would pass by
re-running the function), and so is an input prediction without `f(` (it is not a call). `scoring.combine` decides
what a skipped generation counts as ("drop", the default, or the older "false").

Prompts: `make_prompt` reproduces upstream `prompts.py` (facebookresearch/cruxeval) character for character; chat
models get it as the user turn after SYSTEM_MESSAGE (upstream openai_prompt.py). The stop string is "[/ANSWER]".
'''

from __future__ import annotations

from functools import partial
from pathlib import Path

from stepcode.errors import MissingInput
from stepcode.evals.benchmark import Benchmark, Prompt
from stepcode.evals.scoring import Adapter

TASKS = ("output", "input")
SYSTEM_MESSAGE = "You are an expert at Python programming, code execution, test case generation, and fuzzing."
STOP = "[/ANSWER]"
EXPECTED_SIZE = 800

_OUTPUT_INSTRUCTION = (
    "You are given a Python function and an assertion containing an input to the function. Complete the assertion "
    "with a literal (no unsimplified expressions, no function calls) containing the output when executing the "
    "provided code on the given input, even if the function is incorrect or incomplete. Do NOT output any extra "
    "information.")

DIRECT_OUTPUT = _OUTPUT_INSTRUCTION + ''' Provide the full assertion with the correct output in [ANSWER] and [/ANSWER] tags, following the examples.

[PYTHON]
def f(n):
    return n
assert f(17) == ??
[/PYTHON]
[ANSWER]
assert f(17) == 17
[/ANSWER]

[PYTHON]
def f(s):
    return s + "a"
assert f("x9j") == ??
[/PYTHON]
[ANSWER]
assert f("x9j") == "x9ja"
[/ANSWER]

[PYTHON]
{code}
assert f({input}) == ??
[/PYTHON]
[ANSWER]
'''

COT_OUTPUT = _OUTPUT_INSTRUCTION + ''' Execute the program step by step before arriving at an answer, and provide the full assertion with the correct output in [ANSWER] and [/ANSWER] tags, following the examples.

[PYTHON]
def f(s):
    s = s + s
    return "b" + s + "a"
assert f("hi") == ??
[/PYTHON]
[THOUGHT]
Let's execute the code step by step:

1. The function f is defined, which takes a single argument s.
2. The function is called with the argument "hi", so within the function, s is initially "hi".
3. Inside the function, s is concatenated with itself, so s becomes "hihi".
4. The function then returns a new string that starts with "b", followed by the value of s (which is now "hihi"), and ends with "a".
5. The return value of the function is therefore "bhihia".
[/THOUGHT]
[ANSWER]
assert f("hi") == "bhihia"
[/ANSWER]

[PYTHON]
{code}
assert f({input}) == ??
[/PYTHON]
[THOUGHT]
'''

DIRECT_INPUT = '''You will be given a function f and an output in the form f(??) == output. Find any input such that executing f on the input leads to the given output. There may be multiple answers, but you should only output one. In [ANSWER] and [/ANSWER] tags, complete the assertion with one such input that will produce the output when executing the function.

[PYTHON]
def f(my_list):
    count = 0
    for i in my_list:
        if len(i) % 2 == 0:
            count += 1
    return count
assert f(??) == 3
[/PYTHON]
[ANSWER]
assert f(["mq", "px", "zy"]) == 3
[/ANSWER]

[PYTHON]
def f(s1, s2):
    return s1 + s2
assert f(??) == "banana"
[/PYTHON]
[ANSWER]
assert f("ba", "nana") == "banana"
[/ANSWER]

[PYTHON]
{code}
assert f(??) == {output}
[/PYTHON]
[ANSWER]
'''

# Upstream has a trailing space after "We know that f(??) == 17." and after "should be 16."; kept.
COT_INPUT = '''You will be given a function f and an output in the form f(??) == output. Your task is to find any input such that executing f on the input leads to the given output. There may be multiple answers, but only output one. First, think step by step. You MUST surround the answer with [ANSWER] and [/ANSWER] tags. Express your answer as a passing assertion containing the input and the given output.

[PYTHON]
def f(x):
    return x + 1
assert f(??) == 17
[/PYTHON]
[THOUGHT]
To find an input such that executing f on the input leads to the given output, we can work backwards from the given assertion. We know that f(??) == 17. 

Since the function f(x) returns x + 1, for f(??) to be equal to 17, the value of ?? should be 16. 
[/THOUGHT]
[ANSWER]
assert f(16) == 17
[/ANSWER]

[PYTHON]
{code}
assert f(??) == {output}
[/PYTHON]
[THOUGHT]
'''

_TEMPLATES = {("output", False): DIRECT_OUTPUT, ("output", True): COT_OUTPUT,
              ("input", False): DIRECT_INPUT, ("input", True): COT_INPUT}


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"CRUXEval task must be one of {TASKS}, got {task!r}")


def load_problems(path) -> list[dict]:
    """The benchmark rows `{code, input, output, id}` in file order (sample_0 ... sample_799)."""
    from stepcode.jsonl import read_jsonl

    p = Path(path)
    if not p.exists():
        raise MissingInput(f"CRUXEval data not found at {p} (set evaluate.cruxeval_path in params.yaml)")
    rows = list(read_jsonl(p))
    for i, row in enumerate(rows, 1):
        missing = {"id", "code", "input", "output"} - set(row)
        if missing:
            raise ValueError(f"{p}:{i}: a CRUXEval row needs id, code, input, output; missing {sorted(missing)}")
    return rows


def make_prompt(problem: dict, task: str, cot: bool = False) -> str:
    """The official prompt text (`make_{direct,cot}_{output,input}_prompt`)."""
    _check_task(task)
    # str.replace, not str.format: the code itself may contain braces.
    template = _TEMPLATES[(task, bool(cot))]
    text = template.replace("{code}", problem["code"])
    slot, value = ("{input}", problem["input"]) if task == "output" else ("{output}", problem["output"])
    head, _, tail = text.rpartition(slot)   # the slot sits after the code: replace only that occurrence
    return head + value + tail


def make_messages(problem: dict, task: str, cot: bool = False) -> list[dict]:
    """The prompt as chat messages, the way upstream drives chat models."""
    return [{"role": "system", "content": SYSTEM_MESSAGE}, {"role": "user", "content": make_prompt(problem, task, cot)}]


def extract(text: str, task: str, cot: bool = False) -> str:
    """The prediction in raw model text (prompt already removed), as upstream `postprocess_generation` does.
    The text is first cut at the stop string "[/ANSWER]": upstream generators never return it (vLLM drops it), so
    a generation that ran past it would otherwise carry the tag into the spliced literal."""
    _check_task(task)
    if not isinstance(text, str):
        raise TypeError(f"extract() expects the model's text (str), got {type(text).__name__}")
    text = text.split(STOP)[0]
    if cot and "[ANSWER]" in text:
        text = text.split("[ANSWER]")[1].strip()
    if task == "output":
        if "==" in text:
            text = text.split("==")[1].strip()
        return text.strip()
    if "==" in text:
        text = text.split("==")[0].strip()
    if "assert f" in text:
        text = "f" + text.split("assert f")[1].strip()
    return text.strip()


def is_skipped(problem: dict, prediction: str, task: str) -> bool:
    """The copied-input rule (upstream evaluate_score)."""
    _check_task(task)
    if task == "input":
        return "f(" not in prediction
    return f"f({problem['input']})" in prediction


def check_program(problem: dict, prediction: str, task: str) -> str | None:
    """The program whose clean run means "correct", or None when the copied-input rule skips the prediction."""
    if is_skipped(problem, prediction, task):
        return None
    return f"{problem['code']}\nassert {problem['output']} == {prediction}"


def adapter(task: str) -> Adapter:
    _check_task(task)
    return Adapter(name=f"cruxeval-{task}", check_program=partial(_check_program_for, task=task),
                   default_skip_rule="drop")


def _check_program_for(problem: dict, prediction: str, *, task: str) -> str | None:
    return check_program(problem, prediction, task)


class CRUXEval(Benchmark):
    """CRUXEval-O and -I: the official prompts and our instrumented stepcode task on both, official extraction,
    copied-input rule "drop"; decontamination against build.benchmarks_dir/cruxeval/cruxeval.jsonl."""

    name, title, tasks = "cruxeval", "CRUXEval", TASKS
    stepcode_tasks = ("output", "input")

    def load_problems(self, params) -> list[dict]:
        return load_problems(params.evaluate.cruxeval_path)

    def official_prompts(self, problem: dict, task: str, cot: bool = False) -> list[tuple[str, Prompt]]:
        return [(problem["id"], Prompt(make_messages(problem, task, cot), make_prompt(problem, task, cot)))]

    def extract(self, text: str, task: str, cot: bool = False) -> str:
        return extract(text, task, cot)

    def scoring_adapter(self, task: str) -> Adapter:
        return adapter(task)

    def decontamination_sources(self, build) -> dict[str, Path]:
        # relative to the cwd, like every path in params; kept relative so the report reads the same in any checkout
        return {"cruxeval": Path(build.benchmarks_dir) / "cruxeval" / "cruxeval.jsonl"}

    def stepcode_program(self, problem: dict, task: str) -> dict:
        self.check_task(task)
        return {"id": problem["id"], "code": problem["code"], "input": problem["input"], "entry_point": "f",
                "gold_output": problem["output"]}


CRUXEVAL = CRUXEval()
