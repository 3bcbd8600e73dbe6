"""Tests for the build stage (stepcode.data.dataset), decontamination (stepcode.data.decontam) and `stepcode build`."""

import itertools
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stepcode.cli import app
from stepcode.config import parse_params
from stepcode.data.corpus import CorpusError, static_filter
from stepcode.data.dataset import SPLITS, build_dataset, program_key, split_of, three_way_split
from stepcode.data.decontam import code_tokens, decontaminate, ngrams
from stepcode.data.synth import synth_candidates
from stepcode.evals.registry import decontamination_sources
from stepcode.jsonl import write_jsonl
from stepcode.prompts import parse_completion

BENCHMARK_DATA = Path(__file__).resolve().parents[1] / "data" / "benchmarks"
BENCHMARKS = {"cruxeval": BENCHMARK_DATA / "cruxeval/cruxeval.jsonl",
              "reval": BENCHMARK_DATA / "reval/DREval_data.jsonl"}
FILES = ("sft.jsonl", "rl.jsonl", "heldout.jsonl", "stats.json", "decontamination.json")

CODE = "def f(x):\n    y = x + 1\n    return y"
SHOWN = "def f(x):\n    y = x + 1\n    print(f'y: {y}')\n    return_val = y\n    print(f'return_val: {return_val}')\n" \
        "    return return_val"


def build(traces, out, p, **kwargs):
    """The build as the pipeline runs it: decontaminated against every registered benchmark."""
    return build_dataset(traces, out, p, benchmarks=decontamination_sources(p.build), **kwargs)


def trace_row(id, trace=("y: 2", "return_val: 2"), output="2", input="1", status="ok", code=CODE, shown=SHOWN):
    return {"id": id, "code": code, "input": input, "entry_point": "f", "source": "hand",
            "instrumented_code": shown, "trace": list(trace), "output": output, "status": status, "reason": None}


def params(**build):
    return parse_params({"build": build})


def read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def cruxeval(sample_id):
    return next(r for r in map(json.loads, BENCHMARKS["cruxeval"].read_text().splitlines()) if r["id"] == sample_id)


# ------------------------------------------------------------------------------------------ end to end, by hand

def test_two_anchor_row_end_to_end(tmp_path):
    write_jsonl(tmp_path / "traces.jsonl", [trace_row("p1")])
    stats = build(tmp_path / "traces.jsonl", tmp_path / "out", params(heldout_fraction=0.0, rl_fraction=0.0))
    sft = read(tmp_path / "out/sft.jsonl")
    assert [(r["source"], r["gold_trace"]) for r in sft] == [("hand", ["y: 2", "return_val: 2"])] * 2
    assert [(r["id"], r["task"]) for r in sft] == [("p1", "output"), ("p1", "input")]
    user = sft[0]["messages"][1]
    assert sft[0]["messages"][0]["role"] == "system" and user["role"] == "user"
    assert user["content"].startswith("```python\n" + SHOWN + "\n```\nassert f(1) == ??\n")
    assert sft[0]["completion"] == [{"role": "assistant", "content": (
        "<reasoning>Step 1 of 2: compute y.</reasoning>\n"
        "<print>y: 2</print>\n"
        "<reasoning>Step 2 of 2: compute return_val.</reasoning>\n"
        "<print>return_val: 2</print>\n"
        "<reasoning>So the function returns this value.</reasoning>\n"
        "<answer>2</answer>")}]
    assert "\nassert f(??) == 2\n" in sft[1]["messages"][1]["content"]
    assert sft[1]["completion"][0]["content"] == (
        "<reasoning>Guess an input, then run the code on it.</reasoning>\n"
        "<input>1</input>\n"
        "<reasoning>Step 1 of 2: compute y.</reasoning>\n"
        "<print>y: 2</print>\n"
        "<reasoning>Step 2 of 2: compute return_val.</reasoning>\n"
        "<print>return_val: 2</print>\n"
        "<reasoning>The run gives the expected output, so this input works.</reasoning>\n"
        "<answer>1</answer>")
    assert read(tmp_path / "out/rl.jsonl") == read(tmp_path / "out/heldout.jsonl") == []
    assert stats["files"] == {"sft": 2, "rl": 0, "heldout": 0}
    assert stats["split"] == {"heldout_fraction": 0.0, "rl_fraction": 0.0, "programs": {"sft": 1, "rl": 0, "heldout": 0},
                              "rows": {"sft": 1, "rl": 0, "heldout": 0}}
    assert stats["anchors"] == {"1": 0, "2": 1, **{str(n): 0 for n in range(3, 11)}}
    assert json.loads((tmp_path / "out/stats.json").read_text()) == stats

    stats = build(tmp_path / "traces.jsonl", tmp_path / "rl", params(heldout_fraction=0.0, rl_fraction=1.0))
    assert read(tmp_path / "rl/sft.jsonl") == []
    rl = read(tmp_path / "rl/rl.jsonl")
    assert rl[0] == {"id": "p1", "task": "output", "prompt": sft[0]["messages"],
                     "gold_trace": ["y: 2", "return_val: 2"], "gold_output": "2", "code": CODE,
                     "instrumented_code": SHOWN, "input": "1", "entry_point": "f", "terminal_only": False,
                     "source": "hand"}
    assert rl[1]["task"] == "input" and rl[1]["prompt"] == sft[1]["messages"]
    assert stats["files"] == {"sft": 0, "rl": 2, "heldout": 0}


