"""Run a pipeline run again from its commit, its params and its inputs, and say whether every output came back.

    stepcode reproduce RUN_ID [--stop-after build] [--keep]

1. What the run recorded on its pipeline run (`stepcode.tracking.versions`): `lineage/dvc.lock.json` (the stages it
   ran, with the md5 of every dependency and output) and `lineage/params.yaml`. A stage run is reproduced through
   its pipeline run, up to its own stage.
2. A temporary git worktree at the run's commit (`git worktree add --detach`), the run's params file as its
   `params.yaml`, and an untracked `.dvc/config.local` pointing at this project's DVC cache and remote.
3. Its inputs: the data sources (`.dvc` files) pulled from the remote; one that differs from what the run read is
   replaced by the run's own md5, from the remote. Then `dvc status` against the run's dvc.lock entries names any
   code file that is not what the run ran (a run from a dirty tree).
4. `dvc repro --force STAGE` there, with the worktree first on PYTHONPATH: the venv's `stepcode` is an editable
   install of this folder, so without it the stages would run this folder's code, not the commit's. MLflow logs to a
   scratch store inside the worktree (the reproduction is a check, not a run of the project).
5. Every output the run recorded for those stages (deleted from the worktree first, so nothing the commit holds
   passes for a reproduced output) compared, md5 for md5, with what the reproduction wrote.
The worktree is removed at the end (`--keep`: left for a look).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from stepcode.errors import UserError
from stepcode.tracking.digests import OutputCheck, changed_code, compare_outputs, lock_outputs, lock_subset, upstream
from stepcode.tracking.lineage import dvc_md5

LOCK_ARTIFACT = "lineage/dvc.lock.json"
PARAMS_ARTIFACT = "lineage/params.yaml"
PACKAGE = Path(__file__).resolve().parents[1]     # the stepcode package this command runs from


@dataclass
class Plan:
    """What to reproduce: the pipeline run, its commit and tree state, its params and the lock entries of the stages
    up to the one asked."""
    run_id: str
    commit: str
    dirty_files: list[str]
    params_text: str
    entries: dict
    stages: list[str]


@dataclass
class Reproduction:
    plan: Plan
    check: OutputCheck
    code_changed: list[str] = field(default_factory=list)
    inputs_restored: list[str] = field(default_factory=list)
    worktree: Path | None = None


def _stage_name(tag: str | None) -> str | None:
    """The dvc.yaml stage of a stage run's `stage` tag (init-model -> init_model; register is evaluate's)."""
    if not tag or tag == "pipeline":
        return None
    return "evaluate" if tag == "register" else tag.replace("-", "_")


def plan(client, run_id: str, stop_after: str | None = None) -> Plan:
    """Read what `run_id` recorded; a one-line UserError when there is nothing to reproduce it from."""
    from stepcode.tracking.runs import PARENT_TAG, artifact_text, open_run

    run = open_run(client, run_id)
    stage = _stage_name(run.data.tags.get("stage"))
    if stage is not None:                           # a stage run: its pipeline run holds the lineage
        parent = run.data.tags.get(PARENT_TAG)
        if not parent:
            raise UserError(f"run {run_id} is a `{run.data.tags.get('stage')}` run outside a pipeline: only pipeline "
                            "runs (`stepcode pipeline`) record what reproducing needs")
        run, stop_after = open_run(client, parent), stop_after or stage
    pid = run.info.run_id
    lock_text, params_text = artifact_text(client, pid, LOCK_ARTIFACT), artifact_text(client, pid, PARAMS_ARTIFACT)
    if lock_text is None or params_text is None:
        raise UserError(f"run {pid} has no {LOCK_ARTIFACT} / {PARAMS_ARTIFACT}: it was made before runs recorded "
                        "their lineage, or with tracking off; run the pipeline again to get a reproducible run")
    entries = json.loads(lock_text)
    if not entries:
        raise UserError(f"run {pid} recorded no DVC stage (it stopped before its first stage finished)")
    stop_after = stop_after or list(entries)[-1]
    if stop_after not in entries:
        raise UserError(f"--stop-after {stop_after}: run {pid} did not run that stage; it ran {', '.join(entries)}")
    tags = run.data.tags
    commit = tags.get("git.commit", "unknown")
    if commit == "unknown":
        raise UserError(f"run {pid} has no git commit (it ran outside a git repository): nothing to check out")
    dirty = [f for f in tags.get("git.dirty_files", "").split(",") if f] if tags.get("git.dirty") == "true" else []
    stages = upstream(entries, stop_after)
    return Plan(pid, commit, dirty, params_text, lock_subset({"stages": entries}, stages), stages)


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=120)


def _configure_dvc(root: Path, tree: Path) -> None:
    """The worktree's DVC uses this project's cache and remote (its own tracked config would resolve a relative
    remote such as ../dvc-storage inside the worktree, which holds only the committed objects)."""
    from dvc.repo import Repo

    local = root / ".dvc" / "config.local"
    if local.is_file():                                  # credentials, endpoints: as this project has them
        shutil.copy2(local, tree / ".dvc" / "config.local")
    with Repo(str(root)) as repo:
        cache_dir = repo.cache.local_cache_dir
        name = repo.config["core"].get("remote")
        url = repo.config["remote"][name]["url"] if name else None
    with Repo(str(tree)) as repo, repo.config.edit("local") as conf:
        conf["cache"]["dir"] = cache_dir
        if url and "://" not in url:                     # a local path: absolute here, so the same folder
            conf["remote"].setdefault(name, {})["url"] = url


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _pull_inputs(root: Path, tree: Path, plan: Plan) -> list[str]:
    """Pull the data sources; restore from the remote, by the run's md5, each input the run read differently.
    Returns the inputs so restored."""
    from dvc.repo import Repo

    from stepcode.tracking import dvcremote

    with Repo(str(tree)) as repo:   # targets by absolute path: DVC resolves relative ones from the cwd
        sources = {out.def_path: out.hash_info.value for s in repo.index.stages if s.is_data_source for out in s.outs}
        if sources:
            repo.pull(targets=[s.path for s in repo.index.stages if s.is_data_source])
    logged = {d["path"]: d.get("md5") for e in plan.entries.values() for d in e.get("deps") or []}
    restored = []
    for path, md5 in sources.items():
        if logged.get(path) and logged[path] != md5:
            _remove(tree / path)
            dvcremote.restore(root, logged[path], tree / path)
            restored.append(path)
    return restored


def _code_changes(tree: Path, plan: Plan) -> list[str]:
    """Dependencies of the run's stages (its code) that differ in the worktree from what the run recorded."""
    from dvc.repo import Repo

    lock = tree / "dvc.lock"
    current = yaml.safe_load(lock.read_text()) if lock.is_file() else {}
    current = {"schema": "2.0", **(current or {})}
    current["stages"] = {**(current.get("stages") or {}), **plan.entries}
    lock.write_text(yaml.safe_dump(current, sort_keys=False))
    with Repo(str(tree)) as repo:
        return changed_code(repo.status(targets=[f"{tree}/dvc.yaml:{s}" for s in plan.stages]), plan.entries)


