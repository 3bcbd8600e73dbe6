"""Ending a pipeline run on SIGTERM, reliably.

A SIGTERM must end the run as KILLED, whatever Python is doing when it lands. Raising from the signal handler is
not enough on its own: an exception raised while a destructor runs is printed and dropped ("Exception ignored in
..."). So the handler also sets a flag that the flow checks between stages (`checkpoint()`), and arms a watchdog
that marks the pipeline's MLflow run KILLED and exits if the process is still alive long after. Every file the
pipeline writes is written atomically, so stopping anywhere loses nothing but the work in progress.
(Kept out of flows/ on purpose: Prefect pickles flow modules for its process pool, and a lock cannot be pickled.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

WATCHDOG_S = 60.0
_terminated = threading.Event()


def requested() -> bool:
    return _terminated.is_set()


def _force_exit(signum: int) -> None:
    run_id = os.environ.get("STEPCODE_PARENT_RUN_ID")
    if run_id:
        with contextlib.suppress(Exception):
            from mlflow.tracking import MlflowClient

            MlflowClient().set_terminated(run_id, status="KILLED")
    os._exit(128 + signum)


def _on_sigterm(signum, frame):
    if not _terminated.is_set():
        _terminated.set()
        timer = threading.Timer(WATCHDOG_S, _force_exit, args=(signum,))
        timer.daemon = True
        timer.start()
    raise KeyboardInterrupt(f"terminated by signal {signum}")


def install() -> None:
    """Route SIGTERM here (main thread only; elsewhere whatever handler is installed stays)."""
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGTERM, _on_sigterm)


def checkpoint() -> None:
    """Stop here if a termination signal arrived, even one whose exception was swallowed."""
    if _terminated.is_set():
        raise KeyboardInterrupt("terminated by a signal")
