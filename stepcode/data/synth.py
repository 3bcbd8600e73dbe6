"""Offline synthesizer of small CRUXEval-style programs, composed from typed building blocks (never from benchmarks).

    from itertools import islice
    from stepcode.data.synth import synth_candidates
    for row in islice(synth_candidates(seed=1234), 3):
        print(row["id"], "->", row["input"]); print(row["code"])

Each candidate is `def f(<params>):` (sometimes preceded by a helper that f calls) with 1-6 statements over str / list /
dict / set / int values - assignments, `for` and `while` loops that accumulate into a variable, if/elif/else,
comprehensions, in-place list/dict/set updates, early returns - and a generated input (the argument list as source
text). Rows look like `{"id": "synth-<seed>-<k>", "code", "input", "entry_point": "f", "source": "synth"}`.

How it works. Every value has a type from TYPES. EXPRS maps a type to templates that build an expression of that type
from sub-expressions: `{ints}` is any list-of-int expression, `{char}` a one-character literal, `{str=a}` a string
expression that `{a}` repeats later in the same template. Templates are written fully parenthesised and the finished
program goes through `ast.unparse`, which drops the parentheses that are not needed. To keep candidates runnable, fast
and deterministic (the trace engine's dynamic filter drops the few that are not): error-prone operations come guarded
(`max(x, default=0)`, `.get`, `x[0] if x else 0`); divisors, repeat counts and ranges are literals; loops run over the
short inputs or count down; a loop never updates the variable it iterates over, nor appends a value to itself; sets
hold only small ints and are iterated only through `sorted()`.

Determinism: candidate k of a seed draws from its own `random.Random(f"synth-{seed}-{k}")` (string seeds hash with
SHA-512, not `hash()`), and the generator never iterates a set, so a row depends on (seed, k) only.
"""

from __future__ import annotations

import ast
import itertools
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

TYPES = ("int", "str", "bool", "ints", "strs", "dict", "iset")  # dict = str -> int, iset = set of small ints

EXPRS: dict[str, list] = {
    "int": [
        "len({str})", "len({ints})", "len({strs})", "len({dict})", "len({iset})", "len({str}.split())",
        "({int} + {int})", "({int} - {int})", "({int} * {small})", "({int} // {small})", "({int} % {small})",
        "abs({int})", "sum({ints})", "max({ints}, default={digit})", "min({ints}, default={digit})",
        "max({int}, {int})", "min({int}, {int})", "round({int} / {small})", "int({bool})",
        "{str}.count({char})", "{str}.find({char})", "{str}.rfind({char})", "{ints}.count({int})",
        "{strs}.count({str})", "{dict}.get({str}, {digit})", "sum({dict}.values())", "len(set({str}))",
        "len(set({ints}))", "({ints=a}[{small=b}] if len({a}) > {b} else {digit})", "({ints=a}[-1] if {a} else 0)",
        "({ints=a}.index({int=b}) if {b} in {a} else -1)", "({str=a}.index({char=b}) if {b} in {a} else -1)",
        "({int} if {bool} else {int})", "sum({iset})",
    ],
    "str": [
        "{str}.upper()", "{str}.lower()", "{str}.title()", "{str}.capitalize()", "{str}.swapcase()", "{str}.strip()",
        "{str}.strip({chars})", "{str}.lstrip({chars})", "{str}.rstrip({chars})", "{str}.replace({char}, {char})",
        "{str}.replace({char}, '')", "{str}[::-1]", "{str}[{small}:]", "{str}[:{small}]", "{str}[::2]",
        "{str}[1:-1]", "({str} + {str})", "({str} * {rep})", "{char}.join({strs})", "''.join({strs})",
        "' '.join({strs})", "''.join(sorted({str}))", "''.join(reversed({str}))", "str({int})",
        "{str}.center({width}, {char})", "{str}.ljust({width}, {char})", "{str}.rjust({width}, {char})",
        "{str}.zfill({width})", "{str}.partition({char})[0]", "{str}.rpartition({char})[2]",
        "{str}.split({char})[0]", "{str}.split({char})[-1]", "' '.join({str}.split())",
        "({str=a}[0] if {a} else {char})", "({str=a}[-1] if {a} else '')", "{str}.removeprefix({char})",
        "{str}.removesuffix({chars})", "({str} if {bool} else {str})", "({strs=a}[0] if {a} else '')",
        "max({strs}, key=len, default='')", "min({strs}, default='')", "max({dict=a}, key={a}.get, default='')",
        "{str}[{digit}:{width}]",
    ],
    "bool": [
        "({int} > {int})", "({int} < {int})", "({int} >= {int})", "({int} == {int})", "({int} != {int})",
        "({int} % 2 == 0)", "({str} == {str})", "({str} in {str})", "({char} in {str})", "({str} in {strs})",
        "({str} not in {strs})", "({int} in {ints})", "({int} not in {ints})", "({str} in {dict})",
        "({int} in {iset})", "{str}.isdigit()", "{str}.isalpha()", "{str}.isupper()", "{str}.islower()",
        "{str}.isalnum()", "{str}.istitle()", "{str}.startswith({char})", "{str}.endswith({char})", "(not {bool})",
        "({bool} and {bool})", "({bool} or {bool})", "(len({ints}) > {small})", "(len({str}) < {width})",
        "({ints=a} == sorted({a}))", "({str=a} == {a}[::-1])", "{iset}.issubset({iset})", "bool({ints})",
    ],
    "ints": [
        "sorted({ints})", "sorted({ints}, reverse=True)", "{ints}[::-1]", "{ints}[{small}:]", "{ints}[:{small}]",
        "{ints}[::2]", "({ints} + {ints})", "({ints} + [{int}])", "([{int}] + {ints})", "list(range({small}))",
        "list(range({digit}, {width}))", "sorted({iset})", "list({dict}.values())", "sorted({dict}.values())",
        "sorted(set({ints}))", "[{int}, {int}]", "list(map(len, {strs}))", "list(map(abs, {ints}))",
        "({ints} * {rep})",
    ],
    "strs": [
        "{str}.split()", "{str}.split({char})", "list({str})", "sorted({strs})", "{strs}[::-1]", "{strs}[{small}:]",
        "{strs}[:{small}]", "({strs} + [{str}])", "({strs} + {strs})", "list({dict})", "sorted({dict})",
        "sorted({dict=a}, key={a}.get)", "sorted({strs}, key=len)", "sorted({str})", "[{str}, {str}]",
        "sorted(set({str}))", "sorted(set({strs}))", "list({str}.partition({char}))",
    ],
    "dict": [
        "dict(zip({strs}, {ints}))", "dict.fromkeys({strs}, {int})", "dict.fromkeys({str}, {int})",
        "{**{dict}, {str}: {int}}", "{{str}: {int}}", "({dict} | {dict})", "dict(sorted({dict}.items()))",
    ],
    "iset": [
        "set({ints})", "({iset} & {iset})", "({iset} | {iset})", "({iset} - {iset})", "({iset} ^ {iset})",
        "set(range({small}))", "{iset}.union({ints})", "{iset}.intersection({ints})", "set({dict}.values())",
    ],
}

