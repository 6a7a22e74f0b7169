"""How much of a model's decoder the allocation covers, and refusing what it cannot cover.

The decoder's *prunable weights* are every parameter with two or more dimensions inside the
decoder blocks, except the MoE router/gate (it picks experts and is never pruned) and norms
(1-D, or named ``*norm*``). The allocator and the pruners handle ``nn.Linear`` weights; any
other prunable weight (e.g. transformers 5 stores a Qwen3-MoE / Mixtral block's experts as
fused 3-D parameters ``mlp.experts.gate_up_proj`` and ``mlp.experts.down_proj``) would be
left dense while the profile reported the target over the rest. So:

    coverage = Σ numel(allocated weights) / Σ numel(prunable decoder weights)

is recorded in every profile. Fused experts that ``owl_plugin.experts`` can split into per-expert
``nn.Linear`` (Qwen3-MoE, Mixtral) are allocated and pruned per expert once linearized; a model whose
blocks hold any other prunable weight that is not ``nn.Linear`` (e.g. gpt-oss's biased experts) is
refused by name (``UnsupportedArchitecture``, a ``ValueError``: exit 2).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from torch import nn

#: last name component of a router / gate module (Qwen-MoE ``mlp.gate``, Mixtral ``block_sparse_moe.gate``,
#: gpt-oss ``mlp.router``, Qwen2-MoE ``mlp.shared_expert_gate``); dense MLPs say ``gate_proj``, never ``gate``
ROUTER_NAMES = frozenset({"gate", "router", "shared_expert_gate"})


class UnsupportedArchitecture(ValueError):
    """The decoder blocks hold prunable weights the allocator cannot allocate or prune."""


def is_router(name: str, module: nn.Module) -> bool:
    """True for an MoE router/gate: named ``gate``/``router`` or a class called ``*Router``/``*Gate``."""
    cls = type(module).__name__
    return name.rsplit(".", 1)[-1] in ROUTER_NAMES or cls.endswith(("Router", "Gate"))


def _is_norm(name: str, module: nn.Module) -> bool:
    return "norm" in name.rsplit(".", 1)[-1].lower() or "norm" in type(module).__name__.lower()


def prunable_weights(block: nn.Module, prefix: str) -> dict[str, int]:
    """Full parameter name → numel for every prunable weight (≥ 2-D, not router, not norm) in ``block``."""
    owners = {name: module for name, module in block.named_modules()}
    routers = [n for n, m in owners.items() if n and is_router(n, m)]
    result = {}
    for name, parameter in block.named_parameters():
        if parameter.dim() < 2:
            continue
        owner_name = name.rsplit(".", 1)[0] if "." in name else ""
        if any(owner_name == r or owner_name.startswith(r + ".") for r in routers):
            continue
        if _is_norm(owner_name, owners.get(owner_name, block)):
            continue
        result[f"{prefix}.{name}"] = parameter.numel()
    return result


@dataclass(frozen=True)
class Coverage:
    """Allocated vs prunable parameters of the decoder blocks."""

    covered_params: int
    decoder_params: int
    uncovered: Mapping[str, int]  # prunable weight name → numel, not allocated

    @property
    def share(self) -> float:
        return self.covered_params / self.decoder_params if self.decoder_params else 0.0

    def to_dict(self) -> dict:
        """What a profile records under ``params["coverage"]``."""
        return {"share": self.share, "covered_params": self.covered_params, "decoder_params": self.decoder_params,
                "uncovered": dict(self.uncovered)}


def decoder_weights(model: nn.Module) -> dict[str, int]:
    """Every prunable weight of every decoder block: full parameter name → numel, in model order."""
    from owl_plugin.layers import find_decoder_blocks

    prefix, blocks = find_decoder_blocks(model)
    weights: dict[str, int] = {}
    for i, block in enumerate(blocks):
        weights.update(prunable_weights(block, f"{prefix}.{i}"))
    return weights


def coverage(model: nn.Module, modules: Iterable[str]) -> Coverage:
    """The share of the decoder's prunable weights held by ``modules`` (module names, weight ``<name>.weight``)."""
    weights = decoder_weights(model)
    covered = {f"{name}.weight" for name in modules}
    uncovered = {n: p for n, p in weights.items() if n not in covered}
    return Coverage(sum(p for n, p in weights.items() if n in covered), sum(weights.values()), uncovered)


def _architecture(model: nn.Module) -> str:
    architectures = getattr(getattr(model, "config", None), "architectures", None)
    return architectures[0] if architectures else type(model).__name__


def check_supported(model: nn.Module, *, fused_experts: str = "refuse") -> None:
    """Raise ``UnsupportedArchitecture`` if a decoder block holds a prunable weight that is not an ``nn.Linear``.

    ``fused_experts="allow"`` accepts fused 3-D experts that ``owl_plugin.experts`` can linearize (a caller
    that linearizes before allocating, e.g. llmcompressor's ``oneshot``); ``"refuse"`` (what the allocation
    itself needs) refuses them too, saying to linearize first. Other foreign weights are always refused.
    The message is one line naming the architecture, the weight names (block index folded to ``N``)
    and the share of the decoder they hold.
    """
    from owl_plugin.experts import why_not_linearizable
    from owl_plugin.layers import find_decoder_blocks

    if fused_experts not in ("allow", "refuse"):
        raise ValueError(f"fused_experts={fused_experts!r}: choose 'allow' or 'refuse'")
    prefix, blocks = find_decoder_blocks(model)
    weights = decoder_weights(model)
    linear_weights = {
        f"{prefix}.{i}.{name}.weight"
        for i, block in enumerate(blocks) for name, module in block.named_modules() if isinstance(module, nn.Linear)
    }
    linearizable = {
        f"{prefix}.{i}.{name}.{param}": why_not_linearizable(module)
        for i, block in enumerate(blocks) for name, module in block.named_modules()
        for param, _ in module.named_parameters(recurse=False)
    }
    foreign = {n: p for n, p in weights.items() if n not in linear_weights}
    if fused_experts == "allow":
        foreign = {n: p for n, p in foreign.items() if n not in linearizable or linearizable[n] is not None}
    if not foreign:
        return
    kinds: dict[str, int] = {}
    for name, numel in foreign.items():
        rest = name[len(prefix) + 1:].split(".", 1)[1]
        kinds[f"{prefix}.N.{rest}"] = kinds.get(f"{prefix}.N.{rest}", 0) + numel
    share = sum(foreign.values()) / sum(weights.values())
    reasons = sorted({linearizable[n] for n in foreign if linearizable.get(n)} - {"not a fused experts module"})
    if not reasons and all(linearizable.get(n) is None for n in foreign if n in linearizable):
        hint = ("; they are fused experts: split them into per-expert linears first "
                "(owl_plugin.experts.linearized), as owl profile and owl prune do")
    else:
        hint = f" ({', '.join(reasons)})" if reasons else ""
    raise UnsupportedArchitecture(
        f"{_architecture(model)} is not supported: its decoder blocks hold prunable weights that are not nn.Linear "
        f"({', '.join(sorted(kinds))}; {share:.1%} of the decoder's prunable parameters){hint}, which the "
        "allocation would leave dense; refusing rather than reporting the target over the rest"
    )
