"""``owl tune``: search space, cache, resumable log, proxy, outputs, the CLI, and a short real-model run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import PNG_SIGNATURE, TINY_VOCAB
from owl_plugin.config import AlphaConfig, DLPConfig, OWLConfig, UniformConfig
from owl_plugin.layers import prunable_linears
from owl_plugin.profile import SparsityProfile
from owl_plugin.tuning import search as search_module
from owl_plugin.tuning.cache import KERNEL_PINS, code_fingerprint
from owl_plugin.tuning.log import CandidateLog, candidate_id
from owl_plugin.tuning.proxy import SequentialWandaProxy, WandaProxy, dense_reference
from owl_plugin.tuning.refine import RefineSettings
from owl_plugin.tuning.search import TuneSettings, split_calibration, tune
from owl_plugin.tuning.space import atp_beta_max, candidates, nested_grid

SMALL = TuneSettings(num_samples=3, seq_len=32, heldout_windows=2, heldout_seq_len=32)


@pytest.fixture
def stream() -> torch.Tensor:
    """A calibration token stream for the tiny model (vocab 512)."""
    return torch.randint(0, TINY_VOCAB, (4000,), generator=torch.Generator().manual_seed(7))


# --------------------------------------------------------------------------- search space
def test_nested_grid_grows_by_levels():
    grid = nested_grid({"a": (1, 2, 3), "b": ("x", "y")})
    # level 0: (1, x); level 1 adds every point using the second value of some axis; level 2 the rest
    assert grid[0] == {"a": 1, "b": "x"}
    assert grid[:4] == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
    assert grid[4:] == [{"a": 3, "b": "x"}, {"a": 3, "b": "y"}]


def test_candidates_start_with_paper_defaults_and_respect_budget():
    owl = candidates("owl", 3, target=0.7, num_blocks=30)
    assert owl[0] == OWLConfig(m=5.0, lam=0.08) and len(owl) == 3
    assert candidates("alpha", 1, target=0.7, num_blocks=30) == [AlphaConfig(epsilon=0.2, xmin="peak")]
    assert candidates("dlp", 2, target=0.5, num_blocks=4)[1] == DLPConfig(band=0.2)
    # ATP: beta_max = 2 * min(0.7, 0.29) / 29 = 0.02; fractions 0.5, 1.0 of it first
    assert atp_beta_max(0.7, 30, (0.0, 0.99)) == pytest.approx(0.02)
    assert [c.beta for c in candidates("atp", 2, target=0.7, num_blocks=30)] == [0.01, 0.02]
    # band-like values are capped by the bounds: half of (0.5, 0.8) is 0.15
    assert max(c.band for c in candidates("dlp", 7, target=0.6, num_blocks=4, bounds=(0.5, 0.8))) == pytest.approx(0.15)


@pytest.mark.parametrize("method, budget, message", [
    ("magic", 2, "unknown tuning method 'magic'"), ("owl", 0, "budget=0"), ("owl", 2.5, "budget=2.5"),
])
def test_candidates_reject_bad_input(method, budget, message):
    with pytest.raises(ValueError, match=message):
        candidates(method, budget, target=0.5, num_blocks=4)


# --------------------------------------------------------------------------- calibration split
def test_split_keeps_heldout_tail_disjoint_from_statistics(stream):
    batches, heldout = split_calibration(stream, SMALL)
    tail_start = stream.numel() - max(int(stream.numel() * 0.1), 2 * 32)  # 400 tokens held out
    assert [w.shape for w in heldout] == [(1, 32), (1, 32)]
    torch.testing.assert_close(heldout[0][0], stream[tail_start:tail_start + 32])
    head = stream[:tail_start]
    for batch in batches:  # every statistics window lies inside the head
        starts = [i for i in range(head.numel() - 31) if torch.equal(head[i:i + 32], batch[0])]
        assert starts
    with pytest.raises(ValueError, match="too short"):
        split_calibration(stream[:80], SMALL)


# --------------------------------------------------------------------------- candidate log
def test_candidate_log_survives_a_torn_line(tmp_path):
    path = tmp_path / "log.jsonl"
    log = CandidateLog(path)
    log.add({"id": candidate_id("atp", {"beta": 0.01}), "kl": 0.5, "ppl": 9.0})
    with path.open("a") as handle:
        handle.write('{"id": "half a rec')  # the process died mid-write
    again = CandidateLog(path)
    assert list(again.records) == [candidate_id("atp", {"beta": 0.01})]
    again.add({"id": "second", "kl": 0.25, "ppl": 8.0})
    assert set(CandidateLog(path).records) == {candidate_id("atp", {"beta": 0.01}), "second"}


# --------------------------------------------------------------------------- proxy
def test_proxy_masks_like_wanda_and_restores_the_dense_weights(tiny_model, tiny_batches):
    from owl_plugin.statistics import collect_input_sq_means

    stats = collect_input_sq_means(tiny_model, tiny_batches, progress=False)
    linears = {n: m for group in prunable_linears(tiny_model).values() for n, m in group.items()}
    before = {n: m.weight.detach().clone() for n, m in linears.items()}
    windows = [torch.randint(0, TINY_VOCAB, (1, 16), generator=torch.Generator().manual_seed(3))]
    proxy = WandaProxy(tiny_model, linears, stats, windows, dense_reference(tiny_model, windows, topk=8))
    name = "model.layers.1.mlp.down_proj"  # 64 x 128: 0.25 -> 32 weights pruned per row
    proxy._apply({name: 0.25})
    pruned = linears[name].weight.detach()
    metric = before[name].abs() * stats[name].sqrt().unsqueeze(0)
    for row in range(pruned.shape[0]):
        zeros = set(torch.nonzero(pruned[row] == 0).flatten().tolist())
        assert zeros == set(torch.argsort(metric[row], stable=True)[:32].tolist())
    proxy._restore()
    for n, m in linears.items():
        torch.testing.assert_close(m.weight.detach(), before[n], rtol=0, atol=0)


def test_proxy_kl_is_zero_dense_and_grows_with_sparsity(tiny_model, tiny_batches):
    from owl_plugin.allocate import allocate
    from owl_plugin.statistics import collect_input_sq_means

    stats = collect_input_sq_means(tiny_model, tiny_batches, progress=False)
    linears = {n: m for group in prunable_linears(tiny_model).values() for n, m in group.items()}
    windows = [torch.randint(0, TINY_VOCAB, (1, 24), generator=torch.Generator().manual_seed(s)) for s in (4, 5)]
    proxy = WandaProxy(tiny_model, linears, stats, windows, dense_reference(tiny_model, windows, topk=16))
    scores = [proxy.score(allocate(tiny_model, s, UniformConfig(), progress=False)) for s in (0.0, 0.3, 0.8)]
    assert scores[0].kl == pytest.approx(0.0, abs=1e-6)
    assert 0 < scores[1].kl < scores[2].kl


@pytest.mark.llmcompressor
def test_sequential_proxy_makes_the_masks_llmcompressor_makes(tiny_dir, tokenizer):
    """The sequential proxy's Wanda masks are oneshot's, mask for mask; the dense proxy's differ after block 0."""
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import WandaPruningModifier
    from transformers import AutoModelForCausalLM

    from owl_plugin.integrations.llmcompressor.prune import calibration_dataset
    from owl_plugin.statistics import collect_input_sq_means
    from owl_plugin.text import calibration_batches, load_text, tokenize

    data = calibration_dataset(tokenizer, "pydoc", num_samples=4, seq_len=64, seed=0)
    pruned = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    oneshot(model=pruned, processor=tokenizer, dataset=data, num_calibration_samples=4, max_seq_length=64,
            shuffle_calibration_samples=False,
            recipe=[WandaPruningModifier(sparsity=0.5, mask_structure="0:0", targets=[r"re:model\.layers\.\d+$"])])
    oneshot_zeros = {n: m.weight == 0 for n, m in pruned.named_modules() if isinstance(m, torch.nn.Linear)}

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    batches = calibration_batches(tokenize(tokenizer, load_text("pydoc")), num_samples=4, seq_len=64, seed=0)
    assert [b[0].tolist() for b in batches] == data["input_ids"]  # the same calibration windows
    linears = {n: m for group in prunable_linears(model).values() for n, m in group.items()}
    before = {n: m.weight.detach().clone() for n, m in linears.items()}
    windows = batches[:1]
    reference = dense_reference(model, windows, topk=8)
    sequential = SequentialWandaProxy(model, linears, batches, windows, reference)
    dense = WandaProxy(model, linears, collect_input_sq_means(model, batches, progress=False), windows, reference)
    agreement = {}
    for proxy in (sequential, dense):
        proxy._apply({n: 0.5 for n in linears})
        agreement[type(proxy).__name__] = {n: float(((m.weight == 0) == oneshot_zeros[n]).float().mean())
                                           for n, m in linears.items()}
        proxy._restore()
    assert agreement["SequentialWandaProxy"] == {n: 1.0 for n in linears}
    first_block = [n for n in linears if n.startswith("model.layers.0.")]
    assert all(agreement["WandaProxy"][n] == 1.0 for n in first_block)  # block 0 sees the same inputs either way
    assert min(agreement["WandaProxy"].values()) < 0.99  # later blocks see pruned inputs only in oneshot
    for n, m in linears.items():
        torch.testing.assert_close(m.weight.detach(), before[n], rtol=0, atol=0)


