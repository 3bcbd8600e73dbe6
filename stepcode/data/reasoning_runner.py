"""The "reasoning" sandbox runner: run an instrumented program under a line tracer and record, in execution order, the
facts its SFT reasoning is written from (stepcode/data/reasoning.py composes the text). Runs *inside* a sandbox child.

    from stepcode.sandbox.engine import Sandbox
    with Sandbox(hash_seeds=(0,), runners=("stepcode.data.reasoning_runner",)) as sb:
        sb.run("reasoning", {"source": row["instrumented_code"], "entry_point": "f", "input": "3",
                             "anchor_lines": None, "max_lines": 10, "max_line_chars": 2000})
        # -> {"status": "ok", "reason": None, "trace": ["y: 7", ...], "facts": [...], "truncated": False}

The payload's `source` is the *display* source (what the model is shown, anchors as `print(f'LABEL: {EXPR}')`).
`prepare` (in the server, before the fork: pure AST work) rewrites each anchor line into a call of a recorder, line for
line, exactly as stepcode/anchors.py's exec source does (`anchor_lines`, when given, names the anchor lines; otherwise
every `print(f'NAME: {EXPR}')` statement inside a function counts, and the caller checks the run reproduces the row's
trace), compiles it, and plans what to narrate, per line of each function:
- a simple statement followed by anchors (its "owner" statement): its right-hand side, values substituted, then
  reduced innermost-first (`_Stepper`);
- an `if`/`elif` test outside loops: its value and the branch taken;
- an outermost loop (`for`/`while` outside other loops): the values its variables (targets + the labels of the anchors
  after it) take at the end of every iteration, and how it ended.
The child records facts in execution order (`Tracer`): "call"/"return"/"raise" of every program function, "stmt",
"if", "loop", and "anchor" (label, the printed line, the repr of the very object printed).

Exactness. Every value is read from the run. A sub-expression is re-evaluated only on deep copies of plain data
(builtin scalars and containers of them, exact types: no user code runs), with Python's own operators and a whitelist
of pure builtins and methods, short-circuits honoured; a call of a program function is never re-run: its result is
the one the tracer saw it return (matched by function and argument reprs). When the expression may run user code
(a program call, a non-plain operand, a mutating method) only the function's own immutable fast locals are
substituted (no callee can rebind them), so the start-of-statement snapshot is what Python reads. Anything else stays
as source text; a chain then ends at the value the anchor printed. Lambdas, comprehensions, walruses, yield: no steps.

Standard library only, small: the sandbox server imports it once before forking. It must never raise out of `run`.
"""

from __future__ import annotations

import ast
import builtins
import copy
import io
import operator
import sys
from collections import Counter, OrderedDict, defaultdict, deque

from stepcode.sandbox.runners import AnchorLimitExceeded, BatchState, OutputLimitExceeded

FILENAME = "<program>"
MAX_VALUE_CHARS = 80       # longest repr of a computed value shown in a chain; longer ones keep their source text
MAX_NAME_CHARS = 40        # longest repr substituted for a name (a longer value keeps its name: chains stay short)
MAX_STEP_CHARS = 400       # a chain with a longer step keeps only its source and its value
MAX_ROUNDS = 12            # reduction rounds per expression
MAX_FACTS = 4000           # facts per run; past it the tracer stops recording (the run goes on) and says so
LOOP_HEAD, LOOP_TAIL = 3, 2   # iterations listed at the start and the end of a loop summary
MAX_LOOP_VALUE_CHARS = 60  # longer values in a loop listing are summarised ("<list of 57 items>")
_FN_FLAGS_SKIPPED = 0x20 | 0x80 | 0x100 | 0x200   # generator, coroutine, iterable coroutine, async generator

_SCALARS = frozenset({int, float, bool, str, bytes, complex, type(None), range})
_SEQUENCES = frozenset({list, tuple, set, frozenset, deque})
_MAPPINGS = frozenset({dict, OrderedDict, Counter, defaultdict})
_IMMUTABLE = frozenset({int, float, bool, str, bytes, complex, type(None), range})
_FACTORIES = frozenset({int, float, str, list, dict, set, tuple, bool})   # defaultdict factories with a plain repr

_PURE_BUILTINS = frozenset({
    "abs", "all", "any", "bin", "bool", "chr", "divmod", "enumerate", "filter", "float", "frozenset", "hex", "int",
    "len", "list", "map", "max", "min", "oct", "ord", "pow", "range", "repr", "reversed", "round", "set", "sorted",
    "str", "sum", "tuple", "zip", "dict"})
_STR_METHODS = frozenset({
    "capitalize", "casefold", "center", "count", "endswith", "expandtabs", "find", "index", "isalnum", "isalpha",
    "isascii", "isdecimal", "isdigit", "isidentifier", "islower", "isnumeric", "isspace", "istitle", "isupper", "join",
    "ljust", "lower", "lstrip", "partition", "removeprefix", "removesuffix", "replace", "rfind", "rindex", "rjust",
    "rpartition", "rsplit", "rstrip", "split", "splitlines", "startswith", "strip", "swapcase", "title", "upper",
    "zfill", "format"})
_PURE_METHODS = {
    str: _STR_METHODS, bytes: _STR_METHODS - {"format"},
    list: frozenset({"count", "index", "copy"}), tuple: frozenset({"count", "index"}),
    dict: frozenset({"get", "copy", "keys", "values", "items"}),
    set: frozenset({"union", "intersection", "difference", "symmetric_difference", "issubset", "issuperset",
                    "isdisjoint", "copy"}),
    frozenset: frozenset({"union", "intersection", "difference", "symmetric_difference", "issubset", "issuperset",
                          "isdisjoint"}),
    int: frozenset({"bit_length", "bit_count"}), float: frozenset({"is_integer"}),
}
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
           ast.LShift: operator.lshift, ast.RShift: operator.rshift, ast.BitOr: operator.or_,
           ast.BitXor: operator.xor, ast.BitAnd: operator.and_, ast.MatMult: operator.matmul}
