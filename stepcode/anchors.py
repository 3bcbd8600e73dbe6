"""Deterministic execution-trace anchors: the paper's print-insertion rules, applied to the Python AST (no LLM).

Usage:
    from stepcode.anchors import instrument
    inst = instrument("def f(xs):\\n    total = 0\\n    for x in xs:\\n        total += x\\n    return total\\n")
    assert inst.status == "ok"
    print(inst.source)          # the display source shown to the model:
    #   def f(xs):
    #       total = 0
    #       print(f'total: {total}')
    #       for x in xs:
    #           total += x
    #       print(f'total: {total}')
    #       return_val = total
    #       print(f'return_val: {return_val}')
    #       return return_val
    # The sandbox runs inst.exec_source with globals()[inst.anchor_fn] = record, where record(label, value) appends
    # f"{label}: {format(value, '')}": the line the display print would show. exec_source is the display source with
    # each anchor line `print(f'LABEL: {EXPR}')` replaced by `ANCHOR_FN('LABEL', EXPR)`, so the program's own prints
    # (or a rebound print) can neither forge nor swallow an anchor. Anchor.line is the same in both sources.

Rules (anchors are inserted only inside `def` bodies; module and class bodies are not function scope):
1. Assignments at function scope outside loops (also inside if/try/with/match blocks) get one anchor per bound
   name, in target order, deduplicated: plain, augmented, annotated with a value, unpacking (starred, nested),
   chained `a = b = 0`. Subscript targets print their base with all subscripts peeled (`x[i][j] = v` -> `x`,
   `self.d[k] = v` -> `self.d`); attribute targets print the pure name/attribute chain (`obj.attr`); a target whose
   base is not a pure chain prints its root name (`x[0].attr = 1` -> `x`) or nothing (`g().a = 1`). A chain label
   is dropped when the same statement rebinds its root (`a.b = a = X()` would read the new `a`).
   Anchors only read names and attribute chains: never a call, never a subscript.
   Updates (kind `update`): a simple statement outside loops that mutates a local through its name gets an anchor
   for that name after it: a call of a known mutating method (`MUTATING_METHODS`) on the name or on a subscript of
   it, in an expression statement, an assignment or a `return` (`lst.append(x)` -> `lst`; `x = d.pop(k)` -> `d`,
   then `x`; `d[k].add(v)` -> `d`); a `del` of a subscript of it (`del x[i]`, `del d[k][0]` -> `x`, `d`). In
   the order the updates run, after the statement's walrus anchors and before its target anchors; for `return`,
   between `return_val = EXPR` and the `return_val` anchor. The type is never checked (`s.add(v)` on any object):
   the anchor only reads the name. The name must be a local of the function: a parameter or a name its own scope
   binds, declared `global`/`nonlocal` nowhere in the function (nested functions included) -- a call of unknown
   code can delete a global or a nonlocal, never the caller's local, so if the call ran the name is still bound.
   The call must run whenever the statement completes (not on the right of and/or, in a branch of `x if c else y`
   or a later link of a chained comparison) unless the name is definitely bound before the statement (rule 2).
   None for calls inside lambdas and comprehensions (they run any number of times, or never), for attribute
   receivers (`self.items.append(x)`: reading an attribute can run code, and the call may delete it), or for a
   name the statement itself rebinds, deletes or stores into (`lst[0] = lst.pop()`): its assignment anchor (or
   none) says it. Subscript stores (`x[i] = v`, `x[i] += v`) were already assignments (above).
2. No anchor inside a `for`/`while` body or its `else` (the else is part of the loop statement; bindings there count
   as loop changes). Right after a loop that is itself outside every loop, one `loop_exit` anchor per variable the
   loop changed, in order of first occurrence: the loop's own targets; names (re)bound by assignment, walrus or a
   nested loop's target anywhere in the body, else or while-test; the printed base (rule 1) of subscript
   stores/deletes, augmented attribute/subscript assignments and known mutating method calls (`lst.append(x)` ->
   `lst`, `self.items.add(x)` -> `self.items`); the root name of plain attribute stores (`obj.attr = v` -> `obj`:
   the attribute may not exist if the loop ran zero times). A plain name is anchored only if it is definitely
   bound after the loop; a chain label (`obj.items`) only if its root is definitely bound before the loop, no `del`
   or `except ... as` in the loop can unbind it and the loop does not rebind it. Neither if the root is declared
   `global`/`nonlocal` anywhere in the function (code the loop calls could delete it). So an anchor never raises a
   NameError the original would not. Loops that never fall through (`while True` without `break`) get none.
   Definitely bound (conservative, path by path; with-bodies, match cases, `except` handlers' names and
   short-circuited walruses bind nothing): a parameter, or bound on every path by earlier statements. After a loop:
   a name no `del` or `except ... as` in the loop can unbind, bound before the loop or on every way out of it --
   at each `break` (what every path to it binds, the loop's targets included), and at exhaustion followed by the
   loop's `else`. A `for` loop's exhaustion binds its targets and what every path through the body to its end or
   to a `continue` binds only if its iterable cannot be empty: a display with an element (a list, tuple or set
   display with an unstarred element, a dict display with a `k: v` pair, a non-empty string, bytes or f-string
   literal). A `while` loop's exhaustion binds the sure walrus names of its test; `while True` never exhausts.
   Anything else may run zero times: `for x in xs`, `for i in range(n)` -- and `range(3)` too, since `range` is a
   name a program can rebind in ways no static check sees -- leaves its targets and body names possibly unbound,
   and they get no post-loop anchor. No guard (`try: print(x) except NameError`) is ever inserted: the display
   source would show the model code the program does not have, and must run as the program runs.
3. `return EXPR` becomes `return_val = EXPR; print(f'return_val: {return_val}'); return return_val` (EXPR is
   evaluated once; `return_val` is renamed `return_val_1`, ... when the program already uses that identifier; the
   label stays `return_val`). Bare `return` and a reachable end of the body print `return_val: None`. Returns
   inside loops keep their anchor (they run once). So each call of a non-generator function that returns normally
   prints `return_val` exactly once, as its last anchor, unless a `finally` block runs after the return (its
   anchors follow, and a `return` inside it prints a second `return_val`). A call that raises prints none.
4. Generators (`yield`/`yield from` in their own body) get no anchors at all: their body runs lazily, interleaved
   with the consumer, so its lines would not read as what happened during the call. Lambdas and comprehensions are
   expressions and get none either; functions nested anywhere (closures, methods, decorated) are instrumented.
5. Walrus `(n := e)` in an assignment or expression statement outside loops gets an `assign` anchor after the
   statement (before the statement's own targets, matching evaluation order), unless it sits where it may not run
   (right side of and/or, branches of `x if c else y`, later links of a chained comparison, comprehensions,
   lambdas). Walruses in compound-statement headers (`if (n := ...):`) get no anchor.
6. Status "unsupported" (with a reason) instead of a silently different program: async code; a program that binds
   the name `print` anywhere (or assigns `builtins.print`); a call of `locals()`, `globals()`, `vars()` or `dir()`
   with no arguments (it would see the extra local or global); unparse output that does not re-parse or whose two
   sources disagree; code nested too deeply for its walks or the compiler. A SyntaxError gives "syntax_error"
   with line and message, as does source the parser itself cannot take (too deeply nested, a lone surrogate).
Known limits: frame inspection (`sys._getframe().f_locals`) and `eval`/`exec` strings can still observe the extra
local; an attribute chain read after a loop (rule 2) assumes the attribute existed before the loop; an assignment
anchor after a subscript or attribute store (rule 1: `G[k] = v` -> `G`, `obj.a = v` -> `obj.a`) assumes the store
neither deletes a global `G` nor leaves `obj.a` unreadable; formatting a value (`format(v, '')`) runs user
`__format__`/`__str__` code, as the display print would.
Deterministic: the same input gives byte-identical output.
Cost (it runs on every traced program): one parse, one unparse, one re-parse of exec_source; the display source is
exec_source with its anchor lines rewritten, and analyses walk statements only, walking expressions just for loop
changes, for the updates of simple statements outside loops when the text spells a mutating method or `del`, for the
names a function binds when an update's name is not yet known bound, and, when the text holds `yield` or `:=`, for
generators and walruses.
"""

