"""prefect.yaml (the deployments `prefect deploy --all` creates) names flows that import, with the parameters they
take, and the retraining deployment keeps the name and the cron schedule `stepcode schedule` serves."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

from stepcode.config import load_params

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "prefect.yaml").read_text())
DEPLOYMENTS = {d["name"]: d for d in CONFIG["deployments"]}


def test_both_deployments_are_declared():
    assert set(DEPLOYMENTS) == {"pipeline", "scheduled-retrain"}
    assert CONFIG["prefect-version"] == __import__("prefect").__version__


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_each_entrypoint_is_a_flow_that_takes_the_given_parameters(name):
    from prefect import Flow
    from prefect.flows import load_flow_from_entrypoint

    d = DEPLOYMENTS[name]
    path, _, func = d["entrypoint"].partition(":")
    assert (ROOT / path).is_file() and func, d["entrypoint"]
    flow = load_flow_from_entrypoint(str(ROOT / d["entrypoint"]))
    assert isinstance(flow, Flow)
    assert set(d["parameters"]) <= set(inspect.signature(flow.fn).parameters), d["parameters"]
    assert d["work_pool"]["name"] == "stepcode"


def test_the_retraining_schedule_is_the_one_stepcode_schedule_serves():
    import flows.retrain

    d = DEPLOYMENTS["scheduled-retrain"]
    assert d["entrypoint"] == "flows/retrain.py:retrain"
    assert 'name="scheduled-retrain"' in inspect.getsource(flows.retrain.serve)
    (schedule,) = d["schedules"]
    assert schedule["cron"] == load_params(ROOT / "params.yaml").pipeline.schedule_cron
    assert schedule["timezone"] == "UTC" and schedule["active"] is True
    assert "schedules" not in DEPLOYMENTS["pipeline"]   # the main job runs when asked, not on a clock
