"""The cohort engine's stacked SGD equals torch.optim.SGD + clip_grad_norm_ run for each client alone
(momentum, weight decay, per-client clipping), also when only some clients take a step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sim.cohort.stacked_sgd import StackedSGD, clip_per_client

SHAPES = {"w": (4, 3), "b": (3,)}


def _loss(p: dict[str, torch.Tensor], target: torch.Tensor, scale: float) -> torch.Tensor:
    # A smooth, client-specific loss whose gradients change every step (so momentum matters).
    return scale * ((p["w"] @ torch.tanh(p["b"]) - target) ** 2).sum()


@pytest.mark.parametrize("momentum,weight_decay,grad_clip", [(0.9, 1e-2, 1.0), (0.0, 0.0, 0.0), (0.9, 0.0, 0.5),
                                                             (0.5, 1e-3, 0.0)])
def test_matches_torch_sgd_per_client(momentum, weight_decay, grad_clip):
    torch.manual_seed(0)
    clients = 3
    start = {k: torch.randn(clients, *s, dtype=torch.float64) for k, s in SHAPES.items()}
    targets = torch.randn(clients, 4, dtype=torch.float64)
    scales = [0.1, 5.0, 50.0]  # small gradients (unclipped) and large ones (clipped)
    # Client 1 skips steps 2 and 3 (it "finished" early / sits in another group), client 2 skips step 4.
    schedule = [[0, 1, 2], [0, 1, 2], [0, 2], [0, 2], [0, 1], [0, 1, 2]]
    lr = 0.05

    stacked = {k: v.clone() for k, v in start.items()}
    opt = StackedSGD(stacked, lr, momentum, weight_decay, grad_clip)
    for members in schedule:
        grads = {k: torch.zeros(len(members), *SHAPES[k], dtype=torch.float64) for k in SHAPES}
        for row, c in enumerate(members):
            p = {k: stacked[k][c].clone().requires_grad_() for k in SHAPES}
            _loss(p, targets[c], scales[c]).backward()
            for k in SHAPES:
                grads[k][row] = p[k].grad
        rows = None if members == [0, 1, 2] else torch.tensor(members)
        opt.step(grads, rows)

    for c in range(clients):
        p = {k: nn.Parameter(start[k][c].clone()) for k in SHAPES}
        ref = torch.optim.SGD(p.values(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        for members in schedule:
            if c not in members:
                continue
            ref.zero_grad()
            _loss(p, targets[c], scales[c]).backward()
            if grad_clip > 0:
                nn.utils.clip_grad_norm_(p.values(), grad_clip)
            ref.step()
        for k in SHAPES:
            assert torch.allclose(stacked[k][c], p[k].detach(), rtol=1e-12, atol=1e-12), (c, k)
        assert not torch.equal(stacked["w"][c], start["w"][c])


def test_clip_uses_each_clients_own_norm():
    grads = [torch.tensor([[3.0, 0.0], [0.3, 0.0]]), torch.tensor([[4.0], [0.4]])]  # norms 5 and 0.5
    clipped = clip_per_client(grads, 1.0)
    assert torch.allclose(clipped[0][0], torch.tensor([0.6, 0.0]), atol=1e-6)  # scaled by 1/5
    assert torch.allclose(clipped[1][0], torch.tensor([0.8]), atol=1e-6)
    assert torch.equal(clipped[0][1], grads[0][1]) and torch.equal(clipped[1][1], grads[1][1])  # under the limit
