"""The `build` stage: validated trace rows -> SFT, RL and held-out examples, decontaminated against the benchmarks.

    stepcode build data/traces.jsonl -o data/build                  # the CLI
    from stepcode.data.dataset import build_dataset; stats = build_dataset("data/traces.jsonl", "data/build", params,
                                                                            benchmarks={"cruxeval": "cruxeval.jsonl"})

Writes, in OUT_DIR:
- `sft.jsonl`: the SFT programs' examples, `{"id", "task", "messages": [system, user], "completion": [{"role":
  "assistant", "content": TARGET}], "source", "gold_trace"}` with TARGET from
  `stepcode.prompts.render_output_completion` / `render_input_completion`. The trainer (stepcode/training/sft.py
  `run_sft`) passes `messages` to TRL as "prompt": TRL's conversational prompt-completion format, which SFTTrainer
  trains on the completion only. Fed to SFTTrainer as is, a "messages" column would take TRL 1.16's
  language-modeling path, which never reads "completion".
- `rl.jsonl`: the RL programs' examples, `{"id", "task", "prompt", "gold_trace", "gold_output", "code",
  "instrumented_code", "input", "entry_point", "terminal_only", "source"}`; GRPOTrainer reads "prompt", the other
  columns reach the reward functions as keyword arguments. For the input task the prompt shows gold_output and the
  answer is an input.
- `heldout.jsonl`: the held-out programs' examples (both tasks) in the RL format. No program is in two of the three
  files.
- `stats.json`, `decontamination.json` (see `stepcode.data.decontam`).
`build_metrics(stats)` is the stage's DVC metric (`stepcode build --metrics metrics/build.json`): the counts
`dvc metrics diff` compares.

Routing, in this order (each row out is counted under its reason in stats["rows_out"]):
1. `status != "ok"` -> "status/<status>"; an ok row with more than `trace.max_lines` lines -> "too_long"; with no
   line at all -> "no_anchors". Rows with exactly one line are kept with `terminal_only: true` (the paper trains
   them with the terminal reward only).
2. A row that copies a benchmark program -> "contaminated".
3. Per task (output; input unless `build.input_task` is off) the renderers may refuse (ValueError); that example
   is counted in stats["examples_out"] ("input/no_arguments", "output/tag_in_text", ...), and a row with no
   example left -> "all_tasks_refused".
Split: three disjoint sets of programs, SFT, RL and held-out (the paper trains SFT and RL on separate sets), by
sha256 of the program key (the id up to any "#": `HumanEval/3#0` and `HumanEval/3#1` are one program with two
inputs, and must not straddle a split): `split_of` holds out a program when the digest's first 8 bytes, as a fraction,
fall below `build.heldout_fraction` (the same held-out programs as before the three-way split); `three_way_split`
sends a kept program to RL when the digest's next 8 bytes fall below `build.rl_fraction` (an independent coordinate:
changing heldout_fraction never moves a program between SFT and RL, only into or out of held-out), else to SFT.
SFT rows carry their program's `source` and `gold_trace` too (ignored by the trainer), so a consumer can filter them
like RL rows (stepcode/pipeline/study.py). stats["split"] counts programs and rows per split.
The trace table is one JSONL file or a folder of part files (`stepcode.jsonl.read_table`), streamed: the builder
holds a row at a time (and a bounded window for the sandbox), never the table (`build_dataset`).
Output is deterministic: same input, byte-identical files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

TASKS = ("output", "input")
_OK_ROW_TYPES = {"id": str, "code": str, "input": str, "entry_point": str, "instrumented_code": str,
                 "trace": list, "output": str}


def split_of(id: str, heldout_fraction: float) -> str:
    """"train" or "heldout" for `id`: the first 8 bytes of sha256(id) as a fraction of 2**64, against the share.

    sha256, not `hash()`: str hashes change with PYTHONHASHSEED, so the split would change between runs.
    """
    if not isinstance(id, str):
        raise ValueError(f"id must be a str, got {type(id).__name__}")
    _check_fraction("heldout_fraction", heldout_fraction)
    position = int.from_bytes(hashlib.sha256(id.encode("utf-8")).digest()[:8], "big") / 2 ** 64
    return "heldout" if position < heldout_fraction else "train"


SPLITS = ("sft", "rl", "heldout")


def _check_fraction(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def three_way_split(id: str, heldout_fraction: float, rl_fraction: float) -> str:
    """"sft", "rl" or "heldout" for `id` (a program key): "heldout" exactly when `split_of` says so; otherwise "rl"
    when bytes 8-16 of sha256(id), as a fraction of 2**64, fall below `rl_fraction` (the share of the kept programs
    that go to RL), else "sft". The two coordinates of one digest are independent, so the RL share among kept
    programs is rl_fraction whatever heldout_fraction is."""
    _check_fraction("rl_fraction", rl_fraction)
    if split_of(id, heldout_fraction) == "heldout":
        return "heldout"
    position = int.from_bytes(hashlib.sha256(id.encode("utf-8")).digest()[8:16], "big") / 2 ** 64
    return "rl" if position < rl_fraction else "sft"


def program_key(id: str) -> str:
    """The program an example belongs to: the id up to the first "#" (one program, several inputs)."""
    return id.split("#", 1)[0]


def _checked_row(row: dict, where: str) -> dict:
    """`row` if it is a well-formed trace row; a CorpusError naming `where` and the field if not."""
    from stepcode.data.corpus import CorpusError

    if not isinstance(row.get("id"), str) or not isinstance(row.get("status"), str):
        raise CorpusError(f"{where}: a trace row needs a string 'id' and 'status'")
    if row["status"] != "ok":
        return row
    for field, kind in _OK_ROW_TYPES.items():
        if not isinstance(row.get(field), kind):
            raise CorpusError(f"{where} (id {row['id']!r}): field {field!r} must be a {kind.__name__}, "
                              f"got {type(row.get(field)).__name__}")
    if not all(isinstance(line, str) for line in row["trace"]):
        raise CorpusError(f"{where} (id {row['id']!r}): every trace line must be a str")
    return row


def route(row: dict, max_lines: int) -> str | None:
    """Why a trace row cannot become examples (before decontamination and rendering), or None."""
    if row["status"] != "ok":
        return f"status/{row['status']}"
    if len(row["trace"]) > max_lines:
        return "too_long"
    if not row["trace"]:
        return "no_anchors"
    return None


def _no_reasoning(step: int, line: str, n: int) -> str:
    return ""


def _refusal_kind(task: str, row: dict, error: ValueError) -> str:
    """A countable name for a renderer's refusal (its message quotes the offending value, which does not count).

    Names use only characters MLflow accepts in metric names: the stage logs the stats as metrics.
    """
    message = str(error)
    if "contains the tag" in message:
        return f"{task}/tag_in_text"
    if task == "input" and not row["input"].strip():
        return "input/no_arguments"
    if "NAME: VALUE" in message:
        return f"{task}/bad_anchor_line"
    log.warning("row %r, %s task: %s", row["id"], task, message)
    return f"{task}/other"


def task_examples(row: dict, task: str, reasoning: str = "template",
                  path: list[str | None] | None = None) -> tuple[dict, dict]:
    """The (SFT, RL) examples of one routed trace row for `task`; ValueError if the renderer refuses the row.
    `reasoning`: "template", "none", or "execution" with `path` the row's per-anchor reasoning from
    `stepcode.data.reasoning.execution_paths` (an anchor without one, or no path at all, gets the template)."""
    from stepcode import prompts

    if reasoning == "execution":
        reason = prompts.path_reasoning(path or [])
    else:
        reason = prompts.default_reasoning if reasoning == "template" else _no_reasoning
    code, entry_point = row["instrumented_code"], row["entry_point"]
    if task == "output":
        messages = prompts.output_messages(code, row["input"], entry_point)
        target = prompts.render_output_completion(row["trace"], row["output"], reasoning=reason)
    elif task == "input":
        messages = prompts.input_messages(code, row["output"], entry_point)
        target = prompts.render_input_completion(row["input"], row["trace"], reasoning=reason)
    else:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    sft = {"id": row["id"], "task": task, "messages": messages,
           "completion": [{"role": "assistant", "content": target}]}
    rl = {"id": row["id"], "task": task, "prompt": messages, "gold_trace": row["trace"], "gold_output": row["output"],
          "code": row["code"], "instrumented_code": code, "input": row["input"], "entry_point": entry_point,
          "terminal_only": len(row["trace"]) == 1, "source": row.get("source") or "unknown"}
    return sft, rl


def _write_json(path: Path, obj) -> None:
    """Pretty JSON, atomically (stepcode.jsonl.atomic_write_text: a unique temp file, then os.replace)."""
    from stepcode.jsonl import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def build_dataset(traces_path, out_dir, params, *, benchmarks: Mapping[str, str | Path]) -> dict:
    """The `build` stage (see the module docstring). `params` is the full `Params`. Returns the stats.
    `traces_path`: a trace table, one JSONL file or a folder of part files (`stepcode.jsonl.read_table`).
    `benchmarks`: {label: program file} to decontaminate against; the benchmarks declare them (the pipeline layer
    passes `stepcode.evals.registry.decontamination_sources(params.build)`: the data layer does not import evals).

    Streams: the table is read twice, a row at a time, and never held. The first pass checks every row (so a bad row
    or a duplicate id fails the build before any sandboxed run or any output), routes and decontaminates it; the
    second renders the clean rows and writes each example to its split's file as it comes (each file atomically: it
    appears only complete). What the build keeps grows with the table only as small keys: the ids seen (first pass,
    for the duplicate check), the contaminated ids and the decontamination report's entries, and the program keys of
    the kept rows (per split, for stats["split"]["programs"]). Execution reasoning runs in the sandbox in batches
    as before, a bounded window of rows in flight (`_with_paths`)."""
    bp, max_lines = params.build, params.trace.max_lines
    tasks = TASKS if bp.input_task else ("output",)

    def style(row: dict) -> str:
        return bp.reasoning_by_source.get(row.get("source", ""), bp.reasoning)

    survey = _survey(traces_path, params, benchmarks, style)
    rows_out, contaminated = survey["rows_out"], survey["contaminated"]

    def clean_rows() -> Iterator[dict]:   # the second pass: the rows the first one kept, in table order
        from stepcode.jsonl import read_table

        for row in read_table(traces_path):
            if route(row, max_lines) is None and row["id"] not in contaminated:
                yield row

    reasoning_counts = None
    if survey["narrated"]:   # every such row's path from the sandbox, in batches, a bounded window at a time
        reasoning_counts = {"rows": 0, "anchors": 0, "rows_with_fallback": 0, "fallback": Counter()}
        pathed = _with_paths(clean_rows(), lambda row: style(row) == "execution", params, survey["preload"],
                             reasoning_counts)
    else:
        pathed = ((row, None) for row in clean_rows())

    examples_out: Counter = Counter()
    per_task = {task: Counter() for task in tasks}
    files: Counter = Counter()                                  # examples written per split
    splits: Counter = Counter()                                 # kept trace rows per split
    programs: dict[str, set] = {name: set() for name in SPLITS}
    anchors: Counter = Counter()                                # kept rows by trace length
    sources: Counter = Counter()                                # kept rows by source
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:   # on an error every temp file goes, and no output file is replaced
        from stepcode.jsonl import atomic_file, jsonl_line

        sinks = {name: stack.enter_context(atomic_file(out / f"{name}.jsonl")) for name in SPLITS}
        pathed = stack.enter_context(contextlib.closing(pathed))   # closed first: the sandbox stops before commit
        for row, path in pathed:
            split = three_way_split(program_key(row["id"]), bp.heldout_fraction, bp.rl_fraction)
            made = 0
            for task in tasks:
                try:
                    sft_row, rl_row = task_examples(row, task, style(row), path)
                except ValueError as e:
                    examples_out[_refusal_kind(task, row, e)] += 1
                    continue
                made += 1
                per_task[task][split] += 1
                if split == "sft":   # the RL row's metadata rides along, so SFT rows can be filtered like RL rows
                    example = {**sft_row, "source": rl_row["source"], "gold_trace": rl_row["gold_trace"]}
                else:
                    example = rl_row
                sinks[split].write(jsonl_line(example))
                files[split] += 1
            if made:
                splits[split] += 1
                programs[split].add(program_key(row["id"]))
                anchors[len(row["trace"])] += 1
                sources[row.get("source") or "unknown"] += 1
            else:
                rows_out["all_tasks_refused"] += 1

    stats = {
        "rows_in": survey["rows_in"],
        "rows_out": dict(sorted(rows_out.items())),
        "rows_kept": sum(splits.values()),
        "examples_out": dict(sorted(examples_out.items())),
        "examples": {task: {name: c[name] for name in SPLITS} for task, c in per_task.items()},
        "anchors": {str(n): anchors[n] for n in range(1, max_lines + 1)},
        "terminal_only": anchors[1],
        "split": {"heldout_fraction": bp.heldout_fraction, "rl_fraction": bp.rl_fraction,
                  "programs": {name: len(programs[name]) for name in SPLITS},
                  "rows": {name: splits[name] for name in SPLITS}},
        "files": {name: files[name] for name in SPLITS},
        "sources": dict(sorted(sources.items())),
    }
    if reasoning_counts is not None:   # execution reasoning: anchors explained, fallbacks to the template by reason
        fallback = reasoning_counts["fallback"]
        stats["reasoning"] = {"rows": reasoning_counts["rows"], "anchors": reasoning_counts["anchors"],
                              "explained": reasoning_counts["anchors"] - sum(fallback.values()),
                              "rows_with_fallback": reasoning_counts["rows_with_fallback"],
                              "fallback": dict(sorted(fallback.items()))}
    _write_json(out / "decontamination.json", survey["decontamination"])
    _write_json(out / "stats.json", stats)
    return stats


def _table_rows(path) -> Iterator[tuple[str, dict]]:
    """(where, row) for every row of a trace table, in `stepcode.jsonl.read_table`'s order; `where` names the file
    and the row's number in it for an error message (in a folder, the part file)."""
    from stepcode.jsonl import read_jsonl, table_files

    for f in table_files(path) if Path(path).is_dir() else [path]:
        for k, row in enumerate(read_jsonl(f), 1):
            yield f"{f}: row {k}", row


