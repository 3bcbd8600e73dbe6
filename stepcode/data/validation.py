"""The data gate: one great-expectations suite over a trace table. Nothing trains on data that has not passed it.

    stepcode validate data/traces.jsonl --report reports/validate       # exit 0 = passed, 1 = failed, 2 = bad input
    from stepcode.data.validation import validate_traces, require_gate
    result = validate_traces("data/traces.jsonl", "reports/validate", load_params())
    print(result.describe())
    require_gate(result)             # a pipeline stops here: GateFailed names every failed expectation

It writes, under the report dir (passed or not):
    summary.json        success, GX statistics, one entry per expectation (counts, observed value, example ids)
    quarantine.jsonl    every row that broke an expectation, with `failed_expectations: [names]`
    gx/uncommitted/data_docs/local_site/index.html      GX Data Docs: static HTML, no server and no network needed
                                                        (stepcode.data.datadocs vendors its CSS/JS)

A row is quarantined for a column expectation when GX lists it as unexpected (including the rows a `mostly`
expectation tolerates: a non-literal output is flagged there even when the gate passes). A failed rate expectation
blames the rows that pull the rate the wrong way (non-ok rows for `ok_share`, ...). Table structure failures
(`table_not_empty`, `required_columns`) have no row to blame.

GX cannot look inside a list-typed cell, so `derive_columns` adds helper columns computed in pandas; every one of them
is a pure function of its row (documented in DERIVED_COLUMNS), and the expectations are written on them.
"""

from __future__ import annotations

import ast
import json
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stepcode.data.traces import STATUSES
from stepcode.errors import UserError

REQUIRED_COLUMNS = ("id", "code", "input", "entry_point", "instrumented_code", "trace", "output", "status", "reason")
STRING_COLUMNS = ("id", "code", "input", "entry_point", "status")
# NAME: value, where NAME may be dotted (`self.count: 3`); what the instrumenter's anchors print.
ANCHOR_LINE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*: ")
RETURN_LINE = r"^return_val: "
EXAMPLE_IDS = 5

DERIVED_COLUMNS = {
    "trace_is_list": "trace is a list whose items are all strings",
    "n_lines": "len(trace) when trace is a list, else null",
    "non_anchor_line": "the first string line of the trace that is not `NAME: value`, else null",
    "last_line": "the last line of the trace when it is a string, else null",
    "instrumented_compiles": "compile(instrumented_code) succeeds (compiling runs nothing)",
    "output_is_literal": "ast.literal_eval(output) succeeds",
    "is_ok": "1 when status == 'ok', else 0",
    "is_nondeterministic": "1 when status == 'nondeterministic', else 0",
}

SUITE_NAME = "trace_table"
DOCS_SITE = Path("gx") / "uncommitted" / "data_docs" / "local_site"   # under the report dir


class GateFailed(UserError):
    """The trace table failed the data gate; the message lists every failed expectation."""


@dataclass(frozen=True)
class ExpectationOutcome:
    name: str
    success: bool
    unexpected_count: int | None  # rows GX (or the rate's blame rule) found unexpected; None if not row-based
    example_ids: list = field(default_factory=list)  # up to EXAMPLE_IDS ids of those rows
    observed: Any = None  # the table-level value (a mean, the column list) where there is one
    error: str | None = None  # GX raised while evaluating (a missing column, say)

    def describe(self) -> str:
        parts = [f"{self.name}: {'passed' if self.success else 'FAILED'}"]
        if self.unexpected_count is not None:
            parts.append(f"{self.unexpected_count} unexpected")
        if self.observed is not None:
            parts.append(f"observed {self.observed}")
        if self.example_ids:
            parts.append(f"e.g. ids {self.example_ids}")
        if self.error:
            parts.append(f"error: {self.error}")
        return "; ".join(parts)


