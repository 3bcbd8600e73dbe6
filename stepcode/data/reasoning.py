"""Reasoning paths from execution (`build.reasoning: execution`): each anchor's <reasoning> derived from the program's
own sandboxed run, never guessed, so a path can never contradict its <print>.

    from stepcode.data.reasoning import execution_paths
    paths, stats = execution_paths(trace_rows, params)       # {id: [reasoning per anchor, or None]}, counts
    prompts.render_output_completion(row["trace"], row["output"], reasoning=prompts.path_reasoning(paths[row["id"]]))

For `def f(x, xs):  y = x * 2 + 1; if y > 3: ...; total = 0; for v in xs: total += v; ...` the paths read:

    y = x * 2 + 1 = 3 * 2 + 1 = 6 + 1 = 7.
    Check y > 3: 7 > 3 → True, so the if branch runs. w = 1.
    The loop for v in xs runs 7 times: v = 1, total = 1; v = 2, total = 3; v = 3, total = 6; ...; v = 7, total = 28.
      After the loop, total = 28.
    Call h(3). return_val = a * a = 3 * 3 = 9.        (inside the helper; then, back in f:)
    h(3) returns 9. z = h(x) + y = h(3) + 7 = 9 + 7 = 16.
    lst.append(7), so lst = [1, 7].

How. One sandboxed run per row (`stepcode.data.reasoning_runner`, the "reasoning" runner: a sys.settrace line tracer
in the child; its docstring says what is re-evaluated and why that is exact), batched like the trace stage
(`Sandbox.map_batches`, a batch per round trip, under the first trace hash seed so set orders match the trace). The
runner returns facts in execution order; `compose` writes them as sentences, an anchor's reasoning being what
happened since the previous anchor, ending with the anchor's own value: `LABEL = ... = REPR.`.

The invariant, asserted per anchor (`check_anchor`): the run printed exactly the row's trace line; the reasoning ends
with ` = REPR.` where REPR is the repr of the very object the anchor printed; and, when REPR is a literal,
`format(literal_eval(REPR), '')` is the printed value. An anchor that fails it, or that the facts cannot explain,
gets the template sentence instead (`prompts.default_reasoning`), counted under its reason (FALLBACKS).
"""

from __future__ import annotations

import ast
import logging
import re
from collections import Counter
from collections.abc import Iterable

from stepcode.data import reasoning_runner

log = logging.getLogger(__name__)

RUNNER_MODULE = reasoning_runner.__name__   # loaded by name in the sandbox servers (imported here for the stage spec)
RUNNER = "reasoning"
SLOWDOWN = 3            # the run is traced line by line: its wall-clock and CPU limits are this many times the trace's
MAX_PIECES = 12         # sentences before one anchor; past it the middle is elided
FALLBACKS = {
    "run/<status>": "the traced run did not finish (timeout, memory, ...): every anchor of the row",
    "trace_mismatch": "the traced run printed other anchor lines than the row's trace: every anchor of the row",
    "truncated": "the tracer hit its fact cap (or failed) before this anchor",
    "unexplained": "no statement or loop of the run explains the anchor",
    "opaque_value": "the anchor's value is not plain data (a user object, too big): its repr is not stated",
    "value_mismatch": "the path's value for the anchor differs from the printed one",
    "tag_in_text": "the reasoning would hold a <reasoning>/<print>/<input>/<answer> tag",
    "malformed_report": "the runner's report has an unexpected shape",
}
_TAG = re.compile(r"</?(reasoning|print|input|answer)>")


class Mismatch(Exception):
    """A stated value that is not the printed one (the anchor falls back to the template)."""


# --- composing -----------------------------------------------------------------------------------------------------

def _sentence(fact: dict) -> str:
    kind = fact["k"]
    if kind == "call":
        return f"Call {fact['fn']}({fact['args']})."
    if kind == "return":
        return f"{fact['fn']}({fact['args']}) returns {fact['value']}."
    if kind == "raise":
        return f"{fact['fn']}({fact['args']}) raises an exception."
    if kind == "if":
        return _if_sentence(fact)
    if kind == "loop":
        return _loop_sentence(fact)
    raise ValueError(f"unknown fact {kind!r}")


def _if_sentence(fact: dict) -> str:
    chain, branch = fact["chain"], fact["branch"]
    word = "elif" if fact["elif"] else "if"
    taken = branch == "body"
    if fact["done"]:
        if chain[-1] != str(taken):
            raise Mismatch(f"test {chain[0]!r} reduced to {chain[-1]} but the run took {branch}")
        value = " → ".join(chain[1:])
    else:
        value = (" → ".join(chain[1:]) if len(chain) > 1 else "it") + (" is true" if taken else " is false")
    if taken:
        then = f"so the {word} branch runs"
    elif branch == "else":
        then = "so the next elif is checked" if fact["elif_next"] else "so the else branch runs"
    else:
        then = f"so the {word} branch is skipped"
    return f"Check {chain[0]}: {value}, {then}."


