"""Export a pruned checkpoint to an int8 OpenVINO IR whose sparse weights run sparse kernels.

    python -m owl_plugin.integrations.openvino.export PRUNED_DIR --output DIR
        [--calibration pydoc|FILE] [--num-samples 64] [--seq-len 128] [--sparse-rate 0.5]

(``owl export PRUNED_DIR --format openvino --output DIR`` runs this in ``.venv-openvino``.)

Steps: optimum-intel converts the checkpoint to a stateful IR (KV cache inside); NNCF quantizes
it to int8 weights (symmetric, so pruned zeros stay zero) and int8 activations, attention
excluded (``quantize.py``); the IR is saved in a hidden staging folder with the tokenizer,
``sparsity_profile.json`` and ``owl_openvino.json``, which holds the CPU plugin properties that
turn sparse-weight decompression on (``{"ov_config": {"CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE":
"0.5"}}``). Then it is verified — every int8 weight is read back: no pruned zero became non-zero,
the sparsity per module matches the profile (``ir.py``), and the IR compiles with the sparse
setting — and only then published with an atomic rename (``owl_plugin.staging``).

Loading: ``OVModelForCausalLM.from_pretrained(DIR)`` reads no compile properties from the folder
(``ov_config`` is a keyword argument only, and the OpenVINO core ignores this key in the IR's
``runtime_options``), so owl-plugin's start-up hook wraps ``from_pretrained`` to pass the stored
``ov_config`` (explicit ``ov_config`` entries win); ``load(DIR)`` does the same explicitly.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from owl_plugin.profile import PROFILE_FILENAME, SparsityProfile
from owl_plugin.text import BOS_CHOICES, BOS_HELP, PYDOC

from owl_plugin.integrations.openvino.sparse import DEFAULT_RATE, RATE_KEY, check_rate, ov_config

logger = logging.getLogger(__name__)

SETTINGS_NAME = "owl_openvino.json"
SETTINGS_FORMAT = "owl-plugin/openvino"


def read_settings(folder: str | Path) -> dict[str, Any] | None:
    """The folder's ``owl_openvino.json`` (None when absent: not an owl-plugin export)."""
    path = Path(folder) / SETTINGS_NAME
    if not path.is_file():
        return None
    settings = json.loads(path.read_text())
    if settings.get("format") != SETTINGS_FORMAT:
        raise ValueError(f"{path}: format={settings.get('format')!r}, expected {SETTINGS_FORMAT!r}")
    return settings


def stored_ov_config(folder: str | Path) -> dict[str, str]:
    """The compile properties stored with an export (``{}`` for other folders)."""
    settings = read_settings(folder)
    return dict(settings.get("ov_config", {})) if settings else {}


def load(folder: str | Path, *, ov_config: dict[str, str] | None = None, **kwargs):
    """``OVModelForCausalLM.from_pretrained(folder)`` with the stored sparse setting (``ov_config`` wins)."""
    from optimum.intel import OVModelForCausalLM

    config = {**stored_ov_config(folder), **(ov_config or {})}
    return OVModelForCausalLM.from_pretrained(str(folder), ov_config=config, **kwargs)


def _calibration_windows(source: str, tokenizer, *, num_samples: int, seq_len: int, seed: int, bos: str = "auto"):
    """(windows, protocol): the core's calibration windows, starting with BOS as ``bos`` resolves
    (``owl_plugin.text.window_protocol``)."""
    from owl_plugin.text import calibration_batches, load_text, tokenize, window_protocol

    protocol = window_protocol(tokenizer, bos)
    logger.info("%s", protocol.describe())
    ids = tokenize(tokenizer, load_text(source))
    return calibration_batches(ids, num_samples=num_samples, seq_len=seq_len, seed=seed,
                               bos_token_id=protocol.bos_token_id), protocol