_UNARYOPS = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_, ast.Invert: operator.invert}
_CMPOPS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
           ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
           ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}
_NO_STEPS = (ast.NamedExpr, ast.Yield, ast.YieldFrom, ast.Await)     # they rebind or suspend mid-expression
_SCOPES = (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)   # kept as source, never entered
_SIMPLE = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr, ast.Delete, ast.Return, ast.Pass)
_UNBOUND = object()


# --- values ---------------------------------------------------------------------------------------------------------

def plain(value, budget: int = 60) -> bool:
    """Builtin data all the way down (exact types, at most `budget` nodes): its repr, ==, copy run no user code."""
    stack = [value]
    while stack:
        budget -= 1
        if budget < 0:
            return False
        x = stack.pop()
        t = type(x)
        if t in _SCALARS:
            if t is int and x.bit_length() > 4000:   # repr would raise (int max str digits)
                return False
            continue
        if t in _SEQUENCES:
            if len(x) > budget:
                return False
            stack.extend(x)
        elif t in _MAPPINGS:
            if len(x) > budget or (t is defaultdict and x.default_factory not in _FACTORIES):
                return False
            stack.extend(x.keys())
            stack.extend(x.values())
        else:
            return False
    return True


def immutable(value) -> bool:
    t = type(value)
    if t in _IMMUTABLE:
        return plain(value)
    if t in (tuple, frozenset):
        return all(immutable(x) for x in value) and plain(value)
    return False


def value_text(value, budget: int = 60, limit: int = MAX_VALUE_CHARS) -> str | None:
    """repr of a plain value no longer than `limit`, else None (never runs user code)."""
    if not plain(value, budget):
        return None
    text = repr(value)
    return text if len(text) <= limit else None


def summary_text(value) -> str:
    """A loop listing's text for a value: its repr when short, else what it is."""
    text = value_text(value, limit=MAX_LOOP_VALUE_CHARS)
    if text is not None:
        return text
    t = type(value)
    if t is str:
        return f"<str of {len(value)} chars>"
    if t in _SEQUENCES or t in _MAPPINGS:
        return f"<{t.__name__} of {len(value)} items>"
    return f"<{t.__name__} object>"


def _safe_attr(obj, attr: str):
    """obj.attr read from the instance __dict__ when no user code could intercept the read; else _UNBOUND."""
    t = type(obj)
    try:
        if t.__getattribute__ is not object.__getattribute__:
            return _UNBOUND
        for klass in t.__mro__:
            found = klass.__dict__.get(attr, _UNBOUND)
            if found is not _UNBOUND and (hasattr(type(found), "__set__") or hasattr(type(found), "__delete__")):
                return _UNBOUND     # a data descriptor (property, slot) decides what the read gives
        d = object.__getattribute__(obj, "__dict__")
    except BaseException:  # noqa: BLE001 — no __dict__, odd type: not readable safely
        return _UNBOUND
    if type(d) is not dict:
        return _UNBOUND
    return d.get(attr, _UNBOUND)


def _chain_parts(node) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


# --- the stepper ----------------------------------------------------------------------------------------------------

class _Val:
    """A known value in an expression tree; `text` is how it is shown (its repr, or the source it replaced)."""

    __slots__ = ("v", "text")

    def __init__(self, v, text: str):
        self.v, self.text = v, text


class _Stuck(Exception):
    pass


def _display(node, tight: bool = False, receiver: bool = False):
    """A plain AST copy of a tree holding _Val leaves (as Names carrying their text), for ast.unparse. `tight`: an
    operand of an operator (a negative number there is parenthesised: `(-3) ** 2`); `receiver`: of an attribute."""
    if isinstance(node, _Val):
        text = node.text
        if (tight or receiver) and text.startswith("-") or receiver and type(node.v) in (int, float):
            text = f"({text})"
        return ast.Name(id=text, ctx=ast.Load())
    if not isinstance(node, ast.AST):
        return node
    fields = {}
    tight = isinstance(node, (ast.BinOp, ast.UnaryOp))
    for name, value in ast.iter_fields(node):
        if isinstance(value, list):
            fields[name] = [_display(x) for x in value]
        else:
            fields[name] = _display(value, tight, receiver=isinstance(node, ast.Attribute) and name == "value")
    return type(node)(**fields)


def render(node) -> str:
    if isinstance(node, _Val):
        return node.text
    return ast.unparse(_display(node))