from __future__ import annotations

import ast
import keyword
import re
import threading
from dataclasses import dataclass, field
from types import CodeType
from typing import NamedTuple

MUTATING_METHODS = frozenset({
    "append", "extend", "insert", "pop", "remove", "clear", "sort", "reverse",      # list
    "update", "setdefault", "popitem",                                              # dict (update, pop, clear: set too)
    "add", "discard", "difference_update", "intersection_update", "symmetric_difference_update",  # set
    "appendleft", "extendleft", "popleft", "rotate",                                # collections.deque
})
_MUTATOR_WORDS = re.compile(r"\b(?:del|%s)\b" % "|".join(sorted(MUTATING_METHODS)))   # rule 1's updates spell one
RETURN_LABEL = "return_val"
_ANCHOR_FN_BASE = "_stepcode_anchor"   # one leading underscore: `__x` would be name-mangled inside class bodies
_NAMESPACE_PROBES = frozenset({"locals", "globals", "vars", "dir"})
_REFUSAL_WORDS = ("async", "await", "print", *sorted(_NAMESPACE_PROBES))
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef,
           ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_LEAF_TYPES = (ast.expr_context, ast.operator, ast.boolop, ast.unaryop, ast.cmpop)   # nodes no rule reads
_NO_WALK = (*_SCOPES, ast.Name, ast.Constant)   # scopes not to enter, and nodes whose only children are leaves


@dataclass(frozen=True)
class Anchor:
    line: int        # 1-based line of the anchor statement in Instrumented.source (and exec_source: same line)
    label: str       # text before ': ' in the printed line, e.g. "x", "obj.attr", "return_val"
    kind: str        # "assign" | "update" | "loop_exit" | "return"
    function: str    # qualified name of the enclosing function, e.g. "f", "Cls.method", "f.<locals>.g"


@dataclass(frozen=True)
class Instrumented:
    status: str            # "ok" | "syntax_error" | "unsupported"
    reason: str | None     # human-readable; None when ok
    source: str            # display source shown to the model: anchors are `print(f'LABEL: {EXPR}')`
    exec_source: str       # the same text line for line, except each anchor line is `ANCHOR_FN('LABEL', EXPR)`
    anchor_fn: str         # fresh identifier used in exec_source (never occurs in the original source text)
    anchors: tuple[Anchor, ...]
    # exec_source compiled (filename "<program>", no inherited __future__ flags): the proof that it compiles, and what
    # the sandbox runs, so a program traced under two hash seeds is compiled once, not once per run
    code: CodeType | None = field(default=None, compare=False, repr=False)


# CPython 3.11's AST conversions keep their recursion-depth counter per interpreter, not per thread: two threads
# parsing at once (the trace engine instruments, the reward scorer parses answers, in worker threads) can trip
# "SystemError: AST constructor recursion depth mismatch". The work holds the GIL anyway: one at a time costs nothing.
AST_LOCK = threading.Lock()


def instrument(code: str) -> Instrumented:
    """Insert anchors into every function of `code` (see the module docstring for the rules). Thread-safe."""
    if not isinstance(code, str):
        raise TypeError(f"instrument() expects source text (str), got {type(code).__name__}")
    with AST_LOCK:
        try:
            return _instrument(code)
        except (RecursionError, MemoryError) as err:
            # Parsed, but too deep for a walk here, for ast.unparse or for the compiler (`x+x+...+x`, a few
            # thousand deep): one program's verdict, never the caller's exception.
            return _rejected("unsupported", f"too deeply nested to instrument ({type(err).__name__})")


