"""Bi-Level GRPO on TRL: advantage plumbing checked against hand-computed values, real CPU training runs (micro model).

The exactness test feeds crafted completions through TRL's own `rollout_func` hook, so everything after generation is
the real thing: the sandboxed RewardScorer, the parser, the token offsets, the group statistics and TRL's loss.
"""

import json
import math

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


def test_batch_advantages_masks_each_row_to_its_own_anchors():
    """Two groups of 3 in one batch, W = 5 columns (zero-padded past each row's n, as the trainer fills them).
    Group A, input task, widths 2, 3, 4 (each committed input has its own trace); group B, output task, all 3 wide
    (the gold trace), with missing prints. Hand computation, lam = 0.3:

    A: steps [1, 0], [1, 1, 0], [0, 1, 1, 1]; finals 1, 0, 0.
       z-scores per anchor over the rows that have it: anchor 0 [1, 1, 0] -> 1/√2, 1/√2, -√2; anchor 1 [0, 1, 1]
       -> -√2, 1/√2, 1/√2; anchor 2 (rows 1, 2) [0, 1] -> -1, 1; anchor 3 (row 2 only) -> 0.
       intra over own anchors: [1, 0], [1.5, 1, 0], [0, 2, 2, 1].
       finals [1, 0, 0]: mean 1/3, std √2/3 -> √2, -1/√2, -1/√2.
       (Zero-padded to width 4, as before: row 0 [1, 0, 0, 0] would join anchor 2 as a wrong step, [0, 0, 1] ->
       row 2 gets √2 there, and row 1's anchor 0 intra would be 1 * (1 + mean(1, 0, 0)) = 4/3, not 1.5.)
    B: steps [1, 1, 1], [1, 0, 0] (wrote one print), [0, 1, 1]; finals 0, 0, 0 -> final_adv 0.
       anchor 0 [1, 1, 0] -> 1/√2, 1/√2, -√2; anchors 1, 2 [1, 0, 1] -> 1/√2, -√2, 1/√2.
       intra: [2, 2, 1], [1, 0, 0], [0, 2, 1] -- as before this change (a full mask).
    """
    s2 = 2 ** 0.5
    steps = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 1, 1, 1, 0],
                          [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 1, 1, 0, 0]], dtype=torch.float32)
    finals = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    n = torch.tensor([2, 3, 4, 3, 3, 3])
    final_adv, step_adv = batch_advantages(steps, finals, n, group_size=3, mode="bilevel", lam=0.3)
    assert torch.allclose(final_adv, torch.tensor([s2, -1 / s2, -1 / s2, 0, 0, 0]), atol=1e-5)
    expected = torch.tensor([[1 / s2 + 0.3, -s2, 0, 0, 0],
                             [1 / s2 + 0.45, 1 / s2 + 0.3, -1, 0, 0],
                             [-s2, 1 / s2 + 0.6, 1 + 0.6, 0.3, 0],
                             [1 / s2 + 0.6, 1 / s2 + 0.6, 1 / s2 + 0.3, 0, 0],
                             [1 / s2 + 0.3, -s2, -s2, 0, 0],
                             [-s2, 1 / s2 + 0.6, 1 / s2 + 0.3, 0, 0]])
    assert torch.allclose(step_adv, expected, atol=1e-5)
    _, step_only = batch_advantages(steps, finals, n, group_size=3, mode="step")
    assert torch.allclose(step_only[:3], torch.tensor([[1 / s2, -s2, 0, 0, 0], [1 / s2, 1 / s2, -1, 0, 0],
                                                       [-s2, 1 / s2, 1, 0, 0]]), atol=1e-5)
    assert torch.equal(batch_advantages(steps, finals, n, group_size=3, mode="terminal")[1], torch.zeros_like(steps))


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

