"""Hydra/OmegaConf config -> the flat dotted keys of Flower's run_config."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def hydra_to_flat(cfg: DictConfig) -> dict[str, Any]:
    tree = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(tree, dict)
    tree.pop("hydra", None)
    return flatten(tree)
