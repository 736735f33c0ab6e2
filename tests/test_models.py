"""Models: shapes, the authors' parameter counts, initialisation, FedPAN masks, what is exchanged."""

from __future__ import annotations

import math

import pytest
import torch

from fedsign.data.specs import DATASETS
from fedsign.errors import CheckpointError, ConfigError
from fedsign.models import (MODEL_NAMES, PanSpec, build_model, exchanged_state, has_batch_norm,
                            load_exchanged)

CIFAR, DIGITS = DATASETS["cifar10"], DATASETS["digits"]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_shapes_and_features(name):
    spec = DIGITS if name in ("smallcnn", "smallcnn_bn", "logreg") else CIFAR
    model = build_model(name, spec)
    x = torch.randn(3, spec.channels, spec.image_size, spec.image_size)
    z, logits = model(x, return_features=True)
    assert logits.shape == (3, 10) and z.shape == (3, model.classifier.in_features)
    assert torch.equal(model(x), logits)
    assert torch.allclose(model.classifier(z), logits)


@pytest.mark.parametrize("name, count", [("vgg8", 3_915_914), ("resnet20", 272_474)])
def test_parameter_counts_of_the_authors_models(name, count):
    assert sum(p.numel() for p in build_model(name, CIFAR).parameters()) == count


def test_vgg16_bn_parameter_count_by_hand():
    """VGG16 configuration D: 13 convs 3x3 with bias, BN (weight + bias) after each, Linear(512, 10)."""
    convs = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
             (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    conv = sum(cin * cout * 9 + cout for cin, cout in convs)  # 14,714,688: VGG16's conv part
    bn = sum(2 * cout for _, cout in convs)  # 8,448
    head = 512 * 10 + 10
    assert conv + bn + head == 14_728_266
    model = build_model("vgg16_bn", CIFAR)
    assert sum(p.numel() for p in model.parameters()) == 14_728_266
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 13
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == 5


def test_initialisation_follows_the_authors():
    torch.manual_seed(0)
    model = build_model("vgg8", CIFAR)
    assert model.classifier.weight.std().item() == pytest.approx(0.01, rel=0.05)
    conv = model.features[0]
    fan_out = conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.1)
    assert all(float(m.bias.abs().max()) == 0 for m in (conv, model.classifier))


def test_pan_masks_are_fixed_and_never_exchanged():
    spec = PanSpec("mul", 4, 0.1)
    model = build_model("vgg8", CIFAR, spec)
    masks = [m for m in model.modules() if type(m).__name__ == "PositionMask"]
    assert len(masks) == 5
    j = torch.arange(64, dtype=torch.float32)
    assert torch.allclose(masks[0].mask.flatten(), 0.1 * torch.sin(2 * math.pi * 4 * j / 64))
    assert not any("mask" in k for k in model.state_dict())
    assert set(exchanged_state(model)) == set(exchanged_state(build_model("vgg8", CIFAR)))
    h = torch.ones(1, 64, 2, 2)
    assert torch.allclose(masks[0](h), h * (1 + masks[0].mask))
    add = build_model("smallcnn", DIGITS, PanSpec("add", 1, 0.5))
    first = [m for m in add.modules() if type(m).__name__ == "PositionMask"][0]
    assert torch.allclose(first(torch.zeros(1, 16, 1, 1)), first.mask)


def test_exchanged_state_holds_bn_statistics_but_no_counters():
    model = build_model("smallcnn_bn", DIGITS)
    state = exchanged_state(model)
    assert has_batch_norm(model) and not has_batch_norm(build_model("smallcnn", DIGITS))
    assert any(k.endswith("running_mean") for k in state)
    assert not any(k.endswith("num_batches_tracked") for k in state)
    other = build_model("smallcnn_bn", DIGITS)
    load_exchanged(other, state)
    assert all(torch.equal(other.state_dict()[k], v) for k, v in state.items())


def test_load_exchanged_refuses_mismatches():
    model = build_model("smallcnn", DIGITS)
    state = exchanged_state(model)
    with pytest.raises(CheckpointError, match="missing"):
        load_exchanged(model, {k: v for k, v in state.items() if k != "classifier.bias"})
    bad = dict(state, **{"classifier.bias": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="classifier.bias"):
        load_exchanged(model, bad)


def test_models_that_need_32px_refuse_digits():
    with pytest.raises(ConfigError, match="32x32"):
        build_model("vgg8", DIGITS)
