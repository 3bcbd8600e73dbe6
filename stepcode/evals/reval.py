"""REval (a.k.a. DREval; Chen et al., ICSE 2025): ground truth, official prompts, official scoring.

    from stepcode.config import load_params
    from stepcode.evals.reval import reval_truth, read_truths, reval_prompts, score_reval
    params = load_params()
    path = reval_truth(params)                      # built once in the sandbox, then cached (data/reval/truth-*.jsonl)
    truths = read_truths(path)                      # one row per (program, input) pair, with its status
    prompts = reval_prompts(truths)                 # [(task_id, "coverage"|"state"|"path"|"output", messages)]
    result = score_reval(truths, {task_id: model_text, ...}, params=params)
    result["metrics"]                               # coverage acc/f1, state, path, output acc, IC (0-100)
    REVAL                                           # the Benchmark the registry lists: `stepcode evaluate` runs it
                                                    # (reval_run.py); `stepcode score` does not (REVAL.instead)

Semantics are upstream's (r-eval/REval@2f148b9; see shared/notes/benchmarks.md section 3), quirks included:
- the truth comes from a `sys.settrace` tracer identical in effect to upstream `dynamics.py`
  (stepcode/evals/reval_dynamics.py), run in the sandbox on a pinned Python (truths differ across 3.10/3.11/3.12);
  pairs that cannot run here keep a status and a reason, appear in a report file beside the cache, and are left
  out of scoring with counts and reasons in the metrics (`excluded_pairs`, `excluded_tasks`, `excluded_reasons`) —
  never silently. With the project's dependencies installed (gensim, beautifulsoup4, lxml) the only such program is
  DREval/122 (KappaCalculator calls `np.mat`, which numpy 2 removed; upstream ran numpy 1): 3 pairs, 18 tasks.
- the prompts are the official direct templates (`prompts/direct_*.txt`), shown as the OpenAI path sends them
  (system message + user prompt; the prompt ends in an open `[ANSWER]`). The CoT templates are not available here.
- parsing is `evaluation.py`'s: coverage defaults to NO; a state answer is split at its last `;` (no `;` = wrong);
  a path answer is the first line of the answer, matched by stripped source text to *every* line with that text;
  an output answer is padded with the question's leading lines, rejected on the penalty patterns, then executed.
  Answers are only ever executed (state values are `eval`-ed upstream) inside the sandbox.
- Incremental Consistency: per atomic task, credit 1, 1/2, 1/4, 1/8 for a correct prefix C, CS, CSP, CSPO of
  (coverage, state, path, output) with every later task wrong; any other pattern 0. IC = 100 × mean.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import platform
import re
from collections import defaultdict
from pathlib import Path

from stepcode.errors import UserError
from stepcode.evals.benchmark import GENERATE, Benchmark, Prompt, Unsupported

TASK_TYPES = ("coverage", "state", "path", "output")
OFFICIAL_TEMPERATURE, OFFICIAL_REPEATS = 0.8, 5   # upstream's sampling: every question at T 0.8, the run 5 times
HUMANEVAL_END = 84             # programs 0-84 are HumanEval functions, 85-153 ClassEval classes (upstream dataset.py)
TRUTH_FORMAT = 1               # bump when the truth rows change shape: it is part of the cache key
SYSTEM_MESSAGE = "You are an expert at Python programming, code execution, test case generation, and fuzzing."
# Packages some programs import: their versions change truths (numpy 2 removed np.mat), so they key the cache.
KEY_PACKAGES = ("numpy", "scipy", "gensim", "beautifulsoup4", "lxml", "python-dateutil")
_VAR_NODES = (ast.Name, ast.Attribute, ast.Subscript, ast.Tuple, ast.Constant)
_PENALTY = ("assertTrue(True)", "assertFalse(False)", "assert True", "assert False", "assert True == True",
            "assert False == False")
_NO_SETUP = "Hook method for setting up the test fixture"   # unittest.TestCase.setUp's docstring


class RevalError(UserError, ValueError):
    """Bad REval data, a wrong environment, or generations that don't match the tasks; the message says which."""


# --- data -------------------------------------------------------------------------------------------------------------

