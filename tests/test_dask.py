"""The pipeline on a real dask.distributed cluster (orchestration.task_runner: dask): a scheduler and two worker
processes started here, the flow pointed at them by address, as it would be at a cluster's. Tracing must give the
same data, part by part, as the trace stage in one process (`stepcode trace`, what dvc.yaml runs; tests/test_flows.py
checks the process-pool flow against it too), and the trace tasks must have gone through the cluster's scheduler."""

from __future__ import annotations

import pytest
from test_flows import _pipeline, _project

from stepcode.tracking.lineage import dvc_md5

pytestmark = pytest.mark.slow


def test_the_micro_pipeline_traces_the_same_on_a_dask_cluster(tmp_path):
    from distributed import Client, LocalCluster

    from stepcode.config import load_params
    from stepcode.pipeline import stages

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        d = _project(tmp_path, "dask", 60, "dask-cluster", trace__part_rows=25,
                     orchestration__task_runner="dask", orchestration__dask_address=cluster.scheduler_address)
        done = _pipeline(d, "--stop-after", "trace")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "trace     60 programs: ok 60" in done.stdout, done.stdout[-3000:]
        prefixes = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    assert "trace_batch" in prefixes, prefixes     # the parts were traced by this cluster's workers

    params = load_params(d / "params.yaml")
    params = params.model_copy(update={"tracking": params.tracking.model_copy(update={"enabled": False})})
    stages.trace(params, d / "data" / "raw", tmp_path / "one-process", progress=False)
    parts = sorted(p.name for p in (d / "data" / "traces").iterdir())
    assert parts == ["part-00000.jsonl", "part-00001.jsonl", "part-00002.jsonl"]
    for name in parts:
        assert dvc_md5(d / "data" / "traces" / name) == dvc_md5(tmp_path / "one-process" / name), name
    assert dvc_md5(d / "data" / "traces") == dvc_md5(tmp_path / "one-process")
    # the tasks read and wrote through orchestration.storage, not through paths of the flow's own
    assert sorted(p.name for p in (d / "data" / "work" / "flow" / "trace" / "out").iterdir()) == \
        ["batch-00000.jsonl", "batch-00001.jsonl", "batch-00002.jsonl"]
