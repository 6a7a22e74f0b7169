"""Export a pruned checkpoint folder as a dense or a compact (owl_sparse, SPEC.md) checkpoint.

The export streams: tensors are read one at a time from the source's safetensors shards and
written into new shards (at most one shard in memory), never as a second copy of the model.
Everything is built in a hidden staging folder beside the output, verified (every written
tensor is reopened, decompressed if compact, and compared bit for bit with the source; the
shards get SHA-256 checksums, and a compact export records the SHA-256 of every tensor in its
config.json, which the loaders verify: ``owl_plugin.formats.integrity``), and only then
published with an atomic rename. An existing output is replaced only with ``overwrite=True``.
Every export is Hub-ready: it carries
``sparsity_profile.json`` (measured from the zeros when the source has none), its plot, the
source's recipe and a model card (README.md, ``owl_plugin.model_card``), written in the staging
folder like everything else.

Example:
    >>> result = export_checkpoint("pruned/", "pruned-compact/", format="compact")
    >>> result.pruned_ratio   # compact bytes / dense bytes of the pruned weights
    0.33
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from owl_plugin.checkpoint import CONFIG_NAME, CheckpointFolder
from owl_plugin.export_config import FORMATS, check_source_config, output_config
from owl_plugin.formats.compact import compress, compressed_keys
from owl_plugin.formats.integrity import CHECKSUMS_KEY, checksums_entry
from owl_plugin.model_card import (
    SHORT_TOLERANCE,
    Counted,
    Results,
    check_license,
    check_repo_id,
    write_model_card,
)
from owl_plugin.profile import PROFILE_FILENAME, ModuleSparsity, SparsityProfile
from owl_plugin.pruned_modules import block_of, candidate_modules, decoder_prefix
from owl_plugin.shards import DEFAULT_MAX_SHARD_BYTES, ShardWriter
from owl_plugin.staging import check_destination, publish, staged_folder

logger = logging.getLogger(__name__)

PAUSE_ENV = "OWL_EXPORT_TEST_PAUSE"  # seconds to sleep per tensor: lets the kill-safety test interrupt an export
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx", ".index.json")


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote and how large it is.

    Attributes:
        output_dir: the published folder.
        format: ``"dense"`` or ``"compact"``.
        pruned_modules: modules whose weight holds zeros (stored compressed in a compact export), in order.
        pruned_dense_bytes: bytes of those weights stored densely.
        pruned_stored_bytes: bytes they occupy in this export (values + bitmask + shape when compact).
        source_bytes: size of the source's weight files.
        output_bytes: size of the exported weight files.
        checksums: weight file name → SHA-256 of the verified file.
        seconds: wall time.
        skipped: source side files not copied (not known to be safe to publish; ``include=`` adds them).
    """

    output_dir: Path
    format: str
    pruned_modules: tuple[str, ...]
    pruned_dense_bytes: int
    pruned_stored_bytes: int
    source_bytes: int
    output_bytes: int
    checksums: Mapping[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: tuple[str, ...] = ()

    @property
    def pruned_ratio(self) -> float:
        """Stored bytes / dense bytes of the pruned weights (1.0 for a dense export)."""
        return self.pruned_stored_bytes / self.pruned_dense_bytes if self.pruned_dense_bytes else 1.0

    @property
    def checkpoint_ratio(self) -> float:
        """Exported weight files' bytes / source weight files' bytes."""
        return self.output_bytes / self.source_bytes if self.source_bytes else 1.0

    def summary(self) -> str:
        """One line with both size ratios."""
        mb = 1e6
        return (
            f"{self.format} export in {self.output_dir}: {len(self.pruned_modules)} pruned weights "
            f"{self.pruned_dense_bytes / mb:.1f} MB dense -> {self.pruned_stored_bytes / mb:.1f} MB stored "
            f"(ratio {self.pruned_ratio:.4f}); weight files {self.source_bytes / mb:.1f} MB -> "
            f"{self.output_bytes / mb:.1f} MB (ratio {self.checkpoint_ratio:.4f}); {self.seconds:.1f} s"
            + (f"; not copied (unknown side files, --include NAME copies one): {', '.join(self.skipped)}"
               if self.skipped else "")
        )


@dataclass
class _Written:
    """Bookkeeping of the write pass."""

    raw_names: list[str] = field(default_factory=list)
    weight_map: dict[str, str] = field(default_factory=dict)  # tensor -> shard file name
    pruned: dict[str, tuple[int, int]] = field(default_factory=dict)  # module -> (zeros, numel)
    dense_bytes: int = 0
    stored_bytes: int = 0


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bytes (NaN payloads and signed zeros included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def _canonical_zeros(tensor: torch.Tensor) -> torch.Tensor:
    """-0.0 → +0.0, the one change the compact codec makes."""
    return torch.where(tensor == 0, torch.zeros_like(tensor), tensor)


def _resolve_profile(profile: SparsityProfile | str | os.PathLike | None, source: Path) -> SparsityProfile | None:
    if isinstance(profile, SparsityProfile):
        return profile
    if profile is not None:
        return SparsityProfile.load(profile)
    if (source / PROFILE_FILENAME).is_file():
        return SparsityProfile.load(source / PROFILE_FILENAME)
    return None


def _write_weights(
    source: CheckpointFolder, writer: ShardWriter, candidates: set[str], *, format: str, pause: float
) -> _Written:
    written = _Written()
    names = source.dense_names()
    for name in tqdm(names, desc=f"export {format}", unit="tensor", disable=None):
        tensor = source.read_dense(name)
        module = name[: -len(".weight")] if name.endswith(".weight") else None
        if module in candidates:
            zeros = int((tensor == 0).sum())
            if zeros:
                written.pruned[module] = (zeros, tensor.numel())
                written.dense_bytes += _nbytes(tensor)
                if format == "compact":
                    parts = compress(tensor)
                    for part, key in compressed_keys(module).items():
                        writer.add(key, parts[part])
                        written.raw_names.append(key)
                        written.stored_bytes += _nbytes(parts[part])
                    tensor = None
                else:
                    written.stored_bytes += _nbytes(tensor)
        if tensor is not None:
            writer.add(name, tensor)
            written.raw_names.append(name)
        if pause:
            time.sleep(pause)
    written.weight_map = writer.finish()
    return written


def _warn_unpruned(profile: SparsityProfile | None, pruned: Mapping[str, tuple[int, int]]) -> None:
    """Warn when weights hold far fewer zeros than the profile promises (exported before pruning?)."""
    if profile is None:
        return
    short = []
    for module, entry in profile.modules.items():
        zeros, numel = pruned.get(module, (0, 1))
        if zeros / numel < entry.sparsity - SHORT_TOLERANCE:
            short.append((module, entry.sparsity, zeros / numel))
    if short:
        module, wanted, found = short[0]
        logger.warning("%d of %d profile modules hold fewer zeros than the profile says (e.g. %s: %.4f, profile "
                       "%.4f); was the model pruned before export?", len(short), len(profile.modules), module,
                       found, wanted)


def _counted(profile: SparsityProfile | None, pruned: Mapping[str, tuple[int, int]],
             info: Mapping[str, tuple[str, tuple[int, ...]]]) -> Counted | None:
    """The model card's zero count from the counts just taken while writing (the card would read the weights
    again); modules without zeros are not in ``pruned``."""
    if profile is None:
        return None
    stored = [m for m in profile.modules if f"{m}.weight" in info]
    numel = {m: math.prod(info[f"{m}.weight"][1]) for m in stored}
    zeros = sum(pruned.get(m, (0, 0))[0] for m in stored)
    return Counted(zeros, sum(numel.values()), len(stored)) if stored else None


def _measured_profile(pruned: Mapping[str, tuple[int, int]], names: list[str], config: Mapping) -> SparsityProfile:
    """A profile of the sparsities found, for a compact export whose source has none (SPEC.md wants one)."""
    prefix = decoder_prefix(names, num_layers=config.get("num_hidden_layers"))
    modules = {
        module: ModuleSparsity(min(zeros / numel, math.nextafter(1.0, 0.0)), numel, block_of(module, prefix))
        for module, (zeros, numel) in pruned.items()
    }
    total = sum(numel for _, numel in pruned.values())
    target = sum(zeros for zeros, _ in pruned.values()) / total
    return SparsityProfile(method="measured", target=target, modules=modules,
                           params={"source": "zeros counted by owl export"})


#: side files an export copies from the source: tokenizer, configs, chat template, licence / readme / notice,
#: and owl's own profile, plot, recipe and results. Anything else (a ``credentials.env``, notes, scripts) stays
#: behind unless named with ``include=`` (``owl export --include NAME``): an export is meant to be published.
KNOWN_SIDE_FILES = frozenset({
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "vocab.txt", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "spm.model",
    "chat_template.jinja", "chat_template.json", "generation_config.json", "preprocessor_config.json",
    "processor_config.json", PROFILE_FILENAME, "sparsity_profile.png", "recipe.yaml", "results.json",
})
_DOCUMENT_STEMS = ("license", "licence", "readme", "notice", "copying", "use_policy")
_DOCUMENT_SUFFIXES = ("", ".txt", ".md", ".rst")


def is_known_side_file(name: str) -> bool:
    """True for the side files every export copies (``KNOWN_SIDE_FILES``, LICENSE / README / NOTICE[.txt|.md])."""
    stem, dot, suffix = name.partition(".")
    return name in KNOWN_SIDE_FILES or (stem.lower().replace("-", "_") in _DOCUMENT_STEMS
                                        and f"{dot}{suffix}".lower() in _DOCUMENT_SUFFIXES)


def check_includes(source: Path, include: Sequence[str]) -> list[str]:
    """``include`` names, each a plain file name of a regular file in ``source`` (ValueError naming it)."""
    names = []
    for name in include:
        path = source / name
        if not name or Path(name).name != name or name in (".", ".."):
            raise ValueError(f"--include {name!r} is not a file name; name one file of {source} (no folders)")
        if name.startswith("."):
            raise ValueError(f"--include {name!r} is a hidden file; an export never copies hidden files")
        if path.is_symlink() or not path.is_file():
            raise ValueError(f"--include {name!r}: {path} is not a regular file in the source folder")
        if name == CONFIG_NAME or name.endswith(_WEIGHT_SUFFIXES):
            raise ValueError(f"--include {name!r} is a config or weight file; the export writes those itself")
        names.append(name)
    return names


def _copy_side_files(source: Path, staging: Path, *, skip: set[str], include: Sequence[str] = ()) -> list[str]:
    """Copy the known side files (and ``include``); return the names of the other files left behind."""
    skipped = []
    for path in sorted(source.iterdir()):
        name = path.name
        if not path.is_file() or name.startswith(".") or name == CONFIG_NAME or name.endswith(_WEIGHT_SUFFIXES):
            continue
        if name in skip:
            continue
        if is_known_side_file(name) or (name in include and not path.is_symlink()):
            shutil.copy2(path, staging / name)  # a link's content (the Hub cache links snapshots into blobs/)
        else:
            skipped.append(name)
    return skipped


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(source: CheckpointFolder, staging: Path, written: _Written, *, format: str, pause: float) -> dict[str, str]:
    """Reopen every written tensor and compare it with the source; return the shards' checksums."""
    fail = "export verification failed, nothing was published:"
    with CheckpointFolder(staging, verify=False) as output:  # the checksums were just hashed from these files
        if set(output.raw_names()) != set(written.raw_names) or len(output.raw_names()) != len(written.raw_names):
            missing = sorted(set(written.raw_names) - set(output.raw_names()))[:5]
            extra = sorted(set(output.raw_names()) - set(written.raw_names))[:5]
            raise RuntimeError(
                f"{fail} the written index does not match the tensors (missing {missing}, extra {extra})")
        expected = list(written.pruned) if format == "compact" else []
        if output.compressed != expected:
            raise RuntimeError(f"{fail} config.json lists compressed modules {output.compressed[:3]}..., "
                               f"expected {expected[:3]}...")
        compressed = {f"{module}.weight" for module in expected}
        for name in tqdm(output.dense_names(), desc="verify", unit="tensor", disable=None):
            got = output.read_dense(name)
            want = source.read_dense(name)
            if name in compressed:
                want = _canonical_zeros(want)
            if not _same_bits(got, want):
                raise RuntimeError(f"{fail} {name} read back from {staging} differs from the source "
                                   f"({got.dtype} {list(got.shape)} vs {want.dtype} {list(want.shape)})")
            if pause:
                time.sleep(pause)
        return {path.name: _sha256(path) for path in output.files()}


def export_checkpoint(
    model_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    format: str,
    overwrite: bool = False,
    profile: SparsityProfile | str | os.PathLike | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    repo_id: str | None = None,
    base_model: str | None = None,
    license: str | None = None,
    results: Results | Mapping | list | None = None,
    include: Sequence[str] = (),
) -> ExportResult:
    """Write ``model_dir`` (dense or compact) to ``output_dir`` as a dense or compact checkpoint.

    Args:
        model_dir: source checkpoint folder (config.json + safetensors).
        output_dir: folder to create; it appears only once complete and verified.
        format: ``"dense"`` (plain transformers checkpoint, no sparsity metadata in config.json) or
            ``"compact"`` (pruned linear weights as values + bitmask + shape, SPEC.md).
        overwrite: replace an existing ``output_dir`` (atomically); otherwise an existing one is an error.
        profile: a ``SparsityProfile`` or its JSON path; its modules are the ones compressed (those
            holding zeros). Default: the source's ``sparsity_profile.json``, else every 2-D weight in
            the decoder blocks that holds zeros.
        max_shard_bytes: safetensors shard size limit.
        repo_id: the Hub id the export will be published under (the model card's load snippets use it).
        base_model: the base model's Hub id for the model card (default: found in the source, see
            ``owl_plugin.model_card``).
        license: license identifier for the model card (default: inherited from the source's card).
        results: perplexity / speed rows for the model card (``model_card.Results``); default: the
            source's ``results.json``.
        include: names of further source side files to copy; by default only known ones are
            (``KNOWN_SIDE_FILES``, LICENSE / README / NOTICE), the rest is listed in ``skipped``.

    Returns:
        An ``ExportResult`` with the size ratios and checksums.

    Raises:
        FileExistsError: ``output_dir`` exists and ``overwrite`` is False.
        ValueError: bad format, a quantized source, a profile that does not match the checkpoint,
            or a compact export of a model without zeros.
    """
    if format not in FORMATS:
        raise ValueError(f"format={format!r} is not supported; choose one of {FORMATS}")
    if repo_id is not None:  # the card's inputs are checked before any work
        check_repo_id(repo_id, what="repo_id")
    if base_model is not None:
        check_repo_id(base_model)
    if license is not None:
        check_license(license)
    if results is not None:
        results = Results.from_data(results)
    started = time.perf_counter()
    target = Path(output_dir).absolute()
    pause = float(os.environ.get(PAUSE_ENV) or 0)
    with CheckpointFolder(model_dir) as source:
        folder = source.folder.resolve()
        if folder == target.resolve() or target.resolve() in folder.parents:
            raise ValueError(f"output {target} would contain or replace the source {folder}; choose another output")
        check_destination(target, inputs=(folder,), overwrite=overwrite,
                          flag="overwrite=True (owl export --overwrite)")
        check_source_config(source.config, source=str(folder))
        include = check_includes(folder, include)
        chosen = _resolve_profile(profile, folder)
        names = source.dense_names()
        info = {name: source.dense_info(name) for name in names}
        candidates = set(candidate_modules(info, source.config, profile=chosen))
        logger.info("exporting %s (%d tensors, %d candidate weights) as %s into %s", folder, len(names),
                    len(candidates), format, target)
        with staged_folder(target) as staging:
            written = _write_weights(source, ShardWriter(staging, max_shard_bytes=max_shard_bytes), candidates,
                                     format=format, pause=pause)
            if chosen is not None:  # compressed_modules in the profile's (model) order
                written.pruned = {m: written.pruned[m] for m in chosen.modules if m in written.pruned}
            _warn_unpruned(chosen, written.pruned)
            if format == "compact" and not written.pruned:
                raise ValueError(f"{folder} holds no pruned weights (no zeros in its {len(candidates)} candidate "
                                 "weights), so a compact export has nothing to compress; prune it first, or export "
                                 "it with --format dense")
            config = output_config(source.config, format=format, modules=list(written.pruned))
            if format == "compact":  # per-tensor SHA-256 of the bytes just written, verified by every loader
                config["quantization_config"][CHECKSUMS_KEY] = checksums_entry(
                    {name: staging / file for name, file in written.weight_map.items()})
            (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
            explicit = profile is not None
            skipped = _copy_side_files(folder, staging, skip={PROFILE_FILENAME} if explicit else set(),
                                       include=include)
            measured = chosen is None and bool(written.pruned)
            shown = chosen
            if explicit:
                chosen.save(staging / PROFILE_FILENAME)
            elif measured:  # SPEC.md wants one in a compact folder; the model card shows it for both formats
                shown = _measured_profile(written.pruned, names, source.config)
                shown.save(staging / PROFILE_FILENAME)
            write_model_card(staging, name=target.name, repo_id=repo_id, base_model=base_model, license=license,
                             results=results, source=folder, replot=explicit or measured,
                             counted=_counted(shown, written.pruned, info))
            checksums = _verify(source, staging, written, format=format, pause=pause)
            output_bytes = sum((staging / name).stat().st_size for name in checksums)
            publish(staging, target, overwrite=overwrite)
        result = ExportResult(
            output_dir=target, format=format, pruned_modules=tuple(written.pruned),
            pruned_dense_bytes=written.dense_bytes, pruned_stored_bytes=written.stored_bytes,
            source_bytes=source.weights_nbytes(), output_bytes=output_bytes, checksums=checksums,
            seconds=time.perf_counter() - started, skipped=tuple(skipped),
        )
    logger.info(result.summary())
    return result
