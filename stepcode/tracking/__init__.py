"""Tracking: MLflow lineage (`lineage`: one run per stage, nested under a parent, with the DVC digests of what it
read and wrote), the model registry (`registry`: versions, aliases, promotion) and run comparison (`compare`).

Depends on the core modules only; mlflow loads inside functions.
"""
