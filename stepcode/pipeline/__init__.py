"""The pipeline layer: what a stage is and how a run is put together.

- `spec`: the one stage spec (code, params, deps, outputs per stage); `dvc.yaml` is generated from it and the
  flow's cache keys are computed from it.
- `stages`: one function per stage (the CLI, `dvc.yaml` through the CLI, and the Prefect flows call them).
- `preflight`: checks before a run starts. `termination`: ending a run on SIGTERM. `study`: the ablation study.

Uses every layer below; nothing below imports it.
"""
