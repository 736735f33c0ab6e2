"""Models of the paper's experiments (VGG8/11, ResNet20, small CPU models), FedPAN masks, exchange."""

from fedsign.models.pan import PanSpec
from fedsign.models.registry import MODEL_NAMES, build_model, has_batch_norm
from fedsign.models.state import exchanged_state, load_exchanged, parameter_names

__all__ = ["MODEL_NAMES", "PanSpec", "build_model", "exchanged_state", "has_batch_norm",
           "load_exchanged", "parameter_names"]
