"""owl-plugin: non-uniform layerwise sparsity (OWL, AlphaPruning) for LLM pruning tools.

The core (this package) is framework-agnostic: statistics in, a ``SparsityProfile`` out.
Adapters for llmcompressor, vLLM, transformers and OpenVINO live in
``owl_plugin.integrations`` and import the core, never the other way round.

Example:
    >>> from owl_plugin import allocate, OWLConfig
    >>> profile = allocate(model, 0.7, OWLConfig(), calibration=batches)
    >>> profile.save("out/"); plot_profiles(profile, "out/sparsity_profile.png")
"""

from owl_plugin.allocate import allocate, allocate_linears
from owl_plugin.config import AlphaConfig, OWLConfig, UniformConfig, make_config
from owl_plugin.plot import plot_profiles
from owl_plugin.profile import ModuleSparsity, ProfileError, SparsityProfile

__version__ = "0.1.0"

__all__ = [
    "AlphaConfig",
    "ModuleSparsity",
    "OWLConfig",
    "ProfileError",
    "SparsityProfile",
    "UniformConfig",
    "allocate",
    "allocate_linears",
    "make_config",
    "plot_profiles",
]
