"""Every export folder is Hub-ready: README.md parses with huggingface_hub's ModelCard and says the right things.

Real exports of the tiny pruned Llama (compact_helpers.tiny_llama), read back with
``huggingface_hub.ModelCard.load`` and ``yaml.safe_load``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from compact_helpers import load_state, stored_tensors, tiny_llama
from conftest import PNG_SIGNATURE
from huggingface_hub import ModelCard

from owl_plugin.cli import main
from owl_plugin.export import export_checkpoint
from owl_plugin.model_card import (
    CARD_MARKER,
    DEFAULT_BASE_LICENSE,
    DEFAULT_BASE_MODEL,
    DEFAULT_MODEL_GGUF_NAME,
    Results,
    folder_card,
    front_matter,
    split_front_matter,
)
from owl_plugin.profile import ModuleSparsity, SparsityProfile

SUFFIXES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
SIZES = {"self_attn.q_proj": 64 * 64, "self_attn.k_proj": 32 * 64, "self_attn.v_proj": 32 * 64,
         "self_attn.o_proj": 64 * 64, "mlp.gate_proj": 128 * 64, "mlp.up_proj": 128 * 64, "mlp.down_proj": 64 * 128}
WANDA_RECIPE = ("sparsity_stage:\n  sparsity_modifiers:\n    OWLAllocationModifier: {}\n"
                "    WandaPruningModifier: {sparsity: 0.7}\n")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("card") / "source", dtype=torch.float32)


def _profile(method: str) -> SparsityProfile:
    modules = {f"model.layers.{b}.{s}": ModuleSparsity(0.7, SIZES[s], f"model.layers.{b}")
               for b in range(4) for s in SUFFIXES}
    scores = {f"model.layers.{b}": 2.0 + b for b in range(4)} if method in ("owl", "alpha") else {}
    return SparsityProfile(method=method, target=0.7, modules=modules, params={"m": 5.0, "lam": 0.08},
                           scores=scores)


def _zeros_share(folder: Path, profile: SparsityProfile) -> float:
    """Share of zeros in the profile's weights of a (small) dense folder, counted here."""
    state = stored_tensors(folder)
    weights = [state[f"{module}.weight"] for module in profile.modules]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def _card(folder: Path) -> tuple[ModelCard, dict, str]:
    card = ModelCard.load(folder / "README.md")  # huggingface_hub's own parser
    metadata, body = split_front_matter((folder / "README.md").read_text())
    assert metadata == yaml.safe_load((folder / "README.md").read_text().split("---")[1])
    return card, card.data.to_dict(), body


def test_front_matter_values_read_back_as_the_strings_written() -> None:
    """YAML 1.1 reads on/off/yes/no in any case as booleans and 1.0 / 0x1f / 1e3 as numbers: such values are
    quoted, so the Hub reads a licence, language or tag back as the string written."""
    import yaml

    values = ["on", "Off", "NO", "Yes", "true", "null", "~", "1.0", "0x1f", "1e3", "2024", "apache-2.0", "en",
              "owl-plugin", "base_model:org/name"]
    metadata = {"license": "on", "language": ["NO", "en"], "tags": values}
    text = front_matter(metadata)
    assert text.startswith("---\n") and text.rstrip().endswith("---")
    assert yaml.safe_load(text.strip().strip("-")) == metadata
    assert "license: on\n" not in text and "- apache-2.0\n" in text  # quoted only where needed


