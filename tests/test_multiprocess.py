"""Bi-Level GRPO under two processes: `accelerate launch` on the CPU (gloo) gives every completion the same per-token
advantages, and the same logged group metrics, as one process on the same batch and seed.

Why it can differ: TRL spreads a prompt's G completions over processes, so the group statistics need
`self.accelerator.gather` (stepcode/training/grpo.py) and each process must then take back exactly its own rows.

How: run 1 is a real 2-process run (`accelerate launch --multi_gpu --num_processes 2`; on a CPU-only machine
`--cpu --num_processes 2` would start ONE process: accelerate runs several CPU processes only under mpirun, and
`--multi_gpu` with the profile's `use_cpu` gives two gloo processes). Its rollouts come from TRL's `rollout_func`:
each process picks, per local row, one of four crafted completions of that row (right, one wrong print, wrong answer,
all wrong; a seeded choice), so rewards and advantages are far from trivial while everything after generation is the
real thing: the sandboxed scorer, the gather, the group advantages, TRL's loss and DDP's backward. Each process dumps
what it computed (STEPCODE_DUMP_ADVANTAGES). Run 2 is one process, same dataset, seed and global batch (per-device
batch x 2), whose `rollout_func` replays, call by call, the completions run 1 produced in global order (rank 0's rows,
then rank 1's) and checks that the prompts it is asked for are the ones run 1 had there. Both runs' advantages and
logged metrics are then compared.

This file is also the worker: `accelerate launch ... tests/test_multiprocess.py MODEL RL_JSONL OUT BATCH STEPS`.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BATCH = 6           # per process: G = 4, so the global batch of 12 is 3 prompt groups and the second straddles ranks
STEPS = 2
SEED = 0


def _helpers():
    """The crafted-completion helpers of tests/test_trainer.py (also when this file runs as the worker)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import test_trainer

    return test_trainer


def crafted_variants(tok, row) -> list[list[int]]:
    """Four completions of an RL row as token ids: right; first print wrong; wrong answer (input task: an answer that is
    not the committed input); all prints wrong with a wrong answer (input task: a committed input that raises)."""
    crafted_completion = _helpers().crafted_completion
    gold, wrong = row["gold_trace"], [line.split(":")[0] + ": 99" for line in row["gold_trace"]]
    if row["task"] == "output":
        specs = [(gold, row["gold_output"], None), (wrong[:1] + gold[1:], row["gold_output"], None),
                 (gold, "-1", None), (wrong, "-1", None)]
    else:
        specs = [(gold, row["input"], row["input"]), (wrong[:1] + gold[1:], row["input"], row["input"]),
                 (gold, "[0], 0", row["input"]), (gold, "[5], 3", "[1, 'a'], 3")]
    return [crafted_completion(tok, row["task"], prints, answer, commit=commit)[0] for prints, answer, commit in specs]


def train(model_dir, rows, out_dir, batch: int, steps: int, pick) -> list[dict]:
    """Bi-Level GRPO on the micro profile with TRL's rollout_func: `pick(trainer, call, prompts)` returns each local
    prompt's completion ids. Returns the trainer's log history."""
    import torch

    from stepcode.config import Params
    from stepcode.training.grpo import bilevel_trainer_class, grpo_config, rl_dataset
    from stepcode.training.models import load_model
    from stepcode.training.rewards import RewardScorer

    torch.set_num_threads(1)
    model, tok = load_model(model_dir)
    calls = []

    def rollout(prompts, trainer):
        calls.append(None)
        prompt_ids = [tok(tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False))["input_ids"]
                      for p in prompts]
        return {"prompt_ids": prompt_ids, "completion_ids": pick(trainer, len(calls), prompts), "logprobs": None}

    profile = Params().train.get("micro")
    g = profile.grpo.model_copy(update={"batch_size": batch, "num_generations": 4, "max_steps": steps,
                                        "learning_rate": 1e-2})
    args = grpo_config(profile.model_copy(update={"grpo": g, "seed": SEED}), out_dir)
    with RewardScorer(workers=1) as scorer:
        trainer = bilevel_trainer_class()(model=model, args=args, train_dataset=rl_dataset(rows), processing_class=tok,
                                          scorer=scorer, rollout_func=rollout, mode="bilevel", lam=0.5)
        trainer.train()
    assert trainer.state.global_step == steps and len(calls) == steps
    return trainer.state.log_history


