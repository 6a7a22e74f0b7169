"""Shared fixtures: a tiny seeded Llama, calibration batches, the real default model and WikiText.

Tests that touch the default model (SmolLM2-135M) are marked ``real_model``; set
``OWL_PLUGIN_CACHE`` to reuse an already converted copy (a fresh conversion takes ~60 s).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

TINY_VOCAB = 512
TINY_LAYERS = 4
# per block: q, k, v, o (64x64 each), gate, up (128x64), down (64x128)
TINY_LINEAR_SUFFIXES = (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
)
TINY_BLOCK_PARAMS = 4 * 64 * 64 + 3 * 64 * 128

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# The test machine is small and shared: with 2 intra-op threads competing against other
# processes, OpenMP synchronisation makes LAPACK/BLAS calls 10-50x slower (AlphaPruning's SVDs
# went from ~80 s to ~350 s). One thread per process is the fast, polite default here;
# set OWL_TEST_THREADS to change it (it also applies to the CLI subprocesses).
TEST_THREADS = int(os.environ.get("OWL_TEST_THREADS", "1"))
torch.set_num_threads(TEST_THREADS)

# Tests assert which layers the loaders pack. On a CPU without AVX-512 the loaders' default measures each
# shape at load time and may keep some dense (owl_plugin/kernels/fallback.py), which would make those counts
# depend on timing; tests/test_kernel_fallback.py sets the mode it tests. Inherited by subprocesses.
os.environ.setdefault("OWL_SPARSE_FALLBACK", "never")


def tiny_llama(vocab_size: int = TINY_VOCAB, seed: int = 0) -> LlamaForCausalLM:
    """hidden 64, intermediate 128, 4 layers, 4 heads; weights seeded, eval mode, float32."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=TINY_LAYERS, num_attention_heads=4,
        num_key_value_heads=4, vocab_size=vocab_size, max_position_embeddings=512,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def tiny_model() -> LlamaForCausalLM:
    """A fresh seeded tiny Llama per test (tests may modify weights)."""
    return tiny_llama()


@pytest.fixture
def tiny_batches() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(0, TINY_VOCAB, (1, 32), generator=generator) for _ in range(3)]


@pytest.fixture
def expected_tiny_linears() -> list[str]:
    return [f"model.layers.{b}.{s}" for b in range(TINY_LAYERS) for s in TINY_LINEAR_SUFFIXES]


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    """The converted default model folder (converted once per cache)."""
    from owl_plugin.models import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def eval_text_path() -> Path:
    """The WikiText-2 validation file (``$OWL_EVAL_TEXT`` or ``../shared/data``)."""
    from owl_plugin.paths import default_eval_text

    path = default_eval_text()
    assert path.is_file(), path
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, default_model_path) -> Path:
    """A tiny Llama checkpoint folder with the default model's tokenizer (vocab 49152),
    so the CLI can run every method end to end in seconds."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-checkpoint")
    tokenizer = AutoTokenizer.from_pretrained(default_model_path)
    tiny_llama(vocab_size=len(tokenizer), seed=3).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real command line (``python -m owl_plugin``) in a subprocess."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", TQDM_DISABLE="1", OMP_NUM_THREADS=str(TEST_THREADS))
    return subprocess.run(
        [sys.executable, "-m", "owl_plugin", *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )


def owl_script() -> str | None:
    """The installed ``owl`` console script next to the interpreter, if any."""
    candidate = Path(sys.executable).parent / "owl"
    return str(candidate) if candidate.is_file() else shutil.which("owl")


@pytest.fixture(scope="session")
def tokenizer(default_model_path):
    """The default model's tokenizer (for tiny random models that share its vocabulary)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_path)


@pytest.fixture()
def tiny_dir(tmp_path, tokenizer) -> Path:
    """A 4-block random Llama sharing the default model's tokenizer, saved like a real checkpoint."""
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=256)
    folder = tmp_path / "tiny"
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
