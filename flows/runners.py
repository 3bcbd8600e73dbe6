"""Where the flows' fanned-out tasks run, and the storage their inputs and outputs go through.

    params.yaml  orchestration.task_runner: process | dask      orchestration.dask_address: tcp://scheduler:8786
                 orchestration.storage: data/work/flow | s3://bucket/stepcode

- `process` (the default): a local process pool as wide as `sandbox.workers`.
- `dask`: prefect-dask's DaskTaskRunner on a dask.distributed cluster: the one at `dask_address`, or a LocalCluster of
  `dask_workers` processes (one thread each: a task runs a whole sandbox) started for the run and closed after it.
A task never gets a path that only the flow's machine can see: what it reads and writes is an fsspec URL under
`orchestration.storage` (`storage_url`). A local path works on one machine and on a cluster whose workers share that
filesystem (the test's LocalCluster); a cluster across machines needs a URL they all reach (s3://, gs://, a shared
mount). The README's "Scale out" section has the cluster set-up.
"""

from __future__ import annotations

from pathlib import Path


def task_runner(params):
    """The Prefect task runner the params choose (see the module docstring)."""
    o = params.orchestration
    if o.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if o.dask_address:
            return DaskTaskRunner(address=o.dask_address)
        workers = o.dask_workers or params.sandbox.resolved_workers()
        # processes, not threads: each task runs a sandbox (fork servers), and the GIL would serialise the rest
        return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                              cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                              "dashboard_address": None})
    from prefect.task_runners import ProcessPoolTaskRunner

    return ProcessPoolTaskRunner(max_workers=params.sandbox.resolved_workers())


def storage_url(params, root: str | Path, *parts: str) -> str:
    """An fsspec URL under `orchestration.storage` (a relative path is under the project root), with `parts` joined."""
    base = params.orchestration.storage
    if "://" not in base:
        base = str((Path(root) / base).resolve())
    return "/".join([base.rstrip("/"), *parts])


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _fs(url: str):
    import fsspec.core

    return fsspec.core.url_to_fs(url)


def url_md5(url: str) -> str | None:
    """The content md5 of what `url` names (DVC's md5 for a local file or folder), or None when it does not exist."""
    from stepcode.tracking.lineage import dvc_md5

    if is_local(url):
        path = Path(url.removeprefix("file://"))
        return dvc_md5(path) if path.exists() else None
    import hashlib

    fs, path = _fs(url)
    if not fs.exists(path):
        return None
    digest = hashlib.md5()
    with fs.open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_bytes(url: str) -> bytes:
    fs, path = _fs(url)
    return fs.cat_file(path)


def write_bytes(url: str, data: bytes) -> None:
    """Write `data` at `url` (a local path atomically; an object store writes an object whole anyway)."""
    if is_local(url):
        from stepcode.jsonl import atomic_file

        with atomic_file(url.removeprefix("file://")) as fh:
            fh.write(data)
        return
    fs, path = _fs(url)
    fs.pipe_file(path, data)


def download(url: str, local: str | Path) -> None:
    fs, path = _fs(url)
    fs.get_file(path, str(local))


def upload(local: str | Path, url: str) -> None:
    if is_local(url):
        write_bytes(url, Path(local).read_bytes())
        return
    fs, path = _fs(url)
    fs.put_file(str(local), path)


def remove_stale(url_dir: str, keep: set[str], pattern: str) -> None:
    """Delete the files matching `pattern` under `url_dir` whose URL is not in `keep` (a shrunk corpus's batches)."""
    fs, path = _fs(url_dir)
    if not fs.exists(path):
        return
    for found in fs.glob(f"{path.rstrip('/')}/{pattern}"):
        name = found.rsplit("/", 1)[-1]
        if f"{url_dir.rstrip('/')}/{name}" not in keep:
            fs.rm_file(found)
