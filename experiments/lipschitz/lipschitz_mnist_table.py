"""Table of the short comparison runs: Lipschitz GroupSort MLP vs IBP-trained MLP of the same
shape (two hidden layers of 512), read from the run folders' metrics.json and .hydra/overrides.yaml.

    python experiments/lipschitz/lipschitz_mnist_table.py outputs/lipschitz_cmp outputs/lipschitz_cmp_cifar
Writes results/lipschitz/mnist_certified.md (MNIST and, when given, CIFAR-10 runs).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml
from lipschitz_common import RESULTS, provenance

ANCHORS = (
    "docs/ANCHORS.md: SortNet certified accuracy 98.14 / 93.40 % (MNIST 0.1 / 0.3), 56.94 / 40.39 % "
    "(CIFAR 2/255 / 8/255); IBP (DeepMind) verified error 2.92 / 8.21 % and 55.88 / 68.44 %"
)


def main(folders: list[Path]) -> None:
    rows = []
    for metrics_file in sorted(f for folder in folders for f in folder.glob("*/metrics.json")):
        run = metrics_file.parent
        m = json.loads(metrics_file.read_text())
        overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
        key = f"{m['eps']:g}"
        verified = "; ".join(f"{b} {100 * c[key]:.1f}" for b, c in m["verified_err"].items())
        rows.append(
            f"| {m['dataset']} | {m['method']} | {m['model']} | {key} | {100 * m['clean_err']:.1f} | {100 * m['pgd_err'][key]:.1f} | "
            f"{verified} | {m['train_samples']} / {m['epochs']} ep / {m['seconds']:.0f} s | "
            f"`python train.py {' '.join(o for o in overrides if not o.startswith('hydra.'))}` |"
        )
    lines = [
        "# Short certified runs (MNIST, CIFAR-10): Lipschitz GroupSort MLP vs IBP MLP of the same shape",
        "",
        f"Table made by {provenance()} from the run folders below.",
        "",
        "Both networks are d-512-512-10 (d = 784 or 3072). These are SHORT runs (10,000 training images,",
        "5 epochs, 1,000 test images, 2-core shared CPU), far from the published budgets: they show that",
        "`method=lipschitz` trains and certifies through the same CLI, not what either method reaches.",
        "Errors in %. The `lipschitz` column counts a sample certified if the Lipschitz bound or IBP or",
        f"CROWN-IBP certifies it. Published reference: {ANCHORS}.",
        "",
        "| dataset | method | model | eps | clean err | PGD err | verified err | train samples / epochs / time | command |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
    ]
    (RESULTS / "mnist_certified.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main([Path(a) for a in sys.argv[1:]] or [Path("outputs/lipschitz_cmp")])
