"""The run config: every setting of a run and its default, defined once, with its check.

The run-wide settings are the dataclasses below (and `dataset.*`'s, fedsign.data.loading.DatasetConfig,
which landscape/ uses without Flower); a method's own settings (the `method.*` keys) are the dataclass
in its strategies/ module, found by `method.name` in strategies.registry. Everything
else is derived from these:
- fedsign-sim's Hydra config: structured configs in Hydra's ConfigStore (sim/conf);
- `flwr run .`'s defaults: [tool.flwr.app.config] in pyproject.toml, written by
  `python -m fedsign.config --write` from `flwr_app_defaults()` (a test checks it value for value);
- the flat dotted keys of Flower's run_config, read back by `RunConfig.from_flat` in both apps.
Values are parsed and type-checked by OmegaConf against these dataclasses; each dataclass checks
its own ranges in __post_init__. A bad value is one ConfigError naming the key and what is accepted.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.common.config import flatten_dict, unflatten_dict
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from fedsign.data.loading import DatasetConfig  # the `dataset.*` settings live beside the loader (no flwr import)
from fedsign.errors import ConfigError
from strategies.base import MethodConfig
from strategies.registry import METHOD_NAMES, METHODS

Flat = dict[str, Any]
ENGINES = ("flower", "cohort")
PRECISIONS = ("fp32", "bf16")
STEP_MODES = ("eager", "cuda_graph")
PARTITION_SCHEMES = ("dirichlet", "authors", "iid")
# a running Ray cluster (ray.init's address): auto, or its head's HOST:PORT (the GCS port of `ray start --head`).
# Not Ray Client's ray://HOST:PORT: Flower's simulation never starts its clients through it (it hangs).
RAY_ADDRESS = re.compile(r"auto|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?:([1-9][0-9]{0,4})")


@dataclass
class ModelConfig:
    name: str = "smallcnn"

    def __post_init__(self) -> None:
        from fedsign.models.registry import MODEL_NAMES

        _choice("model.name", self.name, MODEL_NAMES)


@dataclass
class PartitionConfig:
    scheme: str = "dirichlet"  # dirichlet (flwr-datasets) | authors (their per-client Dirichlet) | iid
    alpha: float = 0.5  # Dirichlet concentration α
    seed: int = 0
    min_size: int = 10  # smallest client: dirichlet resamples until met; authors drops smaller clients
    holdout: float = 0.0  # fraction of each client's data kept out of training (its local test set)

    def __post_init__(self) -> None:
        _choice("partition.scheme", self.scheme, PARTITION_SCHEMES)
        _check("partition.alpha", self.alpha, self.alpha > 0, "> 0")
        _check("partition.seed", self.seed, self.seed >= 0, ">= 0")
        _check("partition.min_size", self.min_size, self.min_size >= 0, ">= 0")
        _check("partition.holdout", self.holdout, 0 <= self.holdout < 1, "in [0, 1)")


@dataclass
class FederationConfig:
    num_clients: int = 20
    fraction: float = 0.5  # clients sampled per round: round(fraction x num_clients), at least 1
    min_replies: int = 1  # a round with fewer valid client updates is not aggregated
    round_timeout: float = 3600.0  # seconds the server waits for a round's replies

    def __post_init__(self) -> None:
        _check("federation.num_clients", self.num_clients, self.num_clients >= 1, ">= 1")
        _check("federation.fraction", self.fraction, 0 < self.fraction <= 1, "in (0, 1]")
        _check("federation.min_replies", self.min_replies, self.min_replies >= 1, ">= 1")
        _check("federation.round_timeout", self.round_timeout, self.round_timeout > 0, "> 0")


@dataclass
class TrainConfig:
    rounds: int = 20
    local_epochs: int = 3
    batch_size: int = 16
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-5
    grad_clip: float = 100.0  # max gradient norm; 0 disables clipping
    weighted: bool = False  # sample-weighted mean instead of Algorithm 1's plain mean
    # speed levers of local training (docs/engines.md, "Speed"); the defaults are plain fp32 eager PyTorch
    precision: str = "fp32"  # fp32 | bf16: forward and loss under torch.autocast(bfloat16); weights, gradients, SGD stay fp32
    channels_last: bool = False  # images (and a single client's conv weights) in NHWC memory order
    step_mode: str = "eager"  # eager | cuda_graph: on CUDA each full-batch local step replays one captured CUDA graph

    def __post_init__(self) -> None:
        _choice("train.precision", self.precision, PRECISIONS)
        _choice("train.step_mode", self.step_mode, STEP_MODES)
        for key in ("rounds", "local_epochs", "batch_size"):
            _check(f"train.{key}", getattr(self, key), getattr(self, key) >= 1, ">= 1")
        _check("train.lr", self.lr, self.lr > 0, "> 0")
        _check("train.momentum", self.momentum, 0 <= self.momentum < 1, "in [0, 1)")
        _check("train.weight_decay", self.weight_decay, self.weight_decay >= 0, ">= 0")
        _check("train.grad_clip", self.grad_clip, self.grad_clip >= 0, ">= 0")


@dataclass
class EvalConfig:
    every: int = 1  # evaluate the global model centrally every k rounds (and the last)
    batch_size: int = 1000

    def __post_init__(self) -> None:
        _check("eval.every", self.every, self.every >= 1, ">= 1")
        _check("eval.batch_size", self.batch_size, self.batch_size >= 1, ">= 1")


@dataclass
class CheckpointConfig:
    every: int = 0  # server checkpoint (and resume state) every k rounds; 0: only the last round
    clients: bool = False  # also save each participating client's model at checkpoint rounds

    def __post_init__(self) -> None:
        _check("checkpoint.every", self.every, self.every >= 0, ">= 0")


@dataclass
class EngineConfig:
    name: str = "flower"  # flower (Ray simulation) | cohort (one process, all clients at once)
    num_cpus: float = 1.0  # Ray CPUs per client (engine=flower)
    num_gpus: float = 0.0  # Ray GPU share per client; 0 on a GPU machine: the round's clients share one
    address: str = ""  # engine=flower: "" starts Ray here; auto or the head's HOST:PORT joins a running Ray cluster

    def __post_init__(self) -> None:
        _choice("engine.name", self.name, ENGINES)
        match = RAY_ADDRESS.fullmatch(self.address)
        if self.address and not (match and int(match.group(2) or 1) <= 65535):
            raise ConfigError(f"engine.address={self.address!r} is not accepted; use \"\" (start Ray here), auto "
                              "or HOST:PORT (a running cluster's head, e.g. 10.0.0.5:6379)")
        _check("engine.num_cpus", self.num_cpus, self.num_cpus > 0, "> 0")
        _check("engine.num_gpus", self.num_gpus, self.num_gpus >= 0, ">= 0")


@dataclass
class RunConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)  # the dataclass of method.name
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    seed: int = 0  # model initialisation, client sampling, local data order
    out: str = ""  # the run directory ("" = runs/<time>_<method>_<dataset>)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    resume: str = ""  # a run directory to continue

    def __post_init__(self) -> None:
        _check("seed", self.seed, 0 <= self.seed < 2**63, "in [0, 2^63)")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"device={self.device!r} is not accepted; use auto, cpu, cuda or cuda:N")
        if self.federation.min_replies > self.clients_per_round:
            raise ConfigError(f"federation.min_replies={self.federation.min_replies} is larger than the "
                              f"{self.clients_per_round} clients sampled per round")
        for key, value in self.to_flat().items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{key}={value} is not accepted; it must be a finite number")

    @property
    def clients_per_round(self) -> int:
        """Clients sampled per round: fraction x N, at least one."""
        return max(1, int(round(self.federation.fraction * self.federation.num_clients)))

    # ---- flat <-> typed ----
    @classmethod
    def from_flat(cls, flat: Flat) -> RunConfig:
        """Build and check a config from dotted keys (Flower's run_config, Hydra's flattened config,
        a run directory's config.yaml). A `method.*` key set to "" means the method's default.
        Parsed once per distinct config (OmegaConf's checks take ~15 ms; every train message of a
        round carries the same config); each caller gets its own copy."""
        try:
            key = tuple((k, type(v).__name__, v) for k, v in sorted(flat.items()))  # 1 and 1.0 differ
            hash(key)
        except TypeError:  # an unhashable value (a list): parsed, and refused, without the cache
            return cls._parse(flat)
        return copy.deepcopy(_parsed(cls, key))

    @classmethod
    def _parse(cls, flat: Flat) -> RunConfig:
        try:
            nested = unflatten_dict({k: v for k, v in flat.items() if not (k.startswith("method.") and v == "")})
        except (TypeError, AttributeError):
            raise ConfigError(f"the keys {sorted(flat)} do not form one config (a key is also another's parent)") from None
        method = nested.get("method", {})
        if not isinstance(method, dict):
            raise ConfigError(f"method={method!r} is not accepted; set method.name")
        name = method.get("name", MethodConfig.name)
        _choice("method.name", name, METHOD_NAMES)
        schema = OmegaConf.structured(cls(method=METHODS[name].config()))
        try:
            return OmegaConf.to_object(OmegaConf.merge(schema, nested))  # type: ignore[return-value]
        except OmegaConfBaseException as exc:
            raise omegaconf_error(exc, flat, name) from None
        except ValueError as exc:  # a method's own check (strategies/)
            raise ConfigError(str(exc)) from None

    def to_flat(self) -> Flat:
        """Dotted keys -> plain values (str, int, float, bool), as in Flower's run_config."""
        return flatten_dict(dataclasses.asdict(self))

    def replace(self, **flat_overrides: Any) -> RunConfig:
        """A copy with some dotted keys changed (keys given with '__' for '.'). Changing method.name
        starts from that method's defaults."""
        overrides = {k.replace("__", "."): v for k, v in flat_overrides.items()}
        flat = self.to_flat()
        if overrides.get("method.name", self.method.name) != self.method.name:
            flat = {k: v for k, v in flat.items() if not k.startswith("method.")}
        return RunConfig.from_flat({**flat, **overrides})


@functools.lru_cache(maxsize=256)
def _parsed(cls: type[RunConfig], key: tuple) -> RunConfig:
    return cls._parse({k: v for k, _, v in key})


def known_settings(flat: Flat) -> Flat:
    """The keys of `flat` that a config of its method.name has; others (an older record's keys of
    other methods, keys since removed) are dropped."""
    name = flat.get("method.name", MethodConfig.name)
    method = {f"method.{f.name}" for f in dataclasses.fields(METHODS[name].config)} if name in METHODS else set()
    known = {k for k in RunConfig().to_flat() if not k.startswith("method.")} | method
    return {k: v for k, v in flat.items() if k in known}


def method_keys() -> list[str]:
    """Every `method.*` key some method has (the union Flower's run_config must list)."""
    keys = {f"method.{f.name}" for m in METHODS.values() for f in dataclasses.fields(m.config)}
    return ["method.name"] + sorted(keys - {"method.name"})


# `flwr run .` runs on Flower's local simulation federation, which has 2 SuperNodes by default.
LOCAL_FEDERATION = {"federation.num_clients": 2, "federation.fraction": 1.0}


def flwr_app_defaults() -> Flat:
    """[tool.flwr.app.config] of pyproject.toml: RunConfig's defaults on the local federation, and
    every method's keys as "" (the chosen method's own default); Flower accepts only keys listed there."""
    flat: Flat = {}
    for key, value in {**RunConfig().to_flat(), **LOCAL_FEDERATION}.items():
        flat[key] = value
        if key == "method.name":
            flat.update({k: "" for k in method_keys()[1:]})
    return flat


def _check(key: str, value: Any, ok: bool, must: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is out of range; it must be {must}")


def _choice(key: str, value: Any, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ConfigError(f"{key}={value!r} is not known; accepted: {', '.join(accepted)}")


def omegaconf_error(exc: OmegaConfBaseException, given: Flat, method: str) -> ConfigError:
    """OmegaConf's report on an unknown key or a value of the wrong type, as one fedsign line
    (`given`: the dotted keys and values that were set; `method`: method.name)."""
    key = exc.full_key or ""
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)) and key:
        if key.startswith("method."):
            own = [f"method.{f.name}" for f in dataclasses.fields(METHODS[method].config) if f.name != "name"]
            return ConfigError(f"{key} is not a setting of method.name={method}; its settings: {', '.join(own) or 'none'}")
        accepted = sorted(k for k in RunConfig().to_flat() if not k.startswith("method."))
        return ConfigError(f"unknown config key '{key}'; accepted keys: {', '.join(accepted)}, method.*")
    text = str(exc).splitlines()[0]
    for kind, words in (("Integer", "it must be a whole number"), ("Float", "it must be a number"),
                        ("bool", "it must be true or false"), ("str", "it must be a string")):
        if kind in text:
            return ConfigError(f"{key}={given.get(key, '?')!r} is not accepted; {words}")
    return ConfigError(f"{key or 'config'}: {text}")


# ---- pyproject.toml's [tool.flwr.app.config], generated ----
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
BEGIN = "# ---- generated by `python -m fedsign.config --write` from fedsign/config.py: do not edit ----"
END = "# ---- end of generated config ----"


def pyproject_section() -> str:
    def toml(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        return repr(value) if isinstance(value, (int, float)) else f'"{value}"'

    lines = [BEGIN, "# RunConfig's defaults on Flower's local federation (2 SuperNodes); a method.* key left \"\" takes",
             "# the default of the method that method.name selects (its dataclass in strategies/<method>.py).",
             "[tool.flwr.app.config]"]
    lines += [f'"{k}" = {toml(v)}' for k, v in flwr_app_defaults().items()]
    return "\n".join(lines + [END])


def write_pyproject(path: Path = PYPROJECT) -> None:
    text = path.read_text()
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    path.write_text(text[:start] + pyproject_section() + text[stop:])


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write_pyproject()
    else:
        print(pyproject_section())