def test_sequential_proxy_is_dense_at_zero_and_restores(tiny_model, tiny_batches):
    from owl_plugin.allocate import allocate

    linears = {n: m for group in prunable_linears(tiny_model).values() for n, m in group.items()}
    before = {n: m.weight.detach().clone() for n, m in linears.items()}
    windows = [torch.randint(0, TINY_VOCAB, (1, 24), generator=torch.Generator().manual_seed(s)) for s in (4, 5)]
    proxy = SequentialWandaProxy(tiny_model, linears, tiny_batches, windows,
                                 dense_reference(tiny_model, windows, topk=16))
    scores = [proxy.score(allocate(tiny_model, s, UniformConfig(), progress=False)) for s in (0.0, 0.3, 0.8)]
    assert scores[0].kl == pytest.approx(0.0, abs=1e-6)
    assert 0 < scores[1].kl < scores[2].kl
    for n, m in linears.items():
        torch.testing.assert_close(m.weight.detach(), before[n], rtol=0, atol=0)
    with pytest.raises(ValueError, match="batches is empty"):
        SequentialWandaProxy(tiny_model, linears, [], windows, proxy.reference)


# --------------------------------------------------------------------------- tune on a tiny model
def test_tune_caches_statistics_and_resumes(tiny_model, stream, tmp_path, monkeypatch):
    first = tune(tiny_model, stream, target=0.6, methods=["owl", "dlp", "atp"], budget=2, settings=SMALL,
                 cache_root=tmp_path / "cache", progress=False)
    assert first.cached == {"input_sq_means": False, "dense_reference": False}
    assert len(first.records) == 1 + 3 * 2  # uniform reference + budget per method
    assert {r["method"] for r in first.records} == {"uniform", "owl", "dlp", "atp"}
    assert (first.cache_folder / "input_sq_means.safetensors").is_file()
    assert first.best["kl"] == min(r["kl"] for r in first.records)
    assert first.profile.mean_sparsity() == pytest.approx(0.6, abs=1e-9)
    assert first.profile.params["tuned"]["kl"] == first.best["kl"]
    log = first.cache_folder / "candidates-0.6.jsonl"
    assert len(log.read_text().splitlines()) == 7

    def must_not_run(*args, **kwargs):
        raise AssertionError("statistics were collected again instead of read from the cache")

    monkeypatch.setattr(search_module, "collect_input_sq_means", must_not_run)
    monkeypatch.setattr(search_module, "dense_reference", must_not_run)
    # a larger budget: the 7 logged candidates are reused, only the 3 new ones are evaluated
    second = tune(tiny_model, stream, target=0.6, methods=["owl", "dlp", "atp"], budget=3, settings=SMALL,
                  cache_root=tmp_path / "cache", progress=False)
    assert second.statistics_cached and second.cached["dense_reference"]
    assert second.cache_folder == first.cache_folder
    assert len(second.records) == 10 and len(log.read_text().splitlines()) == 10
    assert second.records[:3] == first.records[:3]  # uniform and the owl candidates, read back from the log

    # another calibration stream is another key: statistics would be collected (and must_not_run says so)
    with pytest.raises(AssertionError, match="collected again"):
        tune(tiny_model, stream.flip(0), target=0.6, methods=["atp"], budget=1, settings=SMALL,
             cache_root=tmp_path / "cache", progress=False)
    # so are other numerics (statistics measured with other CPU kernels or another torch round differently)
    native_numerics = search_module.numerics_fingerprint
    monkeypatch.setattr(search_module, "numerics_fingerprint", lambda device: native_numerics(device) + " | other")
    with pytest.raises(AssertionError, match="collected again"):
        tune(tiny_model, stream, target=0.6, methods=["atp"], budget=1, settings=SMALL,
             cache_root=tmp_path / "cache", progress=False)
    monkeypatch.setattr(search_module, "numerics_fingerprint", native_numerics)
    # and so is another version of this package's code
    monkeypatch.setattr(search_module, "code_fingerprint", lambda: "0" * 64)
    with pytest.raises(AssertionError, match="collected again"):
        tune(tiny_model, stream, target=0.6, methods=["atp"], budget=1, settings=SMALL,
             cache_root=tmp_path / "cache", progress=False)


