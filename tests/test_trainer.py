"""Bi-Level GRPO on TRL: advantage plumbing checked against hand-computed values, real CPU training runs (micro model).

The exactness test feeds crafted completions through TRL's own `rollout_func` hook, so everything after generation is
the real thing: the sandboxed RewardScorer, the parser, the token offsets, the group statistics and TRL's loss.
"""

import json

import pytest
import torch

from stepcode.config import Params
from stepcode.prompts import input_messages, output_messages, render_input_completion, render_output_completion
from stepcode.training.grpo import SPANS, StepCodeReward, batch_advantages, decode_with_offsets

CODE = "def f(xs, k):\n    total = 0\n    for x in xs:\n        total += x * k\n    return total\n"
INSTRUMENTED = ("def f(xs, k):\n    total = 0\n    print(f'total: {total}')\n    for x in xs:\n        total += x * k\n"
                "    print(f'total: {total}')\n    return_val = total\n    print(f'return_val: {return_val}')\n"
                "    return return_val")
CASES = [([1, 2], 3), ([4], 2), ([], 5), ([1, 1, 1], 1)]


def gold_trace(xs, k):
    return ["total: 0", f"total: {sum(xs) * k}", f"return_val: {sum(xs) * k}"]


def rl_rows():
    rows = []
    for xs, k in CASES:
        out = str(sum(xs) * k)
        for task in ("output", "input"):
            prompt = (output_messages(INSTRUMENTED, f"{xs}, {k}") if task == "output"
                      else input_messages(INSTRUMENTED, out))
            rows.append({"id": f"{xs}-{k}-{task}", "task": task, "prompt": prompt, "gold_trace": gold_trace(xs, k),
                         "gold_output": out, "code": CODE, "instrumented_code": INSTRUMENTED, "input": f"{xs}, {k}",
                         "entry_point": "f", "terminal_only": False})
    return rows


def sft_rows():
    rows = []
    for row in rl_rows():
        xs_k, out, trace = row["input"], row["gold_output"], row["gold_trace"]
        target = (render_output_completion(trace, out) if row["task"] == "output"
                  else render_input_completion(xs_k, trace))
        rows.append({"id": row["id"], "task": row["task"], "messages": row["prompt"],
                     "completion": [{"role": "assistant", "content": target}]})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    from stepcode.training.models import build_tiny_model, corpus_texts

    torch.set_num_threads(1)
    return build_tiny_model(tmp_path_factory.mktemp("micro"), corpus_texts(rl_rows() + sft_rows()), size="micro")


@pytest.fixture(scope="module")
def profile():
    return Params().train.get("micro")


# --- pure helpers -------------------------------------------------------------------------------------------------

def test_batch_advantages_by_hand():
    # One group of 4, 3 anchors: rows are (steps, final) = ([1,1,1],1), ([0,0,1],1), ([1,1,1],0), ([0,0,0],0).
    steps = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.float32)
    finals = torch.tensor([1.0, 1.0, 0.0, 0.0])
    n = torch.tensor([3, 3, 3, 3])
    final_adv, step_adv = batch_advantages(steps, finals, n, group_size=4, mode="bilevel", lam=0.3)
    z = 0.25 / (0.75 * 0.25) ** 0.5          # anchor 3: mean 0.75, population std sqrt(0.75 * 0.25)
    expected = torch.tensor([[1 + 0.6, 1 + 0.6, z + 0.3, 0], [-1, -1, z + 0.3, 0],
                             [1 + 0.6, 1 + 0.6, z + 0.3, 0], [-1, -1, -3 * z, 0]])
    assert torch.allclose(final_adv, torch.tensor([1.0, 1.0, -1.0, -1.0]), atol=1e-5)
    assert torch.allclose(step_adv, expected, atol=1e-5)
    _, step_only = batch_advantages(steps, finals, n, group_size=4, mode="step")
    assert torch.allclose(step_only[:, :3], torch.tensor([[1, 1, z], [-1, -1, z], [1, 1, z], [-1, -1, -3 * z]]),
                          atol=1e-5)
    final_t, step_t = batch_advantages(steps, finals, n, group_size=4, mode="terminal")
    assert torch.equal(step_t, torch.zeros_like(steps)) and torch.allclose(final_t, final_adv)


