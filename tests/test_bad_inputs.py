"""Every command against bad input and faults (issue 20): each case must end with exit code 2 and one
error line naming the culprit value, no traceback, and the file tree exactly as it was (no output, no
hidden staging left, inputs untouched).

The cases run in-process through ``owl_plugin.cli.main(argv)`` (one interpreter for the whole table);
almost all of them fail before a model is loaded. Placeholders in the argv: ``{tmp}`` the case's
folder, ``{tiny}`` a tiny Llama checkpoint with a real tokenizer (shared, read-only), ``{model}`` a
private copy of it that the case may damage, ``{pruned}`` a magnitude-pruned tiny Llama (shared).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from compact_helpers import tiny_llama as pruned_llama
from tamper import dense_twin, drop_tensor, mask_swap

from owl_plugin.cli import main

HUB_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT")


@dataclass(frozen=True)
class Case:
    """One bad invocation: ``argv`` (with placeholders), what ``setup`` writes first, the culprit text."""

    name: str
    argv: tuple[str, ...]
    culprit: str
    setup: Callable[[Path], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    non_root: bool = False  # permission cases (root writes through 0555: for root a read-only mount instead)


def _write(relative: str, data: str | bytes) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        path = tmp / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return setup


def _both(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        for step in setups:
            step(tmp)
    return setup


def _truncate(relative: str, keep: int) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        path = tmp / relative
        data = path.read_bytes()
        path.write_bytes(data[:keep])
    return setup


def _mkdir(relative: str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / relative).mkdir(parents=True)


def _read_only(relative: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / relative).mkdir(parents=True)
        (tmp / relative).chmod(0o555)
    return setup


def _bad_ratio_profile(path: Path) -> None:
    """The pruned model's own profile with one ratio set to 1.5."""
    data = json.loads((PRUNED[0] / "sparsity_profile.json").read_text())
    first = next(iter(data["modules"]))
    data["modules"][first]["sparsity"] = 1.5
    path.write_text(json.dumps(data))


PRUNED: list[Path] = []  # set by the ``pruned`` fixture (the profile setup above reads it)
COMPACT: list[Path] = []  # its compact export, set by the same fixture (the tampering setups copy it)
MODULE = "model.layers.1.mlp.down_proj"


def _tampered(how: Callable[..., object], *args: str) -> Callable[[Path], None]:
    return lambda tmp: how(COMPACT[0], tmp / "tampered", *args)


PROFILE = ("--method", "uniform", "--sparsity", "0.5")
OWL = ("--method", "owl", "--sparsity", "0.5", "--num-samples", "2", "--seq-len", "16")
TUNE = ("--method", "owl", "--sparsity", "0.5", "--budget", "1", "--num-samples", "2", "--seq-len", "16",
        "--heldout-windows", "1", "--heldout-seq-len", "16")
WANDA_RECIPE = """pruning_stage:
  pruning_modifiers:
    WandaPruningModifier:
      sparsity: {sparsity}
      targets: ["re:.*layers.*(proj)$"]
"""
ALLOCATION_ONLY = """pruning_stage:
  pruning_modifiers:
    OWLAllocationModifier:
      sparsity: 0.5
"""
NOT_JSON = "{ this is not json"
BINARY = bytes(range(256)) * 8