def _instrument(code: str) -> Instrumented:
    try:
        tree = ast.parse(code)
    except SyntaxError as err:
        return _rejected("syntax_error", f"line {err.lineno}: {err.msg}" if err.lineno else err.msg)
    except (RecursionError, MemoryError) as err:   # CPython's parser gives up on very deep nesting: so would Python
        return _rejected("syntax_error", f"too deeply nested to parse ({type(err).__name__})")
    except UnicodeEncodeError:   # the parser reads UTF-8, which has no lone surrogate (chr(0xD800))
        return _rejected("syntax_error", "the source holds a lone surrogate, which is not valid text")
    reason = _unsupported_reason(tree, code)
    if reason:
        return _rejected("unsupported", reason)

    anchor_fn = _fresh(_ANCHOR_FN_BASE, lambda name: name in code)
    return_name = _fresh(RETURN_LABEL, lambda name: name in code and re.search(rf"\b{name}\b", code) is not None)
    # Keywords and operators are spelled literally in the text (NFKC folding applies to names only), so a program
    # whose text lacks `yield` or `:=` has neither, and the expression walks that look for them can be skipped.
    has_yield, has_walrus = "yield" in code, ":=" in code
    has_declarations = "global" in code or "nonlocal" in code
    has_updates = not code.isascii() or _MUTATOR_WORDS.search(code) is not None   # NFKC folds only non-ASCII names
    planned: dict[int, _Plan] = {}   # id(anchor stmt) -> its plan
    try:
        for fn, qualname in _functions(tree.body):
            if not (has_yield and _is_generator(fn)):   # rule 4
                _FunctionInstrumenter(qualname, anchor_fn, return_name, planned, has_walrus=has_walrus,
                                      has_declarations=has_declarations, has_updates=has_updates).run(fn)
        ordered = [planned[id(stmt)] for stmt in _statements(tree.body) if id(stmt) in planned]
        try:
            exec_source = ast.unparse(tree)
        except (ValueError, RecursionError) as err:   # unparse gives up on some deep or exotic trees
            return _rejected("unsupported", f"ast.unparse failed: {err}")
        return _checked(tree, exec_source, anchor_fn, ordered)
    except SyntaxError as err:  # e.g. a full-width name that NFKC-folds to a keyword: its text does not re-parse
        return _rejected("unsupported", f"the instrumented source does not re-parse: {err.msg}")


def _rejected(status: str, reason: str) -> Instrumented:
    return Instrumented(status=status, reason=reason, source="", exec_source="", anchor_fn="", anchors=())


def _fresh(base: str, taken) -> str:
    name, n = base, 0
    while taken(name):
        n += 1
        name = f"{base}_{n}"
    return name


# ---------------------------------------------------------------- refusing programs whose meaning anchors could change

def _unsupported_reason(tree: ast.Module, code: str) -> str | None:
    # Each refused construct spells one of these words: a keyword, or a name (NFKC folds only non-ASCII text into one)
    if code.isascii() and not any(word in code for word in _REFUSAL_WORDS):
        return None
    for node in ast.walk(tree):   # breadth-first: the reason names the same node whichever refusals a program mixes
        if isinstance(node, (ast.AsyncFunctionDef, ast.AsyncFor, ast.AsyncWith, ast.Await)):
            return f"async code (line {node.lineno}): anchors cannot order interleaved coroutines"
        if "print" in _names_bound_by(node):
            return f"the program binds the name 'print' (line {node.lineno}); display anchors would call it"
        if (isinstance(node, ast.Attribute) and node.attr == "print" and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name) and node.value.id in ("builtins", "__builtins__")):
            return f"the program replaces builtins.print (line {node.lineno})"
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _NAMESPACE_PROBES
                and not node.args and not node.keywords):
            return f"{node.func.id}() without arguments (line {node.lineno}) would see the names anchors add"
    return None


def _names_bound_by(node: ast.AST) -> list[str]:
    """Every way a node can bind a name (used only to spot `print`)."""
    if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
        return [node.id]
    if isinstance(node, ast.arg):
        return [node.arg]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.alias):
        return [node.asname or node.name.split(".")[0]]
    if isinstance(node, (ast.Global, ast.Nonlocal)):
        return list(node.names)
    if isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)):
        return [node.name] if node.name else []
    if isinstance(node, ast.MatchMapping):
        return [node.rest] if node.rest else []
    return []


# ---------------------------------------------------------------- walking

def _child_blocks(stmt: ast.stmt) -> list[list[ast.stmt]]:
    """The statement lists directly inside `stmt`, in text order (statements never hide inside expressions)."""
    if isinstance(stmt, (ast.Try, ast.TryStar)):
        return [stmt.body, *[handler.body for handler in stmt.handlers], stmt.orelse, stmt.finalbody]
    if isinstance(stmt, ast.Match):
        return [case.body for case in stmt.cases]
    body = getattr(stmt, "body", None)
    if body is None:   # a simple statement
        return []
    return [body, stmt.orelse] if hasattr(stmt, "orelse") else [body]


def _statements(stmts: list[ast.stmt]) -> list[ast.stmt]:
    """Statements in document order, nested blocks included (cheaper than visiting every expression node)."""
    found = []
    for stmt in stmts:
        found.append(stmt)
        for block in _child_blocks(stmt):
            found += _statements(block)
    return found


def _functions(stmts: list[ast.stmt], prefix: str = "") -> list[tuple[ast.FunctionDef, str]]:
    """All `def`s with their __qualname__, in source order."""
    found = []
    for stmt in stmts:
        inner = prefix
        if isinstance(stmt, ast.FunctionDef):
            found.append((stmt, prefix + stmt.name))
            inner = prefix + stmt.name + ".<locals>."
        elif isinstance(stmt, ast.ClassDef):
            inner = prefix + stmt.name + "."
        for block in _child_blocks(stmt):
            found += _functions(block, inner)
    return found


def _scope_nodes(nodes):
    """Nodes of one function scope, pre-order, not entering nested functions, classes, lambdas or comprehensions.
    Contexts and operators (`Load`, `Add`, ...) are left out: leaves that no rule reads."""
    stack = list(reversed(nodes))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, _NO_WALK):
            stack += reversed(_children(node))


