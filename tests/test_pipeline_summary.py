"""What a pipeline run says about itself (stepcode/pipeline/summary.py): the names of its Prefect flow run and MLflow
parent run, the parent's params, and the markdown artifact, on a recorded outcome (the end-to-end run is in
tests/test_flows.py)."""

from __future__ import annotations

from datetime import datetime

from stepcode.config import load_params
from stepcode.pipeline.summary import RunLinks, flow_run_label, pipeline_markdown, run_about, run_label, run_params
from stepcode.tracking.lineage import params_hash

WHEN = datetime(2026, 12, 6, 18, 40)
OUTCOME = {
    "profile": "tiny-cpu",
    "trace": {"total": 800, "by_status": {"ok": 790, "too_long": 10}, "batches": 2},
    "validate": {"success": True, "rows": 800},
    "build": {"files": {"sft": 700, "rl": 650, "heldout": 150}},
    "sft": {"steps": 400, "seconds": 440.0, "last_log": {"loss": 0.512}},
    "grpo": {"steps": 120, "seconds": 300.0, "last_log": {"loss": 0.01, "reward": 0.9}},
    "evaluate": {"heldout.final_acc": 0.25, "heldout.step_acc": 0.287, "heldout.rows": 300.0,
                 "baseline.heldout.final_acc": 0.2, "baseline.heldout.step_acc": 0.177,
                 "stepcode_cruxeval_output_pass_at_1": 10.0, "stepcode_cruxeval_output_step_accuracy": 12.5,
                 "stepcode_cruxeval_output_greedy_pass_at_1": 10.0, "stepcode_cruxeval_output_problems": 10.0},
    "learning": {"grpo_reward_mean": 0.45, "grpo_zero_std_fraction": 0.25, "sft_heldout_step_acc": 0.177,
                 "sft_heldout_final_acc": 0.2, "rl_heldout_step_acc": 0.287, "rl_heldout_final_acc": 0.25},
    "model": {"name": "stepcode", "version": "3", "run_id": "r-register"},
    "dvc_recorded": ["trace"], "dvc_push": {"state": "off"},
}


def test_names_say_profile_mode_params_and_date():
    params = load_params(None)
    short = params_hash(params)[:6]
    assert flow_run_label(params, None, WHEN) == f"tiny-cpu grpo=bilevel params={short} 2026-12-06 18:40"
    assert flow_run_label(params, "micro", WHEN, "build") == f"micro stop-after=build params={short} 2026-12-06 18:40"
    assert run_label("tiny-cpu", WHEN) == "tiny-cpu 2026-12-06 18:40"
    assert run_about(params, None, WHEN, "sft") == (
        f"Profile **tiny-cpu** · GRPO mode **bilevel** · params hash `{params_hash(params)}` (the MLflow runs' "
        "`params.hash` tag) · started 2026-12-06 18:40 · stopped after **sft**")


def test_parent_params_flatten_the_profile_and_stay_few():
    logged = run_params(load_params(None), "micro")
    assert len(logged) <= 60
    assert logged["train.profile"] == "micro" and logged["profile.sft.max_steps"] == "5"
    assert logged["profile.grpo.lam"] == "0.3" and logged["pipeline.eval_benchmarks"] == "cruxeval"
    assert "profile.report_to" not in logged and "pipeline.stop_after" not in logged
    assert run_params(load_params(None), None, "sft")["pipeline.stop_after"] == "sft"


def test_markdown_links_a_tracking_server_and_explains_a_local_store():
    stages = {"trace": "r-trace", "sft": "r-sft", "register": "r-register"}
    server = pipeline_markdown(OUTCOME, about="Profile **tiny-cpu**", cached={"grpo", "evaluate"},
                               links=RunLinks("http://mlflow:5000/", "7", "r-parent", "tiny-cpu 2026-12-06 18:40",
                                              stages, experiment_name="stepcode"))
    assert server.startswith("Profile **tiny-cpu**\n")
    assert "| step accuracy | 17.7% | 28.7% | +11.0 points |" in server
    assert "| `stepcode_cruxeval_output` | 10 | 12.5 | 10 | greedy |" in server
    assert "| sft | 400 steps in 440 s (loss=0.512) | [r-sft](http://mlflow:5000/#/experiments/7/runs/r-sft) |" in server
    assert "| register | stepcode v3 (alias `candidate`) | [r-regist](" in server
    assert "| grpo | 120 steps in 300 s (loss=0.01, reward=0.9) | cached |" in server
    assert "*cached*: Prefect reused an earlier run's result" in server
    assert "[tiny-cpu 2026-12-06 18:40](http://mlflow:5000/#/experiments/7/runs/r-parent) `r-parent`, experiment " \
        "`stepcode` (id 7)" in server
    assert "- **dvc** not pushed (params tracking.dvc_push: false)" in server
    assert "RL improved held-out step accuracy (+11.0 points)" in server
    assert "mlflow ui" not in server
    local = pipeline_markdown(OUTCOME, links=RunLinks("sqlite:///mlflow.db", "1", "r-parent", "p"))
    assert "`mlflow ui --backend-store-uri sqlite:///mlflow.db`" in local
    assert "http://127.0.0.1:5000/#/experiments/1/runs/r-parent" in local
    failed = pipeline_markdown({"trace": OUTCOME["trace"]}, error="GateFailed: refusing\n  ok_share 0.2 < 0.5",
                               links=RunLinks("sqlite:///mlflow.db", "1", "r-parent", "p",
                                              {"trace": "r-trace", "validate": "r-validate"}))
    assert "**The run failed:**\n\n```\nGateFailed: refusing\n  ok_share 0.2 < 0.5\n```" in failed
    assert "| trace | 800 programs" in failed and "| validate | did not finish (its MLflow run has the error) |" in failed