class Snapshot:
    """What an expression's names are bound to at one moment of one frame: deep copies of plain values, markers for
    functions. `pure`: evaluating the expression runs no user code, so every plain name may be substituted."""

    def __init__(self, frame, node, results: list):
        self.results = results            # [(qualname, arg reprs, value, text)] of calls the statement made
        self.names: dict[str, tuple] = {}
        self.opaque = any(isinstance(n, _NO_STEPS) for n in ast.walk(node))
        if self.opaque:
            self.pure = False
            return
        f_locals, f_globals = frame.f_locals, frame.f_globals
        code = frame.f_code
        fast = set(code.co_varnames) - set(code.co_cellvars)
        builtins_ns = f_globals.get("__builtins__", builtins)
        builtins_ns = builtins_ns if isinstance(builtins_ns, dict) else vars(builtins_ns)
        pure = True
        callees = {id(n.func) for n in ast.walk(node) if isinstance(n, ast.Call)}
        for n in ast.walk(node):
            if isinstance(n, ast.Call) and not self._pure_call(n, f_locals, f_globals, builtins_ns):
                pure = False
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id not in self.names:
                value = f_locals.get(n.id, _UNBOUND)
                where = "local" if value is not _UNBOUND else "global"
                if value is _UNBOUND:
                    value = f_globals.get(n.id, _UNBOUND)
                if value is _UNBOUND:
                    value = builtins_ns.get(n.id, _UNBOUND)
                    where = "builtin"
                self.names[n.id] = self._entry(n.id, value, where == "local" and n.id in fast, where)
                if self.names[n.id][0] == "opaque" and id(n) not in callees:
                    pure = False
        self.pure = pure
        # attribute chains rooted at names (self.count): read without running code
        self.chains: dict[str, object] = {}
        for n in ast.walk(node):
            if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Load) and id(n) not in callees:
                parts = _chain_parts(n)
                if parts and parts[0] in self.names:
                    value = f_locals.get(parts[0], f_globals.get(parts[0], _UNBOUND))
                    for attr in parts[1:]:
                        if value is _UNBOUND:
                            break
                        value = _safe_attr(value, attr)
                    if value is not _UNBOUND and plain(value):
                        self.chains[".".join(parts)] = copy.deepcopy(value)

    @staticmethod
    def _pure_call(call, f_locals, f_globals, builtins_ns) -> bool:
        func = call.func
        if isinstance(func, ast.Name):
            if func.id in f_locals or func.id in f_globals:
                return False
            return func.id in _PURE_BUILTINS and builtins_ns.get(func.id) is getattr(builtins, func.id)
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            value = f_locals.get(func.value.id, f_globals.get(func.value.id, _UNBOUND))
            return func.attr in _PURE_METHODS.get(type(value), ()) and plain(value)
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Constant):
            return func.attr in _PURE_METHODS.get(type(func.value.value), ())
        return False

    @staticmethod
    def _entry(name: str, value, fast_local: bool, where: str) -> tuple:
        if value is _UNBOUND:
            return ("unbound",)
        if where == "builtin" and name in _PURE_BUILTINS and value is getattr(builtins, name, None):
            return ("builtin", value)
        code = getattr(value, "__code__", None)
        if code is not None and getattr(code, "co_filename", None) == FILENAME:
            return ("function", value.__qualname__)
        if plain(value):
            return ("value", copy.deepcopy(value), fast_local and immutable(value))
        if type(value) is type:
            return ("opaque",)
        return ("opaque", type(value).__name__)