def crafted_completion(tok, task, prints, answer, commit=None):
    """One crafted completion as token ids, built piece by piece so every anchor's token ranges are known exactly.

    Returns (ids, {"segment": [(s, e) per print], "print": [(s, e) per print]}): the reasoning+print segment (from
    the end of the previous <print>/<input> block, or 0, to </print>) and the <print> block alone.
    """
    pieces = [] if commit is None else [("head", f"<reasoning>I commit.</reasoning>\n<input>{commit}</input>")]
    for i, line in enumerate(prints):
        lead = "" if i == 0 and commit is None else "\n"
        pieces += [("reason", f"{lead}<reasoning>Step {i + 1} of {len(prints)}.</reasoning>\n"),
                   ("print", f"<print>{line}</print>")]
    pieces.append(("tail", f"\n<reasoning>So.</reasoning>\n<answer>{answer}</answer>"))
    ids, spans = [], {"segment": [], "print": []}
    for kind, text in pieces:
        piece_ids = tok(text)["input_ids"]
        if kind == "reason":
            segment_start = len(ids)
        elif kind == "print":
            spans["segment"].append((segment_start, len(ids) + len(piece_ids)))
            spans["print"].append((len(ids), len(ids) + len(piece_ids)))
        ids += piece_ids
    ids.append(tok.eos_token_id)
    assert decode_with_offsets(tok, ids)[0] == "".join(text for _, text in pieces)   # the ranges are exact
    return ids, spans


def crafted_group(tok):
    """Four completions for the output task on f([1, 2], 3) (gold: total: 0 / total: 9 / return_val: 9 / 9)."""
    gold = ["total: 0", "total: 9", "return_val: 9"]
    return [crafted_completion(tok, "output", gold, "9"),                                       # steps 1,1,1 final 1
            crafted_completion(tok, "output", ["total: 1", "total: 3", "return_val: 9"], "9"),  # steps 0,0,1 final 1
            crafted_completion(tok, "output", gold, "10"),                                      # steps 1,1,1 final 0
            crafted_completion(tok, "output", ["x: 1", "y: 2", "z: 3"], "f([1, 2], 3)")]        # 0,0,0 final 0 (echo)


def run_crafted(model, tok, profile, out_dir, groups, *, steps=1, **trainer_kwargs):
    """Train with TRL's `rollout_func` returning crafted completions: `groups` is [(RL row, [G completions])], one
    prompt group each, G = 4. Returns the trainer and, per optimizer step, (completion_ids, advantages, loss) as
    `_compute_loss` saw them."""
    from stepcode.training.grpo import bilevel_trainer_class, grpo_config, rl_dataset
    from stepcode.training.rewards import RewardScorer

    by_prompt = {json.dumps(row["prompt"]): [ids for ids, _ in completions] for row, completions in groups}

    def rollout(prompts, trainer):
        prompt_ids = [tok(tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False))["input_ids"]
                      for p in prompts]
        keys = [json.dumps(p) for p in prompts]
        # TRL repeats each prompt G times in a row: the k-th copy of a prompt gets the group's k-th completion.
        completion_ids = [by_prompt[key][keys[:i].count(key) % 4] for i, key in enumerate(keys)]
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}

    seen = []

    class Capturing(bilevel_trainer_class()):
        def _compute_loss(self, model, inputs):
            loss = super()._compute_loss(model, inputs)
            seen.append((inputs["completion_ids"].clone(), inputs["advantages"].clone(), loss.detach().clone()))
            return loss

    g = profile.grpo.model_copy(update={"batch_size": 4 * len(groups), "num_generations": 4, "max_steps": steps,
                                        "learning_rate": 1e-2})
    args = grpo_config(profile.model_copy(update={"grpo": g}), out_dir)
    # Several groups: each row once (one step), so every group is in the batch; one group: the row repeated.
    assert len(groups) == 1 or steps == 1
    dataset = rl_dataset([row for row, _ in groups] * (4 if len(groups) == 1 else 1))
    with RewardScorer(workers=1) as scorer:
        trainer = Capturing(model=model, args=args, train_dataset=dataset, processing_class=tok, scorer=scorer,
                            rollout_func=rollout, **trainer_kwargs)
        trainer.train()
    assert trainer.state.global_step == steps and len(seen) == steps
    return trainer, seen


