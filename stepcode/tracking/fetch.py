"""Bring back the exact bytes of the datasets (and models) a run logged, from the DVC remote.

    stepcode lineage fetch RUN_ID [--role traces] -o DIR

A run's datasets are its `dvc.md5.<role>` tags (a pipeline run: its stage runs', as `<stage>.<role>`). Each distinct
md5 is restored once, under the name the data had (`DIR/traces/`, `DIR/dataset/`, `DIR/sft/`), through
`stepcode.tracking.dvcremote.restore` (remote -> cache -> DIR, md5 recomputed), so later runs that overwrote the
working copies change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stepcode.errors import UserError
from stepcode.tracking.digests import pick_roles
from stepcode.tracking.runs import Logged


class UnknownRole(UserError):
    """A --role the run did not log."""


@dataclass(frozen=True)
class Restored:
    md5: str
    path: Path
    roles: tuple[str, ...]
    already: bool = False      # DIR held it already, with this md5


def destinations(chosen: dict[str, Logged]) -> dict[str, tuple[str, tuple[str, ...]]]:
    """md5 -> (name under DIR, the roles that logged it): one entry per distinct md5, named as the data were; a
    name two different digests would share gets the role in front (`grpo.model-sft`)."""
    by_md5: dict[str, list[str]] = {}
    for role in sorted(chosen):
        by_md5.setdefault(chosen[role].md5, []).append(role)
    out, taken = {}, set()
    for md5, roles in by_md5.items():
        name = chosen[roles[0]].name
        if name in taken:
            name = f"{roles[0]}-{name}"
        taken.add(name)
        out[md5] = (name, tuple(roles))
    return out


def choose(datasets: dict[str, Logged], role: str | None, run_id: str) -> dict[str, Logged]:
    if not datasets:
        raise UserError(f"run {run_id} logged no datasets (no dvc.md5.<role> tags; a pipeline run whose stages were "
                        "all cached has no stage runs: fetch from the run that made them)")
    if role is None:
        return datasets
    try:
        return {r: datasets[r] for r in pick_roles({r: d.md5 for r, d in datasets.items()}, role)}
    except LookupError as e:
        raise UnknownRole(f"--role {role}: {e}") from None


def fetch(client, root: str | Path, run_id: str, out_dir: str | Path, role: str | None = None) -> list[Restored]:
    from stepcode.tracking import dvcremote
    from stepcode.tracking.lineage import dvc_md5
    from stepcode.tracking.runs import logged_datasets, open_run

    run = open_run(client, run_id)
    chosen = choose(logged_datasets(client, run), role, run_id)
    out_dir = Path(out_dir)
    restored = []
    for md5, (name, roles) in destinations(chosen).items():
        dest = out_dir / name
        if dest.exists():
            if dvc_md5(dest) != md5:
                raise UserError(f"{dest} exists with other content: remove it or give another -o folder")
            restored.append(Restored(md5, dest, roles, already=True))
            continue
        restored.append(Restored(md5, dvcremote.restore(root, md5, dest), roles))
    return restored
