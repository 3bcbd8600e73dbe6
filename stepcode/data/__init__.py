"""Data: program corpora in, validated training rows out.

    corpus (programs: read, filter, import) → traces (sandboxed ground truth) → validation (the great-expectations
    gate) → dataset (SFT / RL / held-out rows, decontaminated against the benchmarks by `decontam`)

`synth` and `synth_basic` are the offline program synthesizers. Depends on the core modules and `stepcode.sandbox`.
"""