def _source_weights(source: Path, modules: Sequence[str]) -> dict[str, Any]:
    """The source checkpoint's float weights of ``modules`` (numpy), read tensor by tensor."""
    from safetensors import safe_open

    wanted = {f"{m}.weight": m for m in modules}
    result = {}
    for shard in sorted(source.glob("*.safetensors")):
        with safe_open(shard, framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                if key in wanted:
                    result[wanted[key]] = handle.get_tensor(key).float().numpy()
    return result


def verify_export(folder: Path, source: Path, profile: SparsityProfile | None, *, rate: float) -> dict[str, Any]:
    """Read the written IR back and check it (ValueError naming the first problem).

    Checks: int8 weights exist; no zero of the source weight is non-zero in the IR; with a
    profile, every profile module's sparsity is within tolerance (``ir.check_against_profile``).
    Returns a summary (per-module IR sparsity, counts) for ``owl_openvino.json``.
    """
    import openvino as ov

    from owl_plugin.integrations.openvino.ir import check_against_profile, int8_weights, ir_path, read_ir_weights

    weights = read_ir_weights(folder)
    if not weights:
        raise ValueError(f"{folder}: the exported IR has no int8 linear weights; the quantization did not apply")
    model = ov.Core().read_model(ir_path(folder))
    arrays = {name: data for name, data in int8_weights(model)}
    source_weights = _source_weights(source, list(profile.modules) if profile else list(arrays))
    lost = {name: int(((source_weights[name] == 0) & (arrays[name] != 0)).sum())
            for name in arrays if name in source_weights}
    del model, arrays
    broken = {name: n for name, n in lost.items() if n}
    if broken:
        name = next(iter(broken))
        raise ValueError(f"{folder}: {broken[name]} pruned weights of {name} are non-zero in the int8 IR "
                         f"(and {len(broken) - 1} more modules); the quantization must be symmetric")
    summary: dict[str, Any] = {
        "int8_linears": len(weights), "zeros_checked_modules": len(lost),
        "sparsity": {name: round(w.sparsity, 6) for name, w in weights.items()},
        "modules_at_or_above_rate": sum(w.sparsity >= rate for w in weights.values()),
    }
    if profile is not None:
        check = check_against_profile(weights, profile)
        if not check.passed:
            what = (check.missing and f"modules missing from the IR: {list(check.missing)[:3]}") or check.problems[0]
            raise ValueError(f"{folder}: the int8 IR does not carry the profile's sparsity: {what}")
        summary["profile_max_abs_diff"] = round(check.max_abs_diff, 6)
        summary["profile_tolerance"] = check.tolerance
    return summary


def export_openvino(
    source: str | Path,
    output: str | Path,
    *,
    calibration: str | None = None,
    num_samples: int = 64,
    seq_len: int = 128,
    seed: int = 0,
    sparse_rate: float = DEFAULT_RATE,
    profile: str | Path | None = None,
    overwrite: bool = False,
    torch_dtype: Any = None,
    bos: str = "auto",
) -> dict[str, Any]:
    """Export ``source`` (a transformers checkpoint folder) as an int8 IR into ``output`` (atomic).

    Args:
        source: the pruned (or dense) checkpoint folder.
        output: the folder to create.
        calibration: activation-range text (file or ``"pydoc"``); default ``"pydoc"`` (Python's own
            documentation), disjoint from the WikiText-2 text perplexity is measured on.
        num_samples: calibration windows.
        seq_len: tokens per window.
        seed: window sampling seed.
        bos: auto | on | off, whether calibration windows start with BOS (``owl_plugin.text.window_protocol``).
        sparse_rate: weights with at least this fraction of zeros run the sparse kernels.
        profile: sparsity profile JSON (default ``source/sparsity_profile.json`` if present).
        overwrite: replace an existing ``output``.
        torch_dtype: dtype the checkpoint is loaded in for the conversion (default float32). With
            bfloat16 / float16 (half the memory) NNCF's int8 weights were not folded into int8
            constants on OpenVINO 2026.4 / NNCF 3.4, and the read-back refuses the export.

    Returns:
        The contents written to ``owl_openvino.json``.
    """
    from optimum.intel import OVModelForCausalLM
    from transformers import AutoTokenizer

    from owl_plugin.staging import publish, staged_folder

    from owl_plugin.integrations.openvino.quantize import quantize_int8

    started = time.perf_counter()
    source = Path(source).absolute()
    output = Path(output).absolute()
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"{source} is not a checkpoint folder (no config.json)")
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; pass --overwrite to replace it")
    rate = check_rate(sparse_rate)
    profile_path = Path(profile) if profile else source / PROFILE_FILENAME
    sparsity_profile = SparsityProfile.load(profile_path) if profile_path.is_file() else None
    if profile and sparsity_profile is None:
        raise FileNotFoundError(f"sparsity profile {profile} does not exist")
    calibration = str(calibration or PYDOC)

    tokenizer = AutoTokenizer.from_pretrained(source)
    windows, protocol = _calibration_windows(calibration, tokenizer, num_samples=num_samples, seq_len=seq_len,
                                             seed=seed, bos=bos)
    logger.info("converting %s to OpenVINO (stateful, float)", source)
    dtype_option = {"torch_dtype": torch_dtype} if torch_dtype else {}
    ov_model = OVModelForCausalLM.from_pretrained(str(source), export=True, load_in_8bit=False, compile=False,
                                                  stateful=True, **dtype_option)
    converted = time.perf_counter()
    ov_model.model = quantize_int8(ov_model.model, windows)
    quantized = time.perf_counter()
    config = ov_config(rate)
    for key, value in config.items():  # documented in the IR too (the core applies only some runtime_options)
        ov_model.model.set_rt_info(value, ["runtime_options", key])
    settings: dict[str, Any] = {
        "format": SETTINGS_FORMAT, "version": 1, "ov_config": config,
        "source": str(source),
        "quantization": {"weights": "int8 symmetric per output channel", "activations": "int8 per tensor (NNCF MIXED)",
                         "not_quantized": ["ScaledDotProductAttention"]},
        "calibration": {"source": calibration, "num_samples": num_samples, "seq_len": seq_len, "seed": seed,
                        "windows": protocol.as_dict()},
    }
    with staged_folder(output) as staging:
        ov_model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if sparsity_profile is not None:
            shutil.copyfile(profile_path, staging / PROFILE_FILENAME)
        settings["verification"] = verify_export(staging, source, sparsity_profile, rate=rate)
        settings["seconds"] = {"convert": round(converted - started, 1), "quantize": round(quantized - converted, 1),
                               "total": round(time.perf_counter() - started, 1)}
        (staging / SETTINGS_NAME).write_text(json.dumps(settings, indent=2) + "\n")
        publish(staging, output, overwrite=overwrite)
    return settings


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m owl_plugin.integrations.openvino.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", metavar="PRUNED_DIR", help="checkpoint folder (pruned, with sparsity_profile.json)")
    parser.add_argument("--output", "-o", required=True, help="IR folder to create (atomically)")
    parser.add_argument("--calibration", default=None, metavar="SOURCE",
                        help="local .txt/.json/.jsonl or 'pydoc' (default: pydoc, disjoint from the evaluation text)")
    parser.add_argument("--num-samples", type=int, default=64, help="calibration windows (default 64)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per window (default 128)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bos", choices=BOS_CHOICES, default="auto", help=BOS_HELP)
    parser.add_argument("--sparse-rate", type=float, default=DEFAULT_RATE,
                        help=f"{RATE_KEY}: weights with at least this fraction of zeros use the sparse kernels "
                             f"(default {DEFAULT_RATE}; 1 = off)")
    parser.add_argument("--profile", default=None, help="sparsity profile JSON (default: PRUNED_DIR's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = export_openvino(args.source, args.output, calibration=args.calibration,
                                   num_samples=args.num_samples, seq_len=args.seq_len, seed=args.seed,
                                   sparse_rate=args.sparse_rate, profile=args.profile, overwrite=args.overwrite,
                                   bos=args.bos)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"owl export --format openvino: error: {error}", file=sys.stderr)
        return 2
    check = settings["verification"]
    print(f"wrote {Path(args.output).absolute()}: {check['int8_linears']} int8 linears, "
          f"{check['modules_at_or_above_rate']} at or above the sparse rate {settings['ov_config'][RATE_KEY]}"
          + (f", max |IR - profile| sparsity {check['profile_max_abs_diff']:.4f}" if "profile_max_abs_diff" in check
             else "") + f" ({settings['seconds']['total']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
