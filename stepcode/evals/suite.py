"""`stepcode evaluate --suite paper`: every benchmark x task of the paper's Table 2 with both prompt styles, step
accuracy beside final accuracy for the instrumented tasks (its Table 6), one table, one MLflow run.

    from stepcode.pipeline.stages import evaluate_suite        # the stage: MLflow runs around what is here
    metrics = evaluate_suite(params, "paper", "eval/suite", backend=backend, model="models/run", limit=20)
    # eval/suite/table.md, table.html, metrics.json, run.json; generations/ and scored/ as `stepcode evaluate`
    # writes them (official formats); model_generations/ in REval's own result format

    from stepcode.evals.suite import run_benchmark, write_report, paper_table   # the parts, tracking-free

Rows (SUITES["paper"]): CRUXEval-I, CRUXEval-O, LiveCodeBench-I, LiveCodeBench-O, each with the benchmark's own
prompt ("official") and our instrumented one ("stepcode": anchored code, <print> lines, <answer>; the input tasks
commit to an <input>), and REval (coverage, state, path, output, Incremental Consistency) with its official direct
prompts. Decoding is whatever params.evaluate says (`--decoding paper`: greedy, one sample: the paper's protocol).

A benchmark whose data is absent (LiveCodeBench is an export the user supplies) is reported as skipped, with the
reason and the command that makes the file, and the rest runs. Where an instrumented trace is not clean the problem
is left out of the stepcode row and counted ("excluded").

Tracking: one parent run `suite <name>` with the headline metrics and the tables, one nested `evaluate` run per
benchmark with its metrics and files (generations in each benchmark's official format).
"""

from __future__ import annotations

import html
from pathlib import Path

SUITES: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    # benchmark, its tasks in the paper's column order
    "paper": (("cruxeval", ("input", "output")), ("lcb", ("input", "output")), ("reval", ())),
}
TASK_LETTER = {"input": "I", "output": "O"}
SHORT = {"lcb": "LCB"}              # column headers, as the paper writes them
REVAL_COLUMNS = (("coverage_acc", "Cov."), ("state_acc", "State"), ("path_acc", "Path"), ("output_acc", "Output"),
                 ("ic", "IC"))


def suite_benchmarks(name: str) -> list[str]:
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; expected one of {sorted(SUITES)}")
    return [b for b, _ in SUITES[name]]


def run_benchmark(bench_name: str, tasks: tuple[str, ...], params, out: Path, *, backend, limit: int | None,
                  sandbox) -> tuple[dict[str, float] | None, str | None]:
    """One benchmark of a suite, with every prompt style it has: (metrics, None), or (None, why) when its data is
    absent (the reason names the command that makes it)."""
    from stepcode.errors import MissingInput
    from stepcode.evals.generate import evaluate_benchmark
    from stepcode.evals.registry import get

    bench = get(bench_name)
    try:
        problems = [] if bench.has_own_evaluation() else bench.load_problems(params)[:limit]
    except MissingInput as e:
        return None, str(e).replace("\n", " ")
    metrics: dict[str, float] = {}
    for style in styles_of(bench):
        metrics.update(evaluate_benchmark(backend, bench, problems, params, out, prompt=style, sandbox=sandbox,
                                          limit=limit, tasks=tasks or None))
    return metrics, None


def styles_of(bench) -> tuple[str, ...]:
    return ("official", "stepcode") if bench.stepcode_tasks else ("official",)


def write_report(name: str, metrics: dict, skipped: dict, out: Path, *, params, model: str, limit: int | None,
                 backend) -> dict:
    """table.md, table.html, metrics.json and run.json under out; returns the run record."""
    from stepcode.evals import write_json
    from stepcode.evals.generate import run_record

    ep = params.evaluate
    tables = {"table2": paper_table(metrics, skipped, name), "table6": step_table(metrics, skipped, name)}
    about = describe(ep, limit)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(markdown(tables, skipped, about))
    (out / "table.html").write_text(to_html(tables, skipped, model, about))
    write_json(out / "metrics.json", metrics)
    record = {**run_record(model, suite_benchmarks(name), "official,stepcode", limit, backend, params),
              "suite": name, "skipped": skipped}
    write_json(out / "run.json", record)
    return record


def headline(metrics: dict, name: str = "paper") -> dict:
    """The numbers of the tables, for the parent run: pass@1 per benchmark task and prompt, step accuracy, REval."""
    keys = [k for b, t, _ in _task_columns(name)
            for k in (f"{b}_{t}_pass_at_1", f"stepcode_{b}_{t}_pass_at_1", f"stepcode_{b}_{t}_step_accuracy")]
    keys += [f"reval_{key}" for key, _ in REVAL_COLUMNS]
    return {k: metrics[k] for k in keys if k in metrics}


# --- tables (pure) ------------------------------------------------------------------------------------------------

