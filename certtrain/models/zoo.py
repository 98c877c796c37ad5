"""The published architectures of certified training, as plain nn.Sequential models.

Every model starts with `Normalize`, so inputs and eps are in pixel units [0, 1];
`wk17a` and `rsl18a` are the exceptions because the published weights expect raw pixels.
"""

from __future__ import annotations

import math

from torch import nn

from certtrain.layers import Normalize

DATASET_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
STATS_ALIASES = {"mnist5k": "mnist"}  # mnist5k digits are MNIST digits: the same normalisation


def stats_dataset(dataset: str) -> str:
    """The DATASET_STATS key whose normalisation a model for `dataset` uses (training and
    verification alike); ValueError naming the choices for a dataset without one."""
    name = STATS_ALIASES.get(str(dataset), str(dataset))  # plain str: saved in checkpoints
    if name not in DATASET_STATS:
        raise ValueError(
            f"no image normalisation for dataset {dataset!r}; choose one of {sorted(DATASET_STATS) + sorted(STATS_ALIASES)}"
        )
    return name


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _convs(in_channels: int, size: int, layers, batch_norm: bool = False):
    """layers: (out_channels, kernel, stride, padding) tuples -> modules, channels, spatial size."""
    modules = []
    for out_channels, kernel, stride, padding in layers:
        modules.append(nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding))
        if batch_norm:
            modules.append(nn.BatchNorm2d(out_channels))
        modules.append(nn.ReLU())
        in_channels, size = out_channels, _conv_out(size, kernel, stride, padding)
    return modules, in_channels, size


def _head(in_features: int, hidden, num_classes: int, batch_norm: bool = False):
    modules = [nn.Flatten()]
    for width in hidden:
        modules.append(nn.Linear(in_features, width))
        if batch_norm:
            modules.append(nn.BatchNorm1d(width))
        modules.append(nn.ReLU())
        in_features = width
    modules.append(nn.Linear(in_features, num_classes))
    return modules


def mlp(in_channels=1, in_size=28, num_classes=10, mean=(0.0,), std=(1.0,), hidden=(512, 512)):
    """Fully connected ReLU network (two hidden layers of 512 by default)."""
    return nn.Sequential(Normalize(mean, std), *_head(in_channels * in_size**2, hidden, num_classes))


def dm_small(in_channels=1, in_size=28, num_classes=10, mean=(0.0,), std=(1.0,)):
    """Small network with padded 4x4 stride-2 convolutions: conv16, conv32, fc100.

    The same shape as the Wong & Kolter network in ../shared/models (padding 1, both convs
    stride 2), which is the "DM-small" the speed anchors were measured on.
    """
    convs, channels, size = _convs(in_channels, in_size, [(16, 4, 2, 1), (32, 4, 2, 1)])
    return nn.Sequential(Normalize(mean, std), *convs, *_head(channels * size**2, [100], num_classes))


def dm_medium(in_channels=1, in_size=28, num_classes=10, mean=(0.0,), std=(1.0,)):
    """DeepMind IBP medium: conv32 3x3, conv32 4x4/2, conv64 3x3, conv64 4x4/2, fc512, fc512."""
    convs, channels, size = _convs(in_channels, in_size, [(32, 3, 1, 1), (32, 4, 2, 1), (64, 3, 1, 1), (64, 4, 2, 1)])
    return nn.Sequential(Normalize(mean, std), *convs, *_head(channels * size**2, [512, 512], num_classes))


def dm_large(in_channels=1, in_size=28, num_classes=10, mean=(0.0,), std=(1.0,)):
    """DeepMind IBP large: conv64 3x3, conv64 3x3, conv128 3x3/2, conv128 3x3, conv128 3x3, fc512."""
    convs, channels, size = _convs(
        in_channels, in_size, [(64, 3, 1, 1), (64, 3, 1, 1), (128, 3, 2, 1), (128, 3, 1, 1), (128, 3, 1, 1)]
    )
    return nn.Sequential(Normalize(mean, std), *convs, *_head(channels * size**2, [512], num_classes))


def cnn7(in_channels=1, in_size=28, num_classes=10, mean=(0.0,), std=(1.0,)):
    """CNN7 of Shi et al. (2021): BatchNorm after every layer and their IBP initialisation."""
    convs, channels, size = _convs(
        in_channels,
        in_size,
        [(64, 3, 1, 1), (64, 3, 1, 1), (128, 3, 2, 1), (128, 3, 1, 1), (128, 3, 1, 1)],
        batch_norm=True,
    )
    model = nn.Sequential(Normalize(mean, std), *convs, *_head(channels * size**2, [512], num_classes, batch_norm=True))
    ibp_init_(model)
    return model


def wk17a(in_channels=1, in_size=28, num_classes=10, mean=None, std=None):
    """Wong & Kolter (2018) MNIST network ("LPd-CNN_A" in Tjeng et al.); raw [0, 1] inputs.

    Layer indices match the state_dict of ../shared/models/wk17a_linf0.1.pth.
    """
    convs, channels, size = _convs(in_channels, in_size, [(16, 4, 2, 1), (32, 4, 2, 1)])
    return nn.Sequential(*convs, *_head(channels * size**2, [100], num_classes))


def rsl18a(in_channels=1, in_size=28, num_classes=10, mean=None, std=None):
    """Raghunathan et al. (2018) MNIST network ("RSL18a" in Tjeng et al.), one hidden layer of 500
    ReLUs; raw [0, 1] inputs. Layer indices match ../shared/models/rsl18a_linf0.1.pth."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * in_size**2, 500), nn.ReLU(), nn.Linear(500, num_classes))


def ibp_init_(model: nn.Module) -> None:
    """IBP initialisation of Shi et al. (2021): w ~ N(0, (sqrt(2 pi) / fan_in)^2), zero bias.

    It keeps the interval widths from growing with depth at initialisation.
    """
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            fan_in = module.weight[0].numel()
            nn.init.normal_(module.weight, mean=0.0, std=math.sqrt(2 * math.pi) / fan_in)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


ARCHITECTURES = {
    "mlp": mlp,
    "dm_small": dm_small,
    "dm_medium": dm_medium,
    "dm_large": dm_large,
    "cnn7": cnn7,
    "wk17a": wk17a,
    "rsl18a": rsl18a,
}