def test_reasoning_none_and_output_task_only(tmp_path):
    write_jsonl(tmp_path / "traces.jsonl", [trace_row("p1")])
    build(tmp_path / "traces.jsonl", tmp_path / "out",
                  params(heldout_fraction=0.0, rl_fraction=0.0, reasoning="none", input_task=False))
    sft = read(tmp_path / "out/sft.jsonl")
    assert [r["task"] for r in sft] == ["output"]
    assert sft[0]["completion"][0]["content"] == (
        "<reasoning></reasoning>\n<print>y: 2</print>\n<reasoning></reasoning>\n<print>return_val: 2</print>\n"
        "<reasoning>So the function returns this value.</reasoning>\n<answer>2</answer>")


# ----------------------------------------------------------------------------------------------------- routing

def test_routing_counts_every_reason(tmp_path):
    rows = [
        trace_row("ok2"),
        trace_row("one", trace=["return_val: 2"]),                                    # terminal only
        trace_row("long", trace=[f"y: {i}" for i in range(11)]),                      # > trace.max_lines
        trace_row("none", trace=[]),
        trace_row("crash", status="runtime_error", trace=[], output=None),
        trace_row("tag", trace=["y: <print>", "return_val: 2"]),                      # both renderers refuse
        trace_row("noargs", input="", code="def f():\n    return 2",
                  shown="def f():\n    return_val = 2\n    print(f'return_val: {return_val}')\n    return return_val",
                  trace=["return_val: 2"]),                                           # input task refused
        trace_row("dotted", trace=["self.count: 1", "return_val: 2"]),
    ]
    rows[4]["instrumented_code"] = None  # failed rows carry nulls; only ok rows are checked field by field
    write_jsonl(tmp_path / "traces.jsonl", rows)
    stats = build(tmp_path / "traces.jsonl", tmp_path / "out", params(heldout_fraction=0.0, rl_fraction=1.0))
    assert stats["rows_in"] == 8
    assert stats["rows_out"] == {"all_tasks_refused": 1, "contaminated": 0, "no_anchors": 1,
                                 "status/runtime_error": 1, "too_long": 1}
    assert stats["examples_out"] == {"input/no_arguments": 1, "input/tag_in_text": 1, "output/tag_in_text": 1}
    assert stats["rows_kept"] == 4 and stats["terminal_only"] == 2
    # the build stage logs these counts as MLflow metrics, whose names allow only [/\w.\- ] (and ':' off Windows)
    assert all(re.fullmatch(r"[\w./-]+", key) for key in [*stats["rows_out"], *stats["examples_out"]])
    assert stats["examples"] == {"output": {"sft": 0, "rl": 4, "heldout": 0}, "input": {"sft": 0, "rl": 3, "heldout": 0}}
    rl = read(tmp_path / "out/rl.jsonl")
    assert [(r["id"], r["task"], r["terminal_only"]) for r in rl] == [
        ("ok2", "output", False), ("ok2", "input", False), ("one", "output", True), ("one", "input", True),
        ("noargs", "output", True), ("dotted", "output", False), ("dotted", "input", False)]
    build(tmp_path / "traces.jsonl", tmp_path / "sft", params(heldout_fraction=0.0, rl_fraction=0.0))
    dotted = read(tmp_path / "sft/sft.jsonl")[-1]["completion"][0]["content"]
    assert "<reasoning>Step 1 of 2: compute self.count.</reasoning>\n<print>self.count: 1</print>" in dotted


