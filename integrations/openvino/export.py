"""Export a (pruned) checkpoint to an int8 OpenVINO IR, verified weight by weight.

    python -m owl_plugin.integrations.openvino.export PRUNED_DIR --output DIR [--mode weights|static]
        [--calibration SOURCE] [--num-samples 64] [--seq-len 128] [--sparse-rate 0.5] [--check-windows 4]

(``owl export --format openvino`` runs this in ``.venv-openvino``.)

Steps: optimum-intel converts the checkpoint to a stateful IR (KV cache inside); NNCF quantizes it
(``modes.py``): ``--mode weights`` (default) makes the weights int8 and keeps activations float
(data-free; SmolLM2-135M: +0.2 % perplexity dense, +4.6 % at 70 %); ``--mode static`` makes
weights and activations int8 (calibrated; what OpenVINO's sparse int8 kernels need, on CPUs with
AMX). Both keep every pruned zero exactly zero (symmetric weights). The export then measures what
the quantization cost:
perplexity of the float IR and of the int8 IR on ``--check-windows`` windows of evaluation text
(WikiText-2 validation when present, else pydoc; disjoint from the calibration windows), both
compiled with the stored properties. The IR is saved in a hidden staging folder with the
tokenizer, ``sparsity_profile.json`` and ``owl_openvino.json`` (mode, compile properties,
calibration, the measured gap), verified (every int8 weight read back: no pruned zero became
non-zero, the sparsity per module matches the profile, ``ir.py``) and only then published with
an atomic rename (``owl_plugin.staging``).

Compile properties (``owl_openvino.json`` ``ov_config``): f32 activations and KV cache on every
CPU (``modes.PRECISION``), and in ``static`` mode ``CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE``.
``OVModelForCausalLM.from_pretrained(DIR)`` reads no compile properties from the folder
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

from owl_plugin.integrations.openvino.ir import IR_NAME
from owl_plugin.integrations.openvino.modes import (
    DEFAULT_MODE,
    MODE_HELP,
    MODES,
    check_stored_properties,
    compile_properties,
    mode_of,
)
from owl_plugin.integrations.openvino.sparse import DEFAULT_RATE, RATE_KEY, check_rate

logger = logging.getLogger(__name__)

SETTINGS_NAME = "owl_openvino.json"
SETTINGS_FORMAT = "owl-plugin/openvino"
CHECK_WINDOWS = 4  # evaluation windows the export scores, float IR vs int8 IR
CHECK_SEQ_LEN = 512


def read_settings(folder: str | Path) -> dict[str, Any] | None:
    """The folder's ``owl_openvino.json`` (None when absent: not an owl-plugin export).

    Refused (ValueError naming the file): a symbolic link (settings must live in the IR's own folder),
    a file that is not JSON, another ``format``, or an ``ov_config`` setting anything but the properties
    owl-plugin writes (``modes.STORED_PROPERTIES``).
    """
    path = Path(folder) / SETTINGS_NAME
    if path.is_symlink():
        raise ValueError(f"{path} is a symbolic link; compile properties are read only from the IR's own folder")
    if not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); re-export the IR") from None
    if not isinstance(settings, dict) or settings.get("format") != SETTINGS_FORMAT:
        found = settings.get("format") if isinstance(settings, dict) else type(settings).__name__
        raise ValueError(f"{path}: format={found!r}, expected {SETTINGS_FORMAT!r}")
    if "ov_config" in settings:
        settings["ov_config"] = check_stored_properties(settings["ov_config"], str(path))
    return settings


def stored_ov_config(folder: str | Path, ir_name: str = IR_NAME) -> dict[str, str]:
    """The compile properties stored with an export: only from a folder holding the IR ``ir_name``
    (``{}`` for other folders), only the properties owl-plugin writes (ValueError otherwise)."""
    if not (Path(folder) / ir_name).is_file():
        return {}
    settings = read_settings(folder)
    return dict(settings.get("ov_config", {})) if settings else {}


def load(folder: str | Path, *, ov_config: dict[str, str] | None = None, **kwargs):
    """``OVModelForCausalLM.from_pretrained(folder)`` with the stored sparse setting (``ov_config`` wins)."""
    from optimum.intel import OVModelForCausalLM

    config = {**stored_ov_config(folder), **(ov_config or {})}
    return OVModelForCausalLM.from_pretrained(str(folder), ov_config=config, **kwargs)


def check_text() -> str:
    """The text the export scores float vs int8 on: WikiText-2 validation (``owl_plugin.paths``) when
    present, else ``pydoc``."""
    from owl_plugin.paths import default_eval_text

    try:
        return str(default_eval_text())
    except FileNotFoundError:
        return PYDOC


def default_calibration(profile: SparsityProfile | None) -> tuple[str, str]:
    """(source, why) of the static mode's calibration text: the text the pruning calibrated on, when the
    profile records a local file (or pydoc) that is still readable; else ``pydoc``."""
    recorded = (profile.params.get("calibration") or {}).get("source") if profile is not None else None
    if recorded == PYDOC or (recorded and Path(str(recorded)).is_file()):
        return str(recorded), "the pruning's calibration text (sparsity_profile.json)"
    why = f"the pruning's text {recorded!r} is not a local file" if recorded else "no calibration text in the profile"
    return PYDOC, f"pydoc ({why})"


def _split_text(source: str, tokenizer, *, check: str, check_tokens: int):
    """(calibration ids, check ids) as token tensors. When both come from the same text, the check
    takes its first ``check_tokens`` tokens and the calibration only what follows, so the two are disjoint."""
    from owl_plugin.text import load_text, tokenize

    check_ids = tokenize(tokenizer, load_text(check))
    if Path(source).absolute() == Path(check).absolute() or source == check:
        if check_ids.numel() <= 2 * check_tokens:
            raise ValueError(f"{source} has {check_ids.numel()} tokens; calibrating on it beside {check_tokens} "
                             "check tokens needs twice as many; pass --calibration with other text")
        return check_ids[check_tokens:], check_ids
    return tokenize(tokenizer, load_text(source)), check_ids


def ov_perplexity(model, token_ids, config: dict[str, str], *, windows: int, bos_token_id: int | None) -> float:
    """Perplexity of ``model`` (an ``openvino.Model``, compiled with ``config``) on the first ``windows``
    windows of ``CHECK_SEQ_LEN`` tokens of ``token_ids`` (``owl_plugin.text.evaluation_windows``)."""
    from owl_plugin.integrations.openvino.engine import StatefulLM

    lm = StatefulLM(model, config)
    try:
        return lm.perplexity(token_ids, seq_len=CHECK_SEQ_LEN, windows=windows, bos_token_id=bos_token_id)
    finally:
        del lm


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
    mode: str = DEFAULT_MODE,
    calibration: str | None = None,
    num_samples: int = 64,
    seq_len: int = 128,
    seed: int = 0,
    sparse_rate: float = DEFAULT_RATE,
    profile: str | Path | None = None,
    overwrite: bool = False,
    torch_dtype: Any = None,
    bos: str = "auto",
    check_windows: int = CHECK_WINDOWS,
) -> dict[str, Any]:
    """Export ``source`` (a transformers checkpoint folder) as an int8 IR into ``output`` (atomic).

    Args:
        source: the pruned (or dense) checkpoint folder.
        output: the folder to create.
        mode: ``weights`` (int8 weights, float activations, data-free) or ``static`` (int8 weights and
            activations, calibrated; for OpenVINO's sparse kernels on AMX CPUs); see ``modes.py``.
        calibration: ``static`` only: activation-range text (file or ``"pydoc"``); default the text the
            pruning calibrated on (recorded in the profile) when it is a readable file, else pydoc.
            Windows of it never overlap the check windows.
        num_samples: ``static`` calibration windows.
        seq_len: tokens per calibration window.
        seed: window sampling seed.
        bos: auto | on | off, whether windows start with BOS (``owl_plugin.text.window_protocol``).
        sparse_rate: ``static`` only: weights with at least this fraction of zeros run the sparse kernels.
        profile: sparsity profile JSON (default ``source/sparsity_profile.json`` if present).
        overwrite: replace an existing ``output``.
        torch_dtype: dtype the checkpoint is loaded in for the conversion (default float32). With
            bfloat16 / float16 (half the memory) NNCF's int8 weights were not folded into int8
            constants on OpenVINO 2026.4 / NNCF 3.4, and the read-back refuses the export.
        check_windows: windows of ``check_text()`` on which the float and the int8 IR are scored
            (``accuracy`` in ``owl_openvino.json``); 0 skips the check.

    Returns:
        The contents written to ``owl_openvino.json``.
    """
    from optimum.intel import OVModelForCausalLM
    from transformers import AutoTokenizer

    from owl_plugin.staging import publish, staged_folder
    from owl_plugin.text import calibration_batches, window_protocol

    from owl_plugin.integrations.openvino.quantize import compress_int8_weights, quantize_int8

    started = time.perf_counter()
    chosen = mode_of(mode)
    source = Path(source).absolute()
    output = Path(output).absolute()
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"{source} is not a checkpoint folder (no config.json)")
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; pass --overwrite to replace it")
    if calibration and not chosen.calibrated:
        raise ValueError(f"--calibration {calibration} applies to --mode static; --mode {chosen.name} needs no data")
    if check_windows < 0:
        raise ValueError(f"check_windows={check_windows!r} must be >= 0 (0 skips the float-vs-int8 check)")
    rate = check_rate(sparse_rate)
    profile_path = Path(profile) if profile else source / PROFILE_FILENAME
    sparsity_profile = SparsityProfile.load(profile_path) if profile_path.is_file() else None
    if profile and sparsity_profile is None:
        raise FileNotFoundError(f"sparsity profile {profile} does not exist")
    config = compile_properties(chosen, rate)

    tokenizer = AutoTokenizer.from_pretrained(source)
    protocol = window_protocol(tokenizer, bos)
    logger.info("%s", protocol.describe())
    text = check_text()
    calibration_settings: dict[str, Any] | None = None
    if chosen.calibrated:
        why = "--calibration"
        if not calibration:
            calibration, why = default_calibration(sparsity_profile)
        calibration_ids, check_ids = _split_text(str(calibration), tokenizer, check=text,
                                                 check_tokens=check_windows * CHECK_SEQ_LEN)
        windows = calibration_batches(calibration_ids, num_samples=num_samples, seq_len=seq_len, seed=seed,
                                      bos_token_id=protocol.bos_token_id)
        calibration_settings = {"source": str(calibration), "chosen_by": why, "num_samples": num_samples,
                                "seq_len": seq_len, "seed": seed, "windows": protocol.as_dict(),
                                "disjoint_from_check": "other text" if str(calibration) != text else
                                f"tokens after the first {check_windows * CHECK_SEQ_LEN} (the check's)"}
    else:
        from owl_plugin.text import load_text, tokenize

        check_ids = tokenize(tokenizer, load_text(text)) if check_windows else None

    logger.info("converting %s to OpenVINO (stateful, float)", source)
    dtype_option = {"torch_dtype": torch_dtype} if torch_dtype else {}
    ov_model = OVModelForCausalLM.from_pretrained(str(source), export=True, load_in_8bit=False, compile=False,
                                                  stateful=True, **dtype_option)
    converted = time.perf_counter()
    accuracy: dict[str, Any] | None = None
    if check_windows:
        accuracy = {"text": text, "windows": check_windows, "seq_len": CHECK_SEQ_LEN,
                    "window_protocol": protocol.as_dict(), "compile_properties": config,
                    "ppl_float": ov_perplexity(ov_model.model, check_ids.numpy(), config, windows=check_windows,
                                               bos_token_id=protocol.bos_token_id)}
    checked_float = time.perf_counter()
    if chosen.calibrated:
        ov_model.model = quantize_int8(ov_model.model, windows)
    else:
        ov_model.model = compress_int8_weights(ov_model.model)
    quantized = time.perf_counter()
    if accuracy is not None:
        accuracy["ppl_int8"] = ov_perplexity(ov_model.model, check_ids.numpy(), config, windows=check_windows,
                                             bos_token_id=protocol.bos_token_id)
        accuracy["rel_gap"] = accuracy["ppl_int8"] / accuracy["ppl_float"] - 1.0
        logger.info("int8 (%s) vs float perplexity on %d windows of %s: %.4f vs %.4f (%+.2f %%)", chosen.name,
                    check_windows, text, accuracy["ppl_int8"], accuracy["ppl_float"], 100 * accuracy["rel_gap"])
    checked_int8 = time.perf_counter()
    for key, value in config.items():  # documented in the IR too (the core applies only some runtime_options)
        ov_model.model.set_rt_info(value, ["runtime_options", key])
    settings: dict[str, Any] = {
        "format": SETTINGS_FORMAT, "version": 2, "mode": chosen.name, "ov_config": config,
        "source": str(source),
        "quantization": {**chosen.describe(),
                         "not_quantized": ["ScaledDotProductAttention"] if chosen.calibrated else []},
        "calibration": calibration_settings,
        "accuracy": accuracy,
    }
    with staged_folder(output) as staging:
        ov_model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if sparsity_profile is not None:
            shutil.copyfile(profile_path, staging / PROFILE_FILENAME)
        settings["verification"] = verify_export(staging, source, sparsity_profile, rate=rate)
        settings["seconds"] = {"convert": round(converted - started, 1),
                               "check": round(checked_int8 - quantized + checked_float - converted, 1),
                               "quantize": round(quantized - checked_float, 1),
                               "total": round(time.perf_counter() - started, 1)}
        (staging / SETTINGS_NAME).write_text(json.dumps(settings, indent=2) + "\n")
        publish(staging, output, overwrite=overwrite)
    return settings


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m owl_plugin.integrations.openvino.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", metavar="PRUNED_DIR", help="checkpoint folder (pruned, with sparsity_profile.json)")
    parser.add_argument("--output", "-o", required=True, help="IR folder to create (atomically)")
    parser.add_argument("--mode", choices=tuple(MODES), default=DEFAULT_MODE, help=MODE_HELP)
    parser.add_argument("--calibration", default=None, metavar="SOURCE",
                        help="--mode static: local .txt/.json/.jsonl or 'pydoc' (default: the text the pruning "
                             "calibrated on, from sparsity_profile.json, else pydoc)")
    parser.add_argument("--num-samples", type=int, default=64, help="--mode static: calibration windows (default 64)")
    parser.add_argument("--seq-len", type=int, default=128, help="--mode static: tokens per window (default 128)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bos", choices=BOS_CHOICES, default="auto", help=BOS_HELP)
    parser.add_argument("--sparse-rate", type=float, default=DEFAULT_RATE,
                        help=f"--mode static: {RATE_KEY}: weights with at least this fraction of zeros use the "
                             f"sparse kernels on AMX CPUs (default {DEFAULT_RATE}; 1 = off)")
    parser.add_argument("--check-windows", type=int, default=CHECK_WINDOWS,
                        help=f"score the float and the int8 IR on this many {CHECK_SEQ_LEN}-token windows of "
                             f"WikiText-2 validation (else pydoc), record the gap (default {CHECK_WINDOWS}; 0 = skip)")
    parser.add_argument("--profile", default=None, help="sparsity profile JSON (default: PRUNED_DIR's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    return parser.parse_args(argv)


def describe(settings: dict[str, Any], output: Path) -> str:
    """The one line the exporter prints: what was written, how it was checked, what int8 cost."""
    check = settings["verification"]
    line = f"wrote {output}: int8 {settings['mode']} mode, {check['int8_linears']} int8 linears"
    if RATE_KEY in settings["ov_config"]:
        line += f", {check['modules_at_or_above_rate']} at or above the sparse rate {settings['ov_config'][RATE_KEY]}"
    if "profile_max_abs_diff" in check:
        line += f", max |IR - profile| sparsity {check['profile_max_abs_diff']:.4f}"
    accuracy = settings.get("accuracy")
    if accuracy:
        line += (f"; perplexity int8 {accuracy['ppl_int8']:.4f} vs float {accuracy['ppl_float']:.4f} "
                 f"({100 * accuracy['rel_gap']:+.2f} %, {accuracy['windows']} windows of "
                 f"{Path(accuracy['text']).name})")
    return line + f" ({settings['seconds']['total']:.0f} s)"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = export_openvino(args.source, args.output, mode=args.mode, calibration=args.calibration,
                                   num_samples=args.num_samples, seq_len=args.seq_len, seed=args.seed,
                                   sparse_rate=args.sparse_rate, profile=args.profile, overwrite=args.overwrite,
                                   bos=args.bos, check_windows=args.check_windows)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"owl export --format openvino: error: {error}", file=sys.stderr)
        return 2
    print(describe(settings, Path(args.output).absolute()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