def _loop_sentence(fact: dict) -> str:
    n, how, header = fact["n"], fact["how"], fact["header"]
    if how == "exhausted":
        head = f"The loop {header} runs {n} time{'s' if n != 1 else ''}"
    elif how == "break":
        head = f"The loop {header} breaks in iteration {n}"
    else:
        head = f"The loop {header} returns in iteration {n}"
    listing, previous = [], 0
    for i, values in fact["iters"]:
        if i != previous + 1:
            listing.append("...")
        previous = i
        shown = [f"{name} = {text}" for name, text in zip(fact["vars"], values or []) if text is not None]
        if shown:
            listing.append(", ".join(shown))
    text = head + (": " + "; ".join(listing) if listing and any(x != "..." for x in listing) else "") + "."
    test = fact.get("test")
    if test and len(test["chain"]) > 1:
        value = " → ".join(test["chain"][1:])
        if test["done"] and test["chain"][-1] != "False":
            raise Mismatch(f"the loop ended but its test reduced to {test['chain'][-1]}")
        text += f" Then {test['chain'][0]}: {value}{'' if test['done'] else ' is false'}, so the loop ends."
    return text


def _stmt_sentence(fact: dict, label: str, value: str) -> str:
    """The owner statement's sentence for its first anchor `label` whose value's repr is `value`."""
    chain, done, lhs, form = fact["chain"], fact["done"], fact["lhs"], fact["form"]
    if done and chain and chain[-1] != value and _same_value(chain[-1], value):
        chain = [*chain[:-1], value]    # a set rebuilt from copies lists its elements in another order
    if form == "assign" and lhs == label and chain:
        if done and chain[-1] != value:
            raise Mismatch(f"{label}: the chain ends in {chain[-1]!r}, the anchor printed {value!r}")
        return f"{label} = " + " = ".join(chain if done else [*chain, value]) + "."
    if form == "aug" and lhs == label and len(chain) > 1:
        steps = chain[1:]
        if done and steps[-1] != value:
            raise Mismatch(f"{label}: the chain ends in {steps[-1]!r}, the anchor printed {value!r}")
        return f"{fact['src']}, so {label} = " + " = ".join(steps if done else [*steps, value]) + "."
    if form == "assign" and lhs and chain:
        head = f"{lhs} = " + " = ".join(chain)
    elif form == "expr" and chain:
        head = chain[-1]
    else:
        head = fact["src"]
    return f"{head}, so {label} = {value}."


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NOT_LITERAL


_NOT_LITERAL = object()


def _same_value(a: str, b: str) -> bool:
    """Two reprs of one value (sets: the same elements listed in another order)."""
    x, y = _literal(a), _literal(b)
    return x is not _NOT_LITERAL and type(x) is type(y) and x == y


def _prints_as(value_repr: str, printed: str) -> bool:
    """Whether a value with this repr prints as `printed` (True when the repr is no literal: not checkable here)."""
    value = _literal(value_repr)
    if value is _NOT_LITERAL:
        return True
    try:
        if format(value, "") == printed:
            return True
    except Exception:  # noqa: BLE001
        return False
    # a set prints its elements in its own order: the same set, listed differently
    return type(value) in (set, frozenset, dict) and _same_value(value_repr, printed)


def check_anchor(text: str, label: str, value_repr: str, line: str) -> None:
    """The invariant (Mismatch if broken): the reasoning ends stating `label`'s value as `value_repr`, and that value
    is the one the trace line prints."""
    printed = line.partition(": ")[2]
    if not line.startswith(f"{label}: "):
        raise Mismatch(f"the trace line {line!r} is not {label!r}'s")
    if not text.endswith(f" = {value_repr}."):
        raise Mismatch(f"the reasoning does not end with {label}'s value {value_repr!r}")
    if not _prints_as(value_repr, printed):
        raise Mismatch(f"{value_repr!r} does not print as {printed!r}")


def _elided(pieces: list[str]) -> list[str]:
    if len(pieces) <= MAX_PIECES:
        return pieces
    keep = MAX_PIECES // 2
    return [*pieces[: keep - 1], "...", *pieces[-keep:]]


def compose(row: dict, report) -> tuple[list[str | None], Counter]:
    """Per anchor of `row["trace"]`, its execution reasoning or None (the template), and the fallbacks by reason."""
    trace = row["trace"]
    n = len(trace)
    if not isinstance(report, dict) or not isinstance(report.get("status"), str):
        return [None] * n, Counter({"malformed_report": n})
    if report["status"] != "ok":
        return [None] * n, Counter({f"run/{report['status']}": n})
    if report.get("trace") != trace:
        return [None] * n, Counter({"trace_mismatch": n})
    try:
        return _compose(trace, report)
    except Exception as e:  # noqa: BLE001 — a report of an odd shape (the program shares the runner's process)
        log.debug("row %r: %s", row.get("id"), e)
        return [None] * n, Counter({"malformed_report": n})


