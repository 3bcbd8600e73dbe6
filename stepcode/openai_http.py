"""The OpenAI-compatible HTTP API as both of our clients speak it (the teacher, stepcode/training/teacher.py; the
evaluation backend, stepcode/evals/endpoint.py): URL checks, one JSON request, the served models. Standard library
only; every failure a user can fix is one line naming the option (`--teacher`, `--endpoint`) and the fix.

    base = check_base_url("http://127.0.0.1:8000/v1", "--endpoint")   # "http://127.0.0.1:8000/v1" or UserError
    served_models(base, "--endpoint", timeout=30)                      # ["Qwen/Qwen2.5-Coder-7B-Instruct"]
    request_json(base, "/chat/completions", {...}, timeout=600)       # the reply, parsed (urllib errors raise)
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

from stepcode.errors import UserError

NOT_OPENAI = "is this an OpenAI-compatible base URL, ending in /v1?"


def check_base_url(base_url: str, option: str, *, error: type[Exception] = UserError, also: str = "") -> str:
    """The base URL without a trailing slash; `error` (one line) unless it is http(s) with a host and a valid port.
    `also`: other things the option accepts, named in the message (e.g. ", or a local model folder")."""
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise error(f"{option} {base_url}: not an http(s) URL with a host (give e.g. http://localhost:8000/v1{also})")
    try:
        _ = parts.port   # raises on a port that is not a number in 0..65535
    except ValueError:
        raise error(f"{option} {base_url}: bad port (give e.g. http://localhost:8000/v1)") from None
    return base_url.rstrip("/")


def request_json(base: str, path: str, body: dict | None, *, timeout: float, api_key: str | None = None) -> object:
    """GET (body None) or POST `body` as JSON to base + path; the parsed reply. urllib's errors propagate."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers=headers, method="GET" if body is None else "POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode("utf-8"))


def served_models(base: str, option: str, *, timeout: float, api_key: str | None = None,
                  error: type[Exception] = UserError) -> list[str]:
    """The model ids the endpoint serves (GET /models); `error` (one line) when it cannot be reached or does not
    answer like the OpenAI API."""
    try:
        reply = request_json(base, "/models", None, timeout=timeout, api_key=api_key)
    except urllib.error.HTTPError as e:
        raise error(f"{option} {base}: GET /models answered HTTP {e.code} {e.reason} ({NOT_OPENAI})") from None
    except (urllib.error.URLError, OSError) as e:
        reason = " ".join(str(getattr(e, "reason", e)).split())
        raise error(f"{option} {base}: cannot reach the endpoint ({reason}); start the server (e.g. `vllm serve "
                    "MODEL`) or fix the URL") from None
    except (ValueError, UnicodeDecodeError):
        raise error(f"{option} {base}: GET /models did not return JSON ({NOT_OPENAI})") from None
    data = reply.get("data") if isinstance(reply, dict) else None
    if not isinstance(data, list):
        raise error(f"{option} {base}: GET /models has no 'data' list (not an OpenAI-compatible API; give the base "
                    "URL ending in /v1)")
    return [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