def _environment(tree: Path, scratch: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch / 'mlflow.db'}"
    env.pop("STEPCODE_PARENT_RUN_ID", None)            # a run of another store: the stages must not nest under it
    return env


def _isolate_code(tree: Path, env: dict) -> None:
    """The stages must import the worktree's stepcode. Its sandbox gets this install's compiled fork loop when the
    C source is the same (else the servers use their Python loop: same verdicts, slower)."""
    source = PACKAGE / "sandbox" / "_forkloop.c"
    theirs = tree / "stepcode" / "sandbox" / "_forkloop.c"
    if source.is_file() and theirs.is_file() and source.read_bytes() == theirs.read_bytes():
        for built in (PACKAGE / "sandbox").glob("_forkloop*.so"):
            shutil.copy2(built, theirs.parent / built.name)
    found = subprocess.run([sys.executable, "-c", "import stepcode; print(stepcode.__file__)"], cwd=tree, env=env,
                           capture_output=True, text=True, timeout=120).stdout.strip()
    if not found or not Path(found).resolve().is_relative_to(tree.resolve()):
        raise UserError(f"the worktree's stepcode is not the one Python imports ({found or 'none'}): check "
                        "PYTHONPATH and the editable install (`pip install -e .`)")


def reproduce(client, root: str | Path, run_id: str, stop_after: str | None = None, *, keep: bool = False,
              echo=print, stream=None) -> Reproduction:
    """Reproduce `run_id` up to `stop_after` (default: its last stage) in a worktree of the project at `root`."""
    root = Path(root).resolve()
    p = plan(client, run_id, stop_after)
    if _git(root, "cat-file", "-e", f"{p.commit}^{{commit}}").returncode != 0:
        raise UserError(f"commit {p.commit[:10]} of run {p.run_id} is not in {root}: fetch it (`git fetch`) or run "
                        "from the clone that made the run")
    scratch = Path(tempfile.mkdtemp(prefix="stepcode-reproduce-"))
    tree = scratch / "worktree"
    added = _git(root, "worktree", "add", "--detach", str(tree), p.commit)
    if added.returncode != 0:
        shutil.rmtree(scratch, ignore_errors=True)
        raise UserError(f"git worktree add failed: {' '.join(added.stderr.split()[:20])}")
    try:
        (tree / "params.yaml").write_text(p.params_text, encoding="utf-8")
        _configure_dvc(root, tree)
        env = _environment(tree, scratch)
        _isolate_code(tree, env)
        restored = _pull_inputs(root, tree, p)
        code = _code_changes(tree, p)
        logged = lock_outputs(p.entries)
        for path in logged:                    # what the commit holds (git-tracked metrics) must not pass for output
            _remove(tree / path)
        echo(f"running `dvc repro --force {p.stages[-1]}` ({', '.join(p.stages)}) in {tree}")
        ran = subprocess.run([sys.executable, "-m", "dvc", "repro", "--force", p.stages[-1]], cwd=tree, env=env,
                             stdout=stream, stderr=subprocess.STDOUT if stream is not None else None)
        if ran.returncode != 0:
            raise UserError(f"`dvc repro --force {p.stages[-1]}` failed in the worktree (exit {ran.returncode}; its "
                            "output is above): the commit's code or the run's params do not run here"
                            + ("" if keep else "; rerun with --keep to look at the worktree"))
        check = compare_outputs(logged, {path: dvc_md5(tree / path) for path in logged if (tree / path).exists()})
        return Reproduction(p, check, code, restored, tree if keep else None)
    finally:
        if not keep:
            _git(root, "worktree", "remove", "--force", str(tree))
            shutil.rmtree(scratch, ignore_errors=True)
            _git(root, "worktree", "prune")


def notes(result: Reproduction) -> list[tuple[str, str]]:
    """(kind, line) to say before the verdict: a run from a dirty tree, code that is not what ran, inputs restored."""
    p, out = result.plan, []
    code_dirty = [f for f in p.dirty_files if f != "params.yaml"]
    if code_dirty:
        out.append(("warning", f"run {p.run_id} was made from a dirty tree ({', '.join(code_dirty)}): commit "
                               f"{p.commit[:10]} may not hold the code that ran"))
    elif p.dirty_files:
        out.append(("note", f"run {p.run_id} was made with an uncommitted params.yaml: reproduced with the params "
                            "file it logged"))
    if result.code_changed:
        out.append(("warning", "the commit's code is not what the run recorded in dvc.lock: "
                               + ", ".join(result.code_changed)))
    if result.inputs_restored:
        out.append(("note", f"{', '.join(result.inputs_restored)}: restored from the DVC remote by the md5 the run "
                            "read (the commit's .dvc file names other data)"))
    return out