def _read_jsonl(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise RevalError(f"{path}: no such file (REval data: DREval_data.jsonl and DREval_tasks.jsonl)") from None
    except json.JSONDecodeError as e:
        raise RevalError(f"{path}: not JSONL: {e}") from None


def load_reval(data_dir) -> list[dict]:
    """The 690 (program, input) pairs, validated: id, idx, input_idx, kind, entry_point, code, test, input,
    output_pred, tasks [{lineno, var}]. `input` is the argument tuple (HumanEval) or the test snippet (ClassEval)."""
    data_dir = Path(data_dir)
    programs = _read_jsonl(data_dir / "DREval_data.jsonl")
    specs = _read_jsonl(data_dir / "DREval_tasks.jsonl")
    if len(programs) != len(specs):
        raise RevalError(f"{data_dir}: {len(programs)} programs but {len(specs)} task lines")
    pairs = []
    for prog, spec in zip(programs, specs):
        idx = spec["idx"]
        if prog["task_id"] != spec["task_id"] or spec["task_id"] != f"DREval/{idx}":
            raise RevalError(f"{data_dir}: task line {spec['task_id']} does not match program {prog['task_id']}")
        kind = "humaneval" if idx <= HUMANEVAL_END else "classeval"
        n_lines = len(prog["code"].split("\n"))
        for entry in spec["tasks"]:
            k = entry["input_idx"]
            where = f"DREval/{idx} input {k}"
            if not 0 <= k < len(prog["inputs"]):
                raise RevalError(f"{where}: input_idx out of range ({len(prog['inputs'])} inputs)")
            if kind == "humaneval" and not prog["inputs"][k].endswith(",)"):
                raise RevalError(f"{where}: a HumanEval input must end with ',)' (the invocation drops it)")
            if "assert" not in entry["output_pred"]:
                raise RevalError(f"{where}: output_pred has no assert (upstream's penalty check needs one)")
            for t in entry["task"]:
                if not 1 <= t["lineno"] <= n_lines:
                    raise RevalError(f"{where}: line {t['lineno']} is outside the program ({n_lines} lines)")
                _check_var(t["var"], where)
            pairs.append({"id": f"DREval/{idx}/{k}", "idx": idx, "input_idx": k, "kind": kind,
                          "entry_point": prog["entry_point"], "code": prog["code"], "test": prog["test"],
                          "input": prog["inputs"][k], "output_pred": entry["output_pred"],
                          "tasks": [{"lineno": t["lineno"], "var": t["var"]} for t in entry["task"]]})
    return pairs


def _check_var(var: str, where: str) -> None:
    # Upstream would crash scoring any other top-level expression (its interpreter returns a ValueError object).
    try:
        body = ast.parse(var).body
    except SyntaxError:
        raise RevalError(f"{where}: state variable {var!r} does not parse") from None
    if len(body) != 1 or not isinstance(body[0], ast.Expr) or not isinstance(body[0].value, _VAR_NODES):
        raise RevalError(f"{where}: state variable {var!r} is not a name, attribute, subscript, tuple or constant")


# --- ground truth, cached ---------------------------------------------------------------------------------------------

def _versions() -> dict:
    from importlib import metadata

    found = {}
    for name in KEY_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def truth_key(data_dir, hash_seed: int) -> tuple[str, dict]:
    """(digest, environment): what the truth depends on — the data files, the tracer's source, the full Python
    version, the versions of the packages programs import, the hash seed and the row format."""
    from stepcode.evals import reval_dynamics

    env = {"python": platform.python_version(), "packages": _versions(), "hash_seed": hash_seed,
           "format": TRUTH_FORMAT}
    h = hashlib.sha256(json.dumps(env, sort_keys=True).encode())
    for path in (Path(data_dir) / "DREval_data.jsonl", Path(data_dir) / "DREval_tasks.jsonl",
                 Path(reval_dynamics.__file__)):
        h.update(path.read_bytes())
    return h.hexdigest(), env


# The sandbox servers REval needs: only its own runner, so the trace/check servers never load the tracer.
REVAL_RUNNERS = ("stepcode.evals.reval_dynamics",)


@contextlib.contextmanager
def reval_sandbox(params, given=None):
    """The caller's sandbox, or a new one with the project's limits except wall clock and CPU, which are stretched
    to a whole program job (up to 5 pairs of `reval_timeout_s` each); jobs pass their own, tighter, timeouts."""
    if given is not None:
        yield given
        return
    from stepcode.sandbox.engine import Sandbox

    ev = params.evaluate
    budget = 5 * ev.reval_timeout_s + 10
    limits = params.sandbox.model_copy(update={"timeout_s": budget, "cpu_s": max(params.sandbox.cpu_s, int(budget))})
    with Sandbox(limits, hash_seeds=(ev.hash_seed,), runners=REVAL_RUNNERS) as sb:
        yield sb


def _program_jobs(pairs: list[dict], mode: str, seconds: float) -> list[dict]:
    """One sandbox job per program, its pairs in upstream order (state a program keeps carries over as there)."""
    by_idx: dict[int, list[dict]] = defaultdict(list)
    for p in pairs:
        by_idx[p["idx"]].append(p)
    jobs = []
    for group in by_idx.values():
        first = group[0]
        jobs.append({"mode": mode, "idx": first["idx"], "kind": first["kind"], "code": first["code"],
                     "entry_point": first["entry_point"], "test": first["test"], "pair_timeout_s": seconds,
                     "pairs": [{"input_idx": p["input_idx"], "input": p["input"], "tasks": p["tasks"]} for p in group]})
    return jobs


def _run_jobs(sandbox, jobs: list[dict], timeout: float) -> list[dict]:
    return list(sandbox.map(lambda job: sandbox.run("reval", job, timeout=timeout * (len(job["pairs"]) or 1) + 10),
                            jobs))


def _pair_results(job: dict, result: dict) -> list[dict]:
    """Per-pair results of a program job; a job that failed as a whole gives its status to every pair."""
    if result.get("status") == "ok" and len(result.get("pairs", [])) == len(job["pairs"]):
        return result["pairs"]
    status = result.get("status") if result.get("status") != "ok" else "runner_error"
    return [{"status": status, "reason": result.get("reason") or "the runner returned no per-pair results"}
            for _ in job["pairs"]]


def compute_truths(pairs: list[dict], sandbox, seconds: float) -> list[dict]:
    """Truth rows for pair rows (as load_reval gives them): the pair plus status, reason, setup_source (ClassEval:
    the test class's setUp source, or None) and truth — per task covered, next_lines (1-indexed, -1 = none) and
    state (None for Nil, else up to 20 distinct values as {type, repr}); truth is None when the pair did not run."""
    jobs = _program_jobs(pairs, "truth", seconds)
    by_key = {}
    for job, result in zip(jobs, _run_jobs(sandbox, jobs, seconds)):
        for pair, res in zip(job["pairs"], _pair_results(job, result)):
            by_key[(job["idx"], pair["input_idx"])] = res
    rows = []
    for p in pairs:
        res = by_key[(p["idx"], p["input_idx"])]
        rows.append(dict(p, status=res["status"], reason=res["reason"], setup_source=res.get("setup_source"),
                         truth=res.get("tasks")))
    return rows


def reval_truth(params, *, sandbox=None) -> Path:
    """Build (once) and cache the ground truth of every pair; return the cache path. The file name carries the
    digest of everything the truth depends on, so a changed input makes a new file instead of a stale hit. A
    `.report.json` beside it records the environment and every excluded pair with its status and reason (and, per
    program, `excluded_reasons`)."""
    ev = params.evaluate
    pinned, running = ev.reval_python, ".".join(platform.python_version_tuple()[:2])
    if running != pinned:
        raise RevalError(f"REval truths are pinned to Python {pinned} (they differ across 3.10/3.11/3.12) but this "
                         f"is Python {platform.python_version()}; run under {pinned} or change "
                         f"evaluate.reval_python knowingly")
    digest, env = truth_key(ev.reval_dir, ev.hash_seed)
    path = Path(ev.reval_cache_dir) / f"truth-{digest[:16]}.jsonl"
    if path.exists() and report_path(path).exists():
        return path
    pairs = load_reval(ev.reval_dir)
    with reval_sandbox(params, sandbox) as sb:
        rows = compute_truths(pairs, sb, ev.reval_timeout_s)
    from stepcode.evals import write_json
    from stepcode.jsonl import write_jsonl

    write_json(report_path(path), _report(rows, digest, env))
    write_jsonl(path, rows)       # last: the pair of files counts as a cache hit only once both exist
    return path


def report_path(truth_path) -> Path:
    p = Path(truth_path)
    return p.with_name(p.name.removesuffix(".jsonl") + ".report.json")


def _report(rows: list[dict], digest: str, env: dict) -> dict:
    bad = [r for r in rows if r["status"] != "ok"]
    by_status: dict[str, int] = defaultdict(int)
    for r in bad:
        by_status[r["status"]] += 1
    n_tasks = sum(len(r["tasks"]) for r in rows)
    bad_tasks = sum(len(r["tasks"]) for r in bad)
    executed = sum(t["covered"] for r in rows if r["status"] == "ok" for t in r["truth"])
    return {"digest": digest, **env, "pairs": len(rows), "pairs_ok": len(rows) - len(bad), "pairs_excluded": len(bad),
            "tasks": n_tasks, "tasks_ok": n_tasks - bad_tasks, "tasks_excluded": bad_tasks,
            "lines_executed": executed, "excluded_by_status": dict(by_status),
            "excluded_reasons": excluded_reasons(rows),
            "excluded": [{"id": r["id"], "status": r["status"], "reason": r["reason"], "tasks": len(r["tasks"])}
                         for r in bad]}


def excluded_reasons(rows: list[dict]) -> dict[str, str]:
    """{"DREval/<idx>": "<status>: <reason>"} for every program with a pair whose truth is not ok (distinct
    reasons of its pairs joined by " | "), in data order: what a user reads next to the scores."""
    found: dict[str, list[str]] = {}
    for r in rows:
        if r["status"] != "ok":
            text = f"{r['status']}: {r['reason']}"
            reasons = found.setdefault(f"DREval/{r['idx']}", [])
            if text not in reasons:
                reasons.append(text)
    return {k: " | ".join(v) for k, v in found.items()}


def read_truths(path) -> list[dict]:
    rows = _read_jsonl(Path(path))
    if not rows or "truth" not in rows[0]:
        raise RevalError(f"{path}: not a REval truth file (build it with reval_truth)")
    return rows


# --- prompts ----------------------------------------------------------------------------------------------------------

_HEAD = ("You are given a Python function and a question on the function. Answer the question {how}, considering "
         "executing the provided code on the given input, even if the function is incorrect or incomplete. {extra}"
         "Do NOT output any extra information. Provide your answer in [ANSWER] and [/ANSWER] tags, following the "
         "examples.\n\n")
_F_STATE = ("def f(a, b):\n    ans = a + b\n    if ans > 0:\n        ans = int(a)\n    else:\n        ans = b\n"
            "    return ans\n")
_Q_COVERAGE = "[QUESTION]\nIs Line {line} ({codeline}) executed when {invocation_abbr} is called?\n[/QUESTION]\n"
_Q_STATE = ("[QUESTION]\nIs Line {line} ({codeline}) executed when {invocation_abbr} is called? If so, what is the "
            "value and type of the variable {var} after Line {line} is executed? If not, answer Nil.\n[/QUESTION]\n")
_Q_PATH = ("[QUESTION]\nIf the line `{codeline}` is executed when {invocation_abbr} is called, answer with the next "
           "line of code to be executed inside the function. Do NOT answer lines in the test code. If not or program "
           "terminates after this line, answer with -1.\n[/QUESTION]\n")


def _example(code: str, question: str, answer: str) -> str:
    return f"[PYTHON]\n{code}[/PYTHON]\n{question}[ANSWER]\n{answer}\n[/ANSWER]\n\n"


def _q(template: str, **kw) -> str:
    return template.format(**kw)


# The official direct templates (upstream prompts/direct_{task}.txt), assembled from their parts; each ends with the
# task's own [PYTHON] block and an open [ANSWER]. Byte-for-byte equality is pinned by tests/test_evals_reval.py.
TEMPLATES = {
    "coverage": _HEAD.format(how="with only YES or NO", extra="")
    + _example("def f(x):\n    if x > 2:\n        return x*2\n    else:\n        return x\nf(3)\n",
               _q(_Q_COVERAGE, line=3, codeline="        return x*2", invocation_abbr="f(3)"), "YES")
    + _example("class A:\n    def g(self, x):\n        if x > 2:\n            return self.h(x)\n        else:\n"
               "            return x\n\n    def h(self, y):\n        return y*2\n\na = A()\nassertEqual(a.g(1), 1)\n",
               _q(_Q_COVERAGE, line=9, codeline="        return y*2", invocation_abbr="the above test code"), "NO")
    + "[PYTHON]\n{code}\n{invocation}\n[/PYTHON]\n" + _Q_COVERAGE + "[ANSWER]",
    "state": _HEAD.format(how='in "value; type" format', extra="Make sure the value is a valid Python constant and "
                          "the type is a valid Python class name. There may be multiple answers, but you should only "
                          "output one. ")
    + _example(_F_STATE + "\nf(1.1, 2)\n", _q(_Q_STATE, line=4, codeline="        ans = int(a)",
                                             invocation_abbr="f(1.1, 2)", var="ans"), "1; int")
    + _example(_F_STATE + "\nf(1.1, -2)\n", _q(_Q_STATE, line=4, codeline="        ans = int(a)",
                                              invocation_abbr="f(1.1, -2)", var="ans"), "Nil")
    + _example("class A:\n    def __init__(self):\n        self.x = []\n    \n    def f(self, y):\n"
               "        self.x.append(y)\n        return y\n\na = A()\nassertEqual(a.f('a'), 'a')\n",
               _q(_Q_STATE, line=6, codeline="        self.x.append(y)", invocation_abbr="the above test code",
                  var="self.x"), "['a']; list")
    + "[PYTHON]\n{code}\n{invocation}\n[/PYTHON]\n" + _Q_STATE + "[ANSWER]",
    "path": _HEAD.format(how="with only one line of code", extra="")
    + _example(_F_STATE + "\nf(1.1, 2)\n", _q(_Q_PATH, codeline="        ans = int(a)", invocation_abbr="f(1.1, 2)"),
               "return ans")
    + _example(_F_STATE + "\nf(1.1, -2)\n", _q(_Q_PATH, codeline="        ans = int(a)",
                                              invocation_abbr="f(1.1, -2)"), "-1")
    + _example("class A:\n    def f(self, x):\n        z = self.g(x)\n        return z\n    \n    def g(self, y):\n"
               "        return y*2\n\na = A()\nassertEqual(a.f(3), 6)\n",
               _q(_Q_PATH, codeline="        z = self.g(x)", invocation_abbr="the above test code"), "return y*2")
    + "[PYTHON]\n{code}\n{invocation}\n[/PYTHON]\n" + _Q_PATH + "[ANSWER]",
    "output": "You are given a Python function and test code containing inputs to the function. Complete the assertion "
    "in the test code by just replacing the question marks with your answers, considering executing the provided code "
    "on the given input, even if the function is incorrect or incomplete. Do NOT output any extra information. Do NOT "
    "modify any other parts of the test code. Provide your answer as the completed code snippet in [ANSWER] and "
    "[/ANSWER] tags, following the examples.\n\n"
    "[PYTHON]\ndef g(s):\n    return s + \"a\"\n\nassert g(\"x9j\") == ??\n[/PYTHON]\n[ANSWER]\n"
    "assert g(\"x9j\") == \"x9ja\"\n[/ANSWER]\n\n"
    "[PYTHON]\nclass A:\n    def __init__(self, x):\n        self.x = x\n\n    def f(self, y):\n"
    "        return self.x + y\n\n# Test code starts here. Only write the completed test code in your answer.\n"
    "a = A(3)\nassertEqual(a.f(2), ??)\nassertEqual(a.f(4), ??)\n[/PYTHON]\n[ANSWER]\na = A(3)\n"
    "assertEqual(a.f(2), 5)\nassertEqual(a.f(4), 7)\n[/ANSWER]\n\n"
    "[PYTHON]\n{code}\n{invocation}\n[/PYTHON]\n[ANSWER]",
}


def task_id(row: dict, j: int | None, task_type: str) -> str:
    """`DREval/<idx>/<input_idx>/<j>/<type>` for the j-th atomic task of a pair; `.../output` for its output task."""
    return f"{row['id']}/output" if task_type == "output" else f"{row['id']}/{j}/{task_type}"


def _setup_prefix(row: dict, task_type: str) -> str:
    """The commented setUp shown before ClassEval test code. Upstream's quirk, kept: for coverage and state the
    first setUp body line is NOT commented out; for path and output every line is."""
    source = row.get("setup_source")
    if source is None:
        return ""
    head = "\n# setup code executed previously\n" + ("" if task_type in ("coverage", "state") else "# ")
    prefix = head + "\n# ".join(source.split("\n")[1:])
    return "" if _NO_SETUP in prefix else prefix


def prompt_text(row: dict, task_type: str, j: int | None = None) -> str:
    """The official direct prompt of one task (j indexes the pair's atomic tasks; None for output)."""
    code, human = row["code"], row["kind"] == "humaneval"
    if task_type == "output":
        if human:
            return TEMPLATES["output"].format(code=code, invocation="\n" + row["output_pred"])
        prelude = "\n# Test code starts here. Only write the completed test code in your answer.\n"
        return TEMPLATES["output"].format(code=code, invocation=_setup_prefix(row, "output") + prelude
                                          + row["output_pred"])
    t = row["tasks"][j]
    lines = code.split("\n")
    if human:
        invocation = f"{row['entry_point']}{row['input'][:-2]})"
        abbr = invocation
    else:
        invocation = _setup_prefix(row, task_type) + "\n" + row["input"].rstrip()
        abbr = "the above test code"
    if task_type == "path" and human:   # upstream numbers the lines for HumanEval path questions only
        code = "".join(f"{i + 1}\t{line}\n" for i, line in enumerate(lines))
    return TEMPLATES[task_type].format(code=code, invocation=invocation, invocation_abbr=abbr, line=t["lineno"],
                                       codeline=lines[t["lineno"] - 1], var=t["var"])


NO_COT = ("the official REval CoT templates (prompts/cot_*.txt) are not available offline; only the direct prompts "
          "are reproduced")


def reval_prompts(truths: list[dict], *, cot: bool = False) -> list[tuple[str, str, list[dict]]]:
    """(task_id, task_type, chat messages) for every task of every pair with an ok truth, in upstream order.
    The messages are what upstream sends OpenAI models; for a plain completion model use the user content."""
    if cot:
        raise RevalError(NO_COT)
    out = []
    for row in truths:
        if row["status"] != "ok":
            continue
        for task_type in ("coverage", "state", "path"):
            for j in range(len(row["tasks"])):
                out.append((task_id(row, j, task_type), task_type, _messages(prompt_text(row, task_type, j))))
        out.append((task_id(row, None, "output"), "output", _messages(prompt_text(row, "output"))))
    return out


def _messages(prompt: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM_MESSAGE}, {"role": "user", "content": prompt}]


