"""Load checkpoints with vLLM, generate greedily and report tokens and log-probabilities as JSON.

    python -m owl_plugin.integrations.vllm.check --model DIR [--compare DIR] [--expect-failure DIR ...]
        [--pair DIR DIR ...] [--lora ADAPTER] --prompts "text" ["text" ...] [--max-tokens 16] [--json out.json]

Runs inside the vLLM venv; the validation suite calls it as a subprocess. Each model folder is
loaded with ``vllm.LLM`` (dtype float32 by default, eager mode), in turn, in this one process:
first every ``--expect-failure`` folder (a load that must fail, e.g. a corrupted compact
checkpoint: its error text is recorded), then ``--model``, then ``--compare``. For each prompt the
JSON holds the greedy text and token ids, the log-probability of each generated token, and
``prompt_logprobs``: the log-probability of every prompt token given the ones before it (``null``
for the first). With ``--compare`` it also holds the comparison (``identical`` = same token ids
and log-probabilities within ``--atol``, default 0: exact). ``--pair REFERENCE CANDIDATE`` (repeatable)
loads and compares more pairs in the same process (one vLLM import for many models, e.g. one pair
per architecture); each lands in ``pairs``. ``--tensor-parallel-size 2`` shards every model over two
worker processes (vLLM's ``mp`` executor, one CPU core each unless ``VLLM_CPU_OMP_THREADS_BIND`` says
otherwise); each rank packs its own shard, and ``sparse_ranks`` holds every rank's kernel report.
``--lora ADAPTER`` (a PEFT LoRA folder) starts every engine with LoRA enabled and generates through the
adapter, over whichever base each checkpoint is (on a compact one: the sparse kernels); its
``prompt_logprobs`` are then empty (vLLM 0.32's CPU LoRA fails computing them).

The engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` unless set), so a failed load
raises its own error here rather than "engine core initialization failed".

Exit status: 0 when every load behaved as expected and the outputs match (or nothing was
compared), 1 when the compared outputs differ, 2 when a load failed or an expected failure
loaded fine.

JSON layout::

    {"vllm_version": ..., "prompts": [...], "settings": {...},
     "runs": [{"model": DIR, "quantization": "owl_sparse" | null, "load_seconds": s,
               "generate_seconds": s, "outputs": [{"prompt", "text", "token_ids", "logprobs",
               "prompt_token_ids", "prompt_logprobs", "finish_reason"}, ...]}, ...],
     "failures": [{"model": DIR, "expected": bool, "error_type": ..., "error": text}, ...],
     "comparison": {"identical": bool, "token_ids_equal": bool, "max_prompt_logprob_diff": x,
                    "max_logprob_diff": x, "differing_prompts": [...]},       # with --compare
     "pairs": [{"reference": run, "candidate": run, "comparison": {...}}, ...]}  # with --pair
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger("owl_plugin.integrations.vllm.check")

DEFAULT_PROMPTS = ("The capital of France is", "def fibonacci(n):", "Sparse neural networks are")
EXIT_OK, EXIT_MISMATCH, EXIT_LOAD = 0, 1, 2


def _token_logprob(entry: dict[int, Any] | None, token: int) -> float | None:
    """The log-probability vLLM reports for ``token`` at one position (None when absent)."""
    if entry is None or token not in entry:
        return None
    return float(entry[token].logprob)


def cleanup() -> None:
    """Free in-process engines (after ``del llm``) before the next one starts; also used by ``validate``."""
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    gc.collect()
    cleanup_dist_env_and_memory()


_cleanup = cleanup


class SparseReportExtension:
    """Mixed into vLLM's workers (``worker_extension_cls``) so a tensor-parallel run can report each rank's
    sparse layers by method name, without shipping a function to the workers (that needs pickle)."""

    def owl_sparse_report(self) -> dict[str, Any]:
        from owl_plugin.kernels.report import sparse_layer_report

        return sparse_layer_report(self.get_model())


def thread_binding(ranks: int) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` giving each rank an equal share of this process's CPUs, e.g. ``0|1``."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < ranks:
        raise ValueError(f"--tensor-parallel-size {ranks} needs at least {ranks} CPUs; this process may use {cores}")
    share = len(cores) // ranks
    return "|".join(",".join(str(c) for c in cores[r * share:(r + 1) * share]) for r in range(ranks))


def _engine(model: str, args: argparse.Namespace):
    from vllm import LLM

    parallel = {}
    if args.tensor_parallel_size > 1:
        # vLLM's automatic binding wants one NUMA node per rank; these machines have one
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", thread_binding(args.tensor_parallel_size))
        parallel = {"tensor_parallel_size": args.tensor_parallel_size, "distributed_executor_backend": "mp",
                    "worker_extension_cls": f"{__name__}.SparseReportExtension"}
    lora = {}
    if args.lora:
        rank = json.loads((Path(args.lora) / "adapter_config.json").read_text())["r"]
        lora = {"enable_lora": True, "max_lora_rank": max(8, int(rank)), "max_loras": 1}
    return LLM(model=model, dtype=args.dtype, enforce_eager=not args.compile, max_model_len=args.max_model_len,
               seed=args.seed, max_num_seqs=max(1, len(args.prompts)), **parallel, **lora)


def run_model(model: str, args: argparse.Namespace) -> dict[str, Any]:
    """Load ``model`` with vLLM, generate greedily for ``args.prompts`` and return the report entry."""
    from vllm import SamplingParams

    started = time.perf_counter()
    llm = _engine(model, args)
    loaded = time.perf_counter()
    try:
        # vLLM 0.32's CPU LoRA fails computing prompt log-probabilities (a batch-size mismatch in its
        # logits LoRA), so with --lora they are not asked for (and come out empty)
        params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, logprobs=0, seed=0,
                                prompt_logprobs=None if args.lora else 0)
        adapter = None
        if args.lora:
            from vllm.lora.request import LoRARequest

            adapter = LoRARequest("adapter", 1, str(Path(args.lora).absolute()))
        results = llm.generate(list(args.prompts), params, use_tqdm=False, lora_request=adapter)
        outputs = []
        for prompt, result in zip(args.prompts, results, strict=True):
            completion = result.outputs[0]
            prompt_ids = list(result.prompt_token_ids)
            outputs.append({
                "prompt": prompt,
                "text": completion.text,
                "token_ids": list(completion.token_ids),
                "logprobs": [_token_logprob(entry, token)
                             for entry, token in zip(completion.logprobs or [], completion.token_ids, strict=False)],
                "prompt_token_ids": prompt_ids,
                "prompt_logprobs": [_token_logprob(entry, token)
                                    for entry, token in zip(result.prompt_logprobs or [], prompt_ids, strict=False)],
                "finish_reason": completion.finish_reason,
            })
        quantization = llm.model_config.quantization
        from owl_plugin.kernels.report import sparse_layer_report

        if args.tensor_parallel_size > 1:
            ranks = llm.collective_rpc("owl_sparse_report")
        else:
            ranks = llm.apply_model(sparse_layer_report)  # runs inside the (in-process) worker
        sparse = ranks[0]
    finally:
        del llm
        _cleanup()
    return {"model": model, "quantization": quantization, "load_seconds": round(loaded - started, 2),
            "generate_seconds": round(time.perf_counter() - loaded, 2), "sparse": sparse, "sparse_ranks": ranks,
            "outputs": outputs}


def _wrapped(chain: list[BaseException]) -> list[BaseException]:
    """Errors wrapped by pydantic: a ValueError raised while vLLM builds its (pydantic) config, e.g. by the
    owl_sparse integrity check, reaches the caller as a ValidationError holding it in ``errors()[i]["ctx"]``."""
    found = []
    for error in chain:
        entries = error.errors() if callable(getattr(error, "errors", None)) else []
        for entry in entries if isinstance(entries, list) else []:
            inner = (entry.get("ctx") or {}).get("error") if isinstance(entry, dict) else None
            if isinstance(inner, BaseException):
                found.append(inner)
    return found


def load_failure(model: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """Try to load and run ``model``; ``None`` if that works, else the failure record.

    The record's ``error`` is the text of the first ``CompactFormatError`` in the error's chain
    (the one naming the tensor; also when pydantic wrapped it), else of the innermost error;
    ``outer_error`` is what vLLM raised.
    """
    from owl_plugin.formats.compact import CompactFormatError

    try:
        run_model(model, args)
    except Exception as error:  # noqa: BLE001 - the load error is what is being reported
        _cleanup()
        chain = [error]
        while (chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 50:
            chain.append(chain[-1].__cause__ or chain[-1].__context__)
        chain += _wrapped(chain)
        root = next((e for e in chain if isinstance(e, CompactFormatError)), chain[-1])
        logger.info("loading %s failed as expected: %s: %s", model, type(root).__name__, root)
        return {"model": model, "expected": True, "error_type": type(root).__name__, "error": str(root),
                "outer_error": f"{type(error).__name__}: {error}",
                "traceback": "".join(traceback.format_exception(error))[-4000:]}
    return None


def _max_diff(a: Sequence[float | None], b: Sequence[float | None]) -> float:
    """Largest |a - b| over positions where both are numbers (inf when lengths or presence differ)."""
    if len(a) != len(b) or any((x is None) != (y is None) for x, y in zip(a, b, strict=True)):
        return math.inf
    return max((abs(x - y) for x, y in zip(a, b, strict=True) if x is not None), default=0.0)


def compare(reference: dict[str, Any], candidate: dict[str, Any], *, atol: float) -> dict[str, Any]:
    """Compare two runs prompt by prompt."""
    differing, prompt_diff, token_diff, same_tokens = [], 0.0, 0.0, True
    for ref, cand in zip(reference["outputs"], candidate["outputs"], strict=True):
        tokens_equal = ref["token_ids"] == cand["token_ids"] and ref["prompt_token_ids"] == cand["prompt_token_ids"]
        p_diff = _max_diff(ref["prompt_logprobs"], cand["prompt_logprobs"])
        t_diff = _max_diff(ref["logprobs"], cand["logprobs"]) if tokens_equal else math.inf
        same_tokens &= tokens_equal
        prompt_diff, token_diff = max(prompt_diff, p_diff), max(token_diff, t_diff)
        if not tokens_equal or p_diff > atol or t_diff > atol:
            differing.append(ref["prompt"])
    return {"identical": not differing, "token_ids_equal": same_tokens, "atol": atol,
            "max_prompt_logprob_diff": prompt_diff, "max_logprob_diff": token_diff, "differing_prompts": differing}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m owl_plugin.integrations.vllm.check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="checkpoint folder (dense or compact); optional with --expect-failure")
    parser.add_argument("--compare", default=None, metavar="DIR", help="second checkpoint to compare with --model")
    parser.add_argument("--expect-failure", action="append", default=[], metavar="DIR",
                        help="checkpoint whose load must fail (its error is recorded); repeatable")
    parser.add_argument("--pair", action="append", nargs=2, default=[], metavar=("REFERENCE", "CANDIDATE"),
                        help="two checkpoints to load and compare, like --model/--compare; repeatable")
    parser.add_argument("--prompts", nargs="+", default=list(DEFAULT_PROMPTS), help="prompts (default: three)")
    parser.add_argument("--max-tokens", type=int, default=16, help="greedy tokens per prompt (default 16)")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the report here (default: stdout)")
    parser.add_argument("--dtype", default="float32", help="vLLM dtype (default float32, for exact comparison)")
    parser.add_argument("--atol", type=float, default=0.0, help="log-probability tolerance of --compare (default 0)")
    parser.add_argument("--max-model-len", type=int, default=512, help="context length (default 512)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tensor-parallel-size", type=int, default=1, metavar="N",
                        help="shard each model over N worker processes (default 1: in-process)")
    parser.add_argument("--lora", default=None, metavar="ADAPTER",
                        help="a PEFT LoRA adapter folder: enable LoRA and generate through it")
    parser.add_argument("--compile", action="store_true",
                        help="let vLLM compile (slower start-up; default: enforce_eager)")
    args = parser.parse_args(argv)
    if args.model is None and not args.expect_failure and not args.pair:
        parser.error("give --model DIR, --pair DIR DIR, or only --expect-failure DIR to check that loads fail")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import vllm

    report: dict[str, Any] = {
        "vllm_version": vllm.__version__, "prompts": list(args.prompts),
        "settings": {"dtype": args.dtype, "max_tokens": args.max_tokens, "enforce_eager": not args.compile,
                     "tensor_parallel_size": args.tensor_parallel_size, "lora": args.lora,
                     "max_model_len": args.max_model_len, "seed": args.seed},
        "runs": [], "failures": [],
    }
    status = EXIT_OK
    for model in args.expect_failure:
        failure = load_failure(model, args)
        if failure is None:
            logger.error("%s loaded although it should have failed", model)
            report["failures"].append({"model": model, "expected": True, "error_type": None, "error": None})
            status = EXIT_LOAD
        else:
            report["failures"].append(failure)
    def runs(*models: str) -> list[dict[str, Any]]:
        nonlocal status
        done = []
        for model in models:
            try:
                done.append(run_model(model, args))
            except Exception:
                logger.exception("loading %s failed", model)
                report["failures"].append({"model": model, "expected": False, "error_type": None,
                                           "error": traceback.format_exc()[-4000:]})
                status = EXIT_LOAD
        return done

    def compared(pair: list[dict[str, Any]]) -> dict[str, Any]:
        nonlocal status
        comparison = compare(*pair, atol=args.atol)
        if not comparison["identical"] and status == EXIT_OK:
            status = EXIT_MISMATCH
        logger.info("comparison %s vs %s: %s", pair[0]["model"], pair[1]["model"],
                    {k: v for k, v in comparison.items() if k != "differing_prompts"})
        return comparison

    report["runs"] = runs(*filter(None, (args.model, args.compare)))
    if args.compare and len(report["runs"]) == 2:
        report["comparison"] = compared(report["runs"])
    if args.pair:
        report["pairs"] = []
        for reference, candidate in args.pair:
            pair = runs(reference, candidate)
            if len(pair) == 2:
                report["pairs"].append({"reference": pair[0], "candidate": pair[1], "comparison": compared(pair)})
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    else:
        sys.stdout.write(text + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
