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

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def read_flow_runs(project: Path) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(Path(project) / ".prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_UI_ENABLED="false", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120")
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


_MIGRATED: list[Path] = []   # the migrated, empty database every seeded project copies (made once per session)


def _migrated_db() -> Path:
    """An empty Prefect database, migrated once per session by Prefect itself (`prefect server database upgrade`)."""
    if not _MIGRATED:
        home = Path(tempfile.mkdtemp(prefix="stepcode-prefect-db-"))
        atexit.register(shutil.rmtree, home, True)
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="true")
        proc = subprocess.run([str(Path(sys.executable).with_name("prefect")), "server", "database", "upgrade", "-y"],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and (home / "prefect.db").is_file(), proc.stdout[-2000:] + proc.stderr[-3000:]
        _MIGRATED.append(home / "prefect.db")
    return _MIGRATED[0]


def seed_prefect_db(home: Path) -> None:
    """Put the migrated, empty database in a PREFECT_HOME (a project's .prefect/, a `prefect server start`'s home):
    what its first run would create. Migrating a fresh database costs each run about 10 s of CPU; the runs, logs
    and artifacts in it are still that run's own. tests/test_packaging.py leaves its folder (a user's new project)
    unseeded, so a first run's migration stays covered."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(_migrated_db(), home / "prefect.db")


def seed_prefect_home(project: Path) -> None:
    """A project folder with the migrated, empty database where `stepcode pipeline` keeps its runs."""
    seed_prefect_db(Path(project) / ".prefect")


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
