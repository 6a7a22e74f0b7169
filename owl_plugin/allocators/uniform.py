"""Uniform allocation: every unit gets the target sparsity S (the usual baseline)."""

from __future__ import annotations

import numpy as np

from owl_plugin.bounds import Bounded, fit_to_bounds


def uniform_ratios(num_params: np.ndarray, target: float, *, bounds: tuple[float, float] = (0.0, 0.99)) -> Bounded:
    """Return S for every unit (``fit_to_bounds`` only checks S lies in the bounds)."""
    num_params = np.asarray(num_params, dtype=np.float64)
    return fit_to_bounds(np.full(num_params.shape, float(target)), num_params, target, bounds, what="uniform")
