"""Check a compact checkpoint folder before vLLM loads it (``owl_plugin.formats.integrity``).

vLLM reads weights by itself: it globs ``*.safetensors`` in the folder (filtered by the index's
``weight_map`` when there is one) and, for a quantized checkpoint, does not report tensors the model
expects but the files lack (a deleted norm or embedding stays freshly initialised). So before the
model is built, :func:`check_folder` opens the folder with ``owl_plugin.checkpoint.CheckpointFolder``,
which refuses by name: index paths leaving the folder (also ``transformers_weights``), a compressed
module without all three pieces or with a dense ``<module>.weight`` twin, tensors missing from or
added to what the export recorded, and bytes that no longer match their SHA-256 (skip the hashing
with ``OWL_VERIFY_CHECKSUMS=0``). Without an index vLLM would also read any other ``*.safetensors``
file in the folder, so such files are refused too.

A local folder is checked when vLLM builds its config (:meth:`OwlSparseConfig.maybe_update_config`,
before any engine starts). A Hub id is checked once its files are in the local Hub cache, after the
weights were loaded and before the model serves (the first ``process_weights_after_loading``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from owl_plugin.checkpoint import INDEX_FILE, CheckpointFolder
from owl_plugin.formats.compact import CompactFormatError

logger = logging.getLogger(__name__)


def check_folder(folder: str | Path) -> None:
    """Refuse a compact checkpoint folder that is incomplete, altered or reads files outside itself.

    Raises:
        CompactFormatError: naming the tensor and the file (``ChecksumError`` for changed bytes).
        CheckpointPathError: an index or config path outside the folder.
    """
    folder = Path(folder)
    with CheckpointFolder(folder) as checkpoint:
        files = set(checkpoint.files())
    if not (folder / INDEX_FILE).is_file():
        stray = sorted(path for path in folder.glob("*.safetensors") if path not in files)
        if stray:
            raise CompactFormatError(f"{stray[0]} is not part of the compact checkpoint in {folder} (vLLM would read "
                                     "every *.safetensors file of a folder without an index); remove it")
    logger.info("owl_sparse: %s passed the integrity checks", folder)


def hub_folder(model: str, revision: str | None) -> Path | None:
    """The local Hub cache snapshot of ``model``, or None when it is not cached (nothing downloaded)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=model, revision=revision, local_files_only=True))
    except Exception as error:  # noqa: BLE001 - not a cached Hub repository: nothing to check here
        logger.warning("owl_sparse: %s is neither a local folder nor cached from the Hub (%s); its checksums are "
                       "not verified", model, error)
        return None
