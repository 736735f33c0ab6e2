"""Every method is selectable by name as a Hydra group (tests/test_config.py checks that Flower's
run_config gives the same values), and the Table 1 experiment composes to the paper's setting with
its multirun sweep."""

from __future__ import annotations

import pytest
from fedsign.methods import make_objective, make_strategy, pan_spec
from sim.main import compose_hydra, to_run_config
from strategies.registry import METHOD_NAMES, METHODS


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_hydra_method_group_selects_the_method(name):
    cfg = to_run_config(compose_hydra([f"method={name}"]))
    assert cfg.method.name == name
    assert isinstance(make_objective(cfg), METHODS[name].objective)
    assert isinstance(make_strategy(cfg, ["w"], {0: 10}), METHODS[name].strategy)
    assert (pan_spec(cfg) is not None) == (name == "fedpan")


def test_table1_experiment_is_the_papers_setting_and_sweeps_its_cells():
    hcfg = compose_hydra(["+experiment=table1", "method=fedsign"], return_hydra_config=True)
    cfg = to_run_config(hcfg)
    assert (cfg.federation.num_clients, cfg.clients_per_round, cfg.train.rounds) == (100, 10, 200)
    assert (cfg.train.local_epochs, cfg.train.batch_size, cfg.model.name) == (5, 64, "vgg8")
    assert not cfg.train.weighted and cfg.method.name == "fedsign"
    assert (cfg.partition.scheme, cfg.partition.holdout, cfg.train.lr) == ("authors", 0.2, 0.03)
    sweep = hcfg.hydra.sweeper.params
    assert sweep["dataset"] == "cifar10,cinic10" and sweep["partition.alpha"] == "0.5,1.0,10.0"
    assert sweep["seed"] == "0,1,2" and set(sweep["method"].split(",")) == set(METHOD_NAMES)
