"""`fedsign-sim`: the Hydra app. `fedsign-sim` alone runs a quick CPU experiment on digits;
e.g. `fedsign-sim dataset=cifar10 dataset.root=PATH model=vgg8 method=fedsign train.rounds=200`."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from fedsign.config import RunConfig
from fedsign.errors import FedsignError
from fedsign.logs import setup_logging
from sim.flatten import hydra_to_flat


def run(cfg: RunConfig) -> dict:
    """Run one config with the engine it names; returns results.json's content."""
    if cfg.engine.name == "cohort":
        from sim.cohort.engine import run_cohort

        return run_cohort(cfg)
    from sim.flower_engine import run_flower

    return run_flower(cfg)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def hydra_main(hcfg: DictConfig) -> None:
    setup_logging()
    try:
        cfg = RunConfig.from_flat(hydra_to_flat(hcfg))
        results = run(cfg)
    except FedsignError as exc:
        print(f"fedsign-sim: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"[fedsign] final accuracy {results['final_accuracy']:.4f} (best {results['best_accuracy']:.4f}) "
          f"after {results['rounds']} rounds in {results['wall_seconds']:.1f} s", flush=True)
    print(f"[fedsign] run directory: {results['run_dir']}", flush=True)


def main() -> None:
    hydra_main()


if __name__ == "__main__":
    main()