def _survey(traces_path, params, benchmarks: Mapping[str, str | Path], style) -> dict:
    """The build's first pass over the table: every row checked (ids unique), routed and decontaminated. Returns the
    counts ("rows_in", "rows_out" by reason, contaminated rows included), the decontamination report, the ids of
    the contaminated rows, and the number of clean rows with execution reasoning ("narrated") and the modules their
    programs import that the sandbox can preload (`stepcode.sandbox.engine.preload_for`)."""
    from stepcode.data.decontam import Decontaminator

    bp, max_lines = params.build, params.trace.max_lines
    check = Decontaminator(benchmarks, n=bp.decontam_n, min_coverage=bp.decontam_min_coverage)
    rows_in, rows_out, seen, contaminated = 0, Counter(), set(), set()
    narrated, preload = 0, set()
    for where, row in _table_rows(traces_path):
        _checked_row(row, where)
        rows_in += 1
        if row["id"] in seen:
            raise ValueError(f"{traces_path}: duplicate id {row['id']!r}")
        seen.add(row["id"])
        reason = route(row, max_lines)
        if reason:
            rows_out[reason] += 1
        elif not check.keep(row):
            contaminated.add(row["id"])
        elif style(row) == "execution":
            from stepcode.sandbox.engine import preload_for

            narrated += 1
            preload.update(preload_for([row["code"]]))
    report = check.report()
    rows_out["contaminated"] += report["dropped"]
    return {"rows_in": rows_in, "rows_out": rows_out, "decontamination": report, "contaminated": contaminated,
            "narrated": narrated, "preload": tuple(sorted(preload))}


