"""How far OpenVINO's int8 exports are from fp32: perplexity and greedy agreement, dense and pruned.

    .venv-openvino/bin/python examples/openvino_int8_accuracy.py --output runs/openvino-int8 \
        [--pruned DIR] [--variants fp32,weights,static,static:sq=0.5] [--precision pinned,plugin]

For the default model (SmolLM2-135M) and, with ``--pruned``, a pruned checkpoint of it, every
variant of its OpenVINO IR is scored against transformers fp32 on the main job's settings:
perplexity on the first ``--windows`` windows of ``--seq-len`` tokens of WikiText-2 validation
(``owl_plugin.text.evaluation_windows``) and greedy generation of 32 tokens for the suite's four
prompts (first divergence per prompt). Variants:

* ``fp32``: the converted IR, no quantization;
* ``weights``: ``owl export``'s default mode, int8 weights (NNCF INT8_SYM), float activations;
* ``static``: ``--mode static``, int8 weights and activations (NNCF MIXED, SmoothQuant α 0.95),
  calibrated on ``--calibration`` (default: the second half of WikiText-2 validation, the main
  job's pruning text, disjoint from the scored windows); options ``:sq=A`` (SmoothQuant α, -1 off)
  and ``:float=REGEX`` (linears whose module name matches stay float), e.g. ``static:float=mlp[.]down_proj``.

Precision: ``pinned`` compiles with the properties the export stores (f32 activations and KV cache,
``owl_plugin.integrations.openvino.modes``); ``plugin`` with the CPU plugin's own defaults (bf16 on
CPUs with AVX512_BF16/AMX, u8 KV cache, dynamic int8 activation groups for int8-weight linears).
Set ``ONEDNN_MAX_CPU_ISA=AVX2`` to run the AVX2 kernels on an AVX-512 machine (the kernel names
in the table show which ran).

Prints a markdown table; writes ``openvino_int8_accuracy.json`` and ``.md`` into ``--output``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("openvino_int8_accuracy")

PROMPTS = ("The capital of France is", "def fibonacci(n):", "Sparse neural networks are",
           "Once upon a time, in a small village,")


def reference(folder: Path, ids, windows: int, seq_len: int, bos: int | None, prompt_ids, new_tokens: int) -> dict:
    """transformers fp32: perplexity on the evaluation windows and greedy continuations."""
    import torch
    from transformers import AutoModelForCausalLM

    from owl_plugin.text import evaluation_windows

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    built = evaluation_windows(ids, seq_len=seq_len, max_windows=windows, bos_token_id=bos)
    total = 0.0
    with torch.no_grad():
        for window in built:
            x = torch.tensor([window])
            logp = model(x).logits[0, :-1].double().log_softmax(-1)
            total += -float(logp[torch.arange(seq_len - 1), x[0, 1:]].sum())
        generated = [model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                    max_new_tokens=new_tokens, do_sample=False)[0, len(p):].tolist()
                     for p in prompt_ids]
    return {"ppl": float(np.exp(total / (len(built) * (seq_len - 1)))), "generated": generated}


def parse_variant(spec: str) -> tuple[str, dict[str, Any]]:
    name, *options = spec.split(":")
    if name not in ("fp32", "weights", "static"):
        raise SystemExit(f"unknown variant {spec!r}: fp32, weights or static[:sq=A][:float=REGEX]")
    parsed: dict[str, Any] = {}
    for option in options:
        key, _, value = option.partition("=")
        if key == "sq":
            parsed["smooth_quant_alpha"] = float(value)
        elif key == "float":
            parsed.setdefault("float_modules", []).append(value)
        else:
            raise SystemExit(f"unknown option {option!r} in {spec!r}: sq=A or float=REGEX")
    return name, parsed


def build(spec: str, fp32_xml: Path, folder: Path, calibration_windows, calibration_name: str) -> Path:
    """The IR of variant ``spec`` (cached under ``folder``, static ones per calibration text)."""
    import openvino as ov

    from owl_plugin.integrations.openvino.quantize import compress_int8_weights, quantize_int8

    name, options = parse_variant(spec)
    if name == "fp32":
        return fp32_xml
    stem = spec.replace(":", "_").replace("=", "-").replace("[", "").replace("]", "").replace("/", "")
    path = folder / (stem + (f"-{calibration_name}" if name == "static" else "") + ".xml")
    if path.exists():
        return path
    model = ov.Core().read_model(fp32_xml)
    started = time.perf_counter()
    quantized = compress_int8_weights(model) if name == "weights" else quantize_int8(model, calibration_windows,
                                                                                      **options)
    ov.save_model(quantized, path, compress_to_fp16=False)
    logger.info("built %s in %.0f s", spec, time.perf_counter() - started)
    return path


def properties(spec: str, precision: str) -> dict[str, str]:
    from owl_plugin.integrations.openvino.modes import STATIC, WEIGHTS, compile_properties

    if precision == "plugin":
        return {}
    mode = STATIC if spec.startswith("static") else WEIGHTS
    return compile_properties(mode, 1.0)  # rate 1: the sparse kernels need AMX, and do not change numbers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/openvino-int8")
    parser.add_argument("--pruned", default=None, help="a pruned checkpoint of the default model")
    parser.add_argument("--variants", default="fp32,weights,static")
    parser.add_argument("--precision", default="pinned,plugin", help="pinned and/or plugin (see above)")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--calibration", default=None, help="static: calibration text (default: WikiText-2's "
                                                            "second half)")
    parser.add_argument("--num-samples", type=int, default=32, help="static: calibration windows of 128 tokens")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import openvino as ov
    from optimum.intel import OVModelForCausalLM
    from transformers import AutoTokenizer

    from owl_plugin.integrations.openvino.engine import StatefulLM
    from owl_plugin.models import default_model_path
    from owl_plugin.paths import default_eval_text
    from owl_plugin.text import calibration_batches, load_text, tokenize, window_protocol
    from owl_plugin.validation.checks import first_divergence

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    models = {"dense": default_model_path(), **({"pruned": Path(args.pruned)} if args.pruned else {})}
    text = load_text(default_eval_text())
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "native")
    rows: list[dict[str, Any]] = []
    for model_name, folder in models.items():
        tokenizer = AutoTokenizer.from_pretrained(folder)
        bos = window_protocol(tokenizer, "auto").bos_token_id
        ids = tokenize(tokenizer, text)
        if args.windows * args.seq_len > ids.numel() // 2:
            raise SystemExit("the scored windows must fit in the first half of the text (calibration uses the rest)")
        calibration_ids = tokenize(tokenizer, load_text(args.calibration)) if args.calibration else \
            tokenize(tokenizer, text[len(text) // 2:])
        windows = calibration_batches(calibration_ids, num_samples=args.num_samples, seq_len=128, seed=0,
                                      bos_token_id=bos)
        prompt_ids = [tokenizer(p).input_ids for p in PROMPTS]
        cache = output / model_name
        cache.mkdir(exist_ok=True)
        ref_path = cache / "reference.json"
        if not ref_path.exists():
            ref_path.write_text(json.dumps(reference(folder, ids, args.windows, args.seq_len, bos, prompt_ids,
                                                     args.new_tokens)))
        ref = json.loads(ref_path.read_text())
        fp32_xml = cache / "fp32.xml"
        if not fp32_xml.exists():
            converted = OVModelForCausalLM.from_pretrained(str(folder), export=True, load_in_8bit=False,
                                                           compile=False, stateful=True)
            ov.save_model(converted.model, fp32_xml, compress_to_fp16=False)
            del converted
        calibration_name = Path(args.calibration).stem if args.calibration else "wiki2half"
        for spec in args.variants.split(","):
            xml = build(spec, fp32_xml, cache, windows, calibration_name)
            for precision in args.precision.split(","):
                lm = StatefulLM(xml, {**properties(spec, precision), "PERF_COUNT": "YES"})
                ppl = lm.perplexity(ids.numpy(), seq_len=args.seq_len, windows=args.windows, bos_token_id=bos)
                generated = [lm.greedy(p, args.new_tokens) for p in prompt_ids]
                divergence = [first_divergence(r, g) for r, g in zip(ref["generated"], generated, strict=True)]
                row = {"model": model_name, "variant": spec, "precision": precision, "isa": isa, "ppl": ppl,
                       "ppl_fp32": ref["ppl"], "rel_gap": ppl / ref["ppl"] - 1.0, "first_divergence": divergence,
                       "inference_precision": str(lm.property("INFERENCE_PRECISION_HINT")),
                       "kernels": lm.exec_types()}
                rows.append(row)
                logger.info("%s", row)
                del lm
    lines = [f"OpenVINO int8 vs transformers fp32 ({args.windows}×{args.seq_len} WikiText-2 windows, "
             f"{len(PROMPTS)}×{args.new_tokens} greedy tokens; ISA {isa})", "",
             "| model | variant | precision | ppl | fp32 ppl | gap | greedy: first divergence per prompt | kernels |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        kernels = ", ".join(f"{k}×{n}" for k, n in row["kernels"].items())
        divergence = " ".join("=" if d is None else str(d) for d in row["first_divergence"])
        lines.append(f"| {row['model']} | {row['variant']} | {row['precision']} ({row['inference_precision']}) | "
                     f"{row['ppl']:.3f} | {row['ppl_fp32']:.3f} | {100 * row['rel_gap']:+.2f} % | {divergence} | "
                     f"{kernels} |")
    table = "\n".join(lines)
    print(table)
    suffix = "" if isa == "native" else f"_{isa.lower()}"
    (output / f"openvino_int8_accuracy{suffix}.md").write_text(table + "\n")
    (output / f"openvino_int8_accuracy{suffix}.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