# In-place updates of a variable `{v}`; a line after the first is indented under it.
MUTATIONS = {
    "ints": ["{v}.append({int})", "{v}.insert({index}, {int})", "{v}.extend({ints})", "{v}.sort()",
             "{v}.sort(reverse=True)", "{v}.reverse()", "if {v}:\n    {v}.pop()", "del {v}[{small}:]",
             "if {int=a} in {v}:\n    {v}.remove({a})", "if {v}:\n    {v}[0] = {int}"],
    "strs": ["{v}.append({str})", "{v}.insert(0, {str})", "{v}.sort()", "{v}.sort(key=len)", "{v}.reverse()",
             "{v}.extend({strs})", "if {v}:\n    {v}.pop(0)", "if {str=a} in {v}:\n    {v}.remove({a})"],
    "dict": ["{v}[{str}] = {int}", "{v}.update({dict})", "{v}.pop({str}, None)", "{v}.setdefault({str}, {int})",
             "{v}[{str=a}] = {v}.get({a}, 0) + {int}", "if {str=a} in {v}:\n    del {v}[{a}]"],
    "iset": ["{v}.add({int})", "{v}.discard({int})", "{v}.update({ints})", "{v} |= {iset}", "{v} &= {iset}",
             "{v}.difference_update({ints})"],
}

# How a loop body folds one step into its accumulator `{v}` (which its own sub-expressions never mention, so that
# `s += s` cannot double a value on every pass).
ACC_UPDATES = {
    "int": ["{v} += {int}", "{v} -= {int}", "{v} += 1", "{v} = max({v}, {int})", "{v} = min({v}, {int})",
            "{v} = {v} * 2 + {int}"],
    "str": ["{v} += {str}", "{v} = {str} + {v}", "{v} += {str} + {char}"],
    "ints": ["{v}.append({int})", "{v}.insert(0, {int})", "{v} += [{int}, {int}]"],
    "strs": ["{v}.append({str})", "{v}.insert(0, {str})"],
    "dict": ["{v}[{str}] = {int}", "{v}[{str=a}] = {v}.get({a}, 0) + {int}", "{v}.setdefault({str}, {int})"],
    "iset": ["{v}.add({int})", "{v}.add({int} % {width})"],
}
# A condition built on one variable `{v}`: what a bool becomes when no bool variable is in scope (a literal True or
# False would make dead branches).
SIMPLE_BOOL = {
    "int": ["({v} > {digit})", "({v} < {digit})", "({v} % 2 == 0)", "({v} == {digit})", "({v} % {small} == 1)"],
    "str": ["{v}.isupper()", "({char} in {v})", "{v}.startswith({char})", "({v} == {char})", "{v}.isalpha()",
            "({v} < {char})"],
    "ints": ["({digit} in {v})", "(len({v}) > {small})", "bool({v})"],
    "strs": ["({char} in {v})", "(len({v}) < {small})"],
    "dict": ["({char} in {v})", "bool({v})"],
    "iset": ["({digit} in {v})", "(len({v}) >= {small})"],
}
ACC_INIT = {"int": "0", "str": "''", "ints": "[]", "strs": "[]", "dict": "{}", "iset": "set()"}
ELEMENT = {"ints": "int", "strs": "str", "str": "str", "iset": "int", "dict": "str"}