class Stepper:
    """Substitute, then reduce innermost-first: the chain of renderings of one expression."""

    def __init__(self, snap: Snapshot):
        self.snap = snap
        self.used: set[int] = set()

    def chain(self, node) -> tuple[list[str], _Val | None]:
        """[source, substituted, step, ...]; the final _Val when fully reduced, else None."""
        chain = [render(node)]
        if self.snap.opaque:
            return chain, None
        try:
            tree = self.substitute(node)
            previous = None
            for rounds in range(MAX_ROUNDS + 1):
                text = render(tree)
                if text != chain[-1]:
                    chain.append(text)
                if isinstance(tree, _Val):   # reduced; shown as its repr, or else still as source (a long value)
                    shown = tree.text == value_text(tree.v, budget=5000, limit=1 << 20)
                    return self._bounded(chain), tree if shown else None
                if rounds and text == previous:
                    break                 # no progress
                previous = text
                tree = self.round(tree)
        except (_Stuck, RecursionError, ValueError, TypeError):
            pass
        return self._bounded(chain), None

    @staticmethod
    def _bounded(chain: list[str]) -> list[str]:
        if any(len(step) > MAX_STEP_CHARS for step in chain[1:-1]):
            return [chain[0], chain[-1]] if len(chain[-1]) <= MAX_STEP_CHARS else chain[:1]
        return chain

    # -- substitution --

    def _value(self, v, source: str, limit: int = MAX_VALUE_CHARS) -> _Val:
        text = value_text(v, limit=limit)
        return _Val(v, text if text is not None else source)

    def substitute(self, node, receiver: bool = False):
        if isinstance(node, ast.Constant):
            return _Val(node.value, repr(node.value)) if plain(node.value) else node
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            entry = self.snap.names.get(node.id, ("unbound",))
            if entry[0] == "value" and (self.snap.pure or entry[2]):
                return _Val(entry[1], node.id) if receiver else self._value(entry[1], node.id, MAX_NAME_CHARS)
            if entry[0] == "builtin":
                return _Val(entry[1], node.id)
            return node
        if isinstance(node, ast.Attribute) and self.snap.pure:
            parts = _chain_parts(node)
            if parts and ".".join(parts) in self.snap.chains:
                return self._value(self.snap.chains[".".join(parts)], ".".join(parts), MAX_NAME_CHARS)
            return node
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                func = ast.Attribute(value=self.substitute(func.value, receiver=True), attr=func.attr, ctx=func.ctx)
            elif isinstance(func, ast.Name):
                func = self.substitute(func)
            return ast.Call(func=func, args=[self.substitute(a) for a in node.args],
                            keywords=[ast.keyword(arg=k.arg, value=self.substitute(k.value)) for k in node.keywords])
        if isinstance(node, (ast.JoinedStr, ast.Starred, *_SCOPES)) or not isinstance(node, ast.expr):
            return node
        fields = {}
        for name, value in ast.iter_fields(node):
            if isinstance(value, list):
                fields[name] = [self.substitute(x) if isinstance(x, ast.expr) else x for x in value]
            elif isinstance(value, ast.expr):
                fields[name] = self.substitute(value)
            else:
                fields[name] = value
        return type(node)(**fields)

    # -- one round: every node whose operands are all known is evaluated --

    def round(self, node):
        if isinstance(node, _Val):
            return node
        if isinstance(node, ast.BoolOp):
            first = node.values[0]
            if not isinstance(first, _Val):
                return ast.BoolOp(op=node.op, values=[self.round(first), *node.values[1:]])
            decided = bool(first.v) if isinstance(node.op, ast.Or) else not first.v
            if decided or len(node.values) == 1:
                return first
            rest = node.values[1:]
            return rest[0] if len(rest) == 1 else ast.BoolOp(op=node.op, values=rest)
        if isinstance(node, ast.IfExp):
            if isinstance(node.test, _Val):
                return node.body if node.test.v else node.orelse
            return ast.IfExp(test=self.round(node.test), body=node.body, orelse=node.orelse)
        kids = self._operands(node)
        if kids is None:              # a name kept, a lambda, an f-string...: no progress here
            return node
        if all(k is None or isinstance(k, _Val) or self._object_receiver(node, k) or self._program_function(node, k)
               for k in kids):
            try:
                return self.evaluate(node)
            except (_Stuck, Exception):   # noqa: BLE001 — not re-evaluable here: the node stays as it is
                return node
        return self._rebuild(node)

    def _object_receiver(self, node, kid) -> bool:
        return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and kid is node.func.value
                and isinstance(kid, ast.Name) and self.snap.names.get(kid.id, ("",))[0] == "opaque")

    def _program_function(self, node, kid) -> bool:
        return (isinstance(node, ast.Call) and kid is node.func and isinstance(kid, ast.Name)
                and self.snap.names.get(kid.id, ("",))[0] == "function")

    @staticmethod
    def _operands(node) -> list | None:
        if isinstance(node, ast.BinOp):
            return [node.left, node.right]
        if isinstance(node, ast.UnaryOp):
            return [node.operand]
        if isinstance(node, ast.Compare):
            return [node.left, *node.comparators]
        if isinstance(node, ast.Subscript):
            if isinstance(node.slice, ast.Slice):
                return [node.value, node.slice.lower, node.slice.upper, node.slice.step]
            return [node.value, node.slice]
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return list(node.elts)
        if isinstance(node, ast.Dict):
            return None if any(k is None for k in node.keys) else [*node.keys, *node.values]
        if isinstance(node, ast.Call):
            if any(k.arg is None for k in node.keywords):
                return None
            head = [node.func.value] if isinstance(node.func, ast.Attribute) else [node.func]
            return [*head, *node.args, *(k.value for k in node.keywords)]
        return None

    def _rebuild(self, node):
        r = lambda x: x if x is None or isinstance(x, _Val) else self.round(x)  # noqa: E731
        if isinstance(node, ast.BinOp):
            return ast.BinOp(left=r(node.left), op=node.op, right=r(node.right))
        if isinstance(node, ast.UnaryOp):
            return ast.UnaryOp(op=node.op, operand=r(node.operand))
        if isinstance(node, ast.Compare):
            return ast.Compare(left=r(node.left), ops=node.ops, comparators=[r(c) for c in node.comparators])
        if isinstance(node, ast.Subscript):
            s = node.slice
            s = ast.Slice(lower=r(s.lower), upper=r(s.upper), step=r(s.step)) if isinstance(s, ast.Slice) else r(s)
            return ast.Subscript(value=r(node.value), slice=s, ctx=node.ctx)
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            ctx = {} if isinstance(node, ast.Set) else {"ctx": node.ctx}
            return type(node)(elts=[r(e) for e in node.elts], **ctx)
        if isinstance(node, ast.Dict):
            return ast.Dict(keys=[r(k) for k in node.keys], values=[r(v) for v in node.values])
        func = node.func
        if isinstance(func, ast.Attribute):
            receiver = func.value if self._object_receiver(node, func.value) else r(func.value)
            func = ast.Attribute(value=receiver, attr=func.attr, ctx=func.ctx)
        elif not isinstance(func, (ast.Name, _Val)):
            func = r(func)
        return ast.Call(func=func, args=[r(a) for a in node.args],
                        keywords=[ast.keyword(arg=k.arg, value=r(k.value)) for k in node.keywords])

    def evaluate(self, node) -> _Val:
        v = self._compute(node)
        text = value_text(v)
        if text is None:
            if not plain(v, 200) and type(v).__name__ not in ("enumerate", "zip", "map", "filter", "reversed",
                                                               "list_reverseiterator", "dict_keys", "dict_values",
                                                               "dict_items", "range_iterator"):
                raise _Stuck
            text = render(node)
        return _Val(v, text)

    def _compute(self, node):
        if isinstance(node, ast.BinOp):
            a, b = node.left.v, node.right.v
            _guard(node.op, a, b)
            return _BINOPS[type(node.op)](a, b)
        if isinstance(node, ast.UnaryOp):
            return _UNARYOPS[type(node.op)](node.operand.v)
        if isinstance(node, ast.Compare):
            left = node.left.v
            for op, right in zip(node.ops, node.comparators):
                ok = _CMPOPS[type(op)](left, right.v)
                if not ok:
                    return ok
                left = right.v
            return ok
        if isinstance(node, ast.Subscript):
            s = node.slice
            key = slice(*(None if p is None else p.v for p in (s.lower, s.upper, s.step))) \
                if isinstance(s, ast.Slice) else s.v
            return node.value.v[key]
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return {ast.Tuple: tuple, ast.List: list, ast.Set: set}[type(node)](e.v for e in node.elts)
        if isinstance(node, ast.Dict):
            return {k.v: v.v for k, v in zip(node.keys, node.values)}
        if isinstance(node, ast.Call):
            return self._call(node)
        raise _Stuck

    def _call(self, node):
        args = [a.v for a in node.args]
        kwargs = {k.arg: k.value.v for k in node.keywords}
        func = node.func
        if isinstance(func, _Val):                        # a whitelisted builtin
            if func.v in (max, min, sorted) and "key" in kwargs:
                raise _Stuck
            return func.v(*args, **kwargs)
        if isinstance(func, ast.Attribute) and isinstance(func.value, _Val):
            receiver = func.value.v
            if func.attr in _PURE_METHODS.get(type(receiver), ()) and plain(receiver, 200):
                return getattr(receiver, func.attr)(*args, **kwargs)
            raise _Stuck
        if kwargs or not all(plain(a) for a in args):
            raise _Stuck
        texts = tuple(repr(a) for a in args)
        if isinstance(func, ast.Name) and self.snap.names.get(func.id, ("",))[0] == "function":
            return self._result(lambda q, a: q == self.snap.names[func.id][1] and a == texts)
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):   # a method of a program object
            return self._result(lambda q, a: q.endswith("." + func.attr) and a[1:] == texts)
        raise _Stuck

    def _result(self, match):
        for k, (qualname, arg_texts, value, _) in enumerate(self.snap.results):
            if k not in self.used and arg_texts is not None and match(qualname, arg_texts):
                self.used.add(k)
                if value is _UNBOUND:
                    raise _Stuck
                return copy.deepcopy(value)
        raise _Stuck


