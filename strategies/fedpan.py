"""FedPAN (Li et al., CVPR 2022): position-aware neurons, i.e. fixed per-channel masks
m_j = sin(2π·T·j/C) right after each conv (fedsign/models/pan.py builds them from these settings),
additive h + A·m or multiplicative h·(1 + A·m). The masks are non-persistent buffers: never trained,
never in an exchanged state, so the objective and the server are FedAvg's.
Grid (T, op, A) of the FedPAN paper: (1, mul, 0.05), (4, mul, 0.1), (8, mul, 0.15), (1, add, 0.15),
(4, add, 0.25), (8, add, 0.5)."""

from dataclasses import dataclass

from strategies.base import FederatedStrategy, MethodConfig
from strategies.objective import ClientObjective

PAN_OPS = ("add", "mul")


@dataclass
class FedPanConfig(MethodConfig):
    name: str = "fedpan"
    pan_op: str = "mul"  # add: h + A·m | mul: h·(1 + A·m)
    pan_t: float = 1.0  # period T of the sin mask
    pan_a: float = 0.05  # amplitude A

    def __post_init__(self) -> None:
        if self.pan_op not in PAN_OPS:
            raise ValueError(f"method.pan_op={self.pan_op!r} is not known; accepted: {', '.join(PAN_OPS)}")
        if not self.pan_a >= 0:
            raise ValueError(f"method.pan_a={self.pan_a} must be >= 0")


class FedPanStrategy(FederatedStrategy):
    """Mean of the clients' models; the masks never reach the server."""


class FedPanObjective(ClientObjective):
    """L_ce of the masked model (the masks live inside the model, `Method.uses_pan`)."""