def test_dense_export_card_inherits_the_source_card_and_shows_the_profile(source, tmp_path, caplog) -> None:
    with_card = tmp_path / "with-card"
    shutil.copytree(source, with_card)
    (with_card / "README.md").write_text("---\nlicense: mit\nlanguage:\n- en\nbase_model: Org/Base-1B\n"
                                         "tags: [chat]\n---\n# Someone else's card\n")
    (with_card / "recipe.yaml").write_text(WANDA_RECIPE)
    with caplog.at_level(logging.INFO, logger="owl_plugin.model_card"):
        export_checkpoint(with_card, tmp_path / "out", format="dense", profile=_profile("owl"))
    assert "replacing the source's README.md with an owl-plugin model card" in caplog.text

    out = tmp_path / "out"
    card, data, body = _card(out)
    assert data == {"base_model": "Org/Base-1B", "license": "mit", "language": ["en"], "library_name": "transformers",
                    "pipeline_tag": "text-generation", "tags": ["pruned", "sparse", "owl", "wanda", "owl-plugin"]}
    assert CARD_MARKER in card.text and "Someone else's card" not in card.text
    assert "# out" in body and "OWL (Outlier Weighed Layerwise sparsity" in body and "arXiv 2310.05175" in body
    assert "![Per-layer sparsity: owl @ 0.7](sparsity_profile.png)" in body
    assert (out / "sparsity_profile.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "| model.layers.3 | 0.7000 | 5 |" in body  # per-block ratio and the outlier ratio it came from
    assert "| target sparsity | 0.7000 |" in body and "| parameters | m=5.0, lam=0.08 |" in body
    assert "| allocated (parameter-weighted mean) | 0.7000 |" in body
    counted = _zeros_share(source, _profile("owl"))
    assert abs(counted - 0.7) < 0.01 and f"{counted:.4f}" != "0.7000"  # per-row rounding: told apart from 0.7
    assert f"| zeros in the weights (counted) | {counted:.4f} over all 28 pruned weights |" in body
    assert "fewer zeros" not in body
    assert "WandaPruningModifier: {sparsity: 0.7}" in body  # the recipe, verbatim
    assert 'AutoModelForCausalLM.from_pretrained("./out")' in body
    assert 'llm = LLM(model="./out")' in body and "python -m vllm.entrypoints.openai.api_server --model ./out" in body
    assert 'OVModelForCausalLM.from_pretrained("./out", export=True)' in body
    assert "owl-plugin must be" not in body and "pip install owl-plugin" not in body  # dense needs nothing extra
    assert "Not measured for this export yet" in body and "@inproceedings{yin2024owl" in body
    assert "`mit`, inherited from the base model" in body
    # the rest of the folder: plain dense checkpoint, recipe and profile beside the card
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and "sparsity_config" not in config
    assert SparsityProfile.load(out).method == "owl" and (out / "recipe.yaml").read_text() == WANDA_RECIPE
    assert load_state(out).keys() >= stored_tensors(source).keys()


def test_compact_export_card_with_results_and_repo_id(source, tmp_path) -> None:
    rows = [{"model": "dense", "perplexity": 21.25, "tokens/s": 40.0},
            {"model": "alpha 70 %", "perplexity": 35.5, "tokens/s": 39.1, "note": "a|b"}]
    export_checkpoint(source, tmp_path / "out", format="compact", profile=_profile("alpha"),
                      repo_id="my-org/tiny-alpha-70", results={"caption": "WikiText-2, 4 windows", "rows": rows})
    out = tmp_path / "out"
    _, data, body = _card(out)
    assert data == {"license": "other", "license_name": "unknown", "library_name": "transformers",
                    "pipeline_tag": "text-generation", "tags": ["pruned", "sparse", "alphapruning", "owl-sparse",
                                                               "owl-plugin"]}
    assert "# tiny-alpha-70" in body and "AlphaPruning" in body and "@inproceedings{lu2024alphapruning" in body
    assert "| block | sparsity | mean α |" in body
    assert "WikiText-2, 4 windows\n\n| model | perplexity | tokens/s | note |" in body
    assert "| alpha 70 % | 35.5 | 39.1 | a\\|b |" in body and "| dense | 21.25 | 40 | – |" in body
    assert Results.load(out / "results.json").rows == tuple(rows)
    assert "pip install owl-plugin" in body and 'AutoModelForCausalLM.from_pretrained("my-org/tiny-alpha-70")' in body
    assert 'LLM(model="my-org/tiny-alpha-70")' in body
    assert "hf download my-org/tiny-alpha-70 --local-dir compact/" in body  # OpenVINO: dense first
    assert "The base model is not recorded" in body and "Unknown: the source folder carries no license" in body
    assert "`model.safetensors`" in body and "`sparsity_profile.png`" in body
    # counted from the compact headers: the same share as the dense weights it was made from
    assert f"| zeros in the weights (counted) | {_zeros_share(source, _profile('alpha')):.4f} over all 28 " in body


def test_default_model_and_cache_paths_give_the_base_model(source, tmp_path) -> None:
    default_like = tmp_path / "default-like"  # what `owl prune default` saves: the GGUF name stays in config.json
    shutil.copytree(source, default_like)
    config = json.loads((default_like / "config.json").read_text())
    (default_like / "config.json").write_text(json.dumps({**config, "_model_name_or_path": DEFAULT_MODEL_GGUF_NAME}))
    export_checkpoint(default_like, tmp_path / "from-default", format="compact")
    _, data, body = _card(tmp_path / "from-default")
    assert (data["base_model"], data["license"]) == (DEFAULT_BASE_MODEL, DEFAULT_BASE_LICENSE)
    assert data["tags"] == ["pruned", "sparse", "owl-sparse", "owl-plugin"]  # measured profile: no method tag
    assert "measured from the weights" in body and "`apache-2.0`, inherited" in body

    snapshot = tmp_path / "hub" / "models--SomeOrg--Pruned-7B" / "snapshots" / "0123abcd"
    shutil.copytree(source, snapshot)
    export_checkpoint(snapshot, tmp_path / "from-cache", format="dense")
    assert _card(tmp_path / "from-cache")[1]["base_model"] == "SomeOrg/Pruned-7B"


def test_exporting_an_export_keeps_its_base_model_and_license(source, tmp_path) -> None:
    export_checkpoint(source, tmp_path / "compact", format="compact", base_model="Org/Base-1B", license="llama3.1")
    export_checkpoint(tmp_path / "compact", tmp_path / "dense", format="dense")
    _, data, body = _card(tmp_path / "dense")
    assert (data["base_model"], data["license"]) == ("Org/Base-1B", "llama3.1")
    assert "owl-sparse" not in data["tags"] and "# dense" in body

    # pushing under a Hub id re-renders our card for it (in memory; the folder is not touched)
    before = (tmp_path / "dense" / "README.md").read_text()
    text, base, ours = folder_card(tmp_path / "dense", repo_id="my-org/tiny-dense")
    assert ours and base.repo_id == "Org/Base-1B" and base.license == "llama3.1"
    assert "# tiny-dense" in text and 'from_pretrained("my-org/tiny-dense")' in text
    assert (tmp_path / "dense" / "README.md").read_text() == before


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"base_model": "not a repo"}, "base_model='not a repo' is not a Hugging Face Hub id; expected ORG/NAME"),
    ({"repo_id": "org/name/extra"}, "repo_id='org/name/extra' is not a Hugging Face Hub id"),
    ({"license": "Apache 2.0"}, "license='Apache 2.0' is not a Hub license identifier"),
    ({"results": [{"model": "dense", "ppl": [1, 2]}]}, "results row 0 column 'ppl' holds list [1, 2]"),
    ({"results": {"rows": [], "caption": "x"}}, "results need at least one row"),
    ({"results": {"rows": [{"a": 1}], "extra": 1}}, "results have unknown fields ['extra']"),
])
def test_bad_card_inputs_fail_before_any_output(source, tmp_path, kwargs, message) -> None:
    with pytest.raises(ValueError) as error:
        export_checkpoint(source, tmp_path / "out", format="dense", **kwargs)
    assert message in str(error.value)
    assert list(tmp_path.iterdir()) == []  # not even a staging folder


