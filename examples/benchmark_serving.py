"""End-to-end serving benchmark: a compact (owl_sparse) checkpoint on the sparse kernels vs its dense twin.

    .venv/bin/python examples/benchmark_serving.py [--quick] [--models llama1b smollm2] \\
        [--engines vllm vllm-serve transformers] [--batches 1 8] [--rounds 5] [--same-process] \\
        [--out examples/results/serving_table.md]

For each model it writes two checkpoints holding the same pruned weights: *dense* (an ordinary
bf16 checkpoint with zeros) and *compact* (``owl export --format compact``), then, per engine,
starts one worker process per checkpoint (both stay loaded) and times them **interleaved**: every
round runs each measurement on dense and compact back to back (order alternating per round), and
the table gives the median over rounds and the ratio compact / dense of those medians. Measures:

* decode tok/s at each ``--batches`` (1 and 8; the engines admit that many sequences at once):
  ``new_tokens`` greedy tokens (EOS ignored) after a 16-token prompt,
  tok/s = batch · new_tokens / wall time;
* prefill: one ``prefill`` -token prompt, 1 new token, wall time (vLLM's prefix cache off, or the
  repeated prompt would be served from it);
* memory: bytes of all parameters and buffers of the model inside the engine (for vLLM read in the
  engine process with ``LLM.apply_model``; vLLM-CPU's dense layers hold oneDNN-prepacked weights that
  are no tensors, so this undercounts dense there), and the worker process's resident set (VmRSS,
  same KV-cache size in both, so the difference is the weights) after loading and after the runs (a dense
  transformers load maps the file lazily: its pages count once a forward has touched them); then the
  compact model's weight bytes against the dense bf16 model (parameters × 2, the same for every engine),
  and the packed linears alone against their dense bytes;
* the kernel path (``owl_plugin.kernels.kernel_info()`` inside the engine) and how many linear
  layers run on it.

Models: ``llama1b`` is TinyLlama-1.1B's shape, 1.100 B parameters (hidden 2048, intermediate 5632,
22 layers, 32 heads / 4 KV heads, 32000-token vocabulary; prompts are token ids) with random bf16
weights; ``smollm2`` is the real default model (SmolLM2-135M). Both are pruned per row by
magnitude with an OWL-shaped block profile: ``owl_plugin.allocators.owl.owl_ratios`` (λ = 0.08,
mean = the target) applied to a layer-outlier curve that falls with depth, as OWL measures on
real LLMs (random weights have no outliers of their own, so the curve is given, not measured).

vLLM runs in ``.venv-vllm`` (``$OWL_VLLM_VENV``) with torch.compile (vLLM-CPU's default), bf16, either in
process (``vllm``: ``LLM.generate``) or as ``vllm serve`` (``vllm-serve``: the OpenAI-compatible server, a batch
of b is b concurrent ``/v1/completions`` requests; only the server processes' RSS is visible from outside);
transformers in this venv, bf16. ``OWL_SPARSE_DENSE=1`` is how the dense worker of a compact model
would be made; here the dense worker simply loads the dense checkpoint. The CPU may be shared:
the table records the load average before and after. Not a test: nothing here asserts a speed.

``--same-process`` loads both checkpoints into *one* worker process (two engines side by side) instead of
one process each: the two then share one OpenMP pool, one allocator and one set of CPU caches, so what
differs between them is the model alone. Per-process effects (thread placement, which core a process
landed on) show up as the gap between the two modes; the RSS rows are left out there (one process holds
both), the weight-tensor rows stay. Not for ``vllm-serve`` (a server is its own process).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MARK = "@@owl-bench@@ "  # prefix of the worker's result lines (engines log to stdout too)
SHORT_PROMPT = 16
SIDE_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "chat_template.jinja")
# TinyLlama-1.1B's shape, vocabulary included (1.100 B parameters)
LLAMA1B = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
           "num_key_value_heads": 4, "vocab_size": 32000}
LLAMA_QUICK = {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 4, "num_attention_heads": 8,
               "num_key_value_heads": 2}


# -- checkpoints (main venv) -------------------------------------------------------------------------
def owl_shaped_block_sparsity(blocks: int, target: float) -> list[float]:
    """Per-block sparsity from OWL's formula on an outlier curve that falls with depth (mean = target)."""
    import numpy as np

    from owl_plugin.allocators.owl import owl_ratios

    depth = np.linspace(0.0, 1.0, blocks)
    outliers = 2.0 + 8.0 * np.exp(-depth * 4.0) + 1.5 * depth ** 8  # many in the first blocks, a rise at the end
    return [float(x) for x in owl_ratios(outliers, np.ones(blocks), target, lam=0.08).ratios]


