"""RunConfig: flat <-> typed, validation errors, and every config source derived from the one
definition (fedsign/config.py + each method's dataclass): Hydra's structured config, pyproject.toml's
[tool.flwr.app.config] and Flower's `--run-config` parsing agree value for value, for every method."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest
from flwr.common.config import fuse_dicts, parse_config_args

from fedsign.config import LOCAL_FEDERATION, RunConfig, flwr_app_defaults, method_keys, pyproject_section
from fedsign.errors import ConfigError
from sim.main import compose_config
from strategies.registry import METHOD_NAMES, METHODS
from tests.conftest import ROOT


def _hydra(overrides: list[str]) -> RunConfig:
    """What `fedsign-sim OVERRIDES...` runs."""
    return compose_config(overrides)


def _flower(run_config: str) -> RunConfig:
    """What the ServerApp receives from `flwr run . --run-config "<run_config>"`: pyproject's
    defaults fused with the overrides, parsed as Flower parses them."""
    defaults = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    return RunConfig.from_flat(fuse_dicts(defaults, parse_config_args([run_config])))


def test_flat_round_trip_and_coercion():
    cfg = RunConfig.from_flat({"train.rounds": "7", "partition.alpha": 1, "train.weighted": "true",
                               "method.name": "fedavg", "seed": "3"})
    assert cfg.train.rounds == 7 and isinstance(cfg.train.rounds, int)
    assert cfg.partition.alpha == 1.0 and isinstance(cfg.partition.alpha, float)
    assert cfg.train.weighted is True and cfg.seed == 3
    assert RunConfig.from_flat(cfg.to_flat()) == cfg
    moon = RunConfig.from_flat({"method.name": "moon", "method.tau": "0.25"})
    assert RunConfig.from_flat(moon.to_flat()) == moon and moon.method.tau == 0.25


@pytest.mark.parametrize("flat, words", [
    ({"train.roundz": 3}, ["unknown config key 'train.roundz'", "train.rounds"]),
    ({"dataset.name": "mnist"}, ["dataset.name='mnist'", "cifar10", "cinic10", "digits"]),
    ({"model.name": "vgg99"}, ["model.name='vgg99'", "vgg8"]),
    ({"method.name": "fedbogus"}, ["method.name='fedbogus'", "fedavg"]),
    ({"partition.alpha": 0}, ["partition.alpha=0", "> 0"]),
    ({"partition.holdout": 1.0}, ["partition.holdout=1.0", "[0, 1)"]),
    ({"federation.fraction": 1.5}, ["federation.fraction=1.5", "(0, 1]"]),
    ({"federation.fraction": 0}, ["federation.fraction=0"]),
    ({"train.rounds": 0}, ["train.rounds=0", ">= 1"]),
    ({"train.rounds": 2.5}, ["train.rounds=2.5", "whole number"]),
    ({"train.lr": "fast"}, ["train.lr='fast'", "number"]),
    ({"train.lr": "nan"}, ["train.lr=nan"]),
    ({"federation.round_timeout": "inf"}, ["federation.round_timeout=inf", "finite"]),
    ({"train.weighted": "maybe"}, ["train.weighted='maybe'", "true or false"]),
    ({"device": "tpu"}, ["device='tpu'"]),
    ({"seed": -3}, ["seed=-3", "[0, 2^63)"]),
    ({"method.mu": 0.1}, ["method.mu is not a setting of method.name=fedavg", "none"]),
    ({"method.name": "moon", "method.gamma": 0.1}, ["method.gamma", "method.mu, method.tau"]),
    ({"method.name": "moon", "method.tau": 0}, ["method.tau=0", "> 0"]),
    ({"method.name": "feddyn", "method.alpha": 0}, ["method.alpha=0", "> 0"]),
    ({"method.name": "feddyn", "method.variant": "x"}, ["method.variant='x'", "acar, fedrepo"]),
    ({"method.name": "fedsign", "method.sign_reduction": "median"}, ["median", "rms"]),
    ({"federation.min_replies": 30}, ["federation.min_replies=30", "10 clients sampled"]),
    ({"train": 3, "train.rounds": 2}, ["do not form one config"]),
])
def test_bad_values_name_key_and_accepted(flat, words):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_flat(flat)
    for word in words:
        assert word in str(err.value)
    assert "\n" not in str(err.value)


def test_clients_per_round():
    assert RunConfig.from_flat({"federation.num_clients": 100, "federation.fraction": 0.1}).clients_per_round == 10
    assert RunConfig.from_flat({"federation.num_clients": 3, "federation.fraction": 0.1}).clients_per_round == 1


def test_pyproject_run_config_is_the_generated_one_value_for_value():
    """pyproject.toml holds exactly what `python -m fedsign.config --write` writes: RunConfig's
    defaults (with the local federation's two SuperNodes) and every method key, types included."""
    flwr_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    expected = flwr_app_defaults()
    assert list(flwr_cfg) == list(expected)
    for key, value in expected.items():
        assert flwr_cfg[key] == value and type(flwr_cfg[key]) is type(value), key
    assert pyproject_section() in (ROOT / "pyproject.toml").read_text()
    defaults = RunConfig().to_flat()
    assert {k: v for k, v in flwr_cfg.items() if k in defaults and k not in LOCAL_FEDERATION} == {
        k: v for k, v in defaults.items() if k not in LOCAL_FEDERATION}
    assert set(flwr_cfg) - set(defaults) == set(method_keys()) - {"method.name"}


def test_hydra_default_config_is_runconfigs_defaults():
    assert _hydra([]) == RunConfig()


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_method_has_the_same_settings_from_every_source(name):
    """`fedsign-sim method=NAME`, `flwr run . --run-config "method.name='NAME'"` and the method's
    dataclass give the same values for every key (the local federation's size aside)."""
    expected = dataclasses.replace(RunConfig(), method=METHODS[name].config()).to_flat()
    from_hydra = _hydra([f"method={name}"]).to_flat()
    from_flower = _flower(f"method.name='{name}'").to_flat()
    assert from_hydra == expected
    assert {**from_flower, **{k: expected[k] for k in LOCAL_FEDERATION}} == expected
    assert {k for k in expected if k.startswith("method.")} == {
        f"method.{f.name}" for f in dataclasses.fields(METHODS[name].config)}


def test_method_settings_are_set_the_same_way_in_both_sources():
    assert _hydra(["method=moon", "method.mu=0.3"]).method == _flower("method.name='moon' method.mu=0.3").method
    assert _hydra(["method=moon"]).method.mu == 1.0 and _hydra(["method=fedprox"]).method.mu == 0.01
    with pytest.raises(ConfigError, match="method.mu is not a setting of method.name=fedavg"):
        _flower("method.mu=0.3")


def test_environment_is_the_fallback_dataset_root(monkeypatch, tmp_path):
    from fedsign.server_app import resolve_paths

    monkeypatch.setenv("FEDSIGN_CIFAR10", str(tmp_path))
    cfg = resolve_paths(RunConfig.from_flat({"dataset.name": "cifar10", "out": str(tmp_path / "run")}))
    assert cfg.dataset.root == str(tmp_path.resolve())
    given = resolve_paths(RunConfig.from_flat({"dataset.name": "cifar10", "dataset.root": "/data/c10",
                                               "out": str(tmp_path / "run")}))
    assert given.dataset.root == "/data/c10"


def test_docs_list_every_method_setting_with_its_default():
    """docs/methods.md's table of settings is the dataclasses' (a changed default shows up here)."""
    text = (ROOT / "docs" / "methods.md").read_text()
    for name, method in METHODS.items():
        rows = [line for line in text.splitlines() if line.startswith(f"| `{name}` |")]
        assert rows, f"docs/methods.md has no row for method {name!r}: add its formula and settings"
        row = rows[0]
        for f in dataclasses.fields(method.config):
            if f.name != "name":
                assert f"`method.{f.name}` ({f.default})" in row, (name, f.name)


def test_a_config_is_parsed_once_and_every_caller_gets_its_own_copy():
    flat = RunConfig.from_flat({"method.name": "moon"}).to_flat()
    first, second = RunConfig.from_flat(flat), RunConfig.from_flat(flat)
    assert first == second and first is not second and first.method is not second.method
    first.method.mu = 7.0
    assert RunConfig.from_flat(flat).method.mu == 1.0
    RunConfig.from_flat({"train.rounds": 2})  # cached; 2.0 is still refused: the cache tells 2 and 2.0 apart
    with pytest.raises(ConfigError, match="whole number"):
        RunConfig.from_flat({"train.rounds": 2.0})
