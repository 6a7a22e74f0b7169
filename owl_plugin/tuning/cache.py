"""On-disk cache of everything ``owl tune`` measures once per model and calibration data.

Key = sha256 of (model weights, calibration token windows, held-out token windows, settings,
this package's source code, the numerics): a changed statistics pass, proxy or allocator is a
new key, so results measured by an older version are never read back as if they were this
version's; nor are results measured with other kernels (torch's AVX-512 and AVX2 code round
differently, which at high sparsity moves a score as much as another calibration draw).
Under ``<root>/tune/<key>/``:

    input_sq_means.safetensors   mean x_j² at every block linear's input (OWL, DLP, Wanda masks)
    alphas-<xmin>.json           Hill α of every block linear per xmin rule (AlphaPruning)
    dense_topk.safetensors       the dense model's top-k log-probabilities on the held-out windows
    candidates-<target>.jsonl    one line per evaluated candidate (the resumable log)
    refine-<target>.jsonl        one line per refinement score, keyed by the block ratios

Root: ``$OWL_PLUGIN_CACHE`` or ``~/.cache/owl_plugin`` (``owl_plugin.models.cache_dir``).
Every file is written to a temporary name and renamed, so an interrupted run never leaves a
half-written entry; a later run with the same key reuses what is there. A full disk removes the
temporary file and raises ``OSError(ENOSPC)`` naming the cache file being written. Nothing read back is
trusted: a file that does not parse (truncated or garbage safetensors, broken JSON), holds a
non-finite number or fails the caller's ``check`` is reported with its path in a warning, removed,
and the caller computes it again (``get_*`` return None), so a damaged cache is never fatal.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from owl_plugin.staging import disk_full, full_disk_error

logger = logging.getLogger(__name__)


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes), in name order.

    Tensors are flattened before the byte view: a 0-dim tensor (Gemma-3 keeps scalar buffers) cannot
    be viewed as bytes directly."""
    digest = hashlib.sha256()
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def tokens_fingerprint(windows: Sequence[torch.Tensor]) -> str:
    """sha256 of token-id windows (their values and shapes, in order)."""
    digest = hashlib.sha256()
    for window in windows:
        ids = window.detach().cpu().to(torch.int64).contiguous()
        digest.update(str(tuple(ids.shape)).encode())
        digest.update(ids.numpy().tobytes())
    return digest.hexdigest()


# The installed ``owl_plugin`` package (this file is owl_plugin/tuning/cache.py).
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def code_fingerprint(package_root: str | os.PathLike = PACKAGE_ROOT) -> str:
    """sha256 over every ``*.py`` file (relative path and bytes, in path order) under ``package_root``
    (default: the installed ``owl_plugin`` package)."""
    root = Path(package_root)
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


# Environment variables that pin MKL's and oneDNN's instruction sets (ATen's own show in its capability).
KERNEL_PINS = ("MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")


def numerics_fingerprint(device: torch.device | str = "cpu") -> str:
    """What sets the rounding of a measurement on ``device``: torch's version, the device type and,
    on CPU, the vector kernels torch dispatches to (``get_cpu_capability()``, e.g. AVX512 or AVX2,
    which ``ATEN_CPU_CAPABILITY`` can lower) and any pin of MKL's or oneDNN's instruction set."""
    device = torch.device(device)
    parts = [f"torch {torch.__version__}", device.type]
    if device.type == "cpu":
        parts.append(torch.backends.cpu.get_cpu_capability())
        parts += [f"{name}={os.environ[name]}" for name in KERNEL_PINS if os.environ.get(name)]
    return " | ".join(parts)


def cache_key(model_hash: str, calibration_hash: str, heldout_hash: str, settings: Mapping[str, Any], *,
              code_hash: str, numerics: str) -> str:
    """One hex key from the three data hashes, the JSON of ``settings``, the code's hash and the
    numerics (``numerics_fingerprint``)."""
    text = json.dumps({"model": model_hash, "calibration": calibration_hash, "heldout": heldout_hash,
                       "settings": dict(settings), "code": code_hash, "numerics": numerics}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class StatisticsCache:
    """The folder of one cache key; typed get/put for tensors and JSON, each write atomic."""

    def __init__(self, root: str | os.PathLike, key: str) -> None:
        self.folder = Path(root) / "tune" / key
        self.key = key

    def path(self, name: str) -> Path:
        return self.folder / name

    def _atomic(self, name: str, write) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.path(name)
        handle, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{name}.", suffix=".tmp")
        os.close(handle)
        try:
            write(tmp)
            os.replace(tmp, target)
        except Exception as error:
            if disk_full(error):  # name the cache file, not the temporary one (safetensors' errors name none)
                raise full_disk_error(target) from error
            raise
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return target

    def _discard(self, path: Path, problem: str) -> None:
        logger.warning("tune cache file %s %s; removing it and computing it again", path, problem)
        try:
            path.unlink()
        except OSError:
            pass

    def get_tensors(self, name: str, check: Callable[[dict[str, torch.Tensor]], str | None] | None = None,
                    ) -> dict[str, torch.Tensor] | None:
        """The tensors of ``name``; None when absent or unusable (then it is removed, with a warning).

        Args:
            check: returns why the tensors are not what the caller needs (None when they are).
        """
        from safetensors.torch import load_file

        path = self.path(name)
        if not path.is_file():
            return None
        try:
            tensors = load_file(path)
        except Exception as error:  # SafetensorError (truncated, garbage header), OSError, ...
            self._discard(path, f"cannot be read ({' '.join(str(error).split()) or type(error).__name__})")
            return None
        bad = next((k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
        problem = ("holds no tensors" if not tensors else f"holds NaN or inf in {bad!r}" if bad is not None
                   else check(tensors) if check is not None else None)
        if problem:
            self._discard(path, problem)
            return None
        return tensors

    def put_tensors(self, name: str, tensors: Mapping[str, torch.Tensor]) -> Path:
        from safetensors.torch import save_file

        data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        return self._atomic(name, lambda tmp: save_file(data, tmp))

    def get_json(self, name: str, check: Callable[[Any], str | None] | None = None) -> Any | None:
        """The JSON value of ``name``; None when absent or unusable (then it is removed, with a warning)."""
        path = self.path(name)
        if not path.is_file():
            return None
        try:
            value = json.loads(path.read_bytes().decode(), parse_constant=_reject_constant)
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
            self._discard(path, f"is not valid JSON ({' '.join(str(error).split())})")
            return None
        problem = check(value) if check is not None else None
        if problem:
            self._discard(path, problem)
            return None
        return value

    def put_json(self, name: str, value: Any) -> Path:
        return self._atomic(name, lambda tmp: Path(tmp).write_text(json.dumps(value, indent=1)))


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a finite number")


def finite_numbers(value: Any, names: Sequence[str] | None = None) -> str | None:
    """Why ``value`` is not a {name: finite number} mapping (covering ``names`` when given); None if it is."""
    if not isinstance(value, dict):
        return f"holds {type(value).__name__}, not an object"
    for key, number in value.items():
        if not isinstance(number, (int, float)) or isinstance(number, bool) or not math.isfinite(number):
            return f"holds {number!r} for {key!r}, not a finite number"
    missing = [n for n in names or () if n not in value]
    return f"misses {missing[0]!r} ({len(missing)} names)" if missing else None
