"""What an OpenVINO export quantizes (``--mode``) and the CPU compile properties it stores with the IR.

``weights`` (default): int8 weights, float activations. NNCF ``compress_weights`` (``INT8_SYM``),
data-free: per output channel ``s = max|w_row| / 127``, ``w_q = round(w / s)`` with no zero point,
so a pruned weight stays exactly 0; at run time the CPU plugin multiplies ``s · w_q`` with float
activations. Measured on SmolLM2-135M against transformers fp32 (8×512 WikiText-2 windows,
``examples/results/openvino_int8.md``): perplexity +0.17 % dense, +4.6 % OWL-Wanda 70 % (a fragile
model at perplexity 862), the same to the last digit on the AVX-512 and the AVX2 kernels.

``static``: int8 weights *and* activations (NNCF ``quantize``, ranges from calibration windows,
``quantize.py``). OpenVINO's sparse int8 kernels (``CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE``) need
int8 activations and a CPU with AMX, so this is the mode for AMX machines; it costs accuracy
(per-tensor activation ranges: perplexity +10.5 % dense / +14 % pruned calibrated on WikiText-2,
+27-29 % calibrated on pydoc; greedy text diverges within the first 3 tokens), which the export
measures and records.

Precision. The CPU plugin picks its numerics from the CPU unless told: ``INFERENCE_PRECISION_HINT``
defaults to bf16 where AVX512_BF16 or AMX exists (f32 elsewhere), the KV cache is stored as u8,
and weight-compressed linears quantize their activations to int8 on the fly in groups of 32
(``DYNAMIC_QUANTIZATION_GROUP_SIZE``). The same IR then gives different perplexities on
different machines. The export pins f32 activations and an f32 KV cache (``PRECISION``), so the
int8 weights (and, in ``static``, the calibrated activation ranges) are the only approximation,
whatever the CPU; a caller's explicit ``ov_config`` entries still win.
"""

from __future__ import annotations

from dataclasses import dataclass

from owl_plugin.integrations.openvino.sparse import RATE_KEY, check_rate


@dataclass(frozen=True)
class Mode:
    """One ``--mode``: what is int8, whether it needs calibration text, whether sparse kernels can run."""

    name: str
    weights: str
    activations: str
    calibrated: bool
    sparse_kernels: bool

    def describe(self) -> dict[str, object]:
        return {"mode": self.name, "weights": self.weights, "activations": self.activations,
                "calibrated": self.calibrated, "sparse_kernels": self.sparse_kernels}


WEIGHTS = Mode("weights", "int8 symmetric per output channel (NNCF compress_weights INT8_SYM, data-free)",
               "float (f32)", calibrated=False, sparse_kernels=False)
STATIC = Mode("static", "int8 symmetric per output channel (NNCF quantize, MIXED preset)",
              "int8 per tensor, static ranges from calibration windows", calibrated=True, sparse_kernels=True)
MODES = {mode.name: mode for mode in (WEIGHTS, STATIC)}
DEFAULT_MODE = WEIGHTS.name
MODE_HELP = ("weights (default): int8 weights, float activations, data-free, close to fp32; static: int8 weights "
             "and activations from calibration text, what OpenVINO's sparse int8 kernels need (CPUs with AMX), "
             "less accurate")

#: compile properties every export stores: f32 activations and KV cache on every CPU (see the module docstring)
PRECISION = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}
#: weight-only int8 keeps its activations float (no on-the-fly int8 activation groups)
NO_DYNAMIC_QUANTIZATION = {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}


def mode_of(name: str) -> Mode:
    """The ``Mode`` called ``name`` (ValueError naming the choices)."""
    if name not in MODES:
        raise ValueError(f"OpenVINO export mode {name!r} is not one of {', '.join(MODES)} "
                         "(weights: int8 weights only; static: int8 weights and activations, for AMX sparse kernels)")
    return MODES[name]


def _precision(value: str) -> bool:
    return value in ("f32", "bf16", "f16")


def _group_size(value: str) -> bool:
    return value.isdigit() and int(value) <= 1 << 16


def _rate(value: str) -> bool:
    try:
        return 0.0 < float(value) <= 1.0
    except ValueError:
        return False


#: the only compile properties a stored ``ov_config`` may set (what ``compile_properties`` writes), each with
#: its accepted values; a folder's ``owl_openvino.json`` cannot reach any other OpenVINO property (cache
#: folders, mmap, threads, plugins...), whoever wrote it
STORED_PROPERTIES = {
    "INFERENCE_PRECISION_HINT": (_precision, "f32, bf16 or f16"),
    "KV_CACHE_PRECISION": (_precision, "f32, bf16 or f16"),
    "DYNAMIC_QUANTIZATION_GROUP_SIZE": (_group_size, "a whole number of at most 65536"),
    RATE_KEY: (_rate, "a fraction in (0, 1]"),
}


def check_stored_properties(config: object, where: str) -> dict[str, str]:
    """``config`` (a stored ``ov_config``) if every key is in ``STORED_PROPERTIES`` with an accepted value;
    else a ValueError naming ``where``, the key and the value."""
    if not isinstance(config, dict):
        raise ValueError(f"{where}: ov_config must be an object of compile properties, not {type(config).__name__}")
    for key, value in config.items():
        if key not in STORED_PROPERTIES:
            raise ValueError(f"{where}: {key!r} is not a compile property owl-plugin writes (it may set only "
                             f"{', '.join(STORED_PROPERTIES)}); refusing to apply the folder's ov_config")
        accepts, expected = STORED_PROPERTIES[key]
        if not isinstance(value, str) or not accepts(value):
            raise ValueError(f"{where}: {key}={value!r} is not {expected}; refusing to apply the folder's ov_config")
    return dict(config)


def compile_properties(mode: Mode, rate: float) -> dict[str, str]:
    """The CPU properties stored in ``owl_openvino.json`` for ``mode``: the precision pins, plus the
    sparse-kernel rate in ``static`` mode (the only mode whose int8 x int8 linears can use it)."""
    config = dict(PRECISION)
    if mode.sparse_kernels:
        config[RATE_KEY] = f"{check_rate(rate):g}"
    else:
        config.update(NO_DYNAMIC_QUANTIZATION)
    return config