@dataclass(frozen=True)
class GateResult:
    success: bool
    n_rows: int
    failed: list[ExpectationOutcome]
    outcomes: list[ExpectationOutcome]  # every expectation, in suite order
    n_quarantined: int
    quarantine_path: Path
    report_path: Path  # the Data Docs index.html
    summary_path: Path

    def describe(self) -> str:
        head = (f"data gate {'PASSED' if self.success else 'FAILED'}: {self.n_rows} rows, "
                f"{len(self.outcomes) - len(self.failed)}/{len(self.outcomes)} expectations met, "
                f"{self.n_quarantined} rows quarantined ({self.quarantine_path})")
        return "\n".join([head] + [f"  {o.describe()}" for o in self.failed] + [f"  report: {self.report_path}"])


def require_gate(result: GateResult) -> None:
    """Stop a pipeline before training on data that failed the gate."""
    if not result.success:
        raise GateFailed("refusing to continue: the trace table failed validation\n" + result.describe())


# ------------------------------------------------------------------------------------------------ derived columns

def _is_str_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(x, str) for x in value)


def _first_non_anchor(trace) -> str | None:
    if not isinstance(trace, list):
        return None
    return next((x for x in trace if isinstance(x, str) and not ANCHOR_LINE.match(x)), None)


def _last_line(trace) -> str | None:
    return trace[-1] if isinstance(trace, list) and trace and isinstance(trace[-1], str) else None


def _compiles(source) -> bool:
    if not isinstance(source, str):
        return False
    try:
        compile(source, "<instrumented>", "exec")
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):  # ValueError: a NUL byte
        return False
    return True


def _is_literal(text) -> bool:
    if not isinstance(text, str):
        return False
    try:
        ast.literal_eval(text)
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
        return False
    return True


def derive_columns(rows: list[dict]):
    """The trace rows as a DataFrame (a RangeIndex: GX's unexpected indexes are row numbers) plus DERIVED_COLUMNS."""
    import pandas as pd

    df = pd.DataFrame(rows, index=pd.RangeIndex(len(rows)))
    traces = df["trace"] if "trace" in df else pd.Series([None] * len(df), dtype=object)
    status = df["status"] if "status" in df else pd.Series([None] * len(df), dtype=object)
    df["trace_is_list"] = [_is_str_list(t) for t in traces]
    # Int64 keeps a missing length null (so the range check leaves it to trace_is_list) instead of a float NaN.
    df["n_lines"] = pd.array([len(t) if isinstance(t, list) else None for t in traces], dtype="Int64")
    df["non_anchor_line"] = pd.Series([_first_non_anchor(t) for t in traces], dtype=object)
    df["last_line"] = pd.Series([_last_line(t) for t in traces], dtype=object)
    codes = df["instrumented_code"] if "instrumented_code" in df else [None] * len(df)
    df["instrumented_compiles"] = [_compiles(c) for c in codes]
    outputs = df["output"] if "output" in df else [None] * len(df)
    df["output_is_literal"] = [_is_literal(o) for o in outputs]
    df["is_ok"] = [int(s == "ok") for s in status]
    df["is_nondeterministic"] = [int(s == "nondeterministic") for s in status]
    return df


# ------------------------------------------------------------------------------------------------ the suite

