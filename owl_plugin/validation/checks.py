"""The checks every engine runner applies the same way: sparsity read back, greedy and perplexity agreement.

Runners live in other venvs, so this module uses only the standard library, ``owl_plugin.profile``
and ``owl_plugin.verify`` (torch, which every engine venv has).

Sparsity read back: an engine's loaded weight of module m has measured sparsity
ŝ_m = zeros_m / numel_m; it matches the profile when |ŝ_m − s_m| ≤ 1 / row_length_m (one weight
per row, the tolerance ``owl_plugin.verify`` uses for Wanda/SparseGPT, arXiv 2306.11695 / 2301.00774).

Greedy agreement: for fp32 the engine's generated ids must equal the transformers reference token
for token; for reduced precision the first divergence must come no earlier than
``min_prefix · max_new_tokens``. The first divergence (prompt, position, expected and got ids) is
always reported.

Perplexity agreement: |ppl − ppl_ref| / ppl_ref ≤ tolerance.
"""

from __future__ import annotations

import logging
import math
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from owl_plugin.profile import SparsityProfile
from owl_plugin.validation.protocol import EngineRequest, EngineResult

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: a runner announces each step on stdout with this prefix; the suite, which waits for it, shows it
STEP_PREFIX = "owl-step: "


def error_text(error: BaseException) -> str:
    """``Type: message`` of the most telling error in ``error``'s chain.

    Engines wrap the real error ("engine core initialization failed", "issues during automatic
    conversion"); the first ``CompactFormatError`` in the chain, else the innermost error, is the
    one that names the tensor. The outer error is appended when it differs.
    """
    chain = [error]
    while (chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 50:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    root = next((e for e in chain if type(e).__name__ == "CompactFormatError"), chain[-1])
    text = f"{type(root).__name__}: {root}"
    if root is not error:
        text += f" (raised as {type(error).__name__}: {str(error)[:300]})"
    return text


def run_step(result: EngineResult, name: str, step: Callable[[], T]) -> T | None:
    """Run ``step``; on an exception record a failed check ``name`` with the engine's own error and return None.

    The step's name is announced first (``STEP_PREFIX``), so the suite can show progress while it waits.
    """
    print(f"{STEP_PREFIX}{name}", flush=True)
    try:
        return step()
    except Exception as error:  # noqa: BLE001 - the engine's error is the result
        logger.error("%s failed: %s", name, error_text(error))
        logger.debug("%s", traceback.format_exc())
        result.add(name, False, error_text(error), traceback=traceback.format_exc()[-3000:])
        return None


def sparsity_check(
    result: EngineResult, name: str, profile: SparsityProfile, measured: Mapping[str, tuple[int, int, int]],
) -> bool:
    """Compare an engine's read-back weights with the profile.

    Args:
        measured: module name → (zeros, numel, row_length) of the weight the engine holds.
    """
    from owl_plugin.verify import Measured, profile_mismatches

    missing = [module for module in profile.modules if module not in measured]
    if missing:
        result.add(name, False, f"the engine holds no weight for {missing[0]} (and {len(missing) - 1} more profile "
                                f"modules); the checkpoint does not match its sparsity_profile.json",
                   missing=missing[:20])
        return False
    ratios = {m: Measured(zeros / numel, row) for m, (zeros, numel, row) in measured.items() if m in profile.modules}
    problems = profile_mismatches(profile, ratios)
    total = sum(e.num_params for e in profile.modules.values())
    overall = sum(ratios[m].sparsity * e.num_params for m, e in profile.modules.items()) / total
    blocks: dict[str, list[float]] = {}
    for module, entry in profile.modules.items():
        acc = blocks.setdefault(entry.block, [0.0, 0.0])
        acc[0] += ratios[module].sparsity * entry.num_params
        acc[1] += entry.num_params
    values = {"modules": len(profile.modules), "overall": overall, "profile_mean": profile.mean_sparsity(),
              "block_sparsity": {b: w / n for b, (w, n) in blocks.items()}, "mismatches": problems[:20]}
    if problems:
        result.add(name, False, f"{len(problems)} of {len(profile.modules)} modules differ from sparsity_profile.json "
                                f"by more than one weight per row, e.g. {problems[0]}", **values)
        return False
    result.add(name, True, f"{len(profile.modules)} modules match sparsity_profile.json within one weight per row "
                           f"(overall {overall:.4f}, profile {profile.mean_sparsity():.4f})", **values)
    return True


def first_divergence(expected: Sequence[int], got: Sequence[int]) -> int | None:
    """Index of the first differing token (a length difference counts), or None when equal."""
    for index, (a, b) in enumerate(zip(expected, got, strict=False)):
        if a != b:
            return index
    return None if len(expected) == len(got) else min(len(expected), len(got))


def greedy_check(
    result: EngineResult, name: str, reference: Sequence[Sequence[int]] | None, got: Sequence[Sequence[int]],
    *, exact: bool = True, min_prefix: float = 0.25, margins: Sequence[Sequence[float]] | None = None,
    near_tie: float = 0.0,
) -> bool:
    """Compare generated ids with the reference's; see the module docstring for the rule.

    Args:
        margins: the reference's log-probability gap top1 − top2 at every generated position, to
            tell a near-tie (a legitimate rounding flip) from a real disagreement in the report.
        near_tie: reduced precision only: a prompt whose first divergence falls where the reference's
            margin is below this many nats flipped between two almost equally likely tokens (what
            weight rounding does), so the ``min_prefix`` rule judges only the other prompts; the
            tolerated flips are listed in the check's values.
    """
    if reference is None:
        result.add(name, False, "no transformers reference generation to compare with (the reference run failed)")
        return False
    if len(reference) != len(got):
        result.add(name, False, f"{len(got)} generations for {len(reference)} reference prompts")
        return False
    divergences = [first_divergence(ref, out) for ref, out in zip(reference, got, strict=True)]
    matching = sum(d is None for d in divergences)
    diverged = sorted((position, prompt) for prompt, position in enumerate(divergences) if position is not None)
    length = max((len(r) for r in reference), default=0)

    def margin_at(prompt: int, position: int) -> float | None:
        return margins[prompt][position] if margins is not None and position < len(margins[prompt]) else None

    ties = [] if exact else [(prompt, position) for position, prompt in diverged
                             if (m := margin_at(prompt, position)) is not None and m < near_tie]
    judged = [(position, prompt) for position, prompt in diverged if (prompt, position) not in ties]
    first = None  # the earliest divergence the rule judges (else the earliest tolerated one), lowest prompt on ties
    if diverged:
        position, prompt = (judged or diverged)[0]
        expected = reference[prompt][position] if position < len(reference[prompt]) else None
        obtained = got[prompt][position] if position < len(got[prompt]) else None
        first = {"prompt": prompt, "position": position, "expected": expected, "got": obtained}
        if margin_at(prompt, position) is not None:
            first["reference_margin"] = margin_at(prompt, position)
    if exact:
        passed = matching == len(reference)
        rule = "token-identical (fp32)"
    else:
        passed = not judged or judged[0][0] >= math.ceil(min_prefix * length)
        rule = f"first divergence at or after token {math.ceil(min_prefix * length)} of {length}"
        if near_tie > 0:
            rule += f", except flips where the reference's top1-top2 margin is below {near_tie:g} nats"
    values = {"matching_prompts": matching, "prompts": len(reference), "first_divergence": first, "rule": rule,
              "divergence_positions": divergences, "near_tie_flips": [list(t) for t in ties]}
    if first is None:
        detail = f"{matching}/{len(reference)} prompts token-identical to the transformers reference ({length} tokens)"
    else:
        margin = f", reference top1-top2 margin {first['reference_margin']:.2g} nats" if "reference_margin" in first \
            else ""
        detail = (f"{matching}/{len(reference)} prompts identical; first divergence: prompt {first['prompt']} token "
                  f"{first['position']} (expected id {first['expected']}, got {first['got']}{margin}); rule: {rule}")
        if ties:
            detail += f"; {len(ties)} near-tie flip(s) tolerated (prompt, token): {ties}"
    result.add(name, passed, detail, **values)
    return passed


def perplexity_check(result: EngineResult, name: str, ppl: float, reference: float | None, tolerance: float) -> bool:
    """|ppl − reference| / reference ≤ tolerance."""
    if reference is None:
        result.add(name, False, f"perplexity {ppl:.4f}, but there is no transformers reference to compare with",
                   ppl=ppl)
        return False
    rel = abs(ppl - reference) / reference if math.isfinite(ppl) else math.inf
    passed = rel <= tolerance
    result.add(name, passed, f"perplexity {ppl:.4f} vs transformers {reference:.4f}: relative difference "
                             f"{rel:.2e} {'<=' if passed else '>'} tolerance {tolerance:g}",
               ppl=ppl, reference=reference, rel_diff=rel, tolerance=tolerance)
    return passed


def kernel_check(result: EngineResult, name: str, report: Mapping[str, Any]) -> bool:
    """The compact checkpoint's layers run owl_plugin's compiled sparse kernels.

    Args:
        report: ``owl_plugin.kernels.sparse_layer_report`` of the loaded model (how many layers hold
            packed weights, the ISA path, the extension or its build error); kept in
            ``result.notes["kernel"]``.

    Fails when no layer is packed (unless ``OWL_SPARSE_DENSE=1`` asked for dense layers, or the loader's
    measured fallback kept every layer dense on a CPU where the kernel loses, see kernels/fallback.py) or when the
    C++ extension is missing and the layers run the slow pure-torch twin.
    """
    from owl_plugin.kernels.report import dense_requested

    result.notes["kernel"] = dict(report)
    layers = report.get("packed_layers", 0)
    if not layers:
        if dense_requested():
            result.add(name, True, "OWL_SPARSE_DENSE=1: dense layers by request, no sparse kernels", **report)
            return True
        kept = report.get("dense_fallback") or []
        if kept and not any(d.get("isa") == "torch-fallback" for d in kept):
            result.add(name, True, "every layer stays dense: at batch 1 the sparse kernel measured slower than dense "
                                   f"on this CPU ({kept})", **report)
            return True
        if kept:
            result.add(name, False, "every layer stays dense because the compiled kernels are missing and the "
                                    "pure-torch twin is slower than dense; build them with "
                                    "`python -m owl_plugin.kernels build -v`", **report)
            return False
        result.add(name, False, "no layer of the compact checkpoint holds packed weights: the sparse kernels do not "
                                "run (is owl_plugin's loader registered in this engine?)", **report)
        return False
    if report.get("isa") == "torch-fallback":
        result.add(name, False, f"{layers} layers are packed but run the pure-torch fallback, not the compiled "
                                f"kernels ({report.get('extension_error')}); build them with "
                                "`python -m owl_plugin.kernels build -v`", **report)
        return False
    result.add(name, True, f"{layers} layers run {report.get('op')} on the {report.get('isa')} path "
                           f"({report.get('packed_bytes', 0) / 2**20:.1f} MiB packed, {report.get('threads')} threads)",
               **report)
    return True


def engine_windows(result: EngineResult, request: EngineRequest, tokenizer):
    """The window protocol this engine scores with (``owl_plugin.text.window_protocol`` of the checkpoint's
    tokenizer and ``request.bos``), recorded in ``result.notes["windows"]``. If the transformers
    reference was scored with other windows, a failed ``agrees/windows`` check says so: perplexities
    under different window protocols are not compared as if they were one measurement."""
    from owl_plugin.text import window_protocol

    protocol = window_protocol(tokenizer, request.bos)
    result.notes["windows"] = protocol.as_dict()
    theirs = next((r.get("windows") for r in (request.reference or {}).values() if r and r.get("windows")), None)
    if theirs is not None:
        same = (theirs.get("bos"), theirs.get("bos_token_id")) == (protocol.bos, protocol.bos_token_id)
        result.add("agrees/windows", same,
                   f"{protocol.describe()}, as the transformers reference" if same else
                   f"this engine builds windows with bos={protocol.bos} (bos_token_id {protocol.bos_token_id}) but "
                   f"the transformers reference used bos={theirs.get('bos')} (bos_token_id "
                   f"{theirs.get('bos_token_id')}): its perplexities are not comparable; pass the same --bos "
                   "and tokenizer to every engine", windows=protocol.as_dict(), reference=theirs)
    return protocol


def checkpoints_to_load(request: EngineRequest, result: EngineResult) -> list[tuple[str, str]]:
    """(name, path) of the pruned, compact and baseline checkpoints an engine loads, in that order.

    A missing compact export (the suite's export failed) is recorded as a failed ``loads/compact``
    check here, so every engine reports it the same way; a missing baseline is simply skipped.
    """
    if request.compact is None:
        result.add("loads/compact", False, "no compact export to load (the suite's export failed)")
    named = (("pruned", request.pruned), ("compact", request.compact), ("baseline", request.baseline))
    return [(name, path) for name, path in named if path is not None]


def reference_of(request: EngineRequest, model: str) -> Mapping[str, Any] | None:
    """The transformers reference entry of ``model`` (``pruned`` / ``baseline``), or None."""
    if not request.reference:
        return None
    return request.reference.get(model)


def runner_main(run: Callable[[EngineRequest, EngineResult], None], engine: str,
                argv: Sequence[str] | None = None) -> int:
    """Entry point of a runner: ``python -m ... REQUEST.json RESULT.json``.

    ``run(request, result)`` fills ``result``; an exception it lets escape is recorded as a failed
    ``runner`` check (with its traceback) and RESULT.json is written all the same. Exit status 0
    means RESULT.json was written; whether the engine passed is in its checks.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        sys.stderr.write(f"usage: python -m owl_plugin.integrations.{engine}.validate REQUEST.json RESULT.json\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    request = EngineRequest.load(args[0])
    result = EngineResult(engine=engine)
    try:
        run(request, result)
    except Exception as error:  # noqa: BLE001 - reported in RESULT.json and on stderr
        logger.exception("the %s runner failed", engine)
        result.add("runner", False, error_text(error), traceback=traceback.format_exc()[-3000:])
    finally:
        result.save(args[1])
    return 0
