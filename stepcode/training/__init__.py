"""Training: models, rewards, advantages and the TRL trainers.

- `models`: the offline tiny models and tokenizer, loading a local model.
- `rewards`: the step and final rewards of a completion (re-traced in the sandbox when it commits an input).
- `advantages`: Bi-Level GRPO's maths, pure functions: inter-trajectory z-scores, intra-trajectory step credit, the
  per-token advantages; the advantage modes (`MODES`) are one function each.
- `sft`: the SFT warm start (TRL SFTTrainer); `grpo`: GRPO (a TRL GRPOTrainer subclass with the per-token
  advantages); `common`: what both share. `modes`: the advantage modes, the one list.

Depends on the core modules, `stepcode.sandbox` and `stepcode.data`. torch/transformers/trl load inside functions.
"""
