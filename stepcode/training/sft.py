"""SFT warm start on TRL's SFTTrainer, loss on the completion tokens only.

    from stepcode.training.sft import run_sft
    run_sft("models/tiny", "data/sft.jsonl", "models/tiny-sft", params.train.get("tiny-cpu"),
            curves="metrics/train-tiny-cpu/sft.json")     # optional: loss, learning rate... per step, for dvc plots
"""

from __future__ import annotations

import time

from stepcode.plots import SFT_CURVES
from stepcode.training.common import (
    callbacks,
    common_args,
    configure_torch,
    read_rows,
    run_summary,
    save_curves,
    save_model,
)


def run_sft(model_path, sft_jsonl, out_dir, profile, *, run_name: str | None = None, curves=None) -> dict:
    """SFT warm start with TRL's SFTTrainer, loss on the completion tokens only. Saves model + tokenizer in out_dir,
    and the training curves (`stepcode.plots.SFT_CURVES` per logged step) in `curves` when given.

    SFT rows: {"id", "task", "messages": [chat prompt], "completion": [{"role": "assistant", "content": TARGET}]}.
    """
    from stepcode.training.models import load_model, set_offline

    set_offline()   # before transformers is first imported
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    started = time.perf_counter()
    configure_torch(profile)
    rows = read_rows(sft_jsonl, "SFT", profile.sources)
    for i, row in enumerate(rows):
        if not isinstance(row.get("messages"), list) or not isinstance(row.get("completion"), list):
            raise ValueError(f"{sft_jsonl}: row {i + 1} ({row.get('id')!r}) needs 'messages' and 'completion' lists")
    dataset = Dataset.from_list([{"prompt": r["messages"], "completion": r["completion"]} for r in rows])
    model, tokenizer = load_model(model_path, dtype="bfloat16" if profile.bf16 else "float32")
    s = profile.sft
    args = SFTConfig(**common_args(profile, out_dir, run_name), learning_rate=s.learning_rate,
                     num_train_epochs=s.epochs, max_steps=s.max_steps, per_device_train_batch_size=s.batch_size,
                     gradient_accumulation_steps=s.grad_accum, max_length=s.max_length, completion_only_loss=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=callbacks(profile))
    trainer.train()
    save_model(trainer, tokenizer, out_dir)
    save_curves(trainer, curves, SFT_CURVES)
    return run_summary(trainer, started, out_dir)
