"""REval ground truth and answer checks, run *inside* a sandbox child (the "reval" runner).

    from stepcode.sandbox.engine import Sandbox
    with Sandbox(hash_seeds=(0,), runners=("stepcode.evals.reval_dynamics",)) as sb:
        sb.run("reval", {"mode": "truth", "kind": "humaneval", "code": code, "entry_point": "f", "test": None,
                         "pairs": [{"input": "(3,)", "input_idx": 0, "tasks": [{"lineno": 2, "var": "x"}]}]})
        # -> {"status": "ok", "reason": None, "pairs": [{"status": "ok", "reason": None,
        #      "tasks": [{"covered": True, "next_lines": [3], "state": [{"type": "int", "repr": "4"}]}]}]}

It reproduces upstream REval's `dynamics.py` (r-eval/REval@2f148b9), whose semantics *are* the benchmark:
- code is compiled under the file name `<internals>`; `sys.settrace` records a state for each `line` event of any
  frame from that file (nested calls, comprehensions and generators included), holding a deep copy of the frame's
  locals minus modules, functions, builtins, iterators and generators. Consecutive events on the same line merge
  into one state (the later locals win); `return` and `exception` events land on the current state, or open a new
  one with empty locals when their line differs (an exception unwinding into a caller does that).
- coverage of line L: some state is at L. Next lines of L: the line of the state right after each state at L
  (-1 when it is the last one, or when L never ran). State of `var` after L: `var` evaluated against the locals of
  the state *after* each state at L (the same state if it is the last) — names, attributes, subscripts, tuples and
  constants; a list of every value over all executions, or Nil.
- HumanEval: `fn(*eval(input))`. ClassEval: the class code and its unittest code are exec'd together; the test
  classes are the globals named `{Class}Test*` (definition order; `input_idx` indexes them), each keeping its first
  `test*` method; per pair a fresh instance runs `setUp()` untraced, then that method traced. The pairs of one program
  run in order in one process, as upstream does, so state a program keeps between calls carries over the same way.
The modes: "truth" (the ground truth, values as type + repr), "state" (re-trace, then judge parsed state answers
against the live values with upstream's `_eq`), "output" (run one completed assertion, upstream's `Output` check).
Pure stdlib (numpy and dateutil are imported only when an answer needs them); it must never raise out of
`run_reval`. Nothing here is a security boundary: the sandbox is.

Programs import third-party packages (numpy; gensim, which pulls in scipy: DREval/149 and /117; bs4 + lxml: /117).
Their BLAS libraries start one thread per core at import, each counted by the sandbox's RLIMIT_NPROC and holding
address space under its RLIMIT_AS; past either limit OpenBLAS raises SIGINT and the import dies (a KeyboardInterrupt).
So a child pins every BLAS/OpenMP pool to one thread before the program runs (`_one_thread_pools`): the truth no
longer depends on the machine's core count, and a program's imports fit the default limits on any machine.
"""

from __future__ import annotations

import ast
import builtins
import copy
import io
import itertools
import linecache
import os
import re
import signal
import sys
import types
from collections.abc import Generator, Iterator

TRACED_FILE = "<internals>"      # upstream's marker: only frames compiled from this file are traced
TEST_FILE = "<dreval-test>"      # ClassEval unittest code: not traced, but kept in linecache for inspect
MODULE_NAME = "dynamics"         # upstream exec'd programs into the globals of its `dynamics` module
MAX_VALUES = 20                  # distinct state values kept per task in a truth row (the judge uses all of them)
_SKIPPED_CLASSES = ("module", "function", "builtin_function_or_method")


class _NilType:
    """Upstream's `Nil`: "not executed / no such variable", distinct from None."""

    def __repr__(self) -> str:
        return "Nil"

    def __deepcopy__(self, memo):
        return self


NIL = _NilType()


class PairTimeout(BaseException):
    """Raised into a pair's run by its own alarm (BaseException: the program's `except Exception` can't eat it)."""


class _Sink(io.StringIO):
    """stdout/stderr/stdin as upstream's `swallow_io` gives them: writes vanish (up to a cap), reads raise."""

    def __init__(self, cap: int):
        super().__init__()
        self.cap, self.size = cap, 0

    def write(self, s) -> int:
        self.size += len(s) if isinstance(s, str) else 0
        if self.size > self.cap:
            raise OSError(f"the program printed more than {self.cap} characters")
        return len(s) if isinstance(s, str) else 0

    def read(self, *args, **kwargs):
        raise OSError("stdin is not readable")

    readline = readlines = read

    def readable(self) -> bool:
        return False