def worker(model_dir, rl_jsonl, out_dir, batch, steps) -> None:
    """One process of run 1: a seeded choice among the crafted completions of each local row."""
    import random

    from stepcode.training.models import load_tokenizer

    rows = [json.loads(line) for line in Path(rl_jsonl).read_text().splitlines()]
    tok = load_tokenizer(model_dir)
    by_prompt = {json.dumps(row["prompt"]): crafted_variants(tok, row) for row in rows}

    def pick(trainer, call, prompts):
        rank = trainer.accelerator.process_index
        assert trainer.accelerator.num_processes == 2, "accelerate started one process"
        return [by_prompt[json.dumps(p)][random.Random(f"{call}/{rank}/{i}").randrange(4)]
                for i, p in enumerate(prompts)]

    history = train(model_dir, rows, out_dir, int(batch), int(steps), pick)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(out_dir, "history.json").write_text(json.dumps(history))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read_dumps(directory: Path) -> dict[int, dict[int, dict]]:
    """{call: {rank: line}} from the advantages-rank<R>.jsonl files."""
    calls: dict[int, dict[int, dict]] = {}
    for path in sorted(directory.glob("advantages-rank*.jsonl")):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            calls.setdefault(entry["call"], {})[entry["rank"]] = entry
    return calls


def _global(entry_by_rank: dict[int, dict]) -> dict[str, list]:
    """One call's rows in global order: rank 0's, then rank 1's (how TRL lays out the batch)."""
    ranks = [entry_by_rank[r] for r in sorted(entry_by_rank)]
    return {key: [x for e in ranks for x in e[key]] for key in ("ids", "tasks", "completion_ids", "advantages")}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You are using 'rollout_func'")
def test_two_processes_give_the_single_process_advantages(tmp_path, monkeypatch):
    h = _helpers()
    from stepcode.training.models import build_tiny_model, corpus_texts

    rows = h.rl_rows()
    model = build_tiny_model(tmp_path / "micro", corpus_texts(rows + h.sft_rows()), size="micro")
    rl = h.write_jsonl(tmp_path / "rl.jsonl", rows)

    # Run 1: two processes, rendezvous on a free local port (accelerate sets MASTER_ADDR/MASTER_PORT from it).
    env = {**os.environ, "STEPCODE_DUMP_ADVANTAGES": str(tmp_path / "two"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
               "--main_process_port", str(_free_port()),
               str(Path(__file__).resolve()), str(model), str(rl), str(tmp_path / "out-two"), str(BATCH), str(STEPS)]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    two_process_s = time.perf_counter() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    two = _read_dumps(tmp_path / "two")
    assert sorted(two) == list(range(1, STEPS + 1)) and all(sorted(two[c]) == [0, 1] for c in two), two.keys()
    assert all(e["num_processes"] == 2 and len(e["ids"]) == BATCH for c in two for e in two[c].values())

    # Run 2: one process, the same global batch, replaying run 1's completions in global order.
    prompt_of = {(r["id"], r["task"]): json.dumps(r["prompt"]) for r in rows}
    monkeypatch.setenv("STEPCODE_DUMP_ADVANTAGES", str(tmp_path / "one"))

    def replay(trainer, call, prompts):
        assert trainer.accelerator.num_processes == 1
        expected = _global(two[call])
        assert [json.dumps(p) for p in prompts] == [prompt_of[k] for k in zip(expected["ids"], expected["tasks"])]
        return expected["completion_ids"]

    history = train(model, rows, tmp_path / "out-one", 2 * BATCH, STEPS, replay)
    one = _read_dumps(tmp_path / "one")

    nonzero = 0
    for call in range(1, STEPS + 1):
        a, b = _global(two[call]), one[call][0]
        assert (a["ids"], a["tasks"], a["completion_ids"]) == (b["ids"], b["tasks"], b["completion_ids"])
        # a prompt group straddles the two ranks: its statistics needed the gather
        assert (a["ids"][BATCH - 1], a["tasks"][BATCH - 1]) == (a["ids"][BATCH], a["tasks"][BATCH])
        for adv_two, adv_one in zip(a["advantages"], b["advantages"]):
            assert len(adv_two) == len(adv_one)
            assert all(math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-6) for x, y in zip(adv_two, adv_one)), \
                (call, adv_two, adv_one)
            nonzero += any(abs(x) > 1e-3 for x in adv_two)
    assert nonzero >= STEPS * BATCH, "too few rows with a nonzero advantage to tell anything apart"
    assert any(len({round(x, 5) for x in adv}) > 1 for c in two for e in two[c].values() for adv in e["advantages"])

    # The logged metrics are global (gathered) too: the same in both runs.
    logged = json.loads((tmp_path / "out-two" / "history.json").read_text())
    keys = ("reward", "stepcode/final_accuracy", "stepcode/step_accuracy", "stepcode/frac_final_zero_std",
            "stepcode/advantage_mean", "stepcode/advantage_std")
    steps_two = [e for e in logged if "loss" in e]
    steps_one = [e for e in history if "loss" in e]
    assert len(steps_two) == len(steps_one) == STEPS
    for e2, e1 in zip(steps_two, steps_one):
        for key in keys:
            assert e2[key] == pytest.approx(e1[key], rel=1e-5, abs=1e-6), key
    print(f"two-process run: {two_process_s:.1f} s")


if __name__ == "__main__":
    worker(*sys.argv[1:])