def build_expectations(params) -> list:
    """The suite, in order: each expectation carries its name in `meta["name"]` and leads its description with it."""
    import great_expectations as gx
    from great_expectations.expectations.row_conditions import Column

    vp, E, max_lines = params.validate_, gx.expectations, params.trace.max_lines
    ok = Column("status") == "ok"

    def named(name: str, why: str, kind, **kwargs):
        return kind(**kwargs, meta={"name": name}, description=f"{name}: {why}")

    suite = [
        named("table_not_empty", "the table has at least one row", E.ExpectTableRowCountToBeBetween, min_value=1),
        named("required_columns", f"columns {', '.join(REQUIRED_COLUMNS)} exist", E.ExpectTableColumnsToMatchSet,
              column_set=list(REQUIRED_COLUMNS), exact_match=False),
    ]
    for col in STRING_COLUMNS:
        suite.append(named(f"{col}_not_null", f"every row has a {col}", E.ExpectColumnValuesToNotBeNull, column=col))
        suite.append(named(f"{col}_is_str", f"{col} is a string", E.ExpectColumnValuesToBeOfType, column=col,
                           type_="str"))
    suite += [
        named("trace_is_list_of_str", "trace is a list of strings (derived trace_is_list)",
              E.ExpectColumnValuesToBeInSet, column="trace_is_list", value_set=[True]),
        named("ids_unique", "no two rows share an id", E.ExpectColumnValuesToBeUnique, column="id"),
        named("status_known", "status is one of stepcode.data.traces.STATUSES", E.ExpectColumnValuesToBeInSet,
              column="status", value_set=sorted(STATUSES)),
        named("ok_trace_length", f"an ok row has 1..{max_lines} anchor lines (derived n_lines)",
              E.ExpectColumnValuesToBeBetween, column="n_lines", min_value=1, max_value=max_lines, row_condition=ok),
        named("ok_lines_are_anchors", "every line of an ok trace reads `NAME: value` (derived non_anchor_line)",
              E.ExpectColumnValuesToBeNull, column="non_anchor_line", row_condition=ok),
        named("ok_last_line_is_return", "an ok trace ends with `return_val: ` (derived last_line)",
              E.ExpectColumnValuesToMatchRegex, column="last_line", regex=RETURN_LINE, row_condition=ok),
        named("ok_instrumented_compiles", "an ok row's instrumented_code compiles (derived instrumented_compiles)",
              E.ExpectColumnValuesToBeInSet, column="instrumented_compiles", value_set=[True], row_condition=ok),
        named("ok_output_is_literal", f"at least {vp.min_literal_output_share:.0%} of ok outputs are Python literals "
              "(derived output_is_literal); the rest are flagged in the quarantine file",
              E.ExpectColumnValuesToBeInSet, column="output_is_literal", value_set=[True], row_condition=ok,
              mostly=vp.min_literal_output_share),
        named("code_input_unique", "no two rows share (code, input)", E.ExpectCompoundColumnsToBeUnique,
              column_list=["code", "input"]),
        named("ok_share", f"at least {vp.min_ok_share:.0%} of rows are ok (mean of derived is_ok)",
              E.ExpectColumnMeanToBeBetween, column="is_ok", min_value=vp.min_ok_share, max_value=1),
        named("nondeterministic_share", f"at most {vp.max_nondeterministic_share:.0%} of rows are nondeterministic "
              "(mean of derived is_nondeterministic)", E.ExpectColumnMeanToBeBetween, column="is_nondeterministic",
              min_value=0, max_value=vp.max_nondeterministic_share),
        named("ok_mean_anchors", f"ok rows average {vp.min_mean_anchors}..{vp.max_mean_anchors} anchor lines "
              "(mean of derived n_lines)", E.ExpectColumnMeanToBeBetween, column="n_lines",
              min_value=vp.min_mean_anchors, max_value=vp.max_mean_anchors, row_condition=ok),
    ]
    return suite


def _blame(name: str, df, observed, params):
    """Rows that pull a failed rate expectation the wrong way (a boolean mask), or None for other expectations."""
    vp, ok = params.validate_, df["is_ok"] == 1
    if name == "ok_share":
        return ~ok
    if name == "nondeterministic_share":
        return df["is_nondeterministic"] == 1
    if name == "ok_mean_anchors" and observed is not None:
        n = df["n_lines"].fillna(0)
        return ok & ((n < vp.min_mean_anchors) if observed < vp.min_mean_anchors else (n > vp.max_mean_anchors))
    return None