# --- parsing (pure; upstream evaluation.py `_postprocess` of each task) -----------------------------------------------

def answer_span(text: str) -> str:
    """The text after `[ANSWER]` (stripped) and before `[/ANSWER` (also a truncated closing tag)."""
    i = text.find("[ANSWER]")
    if i != -1:
        text = text[i + 8:].strip()
    for tag in ("[/ANSWER]", "[/ANSWER"):
        i = text.find(tag)
        if i != -1:
            text = text[:i].strip()
    return text


def parse_coverage(response: str, cot: bool = False) -> bool:
    """YES -> True; NO, both, neither, empty or an unfinished CoT -> False (upstream's default)."""
    ans = response.upper().strip()
    if cot and "[/THOUGHT]" not in ans:
        return False
    head = answer_span(ans)[:3]
    return "YES" in head and "NO" not in head


def parse_state(response: str, cot: bool = False):
    """None (upstream `ERROR`: wrong), "Nil", or (value text, cleaned type name) — the value is `eval`-ed later, in
    the sandbox. Split at the LAST `;`, so values containing `;` survive."""
    if cot and "[/THOUGHT]" not in response:
        return None
    for bad, good in (("\u2018", "'"), ("\u2019", "'"), ("\u201c", '"'), ("\u201d", '"')):
        response = response.replace(bad, good)
    ans = answer_span(response.strip())
    if ans.capitalize() == "Nil" or ans == "[Nil]":
        return "Nil"
    cut = ans.rfind(";")
    if cut == -1:
        return None
    value, type_name = ans[:cut].strip(), ans[cut + 1:].strip().lower()
    if value.capitalize() == "Nil":
        return "Nil"
    for pattern in (r"<class '(.*)'>", r"(.*)\[.*\]"):     # <class 'x'> -> x; list[int] -> list
        m = re.match(pattern, type_name)
        if m:
            type_name = m.group(1)
    type_name = {"string": "str", "integer": "int"}.get(type_name, type_name)
    if "," in type_name or "tuple" in type_name:
        type_name = "tuple"
    return value, type_name


