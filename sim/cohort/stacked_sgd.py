"""torch.optim.SGD (momentum, weight decay; dampening 0, no Nesterov) preceded by
nn.utils.clip_grad_norm_, for parameters stacked along a leading client dimension: every client has
its own momentum buffers and is clipped by the norm of its own gradient."""

from __future__ import annotations

import torch

Params = dict[str, torch.Tensor]


class StackedSGD:
    def __init__(self, params: Params, lr: float, momentum: float, weight_decay: float, grad_clip: float) -> None:
        self.params = params  # [clients, ...] each, updated in place
        self.lr, self.momentum, self.weight_decay, self.grad_clip = lr, momentum, weight_decay, grad_clip
        # A zero buffer gives torch's first step exactly (buf = 0 * momentum + d_p = d_p).
        self.buffers = {k: torch.zeros_like(p) for k, p in params.items()} if momentum else {}

    @torch.no_grad()
    def step(self, grads: Params, rows: torch.Tensor | None = None) -> None:
        """One step of every client (rows None) or of the clients at `rows` (grads: [len(rows), ...])."""
        keys = list(grads)
        g = [grads[k] for k in keys]
        if self.grad_clip > 0:
            g = clip_per_client(g, self.grad_clip)
        p = [self.params[k] if rows is None else self.params[k][rows] for k in keys]
        d = torch._foreach_add(g, p, alpha=self.weight_decay) if self.weight_decay else g
        if self.momentum:
            buf = [self.buffers[k] if rows is None else self.buffers[k][rows] for k in keys]
            torch._foreach_mul_(buf, self.momentum)
            torch._foreach_add_(buf, d)
            d = buf
            if rows is not None:
                for k, b in zip(keys, buf):
                    self.buffers[k].index_copy_(0, rows, b)
        torch._foreach_add_(p, d, alpha=-self.lr)
        if rows is not None:
            for k, new in zip(keys, p):
                self.params[k].index_copy_(0, rows, new)


def clip_per_client(grads: list[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    """clip_grad_norm_ per client: g * min(1, max_norm / (||g_client||_2 + 1e-6)) (torch's formula)."""
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads], dim=1).norm(dim=1)
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    return [g * coef.view(-1, *([1] * (g.dim() - 1))) for g in grads]
