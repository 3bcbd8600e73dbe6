"""The benchmark data the project ships (data/benchmarks/) is the upstream release, byte for byte, with its licence
and provenance beside it: the sha256 each README records is the file's."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data" / "benchmarks"
FILES = ["cruxeval/cruxeval.jsonl", "reval/DREval_data.jsonl", "reval/DREval_tasks.jsonl"]


@pytest.mark.parametrize("name", FILES)
def test_each_file_matches_the_sha256_its_readme_records(name):
    path = DATA / name
    readme = (path.parent / "README.md").read_text()
    recorded = re.search(rf"{re.escape(path.name)}`?:?[^\n`]*?`([0-9a-f]{{64}})`", readme) \
        or re.search(r"\*\*sha256:\*\* `([0-9a-f]{64})`", readme)
    assert recorded, f"{path.parent / 'README.md'} records no sha256 for {path.name}"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == recorded.group(1)


def test_readmes_name_source_commit_and_licence():
    for folder in ("cruxeval", "reval"):
        readme = (DATA / folder / "README.md").read_text()
        assert re.search(r"commit `[0-9a-f]{40}`", readme), folder
        assert "Licence" in readme, folder
    assert "MIT License" in (DATA / "cruxeval" / "LICENSE").read_text()


def test_the_counts_the_readmes_give():
    crux = [json.loads(line) for line in (DATA / "cruxeval/cruxeval.jsonl").read_text().splitlines()]
    assert [r["id"] for r in crux] == [f"sample_{k}" for k in range(800)]
    programs = (DATA / "reval/DREval_data.jsonl").read_text().splitlines()
    tasks = [json.loads(line) for line in (DATA / "reval/DREval_tasks.jsonl").read_text().splitlines()]
    assert len(programs) == len(tasks) == 154
    assert sum(len(t["tasks"]) for t in tasks) == 690
    assert sum(len(entry["task"]) for t in tasks for entry in t["tasks"]) == 3152