def test_code_fingerprint_follows_every_source_file(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "a.py").write_text("x = 1\n")
    (package / "sub" / "b.py").write_text("y = 2\n")
    (package / "notes.txt").write_text("not code")
    before = code_fingerprint(package)
    (package / "notes.txt").write_text("still not code")
    assert code_fingerprint.__wrapped__(package) == before
    (package / "sub" / "b.py").write_text("y = 3\n")
    assert code_fingerprint.__wrapped__(package) != before
    assert code_fingerprint() == code_fingerprint.__wrapped__(Path(search_module.__file__).resolve().parent.parent)


def test_numerics_fingerprint_follows_the_cpu_kernels():
    """Pinning torch to its generic kernels (``ATEN_CPU_CAPABILITY=default``) changes the fingerprint,
    so a tune cache measured with AVX-512 kernels is not read back by a run on AVX2 or generic ones."""
    code = "from owl_plugin.tuning.cache import numerics_fingerprint; print(numerics_fingerprint())"
    unpinned = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", *KERNEL_PINS)}
    native = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env=unpinned).stdout
    pinned = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**unpinned, "ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
                            ).stdout
    assert native.startswith(f"torch {torch.__version__} | cpu | ")
    assert pinned.strip().split(" | ")[2:] == ["DEFAULT", "MKL_ENABLE_INSTRUCTIONS=AVX2"]
    assert native != pinned


