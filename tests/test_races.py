"""Nothing lost under races and kills (issue 20), with the real command line in subprocesses.

Races: two ``owl prune`` / ``owl export`` / ``owl tune`` runs started together onto the same output:
exactly one publishes (exit 0, a complete folder), the other exits 2 with one error line naming the
folder; neither replaces the other's folder, and no staging folder is left behind.

Kills: ``owl prune`` and ``owl tune`` SIGKILLed at every ``kill_point`` stage (``$OWL_KILL_AT``: after
the model load, calibration, pruning, statistics caching, the first logged candidate, staging creation,
weights saved, all files written, fsync, rename) and at a timed moment while staging: the output is
absent, the previous complete one, or (killed after the rename) the new complete one, never partial;
a rerun succeeds and removes the killed runs' staging folders.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from owl_plugin.export import PAUSE_ENV
from owl_plugin.profile import SparsityProfile
from owl_plugin.staging import KILL_ENV, MARKER

PYTHON = sys.executable
RECIPE = """pruning_stage:
  pruning_modifiers:
    WandaPruningModifier:
      sparsity: {sparsity}
      targets: ["re:.*layers.*(proj)$"]
"""
SMALL = ("--num-samples", "2", "--seq-len", "16")
TUNE = ("--method", "owl", "--sparsity", "0.5", "--budget", "2", "--calibration", "pydoc", *SMALL,
        "--heldout-windows", "1", "--heldout-seq-len", "16")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer) -> Path:
    """A 4-block random Llama with the default model's tokenizer, and two Wanda recipes beside it."""
    folder = tmp_path_factory.mktemp("races") / "tiny"
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=256)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for sparsity in (0.5, 0.75):  # exact on widths 64 and 160
        (folder.parent / f"wanda-{sparsity}.yaml").write_text(RECIPE.format(sparsity=sparsity))
    return folder


def _start(*args: str, **env: str) -> subprocess.Popen:
    variables = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore", **env}
    if KILL_ENV not in env:
        variables.pop(KILL_ENV, None)
    return subprocess.Popen([PYTHON, "-m", "owl_plugin", *args], env=variables, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def _prune_args(tiny: Path, output: Path, sparsity: float = 0.5) -> tuple[str, ...]:
    return ("prune", "--recipe", str(tiny.parent / f"wanda-{sparsity}.yaml"), "--model", str(tiny), *SMALL,
            "-o", str(output))


def _tune_args(tiny: Path, output: Path, cache: Path) -> tuple[str, ...]:
    return ("tune", str(tiny), *TUNE, "--cache", str(cache), "-o", str(output))


def _leftovers(output: Path) -> list[str]:
    return sorted(p.name for p in output.parent.iterdir() if p.name.startswith(f".{output.name}."))


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _race(command: str, argv: tuple[str, ...], output: Path, **env: str) -> str:
    """Start two identical runs together; exactly one wins. Returns the loser's error line."""
    first, second = _start(*argv, **env), _start(*argv, **env)
    results = [_finish(first), _finish(second)]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], [(code, err[-2000:]) for code, _, err in results]
    _, _, err = next(r for r in results if r[0] == 2)
    errors = [line for line in err.splitlines() if line.startswith(f"owl {command}: error:")]
    assert len(errors) == 1 and str(output) in errors[0], err[-2000:]
    assert "Traceback" not in err
    assert _leftovers(output) == [], "a staging folder was left behind"
    assert (output / MARKER).is_file()
    return errors[0]


# -- races ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_runs_onto_the_same_output_one_wins_the_other_exits_2(tiny, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    pruned = tmp_path / "pruned"
    line = _race("prune", _prune_args(tiny, pruned), pruned)
    # both passed the up-front check (the work takes seconds); the second publish is refused, not applied
    assert "already exists (another run may have published it first)" in line or "exists and is not empty" in line
    assert SparsityProfile.load(pruned).mean_sparsity() == pytest.approx(0.5, abs=1e-6)
    AutoModelForCausalLM.from_pretrained(pruned)

    exported = tmp_path / "exported"
    _race("export", ("export", str(pruned), "--format", "compact", "--output", str(exported)), exported,
          **{PAUSE_ENV: "0.03"})  # 0.03 s per tensor: both are staging when the first publishes
    config = json.loads((exported / "config.json").read_text())
    assert "quantization_config" in config
    AutoModelForCausalLM.from_pretrained(exported)  # verified against its checksums

    tuned = tmp_path / "tuned"
    _race("tune", _tune_args(tiny, tuned, tmp_path / "cache"), tuned)  # one cache shared by both, too
    assert SparsityProfile.load(tuned).mean_sparsity() == pytest.approx(0.5, abs=1e-9)
    table = json.loads((tuned / "candidates.json").read_text())
    assert len(table["candidates"]) == 3 and table["best"] == table["candidates"][0]["id"]


# -- kills ---------------------------------------------------------------------------------------
def _killed(argv: tuple[str, ...], stage: str) -> None:
    code, _, err = _finish(_start(*argv, **{KILL_ENV: stage}))
    assert code == -9, f"not killed at {stage}: exit {code} {err[-2000:]}"


