"""Method name -> its settings, server Strategy and client objective; `method.name` selects one.
A new method is one module (settings dataclass, strategy, objective) and one line here."""

from __future__ import annotations

from dataclasses import dataclass

from strategies.base import FederatedStrategy, MethodConfig
from strategies.fedavg import FedAvgObjective, FedAvgStrategy
from strategies.feddyn import FedDynConfig, FedDynObjective, FedDynStrategy
from strategies.fedpan import FedPanConfig, FedPanObjective, FedPanStrategy
from strategies.fedprox import FedProxConfig, FedProxObjective, FedProxStrategy
from strategies.fedsign import FedSignConfig, FedSignObjective, FedSignStrategy
from strategies.moon import MoonConfig, MoonObjective, MoonStrategy
from strategies.objective import ClientObjective


@dataclass(frozen=True)
class Method:
    config: type[MethodConfig]  # its `method.*` settings with their defaults
    strategy: type[FederatedStrategy]
    objective: type[ClientObjective]
    uses_pan: bool = False  # FedPAN: the model carries fixed position masks


METHODS: dict[str, Method] = {method.config.name: method for method in (  # keyed by the config's name
    Method(MethodConfig, FedAvgStrategy, FedAvgObjective),
    Method(FedProxConfig, FedProxStrategy, FedProxObjective),
    Method(MoonConfig, MoonStrategy, MoonObjective),
    Method(FedDynConfig, FedDynStrategy, FedDynObjective),
    Method(FedPanConfig, FedPanStrategy, FedPanObjective, uses_pan=True),
    Method(FedSignConfig, FedSignStrategy, FedSignObjective),
)}
METHOD_NAMES = tuple(METHODS)


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; accepted: {', '.join(METHOD_NAMES)}")
    return METHODS[name]
