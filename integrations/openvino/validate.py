"""The OpenVINO engine runner of ``owl validate`` (owl_plugin/validation/PROTOCOL.md).

    .venv-openvino/bin/python -m owl_plugin.integrations.openvino.validate REQUEST.json RESULT.json

What it checks, on the int8 IR a user gets from ``owl export --format openvino`` (exported into
``work_dir`` unless ``pruned`` already is an IR folder) in the export's default mode, ``weights``
(int8 weights, f32 activations); ``OWL_OPENVINO_MODE=static`` checks the int8-activation mode
instead (calibrated on ``pydoc``, not on the evaluation text):

* ``export/pruned-ir``: the export succeeded (its own verification: no pruned zero lost);
* ``sparsity/pruned-ir``: every profile module is an int8 weight of the IR whose fraction of zeros
  is within ``1/row + 0.02`` above and ``1/row`` below the allocated ratio (int8 rounding may
  zero a few small survivors; it may never revive a pruned weight);
* ``loads/pruned-ir``: it compiles with the stored properties, which the plugin reports back;
* ``kernels/sparse`` (only in ``static`` mode on CPUs with AMX, where the kernels exist): the
  performance counters show sparse brgemm kernels; elsewhere ``notes.sparse_kernels`` says why none ran;
* ``agrees/greedy``: int8 vs the transformers fp32 reference: first divergence no earlier than
  ``tolerances.greedy_lowp_min_prefix · max_new_tokens`` (default 12.5 %), first divergence reported;
* ``agrees/perplexity``: |ppl − ref| / ref ≤ ``tolerances.ppl_rel_lowp`` (default 15 %);
* the same two for the baseline when the request has its reference.

``notes.int8_vs_fp32`` states the measured gap per model: ``ppl_int8 / ppl_fp32 − 1`` against the
transformers fp32 reference.

Speed (when requested, with a baseline), interleaved rounds (``owl_plugin.validation.timing``),
medians with min/max: in ``weights`` mode, pruned vs dense int8-weight IR (variant ``int8-weights``;
no sparse kernel exists for float activations). In ``static`` mode: dense int8 baseline, pruned
int8 with sparse kernels on (``int8+sparse``) and off (``int8``). The baseline holds no weight at
the sparse rate, so the sparse setting compiles it exactly like the plain one (the recorded
execTypes show it): its samples stand for both variants, so the orchestrator pairs pruned
``int8+sparse`` and ``int8`` with it.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from owl_plugin.profile import SparsityProfile
from owl_plugin.validation.checks import (
    engine_windows, greedy_check, perplexity_check, reference_of, run_step, runner_main,
)
from owl_plugin.validation.protocol import EngineRequest, EngineResult, SpeedRow
from owl_plugin.validation.timing import interleaved

from owl_plugin.integrations.openvino.engine import StatefulLM, cpu_has_amx, cpu_name, rss_mib
from owl_plugin.integrations.openvino.export import export_openvino, read_settings, stored_ov_config
from owl_plugin.integrations.openvino.ir import IR_NAME, check_against_profile, read_ir_weights
from owl_plugin.integrations.openvino.modes import DEFAULT_MODE, PRECISION, mode_of
from owl_plugin.integrations.openvino.sparse import OFF_RATE, PERF_KEY, RATE_KEY, sparse_summary

logger = logging.getLogger(__name__)

MODE_ENV = "OWL_OPENVINO_MODE"  # which export mode the runner checks (default: the export's default)
CALIBRATION = "pydoc"  # static mode: activation ranges from other text than the evaluation text
CALIBRATION_SAMPLES = int(os.environ.get("OWL_OPENVINO_CALIBRATION_SAMPLES", "32"))


def ensure_ir(checkpoint: str, work_dir: Path, name: str, mode: str = DEFAULT_MODE) -> Path:
    """An int8 IR of ``checkpoint``: the folder itself if it is one, else a (cached) ``mode`` export in ``work_dir``."""
    folder = Path(checkpoint).absolute()
    if (folder / IR_NAME).is_file():
        return folder
    target = work_dir / f"{name}-ir"
    settings = read_settings(target) if (target / IR_NAME).is_file() else None
    if settings and settings.get("source") == str(folder) and settings.get("mode") == mode:
        logger.info("reusing %s (exported from %s)", target, folder)
        return target
    calibration = {"calibration": CALIBRATION, "num_samples": CALIBRATION_SAMPLES} if mode_of(mode).calibrated else {}
    # no float-vs-int8 check in the export: the runner measures int8 against transformers fp32 itself
    export_openvino(folder, target, mode=mode, overwrite=True, check_windows=0, **calibration)
    return target


def gap(ppl: float | None, reference: float | None) -> dict[str, float] | None:
    """``{"ppl_int8", "ppl_fp32", "rel_gap"}`` with ``rel_gap = ppl_int8 / ppl_fp32 − 1`` (None without both)."""
    if ppl is None or not reference:
        return None
    return {"ppl_int8": ppl, "ppl_fp32": reference, "rel_gap": ppl / reference - 1.0}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("openvino", "nncf", "optimum-intel", "optimum", "transformers", "torch"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


def _sparsity(result: EngineResult, ir: Path, profile: SparsityProfile) -> None:
    check = check_against_profile(read_ir_weights(ir), profile)
    values = {"max_abs_diff": check.max_abs_diff, "tolerance": check.tolerance, "modules": len(profile.modules),
              "rule": "allocated - 1/row <= int8 IR <= allocated + 1/row + tolerance",
              "problems": list(check.problems[:20]), "missing": list(check.missing[:20])}
    if check.passed:
        result.add("sparsity/pruned-ir", True, f"{len(profile.modules)} int8 weights of the IR match "
                   f"sparsity_profile.json (max |diff| {check.max_abs_diff:.4f}, rounding tolerance {check.tolerance})",
                   **values)
    else:
        first = check.problems[0] if check.problems else f"{check.missing[0]} is not an int8 weight of the IR"
        result.add("sparsity/pruned-ir", False, f"{len(check.problems) + len(check.missing)} of "
                   f"{len(profile.modules)} modules off: {first}", **values)


def _load(result: EngineResult, name: str, ir: Path, config: dict[str, str], probe: np.ndarray) -> StatefulLM:
    model = StatefulLM(ir / IR_NAME, config)
    model.greedy(probe.tolist(), 2)  # one prefill + one decode step: fills the performance counters
    rate = float(model.property(RATE_KEY))
    precision = {key: str(model.property(key)) for key in PRECISION}  # what the plugin really applies
    result.add(name, True, f"{ir} compiled in {model.compile_seconds:.1f} s with {RATE_KEY}={rate:g}, "
                           + ", ".join(f"{k}={v}" for k, v in precision.items())
                           + f" (RSS +{model.compile_rss_mib:.0f} MiB)", rate=rate, precision=precision,
               compile_seconds=model.compile_seconds, rss_mib=model.compile_rss_mib, exec_types=model.exec_types())
    return model


def run(request: EngineRequest, result: EngineResult) -> None:
    from transformers import AutoTokenizer

    from owl_plugin.text import load_text, tokenize

    result.versions = _versions()
    work_dir = Path(request.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    profile = SparsityProfile.load(request.pruned)
    tokenizer = AutoTokenizer.from_pretrained(request.pruned)
    text_ids = tokenize(tokenizer, load_text(request.text)).numpy()
    windows = engine_windows(result, request, tokenizer)
    reference = reference_of(request, "pruned") or {}
    prompt_ids = reference.get("prompt_ids") or [tokenizer(p).input_ids for p in request.prompts]
    tolerances = request.tolerances
    amx = cpu_has_amx()
    mode = mode_of(os.environ.get(MODE_ENV, DEFAULT_MODE))
    result.notes.update({"cpu": cpu_name(), "amx": amx, "mode": mode.describe(),
                         "calibration": CALIBRATION if mode.calibrated else None, "rss_mib": {"start": rss_mib()}})

    started = time.perf_counter()
    pruned_ir = run_step(result, "export/pruned-ir", lambda: ensure_ir(request.pruned, work_dir, "pruned", mode.name))
    if pruned_ir is None:
        return
    settings = read_settings(pruned_ir) or {}
    if settings:  # an IR folder given as PRUNED_DIR says its own mode (version 1 exports were all static)
        mode = mode_of(settings.get("mode", "static"))
    result.notes["mode"] = mode.describe()
    result.add("export/pruned-ir", True, f"int8 IR ({mode.name} mode) at {pruned_ir} "
                                         f"({time.perf_counter() - started:.0f} s)", folder=str(pruned_ir),
               settings=settings)
    run_step(result, "sparsity/pruned-ir", lambda: _sparsity(result, pruned_ir, profile))

    stored = stored_ov_config(pruned_ir)
    sparse_on = {**stored, PERF_KEY: "YES"}
    sparse_off = {**stored, RATE_KEY: f"{OFF_RATE:g}", PERF_KEY: "YES"}
    probe = np.asarray(prompt_ids[0])
    pruned = run_step(result, "loads/pruned-ir", lambda: _load(result, "loads/pruned-ir", pruned_ir, sparse_on, probe))
    if pruned is None:
        return
    kernels = sparse_summary(pruned.exec_types())
    kernels["rate"] = stored.get(RATE_KEY)
    if not mode.sparse_kernels:
        kernels["reason"] = (f"{mode.name} mode: activations stay float, and OpenVINO's sparse kernels multiply int8 "
                             "activations by int8 weights (--mode static, on CPUs with AMX)")
    elif amx:
        result.add("kernels/sparse", kernels["used"],
                   f"{kernels['sparse_nodes']} linears ran sparse kernels: {kernels['execTypes']}", **kernels)
    else:
        kernels["reason"] = (f"this CPU ({result.notes['cpu']}) has no AMX; OpenVINO's sparse int8 kernels "
                             "(brgemm_avx512_amx_sparse_I8) need it, so the setting is accepted and dense int8 "
                             "kernels run")
    result.notes["sparse_kernels"] = kernels
    result.notes["rss_mib"]["pruned_int8_sparse"] = pruned.compile_rss_mib

    generated = run_step(result, "generate/pruned", lambda: [pruned.greedy(ids, request.max_new_tokens)
                                                             for ids in prompt_ids])
    if generated is not None:
        result.generated["pruned"] = generated
        greedy_check(result, "agrees/greedy", reference.get("generated_ids"), generated, exact=False,
                     min_prefix=tolerances.greedy_lowp_min_prefix, margins=reference.get("margins"),
                     near_tie=tolerances.greedy_lowp_near_tie_nats)
    ppl = run_step(result, "perplexity/pruned", lambda: pruned.perplexity(
        text_ids, seq_len=request.seq_len, windows=request.ppl_windows, bos_token_id=windows.bos_token_id))
    if ppl is not None:
        result.ppl["pruned"] = ppl
        perplexity_check(result, "agrees/perplexity", ppl, reference.get("ppl"), tolerances.ppl_rel_lowp)
    result.notes["int8_vs_fp32"] = {"pruned": gap(ppl, reference.get("ppl"))}

    baseline = None
    if request.baseline:
        baseline_ir = run_step(result, "export/baseline-ir",
                               lambda: ensure_ir(request.baseline, work_dir, "baseline", mode.name))
        if baseline_ir is not None:
            baseline = run_step(result, "loads/baseline-ir", lambda: _load(
                result, "loads/baseline-ir", baseline_ir, sparse_on, probe))
    if baseline is not None:
        result.notes["rss_mib"]["baseline_int8"] = baseline.compile_rss_mib
        result.notes["baseline_exec_types"] = baseline.exec_types()
        base_ref = reference_of(request, "baseline")
        if base_ref:
            generated = run_step(result, "generate/baseline", lambda: [baseline.greedy(ids, request.max_new_tokens)
                                                                       for ids in prompt_ids])
            if generated is not None:
                result.generated["baseline"] = generated
                greedy_check(result, "agrees/greedy-baseline", base_ref.get("generated_ids"), generated, exact=False,
                             min_prefix=tolerances.greedy_lowp_min_prefix, margins=base_ref.get("margins"),
                             near_tie=tolerances.greedy_lowp_near_tie_nats)
            ppl = run_step(result, "perplexity/baseline", lambda: baseline.perplexity(
                text_ids, seq_len=request.seq_len, windows=request.ppl_windows, bos_token_id=windows.bos_token_id))
            if ppl is not None:
                result.ppl["baseline"] = ppl
                perplexity_check(result, "agrees/perplexity-baseline", ppl, base_ref.get("ppl"),
                                 tolerances.ppl_rel_lowp)
            result.notes["int8_vs_fp32"]["baseline"] = gap(ppl, base_ref.get("ppl"))

    if request.speed is None or baseline is None:
        return
    settings = request.speed
    needed = max(settings.prefill_tokens, settings.batch * 16)
    if len(text_ids) < needed:
        result.add("speed", False, f"the text has {len(text_ids)} tokens; speed needs {needed}")
        return
    if mode.sparse_kernels:
        dense_kernels = StatefulLM(pruned_ir / IR_NAME, sparse_off)
        dense_kernels.greedy(probe.tolist(), 2)
        result.notes["pruned_sparse_off_exec_types"] = dense_kernels.exec_types()
        result.notes["rss_mib"]["pruned_int8_sparse_off"] = dense_kernels.compile_rss_mib
        variants = {"int8+sparse": pruned, "int8": dense_kernels}
        result.notes["speed_baseline_note"] = (
            "the dense baseline has no weight at the sparse rate, so it compiles the same with and without the "
            "sparse setting; one set of samples serves both variants")
    else:
        variants = {"int8-weights": pruned}
    options = {"prefill_tokens": settings.prefill_tokens, "decode_tokens": settings.decode_tokens,
               "batch": settings.batch}
    models = {"baseline": baseline, **{f"pruned/{variant}": model for variant, model in variants.items()}}
    rounds = {name: (lambda m=model: m.speed_round(text_ids, **options)) for name, model in models.items()}
    samples = run_step(result, "speed", lambda r=rounds: interleaved(r, settings.repetitions))
    if samples is None:
        return
    rows = []
    for metric, values in samples["baseline"].items():
        rows += [SpeedRow.from_samples("baseline", variant, metric, values) for variant in variants]
    for variant in variants:
        rows += [SpeedRow.from_samples("pruned", variant, metric, values)
                 for metric, values in samples[f"pruned/{variant}"].items()]
    result.speed = rows
    result.notes["threads"] = int(baseline.property("INFERENCE_NUM_THREADS"))
    del models, rounds, variants
    gc.collect()


def main(argv: Sequence[str] | None = None) -> int:
    return runner_main(run, "openvino", argv)


if __name__ == "__main__":
    raise SystemExit(main())
