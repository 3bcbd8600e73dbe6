"""Benchmark decontamination: drop training rows whose code is a copy (even a renamed one) of a benchmark program.

    from stepcode.data.decontam import decontaminate
    kept, report = decontaminate(rows, {"cruxeval": ".../cruxeval.jsonl", "reval": ".../DREval_data.jsonl"})
    check = Decontaminator(benchmarks); clean = (r for r in stream if check.keep(r)); check.report()   # a stream
    report["dropped"], report["benchmarks"]["cruxeval"]["dropped"], report["dropped_rows"][0]
    # {"id": "synth-1234-77", "benchmark": "cruxeval", "benchmark_id": "sample_504", "coverage": 1.0,
    #  "ngram": "def f ( pieces ) : \\n pieces . sort ( )"}

Normalization (the unit is an n-gram of code tokens, n = 10 by default):
- Python's `tokenize`; comments, NL, INDENT and DEDENT are dropped, so layout and comments mean nothing. NEWLINE
  (end of a statement) is kept as "\\n": statement boundaries are structure, and keeping them makes n-grams more
  specific.
- String and number literals are written as `repr(literal_eval(token))`, so `"a"` and `'a'` (or `0x10` and `16`)
  are one token; f-strings stay as written.
- Identifiers are renamed *within each n-gram* by order of first appearance (`x = x + y` and `a = a + b` both
  become `0 = 0 + 1`), so a consistently renamed copy has exactly the n-grams of the original. Keywords, builtins
  (`len`, `sorted`) and attribute names (`.append`) are kept: they are what the code does, and a copier keeps them.

The rule. A row is contaminated by a benchmark program P when the row contains at least `min_coverage` (default 0.8)
of P's distinct n-grams: the row holds (most of) P, renamed or not, possibly with code around it. Measured on 2000
synthesized candidates (seed 1234) against CRUXEval + REval, n = 10: "any shared n-gram" drops 95% of them with
renaming and 10% without (the shared n-grams are idioms: `for 0 in 1 : \\n 2 . append ( 0 )`, `text = text.rstrip(`),
while coverage >= 0.8 drops 2 (0.1%): a renamed copy of CRUXEval sample_504 (`values.sort(); return values`) and a
near copy of sample_452 with an `else` branch added. It drops 84 of the 85 HumanEval programs that REval contains.
Limits: a benchmark program shorter than n tokens has no n-grams and cannot be matched (none in CRUXEval or REval:
the shortest has 14 tokens); reordered statements or changed literals lower the coverage.

Cost: the benchmark index is one dict (n-gram -> programs), built once; a row costs one tokenize and one pass over
its windows, so a few thousand rows take about a second.
"""

from __future__ import annotations

import ast
import builtins
import io
import json
import keyword
import tokenize
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

from stepcode.errors import MissingInput

_DROPPED = frozenset({tokenize.COMMENT, tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING,
                      tokenize.ENDMARKER})
_KEPT_NAMES = frozenset(dir(builtins)) | frozenset(keyword.kwlist)


def code_tokens(code: str) -> list[tuple[str, bool]]:
    """The normalized tokens of `code` as (text, renamable) pairs; renamable marks a local identifier.

    Raises ValueError if `code` does not tokenize.
    """
    tokens: list[tuple[str, bool]] = []
    previous = ""
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            if tok.type in _DROPPED:
                continue
            text = tok.string
            if tok.type == tokenize.NEWLINE:
                text = "\n"  # the real token is "" at end of file without a final newline
            elif tok.type in (tokenize.STRING, tokenize.NUMBER):
                text = _literal(text)
            renamable = tok.type == tokenize.NAME and text not in _KEPT_NAMES and previous != "."
            tokens.append((text, renamable))
            previous = text
    except (tokenize.TokenError, SyntaxError) as e:  # IndentationError is a SyntaxError
        raise ValueError(f"code does not tokenize: {e}") from None
    return tokens


def _literal(text: str) -> str:
    try:
        return repr(ast.literal_eval(text))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text  # f-strings, and anything literal_eval cannot read, stay as written


def ngrams(tokens: list[tuple[str, bool]], n: int) -> list[tuple]:
    """The n-grams of `tokens`, in order, identifiers renamed by first appearance within each n-gram."""
    grams = []
    for start in range(len(tokens) - n + 1):
        names: dict[str, int] = {}
        grams.append(tuple(names.setdefault(text, len(names)) if renamable else text
                           for text, renamable in tokens[start:start + n]))
    return grams