CASES = [
    # -- owl profile ---------------------------------------------------------------------------------
    Case("profile-missing-model", ("profile", "{tmp}/nope", *PROFILE, "-o", "{tmp}/out"), "nope"),
    Case("profile-model-is-a-file", ("profile", "{tmp}/weights.txt", *PROFILE, "-o", "{tmp}/out"), "weights.txt",
         _write("weights.txt", "hello")),
    Case("profile-folder-without-config", ("profile", "{tmp}/empty", *PROFILE, "-o", "{tmp}/out"), "config.json",
         _mkdir("empty")),
    Case("profile-corrupt-config", ("profile", "{model}", *PROFILE, "-o", "{tmp}/out"), "config.json",
         _write("model/config.json", NOT_JSON)),
    Case("profile-config-is-a-list", ("profile", "{model}", *PROFILE, "-o", "{tmp}/out"), "config.json",
         _write("model/config.json", "[1, 2]")),
    Case("profile-truncated-safetensors", ("profile", "{model}", *PROFILE, "-o", "{tmp}/out"), "model.safetensors",
         _truncate("model/model.safetensors", -1000)),
    Case("profile-safetensors-garbage-header", ("profile", "{model}", *PROFILE, "-o", "{tmp}/out"),
         "model.safetensors", _write("model/model.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header!!")),
    Case("profile-sparsity-above-1", ("profile", "{tiny}", "--method", "uniform", "--sparsity", "1.5", "-o",
                                      "{tmp}/out"), "1.5"),
    Case("profile-sparsity-negative", ("profile", "{tiny}", "--method", "uniform", "--sparsity", "-0.1", "-o",
                                       "{tmp}/out"), "-0.1"),
    Case("profile-sparsity-not-a-number", ("profile", "{tiny}", "--sparsity", "abc", "-o", "{tmp}/out"), "abc"),
    Case("profile-sparsity-nan", ("profile", "{tiny}", "--method", "uniform", "--sparsity", "nan", "-o",
                                  "{tmp}/out"), "nan"),
    Case("profile-bounds-reversed", ("profile", "{tiny}", *PROFILE[:2], "--sparsity", "0.5", "--method", "alpha",
                                     "--bounds", "0.9", "0.1", "-o", "{tmp}/out"), "0.9"),
    Case("profile-owl-m-negative", ("profile", "{tiny}", *OWL, "--owl-m", "-1", "-o", "{tmp}/out"), "-1"),
    Case("profile-owl-lambda-too-big", ("profile", "{tiny}", *OWL, "--owl-lambda", "2", "-o", "{tmp}/out"), "2"),
    Case("profile-alpha-epsilon-too-big", ("profile", "{tiny}", "--method", "alpha", "--sparsity", "0.5",
                                           "--epsilon", "5", "-o", "{tmp}/out"), "5"),
    Case("profile-calibration-missing", ("profile", "{tiny}", *OWL, "--calibration", "{tmp}/missing.txt", "-o",
                                         "{tmp}/out"), "missing.txt"),
    Case("profile-calibration-empty", ("profile", "{tiny}", *OWL, "--calibration", "{tmp}/empty.txt", "-o",
                                       "{tmp}/out"), "empty.txt", _write("empty.txt", "")),
    Case("profile-calibration-binary", ("profile", "{tiny}", *OWL, "--calibration", "{tmp}/blob.txt", "-o",
                                        "{tmp}/out"), "blob.txt", _write("blob.txt", BINARY)),
    Case("profile-calibration-bare-name", ("profile", "{tiny}", *OWL, "--calibration", "mytext", "-o",
                                           "{tmp}/out"), "mytext"),
    Case("profile-calibration-json-shape", ("profile", "{tiny}", *OWL, "--calibration", "{tmp}/bad.json", "-o",
                                            "{tmp}/out"), "bad.json", _write("bad.json", '{"rows": 3}')),
    Case("profile-calibration-jsonl-broken", ("profile", "{tiny}", *OWL, "--calibration", "{tmp}/bad.jsonl", "-o",
                                              "{tmp}/out"), "bad.jsonl", _write("bad.jsonl", '{"text": "a"}\n{oops\n')),
    Case("profile-calibration-folder", ("profile", "{tiny}", *OWL, "--calibration", "{tmp}/texts", "-o",
                                        "{tmp}/out"), "texts", _mkdir("texts")),
    Case("profile-output-exists", ("profile", "{tiny}", *PROFILE, "-o", "{tmp}/out"), "out",
         _write("out/mine.txt", "keep me")),
    Case("profile-output-is-a-file", ("profile", "{tiny}", *PROFILE, "-o", "{tmp}/out.txt"), "out.txt",
         _write("out.txt", "keep me")),
    Case("profile-output-is-the-model", ("profile", "{model}", *PROFILE, "-o", "{model}"), "model"),
    Case("profile-output-contains-the-model", ("profile", "{model}", *PROFILE, "-o", "{tmp}"), "{tmp}"),
    Case("profile-output-is-the-working-directory", ("profile", "{tiny}", *PROFILE, "-o", "."),
         "working directory"),
    Case("profile-read-only-output", ("profile", "{tiny}", *PROFILE, "-o", "{tmp}/ro/out"), "ro",
         _read_only("ro"), non_root=True),
    Case("export-read-only-output", ("export", "{pruned}", "--format", "dense", "-o", "{tmp}/ro/out"), "ro",
         _read_only("ro"), non_root=True),
    Case("profile-num-samples-zero", ("profile", "{tiny}", *OWL[:4], "--num-samples", "0", "-o", "{tmp}/out"),
         "num_samples"),
    Case("profile-seq-len-negative", ("profile", "{tiny}", *OWL[:4], "--seq-len", "-5", "-o", "{tmp}/out"), "-5"),
    # -- owl export ----------------------------------------------------------------------------------
    Case("export-missing-model", ("export", "{tmp}/nope", "--format", "compact", "-o", "{tmp}/out"), "nope"),
    Case("export-corrupt-config", ("export", "{model}", "--format", "dense", "-o", "{tmp}/out"), "config.json",
         _write("model/config.json", NOT_JSON)),
    Case("export-truncated-safetensors", ("export", "{model}", "--format", "dense", "-o", "{tmp}/out"),
         "model.safetensors", _truncate("model/model.safetensors", 4)),
    Case("export-profile-missing", ("export", "{pruned}", "--format", "compact", "--profile", "{tmp}/p.json", "-o",
                                    "{tmp}/out"), "p.json"),
    Case("export-profile-not-json", ("export", "{pruned}", "--format", "compact", "--profile", "{tmp}/p.json", "-o",
                                     "{tmp}/out"), "p.json", _write("p.json", NOT_JSON)),
    Case("export-profile-ratio-above-1", ("export", "{pruned}", "--format", "compact", "--profile", "{tmp}/p.json",
                                          "-o", "{tmp}/out"), "1.5", lambda tmp: _bad_ratio_profile(tmp / "p.json")),
    Case("export-output-is-the-source", ("export", "{model}", "--format", "dense", "-o", "{model}"), "model"),
    Case("export-output-exists", ("export", "{pruned}", "--format", "dense", "-o", "{tmp}/out"), "out",
         _write("out/mine.txt", "keep me")),
    Case("export-overwrite-onto-a-file", ("export", "{pruned}", "--format", "dense", "--overwrite", "-o",
                                          "{tmp}/out.bin"), "out.bin", _write("out.bin", b"keep")),
    Case("export-overwrite-a-folder-owl-did-not-write", ("export", "{pruned}", "--format", "dense", "--overwrite",
                                                         "-o", "{tmp}/out"), ".owl-output", _write("out/a.txt", "x")),
    Case("export-results-not-json", ("export", "{pruned}", "--format", "dense", "--results", "{tmp}/r.json", "-o",
                                     "{tmp}/out"), "r.json", _write("r.json", NOT_JSON)),
    Case("export-bad-license", ("export", "{pruned}", "--format", "dense", "--license", "not a licence!", "-o",
                                "{tmp}/out"), "not a licence!"),
    Case("export-bad-base-model", ("export", "{pruned}", "--format", "dense", "--base-model", "justname", "-o",
                                   "{tmp}/out"), "justname"),
    Case("export-bad-hub-id", ("export", "{pruned}", "--format", "dense", "--push-to-hub", "a/b/c", "-o",
                               "{tmp}/out"), "a/b/c"),
    Case("export-include-outside", ("export", "{pruned}", "--format", "dense", "--include", "../x.env", "-o",
                                    "{tmp}/out"), "../x.env"),
    Case("export-compact-unpruned", ("export", "{tiny}", "--format", "compact", "-o", "{tmp}/out"), "tiny"),
    Case("export-openvino-missing-venv", ("export", "{pruned}", "--format", "openvino", "--openvino-venv",
                                          "{tmp}/no-venv", "-o", "{tmp}/out"), "no-venv"),
    # loaders: a tampered compact checkpoint read back by the core loader (export to dense)
    Case("loader-mask-swap", ("export", "{tmp}/tampered", "--format", "dense", "-o", "{tmp}/out"),
         f"{MODULE}.weight_bitmask", _tampered(mask_swap, MODULE)),
    Case("loader-dense-twin", ("export", "{tmp}/tampered", "--format", "dense", "-o", "{tmp}/out"),
         f"{MODULE}.weight", _tampered(dense_twin, MODULE)),
    Case("loader-missing-norm", ("export", "{tmp}/tampered", "--format", "dense", "-o", "{tmp}/out"),
         "model.norm.weight", _tampered(drop_tensor, "model.norm.weight")),
    Case("loader-missing-piece", ("export", "{tmp}/tampered", "--format", "dense", "-o", "{tmp}/out"),
         "['weight_values']", _tampered(drop_tensor, f"{MODULE}.weight_values")),
    # -- owl tune ------------------------------------------------------------------------------------
    Case("tune-missing-model", ("tune", "{tmp}/nope", *TUNE, "-o", "{tmp}/out"), "nope"),
    Case("tune-sparsity-above-1", ("tune", "{tiny}", "--sparsity", "1.2", "-o", "{tmp}/out"), "1.2"),
    Case("tune-budget-zero", ("tune", "{tiny}", *TUNE[:4], "--budget", "0", "-o", "{tmp}/out"), "budget"),
    Case("tune-heldout-fraction", ("tune", "{tiny}", *TUNE, "--heldout-fraction", "1.5", "-o", "{tmp}/out"), "1.5"),
    Case("tune-calibration-missing", ("tune", "{tiny}", *TUNE, "--calibration", "{tmp}/c.txt", "-o", "{tmp}/out"),
         "c.txt"),
    Case("tune-calibration-empty", ("tune", "{tiny}", *TUNE, "--calibration", "{tmp}/c.txt", "-o", "{tmp}/out"),
         "c.txt", _write("c.txt", "   \n")),
    Case("tune-output-exists", ("tune", "{tiny}", *TUNE, "-o", "{tmp}/out"), "out", _write("out/a.txt", "keep")),
    Case("tune-output-contains-the-model", ("tune", "{model}", *TUNE, "-o", "{tmp}"), "{tmp}"),
    Case("tune-output-is-the-working-directory", ("tune", "{tiny}", *TUNE, "-o", "."), "working directory"),
    Case("tune-overwrite-the-working-directory", ("tune", "{tiny}", *TUNE, "--overwrite", "-o", "."),
         "working directory", _write("mine.txt", "keep")),
    Case("tune-bounds-reversed", ("tune", "{tiny}", *TUNE, "--bounds", "0.8", "0.2", "-o", "{tmp}/out"), "0.8"),
    # -- owl prune -----------------------------------------------------------------------------------
    Case("prune-recipe-missing", ("prune", "--recipe", "{tmp}/r.yaml", "--model", "{tiny}", "-o", "{tmp}/out"),
         "r.yaml"),
    Case("prune-recipe-not-yaml", ("prune", "--recipe", "{tmp}/r.yaml", "--model", "{tiny}", "-o", "{tmp}/out"),
         "r.yaml", _write("r.yaml", "pruning_stage: [unclosed\n  - {")),
    Case("prune-recipe-sparsity-above-1", ("prune", "--recipe", "{tmp}/r.yaml", "--model", "{tiny}",
                                           "--num-samples", "2", "--seq-len", "16", "-o", "{tmp}/out"), "1.5",
         _write("r.yaml", WANDA_RECIPE.format(sparsity=1.5))),
    Case("prune-allocation-without-pruner", ("prune", "--recipe", "{tmp}/r.yaml", "--model", "{tiny}",
                                             "--num-samples", "2", "--seq-len", "16", "-o", "{tmp}/out"),
         "OWLAllocationModifier", _write("r.yaml", ALLOCATION_ONLY)),
    Case("prune-missing-model", ("prune", "--recipe", "{tmp}/r.yaml", "--model", "{tmp}/nope", "-o", "{tmp}/out"),
         "nope", _write("r.yaml", WANDA_RECIPE.format(sparsity=0.5))),
    Case("prune-dataset-bare-name", ("prune", "--recipe", "{tmp}/r.yaml", "--model", "{tiny}", "--dataset",
                                     "mytext", "-o", "{tmp}/out"), "mytext",
         _write("r.yaml", WANDA_RECIPE.format(sparsity=0.5))),
    Case("prune-dataset-binary", ("prune", "--recipe", "{tmp}/r.yaml", "--model", "{tiny}", "--dataset",
                                  "{tmp}/blob.txt", "-o", "{tmp}/out"), "blob.txt",
         _both(_write("r.yaml", WANDA_RECIPE.format(sparsity=0.5)), _write("blob.txt", BINARY))),
    Case("prune-output-is-the-model", ("prune", "--recipe", "{tmp}/r.yaml", "--model", "{model}", "-o", "{model}"),
         "model", _write("r.yaml", WANDA_RECIPE.format(sparsity=0.5))),
    Case("prune-output-exists", ("prune", "--recipe", "{tmp}/r.yaml", "--model", "{tiny}", "-o", "{tmp}/out"),
         "out", _both(_write("r.yaml", WANDA_RECIPE.format(sparsity=0.5)), _write("out/a.txt", "keep"))),
    Case("prune-output-is-the-working-directory", ("prune", "--recipe", "{tmp}/r.yaml", "--model", "{tiny}", "-o",
                                                   "."), "working directory",
         _write("r.yaml", WANDA_RECIPE.format(sparsity=0.5))),
    # -- owl push ------------------------------------------------------------------------------------
    Case("push-missing-folder", ("push", "{tmp}/nope", "org/name"), "nope"),
    Case("push-not-an-export", ("push", "{tmp}/plain", "org/name"), "plain", _write("plain/notes.txt", "x")),
    Case("push-bad-repo-id", ("push", "{pruned}", "no-namespace"), "no-namespace"),
    Case("push-secret-file", ("push", "{tmp}/export", "org/name"), "credentials.env",
         _both(_write("export/config.json", "{}"), _write("export/credentials.env", "HF_TOKEN=hf_x"))),
    Case("push-no-token", ("push", "{pruned}", "org/name"), "no Hugging Face token found"),
    Case("push-offline", ("push", "{pruned}", "org/name"), "HF_HUB_OFFLINE", env={"HF_HUB_OFFLINE": "1"}),
    # -- owl validate --------------------------------------------------------------------------------
    Case("validate-missing-pruned", ("validate", "{tmp}/nope", "--report", "{tmp}/report"), "nope"),
    Case("validate-unknown-engine", ("validate", "{pruned}", "--engines", "bogus", "--report", "{tmp}/report"),
         "bogus"),
    Case("validate-greedy-prefix-above-1", ("validate", "{pruned}", "--greedy-min-prefix", "2", "--report",
                                            "{tmp}/report"), "greedy_lowp_min_prefix=2"),
    Case("validate-bad-min-speedup", ("validate", "{pruned}", "--min-speedup", "openvino=fast", "--report",
                                      "{tmp}/report"), "fast"),
    Case("validate-negative-tolerance", ("validate", "{pruned}", "--ppl-tolerance", "-1", "--report",
                                         "{tmp}/report"), "-1"),
    Case("validate-report-inside-the-input", ("validate", "{pruned}", "--report", "{pruned}/report"),
         "{pruned}/report"),
    Case("validate-text-missing", ("validate", "{pruned}", "--text", "{tmp}/t.txt", "--report", "{tmp}/report"),
         "t.txt"),
    # -- owl perplexity / owl model ------------------------------------------------------------------
    Case("perplexity-text-binary", ("perplexity", "{tiny}", "--text", "{tmp}/blob.txt"), "blob.txt",
         _write("blob.txt", BINARY)),
    Case("perplexity-missing-model", ("perplexity", "{tmp}/nope"), "nope"),
    Case("model-unknown-name", ("model", "llama-9000"), "llama-9000"),
]


