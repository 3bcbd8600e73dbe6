"""Ground-truth execution traces: instrument each program, run it twice in the sandbox, record what the anchors print.

    stepcode trace data/raw/programs.jsonl -o data/traces.jsonl          # the CLI: the stage, with its MLflow run
    from stepcode.data.traces import trace_file; trace_file("in.jsonl", "out.jsonl", load_params())   # compute only

This module computes and logs nothing to MLflow: the `trace` stage's lineage is `stepcode.pipeline.stages.trace`.
A trace row is the program row plus `instrumented_code` (the display source with `print(f'NAME: {NAME}')` anchors),
`trace` (the printed anchor lines, in order), `output` (repr of the entry point's return value), `status` and
`reason`. Ground truth is captured per anchor call inside the child (stepcode/sandbox/runners.py), never by splitting
stdout, so a value with a newline stays one line and the program's own output can never become an anchor.

Every program ends with exactly one status (no row is ever dropped):
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from typing import Iterable, Iterator

log = logging.getLogger(__name__)

STATUSES = {
    "ok": "traced; the two runs agree",
    "syntax_error": "the program does not parse",
    "unsupported": "the instrumenter cannot anchor it without changing its meaning (reason says why)",
    "runtime_error": "the program (or its input) raised; or an anchor's value could not be formatted",
    "timeout": "the wall-clock or CPU limit was hit",
    "memory": "the memory limit was hit",
    "output_limit": "too much output: the program's own prints, an anchor line, or the return value's repr",
    "killed": "the process died or exited without reporting (os._exit, a signal)",
    "nondeterministic": "the two runs (different PYTHONHASHSEED, fresh random state) printed different traces",
    "too_long": "more anchor lines than trace.max_lines",
    "unreproducible": "a printed value holds a memory address (`<... at 0x...>`), which differs between machines",
    "sandbox_error": "a failure of the engine itself, not of the program",
    "engine_error": "this stage's own code failed on the row (a bug of ours): reason is `TypeName: message`",
}
__doc__ += "\n".join(f"    {k:17s}{v}" for k, v in STATUSES.items()) + "\n"

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]{4,}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _first_difference(a: list[str], b: list[str]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"line {i + 1}: {x[:80]!r} vs {y[:80]!r}"
    return f"{len(a)} vs {len(b)} lines"


def trace_one(sandbox, row: dict, params) -> dict:
    """Instrument one program row, then run it twice on one sandbox slot. `params` is the full `Params`."""
    return trace_batch(sandbox, [row], params)[0]


def trace_batch(sandbox, rows: list[dict], params) -> list[dict]:
    """`trace_one` for several rows at once: one slot, one round trip per hash seed's server. Every row comes back
    with a status: an exception of ours on one row (instrumenting it, judging its runs) is that row's
    `engine_error`, never the batch's — a stage must not lose its rows to one program."""
    tp = params.trace
    outs = []
    for row in rows:
        out = dict(row, instrumented_code=None, trace=[], output=None, status="ok", reason=None)
        try:
            outs.append((out, _payload(out, tp)))
        except Exception as e:  # noqa: BLE001 — KeyboardInterrupt and SystemExit still stop the stage
            outs.append((_engine_error(out, e), None))
    todo = [(out, payload) for out, payload in outs if payload is not None]
    if todo:
        with sandbox.slot() as slot:
            runs = slot.run_many_each_seed("trace", [payload for _, payload in todo], tp.hash_seeds)
        for (out, _), (first, second) in zip(todo, runs):
            try:
                _judge(out, _checked_report(first, tp), _checked_report(second, tp), tp)
            except Exception as e:  # noqa: BLE001
                _engine_error(out, e)
    return [out for out, _ in outs]


def _engine_error(out: dict, e: Exception) -> dict:
    """`out` as the row our own code failed on (logged with its traceback: it is a bug to fix)."""
    log.warning("trace: row %r: %s", out.get("id"), type(e).__name__, exc_info=e)
    reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]   # one line
    out.update(trace=[], output=None, status="engine_error", reason=_escaped(reason))
    return out