def test_sequential_tune_shares_the_statistics_and_keeps_its_own_log(tiny_model, stream, tmp_path):
    from dataclasses import replace

    dense = tune(tiny_model, stream, target=0.6, methods=["atp"], budget=2, settings=SMALL,
                 cache_root=tmp_path / "cache", progress=False)
    sequential = tune(tiny_model, stream, target=0.6, methods=["atp"], budget=2,
                      settings=replace(SMALL, proxy="sequential"), cache_root=tmp_path / "cache", progress=False)
    assert sequential.cache_folder == dense.cache_folder and sequential.statistics_cached
    assert len((dense.cache_folder / "candidates-0.6-sequential.jsonl").read_text().splitlines()) == 3
    assert len((dense.cache_folder / "candidates-0.6.jsonl").read_text().splitlines()) == 3
    # the same uniform candidate, scored with other masks (block 1 on sees the pruned block 0)
    assert sequential.records[0]["method"] == dense.records[0]["method"] == "uniform"
    assert sequential.records[0]["kl"] != pytest.approx(dense.records[0]["kl"], rel=1e-6)
    assert "partly pruned model" in sequential.proxy and "dense statistics" in dense.proxy
    assert sequential.profile.params["tuned"]["settings"]["proxy"] == "sequential"


def test_tune_rejects_bad_input(tiny_model, stream, tmp_path):
    with pytest.raises(ValueError, match="target sparsity 1.2"):
        tune(tiny_model, stream, target=1.2, settings=SMALL, cache_root=tmp_path)
    with pytest.raises(ValueError, match="methods=\\['owl', 'magic'\\]"):
        tune(tiny_model, stream, target=0.5, methods=["owl", "magic"], settings=SMALL, cache_root=tmp_path)
    with pytest.raises(ValueError, match="heldout_fraction=1.5"):
        TuneSettings(heldout_fraction=1.5)
    with pytest.raises(ValueError, match="proxy='magic' is not one of dense, sequential"):
        TuneSettings(proxy="magic")
    assert not (tmp_path / "tune").exists()  # nothing cached for rejected input