def _children(node: ast.AST) -> list[ast.AST]:
    """ast.iter_child_nodes(node) as a list, without the leaves in _LEAF_TYPES (the walks' hottest loop)."""
    children = []
    for name in node._fields:
        value = getattr(node, name, None)
        if isinstance(value, list):
            children += [item for item in value if isinstance(item, ast.AST) and not isinstance(item, _LEAF_TYPES)]
        elif isinstance(value, ast.AST) and not isinstance(value, _LEAF_TYPES):
            children.append(value)
    return children


def _is_generator(fn: ast.FunctionDef) -> bool:
    return any(isinstance(node, (ast.Yield, ast.YieldFrom)) for node in _scope_nodes(fn.body))


def _dedupe(items):
    return list(dict.fromkeys(items))


# ---------------------------------------------------------------- what a target prints

def _is_chain(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) or (isinstance(node, ast.Attribute) and _is_chain(node.value))


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _printed_base(node: ast.AST) -> str | None:
    """Label for a mutated object: peel subscripts, keep a pure chain, else fall back to the root name (or None)."""
    while isinstance(node, ast.Subscript):
        node = node.value
    return _chain_text(node) if _is_chain(node) else _root_name(node)


def _chain_text(chain: ast.Name | ast.Attribute) -> str:
    """ast.unparse of a pure name/attribute chain, without the cost of an unparser."""
    return chain.id if isinstance(chain, ast.Name) else f"{_chain_text(chain.value)}.{chain.attr}"


def _target_labels(target: ast.AST) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [label for elt in target.elts for label in _target_labels(elt)]
    if isinstance(target, ast.Starred):
        return _target_labels(target.value)
    label = _printed_base(target)
    return [label] if label else []


def _target_names(target: ast.AST) -> list[str]:
    """Names a target rebinds (not the objects it mutates)."""
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [name for elt in target.elts for name in _target_names(elt)]
    if isinstance(target, ast.Starred):
        return _target_names(target.value)
    return []


def _root(label: str) -> str:
    return label.split(".")[0]


def _without_rebound_chains(labels: list[str], rebound: set[str]) -> list[str]:
    """Drop `a.b` when `a` itself is rebound: the chain would be read on the new object."""
    return [label for label in labels if "." not in label or _root(label) not in rebound]


def _assignment_targets(stmt: ast.stmt) -> list[ast.AST]:
    if isinstance(stmt, ast.Assign):
        return stmt.targets
    if isinstance(stmt, ast.AugAssign) or (isinstance(stmt, ast.AnnAssign) and stmt.value is not None):
        return [stmt.target]
    return []


def _sure_walrus_names(node: ast.AST) -> list[str]:
    """Walrus targets that are bound whenever `node` finishes evaluating (skips short-circuited parts)."""
    if isinstance(node, ast.NamedExpr):
        return _sure_walrus_names(node.value) + [node.target.id]
    if isinstance(node, _SCOPES):
        return []
    if isinstance(node, ast.BoolOp):
        return _sure_walrus_names(node.values[0])
    if isinstance(node, ast.IfExp):
        return _sure_walrus_names(node.test)
    if isinstance(node, ast.Compare):
        return _sure_walrus_names(node.left) + _sure_walrus_names(node.comparators[0])
    return [name for child in ast.iter_child_nodes(node) for name in _sure_walrus_names(child)]


def _statement_labels(stmt: ast.stmt, has_walrus: bool, updated: list[str]) -> list[tuple[str, str]]:
    """(label, kind) of the anchors after a simple statement outside loops: its walrus names, the names it updates
    (rule 1; `updated` in the order they run), then its targets. An updated name that the statement also rebinds,
    deletes or stores into gets no update anchor: its assignment anchor (or none) says it."""
    if isinstance(stmt, ast.Delete):
        deleted = {name for target in stmt.targets for name in _target_names(target)}
        return [(name, "update") for name in updated if name not in deleted]
    if not isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr)):
        return []
    targets = _assignment_targets(stmt)
    walrus = []
    if has_walrus:
        walrus = (_sure_walrus_names(stmt.value) if stmt.value is not None else []) + \
            [name for target in targets for name in _sure_walrus_names(target)]
    rebound = set(walrus) | {name for target in targets for name in _target_names(target)}
    stored = [label for target in targets for label in _target_labels(target)]
    assigned = _dedupe(_without_rebound_chains(walrus + stored, rebound))
    taken = set(assigned) | rebound
    updates = [name for name in updated if name not in taken]
    walrus_first = [label for label in assigned if label in walrus]
    return [(label, "assign") for label in walrus_first] + [(name, "update") for name in updates] + \
        [(label, "assign") for label in assigned if label not in walrus_first]


def _subscript_root(node: ast.AST) -> str | None:
    """`x`, `x[i]`, `x[i][j]` -> "x"; anything else (an attribute on the way, a call) -> None."""
    while isinstance(node, ast.Subscript):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _updated_names(stmt: ast.stmt) -> list[tuple[str, bool]]:
    """(name, sure) for each update of rule 1 in a simple statement, in the order the updates run: the name a known
    mutating method is called on (directly or through subscripts), or whose subscript is deleted. `sure`: the update
    runs whenever the statement completes (then the name was read, so it is bound)."""
    found: list[tuple[str, bool]] = []
    if isinstance(stmt, ast.Delete):
        found += [(name, True) for target in stmt.targets if isinstance(target, ast.Subscript)
                  for name in [_subscript_root(target)] if name]
    elif isinstance(stmt, (ast.Expr, ast.Return, ast.Assign, ast.AugAssign, ast.AnnAssign)):
        for node in [stmt.value, *_assignment_targets(stmt)]:
            if node is not None:
                _mutating_calls(node, True, found)
    return found


def _mutating_calls(node: ast.AST, sure: bool, found: list[tuple[str, bool]]) -> None:
    """Append (receiver name, sure) for the known mutating method calls in an expression, post-order (a call's
    arguments run before it); not inside lambdas or comprehensions. The parts that may not run (as in
    _sure_walrus_names) are not sure."""
    if isinstance(node, _SCOPES):
        return
    if isinstance(node, ast.BoolOp):
        parts = [(node.values[0], sure)] + [(value, False) for value in node.values[1:]]
    elif isinstance(node, ast.IfExp):
        parts = [(node.test, sure), (node.body, False), (node.orelse, False)]
    elif isinstance(node, ast.Compare):
        parts = [(node.left, sure), (node.comparators[0], sure)] + [(c, False) for c in node.comparators[1:]]
    else:
        parts = [(child, sure) for child in _children(node)]
    for child, child_sure in parts:
        _mutating_calls(child, child_sure, found)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATING_METHODS:
        name = _subscript_root(node.func.value)
        if name:
            found.append((name, sure))