def prune_rows(weight, sparsity: float):
    """Zero the ``floor(sparsity · in)`` smallest-magnitude entries of every row (in place, returned)."""
    count = math.floor(sparsity * weight.shape[1])
    smallest = weight.float().abs().argsort(dim=1)[:, :count]
    return weight.scatter_(1, smallest, 0.0)


def build_checkpoints(name: str, root: Path, sparsity: float, quick: bool) -> tuple[Path, Path, dict]:
    """Write ``root/name-dense`` and ``root/name-compact`` (same pruned bf16 weights); reused if present."""
    import torch
    from tqdm import tqdm
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from owl_plugin.export import export_checkpoint
    from owl_plugin.models import default_model_path
    from owl_plugin.profile import ModuleSparsity, SparsityProfile

    dense, compact = root / f"{name}-dense", root / f"{name}-compact"
    info_path = root / f"{name}-info.json"
    shape = None if name == "smollm2" else (LLAMA_QUICK if quick else LLAMA1B)
    recipe = {"name": name, "sparsity": sparsity, "shape": shape}
    if (compact / "config.json").is_file() and info_path.is_file():
        info = json.loads(info_path.read_text())
        if info.get("recipe") == recipe:
            return dense, compact, info
    shutil.rmtree(dense, ignore_errors=True)
    shutil.rmtree(compact, ignore_errors=True)
    source = default_model_path()
    if name == "smollm2":
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16)
    else:
        base = AutoConfig.from_pretrained(source)
        shape = {"vocab_size": base.vocab_size, **(LLAMA_QUICK if quick else LLAMA1B)}
        config = LlamaConfig(bos_token_id=base.bos_token_id, eos_token_id=base.eos_token_id,
                             max_position_embeddings=2048, tie_word_embeddings=False, dtype="bfloat16", **shape)
        torch.manual_seed(0)
        with torch.device("cpu"):
            model = LlamaForCausalLM(config).to(torch.bfloat16)
    blocks = model.config.num_hidden_layers
    ratios = owl_shaped_block_sparsity(blocks, sparsity)
    modules = {}
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
    with torch.no_grad():
        for module_name, linear in tqdm(linears, desc=f"pruning {name}"):
            block = int(module_name.split(".layers.")[1].split(".")[0])
            prune_rows(linear.weight.data, ratios[block])
            modules[module_name] = ModuleSparsity(ratios[block], linear.weight.numel(), f"model.layers.{block}")
    model.save_pretrained(dense, max_shard_size="20GB")
    for side in SIDE_FILES if name == "smollm2" else SIDE_FILES[:1]:  # llama1b: its own vocabulary, ids only
        if (source / side).is_file() and not (dense / side).exists():
            shutil.copy2(source / side, dense / side)
    params = sum(p.numel() for p in model.parameters())
    del model
    profile = SparsityProfile(method="owl-shaped", target=sparsity, modules=modules)
    export_checkpoint(dense, compact, format="compact", profile=profile)
    info = {"params": params, "block_sparsity": [round(r, 4) for r in ratios], "target": sparsity, "recipe": recipe}
    info_path.write_text(json.dumps(info))
    return dense, compact, info


# -- workers (run inside the engine's venv) ----------------------------------------------------------
def _param_bytes(model) -> int:
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _packed_stats(model) -> dict:
    """How many linears are packed, their packed bytes, and the bytes of the same weights dense in their dtype."""
    from owl_plugin.kernels.report import packed_linears

    packed = packed_linears(model)
    return {"packed_layers": len(packed), "packed_bytes": sum(p.nbytes() for p in packed),
            "packed_dense_bytes": sum(p.out_features * p.in_features * p.tensors["values"].element_size()
                                      for p in packed)}