def test_cli_tune_writes_outputs_and_never_reads_the_evaluation_file(tiny_checkpoint, eval_text_path, tmp_path,
                                                                     monkeypatch, capsys):
    """In-process CLI run under an audit hook that records every file opened."""
    from owl_plugin.cli import main

    secret = tmp_path / "evaluation.txt"
    secret.write_text(eval_text_path.read_text()[:20000])
    monkeypatch.setenv("OWL_EVAL_TEXT", str(secret))
    opened: list[str] = []

    def hook(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes, Path)):
            opened.append(str(args[0]))

    sys.addaudithook(hook)  # cannot be removed; it only appends paths
    output = tmp_path / "tuned"
    argv = ["tune", str(tiny_checkpoint), "--method", "all", "--sparsity", "0.5", "--budget", "2",
            "--calibration", "pydoc", "--num-samples", "3", "--seq-len", "64", "--heldout-windows", "2",
            "--heldout-seq-len", "64", "--cache", str(tmp_path / "cache"), "--output", str(output)]
    assert main(argv) == 0
    seen = list(opened)
    opened.clear()
    assert not [p for p in seen if "evaluation.txt" in p or "wikitext" in p.lower()], "tune opened the evaluation text"
    printed = capsys.readouterr().out
    assert "statistics: collected and cached" in printed and "KL(dense ‖ pruned)" in printed

    best = SparsityProfile.load(output)
    assert best.mean_sparsity() == pytest.approx(0.5, abs=1e-9)
    assert best.params["tuned"]["proxy"].startswith("KL")
    table = json.loads((output / "candidates.json").read_text())
    assert len(table["candidates"]) == 1 + 4 * 2 and table["best"] == table["candidates"][0]["id"]
    assert "| 1 |" in (output / "candidates.md").read_text()
    for png in ("scores.png", "sparsity_profile.png"):
        assert (output / png).read_bytes()[:8] == PNG_SIGNATURE
    assert not [p for p in output.parent.iterdir() if p.name.startswith(".tuned")]  # no staging leftovers

    assert main(argv) == 2  # the output now exists: refused before any work, naming the folder and the flag
    assert f"output {output} exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0  # the second run reads statistics from the cache
    assert "statistics: loaded from the cache" in capsys.readouterr().out


