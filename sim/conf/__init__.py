"""fedsign-sim's Hydra config, built from fedsign.config so that nothing is defined twice.

Importing this package registers in Hydra's ConfigStore:
- `run_schema`: fedsign.config.RunConfig, every key with its default and type;
- the groups `dataset`, `model`, `method`, `engine`: one option per registered name (a method's
  option is its settings dataclass from strategies/, with that method's defaults);
- `config`, the primary config: the schema, RunConfig()'s group choices, and Hydra's own settings.
Experiments (`+experiment=NAME`) are the yaml files in sim/conf/experiment/.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_store import ConfigStore

from fedsign.config import ENGINES, DatasetConfig, EngineConfig, ModelConfig, RunConfig
from fedsign.data.specs import DATASET_NAMES
from fedsign.models.registry import MODEL_NAMES
from strategies.registry import METHODS

EXPERIMENTS = Path(__file__).parent / "experiment"
# group -> its options (the `experiment` group is the yaml files)
GROUPS: dict[str, tuple[str, ...]] = {
    "dataset": DATASET_NAMES, "model": MODEL_NAMES, "method": tuple(METHODS), "engine": ENGINES,
    "experiment": tuple(sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))),
}
# The run directory holds config.yaml already: Hydra writes no files of its own and changes no directory.
HYDRA_SETTINGS = {"output_subdir": None, "run": {"dir": "."}, "sweep": {"dir": ".", "subdir": "."},
                  "job": {"chdir": False}}


def register() -> None:
    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    for name in DATASET_NAMES:
        store.store(group="dataset", name=name, node=DatasetConfig(name=name))
    for name in MODEL_NAMES:
        store.store(group="model", name=name, node=ModelConfig(name=name))
    for name, method in METHODS.items():
        store.store(group="method", name=name, node=method.config())
    for name in ENGINES:
        store.store(group="engine", name=name, node=EngineConfig(name=name))
    default = RunConfig()
    choices = [{group: getattr(default, group).name} for group in ("dataset", "model", "method", "engine")]
    store.store(name="config", node={
        "defaults": ["run_schema", *choices, {"override hydra/job_logging": "none"},
                     {"override hydra/hydra_logging": "none"}, "_self_"],
        "hydra": HYDRA_SETTINGS,
    })


register()
