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

Bounded memory: the table (one JSONL file or a folder of part files, `stepcode.jsonl.read_table`) is streamed, three
times, and never held whole: a scan (the row count, and each column's dtype as one DataFrame of the whole table would
have it: every chunk's frame gets the same, since GX's type checks go by dtype), the validation, the quarantine.
  - GX validates CHUNK_ROWS rows at a time: a DataFrame whose index is the rows' numbers, COMPLETE results.
  - A chunk cannot see a duplicate in another chunk, so the uniqueness expectations run on chunks of their columns'
    values, which a temporary SQLite file hands back sorted by a hash of the value: equal values share a chunk (rows
    with one value are never split, so a value repeated more than CHUNK_ROWS times makes a longer, narrow chunk).
  - Each expectation's chunk results are added up into the metrics GX computes on a whole table (row counts, missing
    and unexpected counts, the integer sum and count behind a mean), and the expectation's own `_validate` (GX's rule,
    `mostly` included) turns them into the whole table's result. That is what summary.json and the Data Docs (one
    page per run, GX's SUMMARY format: counts, percentages, the first PARTIAL unexpected values by row) show: the
    same verdicts, counts and observed values as one validation of the whole table (tests/test_validation_chunks.py).
  - The rows each expectation flags wait in the SQLite file until the last pass writes the quarantine, in row order.
Held in memory: one chunk and GX's results for it, and O(1) per expectation.
"""

from __future__ import annotations

import ast
import contextlib
import heapq
import json
import re
import sqlite3
import tempfile
import traceback
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from operator import itemgetter
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
CHUNK_ROWS = 10_000  # rows per GX validation: what the gate holds in memory at once (rows, DataFrame, GX results)
PARTIAL = 20       # unexpected values kept per expectation for the Data Docs (GX's SUMMARY partial_unexpected_count)
COUNTED = 1000     # distinct unexpected values counted per expectation for the Data Docs; past that, GX shows samples

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


def derive_columns(rows: list[dict], start: int = 0, dtypes: dict | None = None):
    """Trace rows as a DataFrame plus DERIVED_COLUMNS. Its index is the rows' numbers in the table (`start`, ...), so
    GX's unexpected indexes are row numbers. `dtypes` (a `TableScan`'s) gives the frame the table's columns, each
    with the dtype pandas would infer for the whole table, whatever this chunk holds: GX's type checks go by dtype."""
    import pandas as pd

    index = pd.RangeIndex(start, start + len(rows))
    df = pd.DataFrame(rows, index=index, columns=None if dtypes is None else list(dtypes))
    for col, dtype in (dtypes or {}).items():
        if df[col].dtype != dtype:
            df[col] = df[col].astype(dtype)
    nulls = pd.Series([None] * len(df), index=index, dtype=object)
    traces = df["trace"] if "trace" in df else nulls
    status = df["status"] if "status" in df else nulls
    df["trace_is_list"] = [_is_str_list(t) for t in traces]
    # Int64 keeps a missing length null (so the range check leaves it to trace_is_list) instead of a float NaN.
    df["n_lines"] = pd.array([len(t) if isinstance(t, list) else None for t in traces], dtype="Int64")
    df["non_anchor_line"] = pd.Series([_first_non_anchor(t) for t in traces], index=index, dtype=object)
    df["last_line"] = pd.Series([_last_line(t) for t in traces], index=index, dtype=object)
    codes = df["instrumented_code"] if "instrumented_code" in df else nulls
    df["instrumented_compiles"] = [_compiles(c) for c in codes]
    outputs = df["output"] if "output" in df else nulls
    df["output_is_literal"] = [_is_literal(o) for o in outputs]
    df["is_ok"] = [int(s == "ok") for s in status]
    df["is_nondeterministic"] = [int(s == "nondeterministic") for s in status]
    return df


@dataclass(frozen=True)
class TableScan:
    n_rows: int
    dtypes: dict  # column (in order of first appearance) -> the dtype pandas infers for it over the whole table