# --------------------------------------------------------------------------- the real default model
@pytest.mark.real_model
@pytest.mark.slow
def test_short_tune_on_default_model_returns_profile_at_the_target(default_model_path, tmp_path):
    from owl_plugin.models import load_model
    from owl_plugin.text import load_text, tokenize

    model, tokenizer = load_model(default_model_path)
    ids = tokenize(tokenizer, load_text("pydoc"))
    settings = TuneSettings(num_samples=2, seq_len=128, heldout_windows=1, heldout_seq_len=128)
    result = tune(model, ids, target=0.7, methods=["dlp", "atp"], budget=1, settings=settings,
                  cache_root=tmp_path, progress=False, refine=RefineSettings(generations=2, offspring=2))
    assert result.profile.mean_sparsity() == pytest.approx(0.7, abs=1e-9)
    assert len(result.profile.modules) == 30 * 7 and result.profile.method in {"uniform", "dlp", "atp", "refined"}
    uniform = next(r for r in result.records if r["method"] == "uniform")
    assert 0 < result.best["kl"] <= uniform["kl"] and np.isfinite(result.best["ppl"])
    refined = next(r for r in result.records if r["method"] == "refined")
    assert len(refined["history"]) == 3 and refined["kl"] == min(refined["history"])


def test_interrupted_tune_resumes_from_the_log(tiny_model, stream, tmp_path, monkeypatch):
    """Ctrl-C during the 4th candidate: the 3 finished ones are kept; the rerun evaluates only the rest."""
    real_score = WandaProxy.score
    calls = []

    def interrupt_on_fourth(self, profile):
        calls.append(profile.method)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_score(self, profile)

    monkeypatch.setattr(WandaProxy, "score", interrupt_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        tune(tiny_model, stream, target=0.5, methods=["dlp", "atp"], budget=3, settings=SMALL,
             cache_root=tmp_path, progress=False)
    logs = list((tmp_path / "tune").glob("*/candidates-0.5.jsonl"))
    assert len(logs) == 1 and len(logs[0].read_text().splitlines()) == 3
    for name, linear in prunable_linears(tiny_model)["model.layers.0"].items():  # restored to dense
        assert not (linear.weight == 0).any(), name

    calls.clear()
    monkeypatch.setattr(WandaProxy, "score", lambda self, profile: (calls.append(profile.method),
                                                                     real_score(self, profile))[1])
    result = tune(tiny_model, stream, target=0.5, methods=["dlp", "atp"], budget=3, settings=SMALL,
                  cache_root=tmp_path, progress=False)
    assert len(result.records) == 7 and len(calls) == 4  # 3 read back, 4 evaluated (the interrupted one again)
    assert calls == ["dlp", "atp", "atp", "atp"]


def test_model_fingerprint_hashes_scalar_tensors(tiny_model):
    """Gemma-3 keeps 0-dim tensors; the byte view must not crash on them, and their value counts."""
    from owl_plugin.tuning.cache import model_fingerprint

    tiny_model.register_buffer("scale", torch.tensor(2.0))
    first = model_fingerprint(tiny_model)
    tiny_model.scale.fill_(3.0)
    assert model_fingerprint(tiny_model) != first


# --------------------------------------------------------------------------- a damaged cache is never fatal
def _tune_argv(model: Path, cache: Path, output: Path) -> list[str]:
    return ["tune", str(model), "--method", "all", "--sparsity", "0.5", "--budget", "1", "--calibration", "pydoc",
            "--num-samples", "2", "--seq-len", "32", "--heldout-windows", "1", "--heldout-seq-len", "32",
            "--cache", str(cache), "--output", str(output), "--overwrite"]


def _best(output: Path) -> tuple[str, dict[str, float]]:
    table = json.loads((output / "candidates.json").read_text())
    return table["best"], {c["id"]: c["kl"] for c in table["candidates"]}


def test_edited_or_undigested_log_records_are_recomputed_and_the_best_is_unchanged(tiny_checkpoint, tmp_path,
                                                                                   caplog):
    """An edited score would have made a losing candidate the best; its digest no longer matches, so it is
    dropped with a warning naming the log and line and scored again. A record without a digest (an older
    owl-plugin's) is not trusted either."""
    from owl_plugin.cli import main

    cache, output = tmp_path / "cache", tmp_path / "tuned"
    assert main(_tune_argv(tiny_checkpoint, cache, output)) == 0
    best, scores = _best(output)
    log = next(cache.glob("tune/*/candidates-0.5.jsonl"))
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert all(len(r["digest"]) == 64 for r in lines)
    loser = max(range(len(lines)), key=lambda i: lines[i]["kl"])
    old = next(i for i in range(len(lines)) if i != loser and lines[i]["id"] != best)
    lines[loser]["kl"] = 0.0  # would win if it were trusted
    del lines[old]["digest"]
    log.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in lines) + '{"id": "torn')

    caplog.clear()
    assert main(_tune_argv(tiny_checkpoint, cache, output)) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(m.startswith(f"{log}:{loser + 1} does not match its digest") for m in warned), warned
    assert any(m.startswith(f"{log}:{old + 1} has no digest") for m in warned), warned
    assert any(m.startswith(f"{log}:{len(lines) + 1} is not a complete JSON record") for m in warned), warned
    again, rescored = _best(output)
    assert again == best and rescored == pytest.approx(scores, rel=1e-6)
    kept = [json.loads(line) for line in log.read_text().splitlines()]  # the bad lines are gone, the new ones valid
    assert len(kept) == len(lines) and all(r["kl"] > 0 and "digest" in r for r in kept)

    caplog.clear()
    assert main(_tune_argv(tiny_checkpoint, cache, output)) == 0  # the repaired log is read without a word
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert _best(output) == (best, rescored)


