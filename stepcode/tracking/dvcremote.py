"""The project's DVC remote, through DVC's own API: push what a run recorded, say which digests the remote holds,
and bring one object back by its md5.

    from stepcode.tracking import dvcremote
    dvcremote.push(".", ["trace", "build"])               # `dvc push trace build data.dvc`: the stages + data sources
    dvcremote.absent(".", ["fb27...", "fa5c....dir"])      # the digests the remote does not hold
    dvcremote.restore(".", "fa5c....dir", "out/dataset")  # remote -> cache -> out/dataset, md5 verified

`restore` needs no .dvc file: it asks dvc-data to transfer the object named by the md5 (a `.dir` digest: the tree and
every file in it) from the remote into the project's cache, unless the cache holds it already, then checks it out at
the destination and recomputes its md5. A digest neither the remote nor the cache holds is `NotOnRemote`, one line.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from stepcode.errors import UserError


class NotOnRemote(UserError):
    """An md5 a run logged that neither the DVC remote nor the local cache holds."""


@dataclass(frozen=True)
class Remote:
    name: str
    url: str


@contextlib.contextmanager
def _repo(root: str | Path):
    """The DVC project at `root`, its loggers held quiet (their failures reach the caller as exceptions)."""
    from dvc.repo import Repo

    saved = [(log, log.level) for log in map(logging.getLogger, ("dvc", "dvc_data", "dvc_objects"))]
    for log, _ in saved:
        log.setLevel(logging.CRITICAL + 1)
    try:
        with Repo(str(root)) as repo:
            yield repo
    finally:
        for log, level in saved:
            log.setLevel(level)


def remote(root: str | Path = ".") -> Remote:
    """The default remote (`core.remote`) with its URL as DVC resolves it (a relative local path: absolute)."""
    from dvc.config import NoRemoteError

    with _repo(root) as repo:
        try:
            r = repo.cloud.get_remote()
        except NoRemoteError:
            raise UserError(f"{Path(root).absolute()}: no default DVC remote; add one: "
                            "`dvc remote add -d local ../dvc-storage` (README: Reproducing data with DVC)") from None
        return Remote(r.name, repo.config["remote"][r.name]["url"])


def push(root: str | Path, stages: list[str]) -> int:
    """Push the cached outputs of `stages` (dvc.yaml stage names) and of every data source (.dvc file) to the default
    remote; objects the remote has are skipped. Returns how many were transferred; raises what DVC raises."""
    dvc_yaml = Path(root).absolute() / "dvc.yaml"   # absolute targets: DVC resolves relative ones from the cwd
    with _repo(root) as repo:
        sources = [s.path for s in repo.index.stages if s.is_data_source]
        return repo.push(targets=[*(f"{dvc_yaml}:{s}" for s in stages), *sources])


def _hash(md5: str):
    from dvc_data.hashfile.hash_info import HashInfo

    return HashInfo("md5", md5)


def _lacking(odb, md5: str) -> list[str]:
    """The objects of `md5` that `odb` lacks: itself, or for a tree (`.dir`) the tree or any of its files."""
    from dvc_data.hashfile.tree import Tree
    from dvc_objects.errors import ObjectFormatError

    if not odb.exists(md5):
        return [md5]
    if not md5.endswith(".dir"):
        return []
    try:
        tree = Tree.load(odb, _hash(md5))
    except (FileNotFoundError, ObjectFormatError):
        return [md5]
    files = sorted({hi.value for _, _, hi in tree})
    present = set(odb.oids_exist(files))
    return [f for f in files if f not in present]


def absent(root: str | Path, md5s) -> set[str]:
    """The digests among `md5s` that the default remote does not hold completely."""
    with _repo(root) as repo:
        odb = repo.cloud.get_remote_odb()
        return {m for m in set(md5s) if _lacking(odb, m)}


def restore(root: str | Path, md5: str, dest: str | Path) -> Path:
    """Put the exact bytes DVC knows as `md5` at `dest` (which must not exist): fetched from the default remote into
    the cache when the cache lacks them, checked out, and their md5 recomputed."""
    from dvc_data.hashfile import load
    from dvc_data.hashfile.checkout import checkout
    from dvc_data.hashfile.transfer import transfer
    from dvc_objects.fs.local import LocalFileSystem

    from stepcode.tracking.lineage import dvc_md5

    dest = Path(dest).absolute()
    with _repo(root) as repo:
        cache = repo.cache.local
        if _lacking(cache, md5):
            r = repo.cloud.get_remote()
            odb = repo.cloud.get_remote_odb()
            lacking = _lacking(odb, md5)
            if lacking:
                raise NotOnRemote(f"md5 {md5} is neither in the DVC remote {r.name!r} ({odb.path}) nor in this "
                                  f"cache ({len(lacking)} object(s) missing): the run's data were never pushed; push "
                                  "them from the clone that made the run (`dvc push`, or rerun it with "
                                  "tracking.dvc_push: true)")
            transfer(odb, cache, [_hash(md5)], shallow=False, verify=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        checkout(str(dest), LocalFileSystem(), load(cache, _hash(md5)), cache)
    got = dvc_md5(dest)
    if got != md5:
        raise UserError(f"{dest}: restored bytes have md5 {got}, not {md5}: the cache or remote holds a corrupt "
                        "object; remove it from .dvc/cache and fetch again")
    return dest