def assert_token_advantages(seen, completions, final, step, span="segment"):
    """Every row's [T] advantages equal final[k] on each completion token plus step[k][i] inside anchor i's span
    (span: "segment" or "print"), 0 on padding, where k is the crafted completion the row holds. Each step's batch
    must hold every crafted completion exactly once."""
    for ids, adv, _ in seen:
        assert adv.shape == ids.shape                                  # [B, T]: per token
        held = []
        for b in range(ids.shape[0]):
            k = next(k for k, (c, _) in enumerate(completions)
                     if len(c) <= ids.shape[1] and ids[b, :len(c)].tolist() == c)
            held.append(k)
            c, spans = completions[k]
            expected = torch.full((ids.shape[1],), float(final[k]))
            for i, (s, e) in enumerate(spans[span]):
                expected[s:e] += step[k][i]
            expected[len(c):] = 0.0                                    # padding
            assert torch.allclose(adv[b], expected, atol=1e-4), (k, adv[b], expected)
        assert sorted(held) == list(range(len(completions)))


Z = 0.25 / (0.75 * 0.25) ** 0.5     # z-score of a 1 among (1, 1, 1, 0): mean 0.75, population std sqrt(0.75 * 0.25)
# The crafted output group's step rewards are (1,1,1), (0,0,1), (1,1,1), (0,0,0) and its finals 1, 1, 0, 0.
# Step term per mode, lam = 0.5: "bilevel" adds lam * r_i * (1 + mean of the later r_j) to the per-anchor z-score.
CRAFTED_STEP = {
    "bilevel": [[1 + 1.0, 1 + 1.0, Z + 0.5], [-1, -1, Z + 0.5], [1 + 1.0, 1 + 1.0, Z + 0.5], [-1, -1, -3 * Z]],
    "step": [[1, 1, Z], [-1, -1, Z], [1, 1, Z], [-1, -1, -3 * Z]],
    "terminal": [[0, 0, 0]] * 4,
}


def test_crafted_step_terms_differ_between_modes():
    # The per-mode exactness test below only tells a mode from another if their expected values differ.
    from stepcode.training.modes import MODES

    assert set(CRAFTED_STEP) == set(MODES)
    values = [torch.tensor(v, dtype=torch.float32) for v in CRAFTED_STEP.values()]
    assert all(not torch.allclose(a, b) for i, a in enumerate(values) for b in values[i + 1:])


@pytest.mark.filterwarnings("ignore:You are using 'rollout_func'")
@pytest.mark.parametrize("mode", ["bilevel", "step", "terminal"])
def test_advantages_reaching_the_loss_equal_hand_computed_values(micro, profile, tmp_path, mode):
    from stepcode.training.models import load_model

    model, tok = load_model(micro)
    group = crafted_group(tok)
    before = {k: v.clone() for k, v in model.named_parameters()}
    trainer, seen = run_crafted(model, tok, profile, tmp_path / "out", [(rl_rows()[0], group)], steps=3,
                                mode=mode, lam=0.5)              # rl_rows()[0]: output task, f([1, 2], 3)

    assert_token_advantages(seen, group, [1.0, 1.0, -1.0, -1.0], CRAFTED_STEP[mode])
    tokens = sum(len(c) for c, _ in group)
    for _, adv, loss in seen:
        # beta = 0, one iteration, dapo: the loss is exactly -(A * mask).sum() / tokens.
        assert loss.item() == pytest.approx(-adv.sum().item() / tokens, rel=1e-4, abs=1e-6)
    changed = [k for k, v in model.named_parameters() if not torch.equal(v, before[k])]
    assert changed, "no parameter changed in 3 optimizer steps"
    logged = trainer.state.log_history[0]
    assert logged["stepcode/final_accuracy"] == 0.5 and logged["stepcode/step_accuracy"] == pytest.approx(7 / 12)
    assert logged["reward"] == pytest.approx((2 + (1 + 1 / 3) + 1 + 0) / 4)     # the paper's logged scalar
    assert logged["stepcode/frac_final_zero_std"] == 0.0