# --- the tracer --------------------------------------------------------------------------------------------------

class State:
    __slots__ = ("lineno", "locals", "return_", "exception")

    def __init__(self, lineno: int):
        self.lineno = lineno           # 0-indexed, as upstream stores it
        self.locals: dict = {}
        self.return_ = NIL
        self.exception = NIL


class Recorder:
    """The flat list of states of one traced call, built exactly as upstream's `Sandbox.add_state` builds it."""

    def __init__(self):
        self.states: list[State] = []

    def _add(self, lineno: int, field: str, value) -> None:
        if not self.states or self.states[-1].lineno != lineno:
            self.states.append(State(lineno))
        setattr(self.states[-1], field, value)

    def local_trace(self, frame, event, arg):
        # Returns None like upstream's: CPython keeps a frame's local tracer when it returns None (it only replaces
        # it with a non-None result), so every later event of the frame still arrives here.
        if event == "line":
            snapshot = {}
            for k, v in frame.f_locals.items():
                if v.__class__.__name__ in _SKIPPED_CLASSES or isinstance(v, (Iterator, Generator)):
                    continue
                snapshot[k] = copy.deepcopy(v)
            self._add(frame.f_lineno - 1, "locals", snapshot)
        elif event == "return":
            self._add(frame.f_lineno - 1, "return_", arg)
        elif event == "exception":
            self._add(frame.f_lineno - 1, "exception", arg[0])

    def global_trace(self, frame, event, arg):
        if event == "call" and frame.f_code.co_filename == TRACED_FILE:
            return self.local_trace
        return None

    # -- the questions (line numbers 0-indexed here) --

    def covered(self, lineno: int) -> bool:
        return any(s.lineno == lineno for s in self.states)

    def next_lines(self, lineno: int) -> set[int]:
        hits = [i for i, s in enumerate(self.states) if s.lineno == lineno]
        if not hits:
            return {-1}
        return {self.states[i + 1].lineno if i + 1 < len(self.states) else -1 for i in hits}

    def states_after(self, lineno: int) -> list[State]:
        # settrace fires *before* a line runs, so the locals after line L are those of the next state; the last
        # state (a return or an exception) has no successor and stands for itself.
        n = len(self.states)
        return [self.states[i + 1] if i + 1 < n else self.states[i]
                for i, s in enumerate(self.states) if s.lineno == lineno]

    def values(self, lineno: int, var: str):
        """Upstream `VarInterpreter.get`: a list of values, or NIL (line not run, name unresolvable, any error)."""
        try:
            if not self.covered(lineno):
                return NIL
            node = ast.parse(var).body[0].value
            return self._values(node, self.states_after(lineno))
        except Exception:  # noqa: BLE001 — upstream maps every failure to Nil
            return NIL

    def _values(self, node, after: list[State]):
        if isinstance(node, ast.Constant):
            return [node.value]
        if isinstance(node, ast.Name):
            found = [s.locals[node.id] for s in after if node.id in s.locals]
            return found or NIL
        if isinstance(node, ast.Attribute):
            objs = self._values(node.value, after)
            if objs is NIL:
                return NIL
            found = [getattr(o, node.attr) for o in objs if hasattr(o, node.attr)]
            return found or NIL
        if isinstance(node, ast.Subscript):
            arrs, keys = self._values(node.value, after), self._values(node.slice, after)
            if arrs is NIL or keys is NIL:
                return NIL
            found = []
            for a, k in itertools.product(arrs, keys):
                try:
                    found.append(a[k])
                except (TypeError, KeyError, IndexError):
                    pass
            return found or NIL
        if isinstance(node, ast.Tuple):
            parts = [self._values(e, after) for e in node.elts]
            if any(p is NIL for p in parts):
                return NIL
            return list(itertools.product(*parts))
        # Upstream returns (not raises) a ValueError here; nested, that ends in a TypeError and so Nil. The engine
        # rejects such a var at the top level (upstream would crash scoring it), so raising gives the same Nil.
        raise ValueError(f"unsupported expression {ast.dump(node)}")


