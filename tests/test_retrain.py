"""The retraining flow (flows/retrain.py): a candidate moves the `champion` alias only when it beats the champion, and
the decision with both sides' metrics is recorded on the pipeline's MLflow run. Real MLflow store (the session's
sqlite store), real registry versions; the promotion step with metrics we set, then the whole flow on the micro
profile through `stepcode retrain` against a champion we placed above, then below, the candidate it trains."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from itertools import islice
from pathlib import Path

import pytest
import yaml
from _prefect_runs import read_flow_runs, seed_prefect_home

ROOT = Path(__file__).resolve().parent.parent
PROMOTE = ["heldout.final_acc", "heldout.step_acc"]   # params.yaml pipeline.promote_metrics
CHAMPION = {"heldout.final_acc": 0.4, "heldout.step_acc": 0.5}


@pytest.fixture(scope="module")
def micro_model(tmp_path_factory) -> Path:
    """One real micro model (registering logs it as an MLflow transformers model, so it must load); each version
    copies it."""
    from stepcode.training.models import build_tiny_model, corpus_texts

    return build_tiny_model(tmp_path_factory.mktemp("retrain-model") / "micro",
                            corpus_texts([{"messages": [{"role": "user", "content": "f(1)"}]}]), size="micro")


def _version(tmp_path: Path, base: Path, name: str, metrics: dict[str, float], experiment: str):
    """A real registry version of `name`: a copy of the micro model with a file of its own (its own md5), logged
    under a run of its own."""
    import mlflow

    from stepcode.tracking.registry import register_model

    model = tmp_path / f"model-{len(list(tmp_path.glob('model-*')))}"
    shutil.copytree(base, model)
    (model / "README.md").write_text(json.dumps({"metrics": metrics, "dir": model.name}))
    mlflow.set_experiment(experiment)
    with mlflow.start_run() as run:
        pass
    return register_model(str(model), name, run.info.run_id, metrics)


def _champion(name: str, version) -> None:
    """Alias `version` champion directly (not through the rule under test)."""
    import mlflow

    mlflow.MlflowClient().set_registered_model_alias(name, "champion", version.version)


def _load_json_artifact(run_id: str, path: str) -> dict:
    import mlflow

    return mlflow.artifacts.load_dict(f"runs:/{run_id}/{path}")


# --- the promotion step of the flow, on versions whose metrics we set ------------------------------------------------

CASES = {
    # case: (candidate metrics, champion metrics or None, min_improvement, promoted?, reason)
    "better on one, equal on the other": ({"heldout.final_acc": 0.5, "heldout.step_acc": 0.5}, CHAMPION, 0.0, True,
                                          "better on ['heldout.final_acc'], no worse elsewhere"),
    "better on both": ({"heldout.final_acc": 0.45, "heldout.step_acc": 0.75}, CHAMPION, 0.0, True,
                       "better on ['heldout.final_acc', 'heldout.step_acc'], no worse elsewhere"),
    "better on one, worse on the other": ({"heldout.final_acc": 0.9, "heldout.step_acc": 0.4}, CHAMPION, 0.0, False,
                                          "worse than the champion on ['heldout.step_acc']"),
    "worse on both": ({"heldout.final_acc": 0.1, "heldout.step_acc": 0.2}, CHAMPION, 0.0, False,
                      "worse than the champion on ['heldout.final_acc', 'heldout.step_acc']"),
    "equal": (dict(CHAMPION), CHAMPION, 0.0, False, "no metric improves by more than 0.0"),
    "better, but by less than min_improvement": ({"heldout.final_acc": 0.5, "heldout.step_acc": 0.5}, CHAMPION, 0.2,
                                                 False, "no metric improves by more than 0.2"),
    "no champion yet": ({"heldout.final_acc": 0.0, "heldout.step_acc": 0.0}, None, 0.0, True, "no champion yet"),
    "candidate lacks a metric": ({"heldout.final_acc": 0.9}, CHAMPION, 0.0, False,
                                "candidate lacks metrics ['heldout.step_acc']"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_promotion_step_moves_champion_only_for_a_better_candidate_and_records_both_sides(tmp_path, case, micro_model):
    import mlflow

    from flows.retrain import promote
    from stepcode.config import Params

    cand_metrics, champ_metrics, min_improvement, promoted, reason = CASES[case]
    name = "promote-" + "".join(c if c.isalnum() else "-" for c in case)
    params = Params()
    params = params.model_copy(update={
        "tracking": params.tracking.model_copy(update={"experiment": "retrain-promotion",
                                                       "artifact_root": str(tmp_path / "mlruns")}),
        "pipeline": params.pipeline.model_copy(update={"model_name": name, "min_improvement": min_improvement})})
    assert list(params.pipeline.promote_metrics) == PROMOTE
    champ = None
    if champ_metrics is not None:
        champ = _version(tmp_path, micro_model, name, champ_metrics, "retrain-promotion")
        _champion(name, champ)
    cand = _version(tmp_path, micro_model, name, cand_metrics, "retrain-promotion")
    mlflow.set_experiment("retrain-promotion")
    with mlflow.start_run(tags={"stage": "pipeline"}) as run:   # the pipeline run the decision is recorded on
        pass
    params_json = json.dumps(params.model_dump(mode="json", by_alias=True))

    record = promote.fn({"name": name, "version": cand.version}, run.info.run_id, params_json)

    client = mlflow.MlflowClient()
    expected_champion = cand if promoted else champ
    assert client.get_model_version_by_alias(name, "champion").version == expected_champion.version
    assert client.get_model_version_by_alias(name, "candidate").version == cand.version
    assert (record["promote"], record["reason"]) == (promoted, reason)
    assert (record["model"], record["version"]) == (name, cand.version)
    # both sides' metrics, the champion compared with, and the deltas
    assert record["candidate"] == cand_metrics
    assert record["champion"] == champ_metrics
    assert record["champion_version"] == (champ.version if champ else None)
    if champ_metrics is not None and set(cand_metrics) >= set(PROMOTE):
        assert record["deltas"] == pytest.approx({m: cand_metrics[m] - champ_metrics[m] for m in PROMOTE})
    else:
        assert record["deltas"] == {}
    # ... on the pipeline's run: tags and promotion.json (the same record)
    tags = client.get_run(run.info.run_id).data.tags
    assert tags["promotion.decision"] == ("promoted" if promoted else "kept champion")
    assert tags["promotion.reason"] == reason
    assert _load_json_artifact(run.info.run_id, "promotion.json") == json.loads(json.dumps(record))
    # ... and on the candidate version
    version_tags = client.get_model_version(name, cand.version).tags
    assert (version_tags["promotion"], version_tags["promotion.reason"]) == (
        "champion" if promoted else "rejected", reason)
    if champ is not None:   # the champion version itself is untouched
        assert client.get_model_version(name, champ.version).tags.get("promotion") is None


# --- the whole flow on the micro profile ------------------------------------------------------------------------------

def _project(base: Path, experiment: str, model_name: str) -> Path:
    """A project folder as tests/test_flows.py builds one: 60 synthesized programs, micro profile, tracking into the
    session's store with artifacts in the folder, a short evaluation."""
    from stepcode.data.synth import synth_candidates

    d = base / "proj"
    (d / "data" / "raw").mkdir(parents=True)
    rows = list(islice(synth_candidates(seed=5), 60))
    (d / "data" / "raw" / "synth.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["build"]["benchmarks_dir"] = str(ROOT / "data" / "benchmarks")
    p["evaluate"]["cruxeval_path"] = str(ROOT / "data" / "benchmarks" / "cruxeval" / "cruxeval.jsonl")
    p["tracking"]["experiment"] = experiment
    p["tracking"]["artifact_root"] = str(d / "mlruns")
    p["train"]["profile"] = "micro"
    p["trace"]["part_rows"] = 30
    p["pipeline"].update(eval_limit=1, heldout_limit=4, eval_max_new_tokens=24,
                         model_name=model_name)
    (d / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    seed_prefect_home(d)
    return d


def _retrain(d: Path) -> tuple[dict, subprocess.CompletedProcess]:
    proc = subprocess.run([sys.executable, "-m", "stepcode.cli", "retrain", "--profile", "micro"], cwd=d,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    # stdout: the trainers' step logs, then the CLI's promotion record (indented JSON) last
    return json.loads(proc.stdout[proc.stdout.index('{\n  "promote"'):]), proc


def _newest_pipeline_run(experiment: str):
    import mlflow

    runs = [r for r in mlflow.search_runs(experiment_names=[experiment], output_format="list")
            if r.data.tags.get("stage") == "pipeline"]
    return max(runs, key=lambda r: r.info.start_time), len(runs)


@pytest.mark.slow   # two real retraining runs of the micro profile (the second one cached): ~80 s on 2 cores
def test_retrain_flow_keeps_a_better_champion_and_replaces_a_worse_one(tmp_path, micro_model):
    import mlflow

    from stepcode.tracking.registry import version_metrics

    experiment, name = "retrain-e2e", "retrain-e2e-model"
    client = mlflow.MlflowClient()
    d = _project(tmp_path, experiment, name)

    # 1. A champion above anything the micro model can reach: the candidate the flow trains is kept out.
    strong = _version(tmp_path, micro_model, name, {"heldout.final_acc": 1.0, "heldout.step_acc": 1.0}, "retrain-seed")
    _champion(name, strong)
    printed, _ = _retrain(d)
    run, n_runs = _newest_pipeline_run(experiment)
    assert n_runs == 1 and run.info.status == "FINISHED"
    cand = client.get_model_version_by_alias(name, "candidate")
    assert cand.version != strong.version and cand.run_id   # a new version, made by this run's register stage
    register = [r for r in mlflow.search_runs(experiment_names=[experiment], output_format="list")
                if r.data.tags.get("stage") == "register"]
    assert [r.data.tags["mlflow.parentRunId"] for r in register] == [run.info.run_id]
    grpo = [r for r in mlflow.search_runs(experiment_names=[experiment], output_format="list")
            if r.data.tags.get("stage") == "grpo"]
    assert cand.run_id == grpo[0].info.run_id   # the version's source: the training run that logged the model
    evaluate = next(r for r in mlflow.search_runs(experiment_names=[experiment], output_format="list")
                    if r.data.tags.get("stage") == "evaluate")
    cand_metrics = version_metrics(cand)
    for m in PROMOTE:   # the candidate's metrics are what its evaluation measured
        assert cand_metrics[m] == pytest.approx(evaluate.data.metrics[m])
        assert cand_metrics[m] < 1.0, cand_metrics   # five SFT steps of a micro model do not solve every row
    assert client.get_model_version_by_alias(name, "champion").version == strong.version
    record = _load_json_artifact(run.info.run_id, "promotion.json")
    assert record == printed   # what the CLI printed is what the run records
    assert (record["promote"], record["model"], record["version"]) == (False, name, int(cand.version))
    assert record["reason"].startswith("worse than the champion on ")
    assert record["candidate"] == pytest.approx(cand_metrics)
    assert record["champion"] == {"heldout.final_acc": 1.0, "heldout.step_acc": 1.0}
    assert record["champion_version"] == strong.version
    assert record["deltas"] == pytest.approx({m: cand_metrics[m] - 1.0 for m in PROMOTE})
    assert run.data.tags["promotion.decision"] == "kept champion"
    assert run.data.tags["promotion.reason"] == record["reason"]
    assert client.get_model_version(name, cand.version).tags["promotion"] == "rejected"

    # 2. A champion below the candidate on every metric (what it measured minus 0.25): the re-run (its stages
    # cached, so the same model files: the same version) promotes the candidate.
    weak_metrics = {m: cand_metrics[m] - 0.25 for m in PROMOTE}
    weak = _version(tmp_path, micro_model, name, weak_metrics, "retrain-seed")
    _champion(name, weak)
    printed, _ = _retrain(d)
    run, n_runs = _newest_pipeline_run(experiment)
    assert n_runs == 2 and run.info.status == "FINISHED"
    assert client.get_model_version_by_alias(name, "candidate").version == cand.version
    assert client.get_model_version_by_alias(name, "champion").version == cand.version
    record = _load_json_artifact(run.info.run_id, "promotion.json")
    assert record == printed
    assert (record["promote"], record["version"]) == (True, int(cand.version))
    assert record["reason"] == "better on ['heldout.final_acc', 'heldout.step_acc'], no worse elsewhere"
    assert record["candidate"] == pytest.approx(cand_metrics)
    assert record["champion"] == pytest.approx(weak_metrics)
    assert record["champion_version"] == weak.version
    assert record["deltas"] == pytest.approx({m: 0.25 for m in PROMOTE})
    assert run.data.tags["promotion.decision"] == "promoted"
    assert client.get_model_version(name, cand.version).tags["promotion"] == "champion"

    # In the Prefect UI: each retraining run is named for what it trains and says what it decided (its artifact), its
    # pipeline subflow run has the summary artifact
    flow_runs = read_flow_runs(d)
    retrains = [r for r in flow_runs if r["name"].startswith("retrain micro grpo=bilevel params=")]
    pipelines = [r for r in flow_runs if r["name"].startswith("micro grpo=bilevel params=")]
    assert len(retrains) == 2 and len(pipelines) == 2, [r["name"] for r in flow_runs]
    decisions = [next(a["data"] for a in r["artifacts"] if a["key"] == "stepcode-retrain-decision") for r in retrains]
    assert decisions[0].startswith(f"## Promoted\n\n{name} v{cand.version} is the new `champion` (it replaces "
                                   f"v{weak.version}).")   # newest first
    assert decisions[1].startswith(f"## Kept the champion\n\nv{strong.version} stays `champion`")
    assert "| `heldout.final_acc` |" in decisions[0] and run.info.run_id in decisions[0]
    assert all([a["key"] for a in r["artifacts"]] == ["stepcode-pipeline-summary"] for r in pipelines)
