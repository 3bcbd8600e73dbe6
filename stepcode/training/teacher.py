"""Teacher reasoning paths (the paper's distillation step): a stronger model writes the <reasoning>/<print>/<answer>
completion of each SFT prompt, and only completions that the sandbox confirms step by step are kept.

    stepcode reason --teacher models/Qwen2.5-Coder-7B-Instruct -o data/dataset/sft-teacher.jsonl
    stepcode reason --teacher http://localhost:8000/v1 --teacher-model Qwen/Qwen2.5-Coder-32B-Instruct --samples 4
    from stepcode.training.teacher import open_teacher, distill
    with open_teacher("http://localhost:8000/v1", model=None) as teacher:
        summary = distill(rows, teacher, params, samples=4, temperature=0.7, max_new_tokens=1024)

Teachers: a local Hugging Face model folder (transformers `generate`, its chat template) or any OpenAI-compatible
chat-completions endpoint (`vllm serve`, TGI, llama.cpp's server, ...), spoken to with the standard library only
(urllib): `GET /models` once up front (reachable? which model?), then `POST /chat/completions` per try, several at
once (`concurrency`), each retried with exponential backoff on a connection error, a timeout, 408/409/429 or a 5xx.

Input: rows of a built SFT file (`stepcode build`: {"id", "task", "messages", "completion", "source", "gold_trace"}).
The teacher sees `messages` (system + user) only. The ground truth comes from the row itself: its gold completion
(the rendered execution trace and answer, `gold_trace`), the instrumented code and the assertion in its prompt.

Acceptance (`judge`), with the RL reward (stepcode.training.rewards.RewardScorer, sandboxed): every step reward 1
and the final reward 1, and nothing the reward tolerates but a training target should not have. A rejected try gets
the first of these reasons that applies (REASONS, in this order):
    request_failed  the endpoint gave no completion (after its retries), or the local model failed on the prompt
    no_answer       no complete, non-blank <answer> block
    format          malformed tags: unclosed, nested, stray, out of order, a block without its <reasoning>,
                    several answers/inputs, text after the answer, an <input> in the output task or none in the input
    other_input     input task: the <input> committed to is not the row's own input (judged against the gold trace,
                    which is that input's trace: a different input that also works is rejected, not re-traced)
    wrong_step      some <print> differs from its gold line, or is missing
    extra_prints    more <print> blocks than the gold trace has lines
    wrong_answer    the <answer> fails the sandboxed check (`code + assert GOLD == (ANSWER)`; input task:
                    `assert f(ANSWER) == GOLD`)
Each row gets up to `samples` tries, in rounds (all pending rows' k-th try, then their scoring), and keeps the
first that passes; a row whose every try failed is rejected under its last try's reason.

Output: the accepted rows, in input order, exactly as the SFT file's rows (same keys, same order, same JSON
writer) with the completion's content replaced by the teacher's text (stripped, cut after the first </answer>), so
`stepcode train sft --data OUT` reads it like `sft.jsonl`. The summary (`Summary.as_dict`) counts rows, accepted and
rejected by reason (row-level and per try); each rejection is logged (logger `stepcode.training.teacher`, INFO)
and can be written as JSONL (id, task, reason, the last try's text).
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from stepcode import prompts
from stepcode.errors import MissingInput, UserError
from stepcode.openai_http import check_base_url, request_json, served_models

log = logging.getLogger(__name__)

REASONS = {
    "request_failed": "the teacher gave no completion (endpoint error after retries, or a generation error)",
    "no_answer": "no complete, non-blank <answer> block",
    "format": "malformed tags (unclosed, nested, stray, out of order, missing reasoning, several answers, ...)",
    "other_input": "input task: committed to another input than the row's own",
    "wrong_step": "a <print> differs from the gold trace, or is missing",
    "extra_prints": "more <print> blocks than the gold trace has lines",
    "wrong_answer": "the <answer> fails the sandboxed check",
}
FORMAT_FLAGS = frozenset({"unclosed_tag", "nested_tag", "stray_closing_tag", "out_of_order", "missing_reasoning",
                          "multiple_answers", "multiple_inputs", "text_after_answer", "no_input",
                          "unexpected_input"})
STOP = "</answer>"
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


# --- the ground truth of an SFT row ------------------------------------------------------------------------------

def gold_row(row: dict) -> dict:
    """The RL-style row RewardScorer needs ({id, task, code, entry_point, gold_output, gold_trace, input}) from an SFT
    row, read back from its prompt (stepcode.prompts.USER_TEMPLATE) and its gold completion. ValueError if the row is
    not one `stepcode build` writes."""
    rid = row.get("id")
    task = row.get("task")
    if task not in ("output", "input"):
        raise ValueError(f"row {rid!r}: task must be 'output' or 'input', got {task!r}")
    messages, completion = row.get("messages"), row.get("completion")
    if not (isinstance(messages, list) and messages and isinstance(messages[-1], dict)
            and isinstance(messages[-1].get("content"), str)):
        raise ValueError(f"row {rid!r}: needs 'messages', a list of chat messages ending with the user's")
    if not (isinstance(completion, list) and completion and isinstance(completion[0], dict)
            and isinstance(completion[0].get("content"), str)):
        raise ValueError(f"row {rid!r}: needs 'completion', [{{'role': 'assistant', 'content': TARGET}}]")
    user = messages[-1]["content"]
    fence = user[:len(user) - len(user.lstrip("`"))]
    instruction = prompts.OUTPUT_INSTRUCTION if task == "output" else prompts.INPUT_INSTRUCTION
    head = f"{fence}python\n"
    if len(fence) < 3 or not user.startswith(head) or not user.endswith("\n" + instruction):
        raise ValueError(f"row {rid!r}: the user message is not a StepCode {task}-task prompt")
    code, sep, assertion = user[len(head):-len(instruction) - 1].partition(f"\n{fence}\n")
    if not sep:
        raise ValueError(f"row {rid!r}: no closing code fence in the user message")
    gold = prompts.parse_completion(completion[0]["content"], task=task)
    entry_point = assertion.removeprefix("assert ").partition("(")[0]
    trace = row.get("gold_trace", gold.prints)
    if not entry_point.isidentifier() or gold.answer is None or not isinstance(trace, list):
        raise ValueError(f"row {rid!r}: cannot read the entry point or the gold answer")
    if task == "output":
        prefix, suffix = f"assert {entry_point}(", ") == ??"
        if not (assertion.startswith(prefix) and assertion.endswith(suffix)):
            raise ValueError(f"row {rid!r}: the assertion is not `assert f(INPUT) == ??`")
        inp, output = assertion[len(prefix):-len(suffix)], gold.answer
    else:
        prefix = f"assert {entry_point}(??) == "
        if not assertion.startswith(prefix):
            raise ValueError(f"row {rid!r}: the assertion is not `assert f(??) == OUTPUT`")
        inp, output = gold.answer, assertion[len(prefix):]
    return {"id": rid, "task": task, "code": code, "entry_point": entry_point, "gold_output": output,
            "gold_trace": list(trace), "input": inp}


# --- judging ---------------------------------------------------------------------------------------------------

def clean_completion(text: str) -> str:
    """A teacher's text as a training target: cut after the first </answer> (a generator may run on), stripped."""
    i = text.find(STOP)
    return (text[:i + len(STOP)] if i >= 0 else text).strip()


