"""The held-out evaluation against a model whose outputs are known: the micro model, overfit by the real SFT trainer on
four held-out-format rows until greedy decoding reproduces their gold completions exactly (checked first, by
generating), must score exactly 1.0 final and step accuracy on them; on a row it never saw, whose gold values it
provably does not write (checked by generating), exactly 0; and on the mix, exactly the share of each."""

from __future__ import annotations

import ast

import pytest

pytestmark = pytest.mark.slow   # ~30 s on 2 cores: 250 SFT steps of the micro model, greedy decoding, the sandbox

# Two anchors each (one assignment + return_val), so the pooled and the per-row step accuracy are the same number.
KNOWN = [
    {"id": "known-0", "code": "def f(x):\n    y = x + 3\n    return y * 2\n", "input": "4", "entry_point": "f"},
    {"id": "known-1", "code": "def f(s):\n    t = s.upper()\n    return t + '!'\n", "input": "'ab'",
     "entry_point": "f"},
    {"id": "known-2", "code": "def f(a, b):\n    c = a - b\n    return [c, c]\n", "input": "9, 5", "entry_point": "f"},
]
# Never trained on: its gold lines (m: 1353, return_val: 1348) and answer (1348) appear in no training text.
UNSEEN = {"id": "unseen", "code": "def f(n):\n    m = n * 11\n    return m - 5\n", "input": "123", "entry_point": "f"}
# Measured on 2 cores: at lr 5e-3 all four completions are reproduced exactly from 110 steps (not at 80); at 3e-3 from
# 150 (not at 120). More than twice that here, so a different CPU's rounding does not decide the premise.
SFT_STEPS, SFT_LR = 250, 5e-3


def _examples(programs, tasks):
    from stepcode.config import Params
    from stepcode.data.dataset import task_examples
    from stepcode.data.traces import trace_rows

    traced = list(trace_rows(programs, Params(), workers=1))   # the real tracer: the gold comes from running the code
    assert [r["status"] for r in traced] == ["ok"] * len(programs)
    pairs = [task_examples(row, task) for row, task in zip(traced, tasks)]
    return traced, [s for s, _ in pairs], [r for _, r in pairs]


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    """(model dir, known SFT rows, known held-out rows, unseen held-out row): three output-task rows and the input
    task of the first program, trained on until memorised."""
    from stepcode.config import Params
    from stepcode.jsonl import write_jsonl
    from stepcode.training.models import build_tiny_model, corpus_texts
    from stepcode.training.sft import run_sft

    d = tmp_path_factory.mktemp("known")
    traced, sft_rows, heldout_rows = _examples(KNOWN + [KNOWN[0]], ["output"] * 3 + ["input"])
    assert [r["trace"] for r in traced[:3]] == [["y: 7", "return_val: 14"], ["t: AB", "return_val: AB!"],
                                                ["c: 4", "return_val: [4, 4]"]]
    _, _, (unseen,) = _examples([UNSEEN], ["output"])
    assert (unseen["gold_trace"], unseen["gold_output"]) == (["m: 1353", "return_val: 1348"], "1348")
    write_jsonl(d / "sft.jsonl", sft_rows)
    build_tiny_model(d / "base", corpus_texts(traced), size="micro")
    micro = Params().train.get("micro")
    profile = micro.model_copy(update={"sft": micro.sft.model_copy(
        update={"max_steps": SFT_STEPS, "learning_rate": SFT_LR, "batch_size": len(sft_rows)})})
    run_sft(d / "base", d / "sft.jsonl", d / "model", profile)
    return d / "model", sft_rows, heldout_rows, unseen


def _greedy(model_dir, rows, max_new_tokens: int) -> list[str]:
    """Greedy completions by plain `model.generate` (not the evaluator's code), special tokens dropped."""
    import torch

    from stepcode.training.models import load_model

    model, tok = load_model(model_dir)
    texts = []
    for row in rows:
        prompt = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens)
        texts.append(tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return texts


def _params(max_new_tokens: int):
    from stepcode.config import Params

    params = Params()
    return params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"max_new_tokens": max_new_tokens,
                                                                                    "greedy": True})})