def parse_path(response: str, cot: bool = False):
    """-2 (wrong: empty, or an unfinished CoT), -1, or the first line of the answer, stripped. Upstream strips only
    after an `[ANSWER]` tag, so an untagged answer starting with a newline has an empty first line: -2."""
    if cot and "[/THOUGHT]" not in response:
        return -2
    first = answer_span(response).split("\n")[0].strip()
    if first == "":
        return -2
    return -1 if first == "-1" else first


def path_lines(answer, code: str) -> list[int]:
    """The 1-indexed lines a parsed path answer names: every line whose stripped text equals it ([-2] if none)."""
    if isinstance(answer, int):
        return [answer]
    hits = [i + 1 for i, line in enumerate(code.split("\n")) if line.strip() == answer]
    return hits or [-2]


def output_answer(response: str, output_pred: str, cot: bool = False) -> str:
    """The code upstream executes: the answer (or `assert False` for an unfinished CoT), padded in front with the
    question's first lines when it has fewer lines than the question."""
    if cot and "[/THOUGHT]" not in response:
        return "assert False"
    ans = answer_span(response)
    asked, given = output_pred.strip().split("\n"), ans.strip().split("\n")
    if len(given) >= len(asked):
        return ans
    return "\n".join(asked[:len(asked) - len(given)] + given)


