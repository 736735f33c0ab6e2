"""One typed run config, parsed from Flower's flat `run_config` (dotted keys) and used by every app.

`fedsign-sim` (Hydra) flattens its config into the same dotted keys that `flwr run .` reads from
pyproject.toml, so both drive the same code. Every value is checked here, once, with errors that
name the key, the bad value and what is accepted.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from fedsign.errors import ConfigError

Flat = dict[str, Any]


@dataclass
class DatasetConfig:
    name: str = "digits"  # cifar10 | cinic10 | digits
    root: str = ""  # directory holding one of the supported on-disk forms
    use_valid: bool = False  # CINIC-10: add valid/ to the training set
    download: bool = False  # CIFAR-10 only: let torchvision download it when online
    augment: bool = True  # random crop (padding 4) + horizontal flip, on the data's device


@dataclass
class ModelConfig:
    name: str = "smallcnn"


@dataclass
class MethodConfig:
    name: str = "fedavg"
    gamma: float = 0.01  # FedSign: weight of the sign reward, Eq. (1)
    sign_reduction: str = "rms"  # FedSign: how Eq. (1) is reduced over parameters (docs/fedsign.md)
    sign_temperature: float = 1.0  # FedSign: tau in sigma(theta / tau); 1 = the paper
    mu: float = 0.01  # FedProx proximal weight / MOON contrastive weight
    prox_form: str = "l2"  # FedProx: l2 = mu/2 ||w - w_g||^2 (paper); smooth_l1 = authors' code
    tau: float = 0.5  # MOON temperature
    alpha: float = 0.01  # FedDyn regularisation strength
    pan_op: str = "mul"  # FedPAN: add | mul
    pan_t: float = 1.0  # FedPAN: period T of the sin mask
    pan_a: float = 0.05  # FedPAN: amplitude A


@dataclass
class PartitionConfig:
    scheme: str = "dirichlet"  # dirichlet (flwr-datasets) | authors (per-client Dirichlet) | iid
    alpha: float = 0.5
    seed: int = 0
    min_size: int = 10


@dataclass
class FederationConfig:
    num_clients: int = 20
    fraction: float = 0.5
    min_replies: int = 1  # a round with fewer valid client updates is not aggregated
    round_timeout: float = 3600.0  # seconds the server waits for a round's replies


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


@dataclass
class EvalConfig:
    every: int = 1  # evaluate the global model centrally every k rounds (and the last)
    batch_size: int = 1000


@dataclass
class CheckpointConfig:
    every: int = 0  # server checkpoint every k rounds (0: only the last round)
    clients: bool = False  # also save each participating client's model at checkpoint rounds


@dataclass
class EngineConfig:
    name: str = "flower"  # flower (Ray simulation) | cohort (one process, all clients at once)
    num_cpus: float = 1.0  # Ray resources per client
    num_gpus: float = 0.0  # Ray GPU share per client (e.g. 0.1 = ten clients per GPU)


@dataclass
class RunConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    seed: int = 0
    out: str = ""  # the run directory ("" = runs/<time>_<method>_<dataset>)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    resume: str = ""  # a run directory to continue

    # ---- flat <-> typed ----
    @classmethod
    def from_flat(cls, flat: Flat, *, ignore_unknown: bool = False) -> RunConfig:
        """Build and validate a config from dotted keys; unknown keys are an error."""
        cfg = cls()
        known = set(cfg.to_flat())
        for key, value in flat.items():
            if key not in known:
                if ignore_unknown:
                    continue
                raise ConfigError(
                    f"unknown config key '{key}'; accepted keys: {', '.join(sorted(known))}"
                )
            _assign(cfg, key, value)
        cfg.validate()
        return cfg

    def to_flat(self) -> Flat:
        """Dotted keys -> plain values (str, int, float, bool), as in Flower's run_config."""
        flat: Flat = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                for sub in fields(value):
                    flat[f"{f.name}.{sub.name}"] = getattr(value, sub.name)
            else:
                flat[f.name] = value
        return flat

    def replace(self, **flat_overrides: Any) -> RunConfig:
        """A copy with some dotted keys changed (keys given with '__' for '.')."""
        flat = self.to_flat()
        flat.update({k.replace("__", "."): v for k, v in flat_overrides.items()})
        return RunConfig.from_flat(flat)

    # ---- checks ----
    def validate(self) -> None:
        from fedsign.data.specs import DATASET_NAMES
        from fedsign.models.registry import MODEL_NAMES
        from strategies.fedsign import SIGN_REDUCTIONS
        from strategies.registry import METHOD_NAMES

        _choice("dataset.name", self.dataset.name, DATASET_NAMES)
        _choice("model.name", self.model.name, MODEL_NAMES)
        _choice("method.name", self.method.name, METHOD_NAMES)
        _choice("method.prox_form", self.method.prox_form, ("l2", "smooth_l1"))
        _choice("method.pan_op", self.method.pan_op, ("add", "mul"))
        _choice("method.sign_reduction", self.method.sign_reduction, SIGN_REDUCTIONS)
        _choice("partition.scheme", self.partition.scheme, ("dirichlet", "authors", "iid"))
        _choice("engine.name", self.engine.name, ("flower", "cohort"))
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"device={self.device!r} is not accepted; use auto, cpu, cuda or cuda:N")
        _positive("partition.alpha", self.partition.alpha)
        _positive("method.sign_temperature", self.method.sign_temperature)
        _positive("method.tau", self.method.tau)
        _positive("train.lr", self.train.lr)
        _positive("federation.round_timeout", self.federation.round_timeout)
        for key, value in (("method.gamma", self.method.gamma), ("method.mu", self.method.mu),
                           ("method.alpha", self.method.alpha), ("method.pan_a", self.method.pan_a),
                           ("train.weight_decay", self.train.weight_decay),
                           ("train.grad_clip", self.train.grad_clip),
                           ("partition.min_size", self.partition.min_size),
                           ("checkpoint.every", self.checkpoint.every),
                           ("engine.num_gpus", self.engine.num_gpus)):
            if value < 0:
                raise ConfigError(f"{key}={value} is out of range; it must be >= 0")
        if not 0 <= self.train.momentum < 1:
            raise ConfigError(f"train.momentum={self.train.momentum} is out of range; it must be in [0, 1)")
        if not 0 < self.federation.fraction <= 1:
            raise ConfigError(
                f"federation.fraction={self.federation.fraction} is out of range; it must be in (0, 1]"
            )
        for key, value in (("train.rounds", self.train.rounds),
                           ("train.local_epochs", self.train.local_epochs),
                           ("train.batch_size", self.train.batch_size),
                           ("federation.num_clients", self.federation.num_clients),
                           ("federation.min_replies", self.federation.min_replies),
                           ("eval.every", self.eval.every), ("eval.batch_size", self.eval.batch_size)):
            if value < 1:
                raise ConfigError(f"{key}={value} is out of range; it must be >= 1")
        if self.engine.num_cpus <= 0:
            raise ConfigError(f"engine.num_cpus={self.engine.num_cpus} is out of range; it must be > 0")
        if self.federation.min_replies > self.clients_per_round:
            raise ConfigError(
                f"federation.min_replies={self.federation.min_replies} is larger than the "
                f"{self.clients_per_round} clients sampled per round"
            )

    @property
    def clients_per_round(self) -> int:
        """Clients sampled per round: fraction x N, at least one."""
        return max(1, int(round(self.federation.fraction * self.federation.num_clients)))



def _choice(key: str, value: str, accepted: tuple[str, ...] | list[str]) -> None:
    if value not in accepted:
        raise ConfigError(f"{key}={value!r} is not known; accepted: {', '.join(accepted)}")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key}={value} is out of range; it must be > 0")


def _assign(cfg: RunConfig, key: str, value: Any) -> None:
    """Set a dotted key, coercing Flower/Hydra scalars to the field's type."""
    *path, name = key.split(".")
    target: Any = cfg
    for part in path:
        target = getattr(target, part)
    default = getattr(target, name)
    setattr(target, name, _coerce(key, value, type(default)))


def _coerce(key: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key}={value!r} is not accepted; it must be true or false")
    if kind is str:
        return "" if value is None else str(value)
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} is not accepted; it must be a number") from None
    if kind is int:
        if number != int(number):
            raise ConfigError(f"{key}={value!r} is not accepted; it must be a whole number")
        return int(number)
    return number