def _budget(model_dir, sft_rows) -> int:
    from stepcode.training.models import load_tokenizer

    tok = load_tokenizer(model_dir)
    return max(len(tok(r["completion"][0]["content"], add_special_tokens=False)["input_ids"]) for r in sft_rows) + 16


def test_heldout_scores_exactly_one_on_memorised_rows_and_zero_on_an_unseen_one(overfit, tmp_path):
    from stepcode.evals.heldout import evaluate_heldout
    from stepcode.jsonl import write_jsonl
    from stepcode.prompts import parse_completion

    model_dir, sft_rows, heldout_rows, unseen = overfit
    budget = _budget(model_dir, sft_rows)
    gold = [r["completion"][0]["content"] for r in sft_rows]
    assert [r["prompt"] for r in heldout_rows] == [r["messages"] for r in sft_rows]   # same prompts as trained on

    # 1. The premise, by generating: greedy decoding reproduces every gold completion exactly, and stops there.
    assert _greedy(model_dir, heldout_rows, budget) == gold

    # 2. The held-out evaluation of those rows: exactly 1.0, overall and per task, and per row.
    known = tmp_path / "known.jsonl"
    write_jsonl(known, heldout_rows)
    metrics, records = evaluate_heldout(str(model_dir), known, _params(budget), progress=False)
    expected = {"heldout.rows": 4.0, "heldout.final_acc": 1.0, "heldout.step_acc": 1.0, "heldout.gap": 0.0,
                "heldout.output.rows": 3.0, "heldout.output.final_acc": 1.0, "heldout.output.step_acc": 1.0,
                "heldout.input.rows": 1.0, "heldout.input.final_acc": 1.0, "heldout.input.step_acc": 1.0}
    assert {k: metrics[k] for k in expected} == expected
    assert [(r["id"], r["task"], r["final"], r["steps_correct"], r["n"]) for r in records] == [
        ("known-0", "output", 1.0, 2, 2), ("known-1", "output", 1.0, 2, 2), ("known-2", "output", 1.0, 2, 2),
        ("known-0", "input", 1.0, 2, 2)]
    assert [r["completion"] for r in records] == gold   # what was scored is what the model wrote

    # 3. The unseen row: what the model writes for it (greedy, so certain) has neither a gold line at its position
    # nor the gold value as its answer, so its score is exactly 0 on both counts.
    (text,) = _greedy(model_dir, [unseen], budget)
    parsed = parse_completion(text, task="output")
    assert all(i >= len(parsed.prints) or parsed.prints[i].strip() != line
               for i, line in enumerate(unseen["gold_trace"])), text
    assert parsed.answer is None or not _equals(parsed.answer, 1348), text
    alone = tmp_path / "unseen.jsonl"
    write_jsonl(alone, [unseen])
    metrics, records = evaluate_heldout(str(model_dir), alone, _params(budget), progress=False)
    assert (metrics["heldout.rows"], metrics["heldout.final_acc"], metrics["heldout.step_acc"]) == (1.0, 0.0, 0.0)
    assert (records[0]["final"], records[0]["steps_correct"], records[0]["n"]) == (0.0, 0, 2)

    # 4. Mixed: 4 of 5 answers right and 8 of 10 anchors (every row has two), exactly.
    mixed = tmp_path / "mixed.jsonl"
    write_jsonl(mixed, heldout_rows[:2] + [unseen] + heldout_rows[2:])
    metrics, records = evaluate_heldout(str(model_dir), mixed, _params(budget), progress=False, prefix="mix")
    assert (metrics["mix.rows"], metrics["mix.final_acc"], metrics["mix.step_acc"]) == (5.0, 4 / 5, 8 / 10)
    assert (metrics["mix.output.final_acc"], metrics["mix.output.step_acc"]) == (3 / 4, 6 / 8)
    assert [r["final"] for r in records] == [1.0, 1.0, 0.0, 1.0, 1.0]

    # 5. The limit takes the first rows, in file order.
    metrics, _ = evaluate_heldout(str(model_dir), mixed, _params(budget), progress=False, limit=2)
    assert (metrics["heldout.rows"], metrics["heldout.final_acc"], metrics["heldout.step_acc"]) == (2.0, 1.0, 1.0)


def _equals(answer: str, value) -> bool:
    try:
        return ast.literal_eval(answer) == value
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False
