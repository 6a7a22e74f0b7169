"""int8 quantization of an OpenVINO causal LM with NNCF: weights only, or weights and activations.

``compress_int8_weights`` (the export's default ``--mode weights``): NNCF ``compress_weights``
with ``INT8_SYM``, data-free. Per output channel ``s = max|w_row| / 127``, ``w_q = round(w / s)``,
no zero point, so a pruned weight (0) stays exactly 0; activations stay float.

``quantize_int8`` (``--mode static``): the CPU plugin's sparse kernels multiply int8 activations by
int8 weights, so both are quantized:

* weights: per output channel, symmetric, as above;
* activations: per tensor, ranges from calibration windows of local text (NNCF's ``MIXED``
  preset: asymmetric activations, symmetric weights; ``ModelType.TRANSFORMER``, which smooths
  activation outliers into the weights first, SmoothQuant arXiv 2211.10438, alpha 0.95).

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


def compress_int8_weights(model):
    """``model`` (an ``openvino.Model``; NNCF may change it in place) with int8 weights (symmetric per
    output channel, no zero point) and float activations; needs no data. ``openvino.save_model`` stores
    the weights as int8 constants (``Constant(i8) -> Convert -> Multiply(scale) -> MatMul``, what
    ``ir.py`` reads)."""
    import nncf

    logger.info("compressing weights to int8 (symmetric per output channel; activations stay float)")
    return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_SYM)


def quantize_int8(model, windows: Sequence[Any], *, smooth_quant_alpha: float | None = None,
                  float_modules: Sequence[str] = ()):
    """An int8 (weights and activations) copy of ``model`` (an ``openvino.Model``), attention excluded.

    Args:
        model: the float OpenVINO model (e.g. ``OVModelForCausalLM(...).model`` before compiling).
        windows: calibration token windows, each (1, L); all of them are used (``subset_size``).
        smooth_quant_alpha: SmoothQuant's migration strength for the linears (NNCF's transformer
            default, 0.95, when None; a negative value turns SmoothQuant off).
        float_modules: regular expressions over module names (e.g. ``"mlp[.]down_proj"``) whose
            linears stay float (weights and activations), for the most sensitive ones.

    Returns:
        The quantized ``openvino.Model`` (FakeQuantize on weights; ``openvino.save_model`` stores
        those weights as int8 constants).
    """
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedSmoothQuantParameters

    if not windows:
        raise ValueError("int8 quantization needs at least one calibration window; pass --num-samples >= 1")
    names = input_names(model)
    missing = [n for n in ("input_ids", "attention_mask") if n not in names]
    if missing:
        raise ValueError(f"the OpenVINO model has inputs {names}; expected a causal LM with {missing} too")
    dataset = nncf.Dataset(list(calibration_inputs(windows, names)))
    present = {op.get_type_name() for op in model.get_ops()}
    ignored = [kind for kind in IGNORED_TYPES if kind in present]
    patterns = [rf"__module\..*{pattern}.*" for pattern in float_modules]
    logger.info("quantizing to int8 (weights symmetric per channel, activations per tensor) on %d windows; "
                "not quantized: %s", len(windows), [*ignored, *float_modules] or "nothing")
    advanced = {"disable_bias_correction": True}
    if smooth_quant_alpha is not None:
        advanced["smooth_quant_alphas"] = AdvancedSmoothQuantParameters(matmul=smooth_quant_alpha)
    return nncf.quantize(
        model, dataset, preset=nncf.QuantizationPreset.MIXED, model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(windows), ignored_scope=nncf.IgnoredScope(types=ignored, patterns=patterns, validate=False),
        advanced_parameters=nncf.AdvancedQuantizationParameters(**advanced),
    )
