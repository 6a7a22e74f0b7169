"""The transformers runner of ``owl validate``: the reference every other engine is compared with.

    python -m owl_plugin.integrations.transformers.validate REQUEST.json RESULT.json

(``owl_plugin/validation/PROTOCOL.md``). In the main venv it

* loads the pruned (dense) checkpoint, its compact export and the dense baseline with
  ``AutoModelForCausalLM.from_pretrained`` in float32; a missing, unexpected or mis-shaped tensor
  fails ``loads/<model>`` naming the tensor (transformers itself would only warn and initialise it
  at random);
* reads the loaded weights back: per-module sparsity vs ``sparsity_profile.json``
  (``sparsity/pruned``, ``sparsity/compact``), and compact bit-identical to pruned;
* generates greedily (argmax, exactly ``max_new_tokens`` tokens, EOS not special) for every prompt,
  recording the top1 − top2 log-probability margin at each step — the reference ids, prompt ids
  and margins go to RESULT.json for the other engines;
* computes perplexity over ``ppl_windows`` windows of ``seq_len`` tokens (``owl_plugin.evaluation``);
* for the compact load, which layers run the sparse kernels and on which ISA path (``kernels/compact``);
* with ``speed``: times the dense baseline and the compact model (sparse kernels; the dense pruned
  model when there is no compact export) interleaved
  (``owl_plugin.validation.timing``): prefill of a ``prefill_tokens`` prompt, batch-1 decode and
  batch-``batch`` throughput.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

from owl_plugin.profile import SparsityProfile
from owl_plugin.validation.checks import (
    checkpoints_to_load, engine_windows, greedy_check, kernel_check, perplexity_check, run_step, runner_main,
    sparsity_check,
)
from owl_plugin.validation.protocol import EngineRequest, EngineResult
from owl_plugin.validation.timing import interleaved, speed_rows

logger = logging.getLogger("owl_plugin.integrations.transformers.validate")

VARIANT = "fp32"
SHORT_PROMPT = 16  # tokens of the decode / throughput prompts


def load(path: str):
    """(model, tokenizer) in float32, eval mode; raises naming any tensor transformers could not load exactly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import owl_plugin.integrations.transformers  # noqa: F401 - registers owl_sparse (the autoload hook does too)

    # ignore_mismatched_sizes: report a wrong shape by name below, rather than transformers' generic RuntimeError
    model, info = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, output_loading_info=True,
                                                       ignore_mismatched_sizes=True)
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        entries = sorted(_describe(e) for e in (info.get(kind) or ()))
        if entries:
            problems.append(f"{kind.replace('_', ' ')}: {', '.join(entries[:5])}"
                            f"{f' (and {len(entries) - 5} more)' if len(entries) > 5 else ''}")
    if problems:
        raise ValueError(f"transformers loaded {path} only partly ({'; '.join(problems)}); those weights would be "
                         "random — the checkpoint is broken, export it again")
    return model.eval(), AutoTokenizer.from_pretrained(path)


def _describe(entry: object) -> str:
    """A loading-info entry: a key, or (key, checkpoint shape, model shape) for a size mismatch."""
    if isinstance(entry, tuple) and len(entry) == 3:
        key, ckpt, expected = entry
        return f"{key} (checkpoint {list(ckpt)}, model {list(expected)})"
    return str(entry)


def read_back(model: torch.nn.Module, profile: SparsityProfile) -> dict[str, tuple[int, int, int]]:
    """Module → (zeros, numel, row length) of the weight the loaded model holds, for the profile's modules."""
    modules = dict(model.named_modules())
    measured = {}
    for name in profile.modules:
        module = modules.get(name)
        dense_weight = getattr(module, "dense_weight", None)  # OwlSparseLinear holds only the packed weight
        weight = dense_weight() if callable(dense_weight) else getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 2:
            measured[name] = (int((weight == 0).sum()), weight.numel(), int(weight.shape[1]))
    return measured


def different_tensors(a: torch.nn.Module, b: torch.nn.Module) -> list[str]:
    """Names of the state-dict tensors that are not bit-identical (or missing in ``b``)."""
    theirs = b.state_dict()
    return [name for name, tensor in a.state_dict().items()
            if name not in theirs or tensor.shape != theirs[name].shape or not torch.equal(tensor, theirs[name])]