class _ColumnSketch:
    """What decides pandas' dtype inference for a column, in O(1): one value of each Python type seen (and the
    smallest and largest int: the range picks int64/uint64/object), whether a null was seen, and in how many rows."""

    def __init__(self):
        self.samples: dict[type, Any] = {}
        self.ints: list[int] = []
        self.has_null = False
        self.rows = 0

    def add(self, value) -> None:
        self.rows += 1
        if value is None:
            self.has_null = True
        elif type(value) is int:
            self.ints = [min(self.ints[0], value), max(self.ints[1], value)] if self.ints else [value, value]
        else:
            self.samples.setdefault(type(value), value)

    def dtype(self, col: str, n_rows: int):
        import pandas as pd

        values = [*self.samples.values(), *self.ints] + [None] * self.has_null
        rows = [{col: v} for v in values] + [{}] * (self.rows < n_rows)  # {}: a row without the key (NaN)
        return pd.DataFrame(rows, columns=[col])[col].dtype


def scan_table(path) -> TableScan:
    """One streamed pass over a table: its row count, and its columns with the dtypes that one DataFrame of the whole
    table would give them (every chunk frame is cast to these). Raises JsonlError (file:line) on a bad line."""
    from stepcode.jsonl import read_table

    sketches: dict[str, _ColumnSketch] = {}
    n_rows = 0
    for row in read_table(path):
        n_rows += 1
        for col, value in row.items():
            sketches.setdefault(col, _ColumnSketch()).add(value)
    return TableScan(n_rows=n_rows, dtypes={col: sk.dtype(col, n_rows) for col, sk in sketches.items()})


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


def _group_columns(expectation) -> list[str] | None:
    """The columns of a uniqueness expectation (rows compare with other rows), else None (rows stand alone)."""
    import great_expectations as gx

    if isinstance(expectation, gx.expectations.ExpectColumnValuesToBeUnique):
        return [expectation.column]
    if isinstance(expectation, gx.expectations.ExpectCompoundColumnsToBeUnique):
        return list(expectation.column_list)
    return None


def _blamed(name: str, row: dict, observed, params) -> bool | None:
    """Whether a row pulls a failed rate expectation the wrong way (non-ok rows for `ok_share`, ...); None for an
    expectation with no such rule. The same comparisons as the derived columns it reads (is_ok, n_lines)."""
    vp, ok = params.validate_, row.get("status") == "ok"
    if name == "ok_share":
        return not ok
    if name == "nondeterministic_share":
        return row.get("status") == "nondeterministic"
    if name == "ok_mean_anchors" and observed is not None:
        n = len(trace) if isinstance(trace := row.get("trace"), list) else 0
        return ok and ((n < vp.min_mean_anchors) if observed < vp.min_mean_anchors else (n > vp.max_mean_anchors))
    return None


def _mean_parts(expectation, df) -> tuple[int, int]:
    """The sum and count behind a column mean over one chunk (its row condition applied, nulls dropped): integers, so
    that the whole table's mean, sum / count, is exactly the float pandas computes from one frame."""
    import pandas as pd
    from great_expectations.expectations.row_conditions import Column

    values = df[expectation.column]
    if expectation.row_condition is not None:
        if expectation.row_condition != (Column("status") == "ok"):
            raise NotImplementedError(f"no chunked domain for row_condition {expectation.row_condition}")
        values = values[df["is_ok"] == 1]   # derived is_ok is exactly status == "ok"
    values = values.dropna()
    if len(values) and not pd.api.types.is_integer_dtype(values.dtype):  # a float sum would depend on the chunks
        raise NotImplementedError(f"no exact chunked mean of {expectation.column} ({values.dtype})")
    return int(values.sum()), len(values)


