"""Which clients train in a round: a stateless draw from (seed, round), so runs and resumes repeat."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sample_clients(clients: Sequence[int], per_round: int, seed: int, server_round: int) -> list[int]:
    """`per_round` of `clients` (sorted ids), uniformly without replacement."""
    rng = np.random.default_rng([seed, server_round])
    return sorted(int(c) for c in rng.choice(np.asarray(clients), size=min(per_round, len(clients)), replace=False))


def client_seed(seed: int, server_round: int, client_id: int) -> int:
    """The seed of one client's local training in one round (data order, augmentation)."""
    return int(np.random.SeedSequence([seed, server_round, client_id]).generate_state(1)[0])