def _payload(out: dict, tp) -> dict | None:
    """Instrument the row's program into `out`; the sandbox payload, or None when instrumenting already decided
    the status."""
    from stepcode.anchors import instrument

    entry_point, arguments = out.get("entry_point", "f"), out["input"]
    if not (isinstance(entry_point, str) and isinstance(arguments, str)):   # the sandbox takes text only
        raise TypeError(f"entry_point and input must be str, not {type(entry_point).__name__} and "
                        f"{type(arguments).__name__}")
    inst = instrument(out["code"])
    if inst.status != "ok":
        out.update(status=inst.status, reason=inst.reason)
        return None
    out["instrumented_code"] = inst.source
    return {"code": inst.code, "anchor_fn": inst.anchor_fn, "entry_point": entry_point, "input": arguments,
            "max_lines": tp.max_lines, "max_line_chars": tp.max_line_chars, "max_output_chars": tp.max_output_chars}


def _checked_report(report, tp) -> dict:
    """A sandbox report in the shape `_judge` reads: a known status, reason str or None, trace a list of str,
    output str (always when ok) or None, within the runner's caps — strings `_escaped`. The runner writes nothing
    else, but the program runs in its process and can reach its objects (sys._getframe, gc, a finaliser that runs
    after the report is built): a report of any other shape is the program's doing, and the row is `killed`."""
    why = _malformation(report, tp)
    if why:
        return {"status": "killed", "reason": f"the program tampered with its report: {why}", "trace": [],
                "output": None}
    output, reason = report.get("output"), report.get("reason")
    return {"status": report["status"], "reason": None if reason is None else _escaped(reason),
            "trace": [_escaped(line) for line in report.get("trace", [])],
            "output": None if output is None else _escaped(output)}


def _malformation(report, tp) -> str | None:
    """What is wrong with the shape of a sandbox report, or None (see `_checked_report`)."""
    if not isinstance(report, dict):
        return f"a {type(report).__name__}, not a dict"
    status, reason = report.get("status"), report.get("reason")
    trace, output = report.get("trace", []), report.get("output")
    if not (isinstance(status, str) and status in STATUSES):
        return f"unknown status {status!r:.80}"
    if not (reason is None or isinstance(reason, str)):
        return f"the reason is not a string ({type(reason).__name__})"
    if not isinstance(trace, list):
        return f"the trace is not a list ({type(trace).__name__})"
    odd = [type(line).__name__ for line in trace if not isinstance(line, str)]
    if odd:
        return f"the trace holds a non-string ({odd[0]})"
    if any(len(line) > tp.max_line_chars for line in trace):
        return f"a trace line is longer than {tp.max_line_chars} characters"
    if not (output is None or isinstance(output, str)) or (status == "ok" and output is None):
        return f"status {status!r} with an output of type {type(output).__name__}"
    if output is not None and len(output) > tp.max_output_chars:
        return f"the output is {len(output)} characters (max {tp.max_output_chars})"
    return None


