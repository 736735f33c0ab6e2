"""Every method is selectable by name as a Hydra group (tests/test_config.py checks that Flower's
run_config gives the same values), and the Table 1 experiment composes to the paper's setting with
its multirun sweep."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module

from fedsign.methods import make_objective, make_strategy, pan_spec
from sim.main import to_run_config
from strategies.registry import METHOD_NAMES, METHODS


def _compose(overrides, hydra=False):
    with initialize_config_module(config_module="sim.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=hydra)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_hydra_method_group_selects_the_method(name):
    cfg = to_run_config(_compose([f"method={name}"]))
    assert cfg.method.name == name
    assert isinstance(make_objective(cfg), METHODS[name].objective)
    assert isinstance(make_strategy(cfg, ["w"], {0: 10}), METHODS[name].strategy)
    assert (pan_spec(cfg) is not None) == (name == "fedpan")


def test_table1_experiment_is_the_papers_setting_and_sweeps_datasets_and_alphas():
    hcfg = _compose(["+experiment=table1", "method=fedsign"], hydra=True)
    cfg = to_run_config(hcfg)
    assert (cfg.federation.num_clients, cfg.clients_per_round, cfg.train.rounds) == (100, 10, 200)
    assert (cfg.train.local_epochs, cfg.train.batch_size, cfg.model.name) == (5, 64, "vgg8")
    assert not cfg.train.weighted and cfg.method.name == "fedsign"
    sweep = hcfg.hydra.sweeper.params
    assert sweep["dataset"] == "cifar10,cinic10" and sweep["partition.alpha"] == "10.0,1.0,0.5"
