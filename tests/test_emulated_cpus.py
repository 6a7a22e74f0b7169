"""The kernel tests on CPUs this machine is not: an AVX2-only AMD EPYC and a CPU without AVX, under qemu-user.

CI may land on a machine with AVX-512 or on one with AVX2 only, but every machine of this project so far had
AVX-512, so the AVX2 and portable paths ran only *forced* (``OWL_SPARSE_ISA``) on AVX-512 CPUs. Forcing checks a
path's numbers, not what a CPU without AVX-512 does: the CPU detection (``cpu_features``), the automatic choice,
the skips with their reasons, the fallback measurement that runs by default there, and whether any code those paths
reach was compiled with an AVX-512 instruction (it would die with SIGILL). ``qemu-x86_64 -cpu MODEL`` runs this
venv's own Python on an emulated CPU (QEMU's TCG implements AVX2, not AVX-512):

- ``EPYC-Milan``: AMD Zen 3, AVX2 + FMA, no AVX-512 → the ``avx2`` path;
- ``Nehalem``: SSE4.2, no AVX → the ``portable`` path.

Each run gets its own inductor cache: the host's holds kernels compiled for the host's CPU (reusing them under
the AVX2 model gave wrong numbers in ``test_torch_compile_traces_through_the_op``; a fresh cache passes).
Speed under emulation means nothing: these runs check behaviour. ``make test`` installs qemu-user (Debian).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
QEMU = shutil.which("qemu-x86_64")
# CPU model → the paths cpu_supported_isas() must report there, best first
MODELS = {"EPYC-Milan": ["avx2", "portable"], "Nehalem": ["portable"]}
KERNEL_TESTS = ["tests/test_kernels.py", "tests/test_kernel_fallback.py"]
# the AVX2 CPU (the kind CI may land on) also loads compact checkpoints through transformers (~2 min more). On the
# CPU without AVX, inductor's code (compiled by the host's g++, which qemu-user runs natively, for the host's CPU)
# dies with SIGILL: an artefact of the emulation, so its torch.compile test is left out there.
PYTEST_ARGS = {"EPYC-Milan": [*KERNEL_TESTS, "tests/test_transformers_loader.py"],
               "Nehalem": [*KERNEL_TESTS, "-k", "not torch_compile"]}

pytestmark = [
    pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 (Debian's qemu-user) is missing; `make test` installs it"),
    pytest.mark.skipif(os.uname().machine != "x86_64", reason="emulates x86-64 CPU models"),
]


def _emulated(model: str, args: list[str], tmp_path: Path, timeout: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "PYTHONPATH": str(ROOT / "tests")}
    env.pop("OWL_SPARSE_ISA", None)  # the emulated CPU chooses
    done = subprocess.run([QEMU, "-cpu", model, sys.executable, *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)
    done.stderr = "\n".join(line for line in done.stderr.splitlines()
                            if not line.startswith("qemu-x86_64: warning: TCG doesn't support"))
    return done


@pytest.mark.parametrize("model", sorted(MODELS))
def test_the_emulated_cpu_chooses_its_own_path(model: str, tmp_path: Path) -> None:
    """Detection and choice: the paths the model has, the best one selected, an AVX-512 path refused by name."""
    probe = ("import os, torch; from owl_plugin.kernels.dispatch import cpu_supported_isas, selected_isa, "
             "SparseKernelUnavailable\n"
             "print('paths', cpu_supported_isas()); print('selected', selected_isa())\n"
             "os.environ['OWL_SPARSE_ISA'] = 'avx512'\n"
             "try: selected_isa()\n"
             "except SparseKernelUnavailable as error: print('refused', error)\n")
    done = _emulated(model, ["-c", probe], tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"paths {MODELS[model]}" in done.stdout
    assert f"selected {MODELS[model][0]}" in done.stdout
    assert f"refused OWL_SPARSE_ISA='avx512' but this CPU supports only {MODELS[model]}" in done.stdout


@pytest.mark.parametrize("model", sorted(MODELS))
def test_kernel_tests_pass_on_the_emulated_cpu(model: str, tmp_path: Path) -> None:
    """tests/test_kernels.py and test_kernel_fallback.py (and on the AVX2 CPU test_transformers_loader.py) on the
    emulated CPU: the paths it has pass (numbers against dense, torch.compile, bad input, fallback decisions, compact
    checkpoints loaded), the AVX-512 ones skip naming the path."""
    done = _emulated(model, ["-m", "pytest", *PYTEST_ARGS[model], "-q", "-rs", "-p", "no:cacheprovider"], tmp_path,
                     timeout=1800)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, f"{summary}\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed >= 40, summary  # the paths the CPU has did run
    lacks = set(re.findall(r"this CPU lacks the (\w+) path", done.stdout))
    assert lacks >= {"avx512", "avx512_vbmi2", "avx512_bf16"}, done.stdout[-3000:]
    assert ("avx2" in lacks) == ("avx2" not in MODELS[model]), done.stdout[-3000:]