class _Merged:
    """One expectation's results over the chunks, added up into the metrics GX would compute on the whole table."""

    def __init__(self, expectation):
        self.expectation = expectation
        self.first = None   # the first chunk's result: its configuration, and the observation every chunk shares
        self.error = None   # the first chunk result in which GX raised
        self.is_map = False  # a column map expectation: GX listed the unexpected rows
        self.elements = self.missing = self.unexpected = self.rows = self.total = self.count = 0
        self.partial: list[tuple[int, Any]] = []  # (row, value): the first PARTIAL unexpected values by row
        self.counted: Counter | None = Counter()  # unexpected value -> rows; None past COUNTED values (or unhashable)

    def add(self, res, df) -> list[int]:
        """Add one chunk's result; the rows it lists as unexpected."""
        import great_expectations as gx

        if self.first is None:
            self.first = res
        if _raised(res):
            if self.error is None:
                self.error = res
            return []
        info, E = res.result, gx.expectations
        if "unexpected_index_list" in info:  # COMPLETE: every unexpected row of the chunk
            self.is_map = True
            self.elements += info["element_count"]
            self.missing += info.get("missing_count") or 0
            self.unexpected += info["unexpected_count"]
            rows = [int(i) for i in info["unexpected_index_list"]]
            values = info.get("unexpected_list") or [None] * len(rows)
            pairs = [*self.partial, *zip(rows, values, strict=False)]
            self.partial = heapq.nsmallest(PARTIAL, pairs, key=itemgetter(0))
            self._count(values)
            return rows
        if isinstance(self.expectation, E.ExpectTableRowCountToBeBetween):
            self.rows += info["observed_value"]
        elif isinstance(self.expectation, E.ExpectColumnMeanToBeBetween):
            total, count = _mean_parts(self.expectation, df)
            self.total, self.count = self.total + total, self.count + count
        elif not isinstance(self.expectation, (E.ExpectTableColumnsToMatchSet, E.ExpectColumnValuesToBeOfType)):
            raise NotImplementedError(f"cannot add up chunk results of {type(self.expectation).__name__}")
        return []

    def _count(self, values: list) -> None:
        if self.counted is None:
            return
        try:  # GX counts a multicolumn value (a dict) as the tuple of its values
            self.counted.update(tuple(v.values()) if isinstance(v, dict) else v for v in values)
        except TypeError:
            self.counted = None
            return
        if len(self.counted) > COUNTED:
            self.counted = None

    def result(self, frame_columns: dict, engine):
        """The whole table's result: GX's own rule (the expectation's `_validate`) applied to the added-up metrics
        (a SUMMARY result: counts, percentages, the first PARTIAL unexpected values)."""
        from great_expectations.core import ExpectationValidationResult
        from great_expectations.validator.exception_info import ExceptionInfo

        if self.error is not None:
            return self.error
        metric = getattr(self.expectation, "map_metric", None)
        metrics = {"table.columns": list(frame_columns),
                   "table.column_types": [{"name": c, "type": t} for c, t in frame_columns.items()]}
        if self.is_map:
            metrics |= {"table.row_count": self.elements, "column_values.nonnull.unexpected_count": self.missing,
                        f"{metric}.unexpected_count": self.unexpected,
                        f"{metric}.filtered_row_count": self.elements - self.missing,
                        f"{metric}.unexpected_values": [v for _, v in self.partial],
                        f"{metric}.unexpected_index_list": [i for i, _ in self.partial]}
        else:
            metrics |= {"table.row_count": self.rows, "column.mean": self.total / self.count if self.count else None}
        try:
            raw = self.expectation._validate(metrics, runtime_configuration={"result_format": "SUMMARY"},
                                             execution_engine=engine)
        except Exception as err:  # as GX's validator does: the expectation fails, with the error
            return ExpectationValidationResult(
                success=False, expectation_config=self.first.expectation_config,
                exception_info=ExceptionInfo(exception_traceback=traceback.format_exc(), exception_message=str(err)))
        counts = (raw.get("result") or {}).get("partial_unexpected_counts")
        if counts is not None and self.counted is not None:  # GX counted the PARTIAL values given; these are all
            with contextlib.suppress(TypeError):  # GX's order: most common first, then by value
                raw["result"]["partial_unexpected_counts"] = [
                    {"value": v, "count": n} for v, n in sorted(self.counted.most_common(PARTIAL),
                                                                key=lambda x: (-x[1], x[0]))]
        return ExpectationValidationResult(success=bool(raw["success"]), result=raw.get("result") or {},
                                           expectation_config=self.first.expectation_config,
                                           exception_info=self.first.exception_info, meta=self.first.meta)


