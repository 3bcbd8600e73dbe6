"""An evaluation backend that asks an OpenAI-compatible chat-completions endpoint (`vllm serve`, TGI, llama.cpp's
server, ...) instead of loading the model here: `stepcode evaluate --endpoint URL --model NAME`.

    vllm serve Qwen/Qwen2.5-Coder-7B-Instruct --port 8000
    from stepcode.evals.endpoint import EndpointBackend
    from stepcode.evals.generate import Decoding, evaluate
    backend = EndpointBackend("http://localhost:8000/v1", "Qwen/Qwen2.5-Coder-7B-Instruct", concurrency=16)
    texts = backend.complete_many(prompts, Decoding("t0.8", 0.8, 5), top_p=0.95, max_new_tokens=1024,
                                  stops=["[/ANSWER]"], seed=0, desc="cruxeval_output t0.8")  # [[5 texts] per prompt]
    metrics = evaluate("Qwen/Qwen2.5-Coder-7B-Instruct", ["cruxeval"], params, out_dir="eval", backend=backend)

The same interface as stepcode.evals.generate.TransformersBackend (`name`, `render`, `complete`, `complete_many`),
spoken with the standard library only (urllib):
- Up front, `GET /models`: the endpoint must answer, and serve `model` (None: the one model it serves). An
  unreachable URL, an unknown model or a URL that is not an OpenAI-compatible API is an `EndpointError` (a UserError:
  one line naming the URL or the model and the fix).
- One `POST /chat/completions` per prompt with `prompt.messages` (the server applies the model's chat template; a
  base model without one needs the server's --chat-template), `temperature`, `top_p` (only when temperature > 0),
  `max_tokens`, `stop`, `seed` and `n` = d.n in one request; a server that returns fewer choices is asked again
  for the rest (seed shifted per round). Greedy (temperature 0) asks for one completion and repeats it d.n times:
  what the local backend returns, and some servers refuse n > 1 without sampling.
- `complete_many` sends `concurrency` requests at once (a thread pool); results in input order; prompt i gets the
  seed `seed * 1_000_003 + i`. Given `desc`, a tqdm bar (so named) counts prompts; without it there is none (a
  caller such as generate.complete_all, which hands prompts over in chunks, draws its own).
- Each request is retried with exponential backoff (backoff_s, 2 backoff_s, ...; `retries` times) on a connection
  error, a timeout, a reply that is not JSON, HTTP 408/409/429 or any 5xx; another 4xx (a bad request: e.g. a
  prompt plus max_tokens beyond the model's context) is not retried. Both end in a one-line `EndpointError`.

Stop strings. The OpenAI API cuts a matched stop string from the text, while the local backends return it (and a
caller may keep it: the stepcode prompt style keeps "</answer>"). So a choice that ended on a stop gets it back:
- vLLM says which stop matched (`stop_reason`: the string, or the EOS token id / null): exactly that string is
  appended, and nothing when generation ended at EOS;
- a server without `stop_reason` only says finish_reason "stop", which also means EOS: when exactly one stop
  string was requested and the text does not already end with it, it is appended. An EOS ending then looks like
  one on the stop: `cut_at_stop(keep=False)` removes it again, so only a caller that keeps the stop sees a text
  the local backend would not give. With several stop strings requested nothing is appended (which one matched
  is unknown), so only such a caller can miss one.
A text that already ends with a requested stop (a server that keeps it) is left as is. After
`generate.cut_at_stop(text, stops, keep)` the texts are then what the local backend gives.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

from stepcode.errors import UserError
from stepcode.evals.benchmark import Prompt
from stepcode.evals.generate import Decoding
from stepcode.openai_http import check_base_url, request_json, served_models

RETRY_STATUSES = frozenset({408, 409, 429})      # and every 5xx
SEED_MOD = 2 ** 63                                # seeds stay in the API's int64
_NO_STOP_REASON = object()


class EndpointError(UserError, RuntimeError):
    """The endpoint cannot be used (unreachable, wrong model, not OpenAI-compatible) or a request failed for good;
    one line naming the URL or the model and what to do."""


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _server_message(e: urllib.error.HTTPError) -> str:
    """The error message of an HTTP error reply (OpenAI: {"error": {"message": ...}}; else its body), one line."""
    try:
        raw = e.read()[:2000].decode("utf-8", "replace") if e.fp else ""
    except OSError:
        raw = ""
    try:
        body = json.loads(raw)
    except ValueError:
        return _one_line(raw)
    if isinstance(body, dict):
        err = body.get("error", body)
        msg = err.get("message") if isinstance(err, dict) else err
        msg = msg or body.get("message") or body.get("detail")
        if msg:
            return _one_line(msg if isinstance(msg, str) else json.dumps(msg))
    return _one_line(raw)


def restore_stop(text: str, choice: dict, stops: Sequence[str]) -> str:
    """The choice's text with the stop string the API cut off put back (see the module docstring)."""
    if choice.get("finish_reason") != "stop" or not stops or any(text.endswith(s) for s in stops):
        return text
    reason = choice.get("stop_reason", _NO_STOP_REASON)
    if reason is not _NO_STOP_REASON:                      # vLLM: the matched string, or EOS (a token id / null)
        return text + reason if isinstance(reason, str) and reason in stops else text
    return text + stops[0] if len(stops) == 1 else text