def _loop_changes(loop: ast.For | ast.While) -> list[str]:
    """Labels of what a loop statement changes, in order of first occurrence (see rule 2), before the filter on
    which are bound after it."""
    parts = loop.body + loop.orelse + ([loop.test] if isinstance(loop, ast.While) else [])
    labels = _target_names(loop.target) if isinstance(loop, ast.For) else []
    rebound = set(labels)
    for node in _scope_nodes(parts):
        if isinstance(node, ast.For):
            labels += _target_names(node.target)
            rebound.update(_target_names(node.target))
        elif isinstance(node, ast.NamedExpr):
            labels.append(node.target.id)
            rebound.add(node.target.id)
        elif isinstance(node, ast.Delete):
            labels += [_printed_base(t) for t in node.targets if isinstance(t, ast.Subscript)]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in MUTATING_METHODS:
            labels.append(_printed_base(node.func.value))
        elif isinstance(node, ast.stmt):
            for target in _assignment_targets(node):
                rebound.update(_target_names(target))
                if isinstance(node, ast.AugAssign):
                    labels.append(_printed_base(target))
                else:
                    labels += _stored_labels(target)
    return _dedupe(_without_rebound_chains([label for label in labels if label], rebound))


def _stored_labels(target: ast.AST) -> list[str]:
    """Like _target_labels, but a plain attribute store names its root: the attribute may not exist before the loop."""
    if isinstance(target, (ast.Tuple, ast.List)):
        return [label for elt in target.elts for label in _stored_labels(elt)]
    if isinstance(target, ast.Starred):
        return _stored_labels(target.value)
    if isinstance(target, ast.Attribute):
        root = _root_name(target)
        return [root] if root else []
    return _target_labels(target)


# ---------------------------------------------------------------- which names are surely bound (conservative)

def _may_unbind(stmts: list[ast.stmt]) -> set[str]:
    """Names a `del` or the implicit delete of `except E as name` may unbind anywhere in these statements
    (not inside nested functions or classes: their own scopes)."""
    names = set()
    for stmt in stmts:
        if isinstance(stmt, ast.Delete):
            names.update(name for target in stmt.targets for name in _target_names(target))
        elif not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if isinstance(stmt, (ast.Try, ast.TryStar)):
                names.update(handler.name for handler in stmt.handlers if handler.name)
            for block in _child_blocks(stmt):
                names |= _may_unbind(block)
    return names


def _bound_after_block(stmts: list[ast.stmt], bound: set[str], has_walrus: bool) -> set[str]:
    for stmt in stmts:
        bound = _bound_after(stmt, bound, has_walrus)
    return bound


def _bound_after(stmt: ast.stmt, before: set[str], has_walrus: bool) -> set[str]:
    """Names bound on every path that falls through `stmt`, given those bound before it."""
    if isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr)):
        walrus = _sure_walrus_names(stmt.value) if has_walrus and stmt.value is not None else []
        return before | set(walrus) | {n for t in _assignment_targets(stmt) for n in _target_names(t)}
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return before | {name for alias in stmt.names if alias.name != "*" for name in _names_bound_by(alias)}
    if isinstance(stmt, (ast.FunctionDef, ast.ClassDef)):
        return before | {stmt.name}
    if isinstance(stmt, ast.Delete):
        return before - _may_unbind([stmt])
    if isinstance(stmt, ast.If):
        return _bound_after_block(stmt.body, before, has_walrus) & _bound_after_block(stmt.orelse, before, has_walrus)
    if isinstance(stmt, (ast.Try, ast.TryStar)):
        paths = [_bound_after_block(stmt.body + stmt.orelse, before, has_walrus)]
        at_handler = before - _may_unbind(stmt.body)
        for handler in stmt.handlers:
            caught = {handler.name} if handler.name else set()
            paths.append(_bound_after_block(handler.body, at_handler | caught, has_walrus) - caught)
        return _bound_after_block(stmt.finalbody, set.intersection(*paths), has_walrus)
    if isinstance(stmt, ast.With):
        # a context manager may swallow an exception mid-body, so only the `as` names are sure
        as_names = {n for item in stmt.items if item.optional_vars for n in _target_names(item.optional_vars)}
        return (before | as_names) - _may_unbind(stmt.body)
    if isinstance(stmt, (ast.For, ast.While)):
        return _loop_bound_after(stmt, before, has_walrus)
    return before - _may_unbind([stmt])   # match, and statements that bind nothing


def _meet(a: set[str] | None, b: set[str] | None) -> set[str] | None:
    """What two sets of paths have bound on all of them; None stands for no path at all."""
    if a is None:
        return b
    return a if b is None else a & b


def _flow(stmts: list[ast.stmt], before: set[str], has_walrus: bool):
    """(names bound on every path that falls through `stmts`, on every path to a `break`, on every path to a
    `continue` of the loop whose body holds `stmts`), each None where there is no such path."""
    state, breaks, continues = set(before), None, None
    for stmt in stmts:
        if isinstance(stmt, ast.Break):
            return None, _meet(breaks, state), continues
        if isinstance(stmt, ast.Continue):
            return None, breaks, _meet(continues, state)
        if isinstance(stmt, (ast.Return, ast.Raise)):
            return None, breaks, continues
        fall, stmt_breaks, stmt_continues = _stmt_flow(stmt, state, has_walrus)
        breaks, continues = _meet(breaks, stmt_breaks), _meet(continues, stmt_continues)
        if fall is None:
            return None, breaks, continues
        state = fall
    return state, breaks, continues


