"""Pure functions over the digests a run records: which of them two runs differ in, which outputs a reproduction
matched, which dvc.lock entries a run ran, which logged role a name means.

    from stepcode.tracking.digests import differing, compare_outputs, lock_subset
    differing([{"trace": "a1", "build": "b2"}, {"trace": "a1", "build": "c3"}])   # {"build": ["b2", "c3"]}
    compare_outputs({"data/traces.jsonl": "fb27..."}, {"data/traces.jsonl": "fb27..."}).identical   # True

No I/O here: `stepcode.tracking.versions` (logging), `.fetch`, `.compare` and `stepcode.pipeline.reproduce` feed
these with what MLflow, dvc.lock and the DVC remote hold.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field


def lock_subset(lock: dict, stages) -> dict:
    """The dvc.lock entries (`{"stages": {...}}` as dvc.lock holds them) of `stages`, in `stages`' order; a stage
    dvc.lock lacks is left out."""
    entries = (lock or {}).get("stages") or {}
    return {name: entries[name] for name in stages if name in entries}


def lock_outputs(entries: dict) -> dict[str, str]:
    """Output path -> md5 over dvc.lock entries (`lock_subset`'s result)."""
    return {o["path"]: o.get("md5") for entry in entries.values() for o in entry.get("outs") or []}


def _produces(out: str, dep: str) -> bool:
    return dep == out or dep.startswith(out.rstrip("/") + "/")


def upstream(entries: dict, stage: str) -> list[str]:
    """`stage` and every stage of `entries` (dvc.lock entries) whose outputs it reads, transitively, in `entries`'
    order."""
    wanted, todo = set(), [stage]
    while todo:
        name = todo.pop()
        if name in wanted or name not in entries:
            continue
        wanted.add(name)
        deps = [d["path"] for d in entries[name].get("deps") or []]
        todo += [other for other, e in entries.items()
                 if any(_produces(o["path"], d) for o in e.get("outs") or [] for d in deps)]
    return [name for name in entries if name in wanted]


def produced(entries: dict) -> list[str]:
    """Every output path of `entries`."""
    return [o["path"] for e in entries.values() for o in e.get("outs") or []]


def changed_code(status: dict, entries: dict) -> list[str]:
    """From `dvc status` of the run's stages (`{stage: [{"changed deps": {path: state}}, ...]}`), the modified or
    deleted dependencies that no stage produces: the code (and untracked-by-stage inputs) that is not what the run
    recorded."""
    outs = produced(entries)
    changed = set()
    for items in (status or {}).values():
        for item in items:
            if isinstance(item, dict):
                for path, state in (item.get("changed deps") or {}).items():
                    if isinstance(state, str) and state in ("modified", "deleted") \
                            and not any(_produces(o, path) for o in outs):
                        changed.add(path)
    return sorted(changed)


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """Nested dicts as dotted keys (`{"trace": {"max_lines": 10}}` -> `{"trace.max_lines": 10}`); lists are leaves."""
    out: dict[str, object] = {}
    for key, value in (tree or {}).items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def section_digests(params: dict) -> dict[str, str]:
    """A short sha256 per top-level params section: two runs whose `trace` digests differ read different trace
    params."""
    return {name: hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]
            for name, value in (params or {}).items()}


def differing(maps: list[dict]) -> dict[str, list]:
    """The keys whose values are not the same in every map (a missing key counts as None), sorted."""
    keys = sorted(set().union(*maps)) if maps else []
    return {k: [m.get(k) for m in maps] for k in keys if len({json.dumps(m.get(k), sort_keys=True, default=str)
                                                               for m in maps}) > 1}


@dataclass
class OutputCheck:
    """A reproduction's outputs against the run's: `identical` when every logged output came back with its md5."""
    same: list[str] = field(default_factory=list)
    differ: list[tuple[str, str, str]] = field(default_factory=list)   # (path, logged md5, reproduced md5)
    missing: list[str] = field(default_factory=list)                   # logged, not reproduced

    @property
    def identical(self) -> bool:
        return bool(self.same) and not self.differ and not self.missing


def compare_outputs(logged: dict[str, str], reproduced: dict[str, str]) -> OutputCheck:
    """Each logged output path's md5 against the reproduction's (paths only the reproduction has are ignored)."""
    check = OutputCheck()
    for path in sorted(logged):
        if path not in reproduced or reproduced[path] is None:
            check.missing.append(path)
        elif reproduced[path] == logged[path]:
            check.same.append(path)
        else:
            check.differ.append((path, logged[path], reproduced[path]))
    return check


def qualify(stage_roles: list[tuple[str, dict]]) -> dict[str, object]:
    """`[(stage, {role: value})]` of a pipeline's stage runs -> `{"stage.role": value}` (a role name repeats across
    stages: `model` is sft's and grpo's output)."""
    return {f"{stage}.{role}": value for stage, roles in stage_roles for role, value in roles.items()}


def pick_roles(roles: dict[str, str], name: str) -> dict[str, str]:
    """The roles `name` means: itself, or every `<stage>.<name>` of a pipeline run when they all hold one md5.
    Raises LookupError (the message lists the choices) when it names none or several different digests."""
    if name in roles:
        return {name: roles[name]}
    matches = {r: md5 for r, md5 in roles.items() if r.rpartition(".")[2] == name}
    if not matches:
        raise LookupError(f"no role {name!r}; the run logged: {', '.join(sorted(roles)) or 'none'}")
    if len(set(matches.values())) > 1:
        raise LookupError(f"role {name!r} is ambiguous, its stages logged different data: name one of "
                          f"{', '.join(sorted(matches))}")
    return matches
