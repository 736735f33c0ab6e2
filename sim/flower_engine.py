"""Run one config in Flower's simulation engine (Ray), in this process: on a Ray instance it starts here,
or with engine.address on a running Ray cluster (`ray start --head` on one machine, `ray start
--address=HEAD:6379` on the others), whose nodes then run the clients: the same command across machines."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import torch
from flwr.clientapp import ClientApp

from fedsign.client_app import app as client_app
from fedsign.config import RunConfig
from fedsign.errors import ConfigError
from fedsign.server_app import make_server_app


def client_resources(cfg: RunConfig) -> dict[str, float]:
    """Ray resources per client; on a GPU machine with no share given, a round's clients share one GPU.
    A client asking for more than this machine has could never be scheduled: refused here (on a
    cluster, engine.address, the nodes are other machines: Flower refuses a client no node can hold)."""
    gpus = cfg.engine.num_gpus
    if gpus == 0 and torch.cuda.is_available() and cfg.device != "cpu" and not cfg.engine.address:
        gpus = max(0.05, round(1.0 / cfg.clients_per_round, 3))
    if cfg.engine.address:
        return {"num_cpus": cfg.engine.num_cpus, "num_gpus": gpus}
    cpus_here, gpus_here = os.cpu_count() or 1, torch.cuda.device_count()
    if cfg.engine.num_cpus > cpus_here:
        raise ConfigError(f"engine.num_cpus={cfg.engine.num_cpus:g} is more than this machine's {cpus_here} CPUs: "
                          "Ray could never start a client")
    if gpus > gpus_here:
        raise ConfigError(f"engine.num_gpus={gpus:g} is more than this machine's {gpus_here} GPUs: "
                          "Ray could never start a client")
    return {"num_cpus": cfg.engine.num_cpus, "num_gpus": gpus}


def run_flower(cfg: RunConfig, client: ClientApp | None = None) -> dict[str, Any]:
    """`client`: another ClientApp than fedsign's (tests use one that misbehaves)."""
    from flwr.simulation import run_simulation

    results: dict[str, Any] = {}
    init_args: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    if cfg.engine.address:  # join the cluster (its nodes bring their own CPUs and GPUs)
        init_args["address"] = cfg.engine.address
    else:
        init_args.update(num_cpus=os.cpu_count() or 1, num_gpus=torch.cuda.device_count(), include_dashboard=False)
    backend_config = {"client_resources": client_resources(cfg), "init_args": init_args}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_simulation(server_app=make_server_app(cfg, results), client_app=client or client_app,
                       num_supernodes=cfg.federation.num_clients, backend_config=backend_config)
    if not results:
        raise RuntimeError("the simulation ended without results; see the log above")
    return results
