"""``examples/benchmark_quality.py``: its rows are the recipes they name, and ``--merge`` prints draws
run separately as one table, never a silent mix."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "examples" / "benchmark_quality.py"


def row(seed: int, allocation: str, ppl: float, seconds: float, num_samples: int = 64, **extra) -> dict:
    return {"seed": seed, "pruner": "wanda", "allocation": allocation, "sparsity": 0.7, "num_samples": num_samples,
            "ppl": ppl, "seconds": seconds, "peak_mib": 1200.0, "measured": 0.6992, **extra}


def load_script():
    """The benchmark script as a module (it is not part of the package)."""
    spec = importlib.util.spec_from_file_location("benchmark_quality", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def merge(*files: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--merge", *map(str, files)], capture_output=True, text=True,
                          timeout=120)


def test_draws_from_separate_runs_give_one_median_table(tmp_path: Path) -> None:
    first, second = tmp_path / "draws01.json", tmp_path / "draw2.json"
    first.write_text(json.dumps([row(0, "uniform", 500.0, 100), row(0, "owl", 400.0, 130),
                                 row(1, "uniform", 600.0, 100), row(1, "owl", 420.0, 120)]))
    second.write_text(json.dumps([row(2, "owl", 270.0, 150), row(2, "uniform", 300.0, 100)]))
    result = merge(first, second)
    assert result.returncode == 0, result.stderr
    # each draw against uniform of the same draw: -20%, -30%, -10% → median -20%; times 1.3, 1.2, 1.5 → 1.30×
    assert "| 70% | wanda | owl | 2 | 270.00 | -10.0% | 0.6992 | 150 | 1.50× | 1200 |" in result.stdout
    assert "| 70% | wanda | owl | 3 | 400.00 | -20.0% | -30.0% … -10.0% | 1.30× |" in result.stdout


def test_a_run_given_twice_or_mixed_calibration_sizes_or_texts_are_refused(tmp_path: Path) -> None:
    once, other_size = tmp_path / "once.json", tmp_path / "sixteen.json"
    once.write_text(json.dumps([row(0, "uniform", 500.0, 100), row(0, "owl", 400.0, 130)]))
    other_size.write_text(json.dumps([row(1, "uniform", 90.0, 50, num_samples=16)]))
    twice = merge(once, once)
    assert twice.returncode == 1
    assert f"{once} repeats the run ('wanda', 0.7, None, 0, 64, None, 'uniform') already read from {once}" in \
        twice.stderr
    mixed = merge(once, other_size)
    assert mixed.returncode == 1 and "different calibration sizes ['16', '64']" in mixed.stderr
    pydoc = tmp_path / "pydoc.json"
    pydoc.write_text(json.dumps([row(1, "uniform", 520.0, 100, calibration="pydoc")]))
    texts = merge(once, pydoc)
    assert texts.returncode == 1 and "different calibration texts ['pydoc', 'second half" in texts.stderr


def test_rows_of_different_evaluation_sizes_are_refused(tmp_path: Path) -> None:
    forty, full = tmp_path / "forty.json", tmp_path / "full.json"
    forty.write_text(json.dumps([row(0, "uniform", 500.0, 100)]))  # written before eval_windows was recorded: 40
    full.write_text(json.dumps([row(1, "uniform", 520.0, 100, eval_windows=270)]))
    mixed = merge(forty, full)
    assert mixed.returncode == 1 and "different numbers of windows [40, 270]" in mixed.stderr


def test_more_evaluation_windows_than_the_first_half_holds_are_refused_before_pruning() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--sparsities", "0.7", "--pruners", "wanda", "--allocations", "uniform",
         "--no-warmup", "--eval-windows", "271"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1
    assert ("--eval-windows 271: the evaluation text (the first half of the file; the second half is the "
            "calibration text) holds 270 windows of 512 tokens") in result.stderr
    assert "prune + evaluate" not in result.stderr  # refused before the first prune started


def test_owl_capped_rows_of_different_caps_are_refused(tmp_path: Path) -> None:
    sixteen, eight = tmp_path / "sixteen.json", tmp_path / "eight.json"
    sixteen.write_text(json.dumps([row(0, "uniform", 500.0, 100),
                                   row(0, "owl-capped", 420.0, 110, statistics_samples=16)]))
    eight.write_text(json.dumps([row(1, "uniform", 520.0, 100),
                                 row(1, "owl-capped", 450.0, 105, statistics_samples=8)]))
    mixed = merge(sixteen, eight)
    assert mixed.returncode == 1 and "different --statistics-samples [8, 16]" in mixed.stderr


def test_rows_from_different_cpu_kernels_are_refused(tmp_path: Path) -> None:
    avx2, avx512 = tmp_path / "avx2.json", tmp_path / "avx512.json"
    avx2.write_text(json.dumps([row(0, "uniform", 489.98, 100, cpu_kernels="AVX2")]))
    avx512.write_text(json.dumps([row(1, "uniform", 479.96, 100, cpu_kernels="AVX512")]))
    mixed = merge(avx2, avx512)
    assert mixed.returncode == 1 and "different CPU kernels ['AVX2', 'AVX512']" in mixed.stderr
    older = tmp_path / "older.json"  # written before cpu_kernels was recorded: not checked
    older.write_text(json.dumps([row(2, "uniform", 500.0, 100)]))
    merged = merge(avx2, older)
    assert merged.returncode == 0 and f"Rows merged from {avx2}, {older}; CPU kernels AVX2" in merged.stdout
    assert "CPU kernels not recorded" in merge(older).stdout


def test_cpu_kernels_avx2_pins_torch_to_avx2() -> None:
    script = load_script()
    probe = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    pinned = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            env={**os.environ, **script.CPU_KERNELS["avx2"]})
    assert pinned.returncode == 0, pinned.stderr
    assert pinned.stdout.strip() == "AVX2"


def test_every_benchmark_allocation_is_the_recipe_its_rows_name(tmp_path: Path) -> None:
    """Each row's recipe resolves in llmcompressor to the allocation modifier the tables describe
    (``owl-linear``: one ratio per linear; ``owl-capped``: statistics from the first windows),
    followed by the pruner at the row's sparsity."""
    script = load_script()
    from llmcompressor.recipe import Recipe

    import owl_plugin.integrations.llmcompressor  # noqa: F401  (registers the modifiers)

    expected = {"uniform": None, "owl": ("OWLAllocationModifier", {"owl_m": 5, "owl_lambda": 0.08,
                                                                     "granularity": "block"}),
                "owl-linear": ("OWLAllocationModifier", {"granularity": "linear", "owl_lambda": 0.08}),
                "owl-capped": ("OWLAllocationModifier", {"statistics_samples": 8, "granularity": "block"}),
                "alpha": ("AlphaAllocationModifier", {"epsilon": 0.2}),
                "dlp": ("DLPAllocationModifier", {"dlp_band": 0.08}),
                "atp": ("ATPAllocationModifier", {"atp_beta": 0.005})}
    assert set(expected) == set(script.ALLOCATIONS) - set(script.TUNED)
    for allocation, want in expected.items():
        recipe = tmp_path / f"{allocation}.yaml"
        recipe.write_text(script.recipe_text("wanda", allocation, 0.7, statistics_samples=8))
        modifiers = Recipe.create_instance(str(recipe)).modifiers
        assert type(modifiers[-1]).__name__ == "WandaPruningModifier" and modifiers[-1].sparsity == 0.7
        if want is None:
            assert len(modifiers) == 1, allocation
            continue
        name, fields = want
        assert len(modifiers) == 2 and type(modifiers[0]).__name__ == name, allocation
        assert {k: getattr(modifiers[0], k) for k in fields} == fields, allocation


