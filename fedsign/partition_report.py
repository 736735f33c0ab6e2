"""The partition summary a run saves: per-client class counts as JSON and as a plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedsign.partition import mean_label_entropy


def write_partition_report(counts: np.ndarray, classes: tuple[str, ...], scheme: str, alpha: float,
                           folder: Path) -> None:
    summary = {
        "scheme": scheme, "alpha": alpha, "classes": list(classes),
        "num_clients": int(counts.shape[0]), "sizes": counts.sum(axis=1).tolist(),
        "class_counts": counts.tolist(), "mean_label_entropy": mean_label_entropy(counts),
    }
    (folder / "partition.json").write_text(json.dumps(summary, indent=1))
    _plot(counts, classes, scheme, alpha, folder / "partition.png")


def _plot(counts: np.ndarray, classes: tuple[str, ...], scheme: str, alpha: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = counts.shape[0]
    fig, ax = plt.subplots(figsize=(min(16, 3 + 0.12 * n), 3.6))
    bottom = np.zeros(n)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for c, name in enumerate(classes):
        ax.bar(np.arange(n), counts[:, c], bottom=bottom, width=0.9, color=cmap(c % cmap.N), label=name)
        bottom += counts[:, c]
    ax.set_xlabel("client")
    ax.set_ylabel("samples")
    ax.set_title(f"{scheme} partition, alpha = {alpha:g}: class counts per client")
    ax.legend(ncol=min(5, len(classes)), fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
