"""``OwlSparseLinear``: an ``nn.Linear`` replacement that keeps its weight packed for the sparse kernels.

After ``from_pretrained`` has loaded (and decompressed) a compact checkpoint, the quantizer swaps every
module of ``quantization_config.compressed_modules`` for an :class:`OwlSparseLinear` built by
:meth:`OwlSparseLinear.from_linear`: the dense weight is packed with ``owl_plugin.kernels.pack_dense``
and dropped, and ``forward`` computes ``y = x W^T (+ b)`` with ``owl_plugin.kernels.sparse_linear``.

Saving: :meth:`_save_to_state_dict` writes the dense ``weight`` again (unpacked exactly by
``owl_plugin.kernels.decompress_rows``), so ``state_dict()`` and ``save_pretrained`` give an
ordinary dense checkpoint, bit-identical to the one that was exported. Loading a state dict into an
:class:`OwlSparseLinear` is refused (load the checkpoint with ``from_pretrained`` instead).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

class OwlSparseLinear(nn.Module):
    """A linear layer whose weight is held only in the kernel's packed layout.

    Args:
        packed: ``owl_plugin.kernels.PackedLinear`` of the weight (``out_features x in_features``).
        bias: the bias (``out_features``) or None.
    """

    def __init__(self, packed: Any, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.in_features = packed.in_features
        self.out_features = packed.out_features
        self.packed = packed
        self._packed_names = []
        for name, tensor in packed.tensors.items():
            self.register_buffer(f"packed_{name}", tensor, persistent=False)  # moves/counts with the module
            self._packed_names.append(name)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> OwlSparseLinear:
        """Pack ``linear.weight`` (zeros are skipped) and keep ``linear.bias``."""
        from owl_plugin.kernels import pack_dense

        return cls(pack_dense(linear.weight.detach()), linear.bias)

    @property
    def dtype(self) -> torch.dtype:
        return self.packed.dtype

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 - nn.Module's signature
        """``model.to(dtype)`` / ``.half()`` / ``.bfloat16()`` convert the buffers; the packed layout the kernel
        reads is rebuilt from them (without this it kept the old tensors: a dtype error in forward, and both
        copies resident)."""
        module = super()._apply(fn, recurse)
        self.packed = self.packed.with_tensors({name: getattr(self, f"packed_{name}") for name in self._packed_names})
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from owl_plugin.kernels import sparse_linear

        return sparse_linear(x.contiguous(), self.packed, self.bias)  # no copy when already contiguous

    def dense_weight(self) -> torch.Tensor:
        """The dense ``out_features x in_features`` weight, rebuilt exactly from the packed one."""
        from owl_plugin.kernels import decompress_rows

        return decompress_rows(self.packed)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        destination[prefix + "weight"] = self.dense_weight()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"{prefix or 'OwlSparseLinear'}: loading a state dict into a packed sparse linear layer "
                           "is not supported; load the checkpoint with from_pretrained (or set OWL_SPARSE_DENSE=1)")

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"packed={self.packed.nbytes()} bytes")
