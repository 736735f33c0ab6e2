"""Dirichlet label-skew partitions of a training set over N clients, reproducible for a seed.

Schemes (both are "Dirichlet label skew"; a result should say which one it used):
- `dirichlet`: flwr-datasets' DirichletPartitioner: per class, a Dirichlet(alpha) over clients,
  resampled until every client holds at least `min_size` samples. Client sizes vary widely
  (124-1,232 for 100 clients, alpha 0.5, CIFAR-10).
- `authors`: the authors' FL code (lxcnju/FedRepo, datasets/feddata.py): one Dirichlet(alpha) vector
  over classes per client, columns normalised over clients, each class's indices cut by cumulative
  counts; clients under `min_size` samples are left empty (and never sampled) rather than resampled.
  Sizes stay close (467-534 for the same setting).
- `iid`: a uniform random split (a reference point).
`holdout` keeps a fraction of each client's data out of training, as the authors keep 20 % of each
client's data as its local test set.
"""

from __future__ import annotations

import numpy as np

from fedsign.config import PartitionConfig
from fedsign.errors import ConfigError


def partition_indices(labels: np.ndarray, num_clients: int, cfg: PartitionConfig) -> list[np.ndarray]:
    """Sorted training-set indices of each client; every index belongs to at most one client."""
    labels = np.asarray(labels)
    if num_clients > len(labels):
        raise ConfigError(f"federation.num_clients={num_clients} exceeds the {len(labels)} training samples")
    if cfg.scheme == "dirichlet":
        parts = _flwr_dirichlet(labels, num_clients, cfg)
    elif cfg.scheme == "authors":
        parts = _authors_dirichlet(labels, num_clients, cfg.alpha, cfg.seed, cfg.min_size)
    else:
        parts = np.array_split(np.random.default_rng(cfg.seed).permutation(len(labels)), num_clients)
    parts = [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    return [training_part(p, cfg.holdout, cfg.seed, client) for client, p in enumerate(parts)]


def training_part(indices: np.ndarray, holdout: float, seed: int, client: int) -> np.ndarray:
    """A client's indices minus its local test set: round(holdout x n) of them, drawn from (seed, client)."""
    n_test = int(round(holdout * len(indices)))
    if n_test == 0:
        return indices
    keep = np.random.default_rng([seed, client]).permutation(len(indices))[n_test:]
    return np.sort(indices[keep])


def _flwr_dirichlet(labels: np.ndarray, num_clients: int, cfg: PartitionConfig) -> list[np.ndarray]:
    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner

    min_size = min(cfg.min_size, len(labels) // num_clients)
    partitioner = DirichletPartitioner(num_partitions=num_clients, partition_by="label", alpha=cfg.alpha,
                                       min_partition_size=min_size, self_balancing=False, shuffle=True,
                                       seed=cfg.seed)
    partitioner.dataset = datasets.Dataset.from_dict({"label": labels, "idx": np.arange(len(labels))})
    try:
        return [np.asarray(partitioner.load_partition(i)["idx"]) for i in range(num_clients)]
    except ValueError as exc:  # raised when min_size cannot be met within its retries
        raise ConfigError(f"cannot partition {len(labels)} samples over {num_clients} clients with "
                          f"partition.alpha={cfg.alpha}, partition.min_size={cfg.min_size}: {exc}") from None


def _authors_dirichlet(labels: np.ndarray, num_clients: int, alpha: float, seed: int,
                       min_size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    props = rng.dirichlet(np.full(len(classes), alpha), size=num_clients)  # [clients, classes]
    props = props / props.sum(axis=0, keepdims=True)  # each class spread over the clients
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for c_idx, c in enumerate(classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = (np.cumsum(props[:, c_idx]) * len(idx)).astype(int)[:-1]
        for client, chunk in enumerate(np.split(idx, cuts)):
            parts[client].extend(chunk.tolist())
    return [np.asarray(p if len(p) >= min_size else [], dtype=np.int64) for p in parts]


def class_counts(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """[clients, classes] sample counts."""
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])


def mean_label_entropy(counts: np.ndarray) -> float:
    """Mean over clients of the entropy (nats) of their label distribution: lower = more skew."""
    probs = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(probs > 0, probs * np.log(probs), 0.0).sum(axis=1)
    return float(ent[counts.sum(axis=1) > 0].mean())
