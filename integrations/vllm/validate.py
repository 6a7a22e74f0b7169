"""The vLLM runner of ``owl validate`` (``owl_plugin/validation/PROTOCOL.md``).

    python -m owl_plugin.integrations.vllm.validate REQUEST.json RESULT.json

Runs in the vLLM venv with the engine in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so a
refused checkpoint raises vLLM's own error here, and loads as few engines as it can (each start
costs tens of seconds on CPU):

1. the pruned (dense) checkpoint: ``loads/pruned``; the engine's weights read back
   (``LLM.apply_model``; on CPU through the engine's own packed GEMM applied to the identity;
   fused ``qkv_proj`` / ``gate_up_proj`` split by their ``output_sizes``)
   against ``sparsity_profile.json`` (``sparsity/pruned``); greedy ids for the reference prompt
   ids (``agrees/greedy-pruned``) and perplexity from ``prompt_logprobs`` over the same windows
   as transformers (``agrees/perplexity-pruned``);
2. the compact export: the same checks, plus every weight bit-identical (SHA-256) to the dense
   load (``weights/compact-equals-pruned``);
3. the dense baseline (with ``speed``, or to check its generation): greedy and perplexity vs the
   baseline reference, then compact and baseline timed interleaved while both are loaded;
4. with ``serve``: ``python -m vllm.entrypoints.openai.api_server`` (loopback) for the compact
   and for the dense checkpoint in turn, each sent ``requests`` greedy completions,
   ``concurrency`` at a time, each with a time limit; every request must succeed and the
   compact server's texts must equal the dense server's. Latency percentiles go to notes.

The compact load runs owl_plugin's sparse kernels (``kernels/compact`` names the layers and the ISA
path), so the speed rows compare them with vLLM's own dense GEMM. ``check.py`` is the lower-level driver used by
tests/test_vllm_plugin.py (token log-probabilities, loads that must fail); both share its engine clean-up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from owl_plugin.integrations.vllm.check import cleanup as free_engines
from owl_plugin.profile import SparsityProfile
from owl_plugin.validation.checks import (
    checkpoints_to_load, engine_windows, greedy_check, kernel_check, perplexity_check, reference_of, run_step,
    runner_main, sparsity_check,
)
from owl_plugin.validation.protocol import EngineRequest, EngineResult, ServeSettings
from owl_plugin.validation.timing import interleaved, speed_rows

logger = logging.getLogger("owl_plugin.integrations.vllm.validate")

VARIANT = "fp32"
SHORT_PROMPT = 16  # tokens of the decode / throughput / serve prompts
SERVED_NAME = "owl-validate"


# -- engines ---------------------------------------------------------------------------------
def _max_model_len(request: EngineRequest, prompt_ids: Sequence[Sequence[int]]) -> int:
    needed = [request.seq_len + 1, max(map(len, prompt_ids)) + request.max_new_tokens + 1]
    if request.speed:
        needed += [request.speed.prefill_tokens + 2, SHORT_PROMPT + request.speed.decode_tokens + 1]
    if request.serve:
        needed.append(SHORT_PROMPT + request.serve.max_tokens + 1)
    return 64 * math.ceil(max(needed) / 64)


def start_engine(path: str, *, max_model_len: int, max_num_seqs: int):
    """An in-process ``vllm.LLM`` in float32, eager, without prefix caching (it would hide prefill time)."""
    from vllm import LLM

    return LLM(model=path, dtype="float32", enforce_eager=True, max_model_len=max_model_len, seed=0,
               max_num_seqs=max_num_seqs, enable_prefix_caching=False)


def _engine_weight(module) -> Any:
    """The dense 2-D weight a vLLM linear layer computes with, or None.

    On CPU vLLM packs linear weights for oneDNN / its own GEMM and replaces ``weight`` by an empty
    tensor; the weight is then read back *through the engine's own kernel*: ``cpu_linear(I) = I·Wᵀ``
    with the identity I, which is exact in float32 (every output is one product with 1.0 plus zeros).
    """
    import torch

    packed = getattr(module, "owl_packed", None)
    if packed is not None:  # owl_sparse layer running the sparse kernels: no dense copy is held
        from owl_plugin.kernels import decompress_rows

        return decompress_rows(packed)
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.numel() > 0:
        return weight.detach()
    linear = getattr(module, "cpu_linear", None)
    width = getattr(module, "input_size_per_partition", None)
    if linear is None or width is None:
        return None
    dtype = getattr(module, "params_dtype", None) or torch.float32
    with torch.no_grad():
        return linear(torch.eye(width, dtype=dtype), weight, None).t().contiguous()


def _digest(tensor: Any) -> str:
    data = tensor.detach().cpu().contiguous().view(-1)
    return hashlib.sha256(data.view(dtype=data.dtype).numpy().tobytes()).hexdigest() if data.numel() else "empty"


def _read_back(model) -> dict[str, Any]:
    """Runs inside the worker: per checkpoint module (zeros, numel, row length) and a SHA-256 of every weight."""
    packed = dict(getattr(model, "packed_modules_mapping", {}) or {})
    measured, digests = {}, {}
    for name, module in model.named_modules():
        weight = _engine_weight(module) if name.startswith("model.layers.") else None
        for param_name, param in module.named_parameters(recurse=False):
            digests[f"{name}.{param_name}"] = _digest(weight if param_name == "weight" and weight is not None
                                                      else param)
        if weight is not None and f"{name}.weight" not in digests:  # packed layers hold no weight parameter
            digests[f"{name}.weight"] = _digest(weight)
        if weight is None:
            continue
        parent, _, leaf = name.rpartition(".")
        sizes = getattr(module, "output_sizes", None)
        parts = packed.get(leaf)
        if parts and sizes and len(parts) == len(sizes) and sum(sizes) == weight.shape[0]:
            offset = 0
            for part, size in zip(parts, sizes, strict=True):
                piece = weight[offset:offset + size]
                measured[f"{parent}.{part}"] = (int((piece == 0).sum()), piece.numel(), int(piece.shape[1]))
                offset += size
        else:
            measured[name] = (int((weight == 0).sum()), weight.numel(), int(weight.shape[1]))
    return {"measured": measured, "digests": digests}


def read_back(llm) -> dict[str, Any]:
    return llm.apply_model(_read_back)[0]


def generate(llm, prompt_ids: Sequence[Sequence[int]], max_tokens: int) -> list[list[int]]:
    """Greedy ids of exactly ``max_tokens`` tokens per prompt (EOS ignored, like the reference)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, seed=0)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_ids], params, use_tqdm=False)
    return [list(out.outputs[0].token_ids) for out in outputs]