def _rss_bytes() -> int:
    """Resident memory of this process (the engine runs in it: VLLM_ENABLE_V1_MULTIPROCESSING=0)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _kernel_info() -> dict:
    try:
        from owl_plugin.kernels import kernel_info
    except ImportError as error:
        return {"error": str(error)}
    return kernel_info()


class VllmWorker:
    def __init__(self, model: str, max_len: int, max_seqs: int) -> None:
        from vllm import LLM

        # no prefix caching: every round sends the same prompts, and a cached prefix would hide the prefill
        self.llm = LLM(model=model, dtype="bfloat16", max_model_len=max_len, max_num_seqs=max_seqs, seed=0,
                       skip_tokenizer_init=True, enable_prefix_caching=False)

    def info(self) -> dict:
        (stats,) = self.llm.apply_model(lambda m: {"weight_bytes": _param_bytes(m), **_packed_stats(m),
                                                   "kernel": _kernel_info()})
        return {**stats, "quantization": self.llm.model_config.quantization, "rss_bytes": _rss_bytes()}

    def run(self, prompts: list[list[int]], new_tokens: int) -> float:
        from vllm import SamplingParams, TokensPrompt

        params = SamplingParams(temperature=0.0, max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True)
        started = time.perf_counter()
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        elapsed = time.perf_counter() - started
        assert all(len(o.outputs[0].token_ids) == new_tokens for o in outputs)
        return elapsed


class TransformersWorker:
    def __init__(self, model: str, max_len: int, max_seqs: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16).eval()

    def info(self) -> dict:
        return {"weight_bytes": _param_bytes(self.model), **_packed_stats(self.model),
                "kernel": _kernel_info(), "quantization": None, "rss_bytes": _rss_bytes()}

    def run(self, prompts: list[list[int]], new_tokens: int) -> float:
        torch = self.torch
        ids = torch.tensor(prompts)
        started = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                      min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        elapsed = time.perf_counter() - started
        assert out.shape[1] == ids.shape[1] + new_tokens
        return elapsed


def _tree_rss_bytes(pid: int) -> int:
    """VmRSS of a process and all its descendants (``vllm serve`` runs its engine core in a child)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:"))
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total


class VllmServeWorker:
    """``vllm serve`` (the OpenAI-compatible server, bf16, torch.compile as vLLM-CPU does by default), driven over
    HTTP: a batch of b prompts is b concurrent ``/v1/completions`` requests, and the time is their wall time."""

    def __init__(self, model: str, max_len: int, max_seqs: int) -> None:
        from owl_plugin.integrations.vllm.validate import Server
        from owl_plugin.validation.protocol import ServeSettings

        self.settings = ServeSettings(requests=max_seqs, concurrency=max_seqs, request_timeout=1800.0,
                                      startup_timeout=1800.0)
        log = Path(os.environ.get("OWL_BENCH_LOG_DIR", "/tmp")) / f"vllm-serve-{Path(model).name}.log"
        # the random 1B model ships no tokenizer: prompts are token ids, and the server never detokenizes
        self.server = Server(model, log, max_model_len=max_len, settings=self.settings,
                             engine_args=("--dtype", "bfloat16", "--skip-tokenizer-init"))
        self.server.wait_ready()

    def info(self) -> dict:
        # the engine's tensors live in the server's engine-core process: only its config line and RSS are visible
        config = self.server.log.read_text(errors="replace")
        return {"weight_bytes": None, "kernel": None,
                "quantization": "owl_sparse" if "quantization=owl_sparse" in config else None,
                "rss_bytes": _tree_rss_bytes(self.server.process.pid)}

    def run(self, prompts: list[list[int]], new_tokens: int) -> float:
        from owl_plugin.integrations.vllm.validate import load_test
        from owl_plugin.validation.protocol import ServeSettings

        # the validation's load test: one greedy request per prompt, all in flight, EOS ignored
        settings = ServeSettings(requests=len(prompts), concurrency=len(prompts), max_tokens=new_tokens,
                                 request_timeout=self.settings.request_timeout)
        result = load_test(self.server.url, prompts, settings, self.server.api_key)
        if result["errors"]:
            raise RuntimeError(f"vllm serve: {result['errors']} failed requests: {result['error_samples']}")
        return result["wall_seconds"]

    def close(self) -> None:
        self.server.stop()


