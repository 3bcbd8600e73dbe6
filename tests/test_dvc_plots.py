"""What `dvc plots` and `dvc metrics` read: the rows of stepcode/plots.py (pure), the files a real micro SFT and GRPO
run write, and the real DVC rendering them through the dvc.yaml our stage spec generates."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stepcode.pipeline import spec
from stepcode.plots import GRPO_CURVES, SFT_CURVES, curve_rows, heldout_rows, write_rows

ROOT = Path(__file__).resolve().parents[1]

# --- pure ----------------------------------------------------------------------------------------------------------

LOG = [{"loss": 2.5, "learning_rate": 1e-3, "grad_norm": 1.234567891, "mean_token_accuracy": 0.1, "epoch": 0.5,
        "step": 1},
       {"loss": float("nan"), "learning_rate": 5e-4, "step": 2, "step_time": 0.17},
       {"train_runtime": 3.2, "train_loss": 2.0, "step": 2}]


def test_curve_rows_keep_logged_steps_rename_columns_and_drop_timings_and_nans():
    rows = curve_rows(LOG, SFT_CURVES)
    assert rows == [{"step": 1, "loss": 2.5, "learning_rate": 0.001, "grad_norm": 1.23457, "token_accuracy": 0.1},
                    {"step": 2, "loss": None, "learning_rate": 0.0005, "grad_norm": None, "token_accuracy": None}]
    assert "step_time" not in {k for r in curve_rows(LOG, GRPO_CURVES) for k in r}


def test_grpo_columns_are_plain_names_dvc_can_plot():
    assert set(GRPO_CURVES.values()) >= {"loss", "learning_rate", "reward", "reward_std", "frac_reward_zero_std",
                                         "step_accuracy", "final_accuracy"}
    assert not any("/" in name for name in {**SFT_CURVES, **GRPO_CURVES}.values())


METRICS = {f"{prefix}{task}{field}": value for prefix, base in (("heldout.", 0.2), ("baseline.heldout.", 0.1))
           for task in ("", "output.", "input.") for field, value in (("step_acc", base), ("final_acc", base + 0.1),
                                                                     ("wrong_logic", base), ("rows", 150.0))}


def test_heldout_rows_pair_model_and_baseline_per_task():
    rows = heldout_rows(METRICS, "grpo-bilevel", "sft")
    assert [(r["model"], r["task"]) for r in rows] == [(m, t) for m in ("sft", "grpo-bilevel")
                                                       for t in ("all", "output", "input")]
    assert rows[0] == {"model": "sft", "task": "all", "label": "sft: all", "step_acc": 0.1, "final_acc": 0.2,
                       "wrong_logic": 0.1}
    assert heldout_rows({"cruxeval_pass_at_1": 3.0}, "m", "b") == []
    assert [r["model"] for r in heldout_rows(METRICS, "m")] == ["m"] * 3
    partial = {k: v for k, v in METRICS.items() if k != "heldout.input.wrong_logic"}   # a task short of a field
    assert ("m", "input") not in {(r["model"], r["task"]) for r in heldout_rows(partial, "m")}


def test_write_rows_is_a_json_list_one_row_a_line(tmp_path):
    rows = [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.0}]
    write_rows(tmp_path / "a" / "c.json", rows)
    text = (tmp_path / "a" / "c.json").read_text()
    assert json.loads(text) == rows and len(text.splitlines()) == 4
    write_rows(tmp_path / "e.json", [])
    assert json.loads((tmp_path / "e.json").read_text()) == []


def test_the_build_metric_counts_rows_examples_and_programs():
    from stepcode.data.dataset import build_metrics

    stats = {"rows_in": 10, "rows_kept": 7, "rows_out": {"contaminated": 2, "status/timeout": 1},
             "examples": {"output": {"sft": 3, "rl": 2, "heldout": 2}, "input": {"sft": 3, "rl": 1, "heldout": 2}},
             "split": {"programs": {"sft": 3, "rl": 2, "heldout": 2}}, "terminal_only": 1, "sources": {"synth": 7}}
    m = build_metrics(stats)
    assert m["rows"] == {"in": 10, "kept": 7, "decontaminated": 2}
    assert m["examples"] == {"sft": {"output": 3, "input": 3}, "rl": {"output": 2, "input": 1},
                             "heldout": {"output": 2, "input": 2}}
    assert m["programs"] == {"sft": 3, "rl": 2, "heldout": 2} and m["dropped"]["status/timeout"] == 1


def test_the_spec_declares_the_curves_metrics_and_plot_views():
    stages = spec.dvc_stages()
    assert {"metrics/build.json": {"cache": False}} in stages["build"]["metrics"]
    for stage, path, y in (("sft", spec.SFT_CURVES, "loss"), ("grpo", spec.GRPO_CURVES, "reward"),
                           ("evaluate", spec.HELDOUT_PLOT, "label")):
        (entry,) = stages[stage]["plots"]
        assert entry[path]["cache"] is False and entry[path]["y"] == y
    assert f"--curves {spec.SFT_CURVES}" in stages["sft"]["cmd"]
    assert f"--curves {spec.GRPO_CURVES}" in stages["grpo"]["cmd"]
    # every top-level view reads files some stage declares
    declared = {p for s in stages.values() for p in s.get("plots", [{}])[0]}
    for view in spec.PLOTS:
        (props,) = view.values()
        assert set(props["y"]) <= declared, props["y"]


# --- real training, real DVC ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def curves(tmp_path_factory):
    """The curve files of a real micro SFT run (4 steps) and a real micro Bi-Level GRPO run (2 steps)."""
    import torch
    from test_trainer import rl_rows, sft_rows, write_jsonl

    from stepcode.config import Params
    from stepcode.training.grpo import run_grpo
    from stepcode.training.models import build_tiny_model, corpus_texts
    from stepcode.training.sft import run_sft

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("curves")
    micro = build_tiny_model(d / "micro", corpus_texts(rl_rows() + sft_rows()), size="micro")
    profile = Params().train.get("micro")
    profile = profile.model_copy(update={"sft": profile.sft.model_copy(update={"max_steps": 4}),
                                         "grpo": profile.grpo.model_copy(update={"max_steps": 2})})
    run_sft(micro, write_jsonl(d / "sft.jsonl", sft_rows()), d / "sft", profile, curves=d / "out" / "sft.json")
    run_grpo(d / "sft", write_jsonl(d / "rl.jsonl", rl_rows()), d / "grpo", profile, curves=d / "out" / "grpo.json")
    return {"sft": json.loads((d / "out" / "sft.json").read_text()),
            "grpo": json.loads((d / "out" / "grpo.json").read_text()), "dir": d / "out"}


@pytest.mark.slow
def test_a_real_sft_and_grpo_run_write_their_curves(curves):
    assert [r["step"] for r in curves["sft"]] == [1, 2, 3, 4]
    assert all({"loss", "learning_rate", "grad_norm", "token_accuracy"} <= set(r) for r in curves["sft"])
    assert [r["step"] for r in curves["grpo"]] == [1, 2]
    for row in curves["grpo"]:
        assert {"loss", "learning_rate", "reward", "reward_std", "frac_reward_zero_std", "step_accuracy",
                "final_accuracy", "completion_length"} <= set(row), row
        assert 0 <= row["reward"] <= 2 and 0 <= row["frac_reward_zero_std"] <= 1


@pytest.mark.slow
def test_dvc_renders_the_spec_plots_from_those_files(curves, tmp_path):
    """A git+DVC project with the dvc.yaml our spec renders, profile micro, the curve files in place: `dvc plots show
    --json` draws every view with rows of data on the declared axes, and `dvc metrics show` reads the build metric."""
    d = tmp_path / "proj"
    d.mkdir()
    (d / "dvc.yaml").write_text(spec.render_dvc_yaml())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["profile"] = "micro"
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    train = d / "metrics" / "train-micro"
    train.mkdir(parents=True)
    shutil.copy(curves["dir"] / "sft.json", train / "sft.json")
    shutil.copy(curves["dir"] / "grpo.json", train / f"grpo-{params['pipeline']['grpo_mode']}.json")
    write_rows(d / "metrics" / "eval-micro" / "heldout.json", heldout_rows(METRICS, "grpo-bilevel", "sft"))
    (d / "metrics" / "build.json").write_text(json.dumps({"rows": {"in": 10, "kept": 7}}))
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=d, env=env, check=True, capture_output=True, timeout=120)

    def dvc(*args) -> dict:
        r = subprocess.run([sys.executable, "-m", "dvc", *args, "--json"], cwd=d, env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads(r.stdout)

    shown = dvc("plots", "show")
    assert not shown.get("errors"), shown["errors"]
    plots = {name: item for name, items in shown["data"].items() for item in items}
    views = [next(iter(v)) for v in spec.PLOTS]
    files = ["metrics/train-micro/sft.json", "metrics/train-micro/grpo-bilevel.json", "metrics/eval-micro/heldout.json"]
    assert set(plots) == {*views, *files}
    for name, item in plots.items():
        vega = item["content"]
        rows = vega["data"]["values"]
        assert rows and vega["title"]["text"], name
        x = vega["encoding"]["x"]["field"]
        assert all(x in r for r in rows), (name, x)
    assert [r["step"] for r in plots["metrics/train-micro/sft.json"]["content"]["data"]["values"]] == [1, 2, 3, 4]
    accuracy = plots["grpo_accuracy"]["content"]["data"]["values"]
    assert {r["field"] for r in accuracy} == {"step_accuracy", "final_accuracy"} and len(accuracy) == 4
    bars = plots["metrics/eval-micro/heldout.json"]["content"]
    assert bars["encoding"]["y"]["field"] == "label" and len(bars["data"]["values"]) == 6

    metrics = dvc("metrics", "show")
    (workspace,) = metrics.values()
    assert workspace["data"]["metrics/build.json"]["data"]["rows"]["kept"] == 7