NAMES = {
    "int": ["n", "k", "num", "count", "total", "idx", "pos", "best", "acc", "diff", "size", "step", "limit", "m"],
    "str": ["text", "s", "word", "name", "line", "result", "res", "out", "prefix", "tail", "head", "joined", "msg"],
    "bool": ["flag", "ok", "found", "valid", "done"],
    "ints": ["nums", "arr", "values", "items", "data", "scores", "out", "evens", "lengths", "digits", "picked"],
    "strs": ["words", "names", "tokens", "parts", "pieces", "kept", "letters", "chunks"],
    "dict": ["d", "counts", "mapping", "table", "freq", "lookup", "seen", "stock"],
    "iset": ["ids", "uniq", "common", "pool", "marks"],
}
LOOP_NAMES = {"int": ["x", "num", "v", "e", "val"], "str": ["w", "word", "tok", "part"], "char": ["c", "ch", "char"],
              "key": ["k", "key", "name"], "index": ["i", "j", "p"]}
HELPER_NAMES = ["helper", "transform", "score", "clean", "check", "step", "g", "convert", "weight"]
PUNCT = " -_.,:!#"

_STRING = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_PLACEHOLDER = re.compile(r"\{(\w+)(?:=(\w))?\}")
MAX_DEPTH = 3
F_LINES = (3, 15)  # lines of f, `def` line included
MAX_LINES = 22  # helper included; corpus.static_filter allows a little more
MAX_LINE_CHARS = 100


@lru_cache(maxsize=None)
def _needs(template: str) -> tuple[str, ...]:
    return tuple(m.group(1) for m in _PLACEHOLDER.finditer(template) if m.group(1) in TYPES)


