"""MoE experts in llmcompressor: routed-token statistics during calibration, native layout when saving.

``oneshot`` splits fused 3-D experts into per-expert ``nn.Linear`` (llmcompressor's ``linearize_moe``:
``LinearExperts2D``, names ``<...>.experts.<e>.gate_proj|up_proj|down_proj``, the names the core's
``owl_plugin.experts`` gives them), so the allocation modifiers and Wanda/SparseGPT see every expert
matrix as a module of its own. It also runs calibration with ``moe_calibrate_all_experts`` on (every
expert sees every token, so each pruner has Hessian/activation statistics for every expert).

* The allocation's statistics are taken with that flag off (:func:`routed_statistics`): an expert's
  OWL/DLP score is over the tokens routed to it, as in ``owl profile``; experts no token is routed to
  follow ``owl_plugin.experts.UNROUTED_RULE`` and are named in the profile.
* Before saving, :func:`fused_for_saving` packs the experts back into the model's fused modules
  (llmcompressor's ``repack_moe``) so ``save_pretrained`` writes the family's own checkpoint layout
  (transformers writes per-expert 2-D tensors), and renames the profile's expert modules to the
  tensor names of that checkpoint (``owl_plugin.experts.checkpoint_name``: Mixtral's ``w1/w3/w2``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from owl_plugin.experts import checkpoint_name
from owl_plugin.profile import SparsityProfile


@contextmanager
def routed_statistics() -> Iterator[None]:
    """Run llmcompressor's linearized experts on their routed tokens only (``moe_calibrate_all_experts`` off)."""
    from llmcompressor.modeling.moe import context

    saved = context._CALIBRATE_ALL_EXPERTS
    context._CALIBRATE_ALL_EXPERTS = False
    try:
        yield
    finally:
        context._CALIBRATE_ALL_EXPERTS = saved


def fused_for_saving(model: nn.Module, profile: SparsityProfile) -> SparsityProfile:
    """Pack linearized experts back into the model's fused modules; the profile with checkpoint tensor names."""
    from llmcompressor.modeling.moe.linearize import get_linearized_moes, repack_moe

    if not get_linearized_moes(model):
        return profile
    repack_moe(model)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    renamed = {checkpoint_name(name, model_type): entry for name, entry in profile.modules.items()}
    if list(renamed) == list(profile.modules):
        return profile
    params = dict(profile.params)
    unrouted = params.get("unrouted_experts")
    if unrouted:
        params["unrouted_experts"] = {**unrouted,
                                      "modules": [checkpoint_name(n, model_type) for n in unrouted["modules"]]}
    if "nm" in params:
        params["nm"] = {checkpoint_name(n, model_type): v for n, v in params["nm"].items()}
    scores = {checkpoint_name(n, model_type): v for n, v in profile.scores.items()}
    return SparsityProfile(**{**profile.__dict__, "modules": renamed, "params": params, "scores": scores})