WORKERS = {"vllm": VllmWorker, "vllm-serve": VllmServeWorker, "transformers": TransformersWorker}


def worker_main(engine: str, models: list[str], max_len: int, max_seqs: int) -> None:
    """Load every checkpoint of ``models`` into this process, then serve JSON commands from stdin, each for
    ``"model"`` (an index into ``models``, 0 if absent): {"prompts": [[ids]], "new_tokens": n} → {"seconds": s};
    {"cmd": "info"}; {"cmd": "quit"}."""
    workers = []
    try:
        for model in models:
            workers.append(WORKERS[engine](model, max_len, max_seqs))
        print(MARK + json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            command = json.loads(line)
            worker = workers[command.get("model", 0)]
            if command.get("cmd") == "info":
                reply = worker.info()
                if len(workers) > 1:  # one process holds every model: its RSS is no model's own
                    reply["rss_bytes"] = None
            elif command.get("cmd") == "quit":
                break
            else:
                reply = {"seconds": worker.run(command["prompts"], command["new_tokens"])}
            print(MARK + json.dumps(reply), flush=True)
    finally:  # a server worker stops its server even when a measurement failed
        for worker in workers:
            if hasattr(worker, "close"):
                worker.close()


# -- orchestration (main venv) -----------------------------------------------------------------------
class Worker:
    """One engine process with one checkpoint loaded (or several: ``models``, asked through ``ModelHandle``)."""

    def __init__(self, engine: str, models: list[Path], max_len: int, max_seqs: int, log: Path) -> None:
        python = sys.executable
        env = dict(os.environ)
        if engine.startswith("vllm"):
            python = str(Path(os.environ.get("OWL_VLLM_VENV", REPO / ".venv-vllm")) / "bin" / "python")
            if engine == "vllm":  # in-process engine; the server keeps its default engine-core process
                env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            env["OWL_BENCH_LOG_DIR"] = str(log.parent)
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            env.setdefault("VLLM_CACHE_ROOT", str(log.parent / "vllm-cache"))
        self.log = log.open("w")
        command = [python, __file__, "--worker", engine, os.pathsep.join(map(str, models)), str(max_len), str(max_seqs)]
        self.proc = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True)
        self.read()

    def read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])
        raise RuntimeError(f"worker exited with {self.proc.wait()}; see its log {self.log.name}")

    def ask(self, command: dict) -> dict:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask({"cmd": "quit"})
            except (RuntimeError, BrokenPipeError):
                pass
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


class ModelHandle:
    """One model of a shared worker process (``--same-process``): its commands carry the model's index."""

    def __init__(self, worker: Worker, index: int) -> None:
        self.worker, self.index = worker, index

    def ask(self, command: dict) -> dict:
        return self.worker.ask({**command, "model": self.index})

    def close(self) -> None:
        if self.index == 0:
            self.worker.close()


def prompts_for(vocab: int, batch: int, length: int, seed: int) -> list[list[int]]:
    import random

    rng = random.Random(seed)
    return [[rng.randrange(100, min(vocab, 30000)) for _ in range(length)] for _ in range(batch)]


