"""OpenVINO speed of OWL-pruned models: dense int8 vs pruned int8 with the sparse kernels off and on.

    .venv-openvino/bin/python examples/benchmark_openvino.py --output runs/benchmark-openvino
        [--pruned DIR] [--large-layers 28] [--skip-large] [--repetitions 5]

Two models in one run, each measured in the same process with the variants interleaved
(owl_plugin.validation.timing: alternating order, one warm-up round, medians and min/max):

(a) the default real model, SmolLM2-135M: dense vs OWL-Wanda 70 % (``--pruned DIR``, else pruned
    here with ``.venv/bin/owl prune --recipe examples/recipes/owl_wanda.yaml``); quality too:
    WikiText-2 perplexity of every variant and greedy agreement (sparse on vs off, pruned vs dense);
(b) a Llama-3B-shaped model (Llama-3.2-3B's blocks: hidden 3072, intermediate 8192, 24 heads / 8 KV
    heads; the default model's 49152-token vocabulary, untied, so NNCF quantizes lm_head too; ``--large-layers``
    blocks, 28 = 3.12 B parameters), random bf16 weights (speed does
    not depend on the values), magnitude-pruned per row to the default model's OWL profile mapped
    onto its blocks and rescaled to 70 %. It goes through the same exporter as users
    (``owl export --format openvino``: optimum-intel conversion in float32, NNCF int8 with one
    16-token calibration window — ranges do not change speed), the cost of which is recorded.

All variants are the int8 IR that ``owl export --format openvino --mode static`` writes (int8
weights and activations, which OpenVINO's sparse kernels need): *dense int8* is the
unpruned model, *sparse off* the pruned IR compiled with ``CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE=1``,
*sparse on* with the stored rate. The execTypes from the performance counters show which kernels
ran. OpenVINO's sparse int8 kernels exist only on CPUs with AMX; elsewhere sparse on = sparse off.

Prints a markdown table and writes ``benchmark_openvino.json`` and ``benchmark_openvino.png``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
logger = logging.getLogger("benchmark_openvino")

PROMPTS = ("The capital of France is", "def fibonacci(n):", "Sparse neural networks are",
           "In 1905, Albert Einstein published")
LARGE_SHAPE = {"hidden_size": 3072, "intermediate_size": 8192, "num_attention_heads": 24, "num_key_value_heads": 8,
               "vocab_size": 49152, "tie_word_embeddings": False, "rope_theta": 500000.0,
               "max_position_embeddings": 4096}


# ----------------------------------------------------------------------------------------- models
def prune_default(output: Path) -> Path:
    """OWL-Wanda 70 % of the default model, by the main venv's ``owl prune`` (llmcompressor lives there)."""
    owl = REPO / ".venv" / "bin" / "owl"
    command = [str(owl), "prune", "--recipe", str(REPO / "examples/recipes/owl_wanda.yaml"), "--model", "default",
               "--dataset", "pydoc", "--num-samples", "64", "--output", str(output)]
    logger.info("pruning: %s", " ".join(command))
    subprocess.run(command, check=True)
    return output


def large_profile(layers: int, default_profile, target: float):
    """The default model's OWL profile mapped onto ``layers`` blocks of the large shape, rescaled to ``target``."""
    from owl_plugin.profile import ModuleSparsity, SparsityProfile

    source = default_profile.modules
    blocks = sorted({e.block for e in source.values()}, key=lambda b: int(b.rsplit(".", 1)[1]))
    h, i, kv = LARGE_SHAPE["hidden_size"], LARGE_SHAPE["intermediate_size"], LARGE_SHAPE["num_key_value_heads"]
    kv_dim = h // LARGE_SHAPE["num_attention_heads"] * kv
    sizes = {"self_attn.q_proj": h * h, "self_attn.k_proj": kv_dim * h, "self_attn.v_proj": kv_dim * h,
             "self_attn.o_proj": h * h, "mlp.gate_proj": i * h, "mlp.up_proj": i * h, "mlp.down_proj": h * i}
    modules = {}
    for layer in range(layers):
        src_block = blocks[round(layer * (len(blocks) - 1) / max(layers - 1, 1))]
        for suffix, size in sizes.items():
            modules[f"model.layers.{layer}.{suffix}"] = ModuleSparsity(
                source[f"{src_block}.{suffix}"].sparsity, size, f"model.layers.{layer}")
    total = sum(m.num_params for m in modules.values())
    mapped = SparsityProfile(method=default_profile.method, target=sum(m.sparsity * m.num_params
                                                                       for m in modules.values()) / total,
                             modules=modules, params=dict(default_profile.params), bounds=default_profile.bounds)
    return mapped.rescaled(target)