class _Spill:
    """A temporary SQLite file: the rows each expectation flags, and the values of the uniqueness expectations'
    columns, handed back sorted by a hash of the value (equal values are adjacent). Disk, not memory."""

    def __init__(self, path: Path):
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE flags (row INTEGER, pos INTEGER)")
        self.db.execute("CREATE TABLE keys (pos INTEGER, key INTEGER, row INTEGER, value TEXT)")

    def flag(self, pos: int, rows: Iterable[int]) -> None:
        self.db.executemany("INSERT INTO flags VALUES (?, ?)", ((r, pos) for r in rows))

    def flags(self) -> Iterator[tuple[int, int]]:
        """(row, expectation position), by row."""
        return iter(self.db.execute("SELECT DISTINCT row, pos FROM flags ORDER BY row, pos"))

    def keep(self, pos: int, start: int, rows: list[dict], columns: list[str]) -> None:
        def key(i: int, values: list):
            if all(_is_null(v) for v in values):
                return i  # ignored by GX: any group will do
            return hash(tuple(None if _is_null(v) else _hashable(v) for v in values))

        self.db.executemany("INSERT INTO keys VALUES (?, ?, ?, ?)", (
            (pos, key(start + k, values), start + k, json.dumps(values))
            for k, values in enumerate([row.get(c) for c in columns] for row in rows)))

    def groups(self, pos: int, chunk_rows: int) -> Iterator[list[tuple[int, list]]]:
        """[(row, values)] chunks of about chunk_rows rows, never splitting rows whose values hash alike."""
        chunk, last = [], None
        for key, row, value in self.db.execute(
                "SELECT key, row, value FROM keys WHERE pos = ? ORDER BY key, row", (pos,)):
            if len(chunk) >= chunk_rows and key != last:
                yield chunk
                chunk = []
            chunk.append((row, json.loads(value)))
            last = key
        yield chunk  # at least one, perhaps empty: GX runs on an empty table too


def _group_frame(group: list[tuple[int, list]], columns: list[str], dtypes: dict):
    """A uniqueness expectation's chunk: the values of its columns (those the table has), indexed by row number."""
    import pandas as pd

    index = pd.Index([row for row, _ in group], dtype="int64")
    return pd.DataFrame({col: pd.Series([values[k] for _, values in group], index=index, dtype=object).astype(
        dtypes[col]) for k, col in enumerate(columns) if col in dtypes}, index=index)


def _raised(res) -> bool:
    """GX raised while evaluating this result (a missing column, say): it has no result to add up."""
    return bool((res.exception_info or {}).get("raised_exception")) or not res.result


def _is_null(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _hashable(value):
    """A hashable stand-in with Python's equality (lists as tuples, dicts as sorted items): equal values, one hash."""
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def _chunks(rows: Iterable[dict], size: int) -> Iterator[tuple[int, list[dict]]]:
    """(start, rows) of at most `size` rows; at least one chunk, perhaps empty."""
    chunk, start = [], 0
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield start, chunk
            chunk, start = [], start + size
    if chunk or start == 0:
        yield start, chunk


class _Gx:
    """A GX file context under report_dir: validates chunk frames (no store, no docs), then stores the merged result
    of the whole table and renders the Data Docs (made to render offline: stepcode.data.datadocs)."""

    def __init__(self, report_dir: Path, expectations: list):
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.report_dir = report_dir
        self.context = gx.get_context(mode="file", project_root_dir=str(report_dir))
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)  # tqdm bars per metric drown output
        # add_or_update: a second run into the same report dir replaces the definitions and adds to the docs' history.
        source = self.context.data_sources.add_or_update_pandas(name="traces")
        self.batches = source.add_dataframe_asset(name=SUITE_NAME).add_batch_definition_whole_dataframe("whole_table")
        self.context.suites.add_or_update(gx.ExpectationSuite(name=SUITE_NAME, expectations=expectations))

    def validate(self, df, expectations: list):
        """One chunk: GX's results in COMPLETE format (unexpected_index_list: the rows to quarantine)."""
        import great_expectations as gx

        suite = gx.ExpectationSuite(name=SUITE_NAME, expectations=expectations)
        return self.batches.get_batch(batch_parameters={"dataframe": df}).validate(suite, result_format="COMPLETE")

    def publish(self, results: list, meta: dict, batch_id: str, run_name: str):
        """Store the whole table's suite result as this run's (`meta`, `batch_id`: a chunk's) and rebuild the Data
        Docs; the stored result."""
        from great_expectations.constants import DATAFRAME_REPLACEMENT_STR
        from great_expectations.core import ExpectationSuiteValidationResult
        from great_expectations.core.run_identifier import RunIdentifier
        from great_expectations.data_context.types.resource_identifiers import (
            ExpectationSuiteIdentifier,
            ValidationResultIdentifier,
        )
        from great_expectations.validator.validation_statistics import calc_validation_statistics

        from stepcode.data.datadocs import make_offline

        stats = calc_validation_statistics(results)
        run_id = RunIdentifier(run_name=run_name)
        suite_result = ExpectationSuiteValidationResult(
            success=stats.success, results=results, suite_name=SUITE_NAME, batch_id=batch_id,
            statistics={k: getattr(stats, k) for k in ("evaluated_expectations", "successful_expectations",
                                                        "unsuccessful_expectations", "success_percent")},
            meta={**meta, "run_id": run_id, "validation_time": run_id.run_time,
                  "batch_parameters": {"dataframe": DATAFRAME_REPLACEMENT_STR}})
        suite_id = ExpectationSuiteIdentifier(name=SUITE_NAME)
        key = ValidationResultIdentifier(expectation_suite_identifier=suite_id, run_id=run_id,
                                         batch_identifier=batch_id)
        self.context.validation_results_store.store_validation_results(suite_result, key, suite_id)
        self.context.build_data_docs(resource_identifiers=[key, suite_id])  # what UpdateDataDocsAction does
        make_offline(self.report_dir / DOCS_SITE, asset=f"{SUITE_NAME} ({run_name})")
        return suite_result


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


