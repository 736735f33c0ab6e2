"""A run's curves at a glance: accuracy, loss and sign statistics per evaluated round."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_run(rows: list[dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in rows]
    panels = [("accuracy", "test accuracy"), ("loss", "test loss"),
              ("sign_flip_fraction", "sign flips per client update"),
              ("global_sign_consistency", "sign consistency of consecutive global models")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (key, label) in zip(axes, panels):
        values = [r.get(key) for r in rows]
        ax.plot([x for x, v in zip(rounds, values) if v is not None],
                [v for v in values if v is not None], marker=".")
        ax.set_xlabel("round")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
