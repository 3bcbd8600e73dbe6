"""The promotion rule (pure) and the registry aliases in a real MLflow store."""

from __future__ import annotations

import pytest

from stepcode.tracking.registry import decide, promote_if_better, register_model, version_metrics

M = ["final_acc", "step_acc"]


def test_first_model_becomes_champion():
    d = decide({"final_acc": 0.1, "step_acc": 0.2}, None, M)
    assert d.promote and d.reason == "no champion yet"


@pytest.mark.parametrize("cand, promote, why", [
    ({"final_acc": 0.5, "step_acc": 0.6}, True, "better on ['final_acc', 'step_acc']"),
    ({"final_acc": 0.5, "step_acc": 0.5}, True, "better on ['final_acc']"),
    ({"final_acc": 0.4, "step_acc": 0.5}, False, "no metric improves"),          # equal: no reason to switch
    ({"final_acc": 0.9, "step_acc": 0.4}, False, "worse than the champion on ['step_acc']"),
    ({"final_acc": 0.9}, False, "candidate lacks metrics ['step_acc']"),
])
def test_candidate_must_be_no_worse_anywhere_and_better_somewhere(cand, promote, why):
    d = decide(cand, {"final_acc": 0.4, "step_acc": 0.5}, M)
    assert d.promote is promote and why in d.reason


def test_min_improvement():
    assert not decide({"final_acc": 0.405}, {"final_acc": 0.4}, ["final_acc"], min_improvement=0.01).promote
    assert decide({"final_acc": 0.42}, {"final_acc": 0.4}, ["final_acc"], min_improvement=0.01).promote


def test_aliases_in_a_real_registry(tmp_path, mlflow_store):
    import mlflow

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    mlflow.set_experiment("registry-test")
    versions = []
    for acc in (0.3, 0.2, 0.5):   # champion, a worse candidate, a better one (each a different model file)
        (model / "weights.bin").write_text(str(acc))
        with mlflow.start_run() as run:
            mlflow.set_tag("dvc.md5.dataset", "abc.dir")
        mv = register_model(str(model), "reg-test", run.info.run_id, {"final_acc": acc})
        versions.append((mv.version, promote_if_better("reg-test", mv.version, ["final_acc"])))
    client = mlflow.MlflowClient()
    assert [d.promote for _, d in versions] == [True, False, True]
    assert client.get_model_version_by_alias("reg-test", "champion").version == versions[2][0]
    assert client.get_model_version_by_alias("reg-test", "candidate").version == versions[2][0]
    worse = client.get_model_version("reg-test", versions[1][0])
    assert worse.tags["promotion"] == "rejected" and version_metrics(worse) == {"final_acc": 0.2}
    assert worse.tags["dvc.md5.dataset"] == "abc.dir" and worse.run_id
    assert sorted(a.path for a in client.list_artifacts(worse.run_id, "model")) == ["model/config.json",
                                                                                  "model/weights.bin"]
    # the same files again (a cached pipeline re-run): no new version
    with mlflow.start_run() as run:
        pass
    assert register_model(str(model), "reg-test", run.info.run_id, {"final_acc": 0.5}).version == versions[2][0]
