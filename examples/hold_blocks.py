"""Hold some decoder blocks of a sparsity profile at the target: which blocks carry an allocation's gain or loss?

An ablation of a saved profile (``owl profile``, ``owl tune``): every module of the blocks named by ``--hold``
gets the target S; every other module keeps its ratio shifted by one δ that holds the parameter-weighted mean
at S,

    s'_m = S                    for m in a held block,
    s'_m = s_m + δ,  δ = Σ_{m∉H} p_m (S − s_m) / Σ_{m∉H} p_m    otherwise,

so the rest of the allocation keeps its shape (its differences between blocks) while the held blocks stop
deviating from uniform. Pruning with the result (``benchmark_quality.py --profiles``) and comparing with the
full allocation and with uniform says whether the held blocks carry the difference: e.g. on Gemma-3 270M at
70%, OWL prunes blocks 2-6 hardest and AlphaPruning the global-attention blocks 5, 11 and 17.

    python -m owl_plugin profile gemma3-270m --method owl --sparsity 0.7 --calibration calibration.txt \\
        --num-samples 16 --seq-len 512 --seed 0 --output owl70
    python examples/hold_blocks.py owl70/sparsity_profile.json --hold 2-6 --output owl70_hold2-6.json
"""

from __future__ import annotations

import argparse
import math

from owl_plugin.bounds import fit_to_bounds
from owl_plugin.profile import ModuleSparsity, SparsityProfile


def block_numbers(spec: str) -> list[int]:
    """``"2-6,11"`` → [2, 3, 4, 5, 6, 11]."""
    numbers: list[int] = []
    for part in spec.split(","):
        first, _, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last or first)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--hold {spec!r}: {part!r} is not a block number or a range a-b") from None
        if low < 0 or high < low:
            raise argparse.ArgumentTypeError(f"--hold {spec!r}: {part!r} is not an increasing range of block numbers")
        numbers.extend(range(low, high + 1))
    return sorted(set(numbers))


def hold_at_target(profile: SparsityProfile, held: list[str]) -> SparsityProfile:
    """``profile`` with every module of the ``held`` blocks at the target and the others shifted by one δ."""
    blocks = profile.block_sparsities()
    missing = [b for b in held if b not in blocks]
    if missing:
        raise ValueError(f"block(s) {missing} are not in the profile (its blocks: {list(blocks)[:3]}...)")
    rest = {n: e for n, e in profile.modules.items() if e.block not in held}
    if not rest:
        raise ValueError("every block is held: the result would be uniform; hold fewer blocks")
    weight = sum(e.num_params for e in rest.values())
    delta = math.fsum(e.num_params * (profile.target - e.sparsity) for e in rest.values()) / weight
    names = list(profile.modules)
    ratios = [profile.target if n not in rest else rest[n].sparsity + delta for n in names]
    fitted = fit_to_bounds(ratios, [profile.modules[n].num_params for n in names], profile.target,
                           profile.bounds, what=f"{profile.method} with blocks held")
    modules = {n: ModuleSparsity(float(s), profile.modules[n].num_params, profile.modules[n].block)
               for n, s in zip(names, fitted.ratios, strict=True)}
    return SparsityProfile(method=profile.method, target=profile.target, modules=modules,
                           params={**profile.params, "held_at_target": held, "shift": delta},
                           scores=dict(profile.scores), bounds=profile.bounds,
                           projected=profile.projected or fitted.projected)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", help="a sparsity_profile.json (or the folder holding one)")
    parser.add_argument("--hold", type=block_numbers, required=True, metavar="BLOCKS",
                        help="decoder block numbers to hold at the target, e.g. 2-6 or 5,11,17")
    parser.add_argument("--output", required=True, help="where to write the new profile (.json)")
    args = parser.parse_args(argv)
    profile = SparsityProfile.load(args.profile)
    blocks = list(profile.block_sparsities())
    if any(n >= len(blocks) for n in args.hold):
        parser.error(f"--hold {args.hold}: the profile has blocks 0-{len(blocks) - 1}")
    held = hold_at_target(profile, [blocks[n] for n in args.hold])
    output = held.save(args.output)
    print(f"{output}: {held.summary()}")
    before, after = profile.block_sparsities(), held.block_sparsities()
    print("| block | ratio | held |\n|---|---|---|")
    for number, block in enumerate(blocks):
        print(f"| {number} | {before[block]:.3f} → {after[block]:.3f} | {'yes' if number in args.hold else ''} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