def test_batch_advantages_groups_are_independent_and_use_their_own_width():
    # Group 1 (rows 0-1) has 1 anchor: terminal only. Group 2 (rows 2-3) has 2 anchors; the padded columns stay 0
    # and do not dilute the intra-trajectory future mean (row 2 anchor 1: 1 * (1 + 1) = 2, not 1 * (1 + 1/3)).
    steps = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0]], dtype=torch.float32)
    finals = torch.tensor([0.0, 1.0, 1.0, 1.0])
    final_adv, step_adv = batch_advantages(steps, finals, torch.tensor([1, 1, 2, 2]), group_size=2, lam=0.5)
    assert torch.allclose(final_adv, torch.tensor([-1.0, 1.0, 0.0, 0.0]), atol=1e-5)
    assert torch.allclose(step_adv, torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [1 + 0.5 * 2, 0 + 0.5, 0, 0],
                                                  [-1, 0 + 0.5, 0, 0]]), atol=1e-5)
    with pytest.raises(ValueError, match="whole number of groups"):
        batch_advantages(steps, finals, torch.tensor([1, 1, 2, 2]), group_size=3)


def test_decode_with_offsets_matches_tokenizer_decode(micro):
    from stepcode.training.models import load_tokenizer

    tok = load_tokenizer(micro)
    text = "<reasoning>é → ü</reasoning>\n<print>total: 9</print>"
    ids = tok(text)["input_ids"] + [tok.eos_token_id]
    decoded, offsets = decode_with_offsets(tok, ids)
    assert decoded == tok.decode(ids, skip_special_tokens=True) == text
    assert len(offsets) == len(ids) and offsets[-1] == (len(text), len(text))     # EOS: zero width at the end
    assert all(a <= b for a, b in offsets) and offsets[0][0] == 0 and offsets[-2][1] == len(text)
    generator = torch.Generator().manual_seed(0)
    random_ids = torch.randint(0, len(tok), (200,), generator=generator).tolist()
    decoded, offsets = decode_with_offsets(tok, random_ids)
    assert decoded == tok.decode(random_ids, skip_special_tokens=True)
    assert len(offsets) == 200 and max(e for _, e in offsets) == len(decoded)


def test_reward_rejects_unknown_span():
    with pytest.raises(ValueError, match="span"):
        StepCodeReward(scorer=None, span="tokens")
    assert SPANS == ("segment", "print")


# --- real training runs -------------------------------------------------------------------------------------------

def crafted_group(tok):
    """Four completions for the output task on f([1, 2], 3) (gold: total: 0 / total: 9 / return_val: 9 / 9), each
    as (token ids, [token ranges of segments 1..3]). Built piece by piece, so segment token ranges are known."""
    def completion(prints, answer):
        pieces = []
        for i, line in enumerate(prints):
            lead = "" if i == 0 else "\n"
            pieces.append(f"{lead}<reasoning>Step {i + 1} of 3.</reasoning>\n<print>{line}</print>")
        pieces.append(f"\n<reasoning>So.</reasoning>\n<answer>{answer}</answer>")
        ids, ranges = [], []
        for piece in pieces:
            piece_ids = tok(piece)["input_ids"]
            ranges.append((len(ids), len(ids) + len(piece_ids)))
            ids += piece_ids
        return ids + [tok.eos_token_id], ranges[:-1]

    gold = ["total: 0", "total: 9", "return_val: 9"]
    return [completion(gold, "9"),                                        # steps 1,1,1  final 1
            completion(["total: 1", "total: 3", "return_val: 9"], "9"),   # steps 0,0,1  final 1
            completion(gold, "10"),                                       # steps 1,1,1  final 0
            completion(["x: 1", "y: 2", "z: 3"], "f([1, 2], 3)")]         # steps 0,0,0  final 0 (echo)


