"""What a project's Prefect history holds (what its UI would show): every flow run, newest first, with its name,
state, artifacts and logs, read through Prefect's own client.

    from _prefect_runs import read_flow_runs          # in a test (pytest puts tests/ on sys.path)
    runs = read_flow_runs(project)                     # runs this file in a subprocess:
    PREFECT_HOME=PROJECT/.prefect python tests/_prefect_runs.py     # prints the runs as JSON

`stepcode pipeline` keeps its runs in PROJECT/.prefect/prefect.db (its temporary API server is gone when it exits);
without PREFECT_API_URL the client here starts a temporary server on that database, as `prefect server start` would.
A subprocess, so the test process's own Prefect settings and database stay out of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def read_flow_runs(project: Path) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(Path(project) / ".prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_UI_ENABLED="false", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120")
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort, LogSort

    out = []
    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs(sort=FlowRunSort.EXPECTED_START_TIME_DESC):
            artifacts = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])),
                                    sort=LogSort.TIMESTAMP_ASC)
            out.append({"id": str(run.id), "name": run.name, "state": run.state_name,
                        "flow_id": str(run.flow_id), "parent_task_run_id": str(run.parent_task_run_id or ""),
                        "artifacts": [{"key": a.key, "type": a.type, "data": a.data} for a in artifacts],
                        "logs": [{"logger": log.name, "level": log.level, "message": log.message,
                                  "task_run_id": str(log.task_run_id or "")} for log in logs]})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
