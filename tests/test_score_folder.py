"""`stepcode score` over a folder (flows/score.py): one Prefect task per generations file on the params' task runner,
a result file per input file, a summary. Real everything: the CLI in a subprocess, Prefect's temporary API server, the
sandbox, and for the Dask runner a dask.distributed LocalCluster of two worker processes started here.

Each folder result must equal `stepcode.evals.score_file` on that file alone (the single-file `stepcode score`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _prefect_runs import seed_prefect_home

ROOT = Path(__file__).resolve().parents[1]
CRUXEVAL = ROOT / "data" / "benchmarks" / "cruxeval" / "cruxeval.jsonl"
N_PROBLEMS = 4


def _problems() -> list[dict]:
    with CRUXEVAL.open() as f:
        return [json.loads(next(f)) for _ in range(N_PROBLEMS)]


def _generations(problems: list[dict]) -> dict[str, dict]:
    """Three files: all gold, all wrong (one a copied input), a mix with several generations per sample."""
    gold = {p["id"]: [p["output"]] for p in problems}
    wrong = {p["id"]: ["None"] for p in problems}
    wrong[problems[0]["id"]] = [f"f({problems[0]['input']})"]     # copied input: skipped, then padded to [False]
    mixed = {p["id"]: [p["output"], "0", p["output"]] if k % 2 == 0 else ["'nope'", "1 / 0", p["output"]]
             for k, p in enumerate(problems)}
    return {"gold.json": gold, "wrong.json": wrong, "sub/mixed.json": mixed}


def _project(tmp_path: Path, **orchestration) -> Path:
    """A project folder: a 4-problem CRUXEval, params pointing at it, a folder of three generations files."""
    project = tmp_path / "project"
    (project / "gens" / "sub").mkdir(parents=True)
    problems = _problems()
    (project / "crux.jsonl").write_text("".join(json.dumps(p) + "\n" for p in problems))
    lines = ["evaluate:", "  cruxeval_path: crux.jsonl", "sandbox:", "  workers: 2", "tracking:", "  enabled: false"]
    if orchestration:
        lines += ["orchestration:", *(f"  {k}: {json.dumps(v)}" for k, v in orchestration.items())]
    (project / "params.yaml").write_text("\n".join(lines) + "\n")
    for name, gens in _generations(problems).items():
        (project / "gens" / name).write_text(json.dumps(gens, indent=1))
    return project


def _score(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_HOME": str(project / ".prefect")}
    env.pop("PREFECT_API_URL", None)
    cmd = [str(Path(sys.executable).parent / "stepcode"), "score", "--benchmark", "cruxeval", "--task", "output",
           *args]
    return subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=600)


def _alone(project: Path) -> dict[str, dict]:
    """Each generations file scored alone, by the single-file path: {name: the result file it writes}."""
    from stepcode.config import load_params
    from stepcode.evals import score_file

    params = load_params(project / "params.yaml")
    params = params.model_copy(update={"evaluate": params.evaluate.model_copy(
        update={"cruxeval_path": str(project / "crux.jsonl")})})
    out = {}
    for name in _generations(_problems()):
        target = project / "alone" / name.replace(".json", ".scored.json")
        score_file("cruxeval", "output", project / "gens" / name, target, params)
        out[name] = json.loads(target.read_text())
    return out


def _check_folder_results(project: Path, r: subprocess.CompletedProcess, broken: bool = False) -> dict:
    """The three good files' results equal each scored alone; with `broken`, broken.json is an error row."""
    assert r.returncode == (2 if broken else 0), (r.stdout, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    expected = _alone(project)
    summary = json.loads((project / "scored" / "summary.json").read_text())
    good = ["gold.json", "sub/mixed.json", "wrong.json"]
    assert [row["file"] for row in summary["files"]] == (["broken.json"] if broken else []) + good
    assert summary["scored"] == 3 and summary["failed"] == broken and summary["glob"] == "**/*.json"
    by_name = {row["file"]: row for row in summary["files"]}
    for name in good:
        row = by_name[name]
        got = json.loads((project / "scored" / row["result"]).read_text())
        assert row["result"] == name.replace(".json", ".scored.json")
        assert got == expected[name], name
        assert (row["pass_at_1"], row["pass_at_5"], row["samples"]) == (got["pass_at_1"], got["pass_at_5"],
                                                                         N_PROBLEMS)
    assert by_name["gold.json"]["pass_at_1"] == 100.0 and by_name["wrong.json"]["pass_at_1"] == 0.0
    assert 0 < by_name["sub/mixed.json"]["pass_at_1"] < 100
    # the table on stdout; on stderr one progress line per file
    assert all(name in r.stdout for name in good) and "100.00" in r.stdout
    n = len(summary["files"])
    assert sum(f"[{k}/{n}]" in r.stderr for k in range(1, n + 1)) == n, r.stderr
    if broken:   # an error row, the others scored, one error line at the end, no stale result beside it
        assert by_name["broken.json"]["error"].startswith("broken.json:3: bad JSON"), by_name["broken.json"]
        assert not (project / "scored" / "broken.scored.json").exists()
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("error: 1 of 4 generations file(s) not scored, the other 3 were") \
            and "first: broken.json:3: bad JSON" in last, last
    return summary


@pytest.mark.slow
def test_a_folder_on_the_process_runner_equals_each_file_alone_and_a_bad_file_is_an_error_row(tmp_path):
    project = _project(tmp_path)
    seed_prefect_home(project)
    (project / "gens" / "broken.json").write_text('{"sample_0":\n  ["1",\n}\n')
    (project / "scored").mkdir()
    (project / "scored" / "broken.scored.json").write_text("an earlier run's result")
    start = time.perf_counter()
    r = _score(project, "gens", "-o", "scored")
    print(f"process runner: {time.perf_counter() - start:.1f} s")
    _check_folder_results(project, r, broken=True)
    assert "on the process task runner" in r.stderr


@pytest.mark.slow
def test_a_folder_on_a_dask_cluster_equals_each_file_alone(tmp_path):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        project = _project(tmp_path, task_runner="dask", dask_address=cluster.scheduler_address)
        seed_prefect_home(project)
        start = time.perf_counter()
        # fsspec URLs in and out, as for a bucket (s3://... with s3fs installed)
        r = _score(project, f"file://{project}/gens", "-o", f"file://{project}/scored")
        print(f"dask runner: {time.perf_counter() - start:.1f} s")
        _check_folder_results(project, r)
        assert "on the dask task runner" in r.stderr
        with Client(cluster.scheduler_address) as client:   # the tasks ran on the cluster's workers
            assert "score_one" in client.run_on_scheduler(_task_prefixes)


def _task_prefixes(dask_scheduler=None) -> list[str]:
    return list(dask_scheduler.task_prefixes)


def test_an_empty_folder_is_one_line_before_any_work(tmp_path):
    project = _project(tmp_path)
    (project / "empty").mkdir()
    (project / "empty" / "old.scored.json").write_text("{}")
    r = _score(project, "empty", "-o", "scored")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert "GENERATIONS empty: no generations files" in r.stderr and "left out 1" in r.stderr, r.stderr
    assert not (project / "scored").exists()
