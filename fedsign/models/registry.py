"""Model names -> constructors; every model has `classifier` (its last layer) and
`forward(x, return_features=False)` returning logits, or (penultimate features, logits)."""

from __future__ import annotations

from torch import nn

from fedsign.data.specs import DatasetSpec
from fedsign.errors import ConfigError
from fedsign.models.init import init_weights
from fedsign.models.pan import PanSpec
from fedsign.models.resnet import ResNet20
from fedsign.models.small import LogReg, SmallCNN
from fedsign.models.vgg import LAYOUTS, VGG

MODEL_NAMES = ("vgg8", "vgg8_bn", "vgg11", "vgg11_bn", "vgg16_bn", "resnet20", "smallcnn", "smallcnn_bn", "logreg")
NEEDS_32PX = ("vgg8", "vgg8_bn", "vgg11", "vgg11_bn", "vgg16_bn", "resnet20")


def build_model(name: str, spec: DatasetSpec, pan: PanSpec | None = None) -> nn.Module:
    """A freshly initialised model for the dataset; seed torch beforehand for a reproducible init."""
    if name not in MODEL_NAMES:
        raise ConfigError(f"model.name={name!r} is not known; accepted: {', '.join(MODEL_NAMES)}")
    if name in NEEDS_32PX and spec.image_size != 32:
        raise ConfigError(
            f"model.name={name} needs 32x32 images, but {spec.name} has {spec.image_size}x{spec.image_size};"
            " use smallcnn or logreg for it"
        )
    if name == "logreg" and pan is not None:
        raise ConfigError("model.name=logreg has no conv layers, so FedPAN (method.name=fedpan) cannot use it")
    base, _, suffix = name.partition("_")
    bn = suffix == "bn"
    if base in LAYOUTS:
        model: nn.Module = VGG(LAYOUTS[base], spec.num_classes, spec.channels, bn, pan)
    elif base == "resnet20":
        model = ResNet20(spec.num_classes, spec.channels, pan)
    elif base == "smallcnn":
        model = SmallCNN(spec.num_classes, spec.channels, bn, pan)
    else:
        model = LogReg(spec.num_classes, spec.channels * spec.image_size**2)
    init_weights(model)
    return model


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
