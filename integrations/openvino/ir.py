"""Read an int8 OpenVINO IR's linear weights back, by module name, and measure their sparsity.

After NNCF quantization and ``openvino.save_model`` every quantized linear is
``Constant(i8) → Convert → Multiply(scale) → MatMul``; optimum-intel's export names the MatMul
after the torch module (``__module.model.layers.3.mlp.up_proj/aten::linear/MatMul``), which
gives the module name back. The int8 array is laid out like the torch weight, (out, in).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from owl_plugin.profile import SparsityProfile

IR_NAME = "openvino_model.xml"
_MODULE = re.compile(r"^__module\.(?P<module>.+?)/aten::(linear|matmul|mm)")
_PASS_THROUGH = ("Convert", "Multiply", "Subtract", "Reshape", "Transpose")


@dataclass(frozen=True)
class IRWeight:
    """One int8 weight of the IR: its module name, shape and fraction of exact zeros."""

    module: str
    shape: tuple[int, ...]
    sparsity: float

    @property
    def row_length(self) -> int:
        return int(self.shape[-1])


def ir_path(folder: str | Path) -> Path:
    """``folder/openvino_model.xml`` (ValueError naming the folder when it is not an exported IR)."""
    path = Path(folder) / IR_NAME
    if not path.is_file():
        raise ValueError(f"{folder} holds no {IR_NAME}; export one with `owl export MODEL --format openvino -o DIR`")
    return path


def _consumer_matmul(node) -> Any | None:
    """Follow a weight constant through Convert / Multiply / ... to the MatMul it feeds."""
    for _ in range(6):
        targets = list(node.output(0).get_target_inputs())
        if len(targets) != 1:
            return None
        node = targets[0].get_node()
        if node.get_type_name() == "MatMul":
            return node
        if node.get_type_name() not in _PASS_THROUGH:
            return None
    return None


def int8_weights(model) -> Iterator[tuple[str, np.ndarray]]:
    """(module name, int8 array) for every int8 constant of ``model`` that feeds a named MatMul."""
    import openvino as ov

    for op in model.get_ops():
        if op.get_type_name() != "Constant" or op.get_element_type() != ov.Type.i8:
            continue
        matmul = _consumer_matmul(op)
        match = _MODULE.match(matmul.get_friendly_name()) if matmul is not None else None
        if match:
            yield match["module"], op.get_data()


def read_ir_weights(folder: str | Path) -> dict[str, IRWeight]:
    """Module name → ``IRWeight`` for every int8 linear weight of the IR in ``folder``."""
    import openvino as ov

    model = ov.Core().read_model(ir_path(folder))
    result = {}
    for module, data in int8_weights(model):
        result[module] = IRWeight(module, tuple(int(d) for d in data.shape),
                                  float(np.count_nonzero(data == 0)) / data.size)
    del model
    return dict(sorted(result.items(), key=lambda item: _natural_key(item[0])))


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


@dataclass(frozen=True)
class SparsityCheck:
    """IR sparsity vs the profile: per module |measured − allocated| and what is out of tolerance."""

    diffs: Mapping[str, float]
    problems: tuple[str, ...]
    missing: tuple[str, ...]
    tolerance: float

    @property
    def passed(self) -> bool:
        return not self.problems and not self.missing

    @property
    def max_abs_diff(self) -> float:
        return max((abs(d) for d in self.diffs.values()), default=0.0)


#: int8 rounding turns surviving weights below half a quantization step into extra zeros; a
#: per-channel symmetric scale (max|w| / 127) makes that a small fraction. Allowed on top of
#: the pruner's own one-weight-per-row slack.
QUANTIZATION_TOLERANCE = 0.02


def check_against_profile(
    weights: Mapping[str, IRWeight], profile: SparsityProfile, *, tolerance: float = QUANTIZATION_TOLERANCE
) -> SparsityCheck:
    """Every profile module must be an int8 weight of the IR with sparsity within tolerance.

    Allowed: ``allocated − 1/row ≤ measured ≤ allocated + 1/row + tolerance`` (fewer zeros than
    allocated means the export lost sparsity; a few more are int8 rounding).
    """
    diffs, problems, missing = {}, [], []
    for name, entry in profile.modules.items():
        weight = weights.get(name)
        if weight is None:
            missing.append(name)
            continue
        diff = weight.sparsity - entry.sparsity
        diffs[name] = diff
        slack = 1.0 / weight.row_length + 1e-9
        if diff < -slack or diff > slack + tolerance:
            problems.append(f"{name}: allocated {entry.sparsity:.4f}, int8 IR {weight.sparsity:.4f}")
    return SparsityCheck(diffs, tuple(problems), tuple(missing), tolerance)


def zeros_preserved(weights_ir: Mapping[str, np.ndarray], source: Mapping[str, Any]) -> dict[str, int]:
    """Module → number of source zeros that are non-zero in the IR (all 0 when quantization kept them)."""
    lost = {}
    for name, data in weights_ir.items():
        if name in source:
            reference = np.asarray(source[name])
            lost[name] = int(np.count_nonzero((reference == 0) & (data != 0)))
    return lost
