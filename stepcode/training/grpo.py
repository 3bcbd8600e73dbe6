"""Bi-Level GRPO on TRL (and the step / terminal ablations: stepcode.training.modes).

    from stepcode.config import load_params
    from stepcode.training.grpo import run_grpo
    params = load_params()
    run_grpo("models/tiny-sft", "data/rl.jsonl", "models/tiny-rl", params.train.get("tiny-cpu"), mode="bilevel",
             params=params, run_name="tiny-bilevel")

`BiLevelGRPOTrainer` is a thin `trl.GRPOTrainer` subclass. How a step's advantages are made:
1. Rewards are computed once per completion, by `StepCodeReward`, the trainer's only reward function. TRL calls it
   with the completion token ids and the RL row's columns; it decodes the ids itself (so the text it parses and the
   character offsets of every token come from the same decode), scores all completions in the sandbox
   (stepcode.training.rewards), maps each anchor's span (reasoning+print segment, or the <print> block) to token
   positions,
   stashes those per-completion results in `.batch`, and returns the paper's logged scalar (#correct/n) + r_final,
   which TRL logs as `reward`.
2. `_generate_and_score_completions` calls `super()` (generation, rewards, TRL's sequence advantages), takes the stash,
   gathers step rewards, final rewards and anchor counts from every process (TRL spreads a prompt's G completions
   over processes), computes `stepcode.training.advantages.bilevel_group_advantages` per prompt group (each row
   masked to its own anchor count: `batch_advantages`), keeps this process's rows,
   and replaces `advantages` with the [B, T] tensor of `token_advantages`, times the loss mask. TRL's `_compute_loss`
   accepts [B, T] advantages by design (shared/notes/stack.md 2.b).
Modes: "bilevel" (default), "step" (lambda = 0), "terminal": the terminal term A_final alone, from the same z-score
as the other modes (population std, eps 1e-6), so the three ablations differ only in the step term. TRL's own
advantages (sample std, eps 1e-4, on the logged scalar) are always replaced.
Verified: the single-process path (tests/test_trainer.py checks the advantages reaching the loss against
hand-computed values), and two processes (tests/test_multiprocess.py: `accelerate launch --multi_gpu
--num_processes 2` on the CPU, gloo, gives every completion the same per-token advantages and the same logged metrics
as one process on the same batch; TRL lays the global batch out rank by rank, so `self.accelerator.gather` restores
the prompt groups and TRL's own process slice picks this process's rows). On a CPU-only machine `accelerate launch
--cpu --num_processes 2` starts ONE process (accelerate 1.15 runs several CPU processes only under mpirun);
`--multi_gpu` starts them, and `use_cpu` makes them gloo processes.

Debugging: with the environment variable STEPCODE_DUMP_ADVANTAGES=DIR, every process appends one JSON line per
generation batch to DIR/advantages-rank<R>.jsonl: its rank, the number of processes, the call number, its rows' ids
and tasks, and per completion the token ids and the per-token advantages up to the completion's length
(`dump_advantages`). Off (unset) it costs nothing.

Logged every step (through TRL's metrics, so console/MLflow reporters get them): reward, frac_reward_zero_std,
completions/mean_length (TRL's), and stepcode/final_accuracy, stepcode/step_accuracy, stepcode/frac_final_zero_std,
stepcode/advantage_mean, stepcode/advantage_std (over loss tokens), stepcode/rollout_tokens_per_s (completion tokens
per second of generation + scoring).
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

from stepcode.plots import GRPO_CURVES
from stepcode.training.common import (
    callbacks,
    common_args,
    configure_torch,
    read_rows,
    run_summary,
    save_curves,
    save_model,
)

SPANS = ("segment", "print")
DUMP_ENV = "STEPCODE_DUMP_ADVANTAGES"   # a directory: each process appends its advantages there (see the docstring)


# --- pure helpers -------------------------------------------------------------------------------------------------

def decode_with_offsets(tokenizer, ids) -> tuple[str, list[tuple[int, int]]]:
    """The text of `ids` (special tokens skipped, as TRL decodes) and each token's [start, end) in it.

    Decoded incrementally, so the offsets are exact for the generated ids whatever their segmentation. A token that
    ends inside a multi-byte character shares that character's range with the token that completes it; special
    tokens are zero-width.
    """
    from tokenizers.decoders import DecodeStream

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"a fast tokenizer is required to map reward spans to tokens, got {type(tokenizer).__name__}")
    stream = DecodeStream(skip_special_tokens=True)
    chunks: list[str] = []
    offsets: list[tuple[int, int]] = []
    pending = 0      # tokens whose bytes have not produced a character yet
    pos = 0
    for token in ids:
        chunk = stream.step(backend, int(token))
        if not chunk:
            pending += 1
            continue
        chunks.append(chunk)
        offsets.extend([(pos, pos + len(chunk))] * (pending + 1))
        pos += len(chunk)
        pending = 0
    offsets.extend([(pos, pos)] * pending)
    return "".join(chunks), offsets


def batch_advantages(step_rewards, final_rewards, n_anchors, group_size: int, mode: str = "bilevel",
                     lam: float = 0.3):
    """(final_adv [B], step_adv [B, W]) for a batch of consecutive prompt groups of `group_size` rows.

    step_rewards [B, W] is zero-padded past each row's n_anchors[b]. A group uses the columns up to its largest n,
    and each row only its own first n_anchors[b] of them (the mask of stepcode.training.advantages): padding never
    enters a row's intra-trajectory term nor the z-scores of a position it lacks. The output task's rows all share
    the gold trace's n, so there the mask is full and a missing print is a 0 reward; the input task's rows are judged
    on the traces of their own committed inputs, which may differ in length.
    """
    import torch

    from stepcode.training.advantages import bilevel_group_advantages

    B, W = step_rewards.shape
    if group_size < 1 or B % group_size:
        raise ValueError(f"batch of {B} rows is not a whole number of groups of {group_size}")
    final_adv = torch.zeros(B, dtype=final_rewards.dtype, device=final_rewards.device)
    step_adv = torch.zeros_like(step_rewards)
    positions = torch.arange(W, device=step_rewards.device)
    mask = positions[None, :] < n_anchors.to(step_rewards.device)[:, None]      # [B, W]: the anchors each row has
    for start in range(0, B, group_size):
        rows = slice(start, start + group_size)
        width = int(n_anchors[rows].max())
        f, s = bilevel_group_advantages(step_rewards[rows, :width], final_rewards[rows], mode=mode, lam=lam,
                                        mask=mask[rows, :width])
        final_adv[rows] = f
        step_adv[rows, :width] = s
    return final_adv, step_adv


def dump_advantages(directory, rank: int, num_processes: int, call: int, inputs, completion_ids, completion_mask,
                    advantages) -> None:
    """Append this process's rows of one generation batch to DIRECTORY/advantages-rank<rank>.jsonl (one JSON line:
    rank, num_processes, call, ids, tasks, completion_ids and advantages, each cut at the completion's length). For
    debugging and tests/test_multiprocess.py; enabled by STEPCODE_DUMP_ADVANTAGES."""
    lengths = [int(n) for n in completion_mask.sum(1).tolist()]
    line = {"rank": rank, "num_processes": num_processes, "call": call,
            "ids": [row.get("id") for row in inputs], "tasks": [row.get("task") for row in inputs],
            "completion_ids": [ids[:n] for ids, n in zip(completion_ids.tolist(), lengths)],
            "advantages": [adv[:n] for adv, n in zip(advantages.tolist(), lengths)]}
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / f"advantages-rank{rank}.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


# --- the reward function and the trainer ----------------------------------------------------------------------------

class StepCodeReward:
    """TRL reward function: scores completions once, stashes per-completion results for the trainer in `.batch`.

    `.batch` after a call: one dict per completion, in order: score (stepcode.training.rewards.Score), n_anchors (0 for
    terminal_only rows, which train on the final reward alone), token_spans (one (start, end) per predicted print).
    """

    __name__ = "stepcode"   # TRL names the reward after this: metrics rewards/stepcode/mean, ...

    def __init__(self, scorer, *, span: str = "segment", max_anchors: int = 10):
        if span not in SPANS:
            raise ValueError(f"span must be one of {SPANS}, got {span!r}")
        self.scorer = scorer
        self.span = span
        self.max_anchors = max_anchors
        self.tokenizer = None   # set by the trainer once TRL has loaded it
        self.batch: list[dict] | None = None

    def __call__(self, prompts, completions, completion_ids, **columns) -> list[float]:
        from stepcode.prompts import parse_completion
        from stepcode.training.advantages import char_spans_to_token_spans

        rows = [{k: columns[k][i] for k in columns if isinstance(columns[k], list)} for i in range(len(prompts))]
        decoded = [decode_with_offsets(self.tokenizer, ids) for ids in completion_ids]
        scores = self.scorer.score(rows, [text for text, _ in decoded])
        batch = []
        for row, (text, offsets), score in zip(rows, decoded, scores):
            if score.n > self.max_anchors:
                raise ValueError(f"row {row.get('id')!r} has {score.n} anchors, more than max_anchors "
                                 f"{self.max_anchors} (trace.max_lines)")
            parsed = parse_completion(text, task=row["task"])
            char_spans = parsed.segment_spans if self.span == "segment" else parsed.print_spans
            batch.append({"score": score, "n_anchors": 0 if row.get("terminal_only") else score.n,
                          "token_spans": char_spans_to_token_spans(char_spans, offsets)})
        self.batch = batch
        return [s.logged for s in scores]


@functools.cache
def bilevel_trainer_class():
    """The BiLevelGRPOTrainer class, defined on first use so `import stepcode.training.grpo` does not import
    torch/trl."""
    import torch
    from trl import GRPOTrainer

    from stepcode.training.advantages import token_advantages
    from stepcode.training.modes import check_mode

    class BiLevelGRPOTrainer(GRPOTrainer):
        """GRPOTrainer whose advantages are Bi-Level GRPO's per-token ones (see the module docstring).

        BiLevelGRPOTrainer(model=..., args=GRPOConfig(...), train_dataset=rl_rows, processing_class=tokenizer,
                           scorer=RewardScorer(params), mode="bilevel", lam=0.3, span="segment", max_anchors=10)
        """

        def __init__(self, *args, scorer, mode: str = "bilevel", lam: float = 0.3, span: str = "segment",
                     max_anchors: int = 10, **kwargs):
            check_mode(mode)
            if "reward_funcs" in kwargs:
                raise ValueError("BiLevelGRPOTrainer brings its own reward function; pass scorer=, not reward_funcs=")
            self.stepcode_reward = StepCodeReward(scorer, span=span, max_anchors=max_anchors)
            self.mode, self.lam, self.max_anchors = mode, lam, max_anchors
            super().__init__(*args, reward_funcs=[self.stepcode_reward], **kwargs)
            self.stepcode_reward.tokenizer = self._tokenizer

        def _generate_and_score_completions(self, inputs):
            started = time.perf_counter()
            self.stepcode_reward.batch = None
            out = super()._generate_and_score_completions(inputs)
            elapsed = time.perf_counter() - started
            batch = self.stepcode_reward.batch
            if batch is None or len(batch) != len(inputs):
                raise RuntimeError("the StepCode reward did not score this batch: it must be the only reward function")
            device = out["completion_ids"].device

            steps = torch.zeros(len(batch), self.max_anchors, device=device)
            for b, item in enumerate(batch):
                steps[b, : item["score"].n] = torch.tensor(item["score"].steps, device=device)
            finals = torch.tensor([item["score"].final for item in batch], device=device)
            n_anchors = torch.tensor([item["n_anchors"] for item in batch], device=device)
            # Every process holds only some of a prompt's completions: group statistics need the whole group.
            all_steps, all_finals, all_n = self.accelerator.gather((steps, finals, n_anchors))
            group_size = self.num_generations if self.model.training else self.num_generations_eval
            final_adv, step_adv = batch_advantages(all_steps, all_finals, all_n, group_size, self.mode, self.lam)
            rank = self.accelerator.process_index
            local = slice(rank * len(batch), (rank + 1) * len(batch))   # this process's rows, as TRL slices them

            loss_mask = out["completion_mask"] if "tool_mask" not in out else out["completion_mask"] * out["tool_mask"]
            advantages = token_advantages(final_adv[local], step_adv[local], n_anchors.tolist(),
                                          [item["token_spans"] for item in batch], loss_mask)
            out["advantages"] = advantages          # already exactly 0 where loss_mask is 0
            if os.environ.get(DUMP_ENV):
                self._stepcode_calls = getattr(self, "_stepcode_calls", 0) + 1
                dump_advantages(os.environ[DUMP_ENV], rank, self.accelerator.num_processes, self._stepcode_calls,
                                inputs, out["completion_ids"], out["completion_mask"], advantages)
            self._log_stepcode_metrics(all_steps, all_finals, all_n, group_size, advantages, loss_mask,
                                       out["num_items_in_batch"], elapsed)
            return out

        def _log_stepcode_metrics(self, steps, finals, n, group_size, advantages, loss_mask, num_tokens, elapsed):
            metrics = self._metrics["train" if self.model.training else "eval"]
            scored = n > 0
            step_acc = (steps.sum(1)[scored] / n[scored]).mean().item() if scored.any() else float("nan")
            group_final = finals.view(-1, group_size)
            # Sums, not values, cross processes: ranks hold different numbers of loss tokens.
            adv = advantages[loss_mask.bool()].double()
            total, square, count = self.accelerator.gather(
                torch.stack([adv.sum(), (adv * adv).sum(), torch.tensor(float(adv.numel()), dtype=adv.dtype,
                                                                       device=adv.device)])).view(-1, 3).sum(0).tolist()
            adv_mean = total / count if count else 0.0
            adv_std = max(square / count - adv_mean ** 2, 0.0) ** 0.5 if count else 0.0
            metrics["stepcode/final_accuracy"].append(finals.mean().item())
            metrics["stepcode/step_accuracy"].append(step_acc)
            metrics["stepcode/frac_final_zero_std"].append(
                (group_final == group_final[:, :1]).all(1).float().mean().item())
            metrics["stepcode/advantage_mean"].append(adv_mean)
            metrics["stepcode/advantage_std"].append(adv_std)
            metrics["stepcode/rollout_tokens_per_s"].append(float(num_tokens) / max(elapsed, 1e-9))

    return BiLevelGRPOTrainer


def __getattr__(name):
    # `from stepcode.training.grpo import BiLevelGRPOTrainer` builds the class on first use (PEP 562).
    if name == "BiLevelGRPOTrainer":
        return bilevel_trainer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def grpo_config(profile, out_dir, run_name: str | None = None):
    """TRL GRPOConfig from a training profile (also used by benchmarks/grpo_overhead.py)."""
    from trl import GRPOConfig

    g = profile.grpo
    return GRPOConfig(**common_args(profile, out_dir, run_name), learning_rate=g.learning_rate,
                      num_train_epochs=g.epochs, max_steps=g.max_steps, per_device_train_batch_size=g.batch_size,
                      gradient_accumulation_steps=g.grad_accum, num_generations=g.num_generations,
                      max_completion_length=g.max_completion_length, temperature=g.temperature, beta=g.beta,
                      use_vllm=g.use_vllm, vllm_mode=g.vllm_mode)


def rl_dataset(rows: list[dict]):
    """RL rows as a datasets.Dataset; every column but `prompt` reaches the reward function."""
    from datasets import Dataset

    for i, row in enumerate(rows):
        missing = [k for k in ("prompt", "task", "code", "gold_output", "gold_trace") if k not in row]
        if missing:
            raise ValueError(f"RL row {i + 1} ({row.get('id')!r}) lacks {missing}")
    return Dataset.from_list(rows)


def run_grpo(model_path, rl_jsonl, out_dir, profile, mode: str = "bilevel", *, params=None,
             run_name: str | None = None, curves=None) -> dict:
    """Bi-Level GRPO (or the step / terminal ablation) from `model_path`; saves model + tokenizer in out_dir, and the
    training curves (`stepcode.plots.GRPO_CURVES` per logged step: loss, reward, step accuracy...) in `curves` when
    given.

    params: the full Params (sandbox and trace limits for the rewards); default: built-in defaults.
    """
    from stepcode.config import Params
    from stepcode.training.models import load_model, set_offline
    from stepcode.training.modes import check_mode
    from stepcode.training.rewards import RewardScorer

    set_offline()

    check_mode(mode)
    params = params if params is not None else Params()
    started = time.perf_counter()
    configure_torch(profile)
    dataset = rl_dataset(read_rows(rl_jsonl, "RL", profile.sources))
    model, tokenizer = load_model(model_path, dtype="bfloat16" if profile.bf16 else "float32")
    g = profile.grpo
    with RewardScorer(params, input_reference=g.input_reference, workers=g.reward_workers or None) as scorer:
        trainer = bilevel_trainer_class()(model=model, args=grpo_config(profile, out_dir, run_name),
                                          train_dataset=dataset, processing_class=tokenizer, scorer=scorer,
                                          mode=mode, lam=g.lam, span=g.span, max_anchors=params.trace.max_lines,
                                          callbacks=callbacks(profile))
        trainer.train()
    save_model(trainer, tokenizer, out_dir)
    save_curves(trainer, curves, GRPO_CURVES)
    return run_summary(trainer, started, out_dir)

