"""Per-process cache of what a node reuses across messages: its dataset on the device, the
partition, and one model object (its weights are overwritten every round)."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch
from torch import nn

from fedsign.config import DatasetConfig, PartitionConfig, RunConfig
from fedsign.data import Dataset, ImageSet, load_dataset
from fedsign.data.specs import dataset_spec
from fedsign.methods import pan_spec
from fedsign.models import PanSpec, build_model
from fedsign.partition import partition_indices


@functools.lru_cache(maxsize=2)
def _dataset_on(cfg_key: tuple, device: str) -> Dataset:
    return load_dataset(DatasetConfig(*cfg_key)).to(device)


def dataset_on(cfg: RunConfig, device: torch.device) -> Dataset:
    return _dataset_on(dataclasses.astuple(cfg.dataset), str(device))


@functools.lru_cache(maxsize=4)
def _partitions(cfg_key: tuple, num_clients: int, part: tuple) -> tuple[np.ndarray, ...]:
    labels = load_dataset(DatasetConfig(*cfg_key)).train.y.numpy()
    return tuple(partition_indices(labels, num_clients, PartitionConfig(*part)))


def partitions(cfg: RunConfig) -> tuple[np.ndarray, ...]:
    """Each client's training indices (after its holdout); a client dropped by the scheme has none."""
    return _partitions(dataclasses.astuple(cfg.dataset), cfg.federation.num_clients,
                       dataclasses.astuple(cfg.partition))


def active_clients(cfg: RunConfig) -> list[int]:
    """The clients that hold training data: the only ones ever sampled."""
    return [cid for cid, part in enumerate(partitions(cfg)) if len(part) > 0]


def client_data(cfg: RunConfig, client_id: int, device: torch.device) -> ImageSet:
    index = torch.from_numpy(partitions(cfg)[client_id]).to(device)
    return dataset_on(cfg, device).train.subset(index)


@functools.lru_cache(maxsize=2)
def _model(name: str, dataset: str, pan: PanSpec | None, device: str, dtype: torch.dtype) -> nn.Module:
    return build_model(name, dataset_spec(dataset), pan).to(device)


def model_for(cfg: RunConfig, device: torch.device) -> nn.Module:
    """This process's model object for the config (in torch's default dtype), reused across messages."""
    return _model(cfg.model.name, cfg.dataset.name, pan_spec(cfg), str(device), torch.get_default_dtype())


def _seeded_model(name: str, dataset: str, pan: PanSpec | None, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # torch's global RNG is left as it was
        torch.manual_seed(seed)
        return build_model(name, dataset_spec(dataset), pan)


def initial_model(cfg: RunConfig) -> nn.Module:
    """The run's initial global model θ_0, a function of the config (`seed`) alone."""
    return _seeded_model(cfg.model.name, cfg.dataset.name, pan_spec(cfg), cfg.seed)


@functools.lru_cache(maxsize=2)
def _initial_parameters(name: str, dataset: str, pan: PanSpec | None, seed: int, device: str,
                        dtype: torch.dtype) -> dict:
    return {k: v.detach().to(device) for k, v in _seeded_model(name, dataset, pan, seed).named_parameters()}


def initial_parameters(cfg: RunConfig, device: torch.device) -> dict[str, torch.Tensor]:
    """θ_0's parameters on `device`, rebuilt by a client exactly as the server builds θ_0; cached."""
    return _initial_parameters(cfg.model.name, cfg.dataset.name, pan_spec(cfg), cfg.seed, str(device),
                               torch.get_default_dtype())
