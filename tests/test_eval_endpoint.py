"""The endpoint evaluation backend (stepcode/evals/endpoint.py) against real HTTP servers.

The main server is tests/_openai_server.py serving a micro model through transformers, compared with the local
TransformersBackend on the same model folder. The micro model's weights are redrawn with a large spread so that
greedy decoding says something different for each prompt (an untrained micro model writes newlines whatever it is
asked), which makes a wrong order or a wrong prompt visible. A second, in-process server (standard library HTTP,
`_Scripted`) answers in ways the first one cannot: fewer choices than asked, vLLM's `stop_reason`, a 400, a 429,
replies that finish out of order.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from stepcode.errors import UserError
from stepcode.evals.benchmark import Prompt
from stepcode.evals.endpoint import EndpointBackend, EndpointError, restore_stop
from stepcode.evals.generate import Decoding, cut_at_stop

ROOT = Path(__file__).resolve().parents[1]
GREEDY = Decoding("greedy", 0.0, 1)
PROMPTS = [Prompt([{"role": "system", "content": "You are a helpful coder."},
                   {"role": "user", "content": f"What does f({i}) return? def f(x): return x * {i}" + " ok" * i}],
                  f"What does f({i}) return?") for i in range(6)]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
    return dict(env, OPENAI_API_KEY="")


def _one_line(e: BaseException, *words: str) -> str:
    msg = str(e)
    # a UserError (the CLI prints its one line, no traceback) that chains no other exception's traceback either
    assert isinstance(e, UserError) and "\n" not in msg and e.__cause__ is None, msg
    assert e.__context__ is None or e.__suppress_context__, msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A micro model folder whose greedy output depends on the prompt (weights redrawn, seeded)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stepcode.training.models import build_tiny_model, corpus_texts

    d = tmp_path_factory.mktemp("endpoint")
    build_tiny_model(d / "base", corpus_texts([{"messages": p.messages} for p in PROMPTS]), size="micro")
    model = AutoModelForCausalLM.from_pretrained(d / "base")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.5, generator=g)
    model.save_pretrained(d / "micro")
    AutoTokenizer.from_pretrained(d / "base").save_pretrained(d / "micro")
    return d / "micro"


def _start(model_dir: Path, log: Path, *args: str):
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "_openai_server.py"), "--model", str(model_dir),
                             "--name", "micro-eval", *args], stdout=subprocess.PIPE, stderr=open(log, "w"),
                            text=True, env=_env())
    line = proc.stdout.readline()
    assert line.startswith("listening "), (line, log.read_text()[-3000:])
    return proc, f"http://127.0.0.1:{int(line.split()[1])}/v1"


def _stop(proc) -> None:
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(model_dir):
    proc, url = _start(model_dir, model_dir.parent / "server.log")
    try:
        yield url
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def local(model_dir):
    from stepcode.evals.generate import TransformersBackend

    return TransformersBackend(str(model_dir))


def _local_greedy(local, stops, max_new_tokens=24) -> list[list[str]]:
    # batch_size=1: one prompt per generate call, as the server decodes them (no padding, so no rounding apart)
    return local.complete_many(PROMPTS, GREEDY, top_p=1.0, max_new_tokens=max_new_tokens, stops=stops, seed=0,
                               batch_size=1)


# --- against tests/_openai_server.py (the micro model) -------------------------------------------------------------

@pytest.mark.slow   # the micro model, locally and behind a real server: ~15 s on 2 cores with the fixtures
def test_greedy_equals_the_local_backend_in_input_order(server, local):
    want = _local_greedy(local, [])
    assert len({t[0] for t in want}) == len(PROMPTS), want      # every prompt its own text: order shows
    backend = EndpointBackend(server, "micro-eval", concurrency=4)
    assert (backend.name, backend.model) == ("endpoint", "micro-eval")
    got = backend.complete_many(PROMPTS, GREEDY, top_p=0.95, max_new_tokens=24, stops=[], seed=0, desc="greedy")
    assert got == want
    assert backend.complete(PROMPTS[3], GREEDY, top_p=0.95, max_new_tokens=24, stops=[], seed=5) == want[3]
    assert json.loads(backend.render(PROMPTS[0])) == PROMPTS[0].messages
    assert EndpointBackend(server).model == "micro-eval"      # the one model it serves, found by GET /models


@pytest.mark.slow
def test_stop_strings_match_the_local_backend(server, local):
    plain = _local_greedy(local, [])
    # a stop string the greedy text of prompt 0 really contains (a word of its, past the start)
    stop = next((m.group() for m in re.finditer(r"[A-Za-z]{3,}", plain[0][0]) if m.start() > 0), None)
    assert stop, plain[0]
    want = _local_greedy(local, [stop])
    backend = EndpointBackend(server, "micro-eval", concurrency=3)
    got = backend.complete_many(PROMPTS, GREEDY, top_p=0.95, max_new_tokens=24, stops=[stop], seed=0)
    assert got[0][0].endswith(stop)   # the server cut it, the backend put it back: finish_reason "stop", one stop
    for keep in (False, True):
        assert [[cut_at_stop(t, [stop], keep) for t in row] for row in got] == \
            [[cut_at_stop(t, [stop], keep) for t in row] for row in want]
    # several stop strings: which one matched is unknown without vLLM's stop_reason, so none is put back
    two = backend.complete(PROMPTS[0], GREEDY, top_p=0.95, max_new_tokens=24, stops=[stop, "@@@@"], seed=0)
    assert two == [cut_at_stop(plain[0][0], [stop])]


@pytest.mark.slow
def test_n_samples_come_in_one_request(server):
    backend = EndpointBackend(server, "micro-eval", concurrency=2)
    sampled = Decoding("t0.8", 0.8, 3)
    got = backend.complete_many(PROMPTS[:2], sampled, top_p=0.95, max_new_tokens=8, stops=[], seed=1)
    assert [len(row) for row in got] == [3, 3] and all(isinstance(t, str) for row in got for t in row)
    assert len({t for row in got for t in row}) > 1                    # sampled, not one text repeated
    assert backend.requests == 2                                        # n=3 asked in one request per prompt
    again = backend.complete_many(PROMPTS[:2], sampled, top_p=0.95, max_new_tokens=8, stops=[], seed=1)
    assert again == got                                                 # seeded: the same samples
    one = backend.complete(PROMPTS[0], GREEDY, top_p=0.95, max_new_tokens=8, stops=[], seed=0)
    assert backend.complete(PROMPTS[0], Decoding("greedy", 0.0, 2), top_p=0.95, max_new_tokens=8, stops=[],
                            seed=0) == one * 2                          # greedy n=2: the greedy text twice


@pytest.mark.slow   # its own server, whose first 2 completion requests answer 503
def test_retries_survive_an_overloaded_server(model_dir, local):
    log = model_dir.parent / "failing.log"
    proc, url = _start(model_dir, log, "--fail-first", "2")
    try:
        backend = EndpointBackend(url, "micro-eval", concurrency=1, retries=3, backoff_s=0.05)
        got = backend.complete_many(PROMPTS[:2], GREEDY, top_p=0.95, max_new_tokens=24, stops=[], seed=0)
    finally:
        _stop(proc)
    assert got == _local_greedy(local, [])[:2]
    assert backend.requests == 4
    text = log.read_text()
    assert text.count("POST /v1/chat/completions") == 4 and text.count('" 503 ') == 2, text[-2000:]


@pytest.mark.slow
def test_unknown_model_and_dead_port_are_one_line(server):
    with pytest.raises(EndpointError) as e:
        EndpointBackend(server, "gpt-x")
    _one_line(e.value, "--model gpt-x", server, "micro-eval")
    with socket.socket() as sock:   # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(EndpointError) as e:
        EndpointBackend(f"http://127.0.0.1:{port}/v1", "micro-eval")
    _one_line(e.value, f"http://127.0.0.1:{port}/v1", "cannot reach", "vllm serve")
    for url, words in [("localhost:8000/v1", ["not an http(s) URL"]), ("http://127.0.0.1:99999/v1", ["bad port"])]:
        with pytest.raises(EndpointError) as e:
            EndpointBackend(url)
        _one_line(e.value, url, *words)


# --- against a scripted in-process server --------------------------------------------------------------------------

class _Scripted:
    """A real HTTP server in this process, answering /v1/models and /v1/chat/completions by a script: `choices_per
    _reply` choices at most (whatever n asks), vLLM's `stop_reason`, HTTP 400 for max_tokens > 1000, 429 for the
    first `throttle` requests, and a delay that makes earlier prompts finish later. The text of a choice is
    "<user message> #<seed>" (+ "<stop>" never: a matched stop is cut, as the API does)."""

    def __init__(self, models=("scripted",), choices_per_reply: int = 99, throttle: int = 0, stop_reason=True):
        self.bodies: list[dict] = []
        self.throttle = throttle
        script = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, obj) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": m} for m in models]})

            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                script.bodies.append(req)
                if script.throttle > 0:
                    script.throttle -= 1
                    return self._send(429, {"error": {"message": "slow down"}})
                if req["max_tokens"] > 1000:
                    return self._send(400, {"error": {"message": "max_tokens is too large:\n 1001 > 1000"}})
                user = req["messages"][-1]["content"]
                time.sleep(0.02 * (6 - int(user[-1])))   # prompt 0 answers last
                choices = []
                for k in range(min(req.get("n", 1), choices_per_reply)):
                    text, finish, why = f"{user} #{req['seed'] + k}", "length", None
                    if "[STOP]" in user:
                        text, finish, why = user.split("[STOP]")[0], "stop", "[STOP]"
                    choice = {"index": k, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                    if stop_reason:
                        choice["stop_reason"] = why
                    choices.append(choice)
                self._send(200, {"choices": choices})

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/v1"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def _numbered(i: int, text: str = "") -> Prompt:
    return Prompt([{"role": "user", "content": f"{text}{i}"}], f"{text}{i}")


def test_order_fill_and_seeds_on_a_scripted_server():
    s = _Scripted(choices_per_reply=2)
    try:
        backend = EndpointBackend(s.url, concurrency=6)   # the only model: "scripted"
        prompts = [_numbered(i) for i in range(6)]
        got = backend.complete_many(prompts, Decoding("t0.8", 0.8, 3), top_p=0.9, max_new_tokens=5, stops=[],
                                    seed=7)
        # input order although prompt 0 finishes last; 3 samples from replies of at most 2 choices: 2 requests each
        for i, row in enumerate(got):
            base = 7 * 1_000_003 + i
            assert row == [f"{i} #{base}", f"{i} #{base + 1}", f"{i} #{base + 1_000_033}"], row
        assert backend.requests == 12 and sorted(b["n"] for b in s.bodies) == [1] * 6 + [3] * 6
        assert {(b["temperature"], b["top_p"], b["max_tokens"], "stop" in b) for b in s.bodies} == {(0.8, 0.9, 5, False)}
        s.bodies.clear()
        assert backend.complete(_numbered(1), Decoding("greedy", 0.0, 2), top_p=0.9, max_new_tokens=5, stops=["x"],
                                seed=3) == ["1 #3", "1 #3"]   # greedy: one completion, repeated
        assert len(s.bodies) == 1 and s.bodies[0]["n"] == 1 and "top_p" not in s.bodies[0]
        assert s.bodies[0]["stop"] == ["x"]
        assert backend.complete_many([], GREEDY, top_p=1.0, max_new_tokens=5, stops=[], seed=0) == []
    finally:
        s.close()


def test_stop_reason_errors_and_throttling_on_a_scripted_server():
    s = _Scripted(models=("a", "b"), throttle=2)
    try:
        with pytest.raises(EndpointError) as e:
            EndpointBackend(s.url)
        _one_line(e.value, "serves 2 models (a, b)", "--model NAME")
        backend = EndpointBackend(s.url, "b", backoff_s=0.01, retries=2)
        stops = ["[STOP]", "[END]"]
        # vLLM's stop_reason names the stop that matched: it is put back even with several stops asked for
        assert backend.complete(_numbered(1, "abc[STOP]"), GREEDY, top_p=1.0, max_new_tokens=5, stops=stops,
                                seed=0) == ["abc[STOP]"]
        assert backend.requests == 3                          # two 429s, retried
        assert backend.complete(_numbered(2), GREEDY, top_p=1.0, max_new_tokens=5, stops=stops, seed=0) == ["2 #0"]
        n = backend.requests
        with pytest.raises(EndpointError) as e:
            backend.complete_many([_numbered(i) for i in range(3)], GREEDY, top_p=1.0, max_new_tokens=1001,
                                  stops=[], seed=0)
        _one_line(e.value, s.url, "--model b", "HTTP 400", "max_tokens is too large: 1001 > 1000")
        assert backend.requests - n <= 3                      # a 400 is not retried
        s.throttle = 99
        with pytest.raises(EndpointError) as e:
            backend.complete(_numbered(3), GREEDY, top_p=1.0, max_new_tokens=5, stops=[], seed=0)
        _one_line(e.value, "gave up after 3 attempts", "HTTP 429", "slow down")
    finally:
        s.close()


def test_restore_stop():
    stop = "</answer>"
    cut = {"finish_reason": "stop"}
    assert restore_stop("<answer>1", cut, [stop]) == "<answer>1</answer>"               # no stop_reason: one stop
    assert restore_stop("<answer>1", cut, [stop, "[/ANSWER]"]) == "<answer>1"          # which one is unknown
    assert restore_stop("<answer>1</answer>", cut, [stop]) == "<answer>1</answer>"     # the server kept it
    assert restore_stop("<answer>1", {"finish_reason": "length"}, [stop]) == "<answer>1"
    assert restore_stop("<answer>1", cut, []) == "<answer>1"
    assert restore_stop("x", {"finish_reason": "stop", "stop_reason": "[/ANSWER]"}, [stop, "[/ANSWER]"]) \
        == "x[/ANSWER]"
    assert restore_stop("x", {"finish_reason": "stop", "stop_reason": None}, [stop]) == "x"          # vLLM: EOS
    assert restore_stop("x", {"finish_reason": "stop", "stop_reason": 151645}, [stop]) == "x"        # EOS token id