def penalized(answer: str, output_pred: str) -> bool:
    """Upstream `penalty_pattern`: tautological asserts, or fewer `assert`s than the question has."""
    return any(p in answer for p in _PENALTY) or answer.count("assert") < output_pred.count("assert")


# --- metrics (pure) ---------------------------------------------------------------------------------------------------

def ic_credit(c: bool, s: bool, p: bool, o: bool) -> float:
    """Incremental Consistency credit of one atomic task: 1/2^(4-j) for a correct prefix of length j >= 1 of
    (coverage, state, path, output) with everything after it wrong; 0 otherwise."""
    for j, credit in ((4, 1.0), (3, 0.5), (2, 0.25), (1, 0.125)):
        flags = (c, s, p, o)
        if all(flags[:j]) and not any(flags[j:]):
            return credit
    return 0.0


def coverage_metrics(pairs: list[tuple[bool, bool]]) -> dict:
    """acc, precision, recall, F1 (positive = executed) over (predicted, actual); 0-100. A ratio with a zero
    denominator is 0 (upstream would divide by zero)."""
    tp = sum(p and a for p, a in pairs)
    fp = sum(p and not a for p, a in pairs)
    fn = sum(a and not p for p, a in pairs)
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    acc = sum(p == a for p, a in pairs) / len(pairs) if pairs else 0.0
    return {"acc": 100 * acc, "precision": 100 * prec, "recall": 100 * rec, "f1": 100 * f1}