@pytest.mark.filterwarnings("ignore:You are using 'rollout_func'")
def test_advantages_reaching_the_loss_equal_hand_computed_values(micro, profile, tmp_path):
    from stepcode.training.models import load_model
    from stepcode.training.rewards import RewardScorer
    from stepcode.training.grpo import bilevel_trainer_class, grpo_config, rl_dataset

    model, tok = load_model(micro)
    group = crafted_group(tok)

    def rollout(prompts, trainer):
        prompt_ids = [tok(tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False))["input_ids"]
                      for p in prompts]
        return {"prompt_ids": prompt_ids, "completion_ids": [group[i % 4][0] for i in range(len(prompts))],
                "logprobs": None}

    seen = []

    class Capturing(bilevel_trainer_class()):
        def _compute_loss(self, model, inputs):
            loss = super()._compute_loss(model, inputs)
            seen.append((inputs["completion_ids"].clone(), inputs["advantages"].clone(), loss.detach().clone()))
            return loss

    row = rl_rows()[0]                      # output task, f([1, 2], 3)
    g = profile.grpo.model_copy(update={"batch_size": 4, "num_generations": 4, "max_steps": 3, "learning_rate": 1e-2})
    args = grpo_config(profile.model_copy(update={"grpo": g}), tmp_path / "out")
    before = {k: v.clone() for k, v in model.named_parameters()}
    with RewardScorer(workers=1) as scorer:
        trainer = Capturing(model=model, args=args, train_dataset=rl_dataset([row] * 4), processing_class=tok,
                            scorer=scorer, rollout_func=rollout)
        trainer.train()
    assert trainer.state.global_step == 3 and len(seen) == 3

    z = 0.25 / (0.75 * 0.25) ** 0.5
    final = [1.0, 1.0, -1.0, -1.0]
    step = [[1.6, 1.6, z + 0.3], [-1.0, -1.0, z + 0.3], [1.6, 1.6, z + 0.3], [-1.0, -1.0, -3 * z]]
    for ids, adv, loss in seen:
        assert adv.shape == ids.shape                                  # [B, T]: per token
        for b in range(4):
            k = next(k for k, (c, _) in enumerate(group) if ids[b, :len(c)].tolist() == c)
            c, ranges = group[k]
            expected = torch.full((ids.shape[1],), final[k])
            for i, (s, e) in enumerate(ranges):
                expected[s:e] += step[k][i]
            expected[len(c):] = 0.0                                    # padding
            assert torch.allclose(adv[b], expected, atol=1e-4), (k, adv[b], expected)
        # beta = 0, one iteration, dapo: the loss is exactly -(A * mask).sum() / tokens.
        tokens = sum(len(c) for c, _ in group)
        assert loss.item() == pytest.approx(-adv.sum().item() / tokens, rel=1e-4, abs=1e-6)
    changed = [k for k, v in model.named_parameters() if not torch.equal(v, before[k])]
    assert changed, "no parameter changed in 3 optimizer steps"
    logged = trainer.state.log_history[0]
    assert logged["stepcode/final_accuracy"] == 0.5 and logged["stepcode/step_accuracy"] == pytest.approx(7 / 12)
    assert logged["reward"] == pytest.approx((2 + (1 + 1 / 3) + 1 + 0) / 4)     # the paper's logged scalar


def test_sft_then_grpo_end_to_end(micro, profile, tmp_path):
    from stepcode.training.models import load_model
    from stepcode.training.grpo import run_grpo
    from stepcode.training.sft import run_sft

    sft = write_jsonl(tmp_path / "sft.jsonl", sft_rows()[:2])   # one repeated batch: loss must go down
    prof = profile.model_copy(update={"sft": profile.sft.model_copy(update={"batch_size": 2, "max_steps": 6})})
    summary = run_sft(micro, sft, tmp_path / "sft", prof)
    assert summary["steps"] == 6 and summary["last_log"]["loss"] < summary["first_log"]["loss"]
    load_model(tmp_path / "sft")                                 # HF format: model + tokenizer

    rl = write_jsonl(tmp_path / "rl.jsonl", rl_rows())
    summary = run_grpo(tmp_path / "sft", rl, tmp_path / "rl", profile, mode="bilevel", run_name="micro-test")
    assert summary["steps"] == 3
    for key in ("reward", "frac_reward_zero_std", "completions/mean_length", "stepcode/final_accuracy",
                "stepcode/step_accuracy", "stepcode/advantage_mean", "stepcode/advantage_std",
                "stepcode/rollout_tokens_per_s"):
        assert key in summary["last_log"], key
    model, tok = load_model(tmp_path / "rl")
    assert tok.eos_token == "<|im_end|>" and model.config.model_type == "llama"


def test_run_grpo_rejects_bad_input(micro, profile, tmp_path):
    from stepcode.training.grpo import run_grpo

    with pytest.raises(ValueError, match="unknown mode"):
        run_grpo(micro, tmp_path / "x.jsonl", tmp_path / "o", profile, mode="vanilla")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "prompt": []}])
    with pytest.raises(ValueError, match="lacks"):
        run_grpo(micro, bad, tmp_path / "o", profile)