@pytest.mark.filterwarnings("ignore:You are using 'rollout_func'")
def test_print_span_puts_the_step_term_on_the_print_block_only(micro, profile, tmp_path):
    from stepcode.training.models import load_model

    model, tok = load_model(micro)
    group = crafted_group(tok)
    _, seen = run_crafted(model, tok, profile, tmp_path / "out", [(rl_rows()[0], group)], mode="bilevel", lam=0.5,
                          span="print")
    assert_token_advantages(seen, group, [1.0, 1.0, -1.0, -1.0], CRAFTED_STEP["bilevel"], span="print")
    # The reasoning before each <print> carries the terminal term alone, unlike span="segment".
    ids, adv, _ = seen[0]
    b = next(b for b in range(ids.shape[0]) if ids[b, :len(group[0][0])].tolist() == group[0][0])
    (seg_start, _), (print_start, _) = group[0][1]["segment"][0], group[0][1]["print"][0]
    assert print_start > seg_start and torch.allclose(adv[b, seg_start:print_start], torch.tensor(1.0))


@pytest.mark.filterwarnings("ignore:You are using 'rollout_func'")
def test_input_task_steps_are_judged_against_the_committed_input(micro, profile, tmp_path):
    from stepcode.training.models import load_model

    model, tok = load_model(micro)
    gold = ["total: 0", "total: 9", "return_val: 9"]
    row = rl_rows()[1]                      # input task: find xs, k with f(xs, k) == 9
    assert row["task"] == "input" and row["gold_output"] == "9" and row["gold_trace"] == gold
    group = [
        # committed f([1, 2], 3), traced exactly: steps 1,1,1; answer right: final 1
        crafted_completion(tok, "input", gold, "[1, 2], 3", commit="[1, 2], 3"),
        # committed f([4], 2) = 8 and traced it exactly: steps 1,1,1 (against the gold trace: 1,0,0); final 0
        crafted_completion(tok, "input", ["total: 0", "total: 8", "return_val: 8"], "[4], 2", commit="[4], 2"),
        # committed f([4], 2) but printed the gold trace: steps 1,0,0 (against gold: 1,1,1); answer [9], 1 is right
        # (f([9], 1) = 9) but is not the committed input: final 0 (it was 1 before answers had to be the commit)
        crafted_completion(tok, "input", gold, "[9], 1", commit="[4], 2"),
        # committed an input that raises when traced: every step 0 (against gold: 1,1,1); f([5], 3) = 15: final 0
        crafted_completion(tok, "input", gold, "[5], 3", commit="[1, 'a'], 3"),
    ]
    _, seen = run_crafted(model, tok, profile, tmp_path / "out", [(row, group)], mode="bilevel", lam=0.5)
    # steps (1,1,1), (1,1,1), (1,0,0), (0,0,0); anchor 0 z-scores +-Z / -3Z, anchors 1, 2: +-1;
    # intra r_i * (1 + mean later r_j): (2, 2, 1), (2, 2, 1), (1, 0, 0), (0, 0, 0).
    step = [[Z + 1.0, 1 + 1.0, 1 + 0.5], [Z + 1.0, 1 + 1.0, 1 + 0.5], [Z + 0.5, -1, -1], [-3 * Z, -1, -1]]
    # finals 1, 0, 0, 0: mean 1/4, population std sqrt(3)/4 -> (3/4)/(sqrt(3)/4) = sqrt(3), (-1/4)/(sqrt(3)/4) = -Z
    assert_token_advantages(seen, group, [3 * Z, -Z, -Z, -Z], step)