def _pct(flags: list[bool]) -> float:
    return 100 * sum(flags) / len(flags) if flags else 0.0


# --- scoring ----------------------------------------------------------------------------------------------------------

def score_reval(truths, generations: dict[str, str], *, params=None, sandbox=None, cot: bool = False) -> dict:
    """Score one run: `generations` maps every task id of `reval_prompts(truths)` to the model's text. Pairs whose
    truth is not ok are left out: counted in metrics `excluded_pairs`/`excluded_tasks`/`excluded_programs`,
    explained per program in metrics `excluded_reasons` and per pair in `excluded`. Returns metrics (0-100) and the
    per-task table.
    State values and output answers are executed in the sandbox, as upstream executes them."""
    if isinstance(truths, (str, Path)):
        truths = read_truths(truths)
    if params is None:
        from stepcode.config import load_params
        params = load_params()
    rows = [r for r in truths if r["status"] == "ok"]
    _check_ids(rows, generations)
    table, per_pair = [], {}
    for r in rows:
        cov, path = [], []
        for j in range(len(r["tasks"])):
            truth = r["truth"][j]
            pred = parse_coverage(generations[task_id(r, j, "coverage")], cot)
            cov.append(pred == truth["covered"])
            table.append(_entry(r, j, "coverage", cov[-1], pred, truth["covered"]))
            lines = path_lines(parse_path(generations[task_id(r, j, "path")], cot), r["code"])
            path.append(any(x in truth["next_lines"] for x in lines))
            table.append(_entry(r, j, "path", path[-1], lines, truth["next_lines"]))
        per_pair[r["id"]] = {"coverage": cov, "path": path}
    judge_errors = _judge_in_sandbox(rows, generations, per_pair, table, params, sandbox, cot)
    flat = {k: [x for r in rows for x in per_pair[r["id"]][k]] for k in ("coverage", "state", "path")}
    outputs = [per_pair[r["id"]]["output"] for r in rows]
    ic = [ic_credit(c, s, p, per_pair[r["id"]]["output"]) for r in rows
          for c, s, p in zip(*(per_pair[r["id"]][k] for k in ("coverage", "state", "path")))]
    preds = [(e["response"], e["expected"]) for e in table if e["type"] == "coverage"]
    excluded = [r for r in truths if r["status"] != "ok"]
    reasons = excluded_reasons(truths)
    metrics = {"coverage": coverage_metrics(preds), "state": _pct(flat["state"]), "path": _pct(flat["path"]),
               "output": _pct(outputs), "ic": 100 * sum(ic) / len(ic) if ic else 0.0,
               "n_pairs": len(rows), "n_tasks": len(flat["coverage"]), "excluded_pairs": len(excluded),
               "excluded_tasks": sum(len(r["tasks"]) for r in excluded), "excluded_programs": len(reasons),
               "excluded_reasons": reasons, "judge_errors": len(judge_errors)}
    return {"metrics": metrics, "tasks": table, "judge_errors": judge_errors,
            "excluded": [{"id": r["id"], "status": r["status"], "reason": r["reason"], "tasks": len(r["tasks"])}
                         for r in excluded]}


