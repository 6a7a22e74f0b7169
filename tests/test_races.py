"""Nothing lost under races and kills (issue 20), with the real command line in subprocesses.

Races: two ``owl prune`` / ``owl export`` / ``owl tune`` runs started together onto the same output:
exactly one publishes (exit 0, a complete folder), the other exits 2 with one error line naming the
folder; neither replaces the other's folder, and no staging folder is left behind.

Kills: ``owl prune`` and ``owl tune`` SIGKILLed at every ``kill_point`` stage (``$OWL_KILL_AT``) and at a
timed moment while staging. ``owl prune``: after the model load, calibration, pruning, staging creation,
weights saved, all files written, fsync, rename. ``owl tune`` (all four methods, so the α path runs): after
the model load, the calibration windows, the statistics cached, the dense reference cached, the α cached,
the first logged candidate, the best chosen, staging creation, all files written, fsync, rename, and while
its plots are written. The output is absent, the previous complete one, or (killed after the rename) the
new complete one, never partial; a rerun succeeds, removes the killed runs' staging folders and (tune)
resumes from a cache holding nothing untrusted.

A full disk (a 256 kB or smaller private tmpfs): ``owl prune``, ``owl export`` and ``owl tune`` with the
output on it, and ``owl tune`` with its statistics cache on it, end in exit 2 and one line
``no space left on the device writing <output or cache file>;``, with no traceback and nothing partial left.
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
TUNE = ("--sparsity", "0.5", "--budget", "2", "--calibration", "pydoc", *SMALL,
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


def _tune_args(tiny: Path, output: Path, cache: Path, method: str = "owl") -> tuple[str, ...]:
    return ("tune", str(tiny), "--method", method, *TUNE, "--cache", str(cache), "-o", str(output))


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
    # usually both pass the up-front check (the work takes seconds) and the second publish is refused; a start late
    # enough meets the published folder up front (the export race below forces the overlap)
    assert "already exists (another run may have published it first)" in line or "exists and is not empty" in line
    assert SparsityProfile.load(pruned).mean_sparsity() == pytest.approx(0.5, abs=1e-6)
    AutoModelForCausalLM.from_pretrained(pruned)

    exported = tmp_path / "exported"
    line = _race("export", ("export", str(pruned), "--format", "compact", "--output", str(exported)), exported,
                 **{PAUSE_ENV: "0.03"})  # 0.03 s per tensor: both are staging when the first publishes
    assert "already exists (another run may have published it first)" in line  # so the publish-time refusal ran
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


def _staged_files(output: Path, pid: int) -> int:
    """Files in the staging folder of process ``pid``; -1 while it has none."""
    for name in _leftovers(output):
        if name.startswith(f".{output.name}.tmp-{pid}-"):
            try:
                return sum(1 for p in (output.parent / name).rglob("*") if p.is_file())
            except FileNotFoundError:  # published or removed meanwhile
                return -1
    return -1


def _kill_while_staging(argv: tuple[str, ...], output: Path, files: int = 0) -> None:
    """SIGKILL a run once its staging folder holds at least ``files`` files (0: as soon as it exists)."""
    process = _start(*argv)
    deadline = time.monotonic() + 240
    while _staged_files(output, process.pid) < files:
        assert process.poll() is None, f"ended before staging: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "never started staging"
        time.sleep(0.01)
    process.kill()
    process.communicate()
    assert process.returncode == -9, f"finished before the kill: exit {process.returncode}"


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


# each owl tune stage in the order a run reaches it; every kill leaves the cache one stage further
TUNE_STAGES = ("model-loaded", "calibration-ready", "statistics-cached", "reference-cached", "alphas-cached",
               "candidate-logged", "best-chosen", "staging-created", "files-written", "fsynced")


@pytest.mark.slow
def test_tune_killed_at_any_point_leaves_nothing_partial_and_the_rerun_resumes(tiny, tmp_path) -> None:
    output, cache = tmp_path / "tuned", tmp_path / "cache"
    argv = _tune_args(tiny, output, cache, method="all")  # all four methods: the α path has its own stage
    for stage in TUNE_STAGES:
        _killed(argv, stage)
        assert not output.exists(), f"partial output after a kill at {stage}"
    log = next(cache.glob("tune/*/candidates-0.5.jsonl"))
    # uniform + 2 per method: the first logged candidate survived its kill, the other 8 were added once each
    assert len(log.read_text().splitlines()) == 9
    assert len(_leftovers(output)) >= 1  # the killed runs' staging folders (each next run removes the stale ones)

    _killed(argv, "renamed")  # published, then killed before the parent's fsync: complete
    assert (output / MARKER).is_file()
    assert SparsityProfile.load(output).mean_sparsity() == pytest.approx(0.5, abs=1e-9)
    previous = _tree(output)
    assert {"sparsity_profile.png", "candidates.md", "candidates.json", "scores.png"} <= set(previous)

    again = (*argv, "--overwrite")
    for stage in ("best-chosen", "files-written", "fsynced"):
        _killed(again, stage)
        assert _tree(output) == previous, f"previous output damaged by a kill at {stage}"
    _kill_while_staging(again, output, files=1)  # the profile is written, the plots are being drawn
    assert _tree(output) == previous, "previous output damaged by a kill while staging"

    code, out, err = _finish(_start(*again))
    assert code == 0, err[-2000:]
    assert "WARNING owl_plugin" not in err, err[-2000:]  # the kills left nothing untrusted in the cache
    assert not list(cache.glob("tune/*/.*")), "a temporary cache file was left behind"
    assert "statistics: loaded from the cache" in out
    table = json.loads((output / "candidates.json").read_text())
    assert len(table["candidates"]) == 9 and table["best"] == json.loads(previous["candidates.json"])["best"]
    assert _leftovers(output) == [], "the rerun left the killed runs' staging folders"


# -- a full disk -----------------------------------------------------------------------------------
UNSHARE = ("unshare", "--user", "--map-root-user", "--mount")  # a private tmpfs without privileges
IN_TMPFS = 'mount -t tmpfs -o "size=$SIZE" tmpfs "$1" || exit 99; shift; "$@"; code=$?; echo "--tree--"; ' \
           'find "$MNT" -mindepth 1 -printf "%P\\n"; if [ -n "$KEEP" ]; then cp -a "$MNT/." "$KEEP"; fi; exit $code'


def _on_small_disk(mount: Path, *args: str, size: str = "256k", keep: Path | None = None,
                   ) -> tuple[int, list[str], str]:
    """Run ``owl ARGS`` with a ``size`` tmpfs mounted at ``mount`` (in a user namespace); exit code, the
    paths left on it (relative to ``mount``), stderr. ``keep``: copy what is left there to this folder."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore", "MNT": str(mount),
           "SIZE": size, "KEEP": str(keep or "")}
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
    cache = tmp_path / "cache"  # on the big disk
    for command, args, size in (
            ("prune", _prune_args(tiny, disk / "out"), "256k"),
            ("export", ("export", str(tiny), "--format", "dense", "--output", str(disk / "out")), "256k"),
            ("tune", _tune_args(tiny, disk / "out", cache), "64k")):  # its ~130 kB of plots fit in 256 kB
        code, left, err = _on_small_disk(disk, *args, size=size)
        errors = [line for line in err.splitlines() if line.startswith(f"owl {command}: error:")]
        assert code == 2 and len(errors) == 1, err[-2000:]
        assert f"no space left on the device writing {disk / 'out'};" in errors[0]
        assert "Traceback" not in err and left == [], left  # no output, no staging folder

    # owl tune's statistics cache (~50 kB) on the small disk: 32 kB fill up at the dense reference (safetensors),
    # 44 kB at the first candidate-log record. The line names the cache file being written; what is left there is
    # only complete entries, which a rerun trusts and resumes from
    for size, full in (("32k", "dense_top128.safetensors"), ("44k", "candidates-0.5.jsonl")):
        kept, output = tmp_path / f"kept-{size}", tmp_path / f"tuned-{size}"
        kept.mkdir()
        code, left, err = _on_small_disk(disk, *_tune_args(tiny, output, disk / "cache"), size=size, keep=kept)
        errors = [line for line in err.splitlines() if line.startswith("owl tune: error:")]
        assert code == 2 and len(errors) == 1, err[-2000:]
        assert f"no space left on the device writing {disk / 'cache' / 'tune'}/" in errors[0], errors[0]
        assert f"/{full};" in errors[0], errors[0]
        assert "Traceback" not in err and not output.exists()
        assert not [path for path in left if Path(path).name.startswith(".")], left  # no temporary file
        code, out, err = _finish(_start(*_tune_args(tiny, output, kept / "cache")))
        assert code == 0, err[-2000:]
        assert "WARNING owl_plugin" not in err, err[-2000:]  # nothing half-written was left to distrust
        assert "statistics: loaded from the cache" in out
