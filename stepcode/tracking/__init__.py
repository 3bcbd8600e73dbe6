"""Tracking: MLflow lineage (`lineage`: one run per stage, nested under a parent, with the DVC digests of what it
read and wrote), the model registry (`registry`: versions, aliases, promotion), run comparison (`compare`), and what
makes a run come back: `versions` (push to the DVC remote, the parent run's lineage artifacts), `dvcremote` (DVC's
API: push, which digests the remote holds, restore by md5), `runs` (what a run logged, read back), `fetch`
(`stepcode lineage fetch`) and `digests` (the pure comparisons they share).

Depends on the core modules only; mlflow and dvc load inside functions.
"""