def bench_engine(engine: str, dense: Path, compact: Path, args: argparse.Namespace, workdir: Path) -> dict:
    """Both workers loaded, measurements interleaved; returns medians and info per checkpoint."""
    from tqdm import tqdm

    vocab = json.loads((dense / "config.json").read_text())["vocab_size"]
    max_len = max(args.prefill + 8, SHORT_PROMPT + args.new_tokens + 8)
    workers: dict[str, Worker | ModelHandle] = {}
    try:
        if args.same_process:
            print(f"starting one {engine} worker with both checkpoints ...", flush=True)
            shared = Worker(engine, [dense, compact], max_len, max(args.batches), workdir / f"{engine}-shared.log")
            workers = {"dense": ModelHandle(shared, 0), "compact": ModelHandle(shared, 1)}
        for kind, path in (() if args.same_process else (("dense", dense), ("compact", compact))):
            print(f"starting {engine} {kind} worker ({path.name}) ...", flush=True)
            workers[kind] = Worker(engine, [path], max_len, max(args.batches), workdir / f"{engine}-{path.name}.log")
        info = {kind: w.ask({"cmd": "info"}) for kind, w in workers.items()}
        cases = {f"decode b{b}": (prompts_for(vocab, b, SHORT_PROMPT, b), args.new_tokens) for b in args.batches}
        cases["prefill"] = (prompts_for(vocab, 1, args.prefill, 99), 1)
        for prompts, new in cases.values():  # warm-up (vLLM compiles per shape, transformers allocates)
            for w in workers.values():
                w.ask({"prompts": prompts, "new_tokens": new})
        times: dict[str, dict[str, list[float]]] = {c: {"dense": [], "compact": []} for c in cases}
        for r in tqdm(range(args.rounds), desc=f"{engine} rounds"):
            order = ["dense", "compact"] if r % 2 == 0 else ["compact", "dense"]
            for case, (prompts, new) in cases.items():
                for kind in order:
                    times[case][kind].append(workers[kind].ask({"prompts": prompts, "new_tokens": new})["seconds"])
        for kind, w in workers.items():  # every page touched now (a dense load maps the file lazily)
            info[kind]["rss_after_bytes"] = w.ask({"cmd": "info"})["rss_bytes"]
    finally:
        for w in workers.values():
            w.close()
    result = {"info": info, "cases": {}}
    for case, (prompts, new) in cases.items():
        med = {kind: statistics.median(v) for kind, v in times[case].items()}
        if case.startswith("decode"):
            rate = {kind: len(prompts) * new / s for kind, s in med.items()}
            result["cases"][case] = {"dense": rate["dense"], "compact": rate["compact"], "unit": "tok/s",
                                     "ratio": rate["compact"] / rate["dense"]}
        else:
            result["cases"][case] = {"dense": med["dense"], "compact": med["compact"], "unit": "s",
                                     "ratio": med["dense"] / med["compact"]}  # > 1: compact faster
    weights = [info[kind]["weight_bytes"] for kind in ("compact", "dense")]
    result["memory_ratio"] = weights[0] / weights[1] if None not in weights else None
    checkpoint = json.loads((dense.parent / f"{dense.name.removesuffix('-dense')}-info.json").read_text())
    result["model_bf16_bytes"] = checkpoint["params"] * 2  # what every engine holds for the dense bf16 model
    return result


