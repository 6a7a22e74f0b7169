"""Validated, typed settings for each allocation method (unknown fields are rejected)."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from owl_plugin.bounds import check_bounds
from owl_plugin.spectra import XMIN_RULES

#: block: one unit per decoder block (the papers); linear: every linear its own unit; expert: per decoder block,
#: its non-expert linears form one unit and each MoE expert (its gate/up/down matrices) another (``owl_plugin.experts``)
Granularity = Literal["block", "linear", "expert"]
GRANULARITIES = ("block", "linear", "expert")


def _check_granularity(value: str) -> None:
    if value not in GRANULARITIES:
        raise ValueError(f"granularity={value!r} is not allowed; choose one of {GRANULARITIES}")


@dataclass(frozen=True, kw_only=True)
class UniformConfig:
    """Every prunable linear gets the target sparsity."""

    method: Literal["uniform"] = "uniform"
    bounds: tuple[float, float] = (0.0, 0.99)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bounds", check_bounds(self.bounds))


@dataclass(frozen=True, kw_only=True)
class OWLConfig:
    """OWL (arXiv 2310.05175): M is the outlier threshold multiple, lam is λ (band 2λ)."""

    method: Literal["owl"] = "owl"
    m: float = 5.0
    lam: float = 0.08
    granularity: Granularity = "block"
    bounds: tuple[float, float] = (0.0, 0.99)

    def __post_init__(self) -> None:
        lo, hi = check_bounds(self.bounds)
        object.__setattr__(self, "bounds", (lo, hi))
        if not (isinstance(self.m, numbers.Real) and math.isfinite(self.m) and self.m > 0):
            raise ValueError(f"OWL m={self.m!r} must be a finite number > 0 (the outlier threshold multiple; paper: 5)")
        if not (0 <= self.lam <= (hi - lo) / 2):
            raise ValueError(
                f"OWL lam={self.lam!r} is out of range: need 0 <= lam <= {(hi - lo) / 2:g} "
                "(half the width of the bounds; paper: 0.08)"
            )
        _check_granularity(self.granularity)


@dataclass(frozen=True, kw_only=True)
class AlphaConfig:
    """AlphaPruning (arXiv 2410.10912): ε sets the band S(1 ± ε); xmin picks the power-law tail."""

    method: Literal["alpha"] = "alpha"
    epsilon: float = 0.2
    xmin: Literal["peak", "median"] = "peak"
    granularity: Granularity = "block"
    bounds: tuple[float, float] = (0.0, 0.99)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bounds", check_bounds(self.bounds))
        if not (0 <= self.epsilon < 1):
            raise ValueError(f"AlphaPruning epsilon={self.epsilon!r} must be in [0, 1) (paper: 0.2-0.3)")
        if self.xmin not in XMIN_RULES:
            raise ValueError(f"xmin={self.xmin!r} is not a known rule; choose one of {XMIN_RULES}")
        _check_granularity(self.granularity)


@dataclass(frozen=True, kw_only=True)
class DLPConfig:
    """DLP (ICML 2025, arXiv 2505.23807): the median Wanda score ranks units; ratios span 2·band (not centred on S
    when the scores are skewed), parameter-weighted mean S."""

    method: Literal["dlp"] = "dlp"
    band: float = 0.08
    granularity: Granularity = "block"
    bounds: tuple[float, float] = (0.0, 0.99)

    def __post_init__(self) -> None:
        lo, hi = check_bounds(self.bounds)
        object.__setattr__(self, "bounds", (lo, hi))
        if not (0 <= self.band <= (hi - lo) / 2):
            raise ValueError(
                f"DLP band={self.band!r} is out of range: need 0 <= band <= {(hi - lo) / 2:g} "
                "(half the width of the bounds; e.g. 0.08)"
            )
        _check_granularity(self.granularity)


@dataclass(frozen=True, kw_only=True)
class ATPConfig:
    """ATP (ICML 2025, arXiv 2502.14770): sparsity rises by beta per decoder block (falls when beta < 0).

    A unit's depth is its decoder block's index, so ``granularity="linear"`` gives every linear
    of a block the same ratio (kept for a uniform interface).
    """

    method: Literal["atp"] = "atp"
    beta: float = 0.005
    granularity: Granularity = "block"
    bounds: tuple[float, float] = (0.0, 0.99)

    def __post_init__(self) -> None:
        lo, hi = check_bounds(self.bounds)
        object.__setattr__(self, "bounds", (lo, hi))
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and abs(self.beta) < hi - lo):
            raise ValueError(
                f"ATP beta={self.beta!r} is out of range: need a finite step with |beta| < {hi - lo:g} "
                "(the width of the bounds; typical 0.001-0.02 per block)"
            )
        _check_granularity(self.granularity)


AllocationConfig = UniformConfig | OWLConfig | AlphaConfig | DLPConfig | ATPConfig
CONFIGS: dict[str, type] = {
    "uniform": UniformConfig, "owl": OWLConfig, "alpha": AlphaConfig, "dlp": DLPConfig, "atp": ATPConfig,
}


def make_config(method: str, **params: Any) -> AllocationConfig:
    """Build the config for ``method`` from keyword parameters, rejecting unknown ones."""
    if method not in CONFIGS:
        raise ValueError(f"unknown allocation method {method!r}; choose one of {tuple(CONFIGS)}")
    cls = CONFIGS[method]
    allowed = {f.name for f in fields(cls)} - {"method"}
    unknown = set(params) - allowed
    if unknown:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)} for method {method!r}; allowed: {sorted(allowed)}")
    if "bounds" in params:
        params["bounds"] = tuple(params["bounds"])
    return cls(**params)


def config_params(config: AllocationConfig) -> dict[str, Any]:
    """The config as a JSON-friendly dict without ``method``."""
    data = asdict(config)
    data.pop("method")
    data["bounds"] = list(data["bounds"])
    return data
