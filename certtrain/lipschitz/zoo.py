"""Lipschitz GroupSort architectures for image classification (l-inf certified baselines).

The input is only centred (x - mean), not divided by std: a Normalize layer with std < 1 would
multiply the network's Lipschitz constant by 1/std, which the certificate then has to pay for.
"""

from __future__ import annotations

from torch import nn

from certtrain.layers import GroupSort, Normalize
from certtrain.lipschitz.layers import LipschitzLinear


def lipschitz_stack(
    sizes: list[int],
    kind: str = "inf",
    lipschitz_const: float = 1.0,
    group_size: int | str = 2,
    first_kind: str | None = None,
    vectorwise: bool = True,
    mode: str = "direct",
    budget: str = "clip",
) -> list[nn.Module]:
    """LipschitzLinear layers of `sizes` with GroupSort between them; each layer gets an equal
    share lambda^(1/depth) of the budget, so the product of layer bounds is `lipschitz_const`.

    group_size: 2 (MaxMin), any divisor of the widths, or "full" (sort the whole layer: FullSort).
    first_kind: norm kind of the first layer (e.g. "one-inf" for an l1 -> linf network).
    vectorwise: eq. 2.8 (each row / column normalised on its own) or eq. 2.7 (the whole matrix).
    budget: how lambda^(1/depth) enters eq. 2.7: "clip" or "scale" (certtrain.lipschitz.layers.BUDGETS).
    """
    depth = len(sizes) - 1
    if depth < 1:
        raise ValueError(f"lipschitz_stack needs at least an input and an output size, got {sizes}")
    per_layer = lipschitz_const ** (1.0 / depth)
    modules: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layer_kind = first_kind if (i == 0 and first_kind) else kind
        modules.append(
            LipschitzLinear(
                fan_in, fan_out, kind=layer_kind, max_norm=per_layer, vectorwise=vectorwise, mode=mode, budget=budget
            )
        )
        if i < depth - 1:
            modules.append(GroupSort(fan_out if group_size == "full" else group_size))
    return modules


def lipschitz_mlp(
    in_channels: int = 1,
    in_size: int = 28,
    num_classes: int = 10,
    mean=(0.0,),
    std=(1.0,),
    width: int = 512,
    depth: int = 3,
    group_size: int | str = 2,
    lipschitz_const: float = 1.0,
    kind: str = "inf",
    mode: str = "direct",
    vectorwise: bool = True,
    budget: str = "clip",
) -> nn.Sequential:
    """Centre -> Flatten -> `depth` LipschitzLinear layers (GroupSort between), l-inf Lipschitz
    constant at most `lipschitz_const` in pixel units. The default has the shape of the zoo's
    `mlp` (two hidden layers of 512), for comparisons at equal size. `std` is accepted for a uniform zoo
    signature but deliberately not used (see the module docstring). The other options are
    lipschitz_stack's; from the command line: +model.options.width=1024 +model.options.group_size=full."""
    del std
    if group_size != "full" and (not isinstance(group_size, int) or width % group_size):
        raise ValueError(f"group_size {group_size!r} must divide the width {width}, or be 'full'")
    sizes = [in_channels * in_size**2] + [width] * (depth - 1) + [num_classes]
    centre = Normalize(mean, [1.0] * len(mean))
    return nn.Sequential(
        centre,
        nn.Flatten(),
        *lipschitz_stack(sizes, kind, lipschitz_const, group_size, mode=mode, vectorwise=vectorwise, budget=budget),
    )


def lipschitz_mlp_large(in_channels=3, in_size=32, num_classes=10, mean=(0.0,), std=(1.0,), **options) -> nn.Sequential:
    """The CIFAR-10 counterpart: four LipschitzLinear layers of width 1024, GroupSort(2)."""
    return lipschitz_mlp(in_channels, in_size, num_classes, mean, std, **{"width": 1024, "depth": 4, **options})


LIPSCHITZ_ARCHITECTURES = {"lipschitz_mlp": lipschitz_mlp, "lipschitz_mlp_large": lipschitz_mlp_large}