# --- running the programs ------------------------------------------------------------------------------------------

def _fresh_module() -> dict:
    """A module named like upstream's, registered so that `pydoc.locate('dynamics.Cls')` finds program classes."""
    module = types.ModuleType(MODULE_NAME)
    sys.modules[MODULE_NAME] = module
    return module.__dict__


def _test_classes(env: dict, class_name: str) -> list[type]:
    """Upstream `create_test_classes` + `tcls_postprocess`: `{Class}Test*` TestCase subclasses in definition
    order, each with its first `test*` method as `dreval_test`."""
    import unittest

    found = []
    for name, value in list(env.items()):
        if isinstance(value, type) and re.match(f"{class_name}Test.*", name) and issubclass(value, unittest.TestCase):
            tests = [k for k in value.__dict__ if k.startswith("test")]
            if not tests:
                raise ValueError(f"no test methods in {name}")
            value.dreval_test = value.__dict__[tests[0]]
            found.append(value)
    return found


def _setup_source(test_cls) -> str | None:
    """`inspect.getsource(cls.setUp)`, which upstream shows (commented) before ClassEval test code; None when the
    class keeps unittest's own no-op setUp (upstream then shows nothing)."""
    import inspect
    import unittest

    if test_cls.setUp is unittest.TestCase.setUp:
        return None
    return inspect.getsource(test_cls.setUp)


def prepare_reval(payload: dict):
    """Server side, before the fork: compile only (nothing executes). A finished verdict when the code is broken."""
    try:
        code = compile(payload["code"], TRACED_FILE, "exec", dont_inherit=True)
        test = compile(payload["test"], TEST_FILE, "exec", dont_inherit=True) if payload.get("test") else None
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        return {"status": "syntax_error", "reason": _describe(e), "pairs": []}
    return code, test, payload


def _describe(e: BaseException) -> str:
    try:
        text = str(e)
    except BaseException:  # noqa: BLE001 — an exception whose __str__ raises
        text = "<unprintable>"
    return f"{type(e).__name__}: {text}"[:300]


def _alarm(_signum, _frame):
    raise PairTimeout()


class _Program:
    """One program exec'd once (as upstream does), then traced call by call."""

    def __init__(self, code, test, payload: dict):
        self.payload = payload
        self.env = _fresh_module()
        self.env["__builtins__"] = builtins
        exec(code, self.env)
        self.test_classes: list[type] = []
        if payload["kind"] == "classeval":
            cls = self.env[payload["entry_point"]]
            if not isinstance(cls, type):
                raise TypeError(f"{payload['entry_point']} is not a class")
            cls.__doc__ = payload["code"]
            linecache.cache[TEST_FILE] = (len(payload["test"]), None, payload["test"].splitlines(True), TEST_FILE)
            exec(test, self.env)
            self.test_classes = _test_classes(self.env, payload["entry_point"])

    def test_class(self, input_idx: int):
        if not 0 <= input_idx < len(self.test_classes):
            raise IndexError(f"input_idx {input_idx}: the program has {len(self.test_classes)} test classes")
        return self.test_classes[input_idx]

    def trace(self, pair: dict, seconds: float) -> Recorder:
        """Run one pair under the tracer; raises what the program raised (or PairTimeout)."""
        if self.payload["kind"] == "humaneval":
            fn = self.env[self.payload["entry_point"]]
            args = eval(pair["input"], self.env)
            call = lambda: fn(*args)  # noqa: E731
        else:
            obj = self.test_class(pair["input_idx"])()
            obj.setUp()                          # upstream runs setUp before (outside) the traced call
            call = obj.dreval_test
        rec = Recorder()
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            sys.settrace(rec.global_trace)
            try:
                call()
            finally:
                sys.settrace(None)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        return rec


def _value_record(v) -> dict:
    t = type(v)
    name = t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
    try:
        text = repr(v)
    except Exception:  # noqa: BLE001
        text = "<unrepresentable>"
    return {"type": name, "repr": text[:1000]}


