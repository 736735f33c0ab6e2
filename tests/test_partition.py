"""Dirichlet partitions: a true partition, reproducible, and more skewed for smaller alpha."""

from __future__ import annotations

import numpy as np
import pytest

from fedsign.config import PartitionConfig
from fedsign.errors import ConfigError
from fedsign.partition import class_counts, mean_label_entropy, partition_indices
from fedsign.partition_report import write_partition_report

LABELS = np.random.default_rng(1).integers(0, 10, 5000)


@pytest.mark.parametrize("scheme", ["dirichlet", "authors", "iid"])
def test_every_sample_in_at_most_one_client_and_reproducible(scheme):
    cfg = PartitionConfig(scheme=scheme, alpha=0.5, seed=3, min_size=5)
    parts = partition_indices(LABELS, 20, cfg)
    assert len(parts) == 20
    flat = np.concatenate(parts)
    assert len(flat) == len(np.unique(flat))  # no sample in two clients
    if scheme != "authors":  # the authors' scheme drops clients under min_size
        assert sorted(flat.tolist()) == list(range(len(LABELS)))
    counts = class_counts(LABELS, parts, 10)
    assert counts.sum() == len(flat)
    assert [len(p) for p in parts] == counts.sum(axis=1).tolist()
    again = partition_indices(LABELS, 20, cfg)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition_indices(LABELS, 20, PartitionConfig(scheme=scheme, alpha=0.5, seed=4, min_size=5))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


@pytest.mark.parametrize("scheme", ["dirichlet", "authors"])
def test_smaller_alpha_gives_more_label_skew(scheme):
    entropy = {}
    for alpha in (0.1, 1.0, 100.0):
        parts = partition_indices(LABELS, 20, PartitionConfig(scheme=scheme, alpha=alpha, seed=0, min_size=1))
        entropy[alpha] = mean_label_entropy(class_counts(LABELS, parts, 10))
    assert entropy[0.1] < entropy[1.0] < entropy[100.0]
    assert entropy[100.0] > 0.95 * np.log(10)  # nearly uniform labels per client


def test_min_partition_size_is_met_by_flower_dirichlet():
    parts = partition_indices(LABELS, 50, PartitionConfig(scheme="dirichlet", alpha=0.3, seed=0, min_size=20))
    assert min(len(p) for p in parts) >= 20


def test_entropy_of_known_counts():
    counts = np.array([[5, 5, 0], [10, 0, 0]])
    assert mean_label_entropy(counts) == pytest.approx(np.log(2) / 2)


def test_more_clients_than_samples_is_a_config_error():
    with pytest.raises(ConfigError, match="num_clients=20"):
        partition_indices(LABELS[:10], 20, PartitionConfig())


def test_partition_report_json_and_plot(tmp_path):
    import json

    parts = partition_indices(LABELS, 8, PartitionConfig(alpha=0.5))
    counts = class_counts(LABELS, parts, 10)
    write_partition_report(counts, tuple("abcdefghij"), "dirichlet", 0.5, tmp_path)
    summary = json.loads((tmp_path / "partition.json").read_text())
    assert summary["class_counts"] == counts.tolist() and summary["sizes"] == [len(p) for p in parts]
    assert (tmp_path / "partition.png").stat().st_size > 1000


def test_authors_scheme_gives_clients_of_near_equal_size_unlike_flwr_dirichlet():
    """100 clients, alpha 0.5, CIFAR-10's balanced labels (5,000 per class): the authors' per-client
    Dirichlet gives 467-534 samples per client, flwr-datasets' per-class Dirichlet 124-1,232."""
    labels = np.repeat(np.arange(10), 5000)
    sizes = {scheme: [len(p) for p in partition_indices(labels, 100, PartitionConfig(scheme=scheme, alpha=0.5))]
             for scheme in ("authors", "dirichlet")}
    assert (min(sizes["authors"]), max(sizes["authors"])) == (467, 534)
    assert (min(sizes["dirichlet"]), max(sizes["dirichlet"])) == (124, 1232)
    assert sum(sizes["authors"]) == sum(sizes["dirichlet"]) == 50_000


def test_holdout_keeps_a_fifth_of_each_client_out_of_training():
    full = partition_indices(LABELS, 20, PartitionConfig(scheme="authors", alpha=0.5, seed=2, min_size=5))
    kept = partition_indices(LABELS, 20, PartitionConfig(scheme="authors", alpha=0.5, seed=2, min_size=5,
                                                         holdout=0.2))
    for whole, train in zip(full, kept):
        assert set(train) <= set(whole) and len(train) == len(whole) - round(0.2 * len(whole))
    assert sum(map(len, kept)) < 0.81 * sum(map(len, full))
