"""dvc.lock is committed in sync with the code: for every stage, the code files and params that dvc.lock records are
the ones in the tree. A stale lock makes `dvc status` report every stage as changed on a fresh clone, makes
`dvc repro` re-run what nothing changed, and leaves runs pointing at digests no command reproduces.

The fix when this fails: `dvc repro` (the whole pipeline, tiny-cpu), then commit dvc.lock and the metrics it wrote.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _git_tracked() -> set[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    files = set(out.splitlines())
    return files | {str(Path(f).parent) for f in files}   # a directory dependency (stepcode/evals) counts too


def stale_entries(status: dict, tracked: set[str]) -> list[str]:
    """What `dvc status` says changed in the code or params a stage depends on. Data that is absent or differs here
    (a clean clone has no outputs; a developer's may be from another run) is the workspace's business, not the
    lock's."""
    stale = []
    for stage, changes in status.items():
        for change in changes:
            if isinstance(change, str):                     # "changed command", "always changed", ...
                stale.append(f"{stage}: {change}")
                continue
            for dep, how in change.get("changed deps", {}).items():
                if dep.endswith("params.yaml"):
                    stale.append(f"{stage}: params {how}")
                elif dep in tracked:
                    stale.append(f"{stage}: {dep} {how}")
    return stale


def test_stale_entries_reads_dvc_status():
    status = {"trace": [{"changed deps": {"data/raw": "deleted", "stepcode/data/traces.py": "modified",
                                          "params.yaml": {"trace": "modified"}}},
                        {"changed outs": {"data/traces.jsonl": "not in cache"}}],
              "build": ["changed command"]}
    assert stale_entries(status, {"stepcode/data/traces.py"}) == [
        "trace: stepcode/data/traces.py modified", "trace: params {'trace': 'modified'}", "build: changed command"]


def test_dvc_lock_matches_the_code_and_params():
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        status = repo.status()
    stale = stale_entries(status, _git_tracked())
    assert not stale, ("dvc.lock is stale: run `dvc repro` and commit dvc.lock (and metrics/):\n  "
                       + "\n  ".join(stale))