def perplexity(llm, text_ids: Sequence[int], *, seq_len: int, windows: int, bos_token_id: int | None = None) -> float:
    """exp(Σ NLL / (W·(L−1))) over the first W windows, from vLLM's ``prompt_logprobs`` (as owl_plugin.evaluation),
    on the windows ``owl_plugin.text.evaluation_windows`` builds (the same in every engine)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from owl_plugin.text import evaluation_windows

    prompts = [TokensPrompt(prompt_token_ids=window) for window in evaluation_windows(
        text_ids, seq_len=seq_len, max_windows=windows, bos_token_id=bos_token_id)]
    outputs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0), use_tqdm=False)
    nll, tokens = 0.0, 0
    for prompt, out in zip(prompts, outputs, strict=True):
        ids = prompt["prompt_token_ids"]
        for position in range(1, len(ids)):
            entry = out.prompt_logprobs[position]
            nll -= float(entry[ids[position]].logprob)
            tokens += 1
    return math.exp(nll / tokens)


def speed_round(llm, text_ids: Sequence[int], settings) -> dict[str, float]:
    """prefill_ms (``prefill_tokens`` prompt, 1 token), decode_tok_s (batch 1), throughput_tok_s (batch ``batch``)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    def timed(prompts: list, max_tokens: int) -> float:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        started = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        return time.perf_counter() - started

    long_prompt = [TokensPrompt(prompt_token_ids=list(text_ids[:settings.prefill_tokens]))]
    short = [TokensPrompt(prompt_token_ids=list(text_ids[i * SHORT_PROMPT:(i + 1) * SHORT_PROMPT]))
             for i in range(settings.batch)]
    prefill = timed(long_prompt, 1)
    first = timed(short[:1], 1)
    whole = timed(short[:1], settings.decode_tokens)
    batch = timed(short, settings.decode_tokens)
    return {"prefill_ms": prefill * 1000, "decode_tok_s": (settings.decode_tokens - 1) / max(whole - first, 1e-9),
            "throughput_tok_s": settings.batch * settings.decode_tokens / batch}


# -- serving under load ------------------------------------------------------------------------
PORT_ATTEMPTS = 5  # a port taken between choosing and binding it: the server exits at once, we retry on another
_PORT_TAKEN = ("address already in use", "errno 98", "eaddrinuse")