def _truth(rec: Recorder, tasks: list[dict]) -> list[dict]:
    rows = []
    for t in tasks:
        line = t["lineno"] - 1
        values = rec.values(line, t["var"])
        state = None
        if values is not NIL:
            state = []
            for v in values:
                r = _value_record(v)
                if r not in state and len(state) < MAX_VALUES:
                    state.append(r)
        rows.append({"covered": rec.covered(line),
                     "next_lines": sorted(n + 1 if n != -1 else -1 for n in rec.next_lines(line)),
                     "state": state})
    return rows


# Thread-pool sizes read by the numerical libraries when they load (OpenBLAS: numpy's and scipy's own copies).
_POOL_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def _one_thread_pools() -> None:
    """Before the program imports anything: one BLAS/OpenMP thread each (the server starts with a cleared
    environment, so nothing else sets them). A library already loaded in the server keeps its pool: none is."""
    for name in _POOL_VARIABLES:
        os.environ[name] = "1"


def run_reval(prepared, limits: dict) -> dict:
    """Child side. Never raises: every failure is a status, for the whole program or for one pair."""
    code, test, payload = prepared
    _one_thread_pools()
    sink = _Sink(limits.get("stdout_bytes", 1 << 16))
    sys.stdout = sys.stderr = sys.stdin = sink
    signal.signal(signal.SIGALRM, _alarm)
    try:
        if payload["mode"] == "output":
            return _run_output(code, test, payload)
        try:
            program = _Program(code, test, payload)
        except BaseException as e:  # noqa: BLE001
            return {"status": "load_error", "reason": _describe(e), "pairs": []}
        results = []
        for pair in payload["pairs"]:
            try:
                rec = program.trace(pair, payload.get("pair_timeout_s", 120.0))
            except PairTimeout:
                results.append({"status": "timeout", "reason": "the traced call ran out of time"})
                continue
            except BaseException as e:  # noqa: BLE001 — upstream asserts the run was ok; we report it instead
                results.append({"status": "runtime_error", "reason": _describe(e)})
                continue
            if payload["mode"] == "truth":
                setup = _setup_source(program.test_class(pair["input_idx"])) if test is not None else None
                results.append({"status": "ok", "reason": None, "setup_source": setup,
                                "tasks": _truth(rec, pair["tasks"])})
            else:
                results.append({"status": "ok", "reason": None,
                                "correct": [_judge_state(rec, t) for t in pair["tasks"]]})
        return {"status": "ok", "reason": None, "pairs": results}
    except BaseException as e:  # noqa: BLE001 — e.g. an output cap hit outside a pair
        return {"status": "runtime_error", "reason": _describe(e), "pairs": []}
    finally:
        sys.stdout, sys.stderr, sys.stdin = sys.__stdout__, sys.__stderr__, sys.__stdin__


# --- judging answers (upstream evaluation.py: State._postprocess's value half and State._eq; Output) ---------------

def _answer_namespace(text: str) -> dict:
    """What upstream's `eval` of an answer could see: evaluation.py's globals, the commonly used part of them."""
    import datetime

    ns = {"__builtins__": builtins, "datetime": datetime.datetime, "Nil": NIL}
    if "np." in text or "numpy" in text:
        import numpy
        ns["np"] = ns["numpy"] = numpy
    return ns


def _is_builtin_type(t) -> bool:
    import inspect

    if t is None:
        raise ValueError("invalid type None")
    if not inspect.isclass(t):
        raise AssertionError(f"use a class instead of instance: {t}")
    return t.__module__ == "builtins"


def parse_state_value(value: str, type_name: str):
    """(value, type) from the two halves of a `value; type` answer, as upstream builds them (with `eval`), or
    "ERROR". `type_name` arrives already cleaned up (lowercased, `<class>`/generics stripped) by the engine."""
    from pydoc import locate

    ns = _answer_namespace(value)
    if type_name == "str":
        try:
            return eval(value, ns), str
        except Exception:  # noqa: BLE001
            return value, str
    if type_name in ("datetime.datetime", "datetime"):
        try:
            from dateutil.parser import parse
            return parse(value), locate(type_name)
        except Exception:  # noqa: BLE001
            return "ERROR"
    if type_name in ("numpy.ndarray", "np.ndarray"):
        try:
            import numpy
            return numpy.array(eval(value, ns)), locate(type_name)
        except Exception:  # noqa: BLE001
            return "ERROR"
    if value == "None":  # upstream also tests `type == 'NoneType'`, but after lowercasing: never true
        return None, type(None)
    try:
        t = locate(type_name)
        if _is_builtin_type(t):
            return eval(value, ns), t
        try:
            return t(eval(value, ns)), t
        except Exception:  # noqa: BLE001
            return t(value), t
    except Exception:  # noqa: BLE001
        return "ERROR"


