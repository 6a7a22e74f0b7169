"""Dense WikiText-2 perplexity of the default model: converted checkpoint vs direct GGUF load.

    python examples/dense_perplexity.py [--text ../shared/data/wikitext2-valid.tokens.txt]

Prints a markdown table; both numbers use the first 40 windows of 512 tokens.
"""

from __future__ import annotations

import argparse
import time

from owl_plugin.evaluation import perplexity
from owl_plugin.models import default_model_path, load_gguf, load_model
from owl_plugin.paths import default_eval_text
from owl_plugin.text import load_text, tokenize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", default=None, help="evaluation text (default: WikiText-2 validation)")
    parser.add_argument("--windows", type=int, default=40)
    parser.add_argument("--seq-len", type=int, default=512)
    args = parser.parse_args()

    text = load_text(args.text or default_eval_text())
    rows = []
    loaders = (("converted safetensors", lambda: load_model(default_model_path())), ("GGUF (direct)", load_gguf))
    for name, loader in loaders:
        start = time.perf_counter()
        model, tokenizer = loader()
        model.eval()
        ppl = perplexity(model, tokenize(tokenizer, text), seq_len=args.seq_len, max_windows=args.windows)
        rows.append((name, ppl, time.perf_counter() - start))
    print(f"| model | WikiText-2 ppl ({args.windows}×{args.seq_len}) | seconds |\n|---|---|---|")
    for name, ppl, seconds in rows:
        print(f"| {name} | {ppl:.3f} | {seconds:.0f} |")
    print(f"\nrelative difference: {abs(rows[0][1] / rows[1][1] - 1):.4%}")


if __name__ == "__main__":
    main()