@torch.no_grad()
def greedy(model: torch.nn.Module, prompt_ids: Sequence[int], new_tokens: int) -> tuple[list[int], list[float]]:
    """Argmax decoding of exactly ``new_tokens`` tokens with the KV cache; (ids, top1 − top2 log-prob margins)."""
    out = model(input_ids=torch.tensor([list(prompt_ids)]), use_cache=True)
    ids, margins = [], []
    for step in range(new_tokens):
        logits = out.logits[0, -1].float()
        top = torch.topk(torch.log_softmax(logits, dim=-1), 2).values
        token = int(torch.argmax(logits))
        ids.append(token)
        margins.append(float(top[0] - top[1]))
        if step + 1 < new_tokens:
            out = model(input_ids=torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
    return ids, margins


def generate_all(
    model, prompt_ids: Sequence[Sequence[int]], new_tokens: int
) -> tuple[list[list[int]], list[list[float]]]:
    pairs = [greedy(model, ids, new_tokens) for ids in prompt_ids]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def speed_round(model, ids: torch.Tensor, settings) -> dict[str, float]:
    """One timed round: prefill_ms, decode_tok_s (batch 1), throughput_tok_s (batch ``settings.batch``)."""
    with torch.no_grad():
        prompt = ids[: settings.prefill_tokens].unsqueeze(0)
        started = time.perf_counter()
        model(input_ids=prompt, use_cache=True)
        prefill_ms = (time.perf_counter() - started) * 1000

        out = model(input_ids=ids[:SHORT_PROMPT].unsqueeze(0), use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        started = time.perf_counter()
        for _ in range(settings.decode_tokens - 1):
            out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        decode = (settings.decode_tokens - 1) / (time.perf_counter() - started)

        batch = torch.stack([ids[i * SHORT_PROMPT:(i + 1) * SHORT_PROMPT] for i in range(settings.batch)])
        started = time.perf_counter()
        out = model(input_ids=batch, use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(settings.decode_tokens - 1):
            out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        throughput = settings.batch * settings.decode_tokens / (time.perf_counter() - started)
    return {"prefill_ms": prefill_ms, "decode_tok_s": decode, "throughput_tok_s": throughput}


def run(request: EngineRequest, result: EngineResult) -> None:
    import transformers

    from owl_plugin.evaluation import perplexity
    from owl_plugin.text import load_text, tokenize

    result.versions = {"transformers": transformers.__version__, "torch": torch.__version__}
    profile = SparsityProfile.load(request.pruned)
    models: dict[str, Any] = {}
    tokenizer = None
    for name, path in checkpoints_to_load(request, result):
        started = time.perf_counter()
        loaded = run_step(result, f"loads/{name}", lambda p=path: load(p))
        if loaded is None:
            continue
        models[name], tok = loaded
        tokenizer = tokenizer or tok
        result.add(f"loads/{name}", True, f"{path} loaded in {time.perf_counter() - started:.1f} s "
                                          f"({type(models[name]).__name__}, float32)")
        if name == "compact":
            from owl_plugin.kernels import sparse_layer_report

            kernel_check(result, "kernels/compact", sparse_layer_report(models[name]))
        if name in ("pruned", "compact"):
            step = f"sparsity/{name}"
            run_step(result, step, lambda m=models[name], s=step: sparsity_check(
                result, s, profile, read_back(m, profile)))
    if "pruned" in models and "compact" in models:
        differing = different_tensors(models["pruned"], models["compact"])
        result.add("weights/compact-equals-pruned", not differing,
                   "every tensor of the compact load is bit-identical to the dense pruned load" if not differing else
                   f"{len(differing)} tensors differ between the compact and the dense load, e.g. {differing[0]}",
                   differing=differing[:20])
    if tokenizer is None:
        return

    prompt_ids = [tokenizer(prompt).input_ids for prompt in request.prompts]
    result.notes["prompt_ids"] = prompt_ids
    text_ids = tokenize(tokenizer, load_text(request.text))
    windows = engine_windows(result, request, tokenizer)
    margins: dict[str, Any] = {}
    for name, model in models.items():
        generated = run_step(result, f"generate/{name}", lambda m=model: generate_all(m, prompt_ids,
                                                                                      request.max_new_tokens))
        if generated is not None:
            result.generated[name], margins[name] = generated
        ppl = run_step(result, f"perplexity/{name}", lambda m=model: perplexity(
            m, text_ids, seq_len=request.seq_len, max_windows=request.ppl_windows, progress=False,
            bos_token_id=windows.bos_token_id))
        if ppl is not None:
            result.ppl[name] = ppl
            logger.info("%s: perplexity %.4f", name, ppl)
    result.notes["margins"] = margins
    if "compact" in result.generated:
        greedy_check(result, "agrees/greedy-compact", result.generated.get("pruned"), result.generated["compact"],
                     margins=margins.get("pruned"))
    if "compact" in result.ppl:
        perplexity_check(result, "agrees/perplexity-compact", result.ppl["compact"], result.ppl.get("pruned"),
                         request.tolerances.ppl_rel)
    timed = "compact" if "compact" in models else "pruned"  # the compact load runs the sparse kernels
    models.pop("pruned" if timed == "compact" else "compact", None)  # keep only the model speed will time
    if request.speed is None:
        models.pop(timed, None)
    gc.collect()

    if request.speed is not None and timed in models and "baseline" in models:
        settings = request.speed
        needed = max(settings.prefill_tokens, settings.batch * SHORT_PROMPT)
        if text_ids.numel() < needed:
            result.add("speed", False, f"the text has {text_ids.numel()} tokens; speed needs {needed}")
            return
        rounds = {"baseline": lambda: speed_round(models["baseline"], text_ids, settings),
                  "pruned": lambda: speed_round(models[timed], text_ids, settings)}
        samples = run_step(result, "speed", lambda: interleaved(rounds, settings.repetitions))
        if samples is not None:
            result.speed = speed_rows(samples, VARIANT)
            result.notes["threads"] = torch.get_num_threads()
            result.notes["speed_models"] = {"pruned": f"{timed} checkpoint" + (
                " (sparse kernels, packed weights)" if timed == "compact" else " (dense weights with zeros)"),
                "baseline": request.baseline}


def main(argv: Sequence[str] | None = None) -> int:
    return runner_main(run, "transformers", argv)


if __name__ == "__main__":
    raise SystemExit(main())
