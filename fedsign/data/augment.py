"""Training augmentation and normalisation on the tensors' own device (no DataLoader, no CPU hop).

The random draws (`CropFlip`) are separate from applying them, so a batch plan drawn once per client
gives the same images whether the client trains alone or stacked with others (the cohort engine).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedsign.data.specs import DatasetSpec


@dataclass
class CropFlip:
    """Per-image draws of RandomCrop(padding) + RandomHorizontalFlip: offsets [N] and flip flags [N]."""

    dy: torch.Tensor  # int64, row offset into the padded image, 0..2*padding
    dx: torch.Tensor  # int64, column offset
    flip: torch.Tensor  # bool

    def __getitem__(self, index) -> CropFlip:
        return CropFlip(self.dy[index], self.dx[index], self.flip[index])

    @staticmethod
    def stack(draws: list[CropFlip]) -> CropFlip:
        return CropFlip(torch.stack([d.dy for d in draws]), torch.stack([d.dx for d in draws]),
                        torch.stack([d.flip for d in draws]))

    @staticmethod
    def cat(draws: list[CropFlip]) -> CropFlip:
        return CropFlip(torch.cat([d.dy for d in draws]), torch.cat([d.dx for d in draws]),
                        torch.cat([d.flip for d in draws]))

    def to(self, device: torch.device) -> CropFlip:
        return CropFlip(self.dy.to(device), self.dx.to(device), self.flip.to(device))

    def flatten(self) -> CropFlip:
        return CropFlip(self.dy.reshape(-1), self.dx.reshape(-1), self.flip.reshape(-1))


def draw_crop_flip(n: int, padding: int, generator: torch.Generator, device: torch.device) -> CropFlip:
    """Draws for n images, in a fixed order from `generator` (dy, dx, flip)."""
    dy = torch.randint(0, 2 * padding + 1, (n,), device=device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), device=device, generator=generator)
    flip = torch.rand((n,), device=device, generator=generator) < 0.5
    return CropFlip(dy, dx, flip)


def apply_crop_flip(x: torch.Tensor, padding: int, flip: bool, draws: CropFlip) -> torch.Tensor:
    """Zero-pad by `padding`, take the window at (dy, dx) of each image, mirror where drawn."""
    n, c, h, w = x.shape
    if padding > 0:
        padded = F.pad(x, (padding, padding, padding, padding))
        dy, dx = draws.dy.view(n, 1, 1, 1), draws.dx.view(n, 1, 1, 1)
        rows = (dy + torch.arange(h, device=x.device).view(1, 1, h, 1)).expand(n, c, h, w + 2 * padding)
        cols = (dx + torch.arange(w, device=x.device).view(1, 1, 1, w)).expand(n, c, h, w)
        x = padded.gather(2, rows).gather(3, cols)
    if flip:
        x = torch.where(draws.flip.view(n, 1, 1, 1), x.flip(3), x)
    return x


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """RandomCrop(size, padding) with zero padding + RandomHorizontalFlip, one draw per image."""
    return apply_crop_flip(x, padding, flip, draw_crop_flip(len(x), padding, generator, x.device))


def normalize(x: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    """uint8 [N, C, H, W] -> torch's default float dtype, (x / 255 - mean) / std per channel."""
    mean, std = _channel_stats(spec, x.device, torch.get_default_dtype())
    return (x.to(mean.dtype).div_(255.0) - mean) / std


@functools.lru_cache(maxsize=16)
def _channel_stats(spec: DatasetSpec, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """mean and std as [1, C, 1, 1] tensors on the device, made once (a host-to-device copy would
    wait for the GPU at every batch)."""
    return (torch.tensor(spec.mean, device=device, dtype=dtype).view(1, -1, 1, 1),
            torch.tensor(spec.std, device=device, dtype=dtype).view(1, -1, 1, 1))