def _kill_while_staging(argv: tuple[str, ...], output: Path) -> None:
    process = _start(*argv)
    deadline = time.monotonic() + 240
    while not any(name.startswith(f".{output.name}.tmp-{process.pid}-") for name in _leftovers(output)):
        assert process.poll() is None, f"ended before staging: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "never started staging"
        time.sleep(0.01)
    process.kill()
    process.communicate()


def _complete_prune(output: Path, sparsity: float) -> None:
    assert (output / MARKER).is_file() and (output / "recipe.yaml").is_file()
    assert SparsityProfile.load(output).mean_sparsity() == pytest.approx(sparsity, abs=1e-6)
    assert list(output.glob("*.safetensors")) and (output / "tokenizer.json").is_file()


@pytest.mark.slow
def test_prune_killed_at_any_point_leaves_nothing_partial_and_the_rerun_cleans_up(tiny, tmp_path) -> None:
    output = tmp_path / "out"
    first = _prune_args(tiny, output, 0.5)
    for stage in ("model-loaded", "calibration-ready", "pruned", "staging-created", "weights-saved",
                  "files-written", "fsynced"):
        _killed(first, stage)
        assert not output.exists(), f"partial output after a kill at {stage}"
    assert len(_leftovers(output)) >= 1  # the killed runs' staging folders (each next run removes the stale ones)

    _killed(first, "renamed")  # published, then killed before the parent's fsync: complete
    _complete_prune(output, 0.5)
    previous = _tree(output)

    second = (*_prune_args(tiny, output, 0.75), "--overwrite")
    for stage in ("weights-saved", "fsynced"):
        _killed(second, stage)
        assert _tree(output) == previous, f"previous output damaged by a kill at {stage}"
    _kill_while_staging(second, output)
    assert _tree(output) == previous, "previous output damaged by a kill while staging"

    code, out, err = _finish(_start(*second))
    assert code == 0, err[-2000:]
    _complete_prune(output, 0.75)
    assert _leftovers(output) == [], "the rerun left the killed runs' staging folders"


@pytest.mark.slow
def test_tune_killed_at_any_point_leaves_nothing_partial_and_the_rerun_resumes(tiny, tmp_path) -> None:
    output, cache = tmp_path / "tuned", tmp_path / "cache"
    argv = _tune_args(tiny, output, cache)
    for stage in ("statistics-cached", "candidate-logged", "staging-created", "files-written", "fsynced"):
        _killed(argv, stage)
        assert not output.exists(), f"partial output after a kill at {stage}"
    log = next(cache.glob("tune/*/candidates-0.5.jsonl"))
    assert len(log.read_text().splitlines()) == 3  # the first logged candidate survived its kill; the rest resumed

    _killed(argv, "renamed")
    assert SparsityProfile.load(output).mean_sparsity() == pytest.approx(0.5, abs=1e-9)
    previous = _tree(output)
    _killed((*argv, "--overwrite"), "files-written")
    assert _tree(output) == previous

    code, out, err = _finish(_start(*argv, "--overwrite"))
    assert code == 0, err[-2000:]
    assert "WARNING owl_plugin" not in err, err[-2000:]  # the kills left nothing untrusted in the cache
    assert json.loads((output / "candidates.json").read_text())["best"] == \
        json.loads(previous["candidates.json"])["best"]
    assert _leftovers(output) == []


# -- a full disk -----------------------------------------------------------------------------------
UNSHARE = ("unshare", "--user", "--map-root-user", "--mount")  # a private tmpfs without privileges
IN_TMPFS = 'mount -t tmpfs -o size=256k tmpfs "$1" || exit 99; shift; "$@"; code=$?; echo "--tree--"; ls -A "$MNT"; ' \
           'exit $code'


def _on_small_disk(mount: Path, *args: str) -> tuple[int, list[str], str]:
    """Run ``owl ARGS`` with a 256 kB tmpfs mounted at ``mount`` (in a user namespace); exit code, the
    entries left on it, stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore", "MNT": str(mount)}
    env.pop(KILL_ENV, None)
    done = subprocess.run([*UNSHARE, "sh", "-c", IN_TMPFS, "sh", str(mount), PYTHON, "-m", "owl_plugin", *args],
                          capture_output=True, text=True, timeout=300, env=env)
    if done.returncode == 99 or "--tree--" not in done.stdout:
        pytest.skip(f"cannot mount a private tmpfs here: {done.stderr.strip()[-300:]}")
    return done.returncode, done.stdout.split("--tree--")[1].split(), done.stderr


def test_a_full_disk_ends_in_one_line_naming_the_output(tiny, tmp_path) -> None:
    if subprocess.run([*UNSHARE, "true"], capture_output=True).returncode != 0:
        pytest.skip("unprivileged user namespaces are not available")
    disk = tmp_path / "disk"
    disk.mkdir()
    for command, args in (("prune", _prune_args(tiny, disk / "out")),
                          ("export", ("export", str(tiny), "--format", "dense", "--output", str(disk / "out")))):
        code, left, err = _on_small_disk(disk, *args)
        errors = [line for line in err.splitlines() if line.startswith(f"owl {command}: error:")]
        assert code == 2 and len(errors) == 1, err[-2000:]
        assert f"no space left on the device writing {disk / 'out'};" in errors[0]
        assert "Traceback" not in err and left == [], left  # no output, no staging folder
