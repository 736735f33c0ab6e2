"""RunConfig: flat <-> typed, validation errors, and the two config sources kept in sync."""

from __future__ import annotations

import tomllib

import pytest
from hydra import compose, initialize_config_module

from fedsign.config import RunConfig
from fedsign.errors import ConfigError
from sim.flatten import hydra_to_flat
from tests.conftest import ROOT


def test_flat_round_trip_and_coercion():
    cfg = RunConfig.from_flat({"train.rounds": 7.0, "partition.alpha": 1, "train.weighted": "true",
                               "method.name": "fedavg", "seed": "3"})
    assert cfg.train.rounds == 7 and isinstance(cfg.train.rounds, int)
    assert cfg.partition.alpha == 1.0 and isinstance(cfg.partition.alpha, float)
    assert cfg.train.weighted is True and cfg.seed == 3
    assert RunConfig.from_flat(cfg.to_flat()) == cfg


@pytest.mark.parametrize("flat, words", [
    ({"train.roundz": 3}, ["unknown config key 'train.roundz'", "train.rounds"]),
    ({"dataset.name": "mnist"}, ["dataset.name='mnist'", "cifar10", "cinic10", "digits"]),
    ({"model.name": "vgg99"}, ["model.name='vgg99'", "vgg8"]),
    ({"method.name": "fedbogus"}, ["method.name='fedbogus'", "fedavg"]),
    ({"partition.alpha": 0}, ["partition.alpha=0", "> 0"]),
    ({"federation.fraction": 1.5}, ["federation.fraction=1.5", "(0, 1]"]),
    ({"federation.fraction": 0}, ["federation.fraction=0"]),
    ({"train.rounds": 0}, ["train.rounds=0", ">= 1"]),
    ({"train.rounds": 2.5}, ["whole number"]),
    ({"train.lr": "fast"}, ["train.lr='fast'", "number"]),
    ({"train.weighted": "maybe"}, ["true or false"]),
    ({"device": "tpu"}, ["device='tpu'"]),
])
def test_bad_values_name_key_and_accepted(flat, words):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_flat(flat)
    for word in words:
        assert word in str(err.value)


def test_clients_per_round():
    assert RunConfig.from_flat({"federation.num_clients": 100, "federation.fraction": 0.1}).clients_per_round == 10
    assert RunConfig.from_flat({"federation.num_clients": 3, "federation.fraction": 0.1}).clients_per_round == 1


def test_pyproject_run_config_lists_every_key():
    """`flwr run . --run-config k=v` only accepts keys present in pyproject.toml."""
    flwr_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert set(flwr_cfg) == set(RunConfig().to_flat())
    RunConfig.from_flat(flwr_cfg)  # and the defaults there are valid


def test_hydra_config_flattens_to_a_complete_valid_run_config():
    with initialize_config_module(config_module="sim.conf", version_base="1.3"):
        hcfg = compose(config_name="config", overrides=["dataset=cifar10", "model=vgg8", "train.rounds=2"])
    flat = hydra_to_flat(hcfg)
    known = set(RunConfig().to_flat())
    assert set(flat) <= known
    # a method group sets only its own keys; every other key is spelled out in the Hydra config
    assert {k for k in known if not k.startswith("method.")} <= set(flat)
    cfg = RunConfig.from_flat(flat)
    assert (cfg.dataset.name, cfg.model.name, cfg.train.rounds) == ("cifar10", "vgg8", 2)
