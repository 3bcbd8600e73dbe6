"""Programs whose answer does not copy the last step: the corpus where "right answer, wrong logic" can happen.

In `stepcode.data.synth_basic` a program returns its last variable, so the final answer is the last intermediate
value again, and a policy that gets the answer right has got that step right too. The paper's central phenomenon
(Table 6: terminal-reward RL reaches 84.5% final but 66.3% step accuracy) needs answers that a wrong chain of steps
can still hit. Here the steps are basic ones (small-int arithmetic, max/min/len/sum, words, short lists, a branch
on an earlier value), one program in three has a short loop, and the return is a *verdict* over the intermediate
values with a small range — a comparison, a boolean combination, a remainder, a count:

    from itertools import islice
    from stepcode.data.synth_logic import logic_candidates
    for row in islice(logic_candidates(seed=3), 1):
        print(row["input"]); print(row["code"])

    def f(n, xs):
        a = n + 3
        b = a % 4
        c = 0
        for x in xs:
            if x > b:
                c = c + 1
        return c < b and a > 4

Instrumented, every step prints (`a`, `b`, `c` after the loop) and so does `return_val`; the answer is `True` or
`False`, which a policy can guess right while `a` or `b` is wrong. About half the answers are booleans, the rest
small ints (a remainder, a count, min/max of two steps). Rows have ids `logic-<seed>-<k>` and `"source":
"synth-logic"`; deterministic per (seed, k) like the other synthesizers. Learnable by a model trained from scratch in
minutes (`benchmarks/` and the study's report say how far it gets).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from stepcode.data.synth import numbered_candidates
from stepcode.data.synth_basic import PARAM_NAMES, expression, fill, if_else, literal

NAMES = ("a", "b", "c", "d", "e")

# Verdicts over typed holes, as in synth_basic ({int} {str} {list}: variables of that type, {k}: a literal 1..5).
# Each draws on the steps: `pick_scope` puts the computed variables first, so most verdicts depend on them.
VERDICTS: list[str] = [
    "{int} > {int}", "{int} == {int}", "{int} % 2 == 0", "{int} > {k}", "{int} < {k} or {int} > {k}",
    "{int} > {k} and {int} < {int}", "{int} in {list}", "len({list}) > {int}", "{str} == {str}",
    "len({str}) > {int}", "not {int} > {int}",
    "{int} % 3", "{int} % 2", "({int} + {int}) % 5", "min({int}, {int}) % 4", "{list}.count({int})",
    "len({str}) % 3", "max({int}, {int}) // 3",
]

# A loop over a list: the accumulator starts at 0 (or an int in scope), and each item updates it one of these ways.
LOOP_BODIES = (
    ("{acc} = {acc} + x",),
    ("if x > {k}:", "    {acc} = {acc} + 1"),
    ("{acc} = max({acc}, x)",),
    ("if x % 2 == 0:", "    {acc} = {acc} + x"),
    ("{acc} = {acc} + x % 3",),
)


def _loop(rng: random.Random, name: str, scope: dict[str, list[str]]) -> list[str]:
    """Lines of `name = start; for x in LIST: <update name>` (the list from the scope, which has one)."""
    start = rng.choice(["0", "0", rng.choice(scope["int"])]) if scope["int"] else "0"
    body = [fill(rng, line.replace("{acc}", name), scope) for line in rng.choice(LOOP_BODIES)]
    return [f"    {name} = {start}", f"    for x in {rng.choice(scope['list'])}:"] + [f"        {b}" for b in body]


def _verdict(rng: random.Random, scope: dict[str, list[str]], computed: set[str]) -> str:
    """A return expression over the scope that reads at least one computed variable (so it depends on the steps);
    two holes of one type always take two different variables (no `b > b`)."""
    for _ in range(100):
        template = rng.choice(VERDICTS)
        if any(template.count("{" + t + "}") > len(scope[t]) for t in scope):
            continue
        expr = fill(rng, template, scope)
        if expr is not None and _names(expr) & computed:
            return expr
    last = next(name for name in reversed(NAMES) if name in computed)   # unreachable in practice: a plain fallback
    return f"len(str({last})) > 1"


def _names(expr: str) -> set[str]:
    import re

    return set(re.findall(r"\b[a-z]+\b", expr))


def one_program(rng: random.Random) -> tuple[str, str]:
    """(code, input) of one logic program."""
    kinds = ["int"] if rng.random() < 0.5 else rng.sample(("int", "str", "list"), 2)
    if rng.random() < 0.35 and "list" not in kinds:
        kinds = kinds[:1] + ["list"]
    params = [PARAM_NAMES[t][0] for t in kinds]
    scope: dict[str, list[str]] = {"int": [], "str": [], "list": []}
    for t, name in zip(kinds, params):
        scope[t].append(name)
    lines = [f"def f({', '.join(params)}):"]
    steps = rng.randint(2, 4)
    branch_at = rng.randrange(1, steps) if rng.random() < 0.3 else -1
    loop_at = rng.randrange(steps) if scope["list"] and rng.random() < 0.5 else -1
    computed: set[str] = set()
    for i, name in enumerate(NAMES[:steps]):
        if i == loop_at:
            lines += _loop(rng, name, scope)
            t = "int"
        elif i == branch_at and scope["int"]:
            # the condition reads an earlier step when there is one: the path depends on the steps
            t, branch = if_else(rng, name, sorted(computed & set(scope["int"])) or scope["int"], scope)
            lines += branch
        else:
            t, expr = expression(rng, scope)
            lines.append(f"    {name} = {expr}")
        scope[t].append(name)
        computed.add(name)
    # the verdict prefers computed variables: put them first in each type's scope
    ordered = {k: sorted(v, key=lambda n: n not in computed) for k, v in scope.items()}
    lines.append(f"    return {_verdict(rng, ordered, computed)}")
    return "\n".join(lines), ", ".join(literal(rng, t) for t in kinds)


def logic_candidates(seed: int) -> Iterator[dict]:
    """Endless program rows `logic-<seed>-<k>`, k = 0, 1, ...; the same seed gives the same rows."""
    return numbered_candidates("logic", seed, one_program, "synth-logic")