def _compose(trace: list[str], report: dict) -> tuple[list[str | None], Counter]:
    steps: list[str | None] = []
    fallbacks: Counter = Counter()
    pieces: list[str] = []
    broken = False                        # a piece since the last anchor could not be written exactly
    stmts: dict[int, dict] = {}           # depth -> the last statement fact there
    used: set[int] = set()                # ids of statement facts already stated
    for fact in report["facts"]:
        kind = fact["k"]
        if kind == "error":
            break
        if kind == "stmt":
            stmts[fact["depth"]] = fact
            continue
        if kind != "anchor":
            try:
                pieces.append(_sentence(fact))
            except Mismatch as e:
                log.debug("%s", e)
                broken = True
            continue
        if len(steps) >= len(trace):
            break
        line = trace[len(steps)]
        try:
            text = _conclusion(fact, stmts.get(fact["depth"]), used)
            if broken:
                raise Mismatch("a sentence before the anchor did not check")
            text = " ".join([*_elided(pieces), text])
            check_anchor(text, fact["label"], fact["repr"], line)
            if _TAG.search(text):
                raise _Fallback("tag_in_text")
            steps.append(text)
        except _Fallback as why:
            steps.append(None)
            fallbacks[str(why)] += 1
        except Mismatch as e:
            log.debug("anchor %d (%s): %s", len(steps) + 1, fact.get("label"), e)
            steps.append(None)
            fallbacks["value_mismatch"] += 1
        pieces, broken = [], False
    missing = len(trace) - len(steps)
    if missing:
        steps += [None] * missing
        fallbacks["truncated"] += missing
    return steps, fallbacks


class _Fallback(Exception):
    pass


def _conclusion(anchor: dict, stmt: dict | None, used: set[int]) -> str:
    label, value = anchor["label"], anchor["repr"]
    if value is None:
        raise _Fallback("opaque_value")
    kind, owner_line = anchor["owner"]
    if kind == "stmt":
        if stmt is None or stmt["line"] != owner_line:
            raise _Fallback("unexplained")
        if id(stmt) in used:
            return f"{label} = {value}."
        used.add(id(stmt))
        return _stmt_sentence(stmt, label, value)
    if kind == "loop":
        return f"After the loop, {label} = {value}."
    if kind == "end":
        return f"No value is returned, so {label} = {value}."
    raise _Fallback("unexplained")


# --- running ---------------------------------------------------------------------------------------------------------

def payload(row: dict, params) -> dict:
    """The runner's job for one trace row. The anchor lines come from re-instrumenting the row's code when that
    reproduces its display source; otherwise every anchor-shaped print counts (the trace check then decides)."""
    from stepcode.anchors import instrument

    anchor_lines = None
    try:
        inst = instrument(row["code"])
        if inst.status == "ok" and inst.source == row["instrumented_code"]:
            anchor_lines = [a.line for a in inst.anchors]
    except Exception:  # noqa: BLE001 — the display source is enough
        pass
    return {"source": row["instrumented_code"], "entry_point": row["entry_point"], "input": row["input"],
            "anchor_lines": anchor_lines, "max_lines": params.trace.max_lines,
            "max_line_chars": params.trace.max_line_chars}


def sandbox_params(params):
    """The sandbox limits of a reasoning run: the trace's, with SLOWDOWN times its time (tracing costs)."""
    sp = params.sandbox
    return sp.model_copy(update={"timeout_s": sp.timeout_s * SLOWDOWN, "cpu_s": sp.cpu_s * SLOWDOWN})


def paths_batch(sandbox, rows: list[dict], params) -> list[tuple[list[str | None], Counter]]:
    """`compose` for a batch of rows: one slot, one round trip."""
    with sandbox.slot() as slot:
        reports = slot.run_many(RUNNER, [payload(row, params) for row in rows])
    return [compose(row, report) for row, report in zip(rows, reports)]


def open_sandbox(params, rows: Iterable[dict] = (), workers: int | None = None):
    from stepcode.sandbox.engine import Sandbox, preload_for

    return Sandbox(sandbox_params(params), hash_seeds=(params.trace.hash_seeds[0],), workers=workers,
                   runners=(RUNNER_MODULE,), preload=preload_for(r["code"] for r in rows if isinstance(r.get("code"),
                                                                                                      str)))


def execution_paths(rows: list[dict], params, *, sandbox=None, workers: int | None = None
                    ) -> tuple[dict[str, list[str | None]], dict]:
    """{row id: reasoning per anchor (None: the template)} for ok trace rows, and the counts (`stats`)."""
    own = sandbox is None
    if own:
        sandbox = open_sandbox(params, rows, workers)
    paths: dict[str, list[str | None]] = {}
    fallbacks: Counter = Counter()
    rows_falling_back = 0
    try:
        results = sandbox.map_batches(lambda batch: paths_batch(sandbox, batch, params), rows)
        try:
            for row, (steps, fell) in zip(rows, results):
                paths[row["id"]] = steps
                fallbacks.update(fell)
                rows_falling_back += bool(fell)
        finally:
            results.close()
    finally:
        if own:
            sandbox.close()
    anchors = sum(len(steps) for steps in paths.values())
    stats = {"rows": len(paths), "anchors": anchors, "explained": anchors - sum(fallbacks.values()),
             "rows_with_fallback": rows_falling_back, "fallback": dict(sorted(fallbacks.items()))}
    return paths, stats