def static_reason(gold: dict, text: str | None) -> str | None:
    """The rejection reason that needs no sandbox (before the step/final check), or None."""
    if text is None:
        return "request_failed"
    parsed = prompts.parse_completion(text, task=gold["task"])
    if parsed.answer is None or not parsed.answer.strip():
        return "no_answer"
    if parsed.flags & FORMAT_FLAGS:
        return "format"
    if gold["task"] == "input":
        from stepcode.training.rewards import same_arguments

        if not same_arguments(parsed.input, gold["input"], gold["entry_point"]):
            return "other_input"
    return None


def verdict(gold: dict, text: str, score) -> str | None:
    """The rejection reason of a parsed, well-formed text given its reward Score, or None (accepted)."""
    if not all(s == 1.0 for s in score.steps):
        return "wrong_step"
    if len(prompts.parse_completion(text, task=gold["task"]).prints) > len(gold["gold_trace"]):
        return "extra_prints"
    if score.final != 1.0:
        return "wrong_answer"
    return None


def judge(golds: Sequence[dict], texts: Sequence[str | None], scorer) -> list[str | None]:
    """One verdict per (gold row, text): None if accepted, else its reason (REASONS). Texts that fail statically are
    never sent to the sandbox; the rest are scored in one batch (`scorer`: a RewardScorer, input_reference="gold")."""
    reasons = [static_reason(g, t) for g, t in zip(golds, texts)]
    todo = [i for i, r in enumerate(reasons) if r is None]
    if todo:
        scores = scorer.score([golds[i] for i in todo], [texts[i] for i in todo])
        for i, score in zip(todo, scores):
            reasons[i] = verdict(golds[i], texts[i], score)
    return reasons


