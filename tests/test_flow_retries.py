"""The flow retries what may be transient and nothing else: a user error (a missing input, a bad parameter, a failed
gate) fails the task at its first attempt, through a real Prefect flow run (Prefect's own test harness: a temporary
server and database)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_user_errors_are_not_retried_and_transient_ones_are():
    from prefect import flow, task
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import _transient
    from stepcode.config import ConfigError
    from stepcode.errors import MissingInput

    attempts: list[str] = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=_transient, persist_result=False)
    def fails_with(kind: str):
        attempts.append(kind)
        raise {"missing": MissingInput("data/raw: no such file"), "config": ConfigError("params.yaml: bad key"),
               "oserror": FileNotFoundError("gone"), "transient": ConnectionError("reset by peer")}[kind]

    @flow(persist_result=False)
    def run_all() -> dict:
        outcome = {}
        for kind in ("missing", "config", "oserror", "transient"):
            state = fails_with(kind, return_state=True)
            outcome[kind] = state.is_failed()
        return outcome

    with prefect_test_harness(server_startup_timeout=120):
        outcome = run_all()
    assert outcome == {"missing": True, "config": True, "oserror": True, "transient": True}
    assert [attempts.count(k) for k in ("missing", "config", "oserror", "transient")] == [1, 1, 1, 3]
