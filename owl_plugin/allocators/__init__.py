"""Allocation formulas: per-unit statistics in, per-unit sparsity ratios out.

Each function is pure (numpy arrays in, ``Bounded`` out) and keeps the
parameter-weighted mean of the ratios at the target.
"""

from owl_plugin.allocators.alpha import alpha_ratios
from owl_plugin.allocators.atp import atp_ratios
from owl_plugin.allocators.dlp import dlp_ratios, median_score
from owl_plugin.allocators.owl import outlier_ratio, owl_ratios, wanda_scores
from owl_plugin.allocators.uniform import uniform_ratios

__all__ = [
    "alpha_ratios", "atp_ratios", "dlp_ratios", "median_score", "outlier_ratio", "owl_ratios", "uniform_ratios",
    "wanda_scores",
]