# --- teachers --------------------------------------------------------------------------------------------------

def is_url(teacher: str) -> bool:
    return "://" in teacher


class EndpointTeacher:
    """An OpenAI-compatible chat-completions endpoint (base URL ending in /v1, as vLLM serves it)."""

    kind = "endpoint"

    def __init__(self, base_url: str, model: str | None = None, *, retries: int = 3, backoff_s: float = 1.0,
                 timeout_s: float = 600.0, api_key: str | None = None):
        self.base = check_base_url(base_url, "--teacher", also=", or a local model folder")
        self.retries, self.backoff_s, self.timeout_s = retries, backoff_s, timeout_s
        self.api_key = api_key
        self.model = model or self._only_model()
        self.name = f"{self.base} ({self.model})"

    def _request(self, path: str, body: dict | None, timeout: float) -> dict:
        return request_json(self.base, path, body, timeout=timeout, api_key=self.api_key)

    def _only_model(self) -> str:
        """The one model the endpoint serves (GET /models); a user error if it is unreachable or serves several."""
        models = self.models()
        if len(models) != 1:
            raise UserError(f"--teacher {self.base} serves {len(models)} models"
                            + (f" ({', '.join(models[:10])})" if models else "")
                            + ": choose one with --teacher-model NAME")
        return models[0]

    def models(self) -> list[str]:
        """The served model ids; a one-line user error when the endpoint cannot be reached or is not OpenAI-like."""
        return served_models(self.base, "--teacher", timeout=min(self.timeout_s, 30.0), api_key=self.api_key)

    def check_model(self) -> None:
        """A user error when the endpoint lists its models and --teacher-model is not one of them."""
        models = self.models()
        if models and self.model not in models:
            raise UserError(f"--teacher-model {self.model}: not served by {self.base} (it serves: "
                            f"{', '.join(models[:10])})")

    def complete(self, messages: list[dict], *, temperature: float, max_new_tokens: int, seed: int) -> str:
        """One completion; retried with exponential backoff on transient failures; RuntimeError when it gives up."""
        body = {"model": self.model, "messages": messages, "temperature": temperature, "max_tokens": max_new_tokens,
                "n": 1, "stop": [STOP], "seed": seed}
        error = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                reply = self._request("/chat/completions", body, timeout=self.timeout_s)
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode("utf-8", "replace") if e.fp else ""
                error = f"HTTP {e.code} {e.reason} {detail}".strip()
                if e.code in RETRY_STATUSES:
                    continue
                raise RuntimeError(error) from None
            except (urllib.error.URLError, OSError, ValueError) as e:   # refused, reset, timeout, bad JSON
                error = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
                continue
            try:
                choice = reply["choices"][0]
                text = choice["message"]["content"] or ""
            except (KeyError, IndexError, TypeError):
                raise RuntimeError(f"malformed reply: {str(reply)[:300]}") from None
            # The API drops a matched stop string: put </answer> back when generation stopped on it.
            stopped_on = choice.get("stop_reason", STOP if choice.get("finish_reason") == "stop" else None)
            if stopped_on == STOP and text.rfind("<answer>") > text.rfind(STOP):
                text += STOP
            return text
        raise RuntimeError(f"gave up after {self.retries + 1} attempts: {error}")

    def close(self) -> None:
        pass