# Three paths: x > 10 prints a, b, c, return_val (4 anchors); 0 < x <= 10 prints a, b, return_val (3); else a,
# return_val (2). Only f(15) == 11.
BRANCHY = ("def f(x):\n    if x > 10:\n        a = x - 10\n        b = a * 2\n        c = b + 1\n        return c\n"
           "    if x > 0:\n        a = x + 1\n        b = a * 2\n        return b\n    a = x - 1\n    return a\n")


@pytest.mark.filterwarnings("ignore:You are using 'rollout_func'")
def test_input_task_rollouts_with_traces_of_different_lengths(micro, profile, tmp_path):
    """Widths 4, 3, 2, 4 in one input-task group, through the real scorer, trainer and loss."""
    from stepcode.anchors import instrument
    from stepcode.training.models import load_model

    model, tok = load_model(micro)
    gold = ["a: 5", "b: 10", "c: 11", "return_val: 11"]
    row = {"id": "branchy-input", "task": "input", "prompt": input_messages(instrument(BRANCHY).source, "11"),
           "gold_trace": gold, "gold_output": "11", "code": BRANCHY, "instrumented_code": instrument(BRANCHY).source,
           "input": "15", "entry_point": "f", "terminal_only": False}
    group = [
        # commits 15 (trace a: 5, b: 10, c: 11, return_val: 11), prints it exactly: steps 1,1,1,1; answer 15: final 1
        crafted_completion(tok, "input", gold, "15", commit="15"),
        # commits 5 (trace a: 6, b: 12, return_val: 12), last print wrong: steps 1,1,0; f(5) = 12: final 0
        crafted_completion(tok, "input", ["a: 6", "b: 12", "return_val: 11"], "5", commit="5"),
        # commits -1 (trace a: -2, return_val: -2), prints it exactly: steps 1,1 (n = 2, the [1, 1]-in-width-4
        # case); answers 15, right but not the committed input: final 0
        crafted_completion(tok, "input", ["a: -2", "return_val: -2"], "15", commit="-1"),
        # commits 15, second print wrong: steps 1,0,1,1; answers `15,` (the same argument list): final 1
        crafted_completion(tok, "input", ["a: 5", "b: 9", "c: 11", "return_val: 11"], "15,", commit="15"),
    ]
    _, seen = run_crafted(model, tok, profile, tmp_path / "out", [(row, group)], mode="bilevel", lam=0.5)
    # finals 1, 0, 0, 1: mean 1/2, std 1/2 -> 1, -1, -1, 1.
    # z per anchor over the rows that have it: anchor 0 [1, 1, 1, 1] -> 0; anchor 1 [1, 1, 1, 0] -> Z, Z, Z, -3Z;
    #   anchor 2 (rows 0, 1, 3) [1, 0, 1]: mean 2/3, std sqrt(2)/3 -> 1/sqrt(2), -sqrt(2), 1/sqrt(2);
    #   anchor 3 (rows 0, 3) [1, 1] -> 0.
    # intra over own anchors: row 0 [2, 2, 2, 1]; row 1 [1 * (1 + mean(1, 0)), 1 * (1 + 0), 0] = [1.5, 1, 0];
    #   row 2 [2, 1]; row 3 [1 * (1 + mean(0, 1, 1)), 0, 1 * (1 + 1), 1] = [5/3, 0, 2, 1].   lam = 0.5.
    s2 = 2 ** 0.5
    step = [[0 + 1.0, Z + 1.0, 1 / s2 + 1.0, 0 + 0.5],
            [0 + 0.75, Z + 0.5, -s2 + 0],
            [0 + 1.0, Z + 0.5],
            [0 + 5 / 6, -3 * Z + 0, 1 / s2 + 1.0, 0 + 0.5]]
    assert_token_advantages(seen, group, [1.0, -1.0, -1.0, 1.0], step)