def describe(ep, limit: int | None) -> str:
    """One line under the tables: how the numbers were made."""
    decoding = ("paper: one greedy completion per problem" if ep.greedy else
                f"cruxeval: {ep.n} samples at T {', '.join(f'{t:g}' for t in ep.temperatures)}")
    scope = f"the first {limit} problems of each benchmark (REval: programs)" if limit else "every problem"
    return (f"Decoding {decoding}, at most {ep.max_new_tokens} new tokens; {scope}. Percentages; \u2013 = not run. "
            "REval IC = Incremental Consistency; REval has only its official prompts.")


def _cell(value) -> str:
    return "–" if value is None else f"{value:.1f}"


def _task_columns(name: str) -> list[tuple[str, str, str]]:
    """(benchmark, task, header) of the suite's instrumented-capable columns."""
    from stepcode.evals.registry import get

    return [(b, t, f"{SHORT.get(b, get(b).title)}-{TASK_LETTER[t]}") for b, tasks in SUITES[name] for t in tasks]


def paper_table(metrics: dict, skipped: dict, name: str = "paper") -> dict:
    """Table 2's layout: one row per prompt style, one column per benchmark task, then REval's five. Cells are
    percentages; None = not run (skipped benchmark, or REval under the instrumented prompt, which it has not)."""
    columns = _task_columns(name)
    has_reval = any(b == "reval" for b, _ in SUITES[name])
    header = [h for _, _, h in columns] + ([f"REval {h}" for _, h in REVAL_COLUMNS] if has_reval else [])
    rows = []
    for style, label in (("official", "official prompt"), ("stepcode", "instrumented prompt (StepCode)")):
        prefix = "" if style == "official" else "stepcode_"
        cells = [metrics.get(f"{prefix}{b}_{t}_pass_at_1") for b, t, _ in columns]
        if has_reval:
            cells += [metrics.get(f"reval_{key}") if style == "official" else None for key, _ in REVAL_COLUMNS]
        rows.append((label, cells))
    return {"header": header, "rows": rows}


def step_table(metrics: dict, skipped: dict, name: str = "paper") -> dict:
    """Table 6's layout: per instrumented task, final-answer accuracy beside step accuracy, with the problem count and
    how many were left out because their trace was not clean."""
    rows = []
    for b, t, head in _task_columns(name):
        p = f"stepcode_{b}_{t}"
        if f"{p}_problems" not in metrics:
            rows.append((head, [None, None, None, None]))
            continue
        rows.append((head, [metrics.get(f"{p}_pass_at_1"), metrics.get(f"{p}_step_accuracy"),
                            metrics[f"{p}_problems"], metrics.get(f"{p}_excluded", 0)]))
    return {"header": ["final acc", "step acc", "problems", "excluded"], "rows": rows}


def _md(table: dict, first: str, counts: int = 0) -> list[str]:
    n = len(table["header"])
    lines = [f"| {first} | " + " | ".join(table["header"]) + " |", "|---" + "|---:" * n + "|"]
    for label, cells in table["rows"]:
        shown = [_cell(c) if i < n - counts else ("–" if c is None else str(int(c))) for i, c in enumerate(cells)]
        lines.append(f"| {label} | " + " | ".join(shown) + " |")
    return lines


def markdown(tables: dict, skipped: dict, about: str = "") -> str:
    out = ["## Table 2 layout: pass@1 / accuracy (%)", ""] + _md(tables["table2"], "prompt")
    out += ["", "## Table 6 layout: instrumented tasks, final vs step accuracy (%)", ""]
    out += _md(tables["table6"], "task", counts=2)
    if about:
        out += ["", about]
    if skipped:
        out += ["", "Skipped:"] + [f"- {b}: {why}" for b, why in skipped.items()]
    return "\n".join(out) + "\n"


def _html_table(table: dict, first: str, counts: int = 0) -> str:
    n = len(table["header"])
    head = "".join(f"<th>{html.escape(h)}</th>" for h in [first, *table["header"]])
    body = []
    for label, cells in table["rows"]:
        shown = [_cell(c) if i < n - counts else ("–" if c is None else str(int(c))) for i, c in enumerate(cells)]
        body.append(f"<tr><th>{html.escape(label)}</th>" + "".join(f"<td>{c}</td>" for c in shown) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def to_html(tables: dict, skipped: dict, model: str, about: str = "") -> str:
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:4px 10px}td{text-align:right}th{background:#f4f4f4;"
             "white-space:nowrap}p{color:#444}")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>StepCode suite: {html.escape(str(model))}"
             f"</title><style>{style}</style></head><body>",
             f"<h1>{html.escape(str(model))}</h1>", f"<p>{html.escape(about)}</p>" if about else "",
             "<h2>Table 2 layout: pass@1 / accuracy (%)</h2>", _html_table(tables["table2"], "prompt"),
             "<h2>Table 6 layout: instrumented tasks, final vs step accuracy (%)</h2>",
             _html_table(tables["table6"], "task", counts=2)]
    if skipped:
        parts.append("<h2>Skipped</h2><ul>" + "".join(f"<li><b>{html.escape(b)}</b>: {html.escape(w)}</li>"
                                                      for b, w in skipped.items()) + "</ul>")
    return "".join(parts) + "</body></html>\n"
