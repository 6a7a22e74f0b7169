"""Build (JIT, once per torch install and source hash) and load the C++ extension.

``torch.utils.cpp_extension.load`` compiles ``csrc/*.cpp`` against whichever torch imports this
module (the main venv and vLLM's venv each have their own), into
``$OWL_PLUGIN_CACHE/kernels/torch<version>-<install>-<source hash>``. ``python -m owl_plugin.kernels
build`` does it ahead of time (the Makefile's set-up runs it for both venvs). Without a compiler or ninja the loader
returns ``None`` with a logged warning and the op runs its pure-torch twin.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger(__name__)

CSRC = Path(__file__).parent / "csrc"
SOURCES = sorted(CSRC.glob("*.cpp"))
_STATE: dict[str, object] = {}


def source_hash() -> str:
    """sha256 (12 hex) of the C++ sources and the compile flags."""
    h = hashlib.sha256()
    for src in SOURCES:
        h.update(src.name.encode())
        h.update(src.read_bytes())
    h.update(repr(_flags()).encode())
    return h.hexdigest()[:12]


def _flags() -> tuple[list[str], list[str]]:
    cflags = ["-O3", "-fopenmp", "-std=c++17"]
    ldflags = ["-fopenmp"]
    if os.environ.get("OWL_SPARSE_ASAN") == "1":  # bounds-checked build for the ASan run (see tests)
        cflags += ["-fsanitize=address", "-fno-omit-frame-pointer", "-O1"]
        ldflags += ["-fsanitize=address"]
    return cflags, ldflags


def build_dir() -> Path:
    """Cache folder for this torch install (version and location) and source hash.

    The location matters: two venvs with the same torch version wrote their own include paths into one
    folder's build.ninja, so ninja rebuilt the extension (~45 s) each time the other venv loaded it."""
    root = Path(os.environ.get("OWL_PLUGIN_CACHE", Path.home() / ".cache" / "owl_plugin"))
    where = hashlib.sha256(str(Path(torch.__file__).resolve().parent).encode()).hexdigest()[:6]
    tag = f"torch{torch.__version__.replace('+', '_')}-{where}-{source_hash()}"
    return root / "kernels" / tag


def _register_fakes() -> None:
    """Shape-only twins of the C++ ops, so torch.compile (vLLM) traces through them."""
    @torch.library.register_fake("owl_ext::sparse_linear")
    def _(x, bias, masks, values, row_offsets, out_features, in_features, max_batch, max_batch_bf16, max_batch_fp32,
          pairs_min_batch, tile_bytes):
        return x.new_empty((*x.shape[:-1], out_features))

    @torch.library.register_fake("owl_ext::sparse_gemm_pairs")
    def _(x, masks, values, row_offsets, out_features, in_features):
        return x.new_empty((x.shape[0], out_features))

    @torch.library.register_fake("owl_ext::sparse_gemm")
    def _(x, masks, values, row_offsets, out_features, in_features, isa):
        return x.new_empty((x.shape[0], out_features))

    @torch.library.register_fake("owl_ext::routed_experts")
    def _(x, topk_weights, topk_ids, tensors, shapes, apply_weights, max_batch, max_batch_bf16, max_batch_fp32,
          pairs_min_batch, tile_bytes):
        return x.new_empty((x.shape[0], shapes[len(shapes) // 2]))


def load_extension(*, verbose: bool = False) -> ModuleType | None:
    """The compiled extension (building it if needed), or ``None`` if it cannot be built."""
    if "module" in _STATE:
        return _STATE["module"]  # type: ignore[return-value]
    module = None
    if os.environ.get("OWL_SPARSE_ISA") == "torch":
        _STATE["error"] = "OWL_SPARSE_ISA=torch"
    else:
        try:
            from torch.utils import cpp_extension

            directory = build_dir()
            directory.mkdir(parents=True, exist_ok=True)
            cflags, ldflags = _flags()
            module = cpp_extension.load(
                name=f"owl_sparse_{source_hash()}",
                sources=[str(s) for s in SOURCES],
                build_directory=str(directory),
                extra_cflags=cflags,
                extra_ldflags=ldflags,
                verbose=verbose,
            )
            _STATE["path"] = module.__file__
            _register_fakes()
        except Exception as exc:  # compiler/ninja missing or build error: the torch twin still works
            log.warning("owl sparse kernels: C++ extension unavailable (%s); using the pure-torch path", exc)
            _STATE["error"] = f"{type(exc).__name__}: {exc}"
            module = None
    _STATE["module"] = module
    return module
