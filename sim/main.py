"""`fedsign-sim`: the Hydra app. `fedsign-sim` alone runs a quick CPU experiment on digits;
e.g. `fedsign-sim dataset=cifar10 dataset.root=PATH model=vgg8 method=fedsign train.rounds=200`.
`fedsign-sim resume=RUN_DIR [train.rounds=N]` continues a killed run in its own directory.
Bad input (config, data, model, checkpoint, Hydra override) is one line on stderr and exit code 2."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fedsign.config import RunConfig
from fedsign.errors import FedsignError
from fedsign.logs import setup_logging
from fedsign.server_app import prepare_run
from sim.flatten import hydra_to_flat

CONF = Path(__file__).parent / "conf"


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
        keys.add(f"{key}.name" if (CONF / key).is_dir() else key)
    return keys


def fail(message: str) -> None:
    print(f"fedsign-sim: error: {message}", file=sys.stderr)
    sys.exit(2)


def check_overrides(args: list[str]) -> None:
    """Compose the config once before Hydra runs, so a bad override is one line, not Hydra's report."""
    if any(a.startswith("-") for a in args):
        return  # Hydra's own flags (--help, --multirun, --cfg ...): let Hydra handle them
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    for item in args:
        group, _, choice = item.lstrip("+").partition("=")
        if (CONF / group).is_dir() and not (CONF / group / f"{choice}.yaml").is_file():
            accepted = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
            fail(f"{group}={choice!r} is not known; accepted: {', '.join(accepted)}")
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            compose(config_name="config", overrides=args)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        text = re.split(r"\s*(Config search path|Set the environment variable)", str(exc))[0]
        fail(" ".join(text.split()))


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def hydra_main(hcfg: DictConfig) -> None:
    setup_logging()
    try:
        cfg = RunConfig.from_flat(hydra_to_flat(hcfg))
        results = run(cfg, explicit_keys(list(HydraConfig.get().overrides.task)))
    except FedsignError as exc:
        fail(str(exc))
    print(f"[fedsign] final accuracy {results['final_accuracy']:.4f} (best {results['best_accuracy']:.4f}) "
          f"after {results['rounds']} rounds in {results['wall_seconds']:.1f} s", flush=True)
    print(f"[fedsign] run directory: {results['run_dir']}", flush=True)


def main() -> None:
    check_overrides(sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()