def _stmt_flow(stmt: ast.stmt, before: set[str], has_walrus: bool):
    """_flow of one statement other than break/continue/return/raise."""
    if isinstance(stmt, ast.If):
        body, orelse = _flow(stmt.body, before, has_walrus), _flow(stmt.orelse, before, has_walrus)
        return tuple(_meet(a, b) for a, b in zip(body, orelse))
    if isinstance(stmt, ast.With):
        as_names = {n for item in stmt.items if item.optional_vars for n in _target_names(item.optional_vars)}
        _, breaks, continues = _flow(stmt.body, before | as_names, has_walrus)
        return _bound_after(stmt, before, has_walrus), breaks, continues
    if isinstance(stmt, ast.Match):
        flows = [_flow(case.body, before, has_walrus) for case in stmt.cases]
        breaks = continues = None
        for _, case_breaks, case_continues in flows:
            breaks, continues = _meet(breaks, case_breaks), _meet(continues, case_continues)
        return _bound_after(stmt, before, has_walrus), breaks, continues
    if isinstance(stmt, (ast.Try, ast.TryStar, ast.For, ast.While)):
        # jumps out of a try (its finally runs on the way), or out of a nested loop's else: what surely survives
        at_jump = before - _may_unbind([stmt])
        jumps = [stmt.orelse] if isinstance(stmt, (ast.For, ast.While)) else _child_blocks(stmt)
        breaks = at_jump if any(_jumps_out(block, ast.Break) for block in jumps) else None
        continues = at_jump if any(_jumps_out(block, ast.Continue) for block in jumps) else None
        return _bound_after(stmt, before, has_walrus), breaks, continues
    return _bound_after(stmt, before, has_walrus), None, None


def _nonempty(iterable: ast.expr) -> bool:
    """Whether iterating over this expression surely yields at least once (a display the language builds)."""
    if isinstance(iterable, ast.Constant):
        return isinstance(iterable.value, (str, bytes)) and len(iterable.value) > 0
    if isinstance(iterable, (ast.List, ast.Tuple, ast.Set)):
        return any(not isinstance(elt, ast.Starred) for elt in iterable.elts)
    if isinstance(iterable, ast.Dict):
        return any(key is not None for key in iterable.keys)   # `**d` has key None
    if isinstance(iterable, ast.JoinedStr):
        return any(isinstance(part, ast.Constant) and part.value for part in iterable.values)
    return False


def _loop_bound_after(loop: ast.For | ast.While, before: set[str], has_walrus: bool) -> set[str]:
    """Names bound on every path that leaves the loop normally (rule 2's ways out)."""
    unbindable = _may_unbind([loop])
    if isinstance(loop, ast.For):
        sure = set(_sure_walrus_names(loop.iter)) if has_walrus else set()
        entry = (before | sure | set(_target_names(loop.target))) - unbindable   # at the start of every iteration
        _, breaks, _ = body = _flow(loop.body, entry, has_walrus)
        ended = _meet(body[0], body[2])   # at the end of an iteration that goes on to the next one
        exhausted = ended if _nonempty(loop.iter) else _meet((before | sure) - unbindable, ended)
    else:
        sure = set(_sure_walrus_names(loop.test)) if has_walrus else set()
        entry = (before | sure) - unbindable   # after each evaluation of the test
        _, breaks, _ = _flow(loop.body, entry, has_walrus)
        forever = isinstance(loop.test, ast.Constant) and bool(loop.test.value)
        exhausted = None if forever else entry
    after_else = None if exhausted is None else _flow(loop.orelse, exhausted, has_walrus)[0]
    after = _meet(after_else, breaks)
    return (before - unbindable) if after is None else after - unbindable   # None: nothing runs after it


def _parameters(args: ast.arguments) -> set[str]:
    every = args.posonlyargs + args.args + args.kwonlyargs + [a for a in (args.vararg, args.kwarg) if a]
    return {a.arg for a in every}


# ---------------------------------------------------------------- can control fall off the end

def _terminates(stmts: list[ast.stmt]) -> bool:
    return any(_stmt_terminates(stmt) for stmt in stmts)


def _stmt_terminates(stmt: ast.stmt) -> bool:
    if isinstance(stmt, (ast.Return, ast.Raise)):
        return True
    if isinstance(stmt, ast.If):
        return _terminates(stmt.body) and _terminates(stmt.orelse)
    if isinstance(stmt, (ast.Try, ast.TryStar)):
        return _terminates(stmt.finalbody) or (
            _terminates(stmt.body + stmt.orelse) and all(_terminates(h.body) for h in stmt.handlers))
    if isinstance(stmt, ast.While):
        return isinstance(stmt.test, ast.Constant) and bool(stmt.test.value) and not _breaks_out(stmt.body)
    if isinstance(stmt, ast.Match):
        last = stmt.cases[-1]
        catch_all = isinstance(last.pattern, ast.MatchAs) and last.pattern.pattern is None and last.guard is None
        return catch_all and all(_terminates(case.body) for case in stmt.cases)
    return False   # `with` may swallow the exception that ended its body


def _breaks_out(body: list[ast.stmt]) -> bool:
    """Whether a `break` in `body` leaves the loop that owns `body` (not a nested loop)."""
    return _jumps_out(body, ast.Break)


def _jumps_out(body: list[ast.stmt], jump: type) -> bool:
    """Whether a `jump` (Break or Continue) in `body` targets the loop that owns `body` (not a nested loop)."""
    for stmt in body:
        if isinstance(stmt, jump):
            return True
        if isinstance(stmt, (ast.For, ast.While)):
            if _jumps_out(stmt.orelse, jump):
                return True
        elif not isinstance(stmt, _SCOPES):
            if any(_jumps_out(block, jump) for block in _child_blocks(stmt)):
                return True
    return False


# ---------------------------------------------------------------- rewriting one function

class _Plan(NamedTuple):
    stmt: ast.Expr   # `ANCHOR_FN('LABEL', EXPR)` in the rewritten tree
    label: str
    kind: str
    function: str
    shown: str       # EXPR as source text