def _cell(value, dtype):
    """`value` as a frame with this column dtype holds it (an int in a float64 column reads 1.0), as JSON."""
    import pandas as pd

    return _jsonable(pd.Series([value], dtype=dtype).iloc[0])


def validate_traces(traces_path, report_dir, params, *, chunk_rows: int = CHUNK_ROWS) -> GateResult:
    """The `validate` stage: run the suite on a trace table (a JSONL file or a folder of part files), `chunk_rows` rows
    at a time, write the report dir, return the outcome."""
    from stepcode.jsonl import read_table, write_jsonl

    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, not {chunk_rows}")
    scan = scan_table(traces_path)  # JsonlError names file:line for a line that is not a JSON object
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    quarantine_path = report_dir / "quarantine.jsonl"
    with warnings.catch_warnings(), tempfile.TemporaryDirectory(dir=report_dir, prefix=".gate-") as tmp:
        # GX 1.24 imports the deprecated `sre_parse`/`sre_constants`: a warning about GX's own code, not about the
        # data, so only deprecations raised from GX modules are silenced.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"great_expectations\.")
        expectations = build_expectations(params)
        names = [e.meta["name"] for e in expectations]
        spill = _Spill(Path(tmp) / "gate.sqlite")
        with contextlib.closing(spill.db):
            gx_ = _Gx(report_dir, build_expectations(params))  # its own copies: the stored suite takes them over
            merged, suite_result = _run_suite(traces_path, scan, expectations, gx_, spill, chunk_rows)
            results = suite_result.results
            observed = [_jsonable((res.result or {}).get("observed_value")) for res in results]
            blame = {pos: observed[pos] for pos, (name, res) in enumerate(zip(names, results))
                     if not res.success and _blamed(name, {}, observed[pos], params) is not None}
            errored = {pos for pos, res in enumerate(results) if _raised(res)}  # no row to blame
            quarantine = _Quarantine(names, blame, errored, scan.dtypes.get("id"), params)
            write_jsonl(quarantine_path, quarantine.rows(read_table(traces_path), spill.flags()))

    outcomes = []
    for pos, (name, res) in enumerate(zip(names, results)):
        info = res.result or {}
        missing = ((info.get("details") or {}).get("mismatched") or {}).get("missing")  # required_columns' finding
        row_based = (merged[pos].is_map and pos not in errored) or pos in blame
        outcomes.append(ExpectationOutcome(
            name=name, success=bool(res.success), unexpected_count=quarantine.counts[name] if row_based else None,
            example_ids=quarantine.examples[name], observed={"missing": missing} if missing else observed[pos],
            error=None if res.success else (res.exception_info or {}).get("exception_message")))
    failed = [o for o in outcomes if not o.success]
    result = GateResult(success=not failed, n_rows=scan.n_rows, failed=failed,
                        outcomes=outcomes, n_quarantined=quarantine.n_rows, quarantine_path=quarantine_path,
                        report_path=report_dir / DOCS_SITE / "index.html",
                        summary_path=report_dir / "summary.json")
    summary = {"success": result.success, "n_rows": scan.n_rows, "n_quarantined": quarantine.n_rows,
               "statistics": {k: _jsonable(v) for k, v in suite_result.statistics.items()},
               "expectations": [asdict(o) for o in outcomes],
               # paths relative to this report's folder: the summary is tracked (git, dvc.lock), so it must read
               # the same wherever the project is checked out
               "quarantine": quarantine_path.name, "report": result.report_path.relative_to(report_dir).as_posix()}
    result.summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return result


