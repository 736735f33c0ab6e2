"""`fedsign-sim engine=cohort`: the same server loop as the Flower engine, on the cohort Grid."""

from __future__ import annotations

from typing import Any

from fedsign.config import RunConfig
from fedsign.data.specs import dataset_spec
from fedsign.methods import pan_spec
from fedsign.models import build_model
from fedsign.server_app import run_server

from sim.cohort.cohort_training import check_cohort_model
from sim.cohort.grid import CohortGrid


def run_cohort(cfg: RunConfig) -> dict[str, Any]:
    """Run one config with all clients of a round trained at once in this process; returns
    results.json's content, like sim.flower_engine.run_flower."""
    check_cohort_model(build_model(cfg.model.name, dataset_spec(cfg.dataset.name), pan_spec(cfg)), cfg.model.name)
    return run_server(CohortGrid(cfg.federation.num_clients), cfg)