class BenchmarkIndex:
    """The n-grams of every benchmark program, built once: `index.matches(code)` -> programs it covers."""

    def __init__(self, benchmark_paths: Mapping[str, str | Path], n: int = 10):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        self.n = n
        self.programs: list[tuple[str, str, int]] = []   # (benchmark, program id, distinct n-grams)
        self.by_ngram: dict[tuple, list[int]] = defaultdict(list)
        self.summary: dict[str, dict] = {}
        for name, path in sorted(benchmark_paths.items()):
            self._add_benchmark(name, Path(path))

    def _add_benchmark(self, name: str, path: Path) -> None:
        if not path.is_file():
            raise MissingInput(f"benchmark {name!r}: no such file {path} (decontamination needs it; "
                               f"set build.benchmarks_dir in params.yaml)")
        total = too_short = 0
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if not isinstance(row.get("code"), str):
                    raise ValueError(f"{path}:{lineno}: benchmark row has no 'code' string")
                program_id = str(row.get("id", row.get("task_id", f"line {lineno}")))
                try:
                    grams = set(ngrams(code_tokens(row["code"]), self.n))
                except ValueError as e:
                    raise ValueError(f"{path}:{lineno}: {e}") from None
                total += 1
                if not grams:
                    too_short += 1
                    continue
                self.programs.append((name, program_id, len(grams)))
                for gram in grams:
                    self.by_ngram[gram].append(len(self.programs) - 1)
        self.summary[name] = {"path": str(path), "programs": total, "too_short_to_match": too_short}

    def matches(self, code: str, min_coverage: float) -> list[dict]:
        """Benchmark programs that `code` covers (>= min_coverage of their n-grams), best first, one per benchmark.

        Each match: {"benchmark", "benchmark_id", "coverage", "ngram"} where ngram is the first shared n-gram, as
        the row's own tokens.
        """
        tokens = code_tokens(code)
        found: dict[int, set] = defaultdict(set)
        first_window: dict[int, int] = {}
        for start, gram in enumerate(ngrams(tokens, self.n)):
            for program in self.by_ngram.get(gram, ()):
                found[program].add(gram)
                first_window.setdefault(program, start)
        best: dict[str, dict] = {}
        for program, grams in found.items():
            benchmark, program_id, size = self.programs[program]
            coverage = len(grams) / size
            if coverage < min_coverage:
                continue
            key = (-coverage, program)  # ties go to the earlier program: deterministic
            if benchmark not in best or key < best[benchmark]["_key"]:
                start = first_window[program]
                shown = " ".join(text for text, _ in tokens[start:start + self.n])
                best[benchmark] = {"benchmark": benchmark, "benchmark_id": program_id,
                                   "coverage": round(coverage, 4), "ngram": shown, "_key": key}
        return [{k: v for k, v in m.items() if k != "_key"} for m in sorted(best.values(), key=lambda m: m["_key"])]


class Decontaminator:
    """`decontaminate` one row at a time, for a stream: `keep(row)` says whether the row copies no benchmark program
    (and records it if it does); `report()` is decontaminate's report for the rows seen so far. It keeps the report's
    entries only (one per dropped row), never the rows."""

    def __init__(self, benchmark_paths: Mapping[str, str | Path], n: int = 10, min_coverage: float = 0.8):
        if not (isinstance(min_coverage, (int, float)) and 0 < min_coverage <= 1):
            raise ValueError(f"min_coverage must be in (0, 1], got {min_coverage!r}")
        self.index = BenchmarkIndex(benchmark_paths, n)
        self.n, self.min_coverage = n, min_coverage
        self.rows = 0
        self.dropped_rows: list[dict] = []
        self.per_benchmark = dict.fromkeys(self.index.summary, 0)

    def keep(self, row: dict) -> bool:
        try:
            found = self.index.matches(row["code"], self.min_coverage)
        except ValueError as e:
            raise ValueError(f"row {row.get('id')!r}: {e}") from None
        self.rows += 1
        if not found:
            return True
        for match in found:
            self.per_benchmark[match["benchmark"]] += 1
        self.dropped_rows.append({"id": row["id"], "matches": found})
        return False

    def report(self) -> dict:
        benchmarks = {name: dict(summary, dropped=self.per_benchmark[name])
                      for name, summary in self.index.summary.items()}
        return {"n": self.n, "min_coverage": self.min_coverage, "benchmarks": benchmarks, "rows": self.rows,
                "dropped": len(self.dropped_rows), "dropped_rows": list(self.dropped_rows)}


def decontaminate(rows: Iterable[dict], benchmark_paths: Mapping[str, str | Path], n: int = 10,
                  min_coverage: float = 0.8) -> tuple[list[dict], dict]:
    """Rows (each with "id" and "code") that copy no benchmark program, and a JSON-ready report.

    The report: n, min_coverage, per benchmark its file, program count and rows dropped (a row covering programs
    of two benchmarks counts under both), `dropped` (rows, each once) and `dropped_rows` (id plus the best match of
    each benchmark), in row order. A stream: `Decontaminator`.
    """
    check = Decontaminator(benchmark_paths, n, min_coverage)
    kept = [row for row in rows if check.keep(row)]
    return kept, check.report()