def test_max_lines_comes_from_params(tmp_path):
    write_jsonl(tmp_path / "traces.jsonl", [trace_row("p1"), trace_row("p2", trace=["return_val: 2"])])
    p = parse_params({"build": {"heldout_fraction": 0.0}, "trace": {"max_lines": 1}})
    stats = build(tmp_path / "traces.jsonl", tmp_path / "out", p)
    assert stats["rows_out"]["too_long"] == 1 and stats["anchors"] == {"1": 1}


@pytest.mark.parametrize("broken, message", [
    ({"trace": "y: 2"}, "field 'trace' must be a list"),
    ({"output": None}, "field 'output' must be a str"),
    ({"trace": ["y: 2", 3]}, "every trace line must be a str"),
    ({"status": None}, "needs a string 'id' and 'status'"),
])
def test_malformed_rows_are_errors(tmp_path, broken, message):
    write_jsonl(tmp_path / "traces.jsonl", [trace_row("p1"), {**trace_row("p2"), **broken}])
    with pytest.raises(CorpusError, match=message):
        build(tmp_path / "traces.jsonl", tmp_path / "out", params())


def test_duplicate_ids_are_an_error(tmp_path):
    write_jsonl(tmp_path / "traces.jsonl", [trace_row("p1"), trace_row("p1")])
    with pytest.raises(ValueError, match="duplicate id 'p1'"):
        build(tmp_path / "traces.jsonl", tmp_path / "out", params())


# ------------------------------------------------------------------------------------------------------- split

def test_split_of_by_hand():
    # sha256(b"a") starts ca978112ca1bbdca: 0xca978112ca1bbdca / 2**64 = 0.79137...
    assert split_of("a", 0.79) == "train" and split_of("a", 0.80) == "heldout"
    assert split_of("a", 0.0) == "train" and split_of("a", 1.0) == "heldout"


@pytest.mark.parametrize("fraction", [-0.1, 1.5, "0.1", None, True])
def test_split_of_rejects_bad_fractions(fraction):
    with pytest.raises(ValueError, match="heldout_fraction"):
        split_of("a", fraction)


def test_split_is_deterministic_and_proportional():
    ids = [f"synth-1234-{k}" for k in range(20000)]
    first = [split_of(i, 0.1) for i in ids]
    assert first == [split_of(i, 0.1) for i in ids]
    share = first.count("heldout") / len(ids)
    assert 0.09 < share < 0.11  # binomial sd 0.002: this is 5 sd
    # a larger fraction only moves rows from train to heldout
    assert all(split_of(i, 0.3) == "heldout" for i, s in zip(ids, first) if s == "heldout")


def test_inputs_of_one_program_share_the_split(tmp_path):
    assert program_key("HumanEval/3#1") == "HumanEval/3" and program_key("synth-1-2") == "synth-1-2"
    rows = [trace_row(f"prog{k}#{j}") for k in range(40) for j in range(3)]
    write_jsonl(tmp_path / "traces.jsonl", rows)
    build(tmp_path / "traces.jsonl", tmp_path / "out", params(heldout_fraction=0.5))
    train = {r["id"] for r in read(tmp_path / "out/sft.jsonl")} | {r["id"] for r in read(tmp_path / "out/rl.jsonl")}
    heldout = {r["id"] for r in read(tmp_path / "out/heldout.jsonl")}
    assert train and heldout and not train & heldout
    assert {program_key(i) for i in train}.isdisjoint({program_key(i) for i in heldout})
    assert heldout == {r["id"] for r in rows if split_of(program_key(r["id"]), 0.5) == "heldout"}


