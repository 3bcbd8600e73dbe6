"""Inputs tracked by DVC arrive by themselves: a missing one is pulled from the project's DVC remote.

    from stepcode.dvcdata import ensure_present
    ensure_present("data/raw")      # pulls it (one line on stderr) when data.dvc tracks it and it is missing

A fresh clone has `data.dvc` but no `data/raw`; the main job, `stepcode trace` and a Prefect worker on a fresh
machine all read the corpus through `stepcode.data.traces.read_corpus`, which calls this, so none of them needs a manual
`dvc pull`. What is neither present nor tracked, or cannot be pulled, is a `MissingInput` whose one line names the
command to run. (`dvc repro` checks its dependencies before it runs a stage: there, `dvc repro --pull` does this.)
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

import yaml

from stepcode.errors import MissingInput


@contextlib.contextmanager
def _quiet(*loggers: str, level: int = logging.CRITICAL + 1):
    """Hold DVC's loggers at `level` for a block (they also reach Prefect's console handler, so lines come twice)."""
    saved = [(log, log.level) for log in map(logging.getLogger, loggers)]
    for log, _ in saved:
        log.setLevel(level)
    try:
        yield
    finally:
        for log, old in saved:
            log.setLevel(old)


def _repo_root(start: Path) -> Path | None:
    for d in (start, *start.parents):
        if (d / ".dvc").is_dir():
            return d
    return None


def tracking_file(path: str | Path) -> Path | None:
    """The `.dvc` file of the DVC project around `path` whose output is `path` (or a folder holding it)."""
    target = Path(path).absolute()
    root = _repo_root(target.parent)
    if root is None:
        return None
    # A .dvc file sits beside what it tracks or above it (`dvc add data/raw` writes data/raw.dvc; ours is ./data.dvc)
    folders = [d for d in target.parents if d == root or root in d.parents]
    for dvcfile in (f for d in folders for f in sorted(d.glob("*.dvc")) if f.is_file()):
        try:
            outs = (yaml.safe_load(dvcfile.read_text()) or {}).get("outs", [])
        except yaml.YAMLError:
            continue
        for out in outs:
            tracked = (dvcfile.parent / out.get("path", "")).absolute()
            if target == tracked or tracked in target.parents:
                return dvcfile
    return None


def ensure_present(path: str | Path, *, echo=None, hint: str = "") -> Path:
    """Return `path` if it exists; else pull it from the DVC remote when a `.dvc` file tracks it (saying so in one
    line), else raise MissingInput naming what to run (`hint`: what else to say when nothing tracks it)."""
    p = Path(path)
    if p.exists():
        return p
    dvcfile = tracking_file(p)
    if dvcfile is None:
        raise MissingInput(f"{p}: no such file or directory (and no .dvc file tracks it)"
                           + (f"; {hint}" if hint else ""))
    root = _repo_root(dvcfile.parent)
    rel = dvcfile.relative_to(root)
    say = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    say(f"{p} is missing: pulling it from the DVC remote ({rel}) ...")
    try:
        from dvc.repo import Repo

        with _quiet("dvc", "dvc_data"), Repo(str(root)) as repo:   # its failure is our one line below
            repo.pull(targets=[str(dvcfile)])
    except Exception as e:  # noqa: BLE001 -- any failure of the pull is reported as what to run by hand
        first = " ".join(str(e).split()[:12]) or type(e).__name__
        raise MissingInput(f"{p} is missing and `dvc pull {rel}` failed ({first}); fix the remote "
                           f"(`dvc remote list`) and run `dvc pull {rel}`") from None
    if not p.exists():
        raise MissingInput(f"{p} is missing and `dvc pull {rel}` did not bring it; run `dvc pull {rel}`")
    return p


def record_outputs(root: str | Path, written: set[Path], skip: list[str] = ()) -> list[str]:
    """Commit to the DVC cache, and to dvc.lock, every dvc.yaml stage all of whose outputs this run wrote: a pipeline
    run then leaves the workspace as `dvc repro` would (`dvc status` clean when the outputs are the ones dvc.lock
    records; dvc.lock updated when they are not, so the change shows in `git status`). Returns the stages recorded,
    but for those in `skip`; none outside a DVC project (a worker's scratch folder)."""
    root = Path(root).absolute()
    if not (root / ".dvc").is_dir() or not (root / "dvc.yaml").is_file():
        return []
    from dvc.repo import Repo

    written = {Path(p).absolute() for p in written}
    recorded = []
    # no line per stage about the lock file: the run's summary says what was recorded
    with _quiet("dvc", level=logging.WARNING), Repo(str(root)) as repo:
        for stage in repo.index.stages:
            if stage.is_data_source or not stage.outs or stage.addressing in skip:
                continue
            if all((root / out.def_path).absolute() in written for out in stage.outs):
                repo.commit(stage.addressing, force=True)
                recorded.append(stage.addressing)
    return recorded
