"""The parts of reproducible lineage that are not a pipeline run: the pure digest helpers (which datasets and params
differ, a reproduction's verdict, the dvc.lock subset and its upstream stages, which role a name means), the dirty
tree rule, and the DVC remote for real on a tiny project (push, what the remote holds, restore by md5, a push that
fails being one warning line). The whole story, two pipeline runs then fetch and reproduce: test_lineage_repro.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stepcode.tracking.digests import (
    changed_code,
    compare_outputs,
    differing,
    flatten,
    lock_outputs,
    lock_subset,
    pick_roles,
    qualify,
    section_digests,
    upstream,
)

ROOT = Path(__file__).resolve().parent.parent

LOCK = {"schema": "2.0", "stages": {
    "trace": {"deps": [{"path": "data/raw", "md5": "r.dir"}, {"path": "stepcode/data/traces.py", "md5": "c1"}],
              "outs": [{"path": "data/traces.jsonl", "md5": "t1"}, {"path": "metrics/trace.json", "md5": "m1"}]},
    "validate": {"deps": [{"path": "data/traces.jsonl", "md5": "t1"}],
                 "outs": [{"path": "reports/validation/summary.json", "md5": "s1"}]},
    "build": {"deps": [{"path": "data/traces.jsonl", "md5": "t1"}, {"path": "reports/validation/summary.json"}],
              "outs": [{"path": "data/dataset", "md5": "d1.dir"}]},
    "init_model": {"deps": [{"path": "data/traces.jsonl", "md5": "t1"}], "outs": [{"path": "models/m/base"}]},
    "sft": {"deps": [{"path": "models/m/base"}, {"path": "data/dataset/sft.jsonl"}],
            "outs": [{"path": "models/m/sft", "md5": "f1.dir"}]},
}}


def test_lock_subset_keeps_the_stages_asked_in_their_order():
    entries = lock_subset(LOCK, ["build", "trace", "evaluate"])
    assert list(entries) == ["build", "trace"]                        # evaluate: not in the lock, left out
    assert lock_outputs(entries) == {"data/dataset": "d1.dir", "data/traces.jsonl": "t1", "metrics/trace.json": "m1"}
    assert lock_subset({}, ["trace"]) == {}


def test_upstream_follows_outputs_into_folders():
    entries = LOCK["stages"]
    assert upstream(entries, "build") == ["trace", "validate", "build"]
    assert upstream(entries, "sft") == ["trace", "validate", "build", "init_model", "sft"]   # data/dataset/sft.jsonl
    assert upstream(entries, "init_model") == ["trace", "init_model"]
    assert upstream(entries, "nope") == []


def test_changed_code_is_what_no_stage_produces():
    status = {"dvc.yaml:trace": [{"changed deps": {"stepcode/data/traces.py": "modified",
                                                   "params.yaml": {"trace.max_lines": "modified"}}},
                                 {"changed outs": {"data/traces.jsonl": "deleted"}}],
              "dvc.yaml:build": [{"changed deps": {"data/traces.jsonl": "deleted",
                                                   "reports/validation/summary.json": "modified"}}, "always changed"]}
    assert changed_code(status, LOCK["stages"]) == ["stepcode/data/traces.py"]
    assert changed_code({}, LOCK["stages"]) == []


def test_compare_outputs_verdicts():
    logged = {"a": "1", "b": "2", "c": "3"}
    check = compare_outputs(logged, {"a": "1", "b": "9", "d": "4"})
    assert (check.same, check.differ, check.missing) == (["a"], [("b", "2", "9")], ["c"])
    assert not check.identical
    assert compare_outputs({"a": "1"}, {"a": "1", "extra": "x"}).identical
    assert not compare_outputs({}, {}).identical                     # nothing compared is not "identical"


def test_which_params_and_datasets_differ():
    a = {"trace": {"max_lines": 10, "hash_seeds": [0, 1]}, "build": {"seed": 0}}
    b = {"trace": {"max_lines": 4, "hash_seeds": [0, 1]}, "build": {"seed": 0}}
    assert flatten(a) == {"trace.max_lines": 10, "trace.hash_seeds": [0, 1], "build.seed": 0}
    assert differing([flatten(a), flatten(b)]) == {"trace.max_lines": [10, 4]}
    da, db = section_digests(a), section_digests(b)
    assert da["build"] == db["build"] and da["trace"] != db["trace"] and len(da["trace"]) == 12
    assert differing([da, db]) == {"trace": [da["trace"], db["trace"]]}
    assert differing([{"x": "1"}, {}]) == {"x": ["1", None]}         # a dataset only one run logged
    assert differing([]) == {}


def test_a_role_name_means_itself_or_one_digest_across_stages():
    roles = qualify([("trace", {"programs": "p", "traces": "t"}), ("validate", {"traces": "t"}),
                     ("sft", {"model": "m1"}), ("grpo", {"model": "m2"})])
    assert pick_roles(roles, "traces") == {"trace.traces": "t", "validate.traces": "t"}
    assert pick_roles(roles, "grpo.model") == {"grpo.model": "m2"}
    with pytest.raises(LookupError, match="ambiguous.*grpo.model, sft.model"):
        pick_roles(roles, "model")
    with pytest.raises(LookupError, match="no role 'weights'; the run logged: grpo.model"):
        pick_roles(roles, "weights")


def test_fetch_restores_each_digest_once_under_the_name_it_had():
    from stepcode.tracking.fetch import choose, destinations
    from stepcode.tracking.runs import Logged

    logged = {"trace.traces": Logged("traces", "t", "/p/data/traces.jsonl", "output", "r1"),
              "build.traces": Logged("traces", "t", "/p/data/traces.jsonl", "input", "r2"),
              "sft.model": Logged("model", "m1.dir", "/p/models/micro/sft", "output", "r3"),
              "eval.model": Logged("model", "m2.dir", "/q/sft", "input", "r4"),
              "x.odd": Logged("odd", "o", None, "input", "r5")}
    plan = destinations(logged)
    assert plan["t"] == ("traces.jsonl", ("build.traces", "trace.traces"))
    assert plan["m2.dir"] == ("sft", ("eval.model",)) and plan["m1.dir"] == ("sft.model-sft", ("sft.model",))
    assert plan["o"] == ("odd", ("x.odd",))                           # no path logged: the role names it
    assert choose(logged, "traces", "r") == {k: logged[k] for k in ("trace.traces", "build.traces")}
    from stepcode.tracking.fetch import UnknownRole

    with pytest.raises(UnknownRole, match="--role nope: no role 'nope'"):
        choose(logged, "nope", "r")


def test_the_pipelines_own_outputs_do_not_make_a_tree_dirty():
    from stepcode.tracking.lineage import dirty_files, pipeline_written

    written = pipeline_written(ROOT)
    assert {"dvc.lock", "data/traces", "metrics/trace.json", "models/*/sft",
            "metrics/eval-*/metrics.json"} <= set(written)
    porcelain = (" M dvc.lock\n M metrics/trace.json\n M metrics/eval-tiny-cpu/metrics.json\n"
                 " M reports/validation/summary.json\n M params.yaml\nR  stepcode/a.py -> stepcode/b.py\n")
    assert dirty_files(porcelain, written) == ["params.yaml", "stepcode/b.py"]
    assert dirty_files("", written) == []


def test_the_summary_says_push_and_dirty_tree():
    from stepcode.commands.pipeline import lineage_lines

    clean = lineage_lines({"state": "pushed", "remote": "local (/p/dvc-storage)", "transferred": 3},
                          {"run_id": "abc", "git_commit": "0123456789abc", "git_dirty": False})
    assert clean[0] == "dvc       pushed to remote local (/p/dvc-storage): 3 new object(s)"
    assert clean[1].startswith("lineage   run abc at git 0123456789 (clean tree): `stepcode lineage fetch abc")
    dirty = lineage_lines({"state": "failed", "warning": "dvc push failed (x)"},
                          {"run_id": "abc", "git_commit": "0123456789abc", "git_dirty": True,
                           "dirty_files": "stepcode/x.py", "missing_on_remote": ["trace.traces"]})
    assert dirty[0] == "warning   dvc push failed (x)"
    assert "uncommitted changes (stepcode/x.py): the commit may not hold the code that ran" in dirty[1]
    assert dirty[2].startswith("warning   the DVC remote lacks 1 dataset(s) the run logged (trace.traces)")
    assert lineage_lines({"state": "off"}, {})[0].startswith("dvc       not pushed (params tracking.dvc_push: false)")


# --- the DVC remote, for real ------------------------------------------------------------------------------------

def _run(args, cwd):
    env = dict(os.environ, DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    subprocess.run(args, cwd=cwd, env=env, check=True, capture_output=True, text=True, timeout=120)


@pytest.fixture
def project(tmp_path):
    """A git + DVC project with one stage (`make`: writes out/ and a file) run and committed, a local remote."""
    d = tmp_path / "project"
    d.mkdir()
    dvc = [sys.executable, "-m", "dvc"]
    _run(["git", "init", "-q"], d)
    _run(dvc + ["init", "-q"], d)
    _run(dvc + ["remote", "add", "-d", "local", str(tmp_path / "remote")], d)
    (d / "dvc.yaml").write_text(
        "stages:\n  make:\n    cmd: mkdir -p out && echo a > out/a.txt && echo b > out/b.txt && echo c > c.txt\n"
        "    outs:\n    - out\n    - c.txt\n")
    _run(dvc + ["repro", "-q"], d)
    return d


def test_push_then_the_remote_holds_it_and_restore_brings_it_back(project, tmp_path):
    from stepcode.tracking import dvcremote
    from stepcode.tracking.lineage import dvc_md5

    out, c = dvc_md5(project / "out"), dvc_md5(project / "c.txt")
    assert dvcremote.absent(project, [out, c]) == {out, c}
    assert dvcremote.push(project, ["make"]) == 4                    # out's tree, its two files, c.txt
    assert dvcremote.absent(project, [out, c]) == set()
    assert dvcremote.remote(project) == dvcremote.Remote("local", str(tmp_path / "remote"))
    subprocess.run(["rm", "-rf", str(project / ".dvc" / "cache")], check=True)   # only the remote has them now
    assert dvcremote.restore(project, out, tmp_path / "got" / "out") == tmp_path / "got" / "out"
    assert (tmp_path / "got" / "out" / "b.txt").read_text() == "b\n"
    assert dvc_md5(dvcremote.restore(project, c, tmp_path / "got" / "c.txt")) == c
    with pytest.raises(dvcremote.NotOnRemote, match="neither in the DVC remote 'local'") as e:
        dvcremote.restore(project, "0" * 32, tmp_path / "got" / "zero")
    assert "\n" not in str(e.value)
    (tmp_path / "remote" / "files" / "md5" / out[:2] / out[2:]).unlink()   # the remote loses the tree listing
    subprocess.run(["rm", "-rf", str(project / ".dvc" / "cache")], check=True)
    assert dvcremote.absent(project, [out, c]) == {out}


def test_a_failed_push_is_one_warning_and_pushing_can_be_off(project, tmp_path):
    from stepcode.tracking.versions import Pusher

    (tmp_path / "remote").write_text("not a folder")                # the remote cannot take objects
    push = Pusher(project)
    push(["make"])
    push(["make"])                                                   # after a failure: not tried again
    assert push.state == "failed" and push.stages == []
    assert push.warning.startswith("dvc push failed (") and "run `dvc push`" in push.warning
    assert "\n" not in push.warning
    off = Pusher(project, enabled=False)
    off(["make"])
    assert off.outcome() == {"state": "off", "stages": [], "transferred": 0}


def test_params_text_is_the_file_the_run_read(tmp_path):
    from stepcode.config import Params
    from stepcode.tracking.versions import params_text

    (tmp_path / "p.yaml").write_text("trace:\n  max_lines: 4   # a comment kept\n")
    assert params_text(tmp_path, "p.yaml", Params()) == "trace:\n  max_lines: 4   # a comment kept\n"
    embedded = params_text(tmp_path, "params.yaml", Params())       # no file: the embedded defaults, as YAML
    assert "max_lines: 10" in embedded and json.dumps(True) in embedded