def _check_ids(rows: list[dict], generations: dict) -> None:
    expected = {task_id(r, j, t) for r in rows for j in range(len(r["tasks"])) for t in ("coverage", "state", "path")}
    expected |= {task_id(r, None, "output") for r in rows}
    missing, unknown = expected - generations.keys(), generations.keys() - expected
    if missing or unknown:
        raise RevalError(f"generations do not match the tasks: {len(missing)} missing (e.g. {sorted(missing)[:3]}), "
                         f"{len(unknown)} unknown (e.g. {sorted(unknown)[:3]}); score a subset by passing only its "
                         f"truth rows")


def _entry(row: dict, j: int | None, task_type: str, correct: bool, response, expected) -> dict:
    t = row["tasks"][j] if j is not None else {"lineno": None, "var": None}
    return {"task_id": task_id(row, j, task_type), "type": task_type, "idx": row["idx"],
            "input_idx": row["input_idx"], "lineno": t["lineno"], "var": t["var"], "correct": bool(correct),
            "response": response, "expected": expected}


def _judge_in_sandbox(rows, generations, per_pair, table, params, sandbox, cot) -> list[dict]:
    """State answers (one job per program: re-trace, then compare with the live values) and output answers (one
    job per pair, unless penalized) run in the sandbox; results land in per_pair and table. Returns the pairs whose
    re-trace failed (their state answers count as wrong)."""
    ev = params.evaluate
    parsed = {r["id"]: [parse_state(generations[task_id(r, j, "state")], cot) for j in range(len(r["tasks"]))]
              for r in rows}
    state_rows = [dict(r, tasks=[dict(t, answer=list(a) if isinstance(a, tuple) else a)
                                 for t, a in zip(r["tasks"], parsed[r["id"]])]) for r in rows]
    state_jobs = _program_jobs(state_rows, "state", ev.reval_timeout_s)
    answers = {r["id"]: output_answer(generations[task_id(r, None, "output")], r["output_pred"], cot) for r in rows}
    out_jobs = [{"mode": "output", "idx": r["idx"], "kind": r["kind"], "code": r["code"],
                 "entry_point": r["entry_point"], "test": r["test"], "input_idx": r["input_idx"],
                 "answer": answers[r["id"]], "answer_timeout_s": ev.check_timeout_s, "pairs": []}
                for r in rows if not penalized(answers[r["id"]], r["output_pred"])]

    def run_all(sb):
        states = _run_jobs(sb, state_jobs, ev.reval_timeout_s)
        outs = list(sb.map(lambda job: sb.run("reval", job, timeout=ev.check_timeout_s + 5), out_jobs))
        return states, outs

    with reval_sandbox(params, sandbox) as sb:
        states, outs = run_all(sb)
    by_key, judge_errors = {}, []
    for job, result in zip(state_jobs, states):
        for pair, res in zip(job["pairs"], _pair_results(job, result)):
            by_key[(job["idx"], pair["input_idx"])] = res
    passed = {(job["idx"], job["input_idx"]): res.get("status") == "passed" for job, res in zip(out_jobs, outs)}
    for r in rows:
        res = by_key[(r["idx"], r["input_idx"])]
        if res["status"] != "ok":     # its truth ran, its re-run did not: the state answers count as wrong
            judge_errors.append({"id": r["id"], "status": res["status"], "reason": res["reason"]})
        flags = res.get("correct") or [False] * len(r["tasks"])
        per_pair[r["id"]]["state"] = [bool(f) for f in flags]
        for j, ok in enumerate(per_pair[r["id"]]["state"]):
            table.append(_entry(r, j, "state", ok, parsed[r["id"]][j], r["truth"][j]["state"]))
        per_pair[r["id"]]["output"] = passed.get((r["idx"], r["input_idx"]), False)
        table.append(_entry(r, None, "output", per_pair[r["id"]]["output"], answers[r["id"]], None))
    return judge_errors



