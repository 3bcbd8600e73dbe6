"""The promotion rule (pure) and the registry aliases in a real MLflow store."""

from __future__ import annotations

import pytest

from stepcode.tracking.registry import decide, log_model, promote_if_better, register_model, version_metrics

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

    from stepcode.training.models import build_tiny_model, corpus_texts

    model = build_tiny_model(tmp_path / "model", corpus_texts([{"messages": [{"role": "user", "content": "f(1)"}]}]),
                             size="micro")
    mlflow.set_experiment("registry-test")
    versions, trained = [], []
    for acc in (0.3, 0.2, 0.5):   # champion, a worse candidate, a better one (each a different model file)
        (model / "README.md").write_text(f"model {acc}")
        with mlflow.start_run(run_name="grpo") as run:          # the training run logs the model it made
            mlflow.set_tag("dvc.md5.dataset", "abc.dir")
            log_model(str(model))
        trained.append(run.info.run_id)
        with mlflow.start_run(run_name="register") as run:
            mv = register_model(str(model), "reg-test", run.info.run_id, {"final_acc": acc})
        assert mv.aliases == ["candidate"]
        versions.append((mv.version, promote_if_better("reg-test", mv.version, ["final_acc"])))
    client = mlflow.MlflowClient()
    assert [d.promote for _, d in versions] == [True, False, True]
    assert client.get_model_version_by_alias("reg-test", "champion").version == versions[2][0]
    assert client.get_model_version_by_alias("reg-test", "candidate").version == versions[2][0]
    worse = client.get_model_version("reg-test", versions[1][0])
    assert worse.tags["promotion"] == "rejected" and version_metrics(worse) == {"final_acc": 0.2}
    assert worse.tags["dvc.md5.dataset"] == "abc.dir" and worse.run_id == trained[1]     # source: the training run
    assert "| final_acc | 20.0% |" in worse.description and "`abc.dir`" in worse.description   # the model card, in the reports' units
    assert "final_acc" not in {k.split(".", 1)[-1] for k in worse.tags}                     # metrics, not tags
    # loadable as what it is: a text-generation pipeline with its tokenizer, by alias
    generate = mlflow.transformers.load_model("models:/reg-test@candidate")
    out = generate("def f(x):", max_new_tokens=4, do_sample=False)
    assert out[0]["generated_text"].startswith("def f(x):")
    # the same files again (a cached pipeline re-run): no new version
    with mlflow.start_run() as run:
        pass
    assert register_model(str(model), "reg-test", run.info.run_id, {"final_acc": 0.5}).version == versions[2][0]
    # a model no run logged (trained with tracking off) is logged by the registering run
    (model / "README.md").write_text("untracked")
    with mlflow.start_run(run_name="register") as run:
        mv = register_model(str(model), "reg-test", run.info.run_id, {"final_acc": 0.1})
    assert mv.run_id == run.info.run_id and version_metrics(mv) == {"final_acc": 0.1}
