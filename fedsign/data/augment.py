"""Training augmentation and normalisation on the tensors' own device (no DataLoader, no CPU hop)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedsign.data.specs import DatasetSpec


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """RandomCrop(size, padding) with zero padding + RandomHorizontalFlip, one draw per image."""
    n, c, h, w = x.shape
    if padding > 0:
        padded = F.pad(x, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (n, 1, 1, 1), device=x.device, generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (n, 1, 1, 1), device=x.device, generator=generator)
        rows = (dy + torch.arange(h, device=x.device).view(1, 1, h, 1)).expand(n, c, h, w + 2 * padding)
        cols = (dx + torch.arange(w, device=x.device).view(1, 1, 1, w)).expand(n, c, h, w)
        x = padded.gather(2, rows).gather(3, cols)
    if flip:
        mask = torch.rand((n, 1, 1, 1), device=x.device, generator=generator) < 0.5
        x = torch.where(mask, x.flip(3), x)
    return x


def normalize(x: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float32, (x / 255 - mean) / std per channel."""
    mean = torch.tensor(spec.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, -1, 1, 1)
    return (x.float().div_(255.0) - mean) / std
