"""Experiment 1: robustness to an outlier. y = sin(x) + noise (sigma 0.01, one point sigma 1),
a Lipschitz GroupSort net (lambda 1) against an unconstrained ReLU MLP, 10 seeds each.

    python experiments/lipschitz/lipschitz_outlier.py            # ~1 min on 2 cores
Writes results/lipschitz/outlier.{md,png}.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from lipschitz_common import RESULTS, fit, lipschitz_net, mean_std, mlp, provenance, save_figure  # noqa: E402

SEEDS = 10
POINTS = 41  # on [-3, 3]; the middle one (x = 0) is the outlier
STEPS, LR = 2000, 5e-3
SIZES = [1, 64, 64, 1]


def make_data(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(-3, 3, POINTS)[:, None]
    noise = 0.01 * torch.randn(POINTS, 1, generator=g)
    noise[POINTS // 2] = torch.randn(1, generator=g)  # the outlier: sigma 1
    return x, torch.sin(x) + noise


def slopes(model, grid):
    with torch.no_grad():
        f = model(grid).squeeze(1)
    return (f[1:] - f[:-1]) / (grid[1:, 0] - grid[:-1, 0])


def main():
    torch.set_num_threads(1)
    grid = torch.linspace(-3, 3, 1201)[:, None]
    near = grid[:-1, 0].abs() < 0.3  # slopes next to the outlier at x = 0
    stats = {name: {"max": [], "near": [], "pull": [], "rmse": []} for name in ("lipschitz", "unconstrained")}
    curves = {name: [] for name in stats}
    for seed in range(SEEDS):
        x, y = make_data(seed)
        for name in stats:
            torch.manual_seed(seed)
            model = lipschitz_net(SIZES, 1.0) if name == "lipschitz" else mlp(SIZES)
            model, _ = fit(model, lambda m: ((m(x) - y) ** 2).mean(), STEPS, LR)
            s = slopes(model, grid).abs()
            with torch.no_grad():
                f = model(grid)
                pull = (model(x[POINTS // 2 : POINTS // 2 + 1]) - 0.0).abs().item()  # sin(0) = 0
            stats[name]["max"].append(s.max().item())
            stats[name]["near"].append(s[near].max().item())
            stats[name]["pull"].append(pull)
            stats[name]["rmse"].append(((f - torch.sin(grid)) ** 2).mean().sqrt().item())
            curves[name].append(f.squeeze(1))
    prov = provenance()
    lines = [
        "# Experiment 1: robustness to an outlier",
        "",
        f"Made by {prov}.",
        "",
        f"Data: {POINTS} points on a uniform grid in [-3, 3], y = sin(x) + N(0, 0.01^2), except the point",
        "x = 0 whose noise is N(0, 1). Nets: 1-64-64-1; Lipschitz = LipschitzLinear (first layer one-inf,",
        "then inf, lambda = 1 overall) with GroupSort(2); unconstrained = ReLU MLP.",
        f"Full-batch Adam, lr {LR}, {STEPS} steps, MSE, {SEEDS} seeds (mean ± std over seeds).",
        "",
        "| model | max abs slope on [-3, 3] | max abs slope within 0.3 of the outlier | abs(f(0)) (pull of the outlier) | RMSE to sin on [-3, 3] |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, st in stats.items():
        lines.append(
            f"| {name} | {mean_std(st['max'])} | {mean_std(st['near'])} | {mean_std(st['pull'])} | {mean_std(st['rmse'])} |"
        )
    lines += ["", "The true function has slope at most 1; the Lipschitz net is guaranteed to stay at or below 1.", ""]
    (RESULTS / "outlier.md").write_text("\n".join(lines))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, name in zip(axes, curves):
        for c in curves[name]:
            ax.plot(grid[:, 0], c, lw=0.8, alpha=0.6)
        x, y = make_data(0)
        ax.scatter(x[:, 0], y[:, 0], s=8, c="k", label="data (seed 0)")
        ax.plot(grid[:, 0], torch.sin(grid[:, 0]), "k--", lw=1, label="sin(x)")
        ax.set_title(f"{name}: {SEEDS} seeds")
        ax.set_xlabel("x")
        ax.legend(loc="lower right", fontsize=7)
    save_figure(fig, prov, "outlier.png", dpi=120, bottom=0.04)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