def test_truncated_or_garbage_cache_files_are_reported_removed_and_recomputed(tiny_checkpoint, tmp_path, caplog,
                                                                              capsys):
    from owl_plugin.cli import main

    cache, output = tmp_path / "cache", tmp_path / "tuned"
    assert main(_tune_argv(tiny_checkpoint, cache, output)) == 0
    best, scores = _best(output)
    folder = next(cache.glob("tune/*/"))
    alphas = sorted(folder.glob("alphas-*.json"))
    assert alphas and (folder / "input_sq_means.safetensors").is_file()

    def truncate(path: Path) -> None:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    damages = {
        "input_sq_means.safetensors": (truncate, "cannot be read"),
        "dense_top128.safetensors": (lambda p: p.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage"),
                                     "cannot be read"),
        alphas[0].name: (lambda p: p.write_text("{ this is not json"), "is not valid JSON"),
        alphas[-1].name: (lambda p: p.write_text(p.read_text().replace(": ", ": NaN, \"x\": ", 1)),
                          "is not valid JSON"),
        "windows.json": (lambda p: p.write_text("[1, 2]"), "is not a window protocol"),
    }
    for name, (damage, problem) in damages.items():
        path = folder / name
        damage(path)
        caplog.clear()
        capsys.readouterr()
        assert main(_tune_argv(tiny_checkpoint, cache, output)) == 0, name
        warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert f"tune cache file {path} {problem}" in " | ".join(warned), (name, warned)
        assert path.is_file() and _best(output) == (best, scores), name  # recomputed: the same best
        if name == "input_sq_means.safetensors":
            assert "statistics: collected and cached" in capsys.readouterr().out


def test_compare_tune_proxies_script_scores_both_proxies(tiny_checkpoint, eval_text_path, tmp_path):
    """examples/compare_tune_proxies.py: one row per candidate, uniform first, both proxies and both splits."""
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).parents[1] / "examples" / "compare_tune_proxies.py"),
         "--model", str(tiny_checkpoint), "--sparsity", "0.6", "--num-samples", "2", "--heldout-windows", "1",
         "--eval-windows", "1", "--atp-beta", "0.01", "--text", str(eval_text_path), "--json", str(out)],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [r["candidate"] for r in rows] == ["uniform", "atp β=0.01", "owl (M=5, λ=0.08)"]
    for row in rows:
        for kind in ("dense", "sequential"):
            assert row[f"{kind}_heldout_kl"] > 0 and row[f"{kind}_evaluation_ppl"] > 1
    assert rows[0]["dense_heldout_kl"] != rows[0]["sequential_heldout_kl"]  # other masks after block 0
    assert "| uniform | " in proc.stdout and "sequential proxy picks: " in proc.stdout