def test_cli_export_card_options(source, tmp_path, capsys) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"rows": [{"model": "owl", "perplexity": 30.0}]}))
    output = tmp_path / "cli"
    assert main(["export", str(source), "--format", "compact", "--output", str(output), "--base-model",
                 "Org/Base-1B", "--license", "apache-2.0", "--results", str(results)]) == 0
    _, data, body = _card(output)
    assert (data["base_model"], data["license"]) == ("Org/Base-1B", "apache-2.0")
    assert "| owl | 30 |" in body
    results.write_text("{not json")
    assert main(["export", str(source), "--format", "dense", "--output", str(tmp_path / "x"),
                 "--results", str(results)]) == 2
    assert f"{results} is not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_unpruned_model_gets_an_honest_card(tmp_path) -> None:
    unpruned = tiny_llama(tmp_path / "unpruned", dtype=torch.float32, sparsity=0.0)
    export_checkpoint(unpruned, tmp_path / "out", format="dense")
    _, data, body = _card(tmp_path / "out")
    assert data["tags"] == ["owl-plugin"]  # neither pruned nor sparse
    assert "No pruned weights were found" in body and "![" not in body
    assert not (tmp_path / "out" / "sparsity_profile.json").exists()


def test_card_of_weights_exported_before_pruning_says_they_hold_fewer_zeros(tmp_path, caplog) -> None:
    """A profile whose weights were never pruned: the card counts the zeros and calls the shortfall out."""
    unpruned = tiny_llama(tmp_path / "unpruned", dtype=torch.float32, sparsity=0.0)
    with caplog.at_level(logging.WARNING, logger="owl_plugin.export"):
        export_checkpoint(unpruned, tmp_path / "out", format="dense", profile=_profile("owl"))
    assert "28 of 28 profile modules hold fewer zeros than the profile says" in caplog.text
    _, _, body = _card(tmp_path / "out")
    assert "| allocated (parameter-weighted mean) | 0.7000 |" in body
    assert "| zeros in the weights (counted) | 0.0000 over all 28 pruned weights |" in body
    assert ("> **The weights hold fewer zeros (0.0000) than the profile allocates (0.7000)**: was the model "
            "pruned before export?") in body