class LocalTeacher:
    """A local Hugging Face model folder, generating with transformers (its chat template; CPU or one GPU)."""

    kind = "local"

    def __init__(self, path: str | Path):
        p = Path(path)
        if not (p / "config.json").is_file():
            raise MissingInput(f"--teacher {p}: not a local Hugging Face model folder (no config.json"
                               + ("" if p.exists() else "; no such directory")
                               + "); give a model folder or an http(s)://HOST:PORT/v1 endpoint")
        import torch

        from stepcode.training.models import load_model

        self.torch = torch
        device = "cuda" if torch.cuda.is_available() else None
        self.model, self.tok = load_model(p, dtype="auto" if device else "float32", device=device)
        self.model.eval()
        self.name = str(p)

    def prompt_text(self, messages: list[dict]) -> str:
        if getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    def complete(self, messages: list[dict], *, temperature: float, max_new_tokens: int, seed: int) -> str:
        torch = self.torch
        torch.manual_seed(seed)
        enc = self.tok(self.prompt_text(messages), return_tensors="pt", add_special_tokens=False)
        enc = {k: v.to(self.model.device) for k, v in enc.items()}
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        with torch.no_grad():
            out = self.model.generate(**enc, **sampling, max_new_tokens=max_new_tokens, stop_strings=[STOP],
                                      tokenizer=self.tok, pad_token_id=self.tok.pad_token_id)
        return self.tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    def close(self) -> None:
        pass


def open_teacher(teacher: str, model: str | None = None, **endpoint_options):
    """An EndpointTeacher for an http(s) URL (the endpoint is contacted now: unreachable is a UserError), else a
    LocalTeacher for a model folder (missing: MissingInput)."""
    if is_url(teacher):
        t = EndpointTeacher(teacher, model, **endpoint_options)
        if model:
            t.check_model()
        return t
    if model:
        raise UserError("--teacher-model names a model on an endpoint; a local --teacher folder is the model itself")
    return LocalTeacher(teacher)


# --- the run ---------------------------------------------------------------------------------------------------

@dataclass
class Summary:
    teacher: str
    rows: int = 0
    accepted: int = 0
    rejected_by_reason: Counter = field(default_factory=Counter)
    tries: int = 0
    tries_by_reason: Counter = field(default_factory=Counter)
    accepted_by_task: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_reason.values())

    def as_dict(self) -> dict:
        return {"teacher": self.teacher, **self.settings, "rows": self.rows, "accepted": self.accepted,
                "rejected": self.rejected,
                "rejected_by_reason": {r: self.rejected_by_reason[r] for r in REASONS if self.rejected_by_reason[r]},
                "accepted_by_task": dict(sorted(self.accepted_by_task.items())),
                "tries": self.tries,
                "tries_by_reason": {r: self.tries_by_reason[r] for r in REASONS if self.tries_by_reason[r]},
                "acceptance_rate": round(self.accepted / self.rows, 4) if self.rows else 0.0,
                "seconds": round(self.seconds, 1)}

    def line(self) -> str:
        why = ", ".join(f"{r} {n}" for r, n in self.as_dict()["rejected_by_reason"].items())
        return (f"{self.rows} rows: {self.accepted} accepted, {self.rejected} rejected"
                + (f" ({why})" if why else "") + f"; {self.tries} teacher tries in {self.seconds:.0f} s")