class _Program:
    """Writes one function: an environment of typed variables, emitted lines, and the rules that pick code."""

    def __init__(self, rng: random.Random, chars: list[str], params: dict[str, str], helpers=()):
        self.rng = rng
        self.chars = chars
        self.env: dict[str, str] = dict(params)  # visible variables in order of definition
        self.locals: list[str] = []
        self.bound: dict[str, str] = {}  # preferred atoms: loop variables, or the variable being updated
        self.excluded: set[str] = set()  # variables an expression must not mention (an accumulator in its update)
        self.loop_vars: tuple[str, ...] = ()  # what the innermost loop or comprehension binds
        self.taken: set[str] = set(params) | {h[0] for h in helpers}
        self.helpers = list(helpers)  # (name, parameter type, return type)
        self.lines: list[str] = []
        self.indent = 1
        self.var_uses = 0

    # ------------------------------------------------------------------ names and scopes
    def fresh(self, pool: list[str]) -> str:
        free = [n for n in pool if n not in self.taken and n not in self.bound]
        name = self.rng.choice(free) if free else f"{pool[0]}{len(self.taken)}"
        self.taken.add(name)
        return name

    def define(self, name: str, t: str) -> None:
        self.env.pop(name, None)  # re-insert: the most recently set variable is the likeliest to be used next
        self.env[name] = t
        if name not in self.locals:
            self.locals.append(name)

    @contextmanager
    def binding(self, bound: dict[str, str], excluded: set[str] = frozenset(), loop: bool = False):
        """Prefer `bound` as atoms (and, for a loop or comprehension, want expressions to use them) inside the block."""
        saved = self.bound, self.excluded, self.loop_vars
        self.bound, self.excluded = {**self.bound, **bound}, self.excluded | set(excluded)
        if loop:
            self.loop_vars = tuple(bound)
        try:
            yield
        finally:
            self.bound, self.excluded, self.loop_vars = saved

    def emit(self, text: str) -> None:
        self.lines.extend("    " * self.indent + ln for ln in text.split("\n"))

    def has(self, t: str) -> bool:
        return any(vt == t for n, vt in {**self.env, **self.bound}.items() if n not in self.excluded)

    # ------------------------------------------------------------------ expressions
    def literal(self, t: str) -> str:
        r = self.rng
        if t == "int":
            return str(r.randint(0, 9))
        if t == "bool":
            return r.choice(["True", "False"])
        if t == "str":
            return repr("".join(r.choices(self.chars, k=r.randint(1, 3))))
        if t == "ints":
            return repr([r.randint(0, 9) for _ in range(r.randint(1, 3))])
        if t == "strs":
            return repr(r.sample(self.chars, 2))
        if t == "dict":
            return repr({r.choice(self.chars): r.randint(0, 9)})
        return repr(set(r.sample(range(10), 2)))  # small ints: the repr order of such a set is fixed

    def atom(self, t: str) -> str:
        r = self.rng
        bound = [n for n, bt in self.bound.items() if bt == t and n not in self.excluded]
        if bound and r.random() < 0.8:
            self.var_uses += 1
            return r.choice(bound)
        names = [n for n, vt in self.env.items() if vt == t and n not in self.excluded]
        if names and r.random() < (0.6 if t == "int" else 0.9):  # an int is often better as a literal
            self.var_uses += 1
            return names[-1] if r.random() < 0.5 else r.choice(names)
        if t == "bool":
            return self.simple_bool()
        return self.literal(t)

    def simple_bool(self) -> str:
        """A condition on one variable in scope (a loop variable by preference)."""
        r = self.rng
        pool = [(n, t) for n, t in self.bound.items() if n not in self.excluded and t in SIMPLE_BOOL]
        if not pool or r.random() < 0.2:
            pool += [(n, t) for n, t in self.env.items() if n not in self.excluded and t in SIMPLE_BOOL]
        if not pool:
            return self.literal("bool")
        name, t = r.choice(pool)
        self.var_uses += 1
        return self.fill(r.choice(SIMPLE_BOOL[t]), MAX_DEPTH, {"v": name})

    def expr(self, t: str, depth: int = 0, atom_ok: bool = True) -> str:
        """An expression of type t that mentions at least one variable (else: an atom)."""
        r = self.rng
        if depth >= MAX_DEPTH or (atom_ok and r.random() < 0.35 + 0.2 * depth):
            return self.atom(t)
        usable = [tp for tp in EXPRS[t] if all(self.has(n) or n in ("int", "bool") for n in _needs(tp))]
        usable += [h for h in self.helpers if h[2] == t and self.has(h[1])] * 2
        usable += [c for c in _COMPREHENSIONS.get(t, ())] * 2
        for _ in range(4):
            before = self.var_uses
            choice = r.choice(usable) if usable else None
            if isinstance(choice, tuple):
                text = f"{choice[0]}({self.expr(choice[1], depth + 1)})"
            elif callable(choice):
                text = choice(self, depth + 1)
            elif choice is not None:
                text = self.fill(choice, depth + 1)
            else:
                break
            if text is not None and self.var_uses > before:
                return text
        return self.atom(t)

    def fill(self, template: str, depth: int, labels: dict[str, str] | None = None) -> str:
        labels = dict(labels or {})
        made: list[str] = []

        def one(m: re.Match) -> str:
            key, label = m.groups()
            if key in labels:
                return labels[key]
            text = self.expr(key, depth) if key in TYPES else self.literal_slot(key)
            for _ in range(2):  # `x == x`, `s & s`: one more try for an operand that differs from the others
                if text not in made:
                    break
                text = self.expr(key, depth) if key in TYPES else self.literal_slot(key)
            made.append(text)
            if label:
                labels[label] = text
            return text

        return _PLACEHOLDER.sub(one, template)

    def literal_slot(self, kind: str) -> str:
        r = self.rng
        if kind == "char":
            return repr(r.choice(self.chars) if r.random() < 0.8 else r.choice(PUNCT))
        if kind == "chars":
            return repr("".join(r.sample(self.chars + list(PUNCT[:3]), r.randint(2, 3))))
        ranges = {"small": (2, 4), "digit": (0, 9), "width": (5, 9), "rep": (2, 3), "index": (-2, 3)}
        if kind not in ranges:
            raise KeyError(f"unknown template slot {{{kind}}}")
        return str(r.randint(*ranges[kind]))

    def value(self, t: str, depth: int = 0, atom_ok: bool = False) -> str:
        """An expression to store in a variable. A bare container variable is copied: an alias would let a loop that
        appends to one name while iterating over the other run forever."""
        text = self.expr(t, depth, atom_ok)
        if t in ("ints", "strs", "dict", "iset") and re.fullmatch(r"[A-Za-z_]\w*", text):
            return f"{text}.copy()"
        return text

    def mentions_bound(self, text: str) -> bool:
        """Does `text` use a variable of the innermost loop or comprehension?"""
        code = _STRING.sub("''", text)  # a name inside a string literal is no use
        return any(re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", code) for n in self.loop_vars)

    def bound_expr(self, t: str, depth: int) -> str:
        """An expression inside a loop or comprehension: try to make it depend on the loop variable."""
        text = self.expr(t, depth)
        for _ in range(3):
            if self.mentions_bound(text):
                break
            text = self.expr(t, depth)
        return text

    # ------------------------------------------------------------------ iteration sources
    def iteration(self, depth: int) -> tuple[str, dict[str, str]] | None:
        """A `for` clause (`x in nums`) over something in scope, and the variables it binds with their types."""
        r = self.rng
        kinds = [t for t in ("ints", "strs", "str", "dict", "iset") if self.has(t)]
        if not kinds:
            return None
        t = r.choice(kinds)
        src = self.expr(t, depth + 1)
        elem = self.fresh_loop("char" if t == "str" else "key" if t == "dict" else ELEMENT[t])
        if t == "iset":
            src = f"sorted({src})"  # never iterate a set: its order is not the reader's to predict
        style = r.random()
        if t == "dict" and style < 0.5:
            k, v = self.fresh_loop("key"), self.fresh_loop("int")
            return f"{k}, {v} in {src}.items()", {k: "str", v: "int"}
        if style < 0.15:
            i = self.fresh_loop("index")
            return f"{i}, {elem} in enumerate({src})", {i: "int", elem: ELEMENT[t]}
        if style < 0.25 and re.fullmatch(r"\w+", src) and t != "dict":
            i = self.fresh_loop("index")
            return f"{i} in range(len({src}))", {i: "int", f"{src}[{i}]": ELEMENT[t]}
        if style < 0.32 and self.has("ints") and self.has("strs"):
            a, b = self.fresh_loop("str"), self.fresh_loop("int")
            return f"{a}, {b} in zip({self.atom('strs')}, {self.atom('ints')})", {a: "str", b: "int"}
        return f"{elem} in {src}", {elem: ELEMENT[t]}

    def fresh_loop(self, kind: str) -> str:
        return self.fresh(LOOP_NAMES[kind])

    # ------------------------------------------------------------------ statements
    def st_assign(self) -> None:
        t = self.rng.choice([t for t in TYPES if t != "bool"] + ["bool"] * (self.rng.random() < 0.3))
        text = self.value(t)
        name = self.fresh(NAMES[t])
        self.emit(f"{name} = {text}")
        self.define(name, t)

    def st_update(self) -> None:
        name, t = self.pick_var(("int", "str", "ints", "strs", "dict", "iset"))
        if t == "int" and self.rng.random() < 0.5:
            op = self.rng.choice(["+=", "-=", "*=", "//=", "%="])
            rhs = self.expr("int", 1) if op in ("+=", "-=") else self.literal_slot("small")
            self.emit(f"{name} {op} {rhs}")
        else:
            with self.binding({name: t}):  # prefer the variable itself: `s = s.upper()`
                self.emit(f"{name} = {self.value(t)}")
        self.define(name, t)

    def st_mutate(self) -> None:
        name, t = self.pick_var(("ints", "strs", "dict", "iset"))
        if name is None:
            return self.st_assign()
        self.emit(self.fill(self.rng.choice(MUTATIONS[t]), 1, {"v": name}))

    def pick_var(self, types) -> tuple[str | None, str | None]:
        names = [n for n, t in self.env.items() if t in types]
        if not names:
            return None, None
        name = names[-1] if self.rng.random() < 0.5 else self.rng.choice(names)
        return name, self.env[name]

    def accumulator(self, avoid: str) -> tuple[str, str]:
        """A new variable initialised for a loop to fold into, or (sometimes) one already in scope."""
        r = self.rng
        name, t = self.pick_var(tuple(ACC_INIT))
        if name and r.random() < 0.3 and not re.search(rf"\b{name}\b", avoid):
            return name, t
        t = r.choices(list(ACC_INIT), weights=[5, 4, 4, 2, 3, 1])[0]
        name = self.fresh(NAMES[t])
        self.emit(f"{name} = {ACC_INIT[t]}")
        return name, t

    def acc_update(self, acc: str, t: str) -> str:
        with self.binding({}, excluded={acc}):
            text = self.fill(self.rng.choice(ACC_UPDATES[t]), 1, {"v": acc})
            for _ in range(2):
                if self.mentions_bound(text):
                    break
                text = self.fill(self.rng.choice(ACC_UPDATES[t]), 1, {"v": acc})
        return text

    def loop_body(self, acc: str, t: str, guard_ok: bool = True) -> None:
        """One to three lines folding a step into `acc`, maybe under if/elif/else or after a continue/break guard."""
        r = self.rng
        shape = r.choices(["plain", "if", "ifelse", "ifelif", "guard"], weights=[3, 3, 3, 2, guard_ok])[0]
        self.indent += 1
        if shape == "guard":
            self.emit(f"if {self.bound_expr('bool', 1)}:\n    {r.choice(['continue', 'continue', 'break'])}")
            shape = "plain"
        if shape == "plain":
            self.emit(self.acc_update(acc, t))
        else:
            self.emit(f"if {self.bound_expr('bool', 1)}:")
            self.indent += 1
            self.emit(self.acc_update(acc, t))
            self.indent -= 1
            if shape == "ifelif":
                self.emit(f"elif {self.bound_expr('bool', 1)}:")
                self.indent += 1
                self.emit(self.acc_update(acc, t))
                self.indent -= 1
            if shape == "ifelse" or (shape == "ifelif" and r.random() < 0.5):
                self.emit("else:")
                self.indent += 1
                self.emit(self.acc_update(acc, t))
                self.indent -= 1
        self.indent -= 1

    def st_for(self) -> None:
        it = self.iteration(1)
        if it is None:
            return self.st_assign()
        clause, bound = it
        acc, t = self.accumulator(avoid=clause)
        self.emit(f"for {clause}:")
        with self.binding(bound, loop=True):
            self.loop_body(acc, t)
        self.define(acc, t)

    def st_while(self) -> None:
        r = self.rng
        kind = r.choice(["strip", "digits", "countdown", "shrink", "scan", "climb"])
        if kind == "strip" and self.has("str"):
            name = self.pick_var(("str",))[0]
            c = self.literal_slot("char")
            test, cut = r.choice([("startswith", "[1:]"), ("endswith", "[:-1]")])
            self.emit(f"while {name}.{test}({c}):\n    {name} = {name}{cut}")
            self.define(name, "str")
        elif kind == "shrink" and (self.has("ints") or self.has("strs")):
            name, t = self.pick_var(("ints", "strs"))
            test = f"len({name}) > {self.literal_slot('small')}"
            if t == "ints" and r.random() < 0.5:
                test = f"{name} and {name}[-1] {r.choice(['<', '>', '!='])} {self.literal_slot('digit')}"
            self.emit(f"while {test}:\n    {name}.pop({r.choice(['', '0'])})")
            self.define(name, t)
        elif kind == "scan" and (self.has("ints") or self.has("str")):
            seq, t = self.pick_var(("ints", "str"))
            i = self.fresh(NAMES["int"][4:8])
            self.emit(f"{i} = 0")
            with self.binding({f"{seq}[{i}]": ELEMENT[t]}, excluded={i}, loop=True):
                self.emit(f"while {i} < len({seq}) and {self.bound_expr('bool', 1)}:\n    {i} += 1")
            self.define(i, "int")
        elif kind == "countdown" and (self.has("ints") or self.has("str") or self.has("strs")):
            seq, t = self.pick_var(("ints", "str", "strs"))
            i = self.fresh(NAMES["int"][4:8])
            self.emit(f"{i} = len({seq})")
            acc, at = self.accumulator(avoid=seq)
            self.emit(f"while {i} > 0:\n    {i} -= 1")
            with self.binding({f"{seq}[{i}]": ELEMENT[t], i: "int"}, loop=True):
                self.loop_body(acc, at)
            self.define(i, "int")
            self.define(acc, at)
        elif kind == "digits":
            n = self.fresh(NAMES["int"][:4])
            self.emit(f"{n} = abs({self.expr('int', 1)})")
            acc, at = self.accumulator(avoid=n)
            base = r.choice(["10", "10", "2", "3"])
            self.emit(f"while {n} > 0:")
            with self.binding({f"({n} % {base})": "int"}, loop=True):
                self.loop_body(acc, at, guard_ok=False)  # a `continue` would skip the `//=` below, forever
            self.emit(f"    {n} //= {base}")
            self.define(n, "int")
            self.define(acc, at)
        else:  # climb: count the steps from a small start to a literal bound
            n = self.fresh(NAMES["int"][:4])
            steps = self.fresh(NAMES["int"][8:])
            self.emit(f"{n} = {self.expr('int', 1)}\n{steps} = 0")
            self.emit(f"while {n} < {r.randint(10, 30)}:\n    {n} += {self.literal_slot('small')}\n    {steps} += 1")
            self.define(n, "int")
            self.define(steps, "int")

    def st_if(self) -> None:
        r = self.rng
        name, t = self.pick_var(("int", "str", "ints", "strs", "dict"))
        new = name is None or r.random() < 0.5
        if new:
            t = r.choice(["int", "str", "ints", "strs", "bool"])
            name = self.fresh(NAMES[t])
        branches = ["if", "else"] if r.random() < 0.6 else ["if", "elif", "else"]
        if not new and r.random() < 0.3:
            branches = ["if"]
        for kw in branches:
            self.emit(f"{kw} {self.expr('bool', 0, atom_ok=False)}:" if kw != "else" else "else:")
            with self.binding({name: t} if not new else {}):
                self.emit(f"    {name} = {self.value(t, 1, atom_ok=new)}")
        self.define(name, t)

    def st_guard_return(self) -> None:
        t = self.rng.choice(["int", "str", "bool", "ints"])
        self.emit(f"if {self.expr('bool', 0, atom_ok=False)}:\n    return {self.expr(t, 1)}")

    def st_call_helper(self) -> None:
        name, pt, rt = self.rng.choice(self.helpers)
        var = self.fresh(NAMES[rt])
        self.emit(f"{var} = {name}({self.expr(pt, 1)})")
        self.define(var, rt)

    def st_return(self) -> None:
        r = self.rng
        last = self.locals[-1] if self.locals else next(reversed(self.env))
        t = self.env[last]
        roll = r.random()
        if roll < 0.55:
            self.emit(f"return {last}")
        elif roll < 0.8:
            with self.binding({last: t}):
                self.emit(f"return {self.expr(t, 0, atom_ok=False)}")
        elif len(self.locals) >= 2:
            self.emit(f"return ({self.locals[-2]}, {last})")
        else:
            self.emit(f"return {self.expr(r.choice(['int', 'str', 'ints', 'bool']), 0, atom_ok=False)}")

    def body(self, n_statements: int) -> None:
        kinds = ["assign", "for", "if", "mutate", "update", "while", "guard_return"]
        weights = [34, 24, 12, 9, 9, 8, 4]
        for _ in range(n_statements):
            getattr(self, "st_" + self.rng.choices(kinds, weights)[0])()
        self.st_return()


# ---------------------------------------------------------------------------------------------- comprehensions

def _comp(element_type: str, wrap):
    """A comprehension maker: `wrap(element_text, clause, condition)` -> the expression text."""

    def make(p: _Program, depth: int) -> str | None:
        it = p.iteration(depth)
        if it is None:
            return None
        clause, bound = it
        with p.binding(bound, loop=True):
            elem = p.bound_expr(element_type, depth + 1)
            cond = p.bound_expr("bool", depth + 1) if p.rng.random() < 0.45 else ""
            if not p.mentions_bound(elem):
                return None  # `[6 for x in xs]` is not worth learning
            cond = f" if {cond}" if p.mentions_bound(cond) else ""
        return wrap(p, elem, clause, cond)

    return make


def _dict_comp(p: _Program, depth: int) -> str | None:
    it = p.iteration(depth)
    if it is None:
        return None
    clause, bound = it
    with p.binding(bound, loop=True):
        key, val = p.bound_expr("str", depth + 1), p.bound_expr("int", depth + 1)
        cond = p.bound_expr("bool", depth + 1) if p.rng.random() < 0.35 else ""
        if not (p.mentions_bound(key) or p.mentions_bound(val)):
            return None
        cond = f" if {cond}" if p.mentions_bound(cond) else ""
    return f"{{{key}: {val} for {clause}{cond}}}"


_COMPREHENSIONS = {
    "ints": [_comp("int", lambda p, e, c, f: f"[{e} for {c}{f}]")],
    "strs": [_comp("str", lambda p, e, c, f: f"[{e} for {c}{f}]")],
    "iset": [_comp("int", lambda p, e, c, f: f"{{{e} for {c}{f}}}")],
    "dict": [_dict_comp],
    "int": [_comp("int", lambda p, e, c, f: f"sum(({e} for {c}{f}))"),
            _comp("bool", lambda p, e, c, f: f"sum((1 for {c} if {e}))")],
    "bool": [_comp("bool", lambda p, e, c, f: f"{p.rng.choice(['any', 'all'])}(({e} for {c}))")],
    "str": [_comp("str", lambda p, e, c, f: f"{p.literal_slot('char') if p.rng.random() < 0.3 else repr('')}"
                                            f".join(({e} for {c}{f}))")],
}


# ---------------------------------------------------------------------------------------------- inputs

def _value(rng: random.Random, t: str, chars: list[str]):
    """A small random value of type t: short strings over the program's alphabet, short lists, small ints."""
    def word(lo=1, hi=5):
        w = "".join(rng.choices(chars, k=rng.randint(lo, hi)))
        return w.capitalize() if rng.random() < 0.15 else w

    if t == "int":
        return rng.randint(-3, 12)
    if t == "bool":
        return rng.random() < 0.5
    if t == "str":
        mode = rng.random()
        if mode < 0.03:
            return ""
        if mode < 0.08:
            return "".join(rng.choices("0123456789", k=rng.randint(1, 4)))
        if mode < 0.4:
            return rng.choice(" -,").join(word() for _ in range(rng.randint(2, 3)))
        pool = chars + list(chars[0].upper() + "0 " + rng.choice(PUNCT))
        return "".join(rng.choices(pool, k=rng.randint(3, 9)))
    if t == "ints":
        return [rng.randint(-4, 12) for _ in range(rng.choice([0, 2, 3, 3, 4, 4, 5, 6]))]
    if t == "strs":
        return [word() for _ in range(rng.randint(1, 5))]
    if t == "dict":
        return {word(1, 3): rng.randint(0, 9) for _ in range(rng.randint(1, 4))}
    if t == "iset":
        return set(rng.sample(range(10), rng.randint(1, 4)))
    raise ValueError(f"unknown type {t!r}")


def _params(rng: random.Random, taken: set[str]) -> dict[str, str]:
    types = rng.choices(["str", "ints", "int", "strs", "dict", "iset", "bool"], weights=[30, 25, 15, 12, 10, 3, 2],
                        k=rng.choices([1, 2, 3], weights=[45, 40, 15])[0])
    if all(t == "bool" for t in types):
        types[0] = "str"
    params: dict[str, str] = {}
    for t in types:
        name = rng.choice([n for n in NAMES[t][:8] if n not in params and n not in taken] or [f"{t}{len(params)}"])
        params[name] = t
    return params


# ---------------------------------------------------------------------------------------------- programs

def _helper(rng: random.Random, chars: list[str], param_type: str) -> tuple[tuple[str, str, str], list[str]]:
    """A one-parameter helper `def name(x): ... return ...`, and its lines."""
    name = rng.choice(HELPER_NAMES)
    ret = rng.choice(["int", "str", "bool", "ints", "strs"])
    param = rng.choice(NAMES[param_type][:4])
    p = _Program(rng, chars, {param: param_type})
    p.taken.add(name)
    for _ in range(rng.choice([0, 0, 1, 2])):
        getattr(p, "st_" + rng.choice(["assign", "for", "if"]))()
    with p.binding({param: param_type}):
        p.emit(f"return {p.value(ret)}")
    return (name, param_type, ret), [f"def {name}({param}):"] + p.lines


def _used_names(fn: ast.FunctionDef) -> set[str]:
    return {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)}