@pytest.mark.filterwarnings("ignore:You are using 'rollout_func'")
def test_terminal_only_rows_and_per_group_metrics(micro, profile, tmp_path):
    """Two prompt groups in one batch: a one-anchor (terminal_only) row, whose completions get A_final alone, and an
    output row whose finals are all equal (A_final = 0: only the step term moves it)."""
    from stepcode.training.models import load_model

    model, tok = load_model(micro)
    one_code = "def f(x):\n    return x + 1\n"
    one_instrumented = "def f(x):\n    return_val = x + 1\n    print(f'return_val: {return_val}')\n    return return_val"
    one = {"id": "one-anchor", "task": "output", "prompt": output_messages(one_instrumented, "3"),
           "gold_trace": ["return_val: 4"], "gold_output": "4", "code": one_code, "instrumented_code": one_instrumented,
           "input": "3", "entry_point": "f", "terminal_only": True}
    terminal_group = [crafted_completion(tok, "output", ["return_val: 4"], "4"),     # step 1, final 1
                      crafted_completion(tok, "output", ["return_val: 5"], "4"),     # step 0, final 1
                      crafted_completion(tok, "output", ["return_val: 4"], "5"),     # step 1, final 0
                      crafted_completion(tok, "output", ["return_val: 5"], "5")]     # step 0, final 0
    gold = ["total: 0", "total: 9", "return_val: 9"]
    flat_group = [crafted_completion(tok, "output", gold, "9"),                                          # 1,1,1
                  crafted_completion(tok, "output", ["total: 0", "total: 3", "return_val: 9"], "9"),     # 1,0,1
                  crafted_completion(tok, "output", ["total: 1", "total: 9", "return_val: 9"], "9"),     # 0,1,1
                  crafted_completion(tok, "output", ["x: 1", "y: 2", "return_val: 9"], "9")]             # 0,0,1
    trainer, seen = run_crafted(model, tok, profile, tmp_path / "out",
                                [(one, terminal_group), (rl_rows()[0], flat_group)], mode="bilevel", lam=0.5)
    assert seen[0][0].shape[0] == 8
    # One anchor: no step term at all, although the step rewards differ across the group.
    assert_token_advantages(seen, terminal_group + flat_group, [1.0, 1.0, -1.0, -1.0] + [0.0] * 4,
                            [[0.0]] * 4 + [[1 + 1.0, 1 + 1.0, 0.5], [1 + 0.75, -1, 0.5], [-1, 1 + 1.0, 0.5],
                                           [-1, -1, 0.5]])
    logged = trainer.state.log_history[0]
    assert logged["stepcode/frac_final_zero_std"] == 0.5                 # the second group's finals are all 1
    assert logged["stepcode/final_accuracy"] == 0.75                     # (2 + 4) / 8
    # Step accuracy leaves terminal_only rows out: mean of 3/3, 2/3, 2/3, 1/3 over the second group alone.
    assert logged["stepcode/step_accuracy"] == pytest.approx(2 / 3)
    assert logged["reward"] == pytest.approx((2 + 1 + 1 + 0 + 2 + 5 / 3 + 5 / 3 + 4 / 3) / 8)


def test_sft_then_grpo_end_to_end(micro, profile, tmp_path):
    from stepcode.training.grpo import run_grpo
    from stepcode.training.models import load_model
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


# --- the KL term (Eq. 15): beta > 0 loads a frozen reference model -------------------------------------------------

