"""`stepcode pipeline` works from an installed wheel, not only from a source checkout: the wheel carries the
top-level `flows/` package beside `stepcode/`, and nothing finds them through the checkout's folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from itertools import islice
from pathlib import Path

import pytest

from stepcode.jsonl import read_table

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, text=True, timeout=300)
    (path,) = out.glob("stepcode-*.whl")
    return path


def test_the_wheel_carries_flows_and_the_library(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"flows/__init__.py", "flows/pipeline.py", "flows/retrain.py", "stepcode/cli.py",
            "stepcode/pipeline/preflight.py"} <= names
    assert not any(n.startswith(("tests/", "data/")) for n in names)


def test_pipeline_runs_from_the_installed_wheel(wheel, tmp_path):
    from stepcode.data.synth import synth_candidates

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    project = tmp_path / "project"          # a user's project folder: a corpus and params, no source checkout
    (project / "data" / "raw").mkdir(parents=True)
    rows = list(islice(synth_candidates(seed=3), 12))
    (project / "data" / "raw" / "synth.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (project / "params.yaml").write_text("tracking:\n  enabled: false\n")
    env = dict(os.environ, PYTHONPATH=str(site))
    where = subprocess.run([sys.executable, "-c", "import flows, stepcode; print(flows.__file__, stepcode.__file__)"],
                           cwd=project, env=env, capture_output=True, text=True, timeout=60, check=True).stdout
    assert all(p.startswith(str(site)) for p in where.split()), where
    r = subprocess.run([sys.executable, "-c", "from stepcode.cli import app; app()", "pipeline", "--stop-after",
                        "trace"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "trace     12 programs" in r.stdout
    assert len(list(read_table(project / "data" / "traces"))) == 12