def render(results: dict, args: argparse.Namespace, conditions: dict) -> str:
    lines = ["# Serving benchmark: compact (owl_sparse, sparse kernels) vs dense checkpoint", "",
             f"Command: `{conditions['command']}`", "",
             f"Conditions: {conditions['cpu']}; load average before {conditions['load_before']}, after "
             f"{conditions['load_after']}; {args.rounds} interleaved rounds, medians; CPU shared with other jobs "
             "unless stated. Speed ratio = compact / dense (for prefill: dense time / compact time, > 1 is faster). "
             + ("Both checkpoints in one worker process (`--same-process`)." if args.same_process
                else "One worker process per checkpoint."),
             ""]
    for model, per_engine in results.items():
        info = per_engine.pop("_checkpoint")
        lines += [f"## {model}: {info['params'] / 1e9:.3f} B parameters, target sparsity {info['target']:.0%} "
                  f"(OWL-shaped blocks {min(info['block_sparsity']):.3f}…{max(info['block_sparsity']):.3f})", "",
                  "| engine | measure | dense | compact | ratio |", "| --- | --- | ---: | ---: | ---: |"]
        for engine, res in per_engine.items():
            for case, row in res["cases"].items():
                lines.append(f"| {engine} | {case} ({row['unit']}) | {row['dense']:.3f} | {row['compact']:.3f} "
                             f"| {row['ratio']:.2f}× |")
            d, c = res["info"]["dense"], res["info"]["compact"]
            if res["memory_ratio"] is None:  # vllm-serve: the tensors are in the server's engine process
                lines.append(f"| {engine} | server processes' RSS (GiB) | {d['rss_bytes'] / 2**30:.3f} | "
                             f"{c['rss_bytes'] / 2**30:.3f} | {c['rss_bytes'] / d['rss_bytes']:.2f}× |")
                continue
            lines.append(f"| {engine} | weight tensors (GiB) | {d['weight_bytes'] / 2**30:.3f} | "
                         f"{c['weight_bytes'] / 2**30:.3f} | {res['memory_ratio']:.2f}× |")
            if c["rss_bytes"] is not None:  # None: --same-process, one process holds both
                lines.append(f"| {engine} | process RSS after loading (GiB) | {d['rss_bytes'] / 2**30:.3f} | "
                             f"{c['rss_bytes'] / 2**30:.3f} | {c['rss_bytes'] / d['rss_bytes']:.2f}× |")
            if c.get("rss_after_bytes") is not None:
                after = d["rss_after_bytes"], c["rss_after_bytes"]
                lines.append(f"| {engine} | process RSS after the runs (GiB) | {after[0] / 2**30:.3f} | "
                             f"{after[1] / 2**30:.3f} | {after[1] / after[0]:.2f}× |")
            model_bytes = res["model_bf16_bytes"]
            lines.append(f"| {engine} | resident weights vs the dense bf16 model (GiB) | {model_bytes / 2**30:.3f} | "
                         f"{c['weight_bytes'] / 2**30:.3f} | {c['weight_bytes'] / model_bytes:.2f}× |")
            if c.get("packed_dense_bytes"):
                lines.append(f"| {engine} | pruned linears only (GiB) | {c['packed_dense_bytes'] / 2**30:.3f} | "
                             f"{c['packed_bytes'] / 2**30:.3f} | {c['packed_bytes'] / c['packed_dense_bytes']:.2f}× |")
        lines.append("")
        for engine, res in per_engine.items():
            c = res["info"]["compact"]
            if c["kernel"] is None:
                lines.append(f"- {engine}: the compact server loaded with quantization={c['quantization']} "
                             "(from its engine config line; its kernel path is the `vllm` row's, same venv and CPU)")
                continue
            lines.append(f"- {engine}: {c['packed_layers']} linear layers on the sparse kernel, "
                         f"kernel_info = `{json.dumps(c['kernel'])}`")
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["llama1b", "smollm2"], choices=["llama1b", "smollm2"])
    parser.add_argument("--engines", nargs="+", default=["vllm", "transformers"],
                        choices=["vllm", "vllm-serve", "transformers"],
                        help="vllm: LLM.generate in process; vllm-serve: `vllm serve` over HTTP, b concurrent requests")
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prefill", type=int, default=512)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "owl-bench-serving")
    parser.add_argument("--out", type=Path, default=REPO / "examples" / "results" / "serving_table.md")
    parser.add_argument("--same-process", action="store_true",
                        help="load both checkpoints into one worker process (not for vllm-serve)")
    parser.add_argument("--quick", action="store_true",
                        help="small: a 4-layer Llama, 2 rounds, 16 new tokens, 64-token prefill (a smoke run)")
    args = parser.parse_args(argv)
    if not 0 < args.sparsity < 1:
        parser.error(f"--sparsity {args.sparsity}: must be between 0 and 1")
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: must be at least 1")
    if args.same_process and "vllm-serve" in args.engines:
        parser.error("--same-process with --engines vllm-serve: a server is its own process; drop one of them")
    if args.quick:
        args.rounds, args.new_tokens, args.prefill = min(args.rounds, 2), 16, 64
        args.workdir = args.workdir.with_name(args.workdir.name + "-quick")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    conditions = {"command": "python examples/benchmark_serving.py " + " ".join(sys.argv[1:]),
                  "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs",
                  "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    results: dict[str, Any] = {}
    for model in args.models:
        dense, compact, info = build_checkpoints(model, args.workdir, args.sparsity, args.quick)
        results[model] = {"_checkpoint": info}
        for engine in args.engines:
            results[model][engine] = bench_engine(engine, dense, compact, args, args.workdir)
            print(json.dumps({model: {engine: results[model][engine]["cases"]}}, indent=1), flush=True)
    conditions["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    (args.workdir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    table = render(results, args, conditions)
    print(table)
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2], sys.argv[3].split(os.pathsep), int(sys.argv[4]), int(sys.argv[5]))
    else:
        sys.exit(main())
