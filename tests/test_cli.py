"""The ``owl`` command line: help, argument errors, and real runs (tiny checkpoint and default model)."""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess

import pytest

from owl_plugin import SparsityProfile
from owl_plugin.cli import build_parser, main

from conftest import PNG_SIGNATURE, owl_script, run_cli


# --------------------------------------------------------------------------- help and argument errors
def test_module_help_reads_well():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("usage: owl")
    for word in ("profile", "perplexity", "model", "OWL", "AlphaPruning", "default"):
        assert word in out


def test_profile_help_reads_well():
    script = owl_script()
    command = [script, "profile", "--help"] if script else None
    result = subprocess.run(command, capture_output=True, text=True, timeout=120) if command else run_cli(
        "profile", "--help")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for word in ("--method", "{owl,alpha,dlp,atp,uniform}", "--sparsity", "[0, 1)", "--num-samples", "--seq-len",
                 "--owl-m", "--owl-lambda", "--epsilon", "--xmin", "--granularity", "--bounds", "--calibration",
                 "--dlp-band", "--atp-beta", "arXiv 2310.05175", "arXiv 2410.10912", "arXiv 2505.23807",
                 "arXiv 2502.14770"):
        assert word in out, word


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["profile", "m", "--sparsity", "abc"], "'abc' is not a number"),
        (["profile", "m", "--sparsity", "0.5", "--method", "magic"], "invalid choice: 'magic'"),
        (["profile", "m"], "--sparsity"),
        (["profile", "m", "--sparsity", "0.5", "--xmin", "max"], "invalid choice: 'max'"),
    ],
)
def test_argument_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def _choices(parser: argparse.ArgumentParser) -> dict[tuple[str, str], tuple]:
    """(sub-command, option dest) -> choices, for every option with choices in every sub-command."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update({(name, dest): c for (_, dest), c in _choices(sub).items()})
        elif action.choices is not None:
            found[("", action.dest)] = tuple(action.choices)
    return found


def test_cli_choices_match_the_library():
    """The CLI spells its choices out (so ``owl --help`` does not import torch): they must stay the library's."""
    from owl_plugin.config import CONFIGS, GRANULARITIES
    from owl_plugin.spectra import XMIN_RULES
    from owl_plugin.tuning import space
    from owl_plugin.tuning.search import PROXIES

    library = {"method": set(CONFIGS), "granularity": set(GRANULARITIES), "xmin": set(XMIN_RULES),
               "proxy": set(PROXIES)}
    library_for = {("tune", "method"): set(space.METHODS) | {"all"},  # tune searches the non-uniform ones
                   ("tune", "granularity"): set(GRANULARITIES) - {"expert"}}  # and shifts blocks or linears
    checked = set()
    for (command, dest), options in _choices(build_parser()).items():
        expected = library_for.get((command, dest), library.get(dest))
        if expected is not None:
            assert set(options) == expected, (command, dest, options)
            checked.add((command, dest))
    assert {dest for _, dest in checked} == set(library), checked  # every library choice is offered somewhere
    assert {("tune", "proxy"), ("tune", "method"), ("profile", "method"), ("profile", "xmin")} <= checked


# --------------------------------------------------------------------------- tiny checkpoint (real tokenizer)
@pytest.mark.real_model
def test_cli_rejects_sparsity_above_one(tiny_checkpoint, tmp_path):
    result = run_cli("profile", str(tiny_checkpoint), "--method", "uniform", "--sparsity", "1.5",
                     "-o", str(tmp_path / "out"))
    assert result.returncode != 0
    assert "1.5" in result.stderr and "error" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.real_model
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "alpha", "--bounds", "0.5", "0.4"], "bounds=(0.5, 0.4)"),
        (["--method", "owl", "--owl-lambda", "0.7"], "lam=0.7"),
        (["--method", "alpha", "--epsilon", "1.0"], "epsilon=1.0"),
        (["--method", "owl", "--calibration", "/nonexistent/calib.txt"], "/nonexistent/calib.txt"),
    ],
)
def test_cli_reports_bad_options(tiny_checkpoint, tmp_path, capsys, extra, message):
    code = main(["profile", str(tiny_checkpoint), "--sparsity", "0.5", "-o", str(tmp_path), *extra])
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.real_model
def test_cli_owl_on_tiny_checkpoint_with_a_text_file(tiny_checkpoint, eval_text_path, tmp_path, capsys):
    out = tmp_path / "owl"
    code = main(["profile", str(tiny_checkpoint), "--method", "owl", "--sparsity", "0.6", "--owl-lambda", "0.05",
                 "--owl-m", "4", "--granularity", "linear", "--calibration", str(eval_text_path),
                 "--num-samples", "3", "--seq-len", "48", "--seed", "2", "-o", str(out)])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "weighted mean 0.600000" in stdout and "wrote" in stdout
    profile = SparsityProfile.load(out)
    assert len(profile.modules) == 4 * 7 and len(profile.block_sparsities()) == 4
    assert abs(profile.mean_sparsity() - 0.6) <= 1e-6
    assert profile.params["lam"] == 0.05 and profile.params["m"] == 4.0 and profile.params["granularity"] == "linear"
    calibration = dict(profile.params["calibration"])
    assert calibration.pop("windows")["bos"] is False  # the tiny tokenizer adds no BOS
    assert calibration == {"source": str(eval_text_path), "num_samples": 3, "seq_len": 48, "seed": 2}
    assert list(profile.scores) == list(profile.modules)
    assert (out / "sparsity_profile.png").read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.real_model
