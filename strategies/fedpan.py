"""FedPAN (Li et al., CVPR 2022): position-aware neurons, i.e. fixed per-channel sin masks after each
conv (fedsign/models/pan.py, built from method.pan_op/pan_t/pan_a). The masks are non-persistent
buffers: never trained, never in an exchanged state, so the objective and the server are FedAvg's."""

from strategies.base import FederatedStrategy
from strategies.objective import ClientObjective


class FedPanStrategy(FederatedStrategy):
    """Mean of the clients' models; the masks never reach the server."""


class FedPanObjective(ClientObjective):
    """L_ce of the masked model (the masks live inside the model, `Method.uses_pan`)."""