#: loopback requests never go through a proxy (http_proxy / HTTPS_PROXY / no_proxy are ignored): the
#: prompts, completions and API key stay on this machine
LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port() -> int:
    """A port free now; the server binds it later, so ``Server`` retries if someone took it meanwhile."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, body: dict[str, Any], timeout: float, api_key: str | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=data, headers=headers)
    with LOOPBACK.open(request, timeout=timeout) as response:
        return json.loads(response.read())


def _get(url: str, timeout: float, api_key: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with LOOPBACK.open(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
        return response.status, response.read()


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": ordered[-1], "mean": sum(ordered) / len(ordered)}


class Server:
    """``python -m vllm.entrypoints.openai.api_server`` on 127.0.0.1, stopped (and its children) on exit.

    The server gets a random API key (``VLLM_API_KEY`` in its environment, not on its command line) and
    every request carries it, so no other local process can use the engine, and a process that took the
    port first cannot pass for it (ready = ``/v1/models`` answers with the key and our served name).
    The port is chosen free and bound by the server moments later; if it was taken in between, the
    server exits with "address already in use" and ``wait_ready`` starts it again on another port.
    Requests bypass any proxy (``LOOPBACK``).
    """

    def __init__(self, model: str, log: Path, *, max_model_len: int, settings: ServeSettings,
                 engine_args: Sequence[str] = ("--dtype", "float32", "--enforce-eager")) -> None:
        # engine_args: the validation compares in fp32 without compilation; the serving benchmark passes bf16
        self.model, self.log, self.settings, self.max_model_len = model, log, settings, max_model_len
        self.engine_args = list(engine_args)
        self.api_key = secrets.token_urlsafe(32)
        self.attempts = 0
        self._sink = None
        self._log_start = 0
        self._start()

    def _start(self) -> None:
        self.attempts += 1
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
        env["VLLM_API_KEY"] = self.api_key
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
                   "--host", "127.0.0.1", "--port", str(self.port), "--served-model-name", SERVED_NAME,
                   *self.engine_args, "--max-model-len", str(self.max_model_len), "--seed", "0",
                   "--max-num-seqs", str(max(self.settings.concurrency, 1)), "--no-enable-prefix-caching"]
        if self._sink is not None:
            self._sink.close()
        self._sink = open(self.log, "ab" if self.attempts > 1 else "wb")  # noqa: SIM115 - closed in stop()
        self._log_start = self._sink.tell()  # this attempt's output starts here
        # same process group as this runner: the orchestrator's group kill reaches it too
        self.process = subprocess.Popen(command, stdout=self._sink, stderr=subprocess.STDOUT, env=env)

    def _is_ours(self) -> bool:
        """Our server answers the API with our key and serves our model name."""
        try:
            status, body = _get(f"{self.url}/v1/models", 10, self.api_key)
            names = [entry.get("id") for entry in json.loads(body).get("data", [])]
        except (urllib.error.URLError, OSError, ValueError, AttributeError):
            return False
        return status == 200 and SERVED_NAME in names

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                with open(self.log, "rb") as handle:
                    handle.seek(self._log_start)
                    text = handle.read().decode(errors="replace")
                if any(mark in text.lower() for mark in _PORT_TAKEN) and self.attempts < PORT_ATTEMPTS:
                    logger.info("port %d was taken before the vLLM server bound it; retrying on another", self.port)
                    self._start()
                    continue
                tail = "\n".join(text.splitlines()[-15:])
                raise RuntimeError(f"the vLLM server exited with status {self.process.returncode} before it was "
                                   f"ready; its log ({self.log}) ends:\n{tail}")
            try:
                status, _ = _get(f"{self.url}/health", 5)
                if status == 200 and self.process.poll() is None and self._is_ours():
                    return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(2)
        raise TimeoutError(
            f"the vLLM server was not ready within {self.settings.startup_timeout:.0f} s (log {self.log})")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._sink is not None:
            self._sink.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def load_test(url: str, prompts: Sequence[Sequence[int]], settings: ServeSettings,
              api_key: str | None = None) -> dict[str, Any]:
    """Send one greedy completion per prompt, ``concurrency`` in flight; texts, errors, latencies."""

    def one(ids: Sequence[int]) -> tuple[str | None, str | None, float]:
        started = time.perf_counter()
        body = {"model": SERVED_NAME, "prompt": list(ids), "max_tokens": settings.max_tokens, "temperature": 0.0,
                "ignore_eos": True, "seed": 0}
        try:
            reply = _post(f"{url}/v1/completions", body, settings.request_timeout, api_key)
            return reply["choices"][0]["text"], None, time.perf_counter() - started
        except Exception as error:  # noqa: BLE001 - counted as a failed request
            return None, f"{type(error).__name__}: {error}", time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=settings.concurrency) as pool:
        futures = [pool.submit(one, ids) for ids in prompts]
        done, pending = wait(futures, timeout=settings.request_timeout + 60)
        for future in pending:
            future.cancel()
    wall = time.perf_counter() - started
    texts, errors, latencies = [], [], []
    for index, future in enumerate(futures):
        if future in pending or not future.done() or future.cancelled():
            texts.append(None)
            errors.append(f"request {index}: no answer within {settings.request_timeout + 60:.0f} s")
            continue
        text, error, seconds = future.result()
        texts.append(text)
        latencies.append(seconds * 1000)
        if error:
            errors.append(f"request {index}: {error}")
    return {"requests": len(prompts), "concurrency": settings.concurrency,
            "answered": sum(t is not None for t in texts),
            "errors": len(errors), "error_samples": errors[:5], "latency_ms": _percentiles(latencies),
            "wall_seconds": wall, "requests_per_s": len(prompts) / wall if wall else 0.0, "texts": texts}


def serve_check(request: EngineRequest, result: EngineResult, text_ids: Sequence[int], max_model_len: int) -> None:
    """``vllm serve`` compact, then dense, under concurrent load; their greedy texts must be equal."""
    settings = request.serve
    prompts = [text_ids[i * SHORT_PROMPT:(i + 1) * SHORT_PROMPT] for i in range(settings.requests)]
    if len(prompts[-1]) < SHORT_PROMPT:
        result.add("serve", False, f"the text has too few tokens for {settings.requests} serve prompts")
        return
    stats: dict[str, Any] = {}
    work = Path(request.work_dir)
    for name, path in (("compact", request.compact), ("pruned", request.pruned)):
        if path is None:
            result.add(f"serve/{name}", False, f"no {name} checkpoint to serve")
            continue

        def serve_one(model: str = path, label: str = name) -> dict[str, Any]:
            started = time.perf_counter()
            with Server(model, work / f"serve-{label}.log", max_model_len=max_model_len, settings=settings) as server:
                server.wait_ready()
                startup = time.perf_counter() - started
                logger.info("%s server ready in %.0f s; sending %d requests, %d at a time", label, startup,
                            settings.requests, settings.concurrency)
                outcome = load_test(server.url, prompts, settings, server.api_key)
            outcome["startup_seconds"] = startup
            return outcome

        outcome = run_step(result, f"serve/{name}", serve_one)
        if outcome is None:
            continue
        stats[name] = outcome
        ok = outcome["errors"] == 0 and outcome["answered"] == outcome["requests"]
        lat = outcome["latency_ms"]
        result.add(f"serve/{name}", ok,
                   f"{outcome['answered']}/{outcome['requests']} completions answered with {outcome['errors']} errors "
                   f"({outcome['concurrency']} concurrent); latency p50 {lat.get('p50', 0):.0f} ms, "
                   f"p99 {lat.get('p99', 0):.0f} ms" + (f"; e.g. {outcome['error_samples'][0]}" if not ok and
                                                       outcome["error_samples"] else ""),
                   **{k: v for k, v in outcome.items() if k != "texts"})
    if "compact" in stats and "pruned" in stats:
        ours, theirs = stats["compact"]["texts"], stats["pruned"]["texts"]
        differing = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a is None or a != b]
        detail = (f"all {len(ours)} served greedy completions of the compact checkpoint equal the dense one's"
                  if not differing else
                  f"{len(differing)} of {len(ours)} served completions differ; first: request {differing[0]}: "
                  f"compact {ours[differing[0]]!r} vs dense {theirs[differing[0]]!r}")
        result.add("serve/agrees", not differing, detail, differing=differing[:20])
    result.notes["serve"] = {name: {k: v for k, v in s.items() if k != "texts"} for name, s in stats.items()}


# -- the runner --------------------------------------------------------------------------------
def _check_engine(llm, name: str, request: EngineRequest, result: EngineResult, profile: SparsityProfile | None,
                  prompt_ids: list[list[int]], text_ids: list[int]) -> dict[str, Any] | None:
    """Read back, generate and score one loaded engine against its transformers reference."""
    back = None
    if profile is not None:
        back = run_step(result, f"sparsity/{name}", lambda: read_back(llm))
        if back is not None:
            sparsity_check(result, f"sparsity/{name}", profile, back["measured"])
    if name == "compact":
        from owl_plugin.kernels.report import sparse_layer_report

        report = run_step(result, "kernels/compact", lambda: llm.apply_model(sparse_layer_report)[0])
        if report is not None:
            kernel_check(result, "kernels/compact", report)
    reference = reference_of(request, "baseline" if name == "baseline" else "pruned")
    generated = run_step(result, f"agrees/greedy-{name}", lambda: generate(llm, prompt_ids, request.max_new_tokens))
    if generated is not None:
        result.generated[name] = generated
        greedy_check(result, f"agrees/greedy-{name}", reference and reference.get("generated_ids"), generated,
                     margins=reference and reference.get("margins"))
    ppl = run_step(result, f"agrees/perplexity-{name}",
                   lambda: perplexity(llm, text_ids, seq_len=request.seq_len, windows=request.ppl_windows,
                                      bos_token_id=result.notes["windows"]["bos_token_id"]))
    if ppl is not None:
        result.ppl[name] = ppl
        perplexity_check(result, f"agrees/perplexity-{name}", ppl, reference and reference.get("ppl"),
                         request.tolerances.ppl_rel)
    return back


def run(request: EngineRequest, result: EngineResult) -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import torch
    import vllm
    from transformers import AutoTokenizer

    from owl_plugin.text import load_text, tokenize

    result.versions = {"vllm": vllm.__version__, "torch": torch.__version__}
    profile = SparsityProfile.load(request.pruned)
    tokenizer = AutoTokenizer.from_pretrained(request.pruned)
    reference = reference_of(request, "pruned") or {}
    prompt_ids = reference.get("prompt_ids") or [tokenizer(p).input_ids for p in request.prompts]
    text_ids = tokenize(tokenizer, load_text(request.text)).tolist()
    engine_windows(result, request, tokenizer)
    max_model_len = _max_model_len(request, prompt_ids)
    seqs = max(len(prompt_ids), request.ppl_windows, request.speed.batch if request.speed else 1)
    engines: dict[str, Any] = {}
    digests: dict[str, dict[str, str]] = {}
    keep = {"compact", "baseline"} if request.speed else set()
    for name, path in checkpoints_to_load(request, result):
        started = time.perf_counter()
        llm = run_step(result, f"loads/{name}", lambda p=path: start_engine(p, max_model_len=max_model_len,
                                                                          max_num_seqs=seqs))
        if llm is None:
            free_engines()
            continue
        quantization = llm.model_config.quantization
        result.add(f"loads/{name}", True, f"{path} loaded by vLLM in {time.perf_counter() - started:.0f} s "
                                          f"(quantization {quantization!r})", quantization=quantization,
                   seconds=time.perf_counter() - started)
        back = _check_engine(llm, name, request, result, None if name == "baseline" else profile, prompt_ids, text_ids)
        if back is not None:
            digests[name] = back["digests"]
        if name in keep:
            engines[name] = llm
        else:
            del llm
            free_engines()
    if "pruned" in digests and "compact" in digests:
        a, b = digests["pruned"], digests["compact"]
        differing = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        result.add("weights/compact-equals-pruned", not differing,
                   f"all {len(a)} parameters vLLM holds for the compact checkpoint are bit-identical to the dense "
                   "checkpoint's" if not differing else
                   f"{len(differing)} vLLM parameters differ between compact and dense loads, e.g. {differing[0]}",
                   differing=differing[:20])
    if request.speed is not None and {"compact", "baseline"} <= engines.keys():
        settings = request.speed
        rounds = {"baseline": lambda: speed_round(engines["baseline"], text_ids, settings),
                  "pruned": lambda: speed_round(engines["compact"], text_ids, settings)}
        samples = run_step(result, "speed", lambda: interleaved(rounds, settings.repetitions))
        if samples is not None:
            result.speed = speed_rows(samples, VARIANT)
            result.notes["speed_models"] = {"pruned": "compact checkpoint (sparse kernels, packed weights)",
                                            "baseline": request.baseline}
    engines.clear()
    free_engines()
    if request.serve is not None:
        serve_check(request, result, text_ids, max_model_len)


def main(argv: Sequence[str] | None = None) -> int:
    return runner_main(run, "vllm", argv)


if __name__ == "__main__":
    raise SystemExit(main())