def _one_program(rng: random.Random) -> tuple[str, str]:
    """(code, input) of one program whose f has F_LINES lines and uses each of its parameters."""
    while True:
        chars = rng.sample("abcdefghiklmnoprstuwxyz", 5)
        helper_lines: list[str] = []
        helpers = []
        params = _params(rng, set(HELPER_NAMES))
        if rng.random() < 0.15:
            helper, helper_lines = _helper(rng, chars, rng.choice([t for t in params.values() if t != "bool"]))
            helpers = [helper]
        p = _Program(rng, chars, params, helpers)
        n = rng.choices([1, 2, 3, 4, 5, 6], weights=[10, 25, 25, 20, 12, 8])[0]
        if helpers:
            p.st_call_helper()  # a helper nobody calls would be dead code
            n -= 1
        p.body(max(n, 0))
        source = "\n".join(helper_lines + [f"def f({', '.join(params)}):"] + p.lines)
        tree = ast.parse(source)  # a SyntaxError here is a bug in a template, not bad luck: let it raise
        fn = tree.body[-1]
        used = _used_names(fn)
        kept = [a for a in fn.args.args if a.arg in used]
        if not kept:
            continue
        fn.args.args = kept  # an unused parameter only makes the input longer
        code = ast.unparse(tree)
        f_lines = len(ast.unparse(fn).splitlines())
        lines = code.splitlines()
        if not F_LINES[0] <= f_lines <= F_LINES[1] or len(lines) > MAX_LINES:
            continue
        if max(map(len, lines)) > MAX_LINE_CHARS:
            continue
        args = ", ".join(repr(_value(rng, params[a.arg], chars)) for a in kept)
        return code, args