def test_tuned_rows_prune_with_the_profile_owl_tune_wrote_and_name_what_it_picked(tmp_path: Path, tiny_model,
                                                                                   tiny_batches) -> None:
    """A ``tuned`` row loads ``owl tune``'s profile through ``ProfileAllocationModifier``; an ``owl-tuned`` row
    runs the recipe's own OWL modifier with the (M, λ) read from that profile. ``tuned as`` names the method
    and, for OWL, its (M, λ)."""
    script = load_script()
    from llmcompressor.recipe import Recipe

    import owl_plugin.integrations.llmcompressor  # noqa: F401  (registers the modifiers)
    from owl_plugin.allocate import allocate
    from owl_plugin.config import AlphaConfig, OWLConfig

    assert script.TUNED == {"tuned": "all", "owl-tuned": "owl"}
    owl = allocate(tiny_model, 0.7, OWLConfig(m=3.0, lam=0.2), calibration=tiny_batches, progress=False)
    owl.save(tmp_path / "owl")
    alpha = allocate(tiny_model, 0.7, AlphaConfig(epsilon=0.4), progress=False)
    alpha.save(tmp_path / "alpha")
    assert script.tuned_as(json.loads((tmp_path / "owl" / "sparsity_profile.json").read_text())) == "owl M=3 λ=0.2"
    assert script.tuned_as(json.loads((tmp_path / "alpha" / "sparsity_profile.json").read_text())) == "alpha"
    profile = tmp_path / "owl" / "sparsity_profile.json"
    recipes = {}
    for allocation in script.TUNED:
        recipes[allocation] = tmp_path / f"{allocation}.yaml"
        recipes[allocation].write_text(script.recipe_text("wanda", allocation, 0.7, profile))
    tuned = Recipe.create_instance(str(recipes["tuned"])).modifiers
    assert [type(m).__name__ for m in tuned] == ["ProfileAllocationModifier", "WandaPruningModifier"]
    assert Path(tuned[0].profile_file) == profile
    owl_tuned = Recipe.create_instance(str(recipes["owl-tuned"])).modifiers  # OWL itself, with the picked M and λ
    assert [type(m).__name__ for m in owl_tuned] == ["OWLAllocationModifier", "WandaPruningModifier"]
    assert (owl_tuned[0].owl_m, owl_tuned[0].owl_lambda, owl_tuned[1].sparsity) == (3.0, 0.2, 0.7)


