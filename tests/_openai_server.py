"""A small OpenAI-compatible chat-completions server over a local Hugging Face model (transformers `generate`), for
the teacher tests: the endpoint `stepcode reason --teacher http://127.0.0.1:PORT/v1` talks to, as it would to
`vllm serve`. Standard library HTTP; one generation at a time.

    python tests/_openai_server.py --model DIR [--name NAME] [--fail-first N]

Prints `listening PORT` on stdout once it serves (port 0: a free one), then one line per request on stderr.
GET /v1/models, POST /v1/chat/completions (model, messages, temperature, max_tokens, n, stop, seed), with the API's
semantics: a matched stop string is cut from the text, finish_reason "stop" or "length", an unknown model is 404.
--fail-first N answers the first N completion requests with 503 (what an overloaded server does), to exercise
the client's retries.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def serve(model_dir: str, name: str, fail_first: int, port: int = 0) -> None:
    import torch

    from stepcode.training.models import load_model

    model, tok = load_model(model_dir, dtype="float32")
    model.eval()
    lock = threading.Lock()
    failures = {"left": fail_first}

    def generate(messages, temperature, max_tokens, stops, seed):
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        enc = tok(text, return_tensors="pt", add_special_tokens=False)
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        with lock, torch.no_grad():
            torch.manual_seed(seed)
            out = model.generate(**enc, **sampling, max_new_tokens=max_tokens, stop_strings=stops or None,
                                 tokenizer=tok, pad_token_id=tok.pad_token_id)
        new = out[0, enc["input_ids"].shape[1]:]
        text = tok.decode(new, skip_special_tokens=True)
        cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
        if cuts:
            return text[:min(cuts)], "stop", len(new)
        ended = len(new) < max_tokens or int(new[-1]) == tok.eos_token_id
        return text, "stop" if ended else "length", len(new)

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, obj: dict) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, code: int, message: str) -> None:
            self._send(code, {"error": {"message": message, "type": "invalid_request_error", "code": code}})

        def log_message(self, fmt, *args):
            sys.stderr.write("server: " + (fmt % args) + "\n")

        def do_GET(self):
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "test"}]})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self):
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._error(404, f"no route {self.path}")
            try:
                req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            except ValueError:
                return self._error(400, "body is not JSON")
            if req.get("model") != name:
                return self._error(404, f"model {req.get('model')!r} does not exist")
            with lock:
                fail = failures["left"] > 0
                failures["left"] -= fail
            if fail:
                return self._error(503, "overloaded, try again")
            stops = req.get("stop") or []
            stops = [stops] if isinstance(stops, str) else list(stops)
            choices, used = [], 0
            for k in range(int(req.get("n", 1))):
                text, finish, n = generate(req["messages"], float(req.get("temperature", 1.0)),
                                           int(req.get("max_tokens") or 256), stops, int(req.get("seed") or 0) + k)
                used += n
                choices.append({"index": k, "message": {"role": "assistant", "content": text},
                                "finish_reason": finish})
            self._send(200, {"id": f"chatcmpl-{time.time_ns()}", "object": "chat.completion",
                             "created": int(time.time()), "model": name, "choices": choices,
                             "usage": {"completion_tokens": used}})

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"listening {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--name", default="micro")
    ap.add_argument("--fail-first", type=int, default=0)
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()
    serve(a.model, a.name, a.fail_first, a.port)