def _heldout_before_the_three_way_split(id, fraction):
    """The held-out rule as it was before SFT and RL were split apart (a frozen copy, so a change to the code under
    test cannot move both sides)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(id.encode("utf-8")).digest()[:8], "big") / 2 ** 64 < fraction


def test_three_way_split_by_hand_and_rejects_bad_fractions():
    # sha256(b"a") = ca978112ca1bbdca fac231b39a23dc4d ...: held out below 0.7914; bytes 8-16 give 0.9795...
    assert three_way_split("a", 0.80, 0.0) == "heldout"
    assert three_way_split("a", 0.79, 0.979) == "sft" and three_way_split("a", 0.79, 0.980) == "rl"
    assert three_way_split("a", 0.0, 1.0) == "rl" and three_way_split("a", 0.0, 0.0) == "sft"
    for bad in (-0.1, 1.5, "0.5", None, True):
        with pytest.raises(ValueError, match="rl_fraction"):
            three_way_split("a", 0.1, bad)
    with pytest.raises(ValueError, match="heldout_fraction"):
        three_way_split("a", 2, 0.5)
    assert params().build.rl_fraction == 0.5
    for bad in (-0.1, 1.5, "0.5", True):
        with pytest.raises(ValueError, match="build.rl_fraction"):
            params(rl_fraction=bad)


@pytest.mark.parametrize("heldout_fraction, rl_fraction", [(0.1, 0.5), (0.3, 0.25), (0.0, 0.8)])
def test_three_way_split_honours_the_fractions(heldout_fraction, rl_fraction):
    ids = [f"synth-1234-{k}" for k in range(5000)]
    splits = [three_way_split(i, heldout_fraction, rl_fraction) for i in ids]
    assert splits == [three_way_split(i, heldout_fraction, rl_fraction) for i in ids]     # deterministic
    n = len(ids)
    held = splits.count("heldout")
    kept = n - held
    # tolerance 5 binomial standard deviations, for each share
    assert abs(held / n - heldout_fraction) <= 5 * (heldout_fraction * (1 - heldout_fraction) / n) ** 0.5
    assert abs(splits.count("rl") / kept - rl_fraction) <= 5 * (rl_fraction * (1 - rl_fraction) / kept) ** 0.5
    assert splits.count("sft") + splits.count("rl") == kept


def test_heldout_membership_is_unchanged_by_the_three_way_split():
    ids = [f"synth-1234-{k}" for k in range(3000)] + [f"HumanEval/{k}" for k in range(164)]
    for heldout_fraction in (0.1, 0.25):
        before = {i for i in ids if _heldout_before_the_three_way_split(i, heldout_fraction)}
        assert before == {i for i in ids if split_of(i, heldout_fraction) == "heldout"}
        for rl_fraction in (0.0, 0.5, 1.0):
            assert before == {i for i in ids if three_way_split(i, heldout_fraction, rl_fraction) == "heldout"}
    # and the SFT/RL side of a kept program does not depend on heldout_fraction (an independent coordinate)
    side = {i: three_way_split(i, 0.0, 0.5) for i in ids}
    assert all(three_way_split(i, 0.25, 0.5) in ("heldout", side[i]) for i in ids)


def test_the_three_files_are_disjoint_by_program(tmp_path):
    rows = [trace_row(f"prog{k}#{j}") for k in range(60) for j in range(3)]
    write_jsonl(tmp_path / "traces.jsonl", rows)
    stats = build(tmp_path / "traces.jsonl", tmp_path / "out", params(heldout_fraction=0.2, rl_fraction=0.5))
    files = {name: read(tmp_path / f"out/{name}.jsonl") for name in SPLITS}
    programs = {name: {program_key(r["id"]) for r in rows} for name, rows in files.items()}
    assert all(programs.values())
    assert not programs["sft"] & programs["rl"] and not programs["sft"] & programs["heldout"] \
        and not programs["rl"] & programs["heldout"]
    for name in SPLITS:      # every input of a program in its split, both tasks of every input
        expected = {r["id"] for r in rows if three_way_split(program_key(r["id"]), 0.2, 0.5) == name}
        assert {r["id"] for r in files[name]} == expected
        assert sorted((r["id"], r["task"]) for r in files[name]) == sorted(
            (i, task) for i in expected for task in ("output", "input"))
    assert stats["split"]["programs"] == {name: len(programs[name]) for name in SPLITS}
    assert stats["split"]["rows"] == {name: len(programs[name]) * 3 for name in SPLITS}
    assert stats["files"] == {name: len(files[name]) for name in SPLITS}
    assert sum(stats["split"]["programs"].values()) == 60


# ------------------------------------------------------------------------------------------- decontamination

SAMPLE_0_RENAMED = '''def f(values):
    # a comment, and other quotes, do not hide a copy
    result = []
    for item in values:
        result.append((values.count(item), item))
    result.sort(reverse=True)
    return result
'''

SAMPLE_0_AS_HELPER = '''def count_pairs(values):
    result = []
    for item in values:
        result.append((values.count(item), item))
    result.sort(reverse=True)
    return result

def f(xs, k):
    pairs = count_pairs(xs)
    return pairs[:k] + [(0, len(xs))]
'''


def test_normalization_by_hand():
    assert code_tokens("x = 'a'  # note\n") == [("x", True), ("=", False), ("'a'", False), ("\n", False)]
    assert code_tokens('y = "a"') == [("y", True), ("=", False), ("'a'", False), ("\n", False)]
    assert code_tokens("n = len(s.upper())")[2:5] == [("len", False), ("(", False), ("s", True)]
    assert code_tokens("s.upper")[2] == ("upper", False)  # attribute names stay
    # renaming is consistent within an n-gram: x = x + y and a = a + b agree, x = y + z does not
    assert ngrams(code_tokens("x = x + y"), 6) == ngrams(code_tokens("a = a + b"), 6) == [(0, "=", 0, "+", 1, "\n")]
    assert ngrams(code_tokens("x = y + z"), 6) == [(0, "=", 1, "+", 2, "\n")]
    assert ngrams(code_tokens("x = y + z"), 7) == []  # shorter than n: no n-gram, so it can never match
    with pytest.raises(ValueError, match="does not tokenize"):
        code_tokens("def f(:\n  '''")


def test_planted_benchmark_programs_are_dropped_and_named():
    synth = [r for r in itertools.islice(synth_candidates(1234), 60) if static_filter(r) is None][:40]
    planted = [
        {"id": "verbatim", "code": cruxeval("sample_0")["code"]},
        {"id": "renamed", "code": SAMPLE_0_RENAMED},
        {"id": "helper", "code": SAMPLE_0_AS_HELPER},
        {"id": "reval", "code": json.loads(BENCHMARKS["reval"].read_text().splitlines()[0])["code"]},
    ]
    rows = synth[:20] + planted + synth[20:]
    kept, report = decontaminate(rows, BENCHMARKS)
    assert kept == synth
    assert report["dropped"] == 4 and report["rows"] == 44
    assert report["benchmarks"]["cruxeval"]["dropped"] == 3 and report["benchmarks"]["reval"]["dropped"] == 1
    assert report["benchmarks"]["cruxeval"]["programs"] == 800 and report["benchmarks"]["reval"]["programs"] == 154
    matches = {d["id"]: d["matches"] for d in report["dropped_rows"]}
    assert [d["id"] for d in report["dropped_rows"]] == ["verbatim", "renamed", "helper", "reval"]
    for row_id in ("verbatim", "renamed", "helper"):
        assert [(m["benchmark"], m["benchmark_id"], m["coverage"]) for m in matches[row_id]] == \
               [("cruxeval", "sample_0", 1.0)]
    assert matches["renamed"][0]["ngram"] == "def f ( values ) : \n result = ["
    assert [(m["benchmark"], m["benchmark_id"]) for m in matches["reval"]] == [("reval", "DREval/0")]


def test_common_idioms_alone_are_kept():
    idioms = {"id": "idioms", "code": (
        "def f(text, nums):\n    out = []\n    for i in range(len(nums)):\n        out.append(nums[i])\n"
        "    text = text.rstrip('x')\n    return text[::-1] + str(len(out))\n")}
    kept, report = decontaminate([idioms], BENCHMARKS)
    assert kept == [idioms] and report["dropped"] == 0


def test_coverage_threshold_and_errors(tmp_path):
    bench = tmp_path / "bench.jsonl"
    write_jsonl(bench, [{"id": "b0", "code": "def g(a):\n    b = a * 2\n    c = b + 3\n    return c - a\n"}])
    half = {"id": "half", "code": "def h(x):\n    y = x * 2\n    z = y + 3\n    return 7\n"}
    kept, report = decontaminate([half], {"tiny": bench}, n=5, min_coverage=0.5)
    assert kept == [] and report["dropped_rows"][0]["matches"][0]["benchmark_id"] == "b0"
    kept, report = decontaminate([half], {"tiny": bench}, n=5, min_coverage=0.9)
    assert kept == [half] and report["benchmarks"]["tiny"]["dropped"] == 0
    with pytest.raises(FileNotFoundError, match="no such file"):
        decontaminate([half], {"lcb": tmp_path / "missing.jsonl"})
    with pytest.raises(ValueError, match="min_coverage"):
        decontaminate([half], {"tiny": bench}, min_coverage=0)
    with pytest.raises(ValueError, match="row 'bad'"):
        decontaminate([{"id": "bad", "code": "def f(:\n  '''"}], {"tiny": bench}, n=5)


def test_build_drops_contaminated_rows_including_lcb(tmp_path):
    lcb = tmp_path / "lcb.jsonl"
    lcb_code = ("def distinctDifferenceArray(nums):\n    n = len(nums)\n    ans = []\n    for i in range(n):\n"
                "        ans.append(len(set(nums[:i + 1])) - len(set(nums[i + 1:])))\n    return ans\n")
    write_jsonl(lcb, [{"id": "sample_0", "code": lcb_code}])
    crux = cruxeval("sample_0")
    rows = [trace_row("clean"), trace_row("crux", code=crux["code"]),
            trace_row("lcb", code=lcb_code.replace("distinctDifferenceArray", "f").replace("ans", "res"))]
    write_jsonl(tmp_path / "traces.jsonl", rows)
    stats = build(tmp_path / "traces.jsonl", tmp_path / "out",
                          params(heldout_fraction=0.0, rl_fraction=0.0, lcb_path=str(lcb)))
    assert stats["rows_out"]["contaminated"] == 2 and stats["rows_kept"] == 1
    report = json.loads((tmp_path / "out/decontamination.json").read_text())
    assert {name: b["dropped"] for name, b in report["benchmarks"].items()} == \
           {"cruxeval": 1, "livecodebench": 1, "reval": 0}
    assert {r["id"] for r in read(tmp_path / "out/sft.jsonl")} == {"clean"}


# ------------------------------------------------------------------------------------ determinism, CLI, real data

def test_same_input_gives_byte_identical_files(tmp_path):
    rows = [trace_row(f"p{k}", trace=[f"y: {k}", "return_val: 2"]) for k in range(30)]
    write_jsonl(tmp_path / "traces.jsonl", rows)
    for out in ("a", "b"):
        build(tmp_path / "traces.jsonl", tmp_path / out, params(heldout_fraction=0.3))
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_cli_exit_codes_and_files(tmp_path):
    write_jsonl(tmp_path / "traces.jsonl", [trace_row("p1"), trace_row("p2"), trace_row("p3")])
    assert [three_way_split(i, 0.0, 0.5) for i in ("p1", "p2", "p3")] == ["sft", "sft", "rl"]
    runner = CliRunner()
    result = runner.invoke(app, ["build", str(tmp_path / "traces.jsonl"), "-o", str(tmp_path / "out"),
                                 "--heldout-fraction", "0"])
    assert result.exit_code == 0, result.output
    assert "3 trace rows -> 3 kept; sft 4, rl 2, heldout 0" in result.output
    assert all((tmp_path / "out" / name).is_file() for name in FILES)
    result = runner.invoke(app, ["build", str(tmp_path / "traces.jsonl"), "-o", str(tmp_path / "all"),
                                 "--heldout-fraction", "1", "--no-input-task"])
    assert result.exit_code == 1 and "no training example" in result.output
    assert len(read(tmp_path / "all/heldout.jsonl")) == 3
    result = runner.invoke(app, ["build", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and "missing.jsonl" in result.output


def test_real_synthesized_corpus(tmp_path):
    from stepcode.data.traces import trace_rows

    p = params()
    programs = [r for r in itertools.islice(synth_candidates(99), 150) if static_filter(r) is None][:100]
    write_jsonl(tmp_path / "traces.jsonl", trace_rows(programs, p, workers=2))
    stats = build(tmp_path / "traces.jsonl", tmp_path / "out", p)
    assert stats["rows_in"] == 100
    assert stats["rows_kept"] >= 90, stats["rows_out"]
    assert sum(stats["anchors"].values()) == stats["rows_kept"]
    assert stats["terminal_only"] == stats["anchors"]["1"]
    split = stats["split"]
    assert sum(split["rows"].values()) == stats["rows_kept"] and sum(split["programs"].values()) == stats["rows_kept"]
    assert 0 < split["rows"]["heldout"] < 25 and split["rows"]["sft"] > 25 and split["rows"]["rl"] > 25
    assert stats["sources"] == {"synth": stats["rows_kept"]}
    assert stats["files"] == {name: sum(t[name] for t in stats["examples"].values()) for name in SPLITS}
    # every SFT target parses back to its row's gold trace and answer, with no format flag
    traced = {r["id"]: r for r in read(tmp_path / "traces.jsonl")}
    for row in read(tmp_path / "out/sft.jsonl"):
        parsed = parse_completion(row["completion"][0]["content"], task=row["task"])
        gold = traced[row["id"]]
        assert row["gold_trace"] == gold["trace"] and row["source"] == "synth"
        # the parser strips each print (the step reward compares stripped lines): "s: " for s == "" reads "s:"
        assert parsed.flags == frozenset() and parsed.prints == [line.strip() for line in gold["trace"]]
        assert parsed.answer == (gold["output"] if row["task"] == "output" else gold["input"])
