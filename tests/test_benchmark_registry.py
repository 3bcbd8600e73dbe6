"""The benchmark registry (stepcode/evals/registry.py): every registered benchmark implements the interface, the
registry is what the package and the CLI consult, a benchmark that a command cannot run says so in one line, and a
toy benchmark defined in this file alone is scored (real sandbox) and decontaminated against (real build stage):
adding a benchmark is one place. Nothing is mocked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stepcode.config import parse_params
from stepcode.evals import cruxeval, score_file
from stepcode.evals import livecodebench as lcb
from stepcode.evals import reval as reval_module
from stepcode.evals.benchmark import CAPABILITIES, GENERATE, SCORE, Benchmark, Prompt, Unsupported
from stepcode.evals.generate import check_request, official_jobs
from stepcode.evals.registry import BENCHMARKS, REGISTRY, decontamination_sources, get, names, register, unregister
from stepcode.evals.scoring import Adapter
from stepcode.jsonl import write_jsonl

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK_DATA = ROOT / "data" / "benchmarks"
LCB_FIXTURE = ROOT / "tests" / "fixtures" / "lcb_execution_sample.jsonl"
REQUIRED = ("load_problems", "official_prompts", "extract", "scoring_adapter", "decontamination_sources")


def params(**sections):
    return parse_params(sections)


# --- every registered benchmark -------------------------------------------------------------------------------------

def test_the_builtin_benchmarks_are_registered_in_order():
    assert dict(BENCHMARKS) == {"cruxeval": ("output", "input"), "lcb": ("output", "input"),
                                "reval": ("coverage", "state", "path", "output")}
    assert names(SCORE) == ("cruxeval", "lcb") and names(GENERATE) == ("cruxeval", "lcb", "reval")
    from stepcode import evals

    assert evals.BENCHMARKS is BENCHMARKS                   # the package's name -> tasks is the registry's
    with pytest.raises(ValueError, match=r"unknown benchmark 'humaneval'; expected one of \['cruxeval', 'lcb'"):
        get("humaneval")


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_registered_benchmark_implements_the_interface(name):
    bench = get(name)
    assert isinstance(bench, Benchmark) and bench.name == name and bench.title and bench.tasks
    for method in REQUIRED:                                 # implemented, not the base's NotImplementedError
        assert getattr(type(bench), method) is not getattr(Benchmark, method), (name, method)
    assert set(bench.capabilities) <= set(CAPABILITIES) and set(bench.stepcode_tasks) <= set(bench.tasks)
    for task in bench.tasks:
        assert bench.prompt_styles(task)[0] == "official"
    with pytest.raises(ValueError, match="not 'reverse'"):
        bench.check_task("reverse")
    with pytest.raises(ValueError):
        bench.extract("x", "reverse")
    sources = bench.decontamination_sources(params(build={"benchmarks_dir": str(BENCHMARK_DATA)}).build)
    assert all(isinstance(k, str) and isinstance(v, Path) and v.is_file() for k, v in sources.items())
    for capability in CAPABILITIES:
        if bench.supports(capability):
            bench.require(capability)
            continue
        with pytest.raises(Unsupported) as e:               # says so, in one line, naming what to run instead
            bench.require(capability)
        assert "\n" not in str(e.value) and bench.instead in str(e.value)
    if bench.supports(SCORE):
        assert all(isinstance(bench.scoring_adapter(t), Adapter) for t in bench.tasks)


@pytest.mark.parametrize("lcb_path", [None, str(LCB_FIXTURE)])
def test_the_registry_decontamination_sources(lcb_path):
    """The map the pipeline passes to the build (`build_dataset(..., benchmarks=)`): each benchmark's program file,
    relative to the cwd like every path in params."""
    build = params(build={"lcb_path": lcb_path}).build
    expected = {"cruxeval": Path("data/benchmarks/cruxeval/cruxeval.jsonl"),
                "reval": Path("data/benchmarks/reval/DREval_data.jsonl")}
    if lcb_path is not None:
        expected["livecodebench"] = Path(lcb_path)
    assert decontamination_sources(build) == expected
    assert ("livecodebench" in decontamination_sources(build)) == (lcb_path is not None)


def test_prompts_and_extraction_go_through_to_the_benchmark_modules():
    p = params(evaluate={"cruxeval_path": str(BENCHMARK_DATA / "cruxeval" / "cruxeval.jsonl"),
                         "lcb_path": str(LCB_FIXTURE)})
    crux = get("cruxeval").load_problems(p)[:3]
    for task in ("output", "input"):
        for cot in (False, True):
            _, ids, prompts = next(j for j in official_jobs(get("cruxeval"), crux, cot) if j[0] == task)
            assert ids == ["sample_0", "sample_1", "sample_2"]
            assert prompts == [Prompt(cruxeval.make_messages(x, task, cot), cruxeval.make_prompt(x, task, cot))
                               for x in crux]
            assert get("cruxeval").extract("assert f(1) == 2\n[/ANSWER]", task, cot) == \
                cruxeval.extract("assert f(1) == 2\n[/ANSWER]", task, cot)
    problems = get("lcb").load_problems(p)
    [(task, ids, prompts), (task_i, _, prompts_i)] = list(official_jobs(get("lcb"), problems, False))
    assert task == "output" and prompts == [Prompt(lcb.make_messages(x), lcb.make_prompt(x)) for x in problems]
    assert task_i == "input" and prompts_i == [Prompt(lcb.make_messages(x, False, "input"),
                                                      lcb.make_prompt(x, False, "input")) for x in problems]
    assert get("lcb").extract("assert g(a = 1) == 9\nmore", "output") == "9"


# --- REval: registered with what it does, honest about what it does not -------------------------------------------

def _truth_rows() -> list[dict]:
    """Pairs as load_reval gives them, made into truth rows by hand (prompts read no truth; ClassEval prompts read
    the setUp source, which the sandboxed truth build records)."""
    pairs = reval_module.load_reval(BENCHMARK_DATA / "reval")
    chosen = [p for p in pairs if p["idx"] in (0, 1)] + [p for p in pairs if p["idx"] == 90][:2]
    rows = [dict(p, status="ok", reason=None, truth=None,
                 setup_source=None if p["kind"] == "humaneval" else "def setUp(self):\n    self.x = 1")
            for p in chosen]
    rows[-1] = dict(rows[-1], status="runtime_error", reason="raised")
    return rows


def test_reval_prompts_through_the_registry_are_the_official_ones():
    bench, rows = get("reval"), _truth_rows()
    ours = [(tid, task, prompt.messages) for row in rows for task in bench.tasks
            for tid, prompt in bench.prompts(row, task)]
    assert sorted(ours, key=str) == sorted(reval_module.reval_prompts(rows), key=str)
    assert bench.prompts(rows[-1], "state") == []              # a pair whose truth is not ok asks nothing
    tid, prompt = bench.prompts(rows[0], "output")[0]
    assert tid == "DREval/0/0/output" and prompt.raw == prompt.messages[1]["content"]
    with pytest.raises(reval_module.RevalError, match="CoT templates"):
        bench.prompts(rows[0], "coverage", cot=True)
    assert bench.extract(" [ANSWER]\nYES", "coverage") == " [ANSWER]\nYES"   # score_reval parses raw text
    with pytest.raises(Unsupported, match="score_reval"):
        bench.scoring_adapter("coverage")


def test_score_refuses_reval_naming_what_to_run_instead(tmp_path):
    assert [b.name for b in check_request(["cruxeval", "reval"], "official")] == ["cruxeval", "reval"]
    with pytest.raises(Unsupported, match="stepcode score.*stepcode evaluate --benchmarks reval"):
        score_file("reval", "output", tmp_path / "absent.json", None, params())     # before reading anything
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
    for args in (["score", "--benchmark", "reval", "--task", "output", "g.json"],
                 ["evaluate", "--model", "m", "--benchmarks", "reval", "--prompt", "stepcode"]):
        r = subprocess.run([sys.executable, "-m", "stepcode.cli", *args], cwd=tmp_path, capture_output=True,
                           text=True, env=env, timeout=120)
        lines = r.stderr.splitlines()
        assert r.returncode == 2 and r.stdout == "" and len(lines) == 1, (r.returncode, r.stdout, r.stderr)
        assert lines[0].startswith("error: ") and ("REval" in lines[0] or "reval" in lines[0]), lines[0]
    assert list(tmp_path.iterdir()) == []                                          # no work began


def test_the_request_check_follows_the_registry():
    assert [b.name for b in check_request(["cruxeval", "lcb"], "official")] == ["cruxeval", "lcb"]
    assert [b.name for b in check_request(["cruxeval", "lcb"], "stepcode")] == ["cruxeval", "lcb"]
    with pytest.raises(ValueError, match="--prompt stepcode runs on CRUXEval and LiveCodeBench programs only; "
                                         "drop reval"):
        check_request(["cruxeval", "reval"], "stepcode")
    with pytest.raises(ValueError, match="unknown benchmark 'mbpp'"):
        check_request(["mbpp"], "official")


# --- a toy benchmark, defined here and nowhere else -----------------------------------------------------------------

TOY_PROBLEMS = [
    {"id": "sample_0", "code": "def f(xs):\n    total = 0\n    for x in xs:\n        total += x * x\n    return total",
     "input": "[1, 2, 3]", "output": "14"},
    {"id": "sample_1", "code": "def f(s):\n    out = ''\n    for ch in s:\n        out = ch + out\n    return out",
     "input": "'abc'", "output": "'cba'"},
]


class Toy(Benchmark):
    """Output prediction on the programs of <folder>/toy.jsonl: its prompt, extraction, check program and
    decontamination source, all here."""

    name, title, tasks = "toy", "Toy", ("output",)

    def __init__(self, folder: Path):
        self.file = Path(folder) / "toy.jsonl"

    def load_problems(self, params) -> list[dict]:
        return [json.loads(line) for line in self.file.read_text().splitlines()]

    def official_prompts(self, problem, task, cot=False):
        text = f"{problem['code']}\nassert f({problem['input']}) == ??\n"
        return [(problem["id"], Prompt([{"role": "user", "content": text}], text))]

    def extract(self, text, task, cot=False):
        self.check_task(task)
        return text.split("==", 1)[1].strip() if "==" in text else text.strip()

    def scoring_adapter(self, task):
        self.check_task(task)
        return Adapter(name="toy-output", check_program=_toy_check, default_skip_rule="drop")

    def decontamination_sources(self, build):
        return {"toy": self.file}


def _toy_check(problem: dict, prediction: str) -> str | None:
    if f"f({problem['input']})" in prediction:          # the copied-input rule
        return None
    return f"{problem['code']}\nassert {problem['output']} == {prediction}"


@pytest.fixture
def toy(tmp_path):
    folder = tmp_path / "benchmarks" / "toy"
    folder.mkdir(parents=True)
    write_jsonl(folder / "toy.jsonl", TOY_PROBLEMS)
    bench = register(Toy(folder))
    try:
        yield bench
    finally:
        unregister("toy")
    assert "toy" not in BENCHMARKS


def test_a_toy_benchmark_is_scored_through_the_registry(toy, tmp_path):
    assert BENCHMARKS["toy"] == ("output",) and names(SCORE)[-1] == "toy"
    assert [b.name for b in check_request(["toy"], "official")] == ["toy"]
    with pytest.raises(ValueError, match="drop toy"):
        check_request(["toy"], "stepcode")
    p = params(evaluate={"hash_seed": 0})
    [(task, ids, prompts)] = list(official_jobs(toy, toy.load_problems(p), cot=False))
    assert ids == ["sample_0", "sample_1"] and prompts[1].raw.endswith("assert f('abc') == ??\n")
    gens = tmp_path / "gens.json"
    gens.write_text(json.dumps({"sample_0": ["assert f([1, 2, 3]) == 14", "assert f(x) == 15", "9 + 5"],
                                "sample_1": ["assert f('abc') == f('abc')", "assert f('abc') == 'cab'"]}))
    out = tmp_path / "scored.json"
    result = score_file("toy", "output", gens, out, p, extract="direct")    # extraction, sandboxed checks, export
    assert result["raw_generations"]["sample_0"] == ["14", "15", "9 + 5"]
    assert result["raw_scored_generations"] == {"sample_0": [True, False, True], "sample_1": [False, False]}
    assert result["pass_at_1"] == pytest.approx(100 * (2 / 3 + 0) / 2)
    assert list(json.loads(out.read_text())) == ["raw_generations", "raw_scored_generations", "pass_at_1",
                                                 "pass_at_5"]


def test_a_toy_benchmark_is_decontaminated_against(toy, tmp_path):
    from stepcode.data.dataset import build_dataset

    p = params(build={"benchmarks_dir": str(BENCHMARK_DATA), "heldout_fraction": 0.0})
    sources = decontamination_sources(p.build)
    assert set(sources) == {"cruxeval", "reval", "toy"}
    code = "def f(x):\n    y = x + 1\n    return y"
    shown = ("def f(x):\n    y = x + 1\n    print(f'y: {y}')\n    return_val = y\n"
             "    print(f'return_val: {return_val}')\n    return return_val")
    copied = TOY_PROBLEMS[0]["code"].replace("total", "acc").replace("xs", "values")      # a renamed copy
    rows = [{"id": i, "code": c, "input": "1", "entry_point": "f", "source": "hand", "instrumented_code": shown,
             "trace": ["y: 2", "return_val: 2"], "output": "2", "status": "ok", "reason": None}
            for i, c in (("clean", code), ("copy", copied))]
    write_jsonl(tmp_path / "traces.jsonl", rows)
    stats = build_dataset(tmp_path / "traces.jsonl", tmp_path / "out", p, benchmarks=sources)
    assert stats["rows_out"]["contaminated"] == 1 and stats["rows_kept"] == 1
    report = json.loads((tmp_path / "out" / "decontamination.json").read_text())
    assert {k: v["dropped"] for k, v in report["benchmarks"].items()} == {"cruxeval": 0, "reval": 0, "toy": 1}
    assert report["dropped_rows"][0]["matches"][0]["benchmark_id"] == "sample_0"


def test_register_refuses_what_would_break_the_commands(tmp_path):
    with pytest.raises(ValueError, match="already registered"):
        register(get("cruxeval"))
    with pytest.raises(ValueError, match="Benchmark instance"):
        register("toy")

    class Mute(Toy):
        capabilities = frozenset({SCORE})      # no generation, and no word on what to run instead

    with pytest.raises(ValueError, match="what to run instead"):
        register(Mute(tmp_path))

    class GenerateOnly(Toy):
        capabilities = frozenset({GENERATE})
        instead = "nothing"

    with pytest.raises(ValueError, match="needs `score`"):
        register(GenerateOnly(tmp_path))
    assert "toy" not in REGISTRY