def _guard(op, a, b) -> None:
    """Refuse re-evaluations whose cost could explode (the program's own result then stays unreduced)."""
    if isinstance(op, ast.Pow) and type(b) is int and abs(b) > 256 and type(a) is int and abs(a) > 1:
        raise _Stuck
    if isinstance(op, ast.LShift) and type(b) is int and b > 256:
        raise _Stuck
    if isinstance(op, ast.Mult):
        n = b if type(b) is int else a if type(a) is int else 0
        if n > 10_000 and (type(a) is not int or type(b) is not int):
            raise _Stuck


# --- the plan (server side: AST only) -------------------------------------------------------------------------------

def _anchor_of(stmt) -> tuple[str, ast.expr] | None:
    """(label, expr) of a `print(f'LABEL: {EXPR}')` statement, else None."""
    if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) and stmt.lineno == stmt.end_lineno):
        return None
    call = stmt.value
    if not (isinstance(call.func, ast.Name) and call.func.id == "print" and len(call.args) == 1
            and not call.keywords and isinstance(call.args[0], ast.JoinedStr)):
        return None
    parts = call.args[0].values
    if not (len(parts) == 2 and isinstance(parts[0], ast.Constant) and isinstance(parts[0].value, str)
            and parts[0].value.endswith(": ") and isinstance(parts[1], ast.FormattedValue)
            and parts[1].conversion == -1 and parts[1].format_spec is None):
        return None
    label = parts[0].value[:-2]
    if not label or not all(p.isidentifier() for p in label.split(".")):
        return None
    return label, parts[1].value


class Plan:
    def __init__(self):
        self.anchors: dict[int, dict] = {}    # line -> {"label", "owner": [kind, line]}
        self.stmts: dict[int, ast.stmt] = {}  # owner statements, by first line
        self.ifs: dict[int, tuple] = {}       # line -> (If node, is_elif)
        self.loops: dict[int, tuple] = {}     # line -> (loop node, [(name, expr node)] tracked)


def plan_program(tree: ast.Module, source_lines: list[str], anchor_lines: set[int] | None) -> tuple[Plan, dict]:
    """The narration plan, and {line: (label, expr source)} of the anchors to rewrite."""
    plan, rewrites = Plan(), {}

    def is_anchor(stmt, in_function: bool):
        if not in_function:
            return None
        found = _anchor_of(stmt)
        if found is None or (anchor_lines is not None and stmt.lineno not in anchor_lines):
            return None
        return found

    def block(stmts: list, in_function: bool, in_loop: bool) -> None:
        found = [is_anchor(s, in_function) for s in stmts]
        for i, s in enumerate(stmts):
            if found[i]:
                label, expr = found[i]
                rewrites[s.lineno] = (label, ast.unparse(expr))
                j = i - 1
                while j >= 0 and found[j]:
                    j -= 1
                owner = stmts[j] if j >= 0 else None
                if label == "return_val" and isinstance(expr, ast.Constant) and expr.value is None:
                    kind = ["end", None]
                elif isinstance(owner, (ast.For, ast.While)):
                    kind = ["loop", owner.lineno]
                elif isinstance(owner, _SIMPLE):
                    kind = ["stmt", owner.lineno]
                else:
                    kind = ["none", None]
                plan.anchors[s.lineno] = {"label": label, "owner": kind}
                continue
            if in_function and isinstance(s, _SIMPLE) and i + 1 < len(stmts) and found[i + 1]:
                plan.stmts[s.lineno] = s
            if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)):
                block(s.body, True, False)
            elif isinstance(s, ast.ClassDef):
                block(s.body, False, False)
            elif isinstance(s, (ast.For, ast.While, ast.AsyncFor)):
                if in_function and not in_loop:
                    tracked = []
                    if isinstance(s, ast.For):
                        tracked += [(n.id, n) for n in ast.walk(s.target) if isinstance(n, ast.Name)]
                    for later in found[i + 1:]:
                        if not later:
                            break
                        if not (later[0] == "return_val" and isinstance(later[1], ast.Constant)):
                            tracked.append(later)
                    seen, unique = set(), []
                    for name, expr in tracked:
                        if name not in seen:
                            seen.add(name)
                            unique.append((name, expr))
                    plan.loops[s.lineno] = (s, unique)
                block(s.body, in_function, True)
                block(s.orelse, in_function, True)
            elif isinstance(s, ast.If):
                if in_function and not in_loop:
                    line = source_lines[s.lineno - 1].lstrip() if s.lineno <= len(source_lines) else ""
                    plan.ifs[s.lineno] = (s, line.startswith("elif"))
                block(s.body, in_function, in_loop)
                block(s.orelse, in_function, in_loop)
            elif isinstance(s, (ast.With, ast.AsyncWith)):
                block(s.body, in_function, in_loop)
            elif isinstance(s, (ast.Try, ast.TryStar)):
                for b in (s.body, *(h.body for h in s.handlers), s.orelse, s.finalbody):
                    block(b, in_function, in_loop)
            elif isinstance(s, ast.Match):
                for case in s.cases:
                    block(case.body, in_function, in_loop)

    block(tree.body, False, False)
    return plan, rewrites


def _fresh_name(source: str) -> str:
    name, n = "_stepcode_reasoning_anchor", 0
    while name in source:
        n += 1
        name = f"_stepcode_reasoning_anchor_{n}"
    return name


