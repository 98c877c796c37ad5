"""Shared helpers of the experiments/lipschitz/lipschitz_*.py reproductions: provenance, small nets, a fit loop."""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from certtrain.lipschitz import MonotonicWrapper
from certtrain.lipschitz.zoo import lipschitz_stack
from certtrain.provenance import git_commit

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "results" / "lipschitz"
SHARED_DATA = REPO / ".." / "shared" / "data"


def provenance() -> str:
    """'command, commit, machine, date' line that every table and figure carries."""
    commit = git_commit()
    script = Path(sys.argv[0]).resolve().relative_to(REPO)
    command = " ".join(["python", str(script), *sys.argv[1:]])
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"`{command}` at commit {commit}, 2-core CPU (shared), 1 torch thread, {date}"


def mlp(sizes: list[int]) -> nn.Sequential:
    """Unconstrained ReLU MLP with the given layer sizes."""
    modules: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        modules.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            modules.append(nn.ReLU())
    return nn.Sequential(*modules)


def lipschitz_net(sizes: list[int], lam: float, group_size: int = 2, kind: str = "inf") -> nn.Sequential:
    """GroupSort net, l1 -> linf Lipschitz constant lam (first layer one-inf, then `kind`)."""
    return nn.Sequential(*lipschitz_stack(sizes, kind, lam, group_size, first_kind="one-inf"))


def monotone_net(sizes: list[int], lam: float, monotone: list[int], group_size: int = 2) -> MonotonicWrapper:
    return MonotonicWrapper(lipschitz_net(sizes, lam, group_size), lam, monotone)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fit(
    model: nn.Module,
    loss_fn: Callable[[nn.Module], torch.Tensor],
    steps: int,
    lr: float,
    select: Callable[[nn.Module], float] | None = None,
    every: int = 50,
) -> tuple[nn.Module, int]:
    """Full-batch Adam. With `select` (lower is better, e.g. validation loss) the state with the
    best score, checked every `every` steps, is restored; returns (model, chosen step)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    best_score, best_state, best_step = float("inf"), None, steps
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss_fn(model).backward()
        opt.step()
        if select is not None and (step % every == 0 or step == steps):
            model.eval()
            with torch.no_grad():
                score = select(model)
            model.train()
            if score < best_score:
                best_score, best_state, best_step = score, copy.deepcopy(model.state_dict()), step
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval(), best_step


def mean_std(values) -> str:
    t = torch.as_tensor(list(values), dtype=torch.float64)
    return f"{t.mean():.3f} ± {t.std(unbiased=True) if t.numel() > 1 else 0.0:.3f}"


def save_figure(fig, text: str, name: str, dpi: int, bottom: float | None = None) -> None:
    """Put the provenance line under a figure and save it in results/lipschitz/.

    bottom: the strip tight_layout leaves free for that line (None: keep the figure's layout).
    """
    fig.text(0.01, 0.005, text.replace("`", ""), fontsize=6, ha="left", va="bottom", wrap=True)
    if bottom is not None:
        fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(RESULTS / name, dpi=dpi)