def numbered_candidates(prefix: str, seed: int, one_program, source: str) -> Iterator[dict]:
    """Endless program rows `<prefix>-<seed>-<k>`, k = 0, 1, ...: row k is `one_program(random.Random(its id))` ->
    (code, input), so it depends on (prefix, seed, k) only. Shared by the synthesizers."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    for k in itertools.count():
        id = f"{prefix}-{seed}-{k}"
        code, args = one_program(random.Random(id))
        yield {"id": id, "code": code, "input": args, "entry_point": "f", "source": source}


def synth_candidates(seed: int) -> Iterator[dict]:
    """Endless program rows `synth-<seed>-<k>`, k = 0, 1, ...; the same seed gives the same rows."""
    return numbered_candidates("synth", seed, _one_program, "synth")


# `stepcode synth --kind`: the synthesizers, by name -> (module, generator of endless candidate rows).
KINDS = {"cruxeval": ("stepcode.data.synth", "synth_candidates"),       # CRUXEval-style programs (this module)
         "basic": ("stepcode.data.synth_basic", "basic_candidates"),    # short straight-line programs
         "logic": ("stepcode.data.synth_logic", "logic_candidates")}    # basic steps + loops, a verdict as the answer


def candidates_of(kind: str, seed: int) -> Iterator[dict]:
    """Endless candidate rows of the synthesizer `kind` (KINDS) for `seed`."""
    import importlib

    if kind not in KINDS:
        raise ValueError(f"unknown synthesizer {kind!r}; one of {', '.join(KINDS)}")
    module, generator = KINDS[kind]
    return getattr(importlib.import_module(module), generator)(seed)


def synthesize(n: int, seed: int, params, *, progress: bool = False, kind: str = "cruxeval") -> tuple[list[dict], dict]:
    """The first `n` candidates of `seed` that pass the static filter *and* trace cleanly in the sandbox (status
    ok: fast, deterministic across hash seeds, no memory addresses, 1..max_lines anchor lines) — CRUXEval's filter,
    applied by running. Returns the program rows and a report (candidates tried, rejections by reason, diversity)."""
    from collections import Counter

    from stepcode.data.corpus import diversity, static_filter
    from stepcode.data.traces import trace_rows
    from stepcode.sandbox.engine import Sandbox

    kept: list[dict] = []
    rejected: Counter = Counter()
    seen: set[tuple[str, str]] = set()
    tried = 0
    candidates = candidates_of(kind, seed)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="synthesizing", unit="prog", dynamic_ncols=True)
    with Sandbox(params.sandbox, hash_seeds=params.trace.hash_seeds) as sandbox:
        while len(kept) < n:
            batch = []
            for row in itertools.islice(candidates, max(64, (n - len(kept)) * 11 // 10)):
                tried += 1
                why = static_filter(row)
                if why is None and (row["code"], row["input"]) in seen:
                    why = "duplicate: the same code and input as an earlier program (the data gate refuses those)"
                if why is None:
                    seen.add((row["code"], row["input"]))
                    batch.append(row)
                else:
                    rejected[why.split(":")[0] if why.startswith("duplicate") else "static: " + why.split(":")[0]] += 1
            for traced in trace_rows(batch, params, sandbox=sandbox):
                if traced["status"] == "ok" and len(kept) < n:
                    kept.append({k: traced[k] for k in ("id", "code", "input", "entry_point", "source")})
                    if bar is not None:
                        bar.update(1)
                elif traced["status"] != "ok":
                    rejected[traced["status"]] += 1
    if bar is not None:
        bar.close()
    return kept, {"kept": len(kept), "candidates": tried, "rejected": dict(rejected.most_common()),
                  "diversity": diversity(kept)}


def synthesize_file(out_path, params, *, progress: bool = True, kind: str = "cruxeval") -> dict:
    """The `synth` stage: n programs (params.synth) of a synthesizer (KINDS) to a JSONL file, atomically. Returns
    the report."""
    from stepcode.jsonl import write_jsonl

    rows, report = synthesize(params.synth.n, params.synth.seed, params, progress=progress, kind=kind)
    write_jsonl(out_path, rows)
    return report
