"""Drive a stateful OpenVINO causal-LM IR directly: greedy generation, perplexity, speed.

The IR that optimum-intel exports keeps the KV cache inside the model (``ReadValue`` /
``Assign`` states). One call feeds ``input_ids`` (B, T), ``attention_mask`` (B, past + T),
``position_ids`` past..past+T-1 and ``beam_idx`` 0..B-1, and returns logits (B, T, V);
``reset()`` empties the cache. Driving the infer request directly (no ``generate`` wrapper)
keeps the timing to the engine itself, the same for every variant.

Speed rounds follow PROTOCOL.md: prefill = the first ``prefill_tokens`` tokens of the text
(ms); decode = a 16-token prompt, then ``decode_tokens`` greedy tokens at batch 1,
``(decode_tokens − 1) / time after the first token``; throughput = ``batch`` prompts of 16
tokens, ``batch · decode_tokens / wall time`` (prefill included).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from owl_plugin.integrations.openvino.sparse import exec_type_counts

SHORT_PROMPT = 16


def rss_mib() -> float:
    """This process's resident memory (MiB, from /proc; 0.0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_has_amx() -> bool:
    """True when the CPU advertises AMX (``amx_int8``), which OpenVINO's sparse int8 kernels need."""
    try:
        return "amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def cpu_name() -> str:
    import openvino as ov

    return str(ov.Core().get_property("CPU", "FULL_DEVICE_NAME"))


class StatefulLM:
    """A compiled stateful causal LM and one infer request (see the module docstring).

    ``model`` is the IR's ``.xml`` path or an ``openvino.Model`` in memory.
    """

    def __init__(self, model: str | os.PathLike | Any, config: Mapping[str, str], *, core=None):
        import openvino as ov

        core = core or ov.Core()
        before = rss_mib()
        started = time.perf_counter()
        source = str(model) if isinstance(model, (str, os.PathLike)) else model
        self.compiled = core.compile_model(source, "CPU", dict(config))
        self.request = self.compiled.create_infer_request()
        self.inputs = {port.get_any_name() for port in self.compiled.inputs}
        self.compile_seconds = time.perf_counter() - started
        self.compile_rss_mib = rss_mib() - before
        self.past = 0

    def property(self, key: str) -> Any:
        return self.compiled.get_property(key)

    def reset(self) -> None:
        self.request.reset_state()
        self.past = 0

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """Feed (B, T) token ids after the cached ones; logits (B, T, V) as float32."""
        ids = np.asarray(ids, dtype=np.int64)
        batch, length = ids.shape
        feed = {"input_ids": ids,
                "attention_mask": np.ones((batch, self.past + length), dtype=np.int64),
                "position_ids": np.broadcast_to(np.arange(self.past, self.past + length, dtype=np.int64),
                                                (batch, length)).copy(),
                "beam_idx": np.arange(batch, dtype=np.int32)}
        self.request.infer({name: value for name, value in feed.items() if name in self.inputs})
        self.past += length
        return self.request.get_output_tensor(0).data

    def greedy(self, prompt: Sequence[int], new_tokens: int) -> list[int]:
        """Exactly ``new_tokens`` argmax tokens after ``prompt`` (EOS not special)."""
        self.reset()
        token = int(self(np.asarray([prompt]))[0, -1].argmax())
        out = [token]
        for _ in range(new_tokens - 1):
            token = int(self(np.asarray([[token]]))[0, -1].argmax())
            out.append(token)
        return out

    def perplexity(self, token_ids: np.ndarray, *, seq_len: int, windows: int,
                   bos_token_id: int | None = None) -> float:
        """exp(Σ NLL / (W·(L−1))) over the first ``windows`` windows (owl_plugin.evaluation's protocol), on the
        windows ``owl_plugin.text.evaluation_windows`` builds (the same in every engine)."""
        from owl_plugin.text import evaluation_windows

        built = evaluation_windows(np.asarray(token_ids).tolist(), seq_len=seq_len, max_windows=windows,
                                   bos_token_id=bos_token_id)
        total = 0.0
        for ids in built:
            window = np.asarray(ids, dtype=np.int64)
            self.reset()
            logits = self(window[None])[0, :-1].astype(np.float64)
            peak = logits.max(axis=-1, keepdims=True)
            log_z = np.log(np.exp(logits - peak).sum(axis=-1)) + peak[:, 0]
            total += float((log_z - logits[np.arange(seq_len - 1), window[1:]]).sum())
        return math.exp(total / (len(built) * (seq_len - 1)))

    def speed_round(self, token_ids: np.ndarray, *, prefill_tokens: int, decode_tokens: int,
                    batch: int) -> dict[str, float]:
        """One timed round: prefill_ms, decode_tok_s (batch 1), throughput_tok_s (batch ``batch``)."""
        self.reset()
        started = time.perf_counter()
        self(token_ids[None, :prefill_tokens])
        prefill_ms = (time.perf_counter() - started) * 1000

        self.reset()
        token = self(token_ids[None, :SHORT_PROMPT])[:, -1].argmax(-1)[:, None]
        started = time.perf_counter()
        for _ in range(decode_tokens - 1):
            token = self(token)[:, -1].argmax(-1)[:, None]
        decode = (decode_tokens - 1) / (time.perf_counter() - started)

        prompts = np.stack([token_ids[i * SHORT_PROMPT:(i + 1) * SHORT_PROMPT] for i in range(batch)])
        self.reset()
        started = time.perf_counter()
        token = self(prompts)[:, -1].argmax(-1)[:, None]
        for _ in range(decode_tokens - 1):
            token = self(token)[:, -1].argmax(-1)[:, None]
        throughput = batch * decode_tokens / (time.perf_counter() - started)
        return {"prefill_ms": prefill_ms, "decode_tok_s": decode, "throughput_tok_s": throughput}

    def exec_types(self) -> dict[str, int]:
        """FullyConnected / MatMul kernels executed by the last inference (PERF_COUNT must be on)."""
        return exec_type_counts([self.request])


@dataclass(frozen=True)
class Variant:
    """A way to compile an IR: a name (``int8``, ``int8+sparse``) and its CPU properties."""

    name: str
    config: Mapping[str, str]
