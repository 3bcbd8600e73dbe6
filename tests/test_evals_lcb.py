"""LiveCodeBench code execution: extraction, skip rule, loader, scoring on a fixture in the upstream schema; and the
`evaluate` stage end to end on a tiny random model (official and stepcode prompts)."""

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


def test_lcb_has_only_the_output_task():
    with pytest.raises(ValueError, match="only the output task"):
        lcb.adapter("input")


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

    params = tmp_path / "params.yaml"
    params.write_text(f"evaluate:\n  cruxeval_path: {CRUX}\n  lcb_path: {FIXTURE}\n  n: 5\n  temperatures: [0.2, 0.8]"
                      f"\n  max_new_tokens: 12\n")
    out = tmp_path / "eval"
    r = CliRunner().invoke(app, ["evaluate", "--model", str(tiny_model), "--benchmarks", "cruxeval,lcb",
                                 "--limit", "3", "-o", str(out), "--params", str(params)])
    assert r.exit_code == 0, r.output
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("cruxeval_output", "cruxeval_input", "lcb_output"):
        for k in (f"{key}_pass_at_1", f"{key}_pass_at_5", f"{key}_t0.2_pass_at_1", f"{key}_t0.8_pass_at_5"):
            assert 0.0 <= metrics[k] <= 100.0, k
        for run in ("t0.2", "t0.8"):
            gens = json.loads((out / "generations" / f"{key}_{run}.json").read_text())
            assert list(gens) == ["sample_0", "sample_1", "sample_2"]
            assert all(len(v) == 5 and all(isinstance(g, str) for g in v) for v in gens.values())
            assert (out / "generations" / f"{key}_{run}.raw.json").exists()
            scored = json.loads((out / "scored" / f"{key}_{run}.json").read_text())
            assert list(scored) == ["raw_generations", "raw_scored_generations", "pass_at_1", "pass_at_5"]
    run = json.loads((out / "run.json").read_text())
    assert run["decoding"] == "sampled" and run["limit"] == 3 and run["backend"] == "transformers"

    # paper-style greedy run on the stepcode task: labelled greedy, step accuracy beside pass@1
    params.write_text(f"evaluate:\n  cruxeval_path: {CRUX}\n  greedy: true\n  max_new_tokens: 12\n")
    out2 = tmp_path / "eval2"
    r = CliRunner().invoke(app, ["evaluate", "--model", str(tiny_model), "--benchmarks", "cruxeval", "--limit", "2",
                                 "--prompt", "stepcode", "-o", str(out2), "--params", str(params)])
    assert r.exit_code == 0, r.output
    metrics = json.loads((out2 / "metrics.json").read_text())
    assert metrics["stepcode_cruxeval_output_problems"] + metrics["stepcode_cruxeval_output_excluded"] == 2
    if metrics["stepcode_cruxeval_output_problems"]:
        assert 0.0 <= metrics["stepcode_cruxeval_output_greedy_step_accuracy"] <= 100.0
        assert 0.0 <= metrics["stepcode_cruxeval_output_greedy_pass_at_1"] <= 100.0
    assert json.loads((out2 / "run.json").read_text())["decoding"] == "greedy"


def test_evaluate_refuses_a_missing_lcb_export_before_loading_a_model(tmp_path):
    from typer.testing import CliRunner

    from stepcode.cli import app

    params = tmp_path / "params.yaml"
    params.write_text(f"evaluate:\n  lcb_path: {tmp_path / 'absent.jsonl'}\n")
    r = CliRunner().invoke(app, ["evaluate", "--model", str(tmp_path), "--benchmarks", "lcb", "-o",
                                 str(tmp_path / "o"), "--params", str(params)])
    assert r.exit_code == 2 and "execution-v2" in r.output