def _snapshot(*roots: Path) -> dict[str, tuple]:
    """Every entry under ``roots`` (hidden ones included): kind, mode, and a file's size and mtime (a folder's
    own mtime moves when a staging folder comes and goes; its entries are what matters)."""
    found = {}
    for root in roots:
        for path in [root, *sorted(root.rglob("*"))]:
            stat = path.lstat()
            found[str(path)] = (path.is_dir(), stat.st_mode) + (() if path.is_dir() else
                                                                (stat.st_size, stat.st_mtime_ns))
    return found


def _without_stale_loguru_noise(err: str) -> str:
    """Drop llmcompressor's loguru complaints about the stream of an earlier test (in-process runs only:
    loguru keeps the ``sys.stderr`` it first saw, which pytest has closed since)."""
    kept, inside = [], False
    for line in err.splitlines():
        if line.startswith("--- Logging error in Loguru Handler"):
            inside = True
        elif line.startswith("--- End of logging error ---"):
            inside = False
        elif not inside:
            kept.append(line)
    return "\n".join(kept)


def _run_under_a_read_only_mount(argv: list[str], work: Path, read_only: Path) -> tuple[int, str]:
    """``owl ARGV`` (in ``work``) in a private mount namespace where ``read_only`` is bind-mounted read-only, so
    that writing there fails for root too (EROFS); its exit code and stderr."""
    if shutil.which("unshare") is None:
        pytest.skip("root, and no `unshare` (util-linux) for a read-only bind mount")
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 99; shift; exec "$@"'
    done = subprocess.run(["unshare", "--mount", "sh", "-c", script, "sh", str(read_only), sys.executable, "-m",
                           "owl_plugin", *argv], cwd=work, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"})
    if done.returncode == 99:
        pytest.skip(f"root, and no read-only bind mount possible here: {done.stderr.strip()[-300:]}")
    return done.returncode, done.stderr


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A magnitude-pruned tiny Llama exported dense, so it carries the sparsity_profile.json of its zeros."""
    from owl_plugin.export import export_checkpoint

    root = tmp_path_factory.mktemp("bad-inputs")
    export_checkpoint(pruned_llama(root / "raw", dtype=torch.float32), root / "pruned", format="dense")
    export_checkpoint(root / "pruned", root / "compact", format="compact")
    PRUNED[:], COMPACT[:] = [root / "pruned"], [root / "compact"]
    return root / "pruned"


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 50
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_fails_with_one_line_and_touches_nothing(case: Case, tmp_path, tiny_checkpoint, pruned, capsys,
                                                           monkeypatch) -> None:
    as_root = case.non_root and os.geteuid() == 0  # root writes through 0555: the folder becomes a read-only mount
    work = tmp_path / "case"
    work.mkdir()
    for name in HUB_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    if case.name == "push-no-token":
        from huggingface_hub import get_token

        if get_token():
            pytest.skip("this machine has a saved Hugging Face login (test_hub.py covers it with an empty HF_HOME)")
    if any("{model}" in arg for arg in case.argv):
        shutil.copytree(tiny_checkpoint, work / "model")
    if case.setup:
        case.setup(work)
    values = {"tmp": str(work), "tiny": str(tiny_checkpoint), "model": str(work / "model"), "pruned": str(pruned)}
    argv = [arg.format(**values) for arg in case.argv]
    roots = (work, tiny_checkpoint, pruned)
    before = _snapshot(*roots)
    if as_root:
        code, err = _run_under_a_read_only_mount(argv, work, work / case.culprit)
    else:
        cwd = os.getcwd()
        os.chdir(work)  # a relative default output would land here, and be seen
        try:
            try:
                code = main(argv)
            except SystemExit as stop:  # argparse
                code = stop.code
        finally:
            os.chdir(cwd)
        err = capsys.readouterr().err
    err = _without_stale_loguru_noise(err)
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert code == 2, f"exit {code}; stderr:\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    assert len(errors) == 1, err[-3000:]
    culprit = case.culprit.format(**values)
    assert culprit in errors[0], f"{culprit!r} not named in: {errors[0]}"
    after = _snapshot(*roots)
    assert after == before, {k: (before.get(k), after.get(k)) for k in set(before) ^ set(after) or
                             [k for k in before if before[k] != after[k]]}