def _chunks(rows: Iterable[dict], narrated, size: int, most: int) -> Iterator[list[dict]]:
    """Consecutive runs of `rows`, each closed when it holds `size` narrated rows or `most` rows in all: the batches
    of narrated rows are those of `Sandbox.map_batches` over the narrated rows alone, unless a long run of other
    rows cuts one short (so a chunk never holds more than `most` rows)."""
    chunk, n = [], 0
    for row in rows:
        chunk.append(row)
        n += bool(narrated(row))
        if n == size or len(chunk) == most:
            yield chunk
            chunk, n = [], 0
    if chunk:
        yield chunk


def _with_paths(rows: Iterable[dict], narrated, params, preload: tuple[str, ...], counts: dict
                ) -> Iterator[tuple[dict, list[str | None] | None]]:
    """(row, its execution reasoning per anchor) for each of `rows` in order; None for a row `narrated` rejects.
    `stepcode.data.reasoning.execution_paths` for a stream: one sandbox (as `reasoning.open_sandbox` opens it, with
    the `preload` read in the first pass), a batch of narrated rows per round trip (`reasoning.paths_batch`), a
    bounded window of chunks in flight (`Sandbox.map`), nothing kept per row but the counts, added to `counts`."""
    from stepcode.data.reasoning import RUNNER_MODULE, paths_batch, sandbox_params
    from stepcode.sandbox.engine import BATCH_SIZE, Sandbox

    sandbox = Sandbox(sandbox_params(params), hash_seeds=(params.trace.hash_seeds[0],), runners=(RUNNER_MODULE,),
                      preload=preload)

    def run(chunk: list[dict]) -> list[tuple[dict, tuple | None]]:
        todo = [row for row in chunk if narrated(row)]
        found = iter(paths_batch(sandbox, todo, params) if todo else ())
        return [(row, next(found) if narrated(row) else None) for row in chunk]

    try:
        results = sandbox.map(run, _chunks(rows, narrated, BATCH_SIZE, 4 * BATCH_SIZE))
        try:
            for chunk in results:
                for row, result in chunk:
                    if result is None:
                        yield row, None
                        continue
                    steps, fell = result
                    counts["rows"] += 1
                    counts["anchors"] += len(steps)
                    counts["rows_with_fallback"] += bool(fell)
                    counts["fallback"].update(fell)
                    yield row, steps
        finally:
            results.close()   # first: its pool's threads stop before the servers go
    finally:
        sandbox.close()


def build_metrics(stats: dict) -> dict:
    """Pure: the build stage's DVC metric from its stats: rows in, kept and dropped by reason (decontaminated rows
    are `dropped.contaminated`), examples per split and task, programs per split, terminal-only rows and kept rows
    per source. Counts only, so the same traces give the same file."""
    examples = stats["examples"]
    return {"rows": {"in": stats["rows_in"], "kept": stats["rows_kept"],
                     "decontaminated": stats["rows_out"].get("contaminated", 0)},
            "dropped": stats["rows_out"],
            "examples": {split: {task: examples[task][split] for task in examples} for split in SPLITS},
            "programs": stats["split"]["programs"],
            "terminal_only": stats["terminal_only"],
            "sources": stats["sources"]}


def write_metrics(stats: dict, path) -> None:
    """`build_metrics(stats)` as pretty JSON at `path`, atomically."""
    _write_json(Path(path), build_metrics(stats))