def test_cli_alpha_and_uniform_on_tiny_checkpoint(tiny_checkpoint, tmp_path):
    assert main(["profile", str(tiny_checkpoint), "--method", "alpha", "--xmin", "median", "--epsilon", "0.3",
                 "--sparsity", "0.5", "--bounds", "0.1", "0.9", "-o", str(tmp_path / "a")]) == 0
    alpha = SparsityProfile.load(tmp_path / "a" / "sparsity_profile.json")
    assert alpha.method == "alpha" and alpha.params["xmin"] == "median" and alpha.bounds == (0.1, 0.9)
    assert abs(alpha.mean_sparsity() - 0.5) <= 1e-6
    assert "calibration" not in alpha.params  # no data used
    assert main(["profile", str(tiny_checkpoint), "--method", "uniform", "--granularity", "linear",
                 "--sparsity", "0.3", "-o", str(tmp_path / "u")]) == 0
    uniform = SparsityProfile.load(tmp_path / "u")
    assert set(uniform.sparsities.values()) == {0.3}


# --------------------------------------------------------------------------- the real default model
def _profile_run(tmp_path_factory, method: str, *extra: str):
    out = tmp_path_factory.mktemp(f"cli-{method}")
    result = run_cli("profile", "default", "--method", method, "--sparsity", "0.7", *extra, "-o", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


@pytest.fixture(scope="session")
def owl_default_run(tmp_path_factory, default_model_path):
    return _profile_run(tmp_path_factory, "owl", "--num-samples", "8", "--seq-len", "256")


@pytest.fixture(scope="session")
def alpha_default_run(tmp_path_factory, default_model_path):
    return _profile_run(tmp_path_factory, "alpha")


def _check_default_profile(out, result, method):
    json_path, png_path = out / "sparsity_profile.json", out / "sparsity_profile.png"
    assert json_path.is_file() and png_path.is_file()
    assert png_path.read_bytes()[:8] == PNG_SIGNATURE and png_path.stat().st_size > 10_000
    data = json.loads(json_path.read_text())
    profile = SparsityProfile.from_dict(data)
    blocks = profile.block_sparsities()
    assert list(blocks) == [f"model.layers.{i}" for i in range(30)]
    assert len(profile.modules) == 30 * 7
    assert not any("lm_head" in n or "embed" in n for n in profile.modules)
    assert profile.method == method and profile.target == 0.7
    assert abs(profile.mean_sparsity() - 0.7) <= 1e-6
    assert abs(data["mean_sparsity"] - 0.7) <= 1e-6
    assert all(0.0 <= s <= 0.99 for s in profile.sparsities.values())
    assert max(blocks.values()) - min(blocks.values()) > 0.01  # not uniform
    assert "weighted mean 0.700000" in result.stdout and "30 blocks" in result.stdout
    return profile


@pytest.mark.real_model
@pytest.mark.slow
def test_cli_owl_on_default_model(owl_default_run):
    out, result = owl_default_run
    profile = _check_default_profile(out, result, "owl")
    blocks = profile.block_sparsities()
    # 30 equal blocks, no projection at S=0.7: the ratios span exactly 2*lambda = 0.16
    assert profile.projected is False
    assert max(blocks.values()) - min(blocks.values()) == pytest.approx(0.16, abs=1e-9)
    # more outliers -> less sparsity
    order = sorted(blocks, key=lambda b: profile.scores[b])
    assert all(blocks[a] >= blocks[b] - 1e-12 for a, b in itertools.pairwise(order))
    assert all(0.0 <= profile.scores[b] <= 100.0 for b in blocks)
    calibration = dict(profile.params["calibration"])
    assert calibration.pop("windows")["bos"] is False  # SmolLM2 was trained without a BOS per document
    assert calibration == {"source": "pydoc", "num_samples": 8, "seq_len": 256, "seed": 0}


@pytest.mark.real_model
@pytest.mark.slow
def test_cli_alpha_on_default_model(alpha_default_run):
    out, result = alpha_default_run
    profile = _check_default_profile(out, result, "alpha")
    blocks = profile.block_sparsities()
    assert list(profile.scores) == list(blocks)
    assert all(2.0 <= a <= 8.0 for a in profile.scores.values()), profile.scores
    order = sorted(blocks, key=lambda b: profile.scores[b])  # higher α -> more sparsity
    assert all(blocks[a] <= blocks[b] + 1e-12 for a, b in itertools.pairwise(order))