class _FunctionInstrumenter:
    """Rewrites one non-generator function in place, recording each anchor statement it adds in `planned`."""

    def __init__(self, qualname: str, anchor_fn: str, return_name: str, planned: dict, *, has_walrus: bool,
                 has_declarations: bool, has_updates: bool):
        self.qualname, self.anchor_fn, self.return_name, self.planned = qualname, anchor_fn, return_name, planned
        # what the program's text can hold: `:=`; `global`/`nonlocal`; a mutating method's name or `del`
        self.has_walrus, self.has_declarations, self.has_updates = has_walrus, has_declarations, has_updates
        self.fn: ast.FunctionDef | None = None
        self.declared: set[str] | None = None     # names declared global/nonlocal in the function, nested ones too
        self.bindings: set[str] | None = None     # names the function's own scope binds (walked on first need)

    def run(self, fn: ast.FunctionDef) -> None:
        self.fn = fn
        fn.body = self._block(fn.body, _parameters(fn.args), in_loop=False)
        if not _terminates(fn.body):
            fn.body.append(self._anchor(RETURN_LABEL, ast.Constant(None), "None", "return"))

    def _anchor(self, label: str, expr: ast.expr, shown: str, kind: str) -> ast.Expr:
        stmt = ast.Expr(ast.Call(ast.Name(self.anchor_fn, ast.Load()), [ast.Constant(label), expr], []))
        self.planned[id(stmt)] = _Plan(stmt, label, kind, self.qualname, shown)
        return stmt

    def _label_anchor(self, label: str, kind: str) -> ast.Expr:
        return self._anchor(label, _label_expr(label), label, kind)

    def _block(self, stmts: list[ast.stmt], bound: set[str], in_loop: bool) -> list[ast.stmt]:
        out = []
        for stmt in stmts:
            if isinstance(stmt, ast.Return):
                out += self._return(stmt, bound, in_loop)
                continue
            # analyse before rewriting nested blocks, so the inserted `return_val = ...` never counts as a binding
            after = bound if in_loop else _bound_after(stmt, bound, self.has_walrus)   # read outside loops only
            labels = [] if in_loop else _statement_labels(stmt, self.has_walrus, self._updates(stmt, bound))
            if not in_loop and isinstance(stmt, (ast.For, ast.While)) and not _stmt_terminates(stmt):
                # a plain name: bound after the loop; a chain: its root bound before it and not unbindable in it;
                # neither declared global/nonlocal (code the loop calls could delete it)
                sure_roots = bound - _may_unbind([stmt])
                labels += [(label, "loop_exit") for label in _loop_changes(stmt)
                           if (label in after if "." not in label else _root(label) in sure_roots)
                           and _root(label) not in self._declared()]
            self._nested_blocks(stmt, bound, in_loop)
            out.append(stmt)
            out += [self._label_anchor(label, kind) for label, kind in labels]
            bound = after
        return out

    def _nested_blocks(self, stmt: ast.stmt, bound: set[str], in_loop: bool) -> None:
        if isinstance(stmt, (ast.For, ast.While)):
            stmt.body = self._block(stmt.body, bound, in_loop=True)
            stmt.orelse = self._block(stmt.orelse, bound, in_loop=True)
        elif isinstance(stmt, ast.If):
            stmt.body = self._block(stmt.body, bound, in_loop)
            stmt.orelse = self._block(stmt.orelse, bound, in_loop)
        elif isinstance(stmt, ast.With):
            as_names = {n for item in stmt.items if item.optional_vars for n in _target_names(item.optional_vars)}
            stmt.body = self._block(stmt.body, bound | as_names, in_loop)
        elif isinstance(stmt, (ast.Try, ast.TryStar)):
            at_handler = bound - _may_unbind(stmt.body)
            for handler in stmt.handlers:
                caught = {handler.name} if handler.name else set()
                handler.body = self._block(handler.body, at_handler | caught, in_loop)
            stmt.orelse = self._block(stmt.orelse, _bound_after_block(stmt.body, bound, self.has_walrus), in_loop)
            stmt.body = self._block(stmt.body, bound, in_loop)
            stmt.finalbody = self._block(stmt.finalbody, bound - _may_unbind([stmt]), in_loop)
        elif isinstance(stmt, ast.Match):
            for case in stmt.cases:
                case.body = self._block(case.body, bound, in_loop)

    def _updates(self, stmt: ast.stmt, bound: set[str]) -> list[str]:
        """Names rule 1's updates anchor after `stmt`: locals surely bound once it completes."""
        if not self.has_updates:
            return []
        return _dedupe(name for name, sure in _updated_names(stmt)
                       if (sure or name in bound) and self._is_local(name, bound))

    def _is_local(self, name: str, bound: set[str]) -> bool:
        """Whether `name` is a local of the function that nothing but its own statements can unbind: bound in its
        own scope (or a parameter: `bound` starts with them) and declared global/nonlocal nowhere in it."""
        if name in self._declared():
            return False
        if name in bound:   # bound by the function's own statements, or a parameter
            return True
        if self.bindings is None:
            self.bindings = _parameters(self.fn.args) | {
                bound_name for node in _scope_nodes(self.fn.body)
                if not isinstance(node, (ast.Global, ast.Nonlocal)) for bound_name in _names_bound_by(node)}
        return name in self.bindings

    def _declared(self) -> set[str]:
        """Names declared global or nonlocal anywhere in the function, nested functions included: code elsewhere (a
        function the statement calls) can delete such a name, or a nested function's nonlocal one."""
        if self.declared is None:
            self.declared = set()
            if self.has_declarations:
                self.declared = {name for stmt in _statements(self.fn.body)
                                 if isinstance(stmt, (ast.Global, ast.Nonlocal)) for name in stmt.names}
        return self.declared

    def _return(self, stmt: ast.Return, bound: set[str], in_loop: bool) -> list[ast.stmt]:
        if stmt.value is None:
            return [self._anchor(RETURN_LABEL, ast.Constant(None), "None", "return"), stmt]
        updates = [] if in_loop else [self._label_anchor(name, "update") for name in self._updates(stmt, bound)]
        bind = ast.Assign([ast.Name(self.return_name, ast.Store())], stmt.value, lineno=stmt.lineno)  # unparse reads it
        return [bind, *updates,
                self._anchor(RETURN_LABEL, ast.Name(self.return_name, ast.Load()), self.return_name, "return"),
                ast.Return(ast.Name(self.return_name, ast.Load()))]


