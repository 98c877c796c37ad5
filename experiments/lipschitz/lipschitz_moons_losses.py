"""Experiment 4: losses for Lipschitz classifiers on two moons. The same GroupSort net (l1 -> output
Lipschitz bound 1) trained with MSE, BCE, BCE at temperature 16, hinge with margin 1 and 0.1, and
hinge with a dynamic margin (half the l1 distance to the nearest training point of the other class).

    python experiments/lipschitz/lipschitz_moons_losses.py               # noise 0.1 (the classes overlap)
    python experiments/lipschitz/lipschitz_moons_losses.py --noise 0     # the paper's non-overlapping moons
~3 min each on one core. Writes results/lipschitz/moons_losses.{md,png} (noise 0.1) or
moons_losses_noise<noise>.{md,png}.

Because |f(x) - f(x')| <= ||x - x'||_1, |f(x)| is a certified l1 radius of the decision at x; the
table's "margin" is t f(x) on test points (t = +-1): the signed certified radius.
"""

from __future__ import annotations

import argparse
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from lipschitz_common import RESULTS, fit, lipschitz_net, mean_std, provenance, save_figure  # noqa: E402

from certtrain.lipschitz.losses import binary_hinge  # noqa: E402

SEEDS = 3
TRAIN, TEST = 400, 2000
STEPS, LR = 3000, 5e-3
SIZES = [2, 64, 64, 64, 1]


def moons(n: int, noise: float, generator: torch.Generator):
    """Two interleaving half circles (the usual 'two moons'), labels 0 / 1."""
    t = math.pi * torch.rand(n, generator=generator)
    label = torch.arange(n) % 2
    upper = torch.stack([t.cos(), t.sin()], dim=1)
    lower = torch.stack([1 - t.cos(), 0.5 - t.sin()], dim=1)
    x = torch.where(label[:, None] == 0, upper, lower) + noise * torch.randn(n, 2, generator=generator)
    return x, label


def dynamic_margin(x, label):
    """Half the l1 distance from each point to the nearest point of the other class."""
    dist = torch.cdist(x, x, p=1)
    dist[label[:, None] == label[None, :]] = float("inf")
    return 0.5 * dist.min(dim=1).values


def losses(x, label):
    sign = 2.0 * label.float() - 1.0
    dyn = dynamic_margin(x, label)
    return {
        "MSE": lambda m: ((m(x).squeeze(1) - sign) ** 2).mean(),
        "BCE": lambda m: F.binary_cross_entropy_with_logits(m(x).squeeze(1), label.float()),
        "BCE, T=16": lambda m: F.binary_cross_entropy_with_logits(16 * m(x).squeeze(1), label.float()) / 16,
        "hinge m=1": lambda m: binary_hinge(m(x).squeeze(1), label, 1.0),
        "hinge m=0.1": lambda m: binary_hinge(m(x).squeeze(1), label, 0.1),
        "hinge, dynamic m": lambda m: binary_hinge(m(x).squeeze(1), label, dyn),
    }


def main(noise: float):
    torch.set_num_threads(1)
    prov = provenance()
    stem = "moons_losses" if noise == 0.1 else f"moons_losses_noise{noise:g}"
    g = torch.Generator().manual_seed(1234)
    x_test, label_test = moons(TEST, noise, g)
    sign_test = 2.0 * label_test.float() - 1.0
    axis = torch.linspace(-1.5, 2.5, 121)
    grid = torch.cartesian_prod(axis, axis)
    results, maps = {}, {}
    for seed in range(SEEDS):
        x, label = moons(TRAIN, noise, torch.Generator().manual_seed(seed))
        for name, loss_fn in losses(x, label).items():
            torch.manual_seed(seed)
            model, _ = fit(lipschitz_net(SIZES, 1.0), loss_fn, STEPS, LR)
            with torch.no_grad():
                score = model(x_test).squeeze(1)
                margin = sign_test * score
                acc = (margin > 0).float().mean().item() * 100
                correct_radius = margin.clamp(min=0)[margin > 0].mean().item()
                if seed == 0:
                    maps[name] = model(grid).view(121, 121)
            entry = results.setdefault(name, {"acc": [], "margin": [], "radius": []})
            entry["acc"].append(acc)
            entry["margin"].append(margin.mean().item())
            entry["radius"].append(correct_radius)
    rows = [
        f"| {name} | {mean_std(r['acc'])} | {mean_std(r['margin'])} | {mean_std(r['radius'])} |"
        for name, r in results.items()
    ]
    lines = [
        "# Experiment 4: losses for Lipschitz classifiers on two moons",
        "",
        f"Made by {prov}.",
        "",
        f"Two moons with Gaussian noise {noise:g}{' (the classes overlap)' if noise >= 0.1 else ' (the classes do not overlap)'}: "
        f"{TRAIN} training points per seed, one fixed test set of {TEST}.",
        "Net 2-64-64-64-1 of LipschitzLinear (first layer one-inf, then inf; l1 -> output bound 1), GroupSort(2).",
        f"Full-batch Adam lr {LR}, {STEPS} steps, {SEEDS} seeds (mean ± std). Margin = t f(x) on test points",
        "(the signed certified l1 radius); last column: mean certified radius of the correctly classified.",
        "",
        "| loss | test accuracy % | mean margin t f(x) | mean certified l1 radius (correct points) |",
        "| --- | --- | --- | --- |",
        *rows,
        "",
    ]
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    top = max(mean(r["acc"]) for r in results.values())
    accurate = [name for name, r in results.items() if mean(r["acc"]) >= top - 0.5]
    best = max(accurate, key=lambda name: mean(results[name]["radius"]))
    lines.append(
        f"Largest mean certified radius among the losses within 0.5 points of the best accuracy "
        f"({', '.join(accurate)}): {best}."
    )
    lines.append("")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines))
    fig, axes = plt.subplots(2, 3, figsize=(12, 7.5))
    x0, label0 = moons(TRAIN, noise, torch.Generator().manual_seed(0))
    for ax, (name, values) in zip(axes.flat, maps.items()):
        limit = float(values.abs().max())
        ax.imshow(values.T, origin="lower", extent=(-1.5, 2.5, -1.5, 2.5), cmap="coolwarm", vmin=-limit, vmax=limit)
        ax.contour(axis, axis, values.T, levels=[0.0], colors="k", linewidths=1)
        ax.scatter(x0[:, 0], x0[:, 1], c=label0, cmap="coolwarm", s=4, edgecolors="k", linewidths=0.2)
        ax.set_title(f"{name} (acc {results[name]['acc'][0]:.1f}%)", fontsize=9)
    save_figure(fig, prov, f"{stem}.png", dpi=110, bottom=0.03)
    print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", type=float, default=0.1, help="std of the Gaussian noise added to the moons")
    main(parser.parse_args().noise)
