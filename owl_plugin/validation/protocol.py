"""The files an engine runner reads and writes: REQUEST.json in, RESULT.json out (see PROTOCOL.md).

The orchestrator never imports an engine; it writes an :class:`EngineRequest`, runs
``<venv>/bin/python -m owl_plugin.integrations.<engine>.validate REQUEST.json RESULT.json`` and
reads an :class:`EngineResult` back. Both round-trip through plain JSON, so a runner in another
venv (other torch / transformers pins) needs nothing but this module and the standard library.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: speed metrics → True when larger is better
METRICS: Mapping[str, bool] = {"prefill_ms": False, "decode_tok_s": True, "throughput_tok_s": True}
METRIC_UNITS: Mapping[str, str] = {"prefill_ms": "ms", "decode_tok_s": "tok/s", "throughput_tok_s": "tok/s"}
MODELS = ("pruned", "compact", "baseline")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class SpeedSettings:
    """What to time: a ``prefill_tokens`` prompt; ``decode_tokens`` greedy tokens at batch 1 and at ``batch``."""

    repetitions: int = 5
    prefill_tokens: int = 512
    decode_tokens: int = 64
    batch: int = 8

    def __post_init__(self) -> None:
        for name in ("repetitions", "prefill_tokens", "decode_tokens", "batch"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value >= 1, f"speed {name}={value!r} must be an integer >= 1")
        _require(self.decode_tokens >= 2, f"speed decode_tokens={self.decode_tokens} must be >= 2 "
                                          "(decode speed is measured between the first and the last token)")


@dataclass(frozen=True)
class ServeSettings:
    """The serve-under-load check (vLLM): ``requests`` completions, ``concurrency`` at a time, each bounded."""

    requests: int = 64
    concurrency: int = 64
    max_tokens: int = 16
    request_timeout: float = 300.0
    startup_timeout: float = 900.0

    def __post_init__(self) -> None:
        _require(self.requests >= 1 and self.concurrency >= 1, f"serve requests={self.requests} and "
                 f"concurrency={self.concurrency} must be >= 1")
        _require(self.max_tokens >= 1, f"serve max_tokens={self.max_tokens} must be >= 1")


@dataclass(frozen=True)
class Tolerances:
    """Agreement tolerances the orchestrator states and every runner applies.

    Attributes:
        ppl_rel: |ppl − ppl_ref| / ppl_ref allowed for full-precision (fp32) variants.
        ppl_rel_lowp: the same for reduced-precision variants (bf16, int8).
        greedy_lowp_min_prefix: for reduced-precision variants, the fraction of the generated tokens
            of every prompt that must match the reference before the first divergence.
            fp32 variants must be token-identical.
        greedy_lowp_near_tie_nats: for reduced-precision variants, a prompt whose first divergence
            sits where the reference's top1 − top2 log-probability margin is below this is a rounding
            flip between near-equal tokens, tolerated and listed (a real disagreement happens at
            confident positions, and moves perplexity too, which ``ppl_rel_lowp`` bounds).

    The low-precision defaults bound quantization error, not pruning error (that is the fp32
    engines' exact agreement); state tighter ones per run. What OpenVINO's default export (int8
    weights, f32 activations) costs on SmolLM2-135M against fp32 transformers, measured
    (examples/results/openvino_int8.md, 8×512 windows): perplexity +0.17 % dense, +4.6 % at 70 %
    (a model at perplexity 862), first greedy divergence at token 5 or later of 32; int8
    activations too (``--mode static``) cost +10-33 % and diverge at token 0-3, beyond them.
    """

    ppl_rel: float = 0.005
    ppl_rel_lowp: float = 0.15
    greedy_lowp_min_prefix: float = 0.125
    greedy_lowp_near_tie_nats: float = 0.25

    def __post_init__(self) -> None:
        for name in ("ppl_rel", "ppl_rel_lowp"):
            value = getattr(self, name)
            _require(math.isfinite(value) and value >= 0, f"perplexity tolerance {name}={value!r} must be a "
                     "finite fraction >= 0 (e.g. 0.005 for 0.5%)")
        _require(math.isfinite(self.greedy_lowp_near_tie_nats) and self.greedy_lowp_near_tie_nats >= 0,
                 f"greedy_lowp_near_tie_nats={self.greedy_lowp_near_tie_nats!r} must be a finite number of nats >= 0")
        _require(0.0 <= self.greedy_lowp_min_prefix <= 1.0, f"greedy_lowp_min_prefix="
                 f"{self.greedy_lowp_min_prefix!r} must be a fraction in [0, 1]")


@dataclass(frozen=True)
class EngineRequest:
    """REQUEST.json: what one engine runner is asked to check (PROTOCOL.md)."""

    engine: str
    pruned: str
    work_dir: str
    prompts: Sequence[str]
    text: str
    baseline: str | None = None
    compact: str | None = None
    max_new_tokens: int = 32
    reference: Mapping[str, Any] | None = None
    ppl_windows: int = 8
    seq_len: int = 512
    speed: SpeedSettings | None = None
    serve: ServeSettings | None = None
    tolerances: Tolerances = field(default_factory=Tolerances)
    bos: str = "auto"  # owl_plugin.text.window_protocol: auto | on | off

    def __post_init__(self) -> None:
        _require(self.bos in ("auto", "on", "off"), f"bos={self.bos!r} must be one of auto, on, off")
        _require(bool(self.prompts), "at least one prompt is needed")
        _require(self.max_new_tokens >= 1, f"max_new_tokens={self.max_new_tokens} must be >= 1")
        _require(self.ppl_windows >= 1 and self.seq_len >= 2,
                 f"ppl_windows={self.ppl_windows} must be >= 1 and seq_len={self.seq_len} >= 2")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["prompts"] = list(self.prompts)
        return data

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineRequest:
        data = dict(data)
        for key, kind in (("speed", SpeedSettings), ("serve", ServeSettings), ("tolerances", Tolerances)):
            if isinstance(data.get(key), Mapping):
                data[key] = kind(**data[key])
        if data.get("tolerances") is None:
            data.pop("tolerances", None)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, path: str | os.PathLike) -> EngineRequest:
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass
class Check:
    """One named check: ``loads/compact``, ``sparsity/pruned``, ``agrees/greedy-compact``, ...

    ``detail`` is one human-readable line; on failure it carries the engine's own error or the
    first mismatch (the tensor, the module, the prompt and token position).
    """

    name: str
    passed: bool
    detail: str = ""
    values: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Check:
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"a check in RESULT.json has no name: {dict(data)!r}")
        if not isinstance(data.get("passed"), bool):
            raise ValueError(f"check {name!r} in RESULT.json has passed={data.get('passed')!r}; expected true or false")
        return cls(name=name, passed=data["passed"], detail=str(data.get("detail", "")),
                   values=dict(data.get("values") or {}))


@dataclass
class SpeedRow:
    """Medians and spread of one metric of one model (``pruned`` / ``baseline``) and variant."""

    model: str
    variant: str
    metric: str
    median: float
    min: float
    max: float
    samples: list[float]
    unit: str = ""

    @classmethod
    def from_samples(cls, model: str, variant: str, metric: str, samples: Sequence[float]) -> SpeedRow:
        if metric not in METRICS:
            raise ValueError(f"unknown speed metric {metric!r}; expected one of {sorted(METRICS)}")
        if not samples:
            raise ValueError(f"no samples for {model}/{variant}/{metric}")
        ordered = sorted(samples)
        middle = len(ordered) // 2
        median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
        return cls(model, variant, metric, median, ordered[0], ordered[-1], [float(s) for s in samples],
                   METRIC_UNITS[metric])

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpeedRow:
        try:
            row = cls(model=str(data["model"]), variant=str(data.get("variant", "default")),
                      metric=str(data["metric"]), median=float(data["median"]),
                      min=float(data.get("min", data["median"])), max=float(data.get("max", data["median"])),
                      samples=[float(s) for s in data.get("samples", [])], unit=str(data.get("unit", "")))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"malformed speed row in RESULT.json ({error}): {dict(data)!r}") from error
        if row.metric not in METRICS:
            raise ValueError(f"speed row has unknown metric {row.metric!r}; expected one of {sorted(METRICS)}")
        if not (math.isfinite(row.median) and row.median > 0):
            raise ValueError(f"speed row {row.model}/{row.variant}/{row.metric} has median {row.median!r}; "
                             "expected a positive number")
        return row


@dataclass
class EngineResult:
    """RESULT.json: what one engine runner found."""

    engine: str
    checks: list[Check] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    generated: dict[str, Any] = field(default_factory=dict)
    ppl: dict[str, float] = field(default_factory=dict)
    speed: list[SpeedRow] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, passed: bool, detail: str = "", **values: Any) -> Check:
        check = Check(name, bool(passed), detail, values)
        self.checks.append(check)
        return check

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineResult:
        if not isinstance(data, Mapping) or not isinstance(data.get("engine"), str):
            raise ValueError("RESULT.json is not an object with an 'engine' name")
        checks = data.get("checks")
        if not isinstance(checks, list):
            raise ValueError(f"RESULT.json of {data['engine']!r} has no 'checks' list")
        return cls(engine=data["engine"], checks=[Check.from_dict(c) for c in checks],
                   versions={str(k): str(v) for k, v in (data.get("versions") or {}).items()},
                   generated=dict(data.get("generated") or {}), ppl=dict(data.get("ppl") or {}),
                   speed=[SpeedRow.from_dict(r) for r in data.get("speed") or []],
                   notes=dict(data.get("notes") or {}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> EngineResult:
        return cls.from_dict(json.loads(Path(path).read_text()))
