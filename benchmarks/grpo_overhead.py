"""Bi-Level GRPO overhead: seconds per optimizer step of BiLevelGRPOTrainer vs TRL's own GRPOTrainer, one run.

    python benchmarks/grpo_overhead.py [--size tiny] [--rounds 4] [--steps 4] [--max-completion-length 128]

Both trainers get the same tiny model (re-loaded from the same directory each round), the same RL rows (synthesized
programs traced by the real engine), the same seed and generation settings, and the same sandboxed scorer. The
reference is a plain TRL reward function that scores the decoded completions and returns the same scalar; so the
measured difference is exactly what Bi-Level adds: incremental decoding with token offsets, span mapping, the
gather and the per-group [B, T] advantages. The two alternate for `--rounds` rounds (machine load skews whichever runs
during it); each round runs `--steps` optimizer steps per trainer and drops its first (warm-up) step. Prints each
round, the median s/step of both and the ratio ours / reference (target <= 1.05).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def rl_rows(n: int, params) -> list[dict]:
    """n output-task RL rows from synthesized programs, traced by the ground-truth engine."""
    from stepcode.data.synth import synth_candidates
    from stepcode.data.traces import trace_rows
    from stepcode.prompts import output_messages

    traced = [r for r in trace_rows(itertools.islice(synth_candidates(seed=7), 4 * n), params, workers=2)
              if r["status"] == "ok"][:n]
    return [{"id": r["id"], "task": "output", "prompt": output_messages(r["instrumented_code"], r["input"]),
             "gold_trace": r["trace"], "gold_output": r["output"], "code": r["code"],
             "instrumented_code": r["instrumented_code"], "input": r["input"], "entry_point": "f",
             "terminal_only": len(r["trace"]) <= 1} for r in traced]


def step_times(trainer) -> list[float]:
    """Train and return the wall seconds of every optimizer step but the first."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if not marks:
                marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

    trainer.add_callback(Clock())
    trainer.remove_callback(PrinterCallback)   # keep the output to the measurements
    trainer.train()
    durations = [b - a for a, b in zip(marks, marks[1:])]
    return durations[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="tiny", choices=["micro", "tiny"])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per trainer per round (first dropped)")
    ap.add_argument("--max-completion-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch
    from trl import GRPOTrainer

    from stepcode.config import Params
    from stepcode.training.grpo import bilevel_trainer_class, grpo_config, rl_dataset
    from stepcode.training.models import build_tiny_model, corpus_texts, load_model
    from stepcode.training.rewards import RewardScorer

    torch.set_num_threads(args.threads)
    params = Params()
    rows = rl_rows(16, params)
    profile = params.train.get("micro")
    profile = profile.model_copy(update={"grpo": profile.grpo.model_copy(update={
        "max_steps": args.steps, "batch_size": 8, "num_generations": 4, "learning_rate": 1e-5,
        "max_completion_length": args.max_completion_length})})
    with tempfile.TemporaryDirectory() as tmp, RewardScorer(params, workers=2) as scorer:
        model_dir = build_tiny_model(Path(tmp) / "model", corpus_texts(rows), size=args.size)
        dataset = rl_dataset(rows)

        def reference_reward(prompts, completions, completion_ids, **columns):
            keys = [k for k in columns if isinstance(columns[k], list)]
            batch = [{k: columns[k][i] for k in keys} for i in range(len(prompts))]
            return [s.logged for s in scorer.score(batch, [c[0]["content"] for c in completions])]

        def run(which: str) -> list[float]:
            model, tok = load_model(model_dir)
            config = grpo_config(profile, Path(tmp) / which)
            if which == "bilevel":
                trainer = bilevel_trainer_class()(model=model, args=config, train_dataset=dataset,
                                                  processing_class=tok, scorer=scorer)
            else:
                trainer = GRPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tok,
                                      reward_funcs=[reference_reward])
            return step_times(trainer)

        ours, ref = [], []
        for r in range(args.rounds):
            # Alternate which runs first, so warm caches or a load spike do not always favour the same one.
            if r % 2 == 0:
                a, b = run("bilevel"), run("trl")
            else:
                b, a = run("trl"), run("bilevel")
            ours += a
            ref += b
            print(f"round {r + 1}: bilevel {statistics.median(a):.3f} s/step   trl {statistics.median(b):.3f} s/step")
    mo, mr = statistics.median(ours), statistics.median(ref)
    print(f"BiLevelGRPOTrainer {mo:.3f} s/step, TRL GRPOTrainer {mr:.3f} s/step, ratio {mo / mr:.3f}x "
          f"(target <= 1.05x; {len(ours)} + {len(ref)} steps, size {args.size}, "
          f"max_completion_length {args.max_completion_length})")


if __name__ == "__main__":
    main()
