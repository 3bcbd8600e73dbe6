"""The `evaluate` stage: generate completions with a local model, extract, score, write generations and metrics.

    stepcode evaluate --model models/run --benchmarks cruxeval,lcb --limit 3 -o eval/
    from stepcode.evals.generate import evaluate
    metrics = evaluate("models/run", ["cruxeval"], params, out_dir="eval", limit=3)

Backends: vLLM when it is installed and a GPU is present (import-guarded, never needed here), else transformers on
CPU (`AutoModelForCausalLM` / `AutoTokenizer` from the local path). A tokenizer with a chat template gets the chat
messages (system + user, as upstream drives chat models); one without gets the raw prompt as a plain completion
(as upstream drives base models).

Decoding comes from params.evaluate. Official (leaderboard-comparable): n samples per problem at each temperature
(0.2 then 0.8), top_p 0.95, stop at "[/ANSWER]"; headline pass@1 is read from the first temperature's run and
pass@5 from the last one's. `greedy: true` is the paper-style run: one greedy completion per problem, labelled
"greedy" in every file name, metric key and run.json — not comparable to the leaderboards.

Every benchmark-specific step goes through its registered Benchmark (stepcode/evals/registry.py): problems, prompts,
extraction, scoring adapter, official export. Only benchmarks with the "generate" capability run here; another one
is refused up front (`Unsupported`, naming what to run instead).

Prompts: "official" (the benchmarks' own, `cot` from params) or "stepcode" (our instrumented task, on the tasks a
benchmark lists in `stepcode_tasks`: CRUXEval-I/O and LiveCodeBench-I/O; see stepcode_task.py; stops after
"</answer>"). A benchmark with its own protocol (REval) runs it in `Benchmark.run_evaluation`.

Decoding presets (`--decoding`, `with_decoding`): paper = one greedy completion per problem (the StepCodeReasoner
paper's protocol for every model), cruxeval = the official sampled runs above; the preset is recorded in run.json.

Outputs under DIR:
    generations/<bench>_<task>_<run>.json       official format {"sample_k": [prediction, ...]} (extracted)
    generations/stepcode_<bench>_<task>_<run>.raw.json   the instrumented task's raw completions, same shape
    generations/<bench>_<task>_<run>.raw.json   the raw completions, same shape
    scored/<bench>_<task>_<run>.json            official result format (raw_scored_generations, pass_at_1, ...)
    metrics.json                                flat {key: number} for `dvc metrics`
    run.json                                    what was run: model, prompt, decoding, params, backend
where <run> is "t0.2", "t0.8", ... or "greedy".
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stepcode.errors import MissingInput
from stepcode.evals.benchmark import STYLES, Prompt

PROMPTS = STYLES                 # --prompt: official | stepcode


@dataclass(frozen=True)
class Decoding:
    label: str                # "t0.2", "greedy", ...
    temperature: float
    n: int


DECODING_PRESETS = ("paper", "cruxeval")   # --decoding


def decodings(ep) -> list[Decoding]:
    """The runs params.evaluate asks for."""
    if ep.greedy:
        return [Decoding("greedy", 0.0, 1)]
    return [Decoding(f"t{t:g}", t, ep.n) for t in ep.temperatures]


def decoding_name(ep) -> str:
    """The preset params.evaluate amounts to: paper (greedy) or cruxeval (sampled)."""
    return "paper" if ep.greedy else "cruxeval"


def with_decoding(params, preset: str | None, max_new_tokens: int | None = None):
    """params with the decoding preset applied to params.evaluate (None: as params say).
    paper: one greedy completion per problem (T = 0), as the StepCodeReasoner paper evaluates every model; labelled
    "greedy". cruxeval: evaluate.n samples (official 10) at each of evaluate.temperatures (official 0.2, then 0.8):
    pass@1 and pass@5 at every temperature, headline pass@1 from the first and pass@5 from the last.
    max_new_tokens: the generation cap (default evaluate.max_new_tokens, 1024)."""
    if preset is not None and preset not in DECODING_PRESETS:
        raise ValueError(f"--decoding must be one of {DECODING_PRESETS}, got {preset!r}")
    update: dict = {}
    if preset is not None:
        update["greedy"] = preset == "paper"
    if max_new_tokens is not None:
        update["max_new_tokens"] = max_new_tokens
    if not update:
        return params
    return params.model_copy(update={"evaluate": params.evaluate.model_copy(update=update)})


def cut_at_stop(text: str, stops: Sequence[str], keep: bool = False) -> str:
    """Text up to the earliest stop string (included when keep=True): a generator may run past it."""
    cut = None
    for s in stops:
        i = text.find(s)
        if i >= 0 and (cut is None or i < cut[0]):
            cut = (i, len(s))
    if cut is None:
        return text
    return text[:cut[0] + (cut[1] if keep else 0)]


def render(tok, prompt: Prompt) -> str:
    """The prompt as the model sees it: its chat template when the tokenizer has one, else the plain prompt."""
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template(prompt.messages, add_generation_prompt=True, tokenize=False)
    return prompt.raw


class TransformersBackend:
    name = "transformers"

    def __init__(self, model_path: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(model_path)
        # On a GPU (no vLLM installed): the model goes there, in bf16 where the card has it (a 7B model in fp32 is
        # 28 GB); on a CPU it loads as it always did.
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = {"torch_dtype": torch.bfloat16} if self.device == "cuda" and torch.cuda.is_bf16_supported() else {}
        self.model = AutoModelForCausalLM.from_pretrained(model_path, **dtype).to(self.device)
        self.model.eval()
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token

    def render(self, prompt: Prompt) -> str:
        return render(self.tok, prompt)

    def complete(self, prompt: Prompt, d: Decoding, *, top_p: float, max_new_tokens: int,
                 stops: Sequence[str], seed: int) -> list[str]:
        self.torch.manual_seed(seed)   # reproducible sampling per (prompt, run)
        enc = self.tok(self.render(prompt), return_tensors="pt", add_special_tokens=False).to(self.device)
        sampling = {"do_sample": True, "temperature": d.temperature, "top_p": top_p} if d.temperature > 0 \
            else {"do_sample": False}
        with self.torch.no_grad():
            out = self.model.generate(**enc, **sampling, max_new_tokens=max_new_tokens, num_return_sequences=d.n,
                                      stop_strings=list(stops) or None, tokenizer=self.tok,
                                      pad_token_id=self.tok.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        return self.tok.batch_decode(new, skip_special_tokens=True)

    def complete_many(self, prompts: Sequence[Prompt], d: Decoding, *, top_p: float, max_new_tokens: int,
                      stops: Sequence[str], seed: int, batch_size: int = 16) -> list[list[str]]:
        """`d.n` completions of each prompt, `batch_size` prompts per `generate` call (left-padded): one call
        decodes many rows at the cost of one, which is most of a small model's evaluation time on a CPU. Greedy
        batched decoding equals one-at-a-time decoding up to float rounding in the padded attention."""
        self.torch.manual_seed(seed)
        sampling = {"do_sample": True, "temperature": d.temperature, "top_p": top_p} if d.temperature > 0 \
            else {"do_sample": False}
        side, self.tok.padding_side = self.tok.padding_side, "left"
        out: list[list[str]] = []
        try:
            for k in range(0, len(prompts), batch_size):
                texts = [self.render(p) for p in prompts[k:k + batch_size]]
                enc = self.tok(texts, return_tensors="pt", add_special_tokens=False, padding=True).to(self.device)
                with self.torch.no_grad():
                    ids = self.model.generate(**enc, **sampling, max_new_tokens=max_new_tokens,
                                              num_return_sequences=d.n, stop_strings=list(stops) or None,
                                              tokenizer=self.tok, pad_token_id=self.tok.pad_token_id)
                decoded = self.tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                out += [decoded[i * d.n:(i + 1) * d.n] for i in range(len(texts))]
        finally:
            self.tok.padding_side = side
        return out


class VLLMBackend:  # pragma: no cover - needs a GPU and vllm
    name = "vllm"

    def __init__(self, model_path: str):
        from vllm import LLM

        self.llm = LLM(model=model_path)
        self.tok = self.llm.get_tokenizer()

    def render(self, prompt: Prompt) -> str:
        return render(self.tok, prompt)

    def complete(self, prompt: Prompt, d: Decoding, *, top_p: float, max_new_tokens: int,
                 stops: Sequence[str], seed: int) -> list[str]:
        from vllm import SamplingParams

        sp = SamplingParams(n=d.n, temperature=d.temperature, top_p=top_p if d.temperature > 0 else 1.0,
                            max_tokens=max_new_tokens, stop=list(stops), include_stop_str_in_output=True,
                            seed=seed)
        return [o.text for o in self.llm.generate([self.render(prompt)], sp, use_tqdm=False)[0].outputs]

    def complete_many(self, prompts: Sequence[Prompt], d: Decoding, *, top_p: float, max_new_tokens: int,
                      stops: Sequence[str], seed: int, batch_size: int = 16) -> list[list[str]]:
        from vllm import SamplingParams

        sp = SamplingParams(n=d.n, temperature=d.temperature, top_p=top_p if d.temperature > 0 else 1.0,
                            max_tokens=max_new_tokens, stop=list(stops), include_stop_str_in_output=True,
                            seed=seed)
        results = self.llm.generate([self.render(p) for p in prompts], sp, use_tqdm=False)
        return [[o.text for o in r.outputs] for r in results]


def load_backend(model_path: str):
    """vLLM if importable and a GPU is present, else transformers (on the GPU when there is one, else the CPU)."""
    if not Path(model_path).is_dir():
        raise MissingInput(f"--model must be a local Hugging Face model folder, got {model_path}")
    if importlib.util.find_spec("vllm") is not None:
        import torch

        if torch.cuda.is_available():
            return VLLMBackend(model_path)
    return TransformersBackend(model_path)


def open_backend(model: str, endpoint: str | None = None, *, concurrency: int = 8):
    """The model to evaluate: served at an OpenAI-compatible `endpoint` under the name `model`, else the local
    folder `model` (`load_backend`)."""
    if endpoint:
        from stepcode.evals.endpoint import EndpointBackend

        return EndpointBackend(endpoint, model, concurrency=concurrency)
    return load_backend(model)


def endpoint_label(model: str, endpoint: str | None) -> str:
    """How runs name the model: the folder, or `NAME @ URL`."""
    return f"{model} @ {endpoint}" if endpoint else str(model)


def official_jobs(bench, problems: list[dict], cot: bool, tasks: Sequence[str] | None = None):
    """(task, ids, prompts) per task of the benchmark (or of `tasks`), prompts in problem order."""
    for task in tasks or bench.tasks:
        pairs = [pair for p in problems for pair in bench.prompts(p, task, "official", cot=cot)]
        yield task, [i for i, _ in pairs], [prompt for _, prompt in pairs]


def complete_all(backend, prompts: list[Prompt], d: Decoding, ep, stops, keep_stop: bool, desc: str,
                 max_new_tokens: int | None = None) -> list[list[str]]:
    """`d.n` completions of every prompt, cut at the first stop string; batched (a local model decodes 16 prompts
    per `generate` call, an endpoint runs requests concurrently), one progress bar."""
    from tqdm import tqdm

    out: list[list[str]] = []
    size = max(16, 4 * getattr(backend, "concurrency", 0))   # an endpoint keeps all its request slots busy
    with tqdm(total=len(prompts), desc=desc, unit="prompt", dynamic_ncols=True) as bar:
        for k in range(0, len(prompts), size):
            texts = backend.complete_many(prompts[k:k + size], d, top_p=ep.top_p,
                                          max_new_tokens=max_new_tokens or ep.max_new_tokens, stops=stops,
                                          seed=ep.hash_seed * 1_000_003 + k, batch_size=size)
            out += [[cut_at_stop(t, stops, keep=keep_stop) for t in group] for group in texts]
            bar.update(len(texts))
    return out


def check_request(benchmarks: Sequence[str], prompt: str) -> list:
    """The Benchmarks to run, or ValueError (`Unsupported` for one that `stepcode evaluate` cannot run yet)."""
    from stepcode.evals.benchmark import GENERATE
    from stepcode.evals.registry import BENCHMARKS, REGISTRY, get

    if prompt not in PROMPTS:
        raise ValueError(f"--prompt must be one of {PROMPTS}, got {prompt!r}")
    for b in benchmarks:
        if b not in BENCHMARKS:
            raise ValueError(f"unknown benchmark {b!r}; expected some of {sorted(BENCHMARKS)}")
    benches = [get(b) for b in benchmarks]
    for bench in benches:
        bench.require(GENERATE)
    lacking = [b.name for b in benches if not b.stepcode_tasks]
    if prompt == "stepcode" and lacking:
        able = " and ".join(b.title for b in REGISTRY.values() if b.stepcode_tasks)
        raise ValueError(f"--prompt stepcode runs on {able} programs only; drop {', '.join(lacking)}")
    return benches


def evaluate(model_path: str, benchmarks: Sequence[str], params, *, out_dir, limit: int | None = None,
             prompt: str = "official", backend=None, tasks: Sequence[str] | None = None) -> dict:
    """Generate, extract, score; write the files listed in the module docstring; return the flat metrics.
    tasks: only these tasks of each benchmark (None: all of the prompt style's)."""
    from stepcode.evals import write_json
    from stepcode.sandbox.engine import Sandbox

    benches = check_request(benchmarks, prompt)
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    ep = params.evaluate
    out = Path(out_dir)
    # fail early, before loading a model; a benchmark with its own protocol (REval) loads its data in it, once
    loaded = [(b, [] if b.has_own_evaluation() else b.load_problems(params)[:limit]) for b in benches]
    backend = backend or load_backend(model_path)
    metrics: dict[str, float] = {}
    with Sandbox(params.sandbox, hash_seeds=(ep.hash_seed,)) as sb:
        for bench, problems in loaded:
            metrics.update(evaluate_benchmark(backend, bench, problems, params, out, prompt=prompt, sandbox=sb,
                                              limit=limit, tasks=tasks))
    write_json(out / "metrics.json", metrics)
    write_json(out / "run.json", run_record(model_path, list(benchmarks), prompt, limit, backend, params))
    return metrics


def run_record(model, benchmarks: list[str], prompt, limit, backend, params) -> dict:
    """What was run: the model (folder or endpoint), benchmarks, prompt style(s), decoding preset and runs, params."""
    ep = params.evaluate
    return {"model": str(model), "benchmarks": benchmarks, "prompt": prompt, "decoding": decoding_name(ep),
            "limit": limit, "backend": getattr(backend, "name", type(backend).__name__),
            "runs": [d.__dict__ for d in decodings(ep)], "max_new_tokens": ep.max_new_tokens,
            "evaluate": ep.model_dump(mode="json")}


def evaluate_benchmark(backend, bench, problems: list[dict], params, out: Path, *, prompt: str, sandbox,
                       limit: int | None = None, tasks: Sequence[str] | None = None) -> dict:
    """Every task of one benchmark (or `tasks`) with one prompt style: files under `out`, flat metrics returned."""
    runs = decodings(params.evaluate)
    own = bench.run_evaluation(backend, params, runs, out, prompt=prompt, limit=limit, sandbox=sandbox)
    if own is not None:      # a benchmark with its own protocol (REval: several questions per program)
        return own
    metrics: dict[str, float] = {}
    if prompt == "stepcode":
        for task in tasks or bench.stepcode_tasks:
            metrics.update(_evaluate_stepcode(backend, bench, task, problems, params, runs, out))
        return metrics
    ep = params.evaluate
    from stepcode.evals import write_json
    from stepcode.evals.scoring import score

    for task, ids, prompts in official_jobs(bench, problems, ep.cot, tasks):
        key = f"{bench.name}_{task}"
        for i, d in enumerate(runs):
            raw = complete_all(backend, prompts, d, ep, ep.stop, False, f"{key} {d.label}")
            raw_gens = dict(zip(ids, raw))
            gens = {k: [bench.extract(t, task, ep.cot) for t in v] for k, v in raw_gens.items()}
            result = score(bench.scoring_adapter(task), problems, gens, samples=ids, sandbox=sandbox,
                           timeout=ep.check_timeout_s)
            write_json(out / "generations" / f"{key}_{d.label}.json", gens)
            write_json(out / "generations" / f"{key}_{d.label}.raw.json", raw_gens)
            write_json(out / "scored" / f"{key}_{d.label}.json", bench.official_export(result))
            metrics[f"{key}_{d.label}_pass_at_1"] = result["pass_at_1"]
            if d.n >= 5:
                metrics[f"{key}_{d.label}_pass_at_5"] = result["pass_at_5"]
            if i == 0:
                metrics[f"{key}_pass_at_1"] = result["pass_at_1"]
                metrics[f"{key}_problems"] = len(ids)
            if i == len(runs) - 1 and d.n >= 5:
                metrics[f"{key}_pass_at_5"] = result["pass_at_5"]
    return metrics


def _evaluate_stepcode(backend, bench, task: str, problems, params, runs, out: Path) -> dict:
    """Our instrumented task on one benchmark task: generations in the official sample format (raw texts), the
    official result file (pass@1 on the final answer), and step accuracy; scored as the training reward scores."""
    from stepcode.evals import official, write_json
    from stepcode.evals import stepcode_task as st
    from stepcode.evals.scoring import result_from_verdicts
    from stepcode.training.rewards import RewardScorer

    ep = params.evaluate
    items, excluded = st.build_items([bench.stepcode_program(p, task) for p in problems], params)
    prefix = f"stepcode_{bench.name}_{task}"
    metrics = {f"{prefix}_problems": len(items), f"{prefix}_excluded": excluded}
    if not items:
        return metrics
    prompts = [prompt for it in items for _, prompt in bench.prompts(it, task, "stepcode")]
    with RewardScorer(params) as scorer:
        for i, d in enumerate(runs):
            key = f"{prefix}_{d.label}"
            raw = complete_all(backend, prompts, d, ep, [st.STOP], True, key)
            scores = st.score(items, raw, task, params, scorer=scorer)
            verdicts = {it["id"]: [s.final == 1.0 for s in row] for it, row in zip(items, scores)}
            raw_gens = {it["id"]: texts for it, texts in zip(items, raw)}
            result = result_from_verdicts(raw_gens, verdicts, "false")
            lines = [x for row in scores for s in row for x in s.steps]
            write_json(out / "generations" / f"{key}.raw.json", raw_gens)
            write_json(out / "scored" / f"{key}.json", official(result))
            step_acc = 100.0 * sum(lines) / len(lines) if lines else 0.0
            metrics[f"{key}_pass_at_1"] = result["pass_at_1"]
            metrics[f"{key}_step_accuracy"] = step_acc
            if d.n >= 5:
                metrics[f"{key}_pass_at_5"] = result["pass_at_5"]
            if i == 0:
                metrics[f"{prefix}_pass_at_1"] = result["pass_at_1"]
                metrics[f"{prefix}_step_accuracy"] = step_acc
    return metrics
