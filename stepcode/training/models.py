"""The embedded default model (a tiny Llama with a code-trained byte-level BPE) and loading any local HF model.

    from stepcode.training.models import build_tiny_model, corpus_texts, load_model
    texts = corpus_texts(read_jsonl("data/traces.jsonl"))            # code, traces, prompt and target text
    build_tiny_model("models/tiny", texts, size="tiny")              # HF format: config, weights, tokenizer, template
    model, tokenizer = load_model("models/tiny")                     # or a downloaded Qwen2.5-Coder-7B-Instruct dir

Nothing is ever fetched from a hub: every load is `local_files_only` and HF_HUB_OFFLINE is set before transformers
is imported here.

Decisions.
- LlamaConfig, not Qwen2Config: transformers maps model_type qwen2 to Qwen2Tokenizer, which replaces our trained
  pre-tokenizer and changes the ids (shared/notes/stack.md pitfall 3).
- No special tokens for the <reasoning>/<print>/<input>/<answer> tags. TRL decodes completions with
  skip_special_tokens=True, which would delete special tags from the text the reward parses; and a downloaded model
  has no embedding for them. The BPE is trained on text full of tags, so it learns them as a few tokens anyway.
- ChatML template (<|im_start|>role ... <|im_end|>), and <|im_end|> is the EOS token, so generation stops at the end
  of the assistant turn and the template is prefix-consistent (what TRL's completion-only SFT loss needs).
- Weights are randomly initialised with a fixed seed: the tiny model learns everything from SFT.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from stepcode.errors import MissingInput

PAD, EOS, IM_START = "<|pad|>", "<|im_end|>", "<|im_start|>"
SPECIAL_TOKENS = [PAD, EOS, IM_START]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# name -> (vocab, hidden, intermediate, layers, heads, kv heads, max positions). "micro" trains in seconds in tests;
# "mini" is the ablation study's (it learns the basic corpus fastest per CPU-minute); "tiny" is the CPU default;
# "0.5b" is the randomly initialised GPU smoke-test size (scripts/gpu_check.sh).
SIZES = {
    "micro": (1024, 64, 128, 2, 4, 2, 2048),
    "mini": (2048, 128, 512, 3, 4, 2, 2048),
    "tiny": (4096, 256, 688, 4, 8, 4, 4096),
    "0.5b": (8192, 1024, 4096, 28, 16, 8, 4096),
}


def set_offline() -> None:
    # Read by huggingface_hub when transformers is first imported; local_files_only covers a late setting.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def corpus_texts(rows: Iterable[dict]) -> list[str]:
    """Every string in the rows (recursing into lists and dicts: code, traces, chat messages), plus the prompt text.

    Works on program rows, trace rows, SFT and RL rows alike; rendered SFT targets put the tag vocabulary in.
    """
    from stepcode import prompts

    texts = [prompts.SYSTEM_PROMPT, prompts.OUTPUT_INSTRUCTION, prompts.INPUT_INSTRUCTION,
             prompts.OUTPUT_FINAL_REASONING, prompts.INPUT_FINAL_REASONING, prompts.INPUT_COMMIT_REASONING]

    def walk(value) -> None:
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    for row in rows:
        walk(row)
        # A trace row: also the targets the model will be trained to write, so the tags get merged tokens.
        if isinstance(row.get("trace"), list) and row.get("status", "ok") == "ok" and row.get("output"):
            try:
                texts.append(prompts.render_output_completion(row["trace"], row["output"]))
                texts.append(prompts.render_input_completion(row["input"], row["trace"]))
            except (ValueError, KeyError):
                pass  # a row the dataset builder would route out anyway; its raw strings were added above
    return texts


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE trained on `texts`, wrapped as a transformers fast tokenizer with the chat template."""
    set_offline()
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if not texts:
        raise ValueError("the tokenizer corpus is empty")
    tok = Tokenizer(models.BPE())
    # Pieces a merge never crosses: words, single digits, and runs of everything else (spaces, punctuation). So a
    # value is the same tokens wherever it stands: `6` in `f(6, 'bc')` and in `<print>a: 6</print>`, `bc` inside
    # quotes and bare; GPT-2's pre-tokenizer glues a leading space or quote onto it ("Ġ6", "'bc"), and a tiny model
    # must then learn those pairs are one value before it can copy one. Digits one by one, as Llama 3 and Qwen do.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[A-Za-z_]+|\d|[^A-Za-z_\d]+"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, chat_template=CHAT_TEMPLATE)
    hf_tok.padding_side = "left"   # decoder-only generation pads on the left
    return hf_tok


def llama_config(size: str, vocab_size: int, pad_token_id: int, eos_token_id: int):
    from transformers import LlamaConfig

    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; expected one of {sorted(SIZES)}")
    _, hidden, inter, layers, heads, kv_heads, positions = SIZES[size]
    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=positions,
                       pad_token_id=pad_token_id, eos_token_id=eos_token_id, bos_token_id=None,
                       tie_word_embeddings=True)


def build_tiny_model(out_dir: str | os.PathLike, texts: list[str], size: str = "micro", seed: int = 0) -> Path:
    """Train the tokenizer on `texts`, initialise a Llama of `size`, save both in HF format under `out_dir`."""
    set_offline()
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; expected one of {sorted(SIZES)}")
    import torch
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = train_tokenizer(texts, SIZES[size][0])
    config = llama_config(size, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def load_model(path: str | os.PathLike, *, dtype: str = "auto", device: str | None = None):
    """(model, tokenizer) from a local HF directory; the tokenizer pads on the left and always has a pad token."""
    set_offline()
    p = Path(path)
    if not (p / "config.json").is_file():
        raise MissingInput(f"{p} is not a local Hugging Face model directory (no config.json)")
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = load_tokenizer(p)
    model = AutoModelForCausalLM.from_pretrained(p, dtype=dtype, local_files_only=True)
    if device:
        model = model.to(device)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer of a local HF directory, fast (offsets are needed to map reward spans to tokens)."""
    set_offline()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{path}: a fast (tokenizers-backed) tokenizer is required, got {type(tokenizer).__name__}")
    if tokenizer.pad_token is None:   # e.g. some base models: padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer
