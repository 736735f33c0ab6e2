"""Parameter groups a probe can be restricted to (paper Sect. 4.1 "various parameter groups", Fig. 8).

ALL, CLF (the last layer), FEAT (all but CLF), LAYER1 (the first quarter of the weight layers, at least
one, with the norm layers that follow them), CONV, BN; anything else is a comma-separated list of
fnmatch patterns over parameter names (e.g. 'features.0.*,classifier.weight').
"""

from __future__ import annotations

import fnmatch
import math

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fedsign.errors import ConfigError

GROUPS = ("ALL", "CLF", "FEAT", "LAYER1", "CONV", "BN")
# The paper's Fig. 8 parameter-distribution categories.
CATEGORIES = ("bn_weight", "clf_weight", "clf_bias", "other_weight", "other_bias")
NORM_TYPES = (_BatchNorm, nn.GroupNorm, nn.LayerNorm)
WEIGHT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _owned(model: nn.Module, types: tuple) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, types)]


def _params_of(prefix: str, module: nn.Module) -> list[str]:
    return [f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False)]


def classifier_names(model: nn.Module) -> list[str]:
    """The last layer: `model.classifier` when it exists (fedsign models), else the last Linear."""
    if isinstance(getattr(model, "classifier", None), nn.Module):
        return [f"classifier.{n}" for n, _ in model.classifier.named_parameters()]
    linears = _owned(model, (nn.Linear,))
    if not linears:
        raise ConfigError("the model has no classifier (no `classifier` attribute and no nn.Linear)")
    return _params_of(*linears[-1])


def _layer1_names(model: nn.Module) -> list[str]:
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, WEIGHT_TYPES + NORM_TYPES)]
    weight_layers = [i for i, (_, m) in enumerate(layers) if isinstance(m, WEIGHT_TYPES)]
    if not weight_layers:
        return []
    stop_at = max(1, math.ceil(len(weight_layers) / 4))
    end = weight_layers[stop_at] if stop_at < len(weight_layers) else len(layers)
    return [p for name, m in layers[:end] for p in _params_of(name, m)]


def group_names(model: nn.Module, group: str) -> list[str]:
    """Names of the trainable float parameters in `group`, in the model's parameter order."""
    order = [n for n, p in model.named_parameters() if p.is_floating_point()]
    key = group.strip()
    if key.upper() in GROUPS:
        key = key.upper()
        clf = set(classifier_names(model))
        if key == "ALL":
            chosen = set(order)
        elif key == "CLF":
            chosen = clf
        elif key == "FEAT":
            chosen = set(order) - clf
        elif key == "LAYER1":
            chosen = set(_layer1_names(model))
        elif key == "CONV":
            chosen = {p for name, m in _owned(model, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) for p in _params_of(name, m)}
        else:
            chosen = {p for name, m in _owned(model, (_BatchNorm,)) for p in _params_of(name, m)}
    else:
        patterns = [p.strip() for p in key.split(",") if p.strip()]
        chosen = {n for n in order if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)}
    names = [n for n in order if n in chosen]
    if not names:
        raise ConfigError(f"parameter group {group!r} selects no parameter of this model; "
                          f"use one of {', '.join(GROUPS)} or name patterns such as 'features.0.*'")
    return names


def category_of(model: nn.Module) -> dict[str, str]:
    """Parameter name -> one of CATEGORIES (Sect. 4.2.2: BN weight, CLF weight/bias, other weight/bias);
    BN biases belong to none of them ("other" means layers aside from BN and CLF)."""
    clf = set(classifier_names(model))
    bn = {p for name, m in _owned(model, (_BatchNorm,)) for p in _params_of(name, m)}
    out = {}
    for name, p in model.named_parameters():
        if name in bn:
            if name.endswith("weight"):
                out[name] = "bn_weight"
        elif name in clf:
            out[name] = "clf_bias" if p.dim() == 1 else "clf_weight"
        else:
            out[name] = "other_bias" if p.dim() == 1 else "other_weight"
    return out