def build_large(folder: Path, layers: int, default_profile, target: float, tokenizer_dir: Path) -> dict[str, Path]:
    """Random bf16 Llama of the large shape: ``dense/`` and ``pruned/`` (magnitude, per row) checkpoints."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from tqdm.auto import tqdm

    dense, pruned = folder / "dense", folder / "pruned"
    if (pruned / "config.json").is_file() and (dense / "config.json").is_file():
        return {"dense": dense, "pruned": pruned}
    torch.manual_seed(0)
    config = LlamaConfig(num_hidden_layers=layers, **LARGE_SHAPE)
    model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16).eval()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model.save_pretrained(dense)
    tokenizer.save_pretrained(dense)
    profile = large_profile(layers, default_profile, target)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, entry in tqdm(profile.modules.items(), desc="magnitude pruning", unit="linear"):
            weight = modules[name].weight
            k = round(entry.sparsity * weight.shape[1])
            for start in range(0, weight.shape[0], 1024):  # row chunks keep the float32 copy small
                rows = weight[start:start + 1024]
                rows.scatter_(1, rows.float().abs().topk(k, dim=1, largest=False).indices, 0)
    exact = {n: type(e)(round(e.sparsity * modules[n].weight.shape[1]) / modules[n].weight.shape[1], e.num_params,
                        e.block) for n, e in profile.modules.items()}
    profile = type(profile)(method=profile.method, target=profile.target, modules=exact, params=dict(profile.params),
                            bounds=profile.bounds)
    model.save_pretrained(pruned)
    tokenizer.save_pretrained(pruned)
    profile.save(pruned)
    del model, modules
    gc.collect()
    return {"dense": dense, "pruned": pruned}


def export(source: Path, target: Path, *, large: bool) -> tuple[Path, dict[str, Any]]:
    """``owl export --format openvino`` of ``source`` (cached by source path); the cost of the export."""
    from owl_plugin.integrations.openvino.export import export_openvino, read_settings

    settings = read_settings(target) if (target / "openvino_model.xml").is_file() else None
    if settings and settings.get("source") == str(source.absolute()) and settings.get("mode", "static") == "static":
        return target, {"seconds": settings.get("seconds"), "cached": True}
    started = time.perf_counter()
    # float32 conversion: converted from bf16 / fp16, NNCF's int8 weights were not folded into int8
    # constants (the export's read-back refuses such an IR), so the 3B export needs ~2 x 12.8 GB of RAM
    options = {"num_samples": 1, "seq_len": 16, "check_windows": 0} if large else {"num_samples": 64}
    # --mode static: the sparse kernels multiply int8 activations (the default int8-weight mode has none)
    settings = export_openvino(source, target, mode="static", calibration="pydoc", overwrite=True, **options)
    return target, {"seconds": settings["seconds"], "wall": round(time.perf_counter() - started, 1),
                    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# ----------------------------------------------------------------------------------------- measuring
def measure(name: str, dense_ir: Path, pruned_ir: Path, text_ids: np.ndarray, prompt_ids, args,
            *, quality: bool) -> dict[str, Any]:
    from owl_plugin.integrations.openvino.engine import StatefulLM
    from owl_plugin.integrations.openvino.export import stored_ov_config
    from owl_plugin.integrations.openvino.sparse import OFF_RATE, PERF_KEY, RATE_KEY, sparse_summary
    from owl_plugin.validation.timing import interleaved

    stored = stored_ov_config(pruned_ir)
    configs = {"dense int8": (dense_ir, {**stored, PERF_KEY: "YES"}),
               "pruned int8, sparse off": (pruned_ir, {**stored, RATE_KEY: f"{OFF_RATE:g}", PERF_KEY: "YES"}),
               "pruned int8, sparse on": (pruned_ir, {**stored, PERF_KEY: "YES"})}
    models, report = {}, {"variants": {}}
    for variant, (ir, config) in configs.items():
        model = StatefulLM(ir / "openvino_model.xml", config)
        model.greedy(prompt_ids[0], 2)
        models[variant] = model
        report["variants"][variant] = {"rss_mib": round(model.compile_rss_mib), "exec_types": model.exec_types(),
                                       "sparse_kernels": sparse_summary(model.exec_types())["sparse_nodes"],
                                       "compile_s": round(model.compile_seconds, 1)}
        logger.info("%s / %s: %s", name, variant, report["variants"][variant])
    if quality:
        generated = {v: [m.greedy(ids, 32) for ids in prompt_ids] for v, m in models.items()}
        for variant, model in models.items():
            report["variants"][variant]["ppl"] = model.perplexity(text_ids, seq_len=512, windows=args.ppl_windows)
        on, off, dense = (generated["pruned int8, sparse on"], generated["pruned int8, sparse off"],
                          generated["dense int8"])
        report["greedy"] = {
            "sparse_on_equals_off": sum(a == b for a, b in zip(on, off, strict=True)),
            "pruned_vs_dense_same_tokens": float(np.mean([np.mean(np.equal(a, b))
                                                          for a, b in zip(on, dense, strict=True)])),
            "prompts": len(prompt_ids),
        }
    options = {"prefill_tokens": 512, "decode_tokens": args.decode_tokens, "batch": args.batch}
    rounds = {v: (lambda m=m: m.speed_round(text_ids, **options)) for v, m in models.items()}
    samples = interleaved(rounds, args.repetitions if quality else args.large_repetitions)
    for variant, metrics in samples.items():
        report["variants"][variant]["speed"] = {
            metric: {"median": float(np.median(v)), "min": float(min(v)), "max": float(max(v)), "samples": v}
            for metric, v in metrics.items()}
    del models, rounds
    gc.collect()
    return report


# ----------------------------------------------------------------------------------------- output
def table(results: dict[str, Any]) -> str:
    lines = ["| model | variant | prefill 512 ms | decode tok/s (b=1) | throughput tok/s (b=8) | decode × | prefill × "
             "| RSS MiB | WikiText-2 ppl | sparse kernels / execTypes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for model, report in results["models"].items():
        base = report["variants"]["dense int8"]["speed"]
        for variant, entry in report["variants"].items():
            speed = entry["speed"]
            cells = [f"{speed['prefill_ms']['median']:.1f} ({speed['prefill_ms']['min']:.0f}–"
                     f"{speed['prefill_ms']['max']:.0f})",
                     f"{speed['decode_tok_s']['median']:.2f} ({speed['decode_tok_s']['min']:.1f}–"
                     f"{speed['decode_tok_s']['max']:.1f})",
                     f"{speed['throughput_tok_s']['median']:.1f}",
                     f"{speed['decode_tok_s']['median'] / base['decode_tok_s']['median']:.2f}",
                     f"{base['prefill_ms']['median'] / speed['prefill_ms']['median']:.2f}",
                     f"{entry['rss_mib']}", f"{entry['ppl']:.2f}" if "ppl" in entry else "–",
                     f"{entry['sparse_kernels']} / " + ", ".join(f"{k}: {n}" for k, n in entry["exec_types"].items())]
            lines.append(f"| {model} | {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = (("prefill_ms", "prefill 512 tokens (ms, lower is better)"), ("decode_tok_s", "decode tok/s, batch 1"),
               ("throughput_tok_s", "throughput tok/s, batch 8"))
    models = list(results["models"])
    fig, axes = plt.subplots(len(models), 3, figsize=(13, 3.4 * len(models)), dpi=110, squeeze=False)
    for row, model in enumerate(models):
        variants = results["models"][model]["variants"]
        for col, (metric, title) in enumerate(metrics):
            ax = axes[row][col]
            names = list(variants)
            med = [variants[v]["speed"][metric]["median"] for v in names]
            low = [m - variants[v]["speed"][metric]["min"] for m, v in zip(med, names, strict=True)]
            high = [variants[v]["speed"][metric]["max"] - m for m, v in zip(med, names, strict=True)]
            ax.bar(range(len(names)), med, yerr=[low, high], capsize=4,
                   color=["tab:grey", "tab:blue", "tab:green"][: len(names)])
            ax.set_xticks(range(len(names)), [n.replace("pruned int8, ", "pruned\n") for n in names], fontsize=8)
            ax.set_title(f"{model}: {title}", fontsize=9)
            ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"OpenVINO {results['versions'].get('openvino', '')} on {results['cpu']} "
                 f"(AMX: {results['amx']}); medians, bars = min–max", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/benchmark-openvino", help="folder for IRs, JSON, plot")
    parser.add_argument("--pruned", default=None, help="OWL-pruned default model (default: prune it here)")
    parser.add_argument("--large-layers", type=int, default=28, help="blocks of the 3B shape (default 28 = 3.2 B)")
    parser.add_argument("--skip-large", action="store_true", help="only the default model")
    parser.add_argument("--only-large", action="store_true",
                        help="only the large model (needs --pruned for its profile)")
    parser.add_argument("--repetitions", type=int, default=5, help="interleaved rounds, default model (default 5)")
    parser.add_argument("--large-repetitions", type=int, default=3, help="interleaved rounds, large model")
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--ppl-windows", type=int, default=8)
    parser.add_argument("--target", type=float, default=0.7, help="sparsity of the large model (default 0.7)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from transformers import AutoTokenizer

    from owl_plugin.integrations.openvino.engine import cpu_has_amx, cpu_name
    from owl_plugin.integrations.openvino.validate import _versions
    from owl_plugin.models import default_model_path
    from owl_plugin.paths import default_eval_text
    from owl_plugin.profile import SparsityProfile
    from owl_plugin.text import load_text, tokenize

    output = Path(args.output).absolute()
    output.mkdir(parents=True, exist_ok=True)
    dense_dir = default_model_path()
    pruned_dir = Path(args.pruned) if args.pruned else output / "smollm2-owl-wanda-0.7"
    if not (pruned_dir / "config.json").is_file():
        prune_default(pruned_dir)
    tokenizer = AutoTokenizer.from_pretrained(dense_dir)
    text_ids = tokenize(tokenizer, load_text(default_eval_text())).numpy()
    prompt_ids = [tokenizer(p).input_ids for p in PROMPTS]
    results: dict[str, Any] = {"versions": _versions(), "cpu": cpu_name(), "amx": cpu_has_amx(),
                               "threads": os.cpu_count(), "models": {}, "costs": {}}

    if not args.only_large:
        dense_ir, cost_dense = export(dense_dir, output / "ir" / "smollm2-dense", large=False)
        pruned_ir, cost_pruned = export(pruned_dir, output / "ir" / "smollm2-owl-0.7", large=False)
        results["costs"]["SmolLM2-135M"] = {"dense": cost_dense, "pruned": cost_pruned}
        results["models"]["SmolLM2-135M, OWL-Wanda 70%"] = measure("SmolLM2-135M", dense_ir, pruned_ir, text_ids,
                                                                  prompt_ids, args, quality=True)
        report(results, output)  # printed as soon as it is measured: the large model takes much longer
    if not args.skip_large:
        started = time.perf_counter()
        name = f"Llama-3B shape, {args.large_layers} blocks, magnitude OWL-profile {args.target:.0%}"
        checkpoints = build_large(output / f"large-{args.large_layers}", args.large_layers,
                                  SparsityProfile.load(pruned_dir), args.target, dense_dir)
        built = time.perf_counter() - started
        large_dense, c1 = export(checkpoints["dense"], output / "ir" / f"large-{args.large_layers}-dense", large=True)
        large_pruned, c2 = export(checkpoints["pruned"], output / "ir" / f"large-{args.large_layers}-pruned",
                                  large=True)
        results["costs"][name] = {"build_s": round(built, 1), "dense": c1, "pruned": c2}
        results["models"][name] = measure(name, large_dense, large_pruned, text_ids, prompt_ids, args, quality=False)
        report(results, output)
    return 0


def report(results: dict[str, Any], output: Path) -> None:
    """Write the JSON and the plot, print the table (called after every model)."""
    (output / "benchmark_openvino.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    png = plot(results, output / "benchmark_openvino.png")
    print(f"\nOpenVINO {results['versions'].get('openvino')} on {results['cpu']}, AMX: {results['amx']}, "
          f"{results['threads']} cores\n")
    print(table(results))
    for model, report in results["models"].items():
        if "greedy" in report:
            print(f"\n{model}: greedy (4 prompts × 32 tokens): sparse on == off for "
                  f"{report['greedy']['sparse_on_equals_off']}/{report['greedy']['prompts']} prompts; pruned vs dense "
                  f"same token at {report['greedy']['pruned_vs_dense_same_tokens']:.0%} of positions")
    print(f"\ncosts: {json.dumps(results['costs'], default=str)}")
    print(f"wrote {output / 'benchmark_openvino.json'} and {png}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