def _run_suite(traces_path, scan: TableScan, expectations: list, gx_: _Gx, spill: _Spill, chunk_rows: int):
    """Validate the table chunk by chunk (then the uniqueness expectations on chunks of rows sharing values), store
    the whole table's result and render the Data Docs: ([_Merged per expectation], the suite result)."""
    from great_expectations.execution_engine import PandasExecutionEngine

    from stepcode.jsonl import read_table

    names = [e.meta["name"] for e in expectations]
    merged = [_Merged(e) for e in expectations]
    grouped = {pos: cols for pos, e in enumerate(expectations) if (cols := _group_columns(e)) is not None}
    per_row = [e for pos, e in enumerate(expectations) if pos not in grouped]
    for start, rows in _chunks(read_table(traces_path), chunk_rows):
        df = derive_columns(rows, start, scan.dtypes)
        frame_columns = dict(df.dtypes)  # the same for every chunk
        chunk_result = gx_.validate(df, per_row)
        for res in chunk_result.results:  # GX returns results grouped its own way
            pos = names.index(res.expectation_config.meta["name"])
            spill.flag(pos, merged[pos].add(res, df))
        for pos, cols in grouped.items():
            spill.keep(pos, start, rows, cols)
        batch = (chunk_result.meta, chunk_result.batch_id)
        del rows, df, chunk_result  # before the next chunk is read: one chunk at a time
    for pos, cols in grouped.items():
        for group in spill.groups(pos, chunk_rows):
            df = _group_frame(group, cols, scan.dtypes)
            (res,) = gx_.validate(df, [expectations[pos]]).results
            spill.flag(pos, merged[pos].add(res, df))
            del group, df, res
    engine = PandasExecutionEngine()
    results = [m.result(frame_columns, engine) for m in merged]
    return merged, gx_.publish(results, *batch, run_name=Path(traces_path).name)


class _Quarantine:
    """The last pass: every row some expectation flagged (or a failed rate blames), with `failed_expectations` in
    suite order; it counts them per expectation and keeps the first EXAMPLE_IDS distinct ids of each."""

    def __init__(self, names: list[str], blame: dict, errored: set, id_dtype, params):
        self.names, self.blame, self.errored, self.id_dtype, self.params = names, blame, errored, id_dtype, params
        self.counts: Counter = Counter()
        self.examples: dict[str, list] = {name: [] for name in names}
        self.n_rows = 0

    def rows(self, table: Iterable[dict], flags: Iterator[tuple[int, int]]) -> Iterator[dict]:
        flag = next(flags, None)
        for i, row in enumerate(table):
            hit = set()
            while flag is not None and flag[0] == i:  # both in row order
                if flag[1] not in self.errored:  # GX raised for that expectation: it flags no row
                    hit.add(flag[1])
                flag = next(flags, None)
            hit |= {pos for pos, observed in self.blame.items()
                    if _blamed(self.names[pos], row, observed, self.params)}
            if hit:
                why = [self.names[pos] for pos in sorted(hit)]
                self._note(row, why)
                yield dict(row, failed_expectations=why)

    def _note(self, row: dict, why: list[str]) -> None:
        self.n_rows += 1
        for name in why:
            self.counts[name] += 1
            ids = self.examples[name]
            if self.id_dtype is not None and len(ids) < EXAMPLE_IDS:
                if (row_id := _cell(row.get("id"), self.id_dtype)) not in ids:  # a list id is not hashable
                    ids.append(row_id)
