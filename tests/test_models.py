"""The embedded tiny model: offline build, HF round trip, tokenizer behaviour the trainer relies on."""

import json

import pytest

from stepcode.prompts import output_messages, render_output_completion
from stepcode.training.models import EOS, PAD, SIZES, build_tiny_model, corpus_texts, load_model, load_tokenizer

CODE = "def f(x):\n    y = x + 1\n    return y\n"
INSTRUMENTED = ("def f(x):\n    y = x + 1\n    print(f'y: {y}')\n    return_val = y\n"
                "    print(f'return_val: {return_val}')\n    return return_val")
TRACE_ROW = {"id": "a", "code": CODE, "input": "1", "entry_point": "f", "instrumented_code": INSTRUMENTED,
             "trace": ["y: 2", "return_val: 2"], "output": "2", "status": "ok", "reason": None}


@pytest.fixture(scope="module")
def micro_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("m") / "micro", corpus_texts([TRACE_ROW] * 20), size="micro")


def test_corpus_texts_walks_rows_and_adds_targets():
    texts = corpus_texts([TRACE_ROW, {"messages": [{"role": "user", "content": "hello"}], "n": 3}])
    assert CODE in texts and INSTRUMENTED in texts and "hello" in texts and "y: 2" in texts
    assert render_output_completion(["y: 2", "return_val: 2"], "2") in texts     # the tag vocabulary
    assert all(isinstance(t, str) for t in texts)


def test_build_writes_hf_llama_and_round_trips(micro_dir):
    config = json.loads((micro_dir / "config.json").read_text())
    assert config["model_type"] == "llama"          # not qwen2: AutoTokenizer would swap the pre-tokenizer
    assert config["hidden_size"] == SIZES["micro"][1] and config["num_hidden_layers"] == SIZES["micro"][3]
    model, tok = load_model(micro_dir)
    assert (tok.eos_token, tok.pad_token, tok.padding_side) == (EOS, PAD, "left")
    assert model.config.eos_token_id == tok.eos_token_id and model.generation_config.pad_token_id == tok.pad_token_id
    assert len(tok) <= SIZES["micro"][0]


def test_tokenizer_ids_survive_reload_and_tags_are_plain_text(micro_dir):
    from tokenizers import Tokenizer

    tok = load_tokenizer(micro_dir)
    raw = Tokenizer.from_file(str(micro_dir / "tokenizer.json"))
    text = render_output_completion(["y: 2", "return_val: 2"], "2") + "\n  é ü 🙂 `x` <print>"
    assert tok(text)["input_ids"] == raw.encode(text).ids
    ids = tok(text)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == text          # tags are not special: they survive decode


def test_chat_template_is_prefix_consistent(micro_dir):
    tok = load_tokenizer(micro_dir)
    messages = output_messages(INSTRUMENTED, "1")
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template(messages + [{"role": "assistant", "content": "<answer>2</answer>"}],
                                   tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n") and full.startswith(prompt)
    assert full.endswith("<answer>2</answer><|im_end|>\n")


def test_generate_stops_and_is_offline(micro_dir, monkeypatch):
    """Generation ends at the model's own EOS (<|im_end|>, from its saved configs) and at max_new_tokens, and nothing
    on the way (loading, generating, decoding) opens a network connection."""
    import socket

    import torch

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] or kwargs)
        raise OSError("network access from an offline model")

    for owner, name in ((socket.socket, "connect"), (socket.socket, "connect_ex"), (socket, "create_connection"),
                        (socket, "getaddrinfo")):
        monkeypatch.setattr(owner, name, refuse)
    model, tok = load_model(micro_dir)
    prompt = tok.apply_chat_template(output_messages(INSTRUMENTED, "1"), add_generation_prompt=True, tokenize=False)
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    n, eos = enc["input_ids"].shape[1], tok.convert_tokens_to_ids(EOS)
    others = [i for i in range(len(tok)) if i != eos]

    def eos_at(step):   # only EOS allowed as new token number `step`, anything but EOS elsewhere
        return lambda batch_id, ids: [eos] if len(ids) == n + step - 1 else others

    # The limit: with EOS never drawn, exactly max_new_tokens new tokens.
    torch.manual_seed(0)
    out = model.generate(**enc, max_new_tokens=8, do_sample=True, prefix_allowed_tokens_fn=eos_at(99))
    assert out.shape == (1, n + 8)
    assert torch.equal(out[0, :n], enc["input_ids"][0])
    # The stop: EOS drawn as the 3rd new token ends generation right there, with the model's default settings
    # (generate gets no eos_token_id: it must come from the saved generation config).
    torch.manual_seed(0)
    out = model.generate(**enc, max_new_tokens=8, do_sample=True, prefix_allowed_tokens_fn=eos_at(3))
    assert out.shape == (1, n + 3) and out[0, -1].item() == eos and eos not in out[0, n:-1].tolist()
    assert EOS not in tok.decode(out[0, n:], skip_special_tokens=True)
    # Greedy decoding is deterministic: the same tokens twice.
    first = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert torch.equal(first, model.generate(**enc, max_new_tokens=8, do_sample=False))
    assert attempts == []


def test_bad_arguments_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown model size"):
        build_tiny_model(tmp_path / "x", ["a"], size="huge")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path / "missing")
    with pytest.raises(ValueError, match="empty"):
        build_tiny_model(tmp_path / "y", [], size="micro")