def prepare_reasoning(payload: dict):
    """payload: source (the display source), entry_point, input, anchor_lines (list or None), max_lines,
    max_line_chars. Returns (code, call, payload, plan, anchor_fn) or a finished verdict."""
    source = payload["source"]
    try:
        tree = ast.parse(source)
        lines = source.split("\n")
        plan, rewrites = plan_program(tree, lines, None if payload.get("anchor_lines") is None
                                      else set(payload["anchor_lines"]))
        anchor_fn = _fresh_name(source)
        for line, (label, expr) in rewrites.items():
            text = lines[line - 1]
            indent = text[: len(text) - len(text.lstrip())]
            lines[line - 1] = f"{indent}{anchor_fn}({label!r}, {expr})"
        code = compile("\n".join(lines), FILENAME, "exec", dont_inherit=True)
        call = compile(f"{payload['entry_point']}({payload['input']})", "<input>", "eval", dont_inherit=True)
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        return {"status": "syntax_error", "reason": _describe(e), "trace": [], "facts": []}
    return code, call, payload, plan, anchor_fn


# --- the tracer (child side) ----------------------------------------------------------------------------------------

class _Frame:
    __slots__ = ("qualname", "args", "arg_values", "depth", "pending", "loop", "results", "raised", "parent")

    def __init__(self, qualname, args, arg_values, depth, parent):
        self.qualname, self.args, self.arg_values, self.depth, self.parent = qualname, args, arg_values, depth, parent
        self.pending = None     # (kind, node, Snapshot, first line, last line, extra)
        self.loop = None        # _Loop
        self.results: list = []
        self.raised = False


class _Loop:
    __slots__ = ("node", "tracked", "count", "head", "tail", "last_header", "test_snap", "emitted", "in_else")

    def __init__(self, node, tracked):
        self.node, self.tracked = node, tracked
        self.count = 0          # header events so far
        self.head: list = []    # the first LOOP_HEAD + 1 snapshots (texts)
        self.tail: list = []    # the last LOOP_TAIL + 1 snapshots
        self.last_header = False
        self.test_snap = None
        self.emitted = False
        self.in_else = False


