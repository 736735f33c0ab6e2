"""`fedsign-sim`: the Hydra app. `fedsign-sim` alone runs a quick CPU experiment on digits;
e.g. `fedsign-sim dataset=cifar10 dataset.root=PATH model=vgg8 method=fedsign train.rounds=200`.
`fedsign-sim resume=RUN_DIR [train.rounds=N]` continues a killed run in its own directory.
Bad input (config, data, model, checkpoint, Hydra override) is one line on stderr and exit code 2."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import hydra
from flwr.common.config import flatten_dict
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fedsign.config import RunConfig, omegaconf_error
from fedsign.errors import ConfigError, FedsignError
from fedsign.logs import setup_logging
from fedsign.server_app import prepare_run
from sim.conf import GROUPS

CONF = Path(__file__).parent / "conf"


def to_run_config(hcfg: DictConfig) -> RunConfig:
    """The composed Hydra config as fedsign's RunConfig (through the same checks as Flower's run_config)."""
    tree = OmegaConf.to_container(hcfg, resolve=True)
    assert isinstance(tree, dict)
    tree.pop("hydra", None)
    return RunConfig.from_flat(flatten_dict(tree))


def run(cfg: RunConfig, explicit: set[str] | None = None) -> dict:
    """Run one config with the engine it names; returns results.json's content. Bad input raises a
    FedsignError here, before any run directory or worker exists (`explicit`: see prepare_run)."""
    cfg = prepare_run(cfg, explicit)
    if cfg.engine.name == "cohort":
        from sim.cohort.engine import run_cohort

        return run_cohort(cfg)
    from sim.flower_engine import run_flower

    return run_flower(cfg)


def explicit_keys(overrides: list[str]) -> set[str]:
    """The dotted keys a user set on the command line (a group choice `method=x` sets `method.name`)."""
    keys = set()
    for item in overrides:
        key = item.lstrip("+~").split("=", 1)[0]
        keys.add(f"{key}.name" if key in GROUPS else key)
    return keys


def fail(message: str) -> None:
    print(f"fedsign-sim: error: {message}", file=sys.stderr)
    sys.exit(2)


def compose_hydra(overrides: list[str], return_hydra_config: bool = False) -> DictConfig:
    """Hydra's composition of `fedsign-sim OVERRIDES...` (no sweeps); a bad override is one ConfigError."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    given = dict(item.lstrip("+~").partition("=")[::2] for item in overrides)
    for group, choice in given.items():
        if group in GROUPS and choice not in GROUPS[group]:
            raise ConfigError(f"{group}={choice!r} is not known; accepted: {', '.join(GROUPS[group])}")
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="config", overrides=overrides, return_hydra_config=return_hydra_config)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        cause = exc if isinstance(exc, OmegaConfBaseException) else exc.__cause__
        if isinstance(cause, OmegaConfBaseException) and cause.full_key:
            method = given.get("method", given.get("method.name", RunConfig().method.name))
            raise omegaconf_error(cause, given, method) from None
        text = re.split(r"\s*(Config search path|Set the environment variable)", str(exc))[0]
        raise ConfigError(" ".join(text.split())) from None


def compose_config(overrides: list[str]) -> RunConfig:
    """The RunConfig that `fedsign-sim OVERRIDES...` runs; any bad override is one ConfigError."""
    return to_run_config(compose_hydra(overrides))


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def hydra_main(hcfg: DictConfig) -> None:
    setup_logging()
    try:
        cfg = to_run_config(hcfg)
        results = run(cfg, explicit_keys(list(HydraConfig.get().overrides.task)))
    except FedsignError as exc:
        fail(str(exc))
    print(f"[fedsign] final accuracy {results['final_accuracy']:.4f} (best {results['best_accuracy']:.4f}) "
          f"after {results['rounds']} rounds in {results['wall_seconds']:.1f} s", flush=True)
    print(f"[fedsign] run directory: {results['run_dir']}", flush=True)


def main() -> None:
    args = sys.argv[1:]
    if not any(a.startswith("-") for a in args):  # Hydra's own flags (--help, -m, --cfg ...) go to Hydra
        try:  # composed once before Hydra runs, so that a bad override is one line, not Hydra's report
            compose_config(args)
        except FedsignError as exc:
            fail(str(exc))
    hydra_main()


if __name__ == "__main__":
    main()
