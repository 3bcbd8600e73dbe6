#!/usr/bin/env bash
# GPU smoke check: SFT + Bi-Level GRPO for a few steps in bf16 on ONE GPU, on a randomly initialised ~0.5B Llama
# (stepcode.training.models size "0.5b", tokenizer trained on the spot: nothing is downloaded). Prints tokens/s and peak
# GPU memory of each stage and exits within 8 minutes. Without a CUDA GPU it says so and exits 0 (CI never needs it).
#
#   scripts/gpu_check.sh                 # PYTHON=/path/to/python to choose the interpreter
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA GPU (or no torch) here; nothing to check."
    exit 0
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 TRL_EXPERIMENTAL_SILENCE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# 8 minutes in all; the steps below take about two on an H100-class GPU.
exec timeout 480 "$PY" - <<'EOF'
import itertools, json, tempfile, time
from pathlib import Path

import torch

from stepcode.config import GRPOSettings, Params, SFTSettings, TrainProfile
from stepcode.training.models import build_tiny_model, corpus_texts
from stepcode.prompts import output_messages, render_output_completion
from stepcode.data.synth import synth_candidates
from stepcode.data.traces import trace_rows
from stepcode.training.grpo import run_grpo
from stepcode.training.sft import run_sft

params = Params()
print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
traced = [r for r in trace_rows(itertools.islice(synth_candidates(seed=11), 400), params, workers=4)
          if r["status"] == "ok"][:128]
rl, sft = [], []
for r in traced:
    prompt = output_messages(r["instrumented_code"], r["input"])
    rl.append({"id": r["id"], "task": "output", "prompt": prompt, "gold_trace": r["trace"], "gold_output": r["output"],
               "code": r["code"], "instrumented_code": r["instrumented_code"], "input": r["input"],
               "entry_point": "f", "terminal_only": len(r["trace"]) <= 1})
    sft.append({"id": r["id"], "task": "output", "messages": prompt,
                "completion": [{"role": "assistant", "content": render_output_completion(r["trace"], r["output"])}]})
print(f"gpu_check: {len(rl)} traced programs")

profile = TrainProfile(use_cpu=False, bf16=True, torch_threads=0, report_to=["none"],
                       sft=SFTSettings(learning_rate=1e-4, max_steps=10, batch_size=16, max_length=1024),
                       grpo=GRPOSettings(learning_rate=1e-6, max_steps=4, batch_size=32, num_generations=8,
                                         max_completion_length=256))
with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    for name, rows in (("rl", rl), ("sft", sft)):
        (tmp / f"{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    start = time.perf_counter()
    build_tiny_model(tmp / "init", corpus_texts(traced + sft), size="0.5b")
    n_params = sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(tmp / "init").parameters())
    print(f"gpu_check: built a {n_params / 1e6:.0f}M-parameter Llama in {time.perf_counter() - start:.1f} s")

    torch.cuda.reset_peak_memory_stats()
    s = run_sft(tmp / "init", tmp / "sft.jsonl", tmp / "sft", profile)
    sft_tokens = s["last_log"].get("num_tokens", 0.0)
    print(f"gpu_check: SFT  {s['steps']} steps in {s['seconds']} s, {sft_tokens / s['seconds']:.0f} tokens/s "
          f"(incl. load/save), loss {s['first_log'].get('loss', float('nan')):.3f} -> "
          f"{s['last_log'].get('loss', float('nan')):.3f}, peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")

    torch.cuda.reset_peak_memory_stats()
    g = run_grpo(tmp / "sft", tmp / "rl.jsonl", tmp / "rl", profile, mode="bilevel", params=params)
    last = g["last_log"]
    print(f"gpu_check: GRPO {g['steps']} steps in {g['seconds']} s, rollout "
          f"{last.get('stepcode/rollout_tokens_per_s', float('nan')):.0f} tokens/s, mean completion "
          f"{last.get('completions/mean_length', float('nan')):.0f} tokens, step accuracy "
          f"{last.get('stepcode/step_accuracy', float('nan')):.3f}, peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
print("gpu_check: OK")
EOF
