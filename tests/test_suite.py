"""`stepcode evaluate --suite paper`: the tables (pure, by hand) and a real end-to-end run on a micro model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stepcode.evals.suite import headline, markdown, paper_table, step_table, suite_benchmarks, to_html

METRICS = {
    "cruxeval_input_pass_at_1": 10.0, "cruxeval_output_pass_at_1": 20.0,
    "stepcode_cruxeval_input_pass_at_1": 30.0, "stepcode_cruxeval_input_step_accuracy": 40.0,
    "stepcode_cruxeval_input_problems": 18, "stepcode_cruxeval_input_excluded": 2,
    "stepcode_cruxeval_output_pass_at_1": 50.0, "stepcode_cruxeval_output_step_accuracy": 60.5,
    "stepcode_cruxeval_output_problems": 19, "stepcode_cruxeval_output_excluded": 1,
    "stepcode_cruxeval_output_greedy_pass_at_1": 50.0, "cruxeval_output_greedy_pass_at_1": 20.0,
    "reval_coverage_acc": 70.0, "reval_state_acc": 1.0, "reval_path_acc": 2.0, "reval_output_acc": 3.0,
    "reval_ic": 4.25, "reval_coverage_f1": 9.0, "reval_t0_ic": 4.25,
}
SKIPPED = {"lcb": "LiveCodeBench execution data not found at x.jsonl. export it with python -c ..."}


def test_table2_has_the_papers_columns_and_one_row_per_prompt_style():
    t = paper_table(METRICS, SKIPPED)
    assert t["header"] == ["CRUXEval-I", "CRUXEval-O", "LCB-I", "LCB-O", "REval Cov.",
                           "REval State", "REval Path", "REval Output", "REval IC"]
    (official, a), (stepcode, b) = t["rows"]
    assert official == "official prompt" and a == [10.0, 20.0, None, None, 70.0, 1.0, 2.0, 3.0, 4.25]
    assert stepcode.startswith("instrumented") and b == [30.0, 50.0, None, None, None, None, None, None, None]


def test_table6_puts_step_accuracy_beside_final_accuracy():
    t = step_table(METRICS, SKIPPED)
    assert t["header"] == ["final acc", "step acc", "problems", "excluded"]
    assert t["rows"] == [("CRUXEval-I", [30.0, 40.0, 18, 2]), ("CRUXEval-O", [50.0, 60.5, 19, 1]),
                         ("LCB-I", [None] * 4), ("LCB-O", [None] * 4)]


def test_markdown_and_html_show_every_number_and_the_skip_reason():
    tables = {"table2": paper_table(METRICS, SKIPPED), "table6": step_table(METRICS, SKIPPED)}
    md = markdown(tables, SKIPPED)
    assert "| official prompt | 10.0 | 20.0 | – | – | 70.0 | 1.0 | 2.0 | 3.0 | 4.2 |" in md
    assert "| CRUXEval-O | 50.0 | 60.5 | 19 | 1 |" in md
    assert "- lcb: LiveCodeBench execution data not found" in md
    page = to_html(tables, SKIPPED, "models/<micro>")
    assert "<td>60.5</td>" in page and "models/&lt;micro&gt;" in page and "<li><b>lcb</b>" in page


def test_headline_keeps_the_table_numbers_only():
    h = headline(METRICS)
    assert "stepcode_cruxeval_output_greedy_pass_at_1" not in h and "stepcode_cruxeval_input_problems" not in h
    assert h["reval_ic"] == 4.25 and h["stepcode_cruxeval_output_step_accuracy"] == 60.5 and len(h) == 11


def test_unknown_suite_is_refused():
    assert suite_benchmarks("paper") == ["cruxeval", "lcb", "reval"]
    with pytest.raises(ValueError, match="unknown suite 'table9'"):
        suite_benchmarks("table9")


# --- end to end: a real micro model, the real benchmarks, the real sandbox and MLflow store --------------------------

ROOT = Path(__file__).resolve().parents[1]
CRUX = ROOT / "data" / "benchmarks" / "cruxeval" / "cruxeval.jsonl"
LCB = ROOT / "tests" / "fixtures" / "lcb_execution_sample.jsonl"


@pytest.fixture(scope="module")
def micro(tmp_path_factory) -> Path:
    from stepcode.prompts import output_messages
    from stepcode.training.models import build_tiny_model, corpus_texts

    rows = [{"messages": output_messages("def f(x):\n    y = x + 1\n    print(f'y: {y}')\n    return y", "1")}]
    return build_tiny_model(tmp_path_factory.mktemp("suite") / "micro", corpus_texts(rows), size="micro")


def _suite(args: list[str], params: Path):
    from typer.testing import CliRunner

    from stepcode.cli import app

    r = CliRunner().invoke(app, ["evaluate", "--suite", "paper", "--max-new-tokens", "16", *args,
                                 "--params", str(params)])
    assert r.exit_code == 0, r.output
    return r


def _runs(suite_run_id: str):
    import mlflow

    parent = mlflow.get_run(suite_run_id)
    children = mlflow.search_runs(experiment_ids=[parent.info.experiment_id], output_format="list",
                                  filter_string=f"tags.mlflow.parentRunId = '{suite_run_id}'")
    return parent, {c.info.run_name: c for c in children}


def _last_suite_run():
    import mlflow

    [run] = mlflow.search_runs(search_all_experiments=True, output_format="list", max_results=1,
                               filter_string="attributes.run_name = 'suite paper'", order_by=["start_time DESC"])
    return run.info.run_id


@pytest.mark.slow
def test_suite_runs_every_row_and_reports_a_missing_export_as_skipped(micro, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(f"evaluate:\n  cruxeval_path: {CRUX}\n  lcb_path: {tmp_path / 'no-lcb.jsonl'}\n"
                      f"  reval_cache_dir: {tmp_path / 'reval'}\n")
    out = tmp_path / "suite"
    r = _suite(["--model", str(micro), "--limit", "2", "-o", str(out)], params)
    table = (out / "table.md").read_text()
    assert table in r.output and "| official prompt |" in table and "| instrumented prompt (StepCode) |" in table
    assert "- lcb: LiveCodeBench execution data not found" in table and "load_dataset" in table
    metrics = json.loads((out / "metrics.json").read_text())
    for task in ("input", "output"):
        assert metrics[f"cruxeval_{task}_problems"] == 2 and f"cruxeval_{task}_pass_at_1" in metrics
        assert metrics[f"stepcode_cruxeval_{task}_problems"] + metrics[f"stepcode_cruxeval_{task}_excluded"] == 2
        assert 0 <= metrics[f"stepcode_cruxeval_{task}_step_accuracy"] <= 100
        # official format: {"sample_<k>": [prediction]}, one greedy prediction per problem
        gens = json.loads((out / "generations" / f"cruxeval_{task}_greedy.json").read_text())
        assert list(gens) == ["sample_0", "sample_1"] and all(len(v) == 1 for v in gens.values())
    assert metrics["reval_programs"] == 2 and metrics["reval_tasks"] > 0 and 0 <= metrics["reval_ic"] <= 100
    assert not any(k.startswith("lcb_") or k.startswith("stepcode_lcb") for k in metrics)
    logs = sorted(p.parent.name.split("@")[0] for p in (out / "model_generations").glob("*/*.jsonl"))
    assert logs == ["coverage", "output", "path", "state"]                 # REval's own result files
    run = json.loads((out / "run.json").read_text())
    assert (run["decoding"], run["suite"], run["limit"], run["max_new_tokens"]) == ("paper", "paper", 2, 16)
    assert list(run["skipped"]) == ["lcb"] and run["runs"] == [{"label": "greedy", "temperature": 0.0, "n": 1}]
    parent, children = _runs(_last_suite_run())
    assert parent.info.status == "FINISHED"
    assert set(children) == {"evaluate CRUXEval", "evaluate LiveCodeBench", "evaluate REval"}
    assert "lcb_execution" in children["evaluate LiveCodeBench"].data.tags["skipped"]
    assert parent.data.metrics["stepcode_cruxeval_output_step_accuracy"] == \
        metrics["stepcode_cruxeval_output_step_accuracy"]
    assert children["evaluate REval"].data.metrics["reval_ic"] == metrics["reval_ic"]
    assert parent.data.params["decoding"] == "paper" and parent.data.tags["suite"] == "paper"


@pytest.mark.slow
def test_suite_evaluates_a_model_served_at_an_endpoint(micro, tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "_openai_server.py"), "--model", str(micro),
                             "--name", "micro-served"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening "), line
        url = f"http://127.0.0.1:{int(line.split()[1])}/v1"
        params = tmp_path / "params.yaml"
        params.write_text(f"evaluate:\n  cruxeval_path: {CRUX}\n  lcb_path: {LCB}\n"
                          f"  reval_cache_dir: {tmp_path / 'reval'}\n")
        out = tmp_path / "suite"
        _suite(["--endpoint", url, "--model", "micro-served", "--concurrency", "2", "--limit", "1", "-o", str(out)],
               params)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    metrics = json.loads((out / "metrics.json").read_text())
    for task in ("input", "output"):     # the LiveCodeBench export is there: both of its rows run, both prompts
        assert metrics[f"lcb_{task}_problems"] == 1 and f"lcb_{task}_pass_at_1" in metrics
        assert metrics[f"stepcode_lcb_{task}_problems"] == 1
    assert "LCB-I" in (out / "table.md").read_text() and "Skipped" not in (out / "table.md").read_text()
    run = json.loads((out / "run.json").read_text())
    assert (run["backend"], run["model"], run["skipped"]) == ("endpoint", f"micro-served @ {url}", {})
