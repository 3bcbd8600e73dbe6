"""A learnable program distribution for a tiny model trained from scratch: short straight-line functions over small
values. The full synthesizer (`stepcode.data.synth`) writes CRUXEval-style programs
(`''.join(sorted(s)).center(9, 'r')`) that a 4-layer model trained for minutes cannot execute; the ablation study
(`stepcode study ablation`) needs a model that learns *some* step accuracy from SFT, or RL has nothing to improve. So
this generator keeps every step local:

    from itertools import islice
    from stepcode.data.synth_basic import basic_candidates
    for row in islice(basic_candidates(seed=7), 2):
        print(row["input"]); print(row["code"])

    def f(n, w):
        a = n + 3
        b = w.upper()
        if a > 5:
            c = a - 2
        else:
            c = a * 2
        return c

- arguments: one (7 times in 10) or two of an int in 0..9, a word of 2-3 letters from `a`-`e`, a list of 2-3 ints
  in 0..9;
- 2-4 assignments, each binding a NEW variable (so every anchor prints a fresh name in program order) to a literal
  (one time in five) or to one operation on earlier names and small literals: int (+k, -k, *2, //2, %3, +, max,
  min, len, sum, first/last item), str (upper, +, reversed, *2, first letter, drop first, str(int)), list (+[x],
  sorted, reversed, slice, a pair); with probability 1/4 one statement is an if/else on `int > k` binding the same
  name in both branches;
- `return` the last variable. Rows look like `synth.synth_candidates` rows with ids `basic-<seed>-<k>` and
  `"source": "synth-basic"`; anchors, tracing and the dataset builder treat them like any program.

Deterministic: candidate k of a seed draws from `random.Random(f"basic-{seed}-{k}")`. Values stay small by
construction (ints below ~60, words below 8 letters, lists below 6 items), so every trace line is short.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from stepcode.data.synth import numbered_candidates

LETTERS = "abcde"
NAMES = ("a", "b", "c", "d")
PARAM_NAMES = {"int": ("n", "m"), "str": ("w", "s"), "list": ("xs", "ys")}

# type -> templates over typed holes: {int} {str} {list} are earlier variables of that type, {k} a literal 1..5.
OPS: dict[str, list[str]] = {
    "int": ["{int} + {k}", "{int} - {k}", "{int} * 2", "{int} // 2", "{int} % 3", "{int} + {int}",
            "max({int}, {int})", "min({int}, {int})", "len({str})", "len({list})", "sum({list})", "{list}[0]",
            "{list}[-1]"],
    "str": ["{str}.upper()", "{str} + {str}", "{str}[::-1]", "{str} * 2", "{str}[0]", "{str}[1:]", "str({int})"],
    "list": ["{list} + [{int}]", "sorted({list})", "{list}[::-1]", "{list}[1:]", "[{int}, {int}]"],
}


def fill(rng: random.Random, template: str, scope: dict[str, list[str]]) -> str | None:
    """The template with each hole replaced by a variable of its type (None when the scope has none)."""
    out = template
    for hole in ("int", "str", "list"):
        n = out.count("{" + hole + "}")
        if n and not scope[hole]:
            return None
        # two holes of one type take two different variables when there are two (no `max(n, n)`)
        picks = rng.sample(scope[hole], n) if len(scope[hole]) >= n else [rng.choice(scope[hole]) for _ in range(n)]
        for name in picks:
            out = out.replace("{" + hole + "}", name, 1)
    while "{k}" in out:
        out = out.replace("{k}", str(rng.randint(1, 5)), 1)
    return out


def expression(rng: random.Random, scope: dict[str, list[str]]) -> tuple[str, str]:
    """(type, expression) of one operation the scope can feed, or (one time in five) a literal."""
    if rng.random() < 0.2:
        t = rng.choice(("int", "int", "str", "list"))
        return t, literal(rng, t)
    while True:
        t = rng.choice(("int", "int", "str", "list"))
        expr = fill(rng, rng.choice(OPS[t]), scope)
        if expr is not None:
            return t, expr


def literal(rng: random.Random, t: str) -> str:
    if t == "int":
        return str(rng.randint(0, 9))
    if t == "str":
        return repr("".join(rng.choice(LETTERS) for _ in range(rng.randint(2, 3))))
    return repr([rng.randint(0, 9) for _ in range(rng.randint(2, 3))])


def if_else(rng: random.Random, name: str, cond_on: list[str], scope: dict[str, list[str]]) -> tuple[str, list[str]]:
    """(type, lines) of `if <one of cond_on> > k: name = A else: name = B`; both branches bind the same type, so
    later steps can use the name."""
    cond = f"{rng.choice(cond_on)} > {rng.randint(1, 6)}"
    t, then = expression(rng, scope)
    for _ in range(10):
        t2, other = expression(rng, scope)
        if t2 == t and other != then:
            break
    else:
        other = then
    return t, [f"    if {cond}:", f"        {name} = {then}", "    else:", f"        {name} = {other}"]


def one_program(rng: random.Random) -> tuple[str, str]:
    """(code, input) of one basic program."""
    kinds = rng.sample(("int", "str", "list"), 1 if rng.random() < 0.7 else 2)
    params = [PARAM_NAMES[t][0] for t in kinds]
    scope: dict[str, list[str]] = {"int": [], "str": [], "list": []}
    for t, name in zip(kinds, params):
        scope[t].append(name)
    lines = [f"def f({', '.join(params)}):"]
    branch_at = rng.randrange(4) if rng.random() < 0.25 else -1
    steps = rng.randint(2, 4)
    last = None
    for i, name in enumerate(NAMES[:steps]):
        if i == branch_at and scope["int"]:
            t, branch = if_else(rng, name, scope["int"], scope)
            lines += branch
        else:
            t, expr = expression(rng, scope)
            lines.append(f"    {name} = {expr}")
        scope[t].append(name)
        last = name
    lines.append(f"    return {last}")
    return "\n".join(lines), ", ".join(literal(rng, t) for t in kinds)


def basic_candidates(seed: int) -> Iterator[dict]:
    """Endless program rows `basic-<seed>-<k>`, k = 0, 1, ...; the same seed gives the same rows."""
    return numbered_candidates("basic", seed, one_program, "synth-basic")
