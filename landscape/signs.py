"""Sign consistency between checkpoints (paper Sect. 6.1: SSR per group) and the Fig. 8 parameter
distribution summary (mean and std of BN weight, CLF weight, CLF bias, other weight, other bias)."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from fedsign.errors import ConfigError
from landscape.directions import Params
from landscape.groups import CATEGORIES, GROUPS, category_of, group_names
from landscape.result import ProbeResult


def sign_consistency_ratio(a: Params, b: Params, names: list[str]) -> float:
    """SSR: fraction of the elements of `names` whose signs agree (sign(0) = 0 agrees only with 0)."""
    same = sum(int((torch.sign(a[n]) == torch.sign(b[n].to(a[n].device))).sum()) for n in names)
    total = sum(a[n].numel() for n in names)
    return same / total


def groups_present(model: nn.Module) -> list[str]:
    present = []
    for g in GROUPS:
        try:
            group_names(model, g)
            present.append(g)
        except ConfigError:  # a group this model lacks (e.g. BN) is simply not reported
            continue
    return present


def ssr_table(model: nn.Module, params: dict[str, Params], groups: list[str] | None = None) -> dict:
    """{'A-B': {group: SSR}} for every pair of the labelled parameter dicts."""
    groups = groups or groups_present(model)
    table = {}
    for (la, a), (lb, b) in itertools.combinations(params.items(), 2):
        table[f"{la}-{lb}"] = {g: sign_consistency_ratio(a, b, group_names(model, g)) for g in groups}
    return table


def distribution_summary(model: nn.Module, params: Params) -> dict[str, dict[str, float]]:
    """Mean, std, fraction positive and count of the parameters in each Fig. 8 category."""
    category = category_of(model)
    out = {}
    for cat in CATEGORIES:
        values = [params[n].detach().double().flatten() for n in params if category.get(n) == cat]
        if not values:
            continue
        v = torch.cat(values)
        out[cat] = {"mean": float(v.mean()), "std": float(v.std()) if v.numel() > 1 else 0.0,
                    "positive": float((v > 0).double().mean()), "count": int(v.numel())}
    return out


def signs(model: nn.Module, params: dict[str, Params], metadata: dict | None = None) -> ProbeResult:
    """SSR between every pair of labelled checkpoints, per group, and each one's distribution summary."""
    arrays = {"ssr": ssr_table(model, params),
              "distribution": {label: distribution_summary(model, p) for label, p in params.items()}}
    return ProbeResult("signs", arrays, metadata or {})
