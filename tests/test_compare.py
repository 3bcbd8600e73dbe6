"""`stepcode compare` as a reader sees it, on runs of a real MLflow store: the metrics that differ first, in natural
order, the same ones after on one line, system metrics left out; values in the reports' units; a PNG of only what
differs (its panels are named in the PNG's own metadata)."""

from __future__ import annotations

import pytest

from stepcode.tracking.compare import compare, natural_key, show, unit


def test_natural_order_and_units():
    names = ["anchors.10", "anchors.2", "anchors.1", "a.b10c", "a.b9c"]
    assert sorted(names, key=natural_key) == ["a.b9c", "a.b10c", "anchors.1", "anchors.2", "anchors.10"]
    # fractions (held-out accuracy, shares, ratios) as percent, as the pipeline summary and the study report show
    assert show("heldout.final_acc", 0.375) == "37.5%"
    assert show("learning.grpo_zero_std_fraction", 1.0) == "100.0%"
    assert show("stepcode/step_accuracy", 0.5) == "50.0%"                 # GRPO rollouts: a fraction
    assert show("mean_token_accuracy", 0.25) == "25.0%"
    # benchmark scores are percent already (pass@k, the instrumented task's step accuracy, REval)
    assert show("stepcode_cruxeval_output_pass_at_1", 37.5) == "37.5%"
    assert show("eval.stepcode_cruxeval_input_step_accuracy", 12.0) == "12.0%"
    assert show("reval_coverage_acc", 80.0) == "80.0%"
    assert show("heldout.gap", 0.125) == "+12.5 pts"                     # a difference of fractions
    assert show("train_seconds", 3.5) == "3.5 s" and show("seconds", 12.0) == "12 s"
    assert show("rows_kept", 55.0) == "55" and show("loss", 6.66789) == "6.668" and show("x", None) == "-"
    assert unit("anchors.10") == (1.0, "")


@pytest.fixture
def two_runs(mlflow_store):
    """Two build-like runs: 12 anchor counts of which two differ, a held-out accuracy that differs, a training curve
    that differs, a share that does not, and system metrics."""
    import mlflow

    mlflow.set_experiment("compare-readable")
    ids = []
    for max_lines, acc, extra in ((8, 0.25, {}), (10, 0.5, {"anchors.10": 2.0})):
        with mlflow.start_run(run_name="build") as run:
            mlflow.log_params({"trace.max_lines": max_lines, "seed": 1})
            counts = {f"anchors.{i}": float(i) for i in range(1, 13)}
            counts["anchors.2"] = float(max_lines)
            counts.pop("anchors.10")
            mlflow.log_metrics({**counts, **extra, "heldout.final_acc": acc, "split.heldout_fraction": 0.1,
                                "system/cpu_utilization_percentage": 50.0 + max_lines})
            for step in range(3):
                mlflow.log_metric("loss", 3.0 - step * acc, step=step)
            ids.append(run.info.run_id)
    return ids


def test_differing_metrics_first_in_natural_order_the_same_after(two_runs, tmp_path):
    from PIL import Image

    c = compare(two_runs, None, tmp_path / "cmp.png", log_artifact=False)
    assert c.differing == ["anchors.2", "anchors.10", "heldout.final_acc", "loss"]
    assert c.same == [f"anchors.{i}" for i in (1, 3, 4, 5, 6, 7, 8, 9, 11, 12)] + ["split.heldout_fraction"]
    lines = c.table().splitlines()
    metric_rows = [line.split()[1] for line in lines if line.startswith("metric ")]
    assert metric_rows == c.differing                               # only what differs gets a row, in that order
    assert "-" in next(line for line in lines if line.startswith("metric anchors.10")).split()   # not logged: "-"
    acc = next(line for line in lines if line.startswith("metric heldout.final_acc"))
    assert acc.split()[2:] == ["25.0%", "50.0%"]
    same = " ".join(lines[lines.index(next(line for line in lines if line.startswith("the same"))):])
    assert same.startswith("the same in every run (11 metrics): anchors.1 1, anchors.3 3,")
    assert "split.heldout_fraction 10.0%" in same
    assert "system metrics left out (1" in same and "--metric system/cpu_utilization_percentage" in same
    assert "system/" not in "".join(metric_rows)
    # the PNG plots exactly the metrics that differ; its legend names the runs by the param they differ in
    meta = Image.open(tmp_path / "cmp.png").text
    assert meta["Description"] == "panels: anchors.2, anchors.10, heldout.final_acc, loss"
    assert "4 metrics that differ; 11 more are the same" in meta["Title"]
    assert c.labels()[0].startswith("build (") and c.labels()[0].endswith(": trace.max_lines=8")


def test_named_metrics_are_shown_as_asked(two_runs, tmp_path):
    from PIL import Image

    c = compare(two_runs, ["anchors.3", "system/cpu_utilization_percentage"], tmp_path / "named.png",
                log_artifact=False)
    assert c.differing == ["anchors.3", "system/cpu_utilization_percentage"] and c.same == []
    table = c.table()
    assert "metric anchors.3" in table and "metric system/cpu_utilization_percentage" in table
    assert "the same in every run" not in table
    assert Image.open(tmp_path / "named.png").text["Description"] == \
        "panels: anchors.3, system/cpu_utilization_percentage"


def test_no_metric_differs(mlflow_store, tmp_path):
    import mlflow
    from PIL import Image

    mlflow.set_experiment("compare-same")
    ids = []
    for _ in range(2):
        with mlflow.start_run(run_name="trace") as run:
            mlflow.log_metrics({"rows": 60.0, "status.ok": 60.0})
            ids.append(run.info.run_id)
    c = compare(ids, None, tmp_path / "same.png", log_artifact=False)
    assert c.differing == [] and "no metric differs" in c.table()
    assert Image.open(tmp_path / "same.png").text["Description"] == "panels: "
