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


def kill_runs(parent_run_id: str | None) -> None:
    """Mark the pipeline run and every stage run under it that is still RUNNING as KILLED. A stage may be running in
    a task thread that dies with the process without unwinding, so the flow cannot rely on the stage to do it."""
    if not parent_run_id:
        return
    with contextlib.suppress(Exception):
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        parent = client.get_run(parent_run_id)
        stages = client.search_runs([parent.info.experiment_id],
                                    filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")
        for run in [*stages, parent]:
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, status="KILLED")


def _force_exit(signum: int) -> None:
    """The unwinding did not finish in time: mark the runs KILLED and exit."""
    kill_runs(os.environ.get("STEPCODE_PARENT_RUN_ID"))
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