def _run_checkpoint(df, expectations, report_dir: Path, run_name: str):
    """Validate `df` with a GX file context under report_dir (which also renders the Data Docs, made to render
    offline: stepcode.data.datadocs); the suite result. `run_name` names the run in the Data Docs."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import ProgressBarsConfig

    from stepcode.data.datadocs import make_offline

    context = gx.get_context(mode="file", project_root_dir=str(report_dir))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # tqdm bars per metric drown the output
    # add_or_update: a second run into the same report dir replaces the definitions and adds to the docs' history.
    source = context.data_sources.add_or_update_pandas(name="traces")
    batch = source.add_dataframe_asset(name=SUITE_NAME).add_batch_definition_whole_dataframe("whole_table")
    suite = context.suites.add_or_update(gx.ExpectationSuite(name=SUITE_NAME, expectations=expectations))
    definition = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=SUITE_NAME, data=batch, suite=suite))
    checkpoint = context.checkpoints.add_or_update(gx.Checkpoint(
        name=SUITE_NAME, validation_definitions=[definition], actions=[UpdateDataDocsAction(name="data_docs")],
        result_format="COMPLETE"))  # COMPLETE: unexpected_index_list, which the quarantine needs
    result = checkpoint.run(batch_parameters={"dataframe": df}, run_id=RunIdentifier(run_name=run_name))
    make_offline(report_dir / DOCS_SITE, asset=f"{SUITE_NAME} ({run_name})")
    return next(iter(result.run_results.values()))


def _outcome(name: str, res, df, params) -> tuple[ExpectationOutcome, list[int]]:
    """One expectation's outcome and the row numbers it quarantines."""
    info = res.result or {}
    missing = ((info.get("details") or {}).get("mismatched") or {}).get("missing")  # required_columns' finding
    observed = {"missing": missing} if missing else _jsonable(info.get("observed_value"))
    if "unexpected_index_list" in info:  # a column expectation: GX lists the rows (COMPLETE result format)
        rows = sorted({int(i) for i in info["unexpected_index_list"] or []})
        count = len(rows)
    else:
        mask = None if res.success else _blame(name, df, observed, params)
        rows = [int(i) for i in df.index[mask]] if mask is not None else []
        count = len(rows) if mask is not None else None
    ids = []
    for i in rows if "id" in df else []:  # distinct ids in row order; a list would not be hashable, so no set
        if (row_id := _jsonable(df.at[i, "id"])) not in ids:
            ids.append(row_id)
    error = None if res.success else (res.exception_info or {}).get("exception_message")
    return ExpectationOutcome(name=name, success=bool(res.success), unexpected_count=count,
                              example_ids=ids[:EXAMPLE_IDS], observed=observed,
                              error=error), rows


def _jsonable(value):
    """A value as it should read in JSON: numpy scalars as Python ones, NaN as null, anything exotic as text."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return str(value)
    return value


def validate_traces(traces_path, report_dir, params) -> GateResult:
    """The `validate` stage: run the suite on a trace JSONL, write the report dir, return the outcome."""
    from stepcode.jsonl import read_jsonl, write_jsonl

    rows = list(read_jsonl(traces_path))  # CorpusError names file:line for a line that is not a JSON object
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    df = derive_columns(rows)
    with warnings.catch_warnings():
        # GX 1.24 imports the deprecated `sre_parse`/`sre_constants`: a warning about GX's own code, not about the
        # data, so only deprecations raised from GX modules are silenced.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"great_expectations\.")
        expectations = build_expectations(params)
        suite_result = _run_checkpoint(df, expectations, report_dir, run_name=Path(traces_path).name)

    by_name = {res.expectation_config.meta["name"]: res for res in suite_result.results}
    outcomes, reasons = [], [[] for _ in rows]
    for expectation in expectations:  # suite order; GX returns results grouped its own way
        name = expectation.meta["name"]
        outcome, bad_rows = _outcome(name, by_name[name], df, params)
        outcomes.append(outcome)
        for i in bad_rows:
            reasons[i].append(name)

    quarantine = [dict(row, failed_expectations=why) for row, why in zip(rows, reasons) if why]
    quarantine_path = report_dir / "quarantine.jsonl"
    write_jsonl(quarantine_path, quarantine)
    failed = [o for o in outcomes if not o.success]
    result = GateResult(success=not failed, n_rows=len(rows), failed=failed,
                        outcomes=outcomes, n_quarantined=len(quarantine), quarantine_path=quarantine_path,
                        report_path=report_dir / DOCS_SITE / "index.html",
                        summary_path=report_dir / "summary.json")
    summary = {"success": result.success, "n_rows": len(rows), "n_quarantined": len(quarantine),
               "statistics": {k: _jsonable(v) for k, v in suite_result.statistics.items()},
               "expectations": [asdict(o) for o in outcomes],
               # paths relative to this report's folder: the summary is tracked (git, dvc.lock), so it must read
               # the same wherever the project is checked out
               "quarantine": quarantine_path.name, "report": result.report_path.relative_to(report_dir).as_posix()}
    result.summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return result
