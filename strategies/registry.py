"""Method name -> (server Strategy, client objective); `method.name` selects one."""

from __future__ import annotations

from dataclasses import dataclass

from strategies.base import FederatedStrategy
from strategies.fedavg import FedAvgObjective, FedAvgStrategy
from strategies.feddyn import FedDynObjective, FedDynStrategy
from strategies.fedpan import FedPanObjective, FedPanStrategy
from strategies.fedprox import FedProxObjective, FedProxStrategy
from strategies.fedsign import FedSignObjective, FedSignStrategy
from strategies.moon import MoonObjective, MoonStrategy
from strategies.objective import ClientObjective


@dataclass(frozen=True)
class Method:
    name: str
    strategy: type[FederatedStrategy]
    objective: type[ClientObjective]
    uses_pan: bool = False  # FedPAN: the model carries fixed position masks


METHODS: dict[str, Method] = {
    "fedavg": Method("fedavg", FedAvgStrategy, FedAvgObjective),
    "fedprox": Method("fedprox", FedProxStrategy, FedProxObjective),
    "moon": Method("moon", MoonStrategy, MoonObjective),
    "feddyn": Method("feddyn", FedDynStrategy, FedDynObjective),
    "fedpan": Method("fedpan", FedPanStrategy, FedPanObjective, uses_pan=True),
    "fedsign": Method("fedsign", FedSignStrategy, FedSignObjective),
}
METHOD_NAMES = tuple(METHODS)


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; accepted: {', '.join(METHOD_NAMES)}")
    return METHODS[name]