def state_equal(answer, actual) -> bool:
    """Upstream `State._eq` (with `ERROR` already ruled out): Nil matches Nil; otherwise the answer's type must be
    the type of some true value, its value of that type, and the value `in` the true values (floats within 1e-6;
    numpy arrays by allclose). An exception from a value's own __eq__ counts as wrong (upstream would crash)."""
    if answer is NIL or actual is NIL:
        return answer is NIL and actual is NIL
    value, t = answer
    try:
        if all(t != type(a) for a in actual) or type(value) != t:   # noqa: E721 (upstream's comparison, kept)
            return False
        if t == float:   # noqa: E721
            return any(_close(value, a) for a in actual)
        try:
            return value in actual
        except ValueError:  # an array's truth value is ambiguous: compare one by one
            for a in actual:
                try:
                    if _is_ndarray(value) and _is_ndarray(a):
                        if sys.modules["numpy"].allclose(value, a):
                            return True
                    elif value == a:
                        return True
                except Exception:  # noqa: BLE001
                    continue
            return False
    except Exception:  # noqa: BLE001
        return False


def _close(x, y) -> bool:
    try:
        return abs(x - y) < 1e-6
    except Exception:  # noqa: BLE001
        return False


def _is_ndarray(x) -> bool:
    return type(x).__module__ == "numpy" and type(x).__name__ == "ndarray"


def _judge_state(rec: Recorder, task: dict) -> bool:
    """task: lineno, var, answer — None (unparseable: wrong), "Nil", or [value, type] from the engine's parser."""
    answer = task["answer"]
    if answer is None:
        return False
    if answer == "Nil":
        parsed = NIL
    else:
        parsed = parse_state_value(answer[0], answer[1])
        if isinstance(parsed, str):      # "ERROR"
            return False
    return state_equal(parsed, rec.values(task["lineno"] - 1, task["var"]))


def answer_method_source(answer: str) -> str:
    """Upstream `create_from_answer`: the ClassEval answer as the body of `dreval_output_pred(self)` — lines
    tab-indented except inside triple-quoted blocks, then *every* `assert` turned into `self.assert`."""
    src = "def dreval_output_pred(self):"
    in_string = False
    for line in answer.split("\n"):
        src += f"\n{line}" if in_string else f"\n\t{line}"
        if "'''" in line or '"""' in line:
            in_string = not in_string
    return src.replace("assert", "self.assert")


def _run_output(code, test, payload: dict) -> dict:
    """Upstream `Output`: pass iff the completed test code runs without an Exception."""
    try:
        program = _Program(code, test, payload)
    except BaseException as e:  # noqa: BLE001
        return {"status": "load_error", "reason": _describe(e)}
    signal.setitimer(signal.ITIMER_REAL, payload.get("answer_timeout_s", 3.0))   # upstream has no limit at all
    try:
        if payload["kind"] == "humaneval":
            # upstream: `locals()[fn_name] = fn; exec(ans)` — the answer sees the entry point, not the program's
            # other globals. An explicit namespace keeps that meaning on every Python version (PEP 667).
            exec(compile(payload["answer"], "<answer>", "exec", dont_inherit=True),
                 {"__builtins__": builtins, payload["entry_point"]: program.env[payload["entry_point"]]})
        else:
            test_cls = program.test_class(payload["input_idx"])
            exec(compile(answer_method_source(payload["answer"]), TRACED_FILE, "exec", dont_inherit=True), program.env)
            test_cls.dreval_output_pred = program.env["dreval_output_pred"]
            obj = test_cls()
            obj.setUp()
            obj.dreval_output_pred()
    except PairTimeout:
        return {"status": "timeout", "reason": "the answer ran out of time"}
    except BaseException as e:  # noqa: BLE001 — upstream fails any Exception (and would crash on the rest)
        return {"status": "failed", "reason": _describe(e)}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return {"status": "passed", "reason": None}


RUNNERS = {"reval": (prepare_reval, run_reval)}
WARMUP: dict = {}