# --- the registered benchmark -----------------------------------------------------------------------------------------

class REval(Benchmark):
    """REval as a Benchmark: problems are truth rows (one per (program, input) pair, built once in the sandbox and
    cached: `reval_truth`), each asking one question per atomic task and type plus one output question; prompts
    are the official direct ones (ids from `task_id`); scoring is `score_reval` on the raw texts. `stepcode
    evaluate` runs its own protocol (`run_evaluation`: stepcode/evals/reval_run.py); `stepcode score`, which scores
    one prediction per problem by a check program, does not apply: `instead` says what to run."""

    name, title, tasks = "reval", "REval", TASK_TYPES
    capabilities = frozenset({GENERATE})
    instead: str = ("it is scored by its own protocol: run `stepcode evaluate --benchmarks reval` (or --suite "
                    "paper), or from Python score_reval(truths, generations, params=params)")

    def load_problems(self, params) -> list[dict]:
        return read_truths(reval_truth(params))

    def official_prompts(self, problem: dict, task: str, cot: bool = False) -> list[tuple[str, Prompt]]:
        """One prompt per atomic task (coverage, state, path) or one (output); none for a pair whose truth is not
        ok (it is not scored). Same texts and ids as `reval_prompts`."""
        self.check_task(task)
        if cot:
            raise RevalError(NO_COT)
        if problem["status"] != "ok":
            return []
        out = []
        for j in [None] if task == "output" else range(len(problem["tasks"])):
            text = prompt_text(problem, task, j)
            out.append((task_id(problem, j, task), Prompt(_messages(text), text)))
        return out

    def extract(self, text: str, task: str, cot: bool = False) -> str:
        """The identity: `score_reval` parses the raw text itself, per task type (upstream evaluation.py)."""
        self.check_task(task)
        return text

    def scoring_adapter(self, task: str):
        self.check_task(task)
        raise Unsupported(f"REval is not scored by per-prediction check programs; {self.instead}")

    def decontamination_sources(self, build) -> dict[str, Path]:
        return {"reval": Path(build.benchmarks_dir) / "reval" / "DREval_data.jsonl"}

    def official_export(self, result: dict) -> dict:
        """`score_reval`'s result as is (metrics, per-task table, excluded pairs, judge errors)."""
        return dict(result)

    def run_evaluation(self, backend, params, runs, out_dir, *, prompt: str, limit: int | None,
                       sandbox) -> dict:
        """Generate and score every question of the first `limit` programs (stepcode/evals/reval_run.py), in a
        sandbox of its own: REval's runners and per-program time budget, not the check sandbox passed in. Greedy
        runs (--decoding paper) are one greedy answer per question; sampled ones (--decoding cruxeval) follow REval's
        own protocol instead: T 0.8, the whole run 5 times, metrics the mean of the 5."""
        from stepcode.evals.reval_run import evaluate_reval

        if prompt != "official":
            raise Unsupported("REval has only its official prompts; run it with --prompt official")
        if any(d.temperature > 0 for d in runs):    # sampled: REval's own protocol, not CRUXEval's 2 x 10 samples
            from stepcode.evals.generate import Decoding

            runs = [Decoding(f"t{OFFICIAL_TEMPERATURE:g}", OFFICIAL_TEMPERATURE, OFFICIAL_REPEATS)]
        return evaluate_reval(backend, params, runs, out_dir, limit=limit)

    def truth(self, params, *, sandbox=None) -> Path:
        return reval_truth(params, sandbox=sandbox)

    def score(self, truths, generations: dict[str, str], *, params=None, sandbox=None, cot: bool = False) -> dict:
        return score_reval(truths, generations, params=params, sandbox=sandbox, cot=cot)


REVAL = REval()