class Tracer:
    def __init__(self, plan: Plan):
        self.plan = plan
        self.facts: list = []
        self.frames: dict[int, _Frame] = {}
        self.truncated = False

    def fact(self, item) -> None:
        if len(self.facts) >= MAX_FACTS:
            self.truncated = True
        else:
            self.facts.append(item)

    # -- events --

    def global_trace(self, frame, event, arg):
        code = frame.f_code
        if event != "call" or code.co_filename != FILENAME or code.co_name.startswith("<") \
                or code.co_flags & _FN_FLAGS_SKIPPED:
            return None
        parent = self._state_above(frame)
        names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount
                                 + bool(code.co_flags & 0x04) + bool(code.co_flags & 0x08)]
        f_locals = frame.f_locals
        values = [f_locals.get(n, _UNBOUND) for n in names]
        shown = [(n, v) for n, v in zip(names, values) if not (n in ("self", "cls") and n == names[0])]
        args = ", ".join(summary_text(v) for _, v in shown)
        arg_texts = tuple(value_text(v) for v in values)
        state = _Frame(code.co_qualname, args, None if None in arg_texts else arg_texts,
                       0 if parent is None else parent.depth + 1, parent)
        self.frames[id(frame)] = state
        if state.depth:
            self.fact({"k": "call", "fn": state.qualname, "args": args, "depth": state.depth})
        return self.local_trace

    def _state_above(self, frame):
        f = frame.f_back
        while f is not None:
            state = self.frames.get(id(f))
            if state is not None:
                return state
            f = f.f_back
        return None

    def local_trace(self, frame, event, arg):
        state = self.frames.get(id(frame))
        if state is None:
            return None
        try:
            if event == "line":
                self.on_line(frame, state, frame.f_lineno)
            elif event == "exception":
                state.raised = True
                state.pending = None      # the statement (or the if test) raised: it is not narrated
            elif event == "return":
                self.on_return(frame, state, arg)
        except (OutputLimitExceeded, AnchorLimitExceeded, MemoryError):
            raise
        except Exception as e:  # noqa: BLE001 — a bug of ours: stop narrating, never change the run
            self.fact({"k": "error", "reason": _describe(e)})
            self.truncated = True
            sys.settrace(None)
            return None
        return self.local_trace

    def on_line(self, frame, state: _Frame, line: int) -> None:
        state.raised = False
        pending = state.pending
        if pending is not None and not pending[3] <= line <= pending[4]:
            state.pending = None
            self.finish(frame, state, pending, line)
        loop = state.loop
        if loop is not None:
            node = loop.node
            if line == node.lineno:
                self.loop_header(frame, loop)
            elif not node.lineno <= line <= node.end_lineno:
                self.end_loop(frame, state, exhausted=loop.last_header or loop.in_else)
            else:
                if node.orelse and node.orelse[0].lineno <= line <= node.orelse[-1].end_lineno:
                    loop.in_else = loop.in_else or loop.last_header
                loop.last_header = False
        if state.loop is None and line in self.plan.loops:
            node, tracked = self.plan.loops[line]
            state.loop = _Loop(node, tracked)
            self.loop_header(frame, state.loop)
        if state.pending is None:
            stmt = self.plan.stmts.get(line)
            if stmt is not None:
                node = _stmt_expr(stmt)
                state.results = []
                snap = Snapshot(frame, node, state.results) if node is not None else None
                lhs = _lhs_snapshot(frame, stmt, state.results)
                state.pending = ("stmt", stmt, snap, stmt.lineno, stmt.end_lineno, lhs)
            elif state.loop is None and line in self.plan.ifs:
                node, is_elif = self.plan.ifs[line]
                state.results = []
                state.pending = ("if", node, Snapshot(frame, node.test, state.results), node.lineno,
                                 node.test.end_lineno, is_elif)

    def finish(self, frame, state: _Frame, pending, line: int | None) -> None:
        kind, node, snap, _, _, extra = pending
        if kind == "stmt":
            expr = _stmt_expr(node)
            chain, final = Stepper(snap).chain(expr) if expr is not None else ([], None)
            form = ("aug" if isinstance(node, ast.AugAssign) else "assign" if isinstance(node, (ast.Assign,
                    ast.AnnAssign)) else "expr" if isinstance(node, ast.Expr) else "other")
            self.fact({"k": "stmt", "line": node.lineno, "depth": state.depth, "form": form,
                       "src": _one_line(node), "lhs": extra, "chain": chain, "done": final is not None})
            return
        # an if test: the branch is where the run went next
        chain, final = Stepper(snap).chain(node.test)
        if line is not None and node.body[0].lineno <= line <= node.body[-1].end_lineno:
            branch = "body"
        elif line is not None and node.orelse and node.orelse[0].lineno <= line <= node.orelse[-1].end_lineno:
            branch = "else"
        else:
            branch = "skip"
        elif_next = bool(node.orelse) and len(node.orelse) == 1 and isinstance(node.orelse[0], ast.If) \
            and node.orelse[0].lineno in self.plan.ifs and self.plan.ifs[node.orelse[0].lineno][1]
        self.fact({"k": "if", "line": node.lineno, "depth": state.depth, "chain": chain,
                   "done": final is not None and type(final.v) is bool, "branch": branch, "elif": extra,
                   "elif_next": elif_next})

    def loop_header(self, frame, loop: _Loop) -> None:
        loop.count += 1
        loop.last_header = True
        snap = self._loop_values(frame, loop)
        if len(loop.head) <= LOOP_HEAD:
            loop.head.append(snap)
        loop.tail.append(snap)
        if len(loop.tail) > LOOP_TAIL + 1:
            del loop.tail[0]
        if isinstance(loop.node, ast.While):
            loop.test_snap = Snapshot(frame, loop.node.test, [])

    @staticmethod
    def _loop_values(frame, loop: _Loop) -> list:
        f_locals = frame.f_locals
        out = []
        for _name, expr in loop.tracked:
            parts = _chain_parts(expr)
            value = _UNBOUND if parts is None else f_locals.get(parts[0], _UNBOUND)
            for attr in (parts or [])[1:]:
                if value is _UNBOUND:
                    break
                value = _safe_attr(value, attr)
            out.append(None if value is _UNBOUND else summary_text(value))
        return out

    def end_loop(self, frame, state: _Frame, exhausted: bool, how: str | None = None) -> None:
        """Summarise the loop of `state`: it ended (exhausted, a break, a return), or with how="partial" an anchor
        inside it (a `return`'s) runs now. Iteration i's values are those at the header event after it (the i-th
        after the first), or, for the last iteration of a loop left early, those now."""
        loop = state.loop
        if how != "partial":
            state.loop = None
        if loop.emitted:
            return
        n = loop.count - 1 if exhausted else loop.count
        now = self._loop_values(frame, loop)
        tail_start = loop.count - len(loop.tail)

        def values(i: int):
            if i >= loop.count:
                return now
            if i < len(loop.head):
                return loop.head[i]
            return loop.tail[i - tail_start] if i >= tail_start else None

        shown = list(range(1, n + 1)) if n <= LOOP_HEAD + LOOP_TAIL else \
            [*range(1, LOOP_HEAD + 1), *range(n - LOOP_TAIL + 1, n + 1)]
        test = None
        if exhausted and isinstance(loop.node, ast.While) and loop.test_snap is not None and not loop.in_else:
            chain, final = Stepper(loop.test_snap).chain(loop.node.test)
            test = {"chain": chain, "done": final is not None and type(final.v) is bool}
        self.fact({"k": "loop", "line": loop.node.lineno, "depth": state.depth, "header": _loop_header(loop.node),
                   "vars": [name for name, _ in loop.tracked], "iters": [[i, values(i)] for i in shown], "n": n,
                   "how": how or ("exhausted" if exhausted else "break"), "test": test})
        if how == "partial":
            loop.emitted = True

    def on_return(self, frame, state: _Frame, value) -> None:
        if state.pending is not None:
            pending, state.pending = state.pending, None
            if pending[0] == "stmt" and not state.raised:
                self.finish(frame, state, pending, None)
        if state.loop is not None:
            self.end_loop(frame, state, exhausted=False, how="return")
        self.frames.pop(id(frame), None)
        if state.raised:
            if state.depth:
                self.fact({"k": "raise", "fn": state.qualname, "args": state.args, "depth": state.depth})
            return
        text = value_text(value, limit=MAX_VALUE_CHARS)
        if state.depth:
            self.fact({"k": "return", "fn": state.qualname, "args": state.args,
                       "value": text if text is not None else summary_text(value), "depth": state.depth})
        if state.parent is not None:
            state.parent.results.append((state.qualname, state.arg_values,
                                         copy.deepcopy(value) if plain(value) else _UNBOUND, text))

    def on_anchor(self, frame, label: str, text: str, value, line: int) -> None:
        state = self.frames.get(id(frame))
        depth = state.depth if state is not None else 0
        if state is not None and state.loop is not None:
            self.end_loop(frame, state, exhausted=False, how="partial")
        info = self.plan.anchors.get(line, {"label": label, "owner": ["none", None]})
        self.fact({"k": "anchor", "label": label, "text": text, "line": line, "depth": depth,
                   "repr": value_text(value, budget=5000, limit=1 << 20), "owner": info["owner"],
                   "fn": state.qualname if state is not None else None})


def _loop_header(node) -> str:
    if isinstance(node, ast.For):
        target = node.target
        names = ", ".join(map(ast.unparse, target.elts)) if isinstance(target, ast.Tuple) and target.elts \
            else ast.unparse(target)
        return f"for {names} in {ast.unparse(node.iter)}"
    return f"while {ast.unparse(node.test)}"