def _label_expr(label: str) -> ast.expr:
    """The expression a label reads, as ast.parse(label) gives it: `a.b` -> Attribute(Name('a'), 'b')."""
    root, *attributes = parts = label.split(".")
    if not label.isascii() or any(keyword.iskeyword(part) for part in parts):
        # NFKC folding can turn a name into a keyword (`ｉf` -> `if`) or a non-identifier: keep the parser's verdict
        return ast.parse(label, mode="eval").body
    expr = ast.Name(root, ast.Load())
    for attribute in attributes:
        expr = ast.Attribute(expr, attribute, ast.Load())
    return expr


# ---------------------------------------------------------------- the two sources, checked against each other

def _print_call(label: str, expr: ast.expr) -> ast.Call:
    text = ast.JoinedStr([ast.Constant(f"{label}: "), ast.FormattedValue(expr, -1, None)])
    return ast.Call(ast.Name("print", ast.Load()), [text], [])


def _checked(tree: ast.Module, exec_source: str, anchor_fn: str, ordered: list[_Plan]) -> Instrumented:
    """Compile exec_source and find the planned anchors in it, derive the display source, number the anchors."""
    try:
        code = compile(exec_source, "<program>", "exec", dont_inherit=True)
    except SyntaxError as err:
        return _rejected("unsupported", f"ast.unparse output does not re-parse (line {err.lineno}: {err.msg})")
    calls = _anchor_lines(exec_source, anchor_fn, ordered)
    if calls is None:   # not found by their text (never seen): find them in the parsed source
        exec_tree = ast.parse(exec_source)
        calls = sorted((stmt.lineno, stmt.value.args[0].value, stmt.col_offset)
                       for stmt in _statements(exec_tree.body)
                       if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
                       and isinstance(stmt.value.func, ast.Name) and stmt.value.func.id == anchor_fn)
    if [label for _, label, _ in calls] != [plan.label for plan in ordered]:
        return _rejected("unsupported", "instrumented sources do not line up with the planned anchors")
    source = _display_source(exec_source, calls, ordered, anchor_fn)
    if source is None:
        try:
            source = _display_by_second_unparse(tree, exec_source, calls, ordered)
        except _Refusal as refusal:
            return _rejected("unsupported", str(refusal))
    anchors = tuple(Anchor(line=line, label=plan.label, kind=plan.kind, function=plan.function)
                    for (line, _, _), plan in zip(calls, ordered))
    return Instrumented(status="ok", reason=None, source=source, exec_source=exec_source,
                        anchor_fn=anchor_fn, anchors=anchors, code=code)


def _exec_text(plan: _Plan, anchor_fn: str) -> str:
    """An anchor statement as ast.unparse writes it (it fills its own line, written without context)."""
    if plan.label.isascii():   # no escaping needed in the label literal
        return f"{anchor_fn}({plan.label!r}, {plan.shown})"
    return ast.unparse(plan.stmt)


def _anchor_lines(exec_source: str, anchor_fn: str, ordered: list[_Plan]) -> list[tuple[int, str, int]] | None:
    """(line, label, indent) of each planned anchor in exec_source, found by its text — which saves parsing the
    source again: anchor_fn occurs nowhere in the program's own text, so the lines that start with a call of it are
    the anchors, in order. None unless those lines are exactly the planned anchors' text."""
    found = []
    head = anchor_fn + "("
    for number, line in enumerate(exec_source.split("\n"), 1):
        text = line.lstrip(" ")
        if text.startswith(head):
            found.append((number, len(line) - len(text), text))
    if len(found) != len(ordered):
        return None
    calls = []
    for (number, indent, text), plan in zip(found, ordered):
        if text != _exec_text(plan, anchor_fn):
            return None
        calls.append((number, plan.label, indent))
    return calls


def _display_source(exec_source: str, calls: list, ordered: list[_Plan], anchor_fn: str) -> str | None:
    """exec_source with each anchor line rewritten to its display print: exactly what ast.unparse writes for the tree
    with print anchors, since an anchor statement fills its own line and unparse writes it without context (an
    f-string's quoting depends on context only inside another f-string). Saves a second unparse and re-parse.
    None if an anchor line is not the text expected (never seen; the caller then unparses the display tree)."""
    lines = exec_source.split("\n")   # unparse escapes every other line break inside strings
    for (line, _, indent), plan in zip(calls, ordered):
        exec_text = _exec_text(plan, anchor_fn)
        if plan.label.isascii():   # no escaping needed in either literal
            display_text = f"print(f'{plan.label}: {{{plan.shown}}}')"
        else:
            display_text = ast.unparse(ast.Expr(_print_call(plan.label, plan.stmt.value.args[1])))
        if lines[line - 1] != " " * indent + exec_text:
            return None
        lines[line - 1] = " " * indent + display_text
    return "\n".join(lines)


class _Refusal(Exception):
    pass


def _display_by_second_unparse(tree: ast.Module, exec_source: str, calls: list, ordered: list[_Plan]) -> str:
    """Unparse the tree with display anchors and prove the two sources differ only on the anchor lines."""
    for plan in ordered:
        plan.stmt.value = _print_call(plan.label, plan.stmt.value.args[1])
    try:
        source = ast.unparse(tree)
        ast.parse(source)
    except (ValueError, RecursionError) as err:
        raise _Refusal(f"ast.unparse failed: {err}") from err
    except SyntaxError as err:
        raise _Refusal(f"ast.unparse output does not re-parse (line {err.lineno}: {err.msg})") from err
    display_lines, exec_lines = source.splitlines(), exec_source.splitlines()
    if len(display_lines) != len(exec_lines):
        raise _Refusal("instrumented sources do not line up with the planned anchors")
    anchor_lines = {line for line, _, _ in calls}
    if any(d != e for i, (d, e) in enumerate(zip(display_lines, exec_lines), 1) if i not in anchor_lines):
        raise _Refusal("display and exec sources differ outside anchor lines")
    return source