def _escaped(text: str) -> str:
    """`text` with each lone surrogate (chr(0xD800): a program can print one) as its backslash escape `\\ud800`:
    UTF-8 cannot encode one, and pandas, great-expectations and tokenizers reject it. Costs nothing on ASCII."""
    if text.isascii() or not _SURROGATE.search(text):
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _judge(out: dict, first: dict, second: dict, tp) -> dict:
    """Fill `out` from the two runs (seed order; each `_checked_report`); the second is only looked at if the first
    is ok."""
    out.update(trace=first.get("trace", []), output=first.get("output"), status=first["status"],
               reason=first.get("reason"))
    if first["status"] != "ok":
        return out
    printed = out["trace"] + [out["output"]]
    if any(_ADDRESS.search(text) for text in printed):
        text = next(t for t in printed if _ADDRESS.search(t))
        out.update(status="unreproducible", reason=f"a printed value holds a memory address: {text[:120]!r}")
        return out
    if len(out["trace"]) > tp.max_lines:
        out.update(status="too_long", reason=f"{len(out['trace'])} anchor lines (max {tp.max_lines})")
        return out
    if (second["status"], second.get("trace"), second.get("output")) != ("ok", out["trace"], out["output"]):
        if second["status"] != "ok":
            why = f"second run: {second['status']} ({second.get('reason')})"
        elif second.get("trace") != out["trace"]:
            why = "traces differ at " + _first_difference(out["trace"], second["trace"])
        else:
            why = f"outputs differ: {out['output'][:80]!r} vs {second['output'][:80]!r}"
        out.update(status="nondeterministic", reason=why)
    return out


def trace_rows(rows: Iterable[dict], params, *, workers: int | None = None, sandbox=None,
               progress: bool = False, total: int | None = None,
               preload: tuple[str, ...] | None = None) -> Iterator[dict]:
    """Trace rows in parallel (sandbox slots, a batch of rows per round trip), yielding results in input order. A
    stream is consumed as it is traced (a bounded window in flight), never materialised."""
    from stepcode.sandbox.engine import Sandbox, preload_for

    own = sandbox is None
    if own:
        # A corpus in hand: its servers preload what its programs import, and nothing else (each module preloaded
        # makes every fork dearer). A stream: `preload` if the caller read it from the corpus, else the
        # general-purpose set.
        if preload is None and isinstance(rows, (list, tuple)):
            # a row without program text is not this loop's to fail on: it becomes its own engine_error
            preload = preload_for(r["code"] for r in rows if isinstance(r.get("code"), str))
        sandbox = Sandbox(params.sandbox, hash_seeds=params.trace.hash_seeds, workers=workers, preload=preload)
    batches = sandbox.map_batches(lambda batch: trace_batch(sandbox, batch, params), rows)
    bar = None
    try:
        results = batches
        if progress:
            from tqdm import tqdm

            results = bar = tqdm(batches, total=total, desc="tracing", unit="prog", dynamic_ncols=True)
        yield from results
    finally:
        if bar is not None:
            bar.close()     # before whatever stopped the stream is reported: the bar never follows an error line
        batches.close()   # first: its pool's threads stop (an interrupt lands here mid-run) before the servers go
        if own:
            sandbox.close()


def summarize(rows: Iterable[dict]) -> dict:
    return counts_summary(Counter(r["status"] for r in rows))


def counts_summary(counts: Counter) -> dict:
    return {"total": sum(counts.values()), "by_status": dict(sorted(counts.items(), key=lambda kv: -kv[1]))}


def write_summary(summary: dict, path) -> None:
    """The trace stage's DVC metric (metrics/trace.json): the counts only. It is tracked, so it must read the same for
    the same traces; timings vary run to run and go to MLflow."""
    import json

    from stepcode.jsonl import atomic_write_text

    counts = {"total": summary["total"], "by_status": summary["by_status"]}
    atomic_write_text(path, json.dumps(counts, indent=2) + "\n")


def corpus_files(path) -> list:
    """The JSONL files of a corpus: the file, or every `*.jsonl` in a directory (sorted). A missing input that DVC
    tracks (data/raw on a fresh clone) is pulled from the DVC remote first."""
    from pathlib import Path

    from stepcode.data.corpus import CorpusError
    from stepcode.dvcdata import ensure_present

    p = ensure_present(Path(path))
    files = sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    if not files:
        raise CorpusError(f"{p}: a directory with no *.jsonl file in it (give a JSONL file of program rows, or a "
                          "directory holding some)")
    return files