def _one_line(node) -> str:
    return " ".join(ast.unparse(node).split("\n")[0].split())


def _stmt_expr(stmt):
    """The expression a statement evaluates (an augmented assignment as its binary operation), or None."""
    if isinstance(stmt, ast.AugAssign):
        target = stmt.target
        load = _as_load(target)
        return ast.BinOp(left=load, op=stmt.op, right=stmt.value) if load is not None else stmt.value
    if isinstance(stmt, (ast.Assign, ast.Expr, ast.Return)) or (isinstance(stmt, ast.AnnAssign) and stmt.value):
        return stmt.value
    return None


def _as_load(node):
    if isinstance(node, ast.Name):
        return ast.Name(id=node.id, ctx=ast.Load())
    if isinstance(node, ast.Attribute):
        inner = _as_load(node.value)
        return None if inner is None else ast.Attribute(value=inner, attr=node.attr, ctx=ast.Load())
    if isinstance(node, ast.Subscript):
        inner = _as_load(node.value)
        return None if inner is None else ast.Subscript(value=inner, slice=node.slice, ctx=ast.Load())
    return None


def _lhs_snapshot(frame, stmt, results) -> str | None:
    """The assignment's target text, subscripts with their immutable local values substituted (`x[i]` -> `x[0]`)."""
    if isinstance(stmt, ast.Assign):
        targets = stmt.targets
    elif isinstance(stmt, (ast.AugAssign, ast.AnnAssign)):
        targets = [stmt.target]
    else:
        return None
    out = []
    for target in targets:
        if any(isinstance(n, ast.Subscript) for n in ast.walk(target)):
            snap = Snapshot(frame, target, results)
            snap.pure = False             # a target is evaluated after the value: only immutable fast locals
            target = _substitute_slices(target, Stepper(snap))
        out.append(render(target) if not isinstance(target, str) else target)
    return " = ".join(out)


def _substitute_slices(node, stepper: Stepper):
    if isinstance(node, ast.Subscript):
        s = node.slice
        if isinstance(s, ast.Slice):
            s = ast.Slice(**{k: None if getattr(s, k) is None else stepper.substitute(getattr(s, k))
                             for k in ("lower", "upper", "step")})
        else:
            s = stepper.substitute(s)
        return ast.Subscript(value=_substitute_slices(node.value, stepper), slice=s, ctx=ast.Store())
    if isinstance(node, (ast.Tuple, ast.List)):
        return type(node)(elts=[_substitute_slices(e, stepper) for e in node.elts], ctx=ast.Store())
    return node


# --- the runner -----------------------------------------------------------------------------------------------------

def _describe(e: BaseException) -> str:
    try:
        text = str(e)
    except BaseException:  # noqa: BLE001 — an exception whose __str__ raises
        text = "<unprintable>"
    return f"{type(e).__name__}: {text}"[:300]


def _classify(e: BaseException) -> tuple[str, str]:
    if isinstance(e, MemoryError):
        return "memory", "MemoryError: the program exceeded its memory limit"
    if isinstance(e, OutputLimitExceeded):
        return "output_limit", str(e)
    if isinstance(e, AnchorLimitExceeded):
        return "too_long", str(e)
    if isinstance(e, RecursionError):
        return "runtime_error", "RecursionError: maximum recursion depth exceeded"
    return "runtime_error", _describe(e)


def run_reasoning(prepared, limits: dict) -> dict:
    """Execute the program under the tracer; returns status, reason, trace (the anchor lines, as the trace runner
    formats them), facts, truncated. Never raises."""
    code, call, payload, plan, anchor_fn = prepared
    max_line_chars = payload["max_line_chars"]
    hard_cap = max(1000, 100 * payload["max_lines"])
    tracer = Tracer(plan)
    trace: list[str] = []
    problems: list[tuple[str, str]] = []

    def record(label, value):
        if len(trace) >= hard_cap:
            raise AnchorLimitExceeded(f"more than {hard_cap} anchor lines")
        try:
            text = f"{label}: {format(value, '')}"
        except BaseException as e:  # noqa: BLE001
            problems.append(("runtime_error", f"anchor {label!r}: formatting the value raised {_describe(e)}"))
            raise
        if len(text) > max_line_chars:
            problems.append(("output_limit", f"anchor {label!r}: line longer than {max_line_chars} characters"))
            text = text[:max_line_chars]
        trace.append(text)
        frame = sys._getframe(1)
        tracer.on_anchor(frame, label, text, value, frame.f_lineno)

    if "random" in payload["source"]:   # program randomness: the same draws every build
        import random

        random.seed(0)
    env = {"__name__": "__program__", "__builtins__": builtins, anchor_fn: record}
    status, reason = "ok", None
    try:
        sys.settrace(tracer.global_trace)
        try:
            exec(code, env)
            eval(call, env)
        finally:
            sys.settrace(None)
    except BaseException as e:  # noqa: BLE001 — everything the program does wrong is a status
        status, reason = _classify(e)
    if problems:
        status, reason = problems[0]
    return {"status": status, "reason": reason, "trace": trace, "facts": tracer.facts,
            "truncated": tracer.truncated}


RUNNERS = {"reasoning": (prepare_reasoning, run_reasoning)}
BATCH_CONTEXT = {"reasoning": lambda limits: BatchState(limits, io.StringIO)}
WARMUP = {"reasoning": {"source": "def f(a, b):\n    c = a + b * 2\n    print(f'c: {c}')\n    for x in [a, b]:\n"
                                  "        c += x\n    print(f'c: {c}')\n    if c > 1:\n        c = len([c])\n"
                                  "        print(f'c: {c}')\n    return_val = c\n"
                                  "    print(f'return_val: {return_val}')\n    return return_val\n",
                        "entry_point": "f", "input": "1, 2", "anchor_lines": None, "max_lines": 10,
                        "max_line_chars": 100}}
