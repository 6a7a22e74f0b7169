"""int8 weights and activations for an OpenVINO causal LM (NNCF post-training quantization).

The CPU plugin's sparse kernels multiply int8 activations by int8 weights, so both are quantized:

* weights: per output channel, symmetric, ``w_q = round(w / s)`` with ``s = max|w_row| / 127`` and
  no zero point, so a pruned weight (0) stays exactly 0 and the sparsity survives quantization;
* activations: per tensor, ranges from calibration windows of local text (NNCF's ``MIXED``
  preset: asymmetric activations, symmetric weights; ``ModelType.TRANSFORMER``).

Attention stays out of the scope: NNCF's transformer default also quantizes the inputs of
``ScaledDotProductAttention``, which splits the CPU plugin's fused (stateful) attention node
and made decoding 1.75x slower on SmolLM2-135M. The nodes stay float; only the linears change.

Calibration of the stateful export (KV cache inside the model) feeds whole windows:
``input_ids``, ``attention_mask`` (ones), ``position_ids`` (0..L-1), ``beam_idx`` (0); the
model's state is reset before every window.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: op types that stay unquantized (their inputs keep float precision)
IGNORED_TYPES = ("ScaledDotProductAttention",)


def calibration_inputs(
    windows: Sequence[Any], input_names: Sequence[str]
) -> Iterator[dict[str, np.ndarray]]:
    """One feed dict per calibration window (a (1, L) token tensor or array) for a stateful LM."""
    for window in windows:
        ids = np.asarray(window, dtype=np.int64).reshape(1, -1)
        length = ids.shape[1]
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                "position_ids": np.arange(length, dtype=np.int64)[None, :], "beam_idx": np.zeros(1, dtype=np.int32)}
        yield {name: feed[name] for name in input_names if name in feed}


def input_names(model) -> list[str]:
    """The named inputs of an ``openvino.Model`` (e.g. input_ids, attention_mask, position_ids, beam_idx)."""
    return [port.get_any_name() for port in model.inputs]


def quantize_int8(model, windows: Sequence[Any]):
    """An int8 (weights and activations) copy of ``model`` (an ``openvino.Model``), attention excluded.

    Args:
        model: the float OpenVINO model (e.g. ``OVModelForCausalLM(...).model`` before compiling).
        windows: calibration token windows, each (1, L); all of them are used (``subset_size``).

    Returns:
        The quantized ``openvino.Model`` (FakeQuantize on weights; ``openvino.save_model`` stores
        those weights as int8 constants).
    """
    import nncf

    if not windows:
        raise ValueError("int8 quantization needs at least one calibration window; pass --num-samples >= 1")
    names = input_names(model)
    missing = [n for n in ("input_ids", "attention_mask") if n not in names]
    if missing:
        raise ValueError(f"the OpenVINO model has inputs {names}; expected a causal LM with {missing} too")
    dataset = nncf.Dataset(list(calibration_inputs(windows, names)))
    present = {op.get_type_name() for op in model.get_ops()}
    ignored = [kind for kind in IGNORED_TYPES if kind in present]
    logger.info("quantizing to int8 (weights symmetric per channel, activations per tensor) on %d windows; "
                "not quantized: %s", len(windows), ignored or "nothing")
    return nncf.quantize(
        model, dataset, preset=nncf.QuantizationPreset.MIXED, model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(windows), ignored_scope=nncf.IgnoredScope(types=ignored, validate=False),
        advanced_parameters=nncf.AdvancedQuantizationParameters(disable_bias_correction=True),
    )