def iter_corpus(path) -> Iterator[dict]:
    """Program rows from a JSONL file or a directory of them (`corpus_files`), streamed; ids unique across files (the
    ids seen are all it keeps). A malformed row raises CorpusError naming file:line when the stream reaches it."""
    from stepcode.data.corpus import CorpusError, iter_programs

    seen: dict = {}
    for f in corpus_files(path):
        for row in iter_programs(f):
            if row["id"] in seen:
                raise CorpusError(f"{f}: id {row['id']!r} also appears in {seen[row['id']]}")
            seen[row["id"]] = f
            yield row


def read_corpus(path) -> list[dict]:
    """`iter_corpus` as a list."""
    return list(iter_corpus(path))


def scan_corpus(path) -> tuple[int, tuple[str, ...]]:
    """One streaming pass over a corpus before it is traced: every row checked (so a malformed corpus fails before a
    run starts), and what tracing needs up front without holding the rows: how many there are (the progress bar) and
    the modules their programs import (the sandbox's preload)."""
    from stepcode.sandbox.engine import preload_for

    n, codes = 0, []
    found: set[str] = set()
    for row in iter_corpus(path):
        n += 1
        codes.append(row["code"])
        if len(codes) == 1000:
            found.update(preload_for(codes))
            codes = []
    found.update(preload_for(codes))
    return n, tuple(sorted(found))


def open_corpus(in_path, *, skip_bad: bool = False, rejects_path=None):
    """The trace stage's input as (rows, total, preload): a stream of the corpus (a file or a directory of files)
    after `scan_corpus` has checked every row (a malformed row fails here, naming its line); or, with `skip_bad` (one
    file), the well-formed rows as a list, the malformed ones written to `rejects_path`."""
    from stepcode.data.corpus import read_programs

    if skip_bad:
        rows = read_programs(in_path, skip_bad=True, rejects_path=rejects_path)
        return rows, len(rows), None
    total, preload = scan_corpus(in_path)
    return iter_corpus(in_path), total, preload


def trace_to_file(rows: Iterable[dict], out_path, params, *, workers: int | None = None, progress: bool = True,
                  total: int | None = None, preload: tuple[str, ...] | None = None) -> dict:
    """Trace program rows into a trace table, streamed: a folder of part files (`out_path` without a `.jsonl` suffix;
    `trace.part_rows` rows each) or one JSONL file, written atomically either way. Memory does not grow with the rows:
    each is written as it comes back and only the counts are kept. Returns the summary: counts per status, seconds and
    programs per second."""
    from stepcode.jsonl import is_folder_path, write_jsonl, write_parts

    counts: Counter = Counter()

    def counted(traced: Iterable[dict]) -> Iterator[dict]:
        for row in traced:
            counts[row["status"]] += 1
            yield row

    if total is None and isinstance(rows, (list, tuple)):
        total = len(rows)
    start = time.perf_counter()
    stream = trace_rows(rows, params, workers=workers, progress=progress, total=total, preload=preload)
    try:
        if is_folder_path(out_path):
            write_parts(out_path, counted(stream), params.trace.part_rows)
        else:
            write_jsonl(out_path, counted(stream))
    finally:
        stream.close()      # a failed write stops the tracing (and its progress bar) now, not when collected
    elapsed = time.perf_counter() - start
    summary = counts_summary(counts)
    summary.update(seconds=round(elapsed, 2), programs_per_s=round(summary["total"] / elapsed, 1) if elapsed else None)
    return summary


def trace_file(in_path, out_path, params, *, workers: int | None = None, skip_bad: bool = False,
               rejects_path=None, progress: bool = True) -> dict:
    """Program JSONL (a file or a directory of files) in, a trace table out (`trace_to_file`). Returns the summary.
    Computes only: the `trace` stage with its MLflow lineage is `stepcode.pipeline.stages.trace`."""
    rows, total, preload = open_corpus(in_path, skip_bad=skip_bad, rejects_path=rejects_path)
    return trace_to_file(rows, out_path, params, workers=workers, progress=progress, total=total, preload=preload)