@pytest.mark.filterwarnings("ignore:You are using 'rollout_func'")
@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_beta_loads_a_reference_model_and_adds_the_logged_kl_to_the_loss(micro, profile, tmp_path, beta):
    """beta = 0: no reference model, no `kl`. beta > 0: a frozen copy of the starting model; `kl` is logged every
    step, 0 at the first (policy == reference), then > 0; the advantages are unchanged, and (one iteration, dapo)
    each step's loss is exactly -(A * mask).sum() / tokens + beta * kl (TRL's per-token k3 estimator, masked mean)."""
    from stepcode.training.models import load_model

    model, tok = load_model(micro)
    group = crafted_group(tok)
    prof = profile.model_copy(update={"grpo": profile.grpo.model_copy(update={"beta": beta})})
    trainer, seen = run_crafted(model, tok, prof, tmp_path / "out", [(rl_rows()[0], group)], steps=3,
                                mode="bilevel", lam=0.5)
    assert_token_advantages(seen, group, [1.0, 1.0, -1.0, -1.0], CRAFTED_STEP["bilevel"])   # KL leaves A alone
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 3
    if beta == 0.0:
        assert trainer.ref_model is None and not any("kl" in entry for entry in logs)
        return
    assert trainer.ref_model is not None and trainer.ref_model is not trainer.model
    start, _ = load_model(micro)
    reference = dict(trainer.ref_model.named_parameters())
    assert all(torch.equal(v, reference[k]) for k, v in start.named_parameters())          # frozen starting model
    assert any(not torch.equal(v, reference[k]) for k, v in trainer.model.named_parameters())
    kls = [entry["kl"] for entry in logs]
    assert all(math.isfinite(k) for k in kls), kls
    assert kls[0] == pytest.approx(0.0, abs=1e-6) and kls[-1] > 1e-6, kls
    tokens = sum(len(c) for c, _ in group)
    for (_, adv, loss), kl in zip(seen, kls):
        assert loss.item() == pytest.approx(-adv.sum().item() / tokens + beta * kl, rel=1e-4, abs=1e-6)


def test_kl_reaches_mlflow_in_a_micro_grpo_stage(micro, profile, tmp_path, mlflow_store):
    """The grpo stage with beta > 0 on the micro model (real generation): the stage's MLflow run has a finite `kl`
    for every step, through the existing tracking (the stage adds the MLflow reporter)."""
    import mlflow

    from stepcode.pipeline import stages

    params = Params()
    micro_kl = profile.model_copy(update={"grpo": profile.grpo.model_copy(update={"beta": 0.05})})
    params = params.model_copy(update={
        "train": params.train.model_copy(update={"profiles": {**params.train.profiles, "micro": micro_kl}}),
        "tracking": params.tracking.model_copy(update={"experiment": "kl-stage",
                                                       "artifact_root": str(tmp_path / "artifacts")})})
    rl = write_jsonl(tmp_path / "rl.jsonl", rl_rows())
    summary = stages.grpo(params, "micro", micro, rl, tmp_path / "rl", run_name="grpo-kl")
    assert summary["steps"] == 3 and math.isfinite(summary["last_log"]["kl"])
    runs = mlflow.search_runs(experiment_names=["kl-stage"], output_format="list")
    run = next(r for r in runs if r.info.run_name == "grpo-kl")
    names = [k for k in run.data.metrics if k.split(".")[-1].split("/")[-1] == "kl"]
    assert names, sorted(run.data.metrics)
    client = mlflow.MlflowClient()
    history = client.get_metric_history(run.info.run_id, names[0])
    assert len(history) == 3 and all(math.isfinite(m.value) for m in history)
    # the TrainingArguments that matter as params, all of them as an artifact (not ~400 params)
    assert run.data.params["args.beta"] == "0.05" and run.data.params["args.max_steps"] == "3"
    assert len(run.data.params) < 60, sorted(run.data.params)
    client.download_artifacts(run.info.run_id, "training_args.json", str(tmp_path))
    assert json.loads((tmp_path / "training_args.json").read_text())["beta"] == 0.05
    # the model it made, as an MLflow transformers model of this run, tagged with its DVC md5
    from stepcode.tracking.lineage import dvc_md5

    [logged] = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                           filter_string=f"source_run_id = '{run.info.run_id}'")
    assert logged.tags["model.md5"] == dvc_md5(tmp_path / "rl")
