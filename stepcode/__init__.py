"""StepCode: teach code LLMs to reason about execution step by step.

`import stepcode` stays light on purpose: heavy libraries (torch, transformers, mlflow, prefect, great-expectations)
are imported inside the modules that need them.
"""

__version__ = "0.1.0"