class EndpointBackend:
    """An OpenAI-compatible chat-completions endpoint (base URL ending in /v1, as vLLM serves it) as an evaluation
    backend. Thread-safe: requests share nothing but the settings."""

    name = "endpoint"

    def __init__(self, base_url: str, model: str | None = None, *, concurrency: int = 8, retries: int = 3,
                 backoff_s: float = 1.0, timeout_s: float = 600, api_key: str | None = None):
        base = check_base_url(base_url, "--endpoint", error=EndpointError)
        if concurrency < 1 or retries < 0 or backoff_s < 0 or timeout_s <= 0:
            raise ValueError("concurrency must be >= 1, retries and backoff_s >= 0, timeout_s > 0")
        self.base = base
        self.concurrency, self.retries, self.backoff_s, self.timeout_s = concurrency, retries, backoff_s, timeout_s
        self.api_key = api_key
        self.requests = 0                 # completion requests sent (retries included): for logs and tests
        self._count = threading.Lock()
        models = self.models()
        if model is None:
            if len(models) != 1:
                raise EndpointError(f"--endpoint {self.base} serves {len(models)} models"
                                    + (f" ({', '.join(models[:10])})" if models else "")
                                    + ": choose one with --model NAME")
            model = models[0]
        elif models and model not in models:
            raise EndpointError(f"--model {model}: not served by {self.base} (it serves: {', '.join(models[:10])}); "
                                "give one of those, or start the server with that model")
        self.model = model

    def __repr__(self) -> str:
        return f"<endpoint backend {self.base} ({self.model})>"

    # --- HTTP -------------------------------------------------------------------------------------------------------

    def _request(self, path: str, body: dict | None, timeout: float) -> object:
        return request_json(self.base, path, body, timeout=timeout, api_key=self.api_key)

    def models(self) -> list[str]:
        """The served model ids (GET /models); EndpointError when the endpoint cannot be reached or is not
        OpenAI-compatible."""
        return served_models(self.base, "--endpoint", timeout=min(self.timeout_s, 30.0), api_key=self.api_key,
                             error=EndpointError)

    def _post(self, body: dict) -> dict:
        """POST /chat/completions with retries (module docstring); EndpointError when it gives up."""
        error = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            with self._count:
                self.requests += 1
            try:
                reply = self._request("/chat/completions", body, timeout=self.timeout_s)
            except urllib.error.HTTPError as e:
                error = f"HTTP {e.code} {e.reason}: {_server_message(e)}".rstrip(": ")
                if e.code in RETRY_STATUSES or e.code >= 500:
                    continue
                raise EndpointError(f"--endpoint {self.base} (--model {self.model}): POST /chat/completions "
                                    f"answered {error}; not retried: fix what the server names (e.g. lower "
                                    "max_new_tokens, or serve a longer context: vllm --max-model-len)") from None
            except (urllib.error.URLError, OSError, ValueError) as e:   # refused, reset, timeout, bad JSON
                error = _one_line(f"{type(e).__name__}: {getattr(e, 'reason', e)}")
                continue
            if not isinstance(reply, dict) or not isinstance(reply.get("choices"), list):
                error = f"a reply without 'choices': {_one_line(json.dumps(reply), 200)}"
                continue
            return reply
        raise EndpointError(f"--endpoint {self.base} (--model {self.model}): POST /chat/completions gave up after "
                            f"{self.retries + 1} attempts ({error}); check the server, or raise the retries")

    def _texts(self, reply: dict, stops: Sequence[str]) -> list[str]:
        out = []
        choices = sorted((c for c in reply["choices"] if isinstance(c, dict)), key=lambda c: c.get("index", 0))
        for c in choices:
            message = c.get("message")
            if not isinstance(message, dict):
                raise EndpointError(f"--endpoint {self.base}: a chat completion choice without a 'message' "
                                    f"({_one_line(json.dumps(c), 200)}); is this a chat-completions endpoint?")
            out.append(restore_stop(message.get("content") or "", c, stops))
        return out

    # --- the backend interface ----------------------------------------------------------------------------------

    def render(self, prompt: Prompt) -> str:
        """The chat messages as sent (JSON), for logs: the server applies the model's chat template."""
        return json.dumps(prompt.messages, ensure_ascii=False)

    def complete(self, prompt: Prompt, d: Decoding, *, top_p: float, max_new_tokens: int,
                 stops: Sequence[str], seed: int) -> list[str]:
        """`d.n` completions of one prompt (see the module docstring for n, greedy and stop strings)."""
        stops = list(stops)
        body = {"model": self.model, "messages": prompt.messages, "temperature": d.temperature,
                "max_tokens": max_new_tokens, "seed": seed % SEED_MOD}
        if d.temperature > 0:
            body["top_p"] = top_p
        if stops:
            body["stop"] = stops
        want = 1 if d.temperature <= 0 else d.n
        texts: list[str] = []
        for rnd in range(want):                    # each round gets at least one choice, or fails
            body["n"] = want - len(texts)
            body["seed"] = (seed + 1_000_033 * rnd) % SEED_MOD
            got = self._texts(self._post(body), stops)[:want - len(texts)]
            if not got:
                raise EndpointError(f"--endpoint {self.base} (--model {self.model}): a chat completion reply with "
                                    "no choices")
            texts += got
            if len(texts) == want:
                break
        return texts * d.n if d.temperature <= 0 else texts

    def complete_many(self, prompts: Sequence[Prompt], d: Decoding, *, top_p: float, max_new_tokens: int,
                      stops: Sequence[str], seed: int, batch_size: int = 16, desc: str | None = None) \
            -> list[list[str]]:
        """`d.n` completions of each prompt, in input order; `concurrency` requests in flight (`batch_size` is the
        local backends' and unused: the server batches). Prompt i is sampled with seed `seed * 1_000_003 + i`. A
        tqdm bar named `desc` when it is given. The first request that fails for good cancels the rest and raises
        its EndpointError."""
        from tqdm import tqdm

        out: list[list[str] | None] = [None] * len(prompts)
        if not prompts:
            return []
        pool = ThreadPoolExecutor(min(self.concurrency, len(prompts)), thread_name_prefix="endpoint")
        bar = tqdm(total=len(prompts), desc=desc, unit="prompt", dynamic_ncols=True, disable=desc is None)
        ok = False
        try:
            futures = {pool.submit(self.complete, p, d, top_p=top_p, max_new_tokens=max_new_tokens, stops=stops,
                                   seed=seed * 1_000_003 + i): i for i, p in enumerate(prompts)}
            for f in as_completed(futures):
                out[futures[f]] = f.result()
                bar.update(1)
            ok = True
        finally:
            bar.close()
            pool.shutdown(wait=ok, cancel_futures=True)   # on an error or Ctrl-C: don't wait for requests in flight
        return out  # type: ignore[return-value]

    def close(self) -> None:
        pass