def test_atp_beta_rows_keep_the_default_label_and_prune_with_their_own_beta(tmp_path: Path) -> None:
    """``--atp-beta``: the default β alone stays the ``atp`` row; a sweep labels each row by β and its
    recipe carries that β."""
    script = load_script()
    from llmcompressor.recipe import Recipe

    import owl_plugin.integrations.llmcompressor  # noqa: F401  (registers the modifiers)

    assert script.atp_allocations([0.005]) == {"atp": 0.005}
    assert script.atp_allocations([0.005, 0.01]) == {"atp β=0.005": 0.005, "atp β=0.01": 0.01}
    recipe = tmp_path / "atp.yaml"
    recipe.write_text(script.recipe_text("wanda", "atp β=0.01", 0.7, atp_beta=0.01))
    modifiers = Recipe.create_instance(str(recipe)).modifiers
    assert type(modifiers[0]).__name__ == "ATPAllocationModifier" and modifiers[0].atp_beta == 0.01


def test_profiles_rows_prune_with_each_saved_file_and_refuse_a_missing_one_or_a_repeated_label(tmp_path: Path,
                                                                                              tiny_model) -> None:
    """``--profiles``: a row per file, labelled by the file (or its folder), pruned through that file."""
    script = load_script()
    from llmcompressor.recipe import Recipe

    import owl_plugin.integrations.llmcompressor  # noqa: F401  (registers the modifiers)
    from owl_plugin.allocate import allocate
    from owl_plugin.config import ATPConfig

    folder = allocate(tiny_model, 0.7, ATPConfig(beta=0.02), progress=False).save(tmp_path / "atp")
    single = tmp_path / "held.json"
    single.write_text(folder.read_text())
    rows = script.saved_profiles([str(folder.parent), str(single)])
    assert rows == {"profile:atp": folder.resolve(), "profile:held": single.resolve()}
    recipe = tmp_path / "row.yaml"
    recipe.write_text(script.recipe_text("sparsegpt", "profile:held", 0.6, rows["profile:held"]))
    modifiers = Recipe.create_instance(str(recipe)).modifiers
    assert [type(m).__name__ for m in modifiers] == ["ProfileAllocationModifier", "SparseGPTModifier"]
    assert Path(modifiers[0].profile_file) == single.resolve() and modifiers[1].sparsity == 0.6
    with pytest.raises(SystemExit, match="--profiles .*nowhere.json: no such profile file"):
        script.saved_profiles([str(tmp_path / "nowhere.json")])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "atp.json").write_text(folder.read_text())
    with pytest.raises(SystemExit, match="another profile already gives the row 'profile:atp'"):
        script.saved_profiles([str(folder.parent), str(tmp_path / "other" / "atp.json")])


def test_hold_blocks_puts_the_held_blocks_at_the_target_and_keeps_the_rest_s_shape_and_the_mean(
        tmp_path: Path, tiny_model, tiny_batches) -> None:
    """examples/hold_blocks.py: s'_m = S in held blocks, s_m + δ elsewhere (one δ), weighted mean S."""
    spec = importlib.util.spec_from_file_location("hold_blocks", REPO / "examples" / "hold_blocks.py")
    hold = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hold)
    from owl_plugin.allocate import allocate
    from owl_plugin.config import OWLConfig
    from owl_plugin.profile import SparsityProfile

    owl = allocate(tiny_model, 0.6, OWLConfig(m=3.0, lam=0.2), calibration=tiny_batches, progress=False)
    source = owl.save(tmp_path / "owl")
    assert hold.block_numbers("2-3,0") == [0, 2, 3]
    with pytest.raises(argparse.ArgumentTypeError, match="'3-1' is not an increasing range"):
        hold.block_numbers("3-1")
    assert hold.main([str(source), "--hold", "1,2", "--output", str(tmp_path / "held.json")]) == 0
    held = SparsityProfile.load(tmp_path / "held.json")
    blocks, before, after = list(owl.block_sparsities()), owl.block_sparsities(), held.block_sparsities()
    assert abs(held.mean_sparsity() - 0.6) < 1e-9 and held.params["held_at_target"] == [blocks[1], blocks[2]]
    assert after[blocks[1]] == after[blocks[2]] == 0.6
    shifts = [after[b] - before[b] for b in (blocks[0], blocks[3])]
    assert abs(shifts[0] - shifts[1]) < 1e-12 and abs(shifts[0]) > 1e-4  # one δ, and the held blocks moved it
    with pytest.raises(ValueError, match="every block is held"):
        hold.hold_at_target(owl, blocks)
