"""SparsityProfile: the one artifact every stage passes on (allocate → prune → export → validate).

It maps each prunable module, by its full name, to a sparsity ratio and remembers the
module's parameter count and decoder block, the target, the method and its parameters,
the per-unit statistic the method used (outlier ratio, α), and whether the ratios had to
be projected back into the bounds. It round-trips through JSON and draws itself.

Every profile read from JSON (``load``, ``from_json``, ``from_dict``: the CLI, the recipe
modifiers' ``profile_file`` and Python all come through here) is validated, and a bad one raises
:class:`ProfileError` naming the file and the value: format and version, a non-empty module map,
every ratio finite in [0, 1), parameter counts positive, the target finite in [0, 1), and the
target equal to the parameter-weighted mean Σ p·s / Σ p within ``MEAN_TOLERANCE`` (1e-6). A mixed
N:M profile rounds N per unit, so its mean is checked against the ``achieved_mean`` it records
instead (its target stays what was asked for).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROFILE_FILENAME = "sparsity_profile.json"
FORMAT = "owl-plugin/sparsity-profile"
VERSION = 1
MEAN_TOLERANCE = 1e-6  # |weighted mean of the ratios - target| allowed in a profile that is read


class ProfileError(ValueError):
    """A sparsity profile breaks its invariants (the message names the file, when read from one, and the value)."""


@dataclass(frozen=True)
class ModuleSparsity:
    """One prunable module: its ratio, size and the decoder block it belongs to."""

    sparsity: float
    num_params: int
    block: str


@dataclass(frozen=True)
class SparsityProfile:
    """Module name → sparsity, with the metadata needed to reproduce and check it.

    Attributes:
        method: ``"uniform"``, ``"owl"``, ``"alpha"``, ...
        target: S, the parameter-weighted mean sparsity over ``modules``.
        modules: module name → ``ModuleSparsity``, in model order.
        params: the method's hyperparameters (JSON-serialisable).
        scores: the statistic per allocation unit (block or module name), e.g. outlier ratio or α.
        bounds: (lower, upper) every ratio lies in.
        projected: True when the published formula left the bounds and was projected back.
    """

    method: str
    target: float
    modules: Mapping[str, ModuleSparsity]
    params: Mapping[str, Any] = field(default_factory=dict)
    scores: Mapping[str, float] = field(default_factory=dict)
    bounds: tuple[float, float] = (0.0, 0.99)
    projected: bool = False

    def __post_init__(self) -> None:
        if not self.modules:
            raise ProfileError("a sparsity profile needs at least one module")
        for name, entry in self.modules.items():
            if not isinstance(name, str) or not name:
                raise ProfileError(f"module name {name!r} is not a module name (a non-empty string)")
            if not (math.isfinite(entry.sparsity) and 0.0 <= entry.sparsity < 1.0):
                raise ProfileError(f"module {name!r} has sparsity {entry.sparsity!r}; every ratio must be in [0, 1)")
            if entry.num_params <= 0:
                raise ProfileError(f"module {name!r} has num_params={entry.num_params!r}; must be > 0")

    # -- views -------------------------------------------------------------------------
    @property
    def sparsities(self) -> dict[str, float]:
        """Module name → sparsity ratio."""
        return {name: entry.sparsity for name, entry in self.modules.items()}

    def mean_sparsity(self) -> float:
        """Parameter-weighted mean sparsity Σ p·s / Σ p."""
        total = sum(e.num_params for e in self.modules.values())
        return math.fsum(e.sparsity * e.num_params for e in self.modules.values()) / total

    def block_sparsities(self) -> dict[str, float]:
        """Decoder block → parameter-weighted mean sparsity of its modules, in model order."""
        weighted: dict[str, float] = {}
        sizes: dict[str, int] = {}
        for entry in self.modules.values():
            weighted[entry.block] = weighted.get(entry.block, 0.0) + entry.sparsity * entry.num_params
            sizes[entry.block] = sizes.get(entry.block, 0) + entry.num_params
        return {block: weighted[block] / sizes[block] for block in weighted}

    def rescaled(self, target: float) -> SparsityProfile:
        """The same shape of allocation around a new target: s_l · target / S, then bounds.

        Used, e.g., to prune another model with this model's OWL profile at another sparsity.
        """
        from owl_plugin.bounds import fit_to_bounds

        if self.target == 0:
            raise ValueError("cannot rescale a profile whose target is 0 (every ratio is 0); allocate anew instead")
        names = list(self.modules)
        ratios = [self.modules[n].sparsity * target / self.target for n in names]
        weights = [self.modules[n].num_params for n in names]
        fitted = fit_to_bounds(ratios, weights, target, self.bounds, what=f"{self.method} rescaled")
        modules = {
            n: ModuleSparsity(float(s), self.modules[n].num_params, self.modules[n].block)
            for n, s in zip(names, fitted.ratios, strict=True)
        }
        return SparsityProfile(
            method=self.method, target=target, modules=modules, params=dict(self.params),
            scores=dict(self.scores), bounds=self.bounds, projected=self.projected or fitted.projected,
        )

    # -- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "method": self.method,
            "target": self.target,
            "mean_sparsity": self.mean_sparsity(),
            "bounds": list(self.bounds),
            "projected": self.projected,
            "params": dict(self.params),
            "scores": dict(self.scores),
            "modules": {
                name: {"sparsity": e.sparsity, "num_params": e.num_params, "block": e.block}
                for name, e in self.modules.items()
            },
        }

    def check_mean(self) -> None:
        """Raise :class:`ProfileError` unless the weighted mean of the ratios is the target within ``MEAN_TOLERANCE``
        (for a mixed N:M profile: the ``achieved_mean`` it records), and the target is finite in [0, 1)."""
        if not (math.isfinite(self.target) and 0.0 <= self.target < 1.0):
            raise ProfileError(f"target {self.target!r} must be a finite sparsity in [0, 1)")
        mean = self.mean_sparsity()
        achieved = self.params.get("achieved_mean") if "mask_structure" in self.params else None
        if achieved is not None:
            if not isinstance(achieved, int | float) or abs(mean - achieved) > MEAN_TOLERANCE:
                raise ProfileError(f"the ratios' parameter-weighted mean is {mean!r} but the mixed N:M profile records "
                                   f"achieved_mean {achieved!r}; the ratios or the record were edited, allocate again")
            return
        if abs(mean - self.target) > MEAN_TOLERANCE:
            raise ProfileError(
                f"target {self.target!r} but the ratios' parameter-weighted mean is {mean!r} (off by "
                f"{mean - self.target:+.2e}, more than {MEAN_TOLERANCE:g}); pruning with it would reach {mean:.4f}, "
                f"not {self.target:.4f}. Allocate again, set target to the mean, or rescale it "
                "(SparsityProfile.rescaled)")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | os.PathLike | None = None) -> SparsityProfile:
        """Build and validate a profile from its JSON dict.

        Raises:
            ProfileError: a wrong format or version, a malformed or bad entry, or a target that is not the
                weighted mean of the ratios; the message starts with ``source`` when given.
        """
        where = f"sparsity profile {source}" if source is not None else "sparsity profile"
        try:
            return cls._from_dict(data)
        except ProfileError as error:
            raise ProfileError(f"invalid {where}: {error}") from None

    @classmethod
    def _from_dict(cls, data: Mapping[str, Any]) -> SparsityProfile:
        if not isinstance(data, Mapping):
            raise ProfileError(f"expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise ProfileError(f"not a sparsity profile: format={data.get('format')!r}, expected {FORMAT!r}")
        if data.get("version") != VERSION:
            raise ProfileError(f"sparsity profile version {data.get('version')!r} is not supported "
                               f"(expected {VERSION})")
        if not isinstance(data.get("modules"), Mapping):
            raise ProfileError(f"malformed sparsity profile: 'modules' must map module names to entries, "
                               f"got {type(data.get('modules')).__name__}")
        try:
            modules = {
                name: ModuleSparsity(float(m["sparsity"]), int(m["num_params"]), str(m["block"]))
                for name, m in data["modules"].items()
            }
            profile = cls(
                method=str(data["method"]), target=float(data["target"]), modules=modules,
                params=dict(data.get("params", {})), scores={k: float(v) for k, v in data.get("scores", {}).items()},
                bounds=tuple(float(b) for b in data.get("bounds", (0.0, 0.99))), projected=bool(data.get("projected")),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as error:
            if isinstance(error, ProfileError):
                raise
            raise ProfileError(f"malformed sparsity profile: missing or bad field {error}") from error
        profile.check_mean()
        return profile

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str, *, source: str | os.PathLike | None = None) -> SparsityProfile:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            where = f" {source}" if source is not None else ""
            raise ProfileError(f"invalid sparsity profile{where}: not JSON ({error})") from None
        return cls.from_dict(data, source=source)

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON atomically to ``path``: a ``.json`` file, or a folder (created if needed)
        that gets ``sparsity_profile.json``."""
        as_folder = str(path).endswith(("/", os.sep)) or Path(path).suffix != ".json"
        path = Path(path)
        if path.is_dir() or as_folder:
            path = path / PROFILE_FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
            handle.write(self.to_json())
        os.replace(handle.name, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> SparsityProfile:
        """Read and validate a profile from a JSON file or from a folder holding ``sparsity_profile.json``.

        Raises:
            ProfileError: naming ``path`` and what is wrong (see the module docstring).
            FileNotFoundError: no such file.
        """
        path = Path(path)
        if path.is_dir():
            path = path / PROFILE_FILENAME
        try:
            text = path.read_text()
        except UnicodeDecodeError as error:
            raise ProfileError(f"invalid sparsity profile {path}: not a text file ({error})") from None
        return cls.from_json(text, source=path)

    def summary(self) -> str:
        """One line: method, target, achieved mean, range."""
        values = self.sparsities.values()
        note = ", projected into bounds" if self.projected else ""
        return (
            f"{self.method}: target {self.target:.4f}, weighted mean {self.mean_sparsity():.6f}, "
            f"range [{min(values):.4f}, {max(values):.4f}] over {len(self.modules)} modules"
            f" in {len(self.block_sparsities())} blocks{note}"
        )