def distill(rows: Sequence[dict], teacher, params=None, *, samples: int = 1, temperature: float = 0.7,
            max_new_tokens: int = 1024, concurrency: int = 1, seed: int = 0, chunk: int | None = None,
            scorer=None, progress: bool = False,
            on_reject: Callable[[dict, str, str | None], None] | None = None) -> tuple[list[dict], Summary]:
    """(accepted SFT rows in input order, Summary). `teacher` has `complete(messages, temperature=, max_new_tokens=,
    seed=)`. Rows go through in chunks (of `chunk`, default max(8, 4 * concurrency)): within a chunk, round k sends
    every still-unaccepted row's k-th try (`concurrency` at once), then judges the round in one sandboxed batch.
    `on_reject(row, reason, last_text)` is called once per rejected row. A malformed row is a ValueError before any
    generation."""
    from tqdm import tqdm

    from stepcode.training.rewards import RewardScorer

    if samples < 1 or concurrency < 1 or max_new_tokens < 1:
        raise ValueError("samples, concurrency and max_new_tokens must be at least 1")
    golds = [gold_row(row) for row in rows]
    summary = Summary(teacher=getattr(teacher, "name", type(teacher).__name__), rows=len(rows))
    accepted: dict[int, str] = {}
    started = time.perf_counter()
    chunk = chunk or max(8, 4 * concurrency)
    own_scorer = scorer is None
    scorer = scorer or RewardScorer(params, input_reference="gold")
    pool = ThreadPoolExecutor(concurrency) if concurrency > 1 else None

    def generate(i: int, k: int) -> str | None:
        try:
            text = teacher.complete(rows[i]["messages"], temperature=temperature, max_new_tokens=max_new_tokens,
                                    seed=seed + 1_000_003 * i + k)
        except (RuntimeError, ValueError) as e:   # the endpoint gave up, or the model refused this prompt
            log.info("row %r try %d: no completion: %s", rows[i].get("id"), k + 1, e)
            return None
        return clean_completion(text)

    try:
        bar = tqdm(total=len(rows), desc="teacher", unit="row", dynamic_ncols=True, disable=not progress)
        for lo in range(0, len(rows), chunk):
            pending = list(range(lo, min(lo + chunk, len(rows))))
            last: dict[int, tuple[str, str | None]] = {}
            for k in range(samples):
                if not pending:
                    break
                jobs = [(i, k) for i in pending]
                texts = list(pool.map(lambda job: generate(*job), jobs) if pool else (generate(*j) for j in jobs))
                reasons = judge([golds[i] for i in pending], texts, scorer)
                summary.tries += len(pending)
                still = []
                for i, text, reason in zip(pending, texts, reasons):
                    if reason is None:
                        accepted[i] = text
                        summary.accepted += 1
                        summary.accepted_by_task[rows[i]["task"]] += 1
                    else:
                        summary.tries_by_reason[reason] += 1
                        last[i] = (reason, text)
                        still.append(i)
                pending = still
            for i in pending:
                reason, text = last[i]
                summary.rejected_by_reason[reason] += 1
                log.info("row %r (%s task) rejected after %d tries: %s", rows[i].get("id"), rows[i]["task"],
                         samples, reason)
                if on_reject:
                    on_reject(rows[i], reason, text)
            bar.update(min(lo + chunk, len(rows)) - lo)
            bar.set_postfix(accepted=summary.accepted)
        bar.close()
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
        if own_scorer:
            scorer.close()
    summary.seconds = time.perf_counter() - started
    out = [{**rows[i], "completion": [{**rows[i]["completion"][0], "content": accepted[i]}]}
           for i in sorted(accepted)]
    return out, summary
