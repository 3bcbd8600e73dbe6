"""LiveCodeBench code execution: extraction, skip rule, loader, scoring on a fixture in the upstream schema; input
prediction (our prompt, CRUXEval-I's scoring) and the stepcode program rows; and the `evaluate` stage end to end on a
tiny random model (official and stepcode prompts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stepcode.evals import livecodebench as lcb
from stepcode.evals.scoring import score

FIXTURE = Path(__file__).parent / "fixtures" / "lcb_execution_sample.jsonl"
CRUX = Path(__file__).resolve().parents[1] / "data" / "benchmarks" / "cruxeval" / "cruxeval.jsonl"


@pytest.mark.parametrize("text, cot, expected", [
    ("assert findKOr(nums = [7], k = 4) == 9\nassert more == 1", False, "9"),            # first line only
    ("assert f(a = 1) == [1,\n 2]\n[/ANSWER]", False, "[1,\n 2]"),                    # up to [/ANSWER]
    ("[THOUGHT]\nso x == 5\n[/THOUGHT]\n[ANSWER]\nassert g(s = 'a') == 'b'\n[/ANSWER]", True, "'b'"),
    ("so x == 5, then\nassert g() == 6", False, "5, then"),      # direct mode: a preamble == breaks it (upstream)
    ("13", False, "13"),
])
def test_extraction(text, cot, expected):
    assert lcb.extract(text, cot) == expected


def test_loader_reads_the_upstream_schema_and_sorts_by_sample_number(tmp_path):
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    assert all(set(r) == set(lcb.FIELDS) for r in rows)
    shuffled = tmp_path / "x.jsonl"
    shuffled.write_text("\n".join(json.dumps(r) for r in reversed(rows)) + "\n")
    assert [p["id"] for p in lcb.load_problems(shuffled)] == [f"sample_{i}" for i in range(6)]


def test_missing_export_names_the_export_command(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        lcb.load_problems(tmp_path / "lcb_execution.jsonl")
    assert "load_dataset('livecodebench/execution-v2', split='test')" in str(e.value)


def test_bad_row_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "sample_0", "function_name": "g", "code": "def g(): pass", "input": "1",
                               "output": "1"}) + "\n")
    with pytest.raises(ValueError, match="full call of g"):
        lcb.load_problems(bad)


def test_prompt_uses_the_call_style_input():
    p = lcb.load_problems(FIXTURE)[0]
    text = lcb.make_prompt(p)
    assert "assert repeatNumber(number = 17) == ??" in text
    assert text.endswith(f"{p['code']}\nassert distinctDifferenceArray(nums = [1, 2, 3, 4, 5]) == ??\n"
                         "[/PYTHON]\n[ANSWER]\n")
    assert lcb.make_prompt(p, cot=True).endswith("== ??\n[/PYTHON]\n[THOUGHT]\n")


def test_fixture_scoring_with_the_lcb_skip_rule():
    problems = lcb.load_problems(FIXTURE)
    gens = {
        "sample_0": ["[-3,-1,1,3,5]", "[-3, -1, 1, 3, 4]"],                          # value equality; wrong
        "sample_1": ["distinctDifferenceArray(nums = [3, 2, 3, 4, 2])", "[0]"],       # copied call dropped; wrong
        "sample_2": ['"abca"', "'abca'", "abca"],                                     # NameError on the last
        "sample_3": ["maximumSumOfHeights(maxHeights = [5, 3, 4, 1, 1])"],            # all dropped
        "sample_4": ["4"],                                                            # needs the List preamble
        "sample_5": ["9", "sum(range(5)) - 1"],                                       # expressions evaluate
    }
    result = score(lcb.adapter(), problems, gens)
    assert result["raw_scored_generations"] == {
        "sample_0": [True, False], "sample_1": [False], "sample_2": [True, True, False], "sample_3": [False],
        "sample_4": [True], "sample_5": [True, True]}
    assert result["pass_at_1"] == pytest.approx(100 * (0.5 + 0 + 2 / 3 + 0 + 1 + 1) / 6)


def test_lcb_tasks_and_an_unknown_task():
    assert lcb.LIVECODEBENCH.tasks == lcb.LIVECODEBENCH.stepcode_tasks == ("output", "input")
    assert (lcb.adapter().name, lcb.adapter().default_skip_rule) == ("lcb-output", "lcb")
    assert (lcb.adapter("input").name, lcb.adapter("input").default_skip_rule) == ("lcb-input", "drop")
    for call in (lambda: lcb.adapter("reverse"), lambda: lcb.make_prompt(P0, task="reverse"),
                 lambda: lcb.extract("x", task="reverse"), lambda: lcb.check_program(P0, "1", "reverse")):
        with pytest.raises(ValueError, match="'reverse'"):
            call()


# --- input prediction: our prompt, CRUXEval-I's extraction, check and skip rule --------------------------------------

P0 = {"id": "sample_9", "function_name": "g", "code": "def g(x: int) -> int:\n    return x + 1",
      "input": "g(x = 1)", "output": "2"}


@pytest.mark.parametrize("cot", [False, True])
def test_input_prompt_fills_the_slots_after_the_code(cot):
    p = lcb.load_problems(FIXTURE)[2]
    text = lcb.make_prompt(p, cot, "input")
    end = "[/PYTHON]\n[THOUGHT]\n" if cot else "[/PYTHON]\n[ANSWER]\n"
    assert text.endswith(f"[PYTHON]\n{p['code']}\nassert minimumString(??) == \"abca\"\n{end}")
    assert text.startswith("You will be given a Python function and an output in the form function(??) == output. ")
    assert "ind any input such that executing the function on the input leads to the given output" in text
    assert ("assert addOne(x = 16) == 17" if cot else 'concatenateStrings(s1 = "ba", s2 = "nana") == "banana"') \
        in text
    assert "{" not in text.replace(p["code"], "")                       # no slot left unfilled
    if cot:
        assert "Express your answer as a passing assertion containing the input and the given output" in text
    assert lcb.make_messages(p, cot, "input") == [{"role": "system", "content": lcb.SYSTEM_MESSAGE},
                                                  {"role": "user", "content": text}]
    [(sid, prompt)] = lcb.LIVECODEBENCH.prompts(p, "input", cot=cot)
    assert (sid, prompt.raw, prompt.messages) == ("sample_2", text, lcb.make_messages(p, cot, "input"))
    # the output prompts are unchanged by the task argument
    assert lcb.make_prompt(p, cot) == lcb.make_prompt(p, cot, "output")


def test_input_prompt_with_slot_text_in_the_code_and_output():
    p = dict(P0, code='def g(x: int) -> str:\n    return "{output} {function_name} {code} {input}" + str(x)',
             output='"{output} {code} 2"')
    text = lcb.make_prompt(p, False, "input")
    assert text.endswith(f"[PYTHON]\n{p['code']}\nassert g(??) == \"{{output}} {{code}} 2\"\n[/PYTHON]\n[ANSWER]\n")
    assert text.count("{output}") == 2 and text.count("{function_name}") == 1


@pytest.mark.parametrize("text, cot, expected", [
    ("assert g(x = 1) == 2\n[/ANSWER]", False, "g(x = 1)"),
    ("assert g(x = 1) == 2", False, "g(x = 1)"),
    ("g(x = 1)\n[/ANSWER]\nassert g(x = 5) == 6", False, "g(x = 1)"),              # cut at [/ANSWER] first
    ("Sure:\nassert g(nums = [1,\n 2]) == 2\n[/ANSWER]", False, "g(nums = [1,\n 2])"),   # multi-line call kept
    ("[THOUGHT]\nif a == 1 ...\n[/THOUGHT]\n[ANSWER]\nassert g(a = 1) == 2\n[/ANSWER]", True, "g(a = 1)"),
    ("[THOUGHT]\nif a == 1 ...", True, "[THOUGHT]\nif a"),                           # no [ANSWER]: left of ==
    ('assert g(s = "assert x") == 1', False, 'g(s = "assert x")'),                    # after the FIRST assert only
    ("17", False, "17"),
])
def test_input_extraction(text, cot, expected):
    assert lcb.extract(text, cot, "input") == expected
    assert lcb.LIVECODEBENCH.extract(text, "input", cot) == expected


def test_input_check_program_and_skip_rule():
    assert lcb.check_program(P0, "g(x = 1)", "input") == f"{lcb.BASE_IMPORTS}\n{P0['code']}\nassert 2 == g(x = 1)"
    assert lcb.check_program(P0, "g (x = 1)", "input") is None                     # not a call of g(
    assert lcb.check_program(P0, "1", "input") is None
    assert lcb.is_skipped(P0, "f(1)", "input") and not lcb.is_skipped(P0, "g(1)", "input")
    # the output side keeps its rule: the whole gold call copied is skipped, a bare value is not
    assert lcb.check_program(P0, "g(x = 1)") is None and lcb.check_program(P0, "g(x = 1)", "output") is None
    assert lcb.check_program(P0, "2") == f"{lcb.BASE_IMPORTS}\n{P0['code']}\nassert 2 == 2"
    assert lcb.adapter("input").check_program(P0, "g(x=0)") == lcb.check_program(P0, "g(x=0)", "input")


INPUT_GENS = {
    "sample_0": ["distinctDifferenceArray(nums = [1, 2, 3, 4, 5])", "distinctDifferenceArray([1, 2, 3, 4, 5])",
                 "distinctDifferenceArray(nums = [1, 1])"],                         # gold, positional, wrong
    "sample_1": ["distinctDifferenceArray(nums = [3, 2, 3, 4, 2])", "[3, 2, 3, 4, 2]"],   # gold; not a call
    "sample_2": ['minimumString(a = "bca", b = "abc")', 'minimumString(a = "abca", b = "a")'],  # both right
    "sample_3": ["maximumSumOfHeights(maxHeights = [1, 1])", "[5, 3, 4, 1, 1]"],   # wrong; not a call
    "sample_4": ["minOperations(nums = [3, 1, 5, 4, 2], k = 2)"],                  # needs the List preamble
    "sample_5": ["findKOr(nums = [9], k = 1)", "findKOr(nums = [7, 12, 9, 8, 9, 15], k = 5)"],   # right; wrong
}


def test_fixture_scoring_of_the_input_task_with_the_drop_rule():
    problems = lcb.load_problems(FIXTURE)
    result = score(lcb.adapter("input"), problems, INPUT_GENS)
    assert result["skip_rule"] == "drop"
    assert result["verdicts"] == {
        "sample_0": [True, True, False], "sample_1": [True, None], "sample_2": [True, True],
        "sample_3": [False, None], "sample_4": [True], "sample_5": [True, False]}
    assert result["raw_scored_generations"] == {
        "sample_0": [True, True, False], "sample_1": [True], "sample_2": [True, True],
        "sample_3": [False, False], "sample_4": [True], "sample_5": [True, False]}
    assert result["pass_at_1"] == pytest.approx(100 * (2 / 3 + 1 + 1 + 0 + 1 + 1 / 2) / 6)
    # every fixture row's gold call passes its own check
    gold = score(lcb.adapter("input"), problems, {p["id"]: [p["input"]] for p in problems})
    assert gold["raw_scored_generations"] == {p["id"]: [True] for p in problems}


def test_cli_scores_the_input_task(tmp_path):
    from typer.testing import CliRunner

    from stepcode.cli import app

    params = tmp_path / "params.yaml"
    params.write_text(f"evaluate:\n  lcb_path: {FIXTURE}\n")
    gens = tmp_path / "gens.json"
    raw = {k: [f"assert {g} == 0\n[/ANSWER]" for g in v] for k, v in INPUT_GENS.items()}
    gens.write_text(json.dumps(raw))
    out = tmp_path / "scored.json"
    r = CliRunner().invoke(app, ["score", "--benchmark", "lcb", "--task", "input", str(gens), "--extract", "direct",
                                 "-o", str(out), "--params", str(params)])
    assert r.exit_code == 0, r.output
    scored = json.loads(out.read_text())
    assert list(scored) == ["raw_generations", "raw_scored_generations", "pass_at_1", "pass_at_5"]
    assert scored["raw_generations"] == INPUT_GENS                  # the official extraction of the raw text
    assert scored["raw_scored_generations"]["sample_1"] == [True]
    assert scored["raw_scored_generations"]["sample_3"] == [False, False]
    assert scored["pass_at_1"] == pytest.approx(100 * (2 / 3 + 1 + 1 + 0 + 1 + 1 / 2) / 6)


# --- the stepcode program rows -------------------------------------------------------------------------------------

@pytest.mark.parametrize("code, expected", [
    ("def g(nums: List[int]) -> int:\n    return len(nums)", "from typing import List\n"),
    ("def g(x):\n    return x", ""),
    # the binding the whole preamble leaves: Counter from the later collections line, `bisect` the module
    ("def g(a: List[int]) -> Optional[int]:\n    c = Counter(a)\n    return bisect.bisect(sorted(c), 2)",
     "from typing import List, Optional\nimport bisect\nfrom collections import Counter\n"),
    ("def g(s):\n    return re_search('a', s), math.inf, accumulate(s)",
     "from re import search as re_search\nimport math\nfrom itertools import accumulate\n"),
    # locals are not imports: a parameter `count`, a nested `def merge`, a comprehension variable `comb`
    ("def g(count: int):\n    def merge(a, b):\n        return a + b\n    return merge(count, [comb for comb in []])", ""),
    # a name free in one function, local in another, is needed
    ("def h(count):\n    return count\ndef g(xs):\n    return list(zip(count(), xs))",
     "from itertools import count\n"),
    # a module-level binding the code reads only from functions is its own; one read at module level keeps the import
    ("def inf():\n    return 1\ndef g():\n    return inf()", ""),
    ("x = gcd(4, 6)\ndef gcd(a, b):\n    return 1", "from math import gcd\n"),
    ("class S:\n    k = inf\n    def g(self) -> list:\n        return deque([self.k])", "from math import inf\n"
     "from collections import deque\n"),
])
def test_needed_imports(code, expected):
    assert lcb.needed_imports(code) == expected
    exec(expected + code, {})                                        # the imports it names all exist


def test_needed_imports_of_unparsable_code():
    with pytest.raises(SyntaxError):
        lcb.needed_imports("def g(:\n")


@pytest.mark.parametrize("row", [json.loads(line) for line in FIXTURE.read_text().splitlines()],
                         ids=lambda r: r["id"])
@pytest.mark.parametrize("task", ["output", "input"])
def test_stepcode_program_of_each_fixture_row_runs_standalone(row, task):
    prog = lcb.LIVECODEBENCH.stepcode_program(row, task)
    assert set(prog) == {"id", "code", "input", "entry_point", "gold_output"}
    assert (prog["id"], prog["entry_point"], prog["gold_output"]) == (row["id"], row["function_name"], row["output"])
    assert f"{prog['entry_point']}({prog['input']})" == row["input"]          # the argument list of the gold call
    imports = lcb.needed_imports(row["code"])
    assert prog["code"] == (f"{imports}\n{row['code']}" if imports else row["code"])
    assert "from typing import List" in imports or "List" not in row["code"]
    assert len(imports.splitlines()) <= 2                                        # not the 40-line preamble
    exec(prog["code"] + f"\nassert {prog['entry_point']}({prog['input']}) == {prog['gold_output']}", {})


def test_stepcode_programs_of_the_fixture_trace_cleanly():
    """The rows the stepcode task instruments and traces (sandbox): none is left out, and the traced program's
    return value is the gold output."""
    import ast

    from stepcode.config import Params
    from stepcode.evals.stepcode_task import build_items

    problems = lcb.load_problems(FIXTURE)
    items, excluded = build_items([lcb.LIVECODEBENCH.stepcode_program(p, "input") for p in problems], Params())
    assert (excluded, [it["id"] for it in items]) == (0, [p["id"] for p in problems])
    assert [ast.literal_eval(it["output"]) for it in items] == [ast.literal_eval(p["output"]) for p in problems]


def test_stepcode_program_argument_lists():
    prog = lcb.LIVECODEBENCH.stepcode_program
    assert prog(dict(P0, input=' g(s = "(x)", t = [1, (2, 3)]) '), "input")["input"] == 's = "(x)", t = [1, (2, 3)]'
    assert prog(dict(P0, input="g ( x = 1 )"), "output")["input"] == "x = 1"
    assert prog(dict(P0, input="g(\n    x = [1,\n 2],\n)"), "output")["input"] == "x = [1,\n 2],"
    assert prog(dict(P0, input="g()"), "output")["input"] == ""
    for bad in ("h(x = 1)", "g(x = 1) + 1", "g(1)(2)", "g(x = ", "g.h(1)", "g", "g(1); g(2)"):
        with pytest.raises(ValueError, match=r"sample_9: input must be a single call of g\(\.\.\.\)"):
            prog(dict(P0, input=bad), "input")
    with pytest.raises(ValueError, match="sample_9: the code does not parse"):
        prog(dict(P0, code="def g(:"), "output")
    with pytest.raises(ValueError, match="'reverse'"):
        prog(P0, "reverse")


# --- evaluate end to end on a tiny random model --------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny")
    texts = [json.loads(line)["code"] for line in CRUX.read_text().splitlines()[:200]]
    texts += ["[PYTHON] [/PYTHON] [ANSWER] [/ANSWER] assert f(??) == <print></print><answer></answer>"] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|endoftext|>",
        chat_template="{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                      "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    cfg = LlamaConfig(vocab_size=len(hf_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                      pad_token_id=hf_tok.pad_token_id, eos_token_id=hf_tok.eos_token_id, bos_token_id=None,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = hf_tok.pad_token_id
    model.save_pretrained(d)
    hf_tok.save_pretrained(d)
    return d


@pytest.mark.slow
def test_evaluate_end_to_end_on_a_tiny_model(tiny_model, tmp_path):
    from typer.testing import CliRunner

    from stepcode.cli import app
    from stepcode.evals.registry import get
    from stepcode.prompts import parse_completion

    params = tmp_path / "params.yaml"
    params.write_text(f"evaluate:\n  cruxeval_path: {CRUX}\n  lcb_path: {FIXTURE}\n  n: 5\n  temperatures: [0.2, 0.8]"
                      f"\n  max_new_tokens: 12\n")
    out = tmp_path / "eval"
    r = CliRunner().invoke(app, ["evaluate", "--model", str(tiny_model), "--benchmarks", "cruxeval,lcb",
                                 "--limit", "3", "-o", str(out), "--params", str(params)])
    assert r.exit_code == 0, r.output
    metrics = json.loads((out / "metrics.json").read_text())
    keys = ("cruxeval_output", "cruxeval_input", "lcb_output", "lcb_input")
    # (a "<key>_problems" count beside them is being added to generate.py concurrently: accepted, not required)
    counts = {k: v for k, v in metrics.items() if k.endswith("_problems")}
    assert set(metrics) - set(counts) == {f"{key}_{m}" for key in keys for m in (
        "pass_at_1", "pass_at_5", "t0.2_pass_at_1", "t0.2_pass_at_5", "t0.8_pass_at_1", "t0.8_pass_at_5")}
    assert set(counts.values()) <= {3}
    ids = ["sample_0", "sample_1", "sample_2"]
    gens_files = {}
    for key in keys:
        bench, task = key.split("_")
        for run in ("t0.2", "t0.8"):
            raw = json.loads((out / "generations" / f"{key}_{run}.raw.json").read_text())
            gens = json.loads((out / "generations" / f"{key}_{run}.json").read_text())
            assert list(raw) == list(gens) == ids
            assert all(len(v) == 5 and all(isinstance(g, str) for g in v) for v in raw.values())
            # the extracted predictions are the benchmark's extraction of the raw text, one for one
            assert gens == {k: [get(bench).extract(t, task, False) for t in v] for k, v in raw.items()}
            scored = json.loads((out / "scored" / f"{key}_{run}.json").read_text())
            assert list(scored) == ["raw_generations", "raw_scored_generations", "pass_at_1", "pass_at_5"]
            assert scored["raw_generations"] == gens
            # an untrained 1-layer model's 12-token samples: every prediction wrong, so exactly 0
            assert scored["raw_scored_generations"] == {k: [False] * 5 for k in ids}, gens
            assert (scored["pass_at_1"], scored["pass_at_5"]) == (0.0, 0.0)
            assert (metrics[f"{key}_{run}_pass_at_1"], metrics[f"{key}_{run}_pass_at_5"]) == (0.0, 0.0)
            gens_files[key, run] = gens
        # the headline numbers: pass@1 from the first temperature, pass@5 from the last (official)
        assert metrics[f"{key}_pass_at_1"] == metrics[f"{key}_t0.2_pass_at_1"]
        assert metrics[f"{key}_pass_at_5"] == metrics[f"{key}_t0.8_pass_at_5"]
    run = json.loads((out / "run.json").read_text())
    assert (run["decoding"], run["limit"], run["backend"], run["benchmarks"], run["prompt"]) == (
        "cruxeval", 3, "transformers", ["cruxeval", "lcb"], "official")
    assert [(d["label"], d["temperature"], d["n"]) for d in run["runs"]] == [("t0.2", 0.2, 5), ("t0.8", 0.8, 5)]

    # Known predictions through the same files. `stepcode score` on evaluate's own generations file reproduces its
    # scored file; with the gold answer put in place of some samples it scores exactly those right.
    problems = {"cruxeval": {p["id"]: p for p in get("cruxeval").load_problems(_params(CRUX, FIXTURE))[:3]},
                "lcb": {p["id"]: p for p in lcb.load_problems(FIXTURE)[:3]}}
    gold_at = {"sample_0": [0], "sample_1": [2, 3], "sample_2": []}

    def rescore(key, gens, *rule):
        bench, task = key.split("_")
        path = tmp_path / f"{key}{len(rule)}.json"
        path.write_text(json.dumps(gens))
        r = CliRunner().invoke(app, ["score", "--benchmark", bench, "--task", task, str(path), "--samples",
                                     ",".join(ids), "-o", str(path.with_suffix(".scored.json")), "--params",
                                     str(params), *rule])
        assert r.exit_code == 0, r.output
        return json.loads(path.with_suffix(".scored.json").read_text())

    substituted = {}
    for key in keys:
        bench, task = key.split("_")
        same = rescore(key, gens_files[key, "t0.2"])
        assert same == json.loads((out / "scored" / f"{key}_t0.2.json").read_text())
        # CRUXEval-I answers are calls f(<input>), LCB input ones the gold call itself; the others the output value
        gold = {k: p["output"] if task == "output" else p["input"] if bench == "lcb" else f"f({p['input']})"
                for k, p in problems[bench].items()}
        gens = {k: [gold[k] if i in gold_at[k] else g for i, g in enumerate(v)]
                for k, v in gens_files[key, "t0.2"].items()}
        known = rescore(key, gens, "--skip-rule", "false")
        assert known["raw_scored_generations"] == {"sample_0": [True, False, False, False, False],
                                                   "sample_1": [False, False, True, True, False],
                                                   "sample_2": [False] * 5}, key
        assert known["pass_at_1"] == pytest.approx(100 * (1 / 5 + 2 / 5 + 0 / 5) / 3)
        assert known["pass_at_5"] == pytest.approx(100 * (1 + 1 + 0) / 3)
        substituted[key] = gens
    # CRUXEval-I's default "drop" rule: a prediction that is not a call is skipped, and dropped from a sample that has
    # a right one; a sample with none right stays all False
    gens = substituted["cruxeval_input"]
    assert rescore("cruxeval_input", gens)["raw_scored_generations"] == {
        k: [i in gold_at[k] for i, g in enumerate(v) if i in gold_at[k] or "f(" in g] if gold_at[k] else [False] * 5
        for k, v in gens.items()}

    # paper-style greedy run on the stepcode task: labelled greedy, step accuracy beside pass@1
    params.write_text(f"evaluate:\n  cruxeval_path: {CRUX}\n  greedy: true\n  max_new_tokens: 12\n")
    out2 = tmp_path / "eval2"
    r = CliRunner().invoke(app, ["evaluate", "--model", str(tiny_model), "--benchmarks", "cruxeval", "--limit", "2",
                                 "--prompt", "stepcode", "-o", str(out2), "--params", str(params)])
    assert r.exit_code == 0, r.output
    metrics = json.loads((out2 / "metrics.json").read_text())
    raw = json.loads((out2 / "generations" / "stepcode_cruxeval_output_greedy.raw.json").read_text())
    # CRUXEval's first two programs both trace cleanly, so neither is excluded; one greedy completion each
    assert list(raw) == ["sample_0", "sample_1"] and all(len(v) == 1 for v in raw.values())
    # 12 tokens of an untrained model: no <print> and no <answer> block, so step accuracy and pass@1 are exactly 0
    parsed = [parse_completion(v[0], task="output") for v in raw.values()]
    assert [(p.prints, p.answer) for p in parsed] == [([], None), ([], None)], raw
    assert metrics == {f"stepcode_cruxeval_{task}_{key}": value for task in ("output", "input") for key, value in (
        ("problems", 2.0), ("excluded", 0.0), ("greedy_pass_at_1", 0.0), ("greedy_step_accuracy", 0.0),
        ("pass_at_1", 0.0), ("step_accuracy", 0.0))}
    scored = json.loads((out2 / "scored" / "stepcode_cruxeval_output_greedy.json").read_text())
    assert scored["raw_generations"] == raw
    assert scored["raw_scored_generations"] == {"sample_0": [False], "sample_1": [False]}
    run = json.loads((out2 / "run.json").read_text())
    assert (run["decoding"], run["prompt"], run["limit"]) == ("paper", "stepcode", 2)
    assert [(d["label"], d["temperature"], d["n"]) for d in run["runs"]] == [("greedy", 0.0, 1)]


def _params(crux: Path, lcb_path: Path):
    from stepcode.config import Params

    p = Params()
    return p.model_copy(update={"evaluate": p.evaluate.model_copy(update={"cruxeval_path": str(crux),
                                                                          "lcb_path": str(lcb_path)})})


def test_evaluate_refuses_a_missing_lcb_export_before_loading_a_model(tmp_path):
    from typer.testing import CliRunner

    from stepcode.cli import app

    params = tmp_path / "params.yaml"
    params.write_text(f"evaluate:\n  lcb_path: {tmp_path / 'absent.jsonl'}\n")
    r = CliRunner().invoke(app, ["evaluate", "--model", str(tmp_path), "--benchmarks", "lcb", "-o",
                                 str(tmp_path / "o"), "--params", str(params)])
    assert r.exit_code == 2 and "execution-v2" in r.output
