"""FedPAN's position-aware neurons (Li et al., CVPR 2022): fixed per-channel sin masks after each conv."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class PanSpec:
    op: str  # "add": h + A*m ; "mul": h * (1 + A*m)
    period: float  # T
    amplitude: float  # A

    def tag(self) -> str:
        """Compact text form kept in checkpoint metadata, e.g. 'mul:1:0.05'."""
        return f"{self.op}:{self.period:g}:{self.amplitude:g}"

    @classmethod
    def from_tag(cls, tag: str) -> PanSpec | None:
        if not tag:
            return None
        op, period, amplitude = tag.split(":")
        return cls(op, float(period), float(amplitude))


class PositionMask(nn.Module):
    """m_j = A * sin(2*pi*T*j / C) for channel j of C, broadcast over H x W; a non-persistent buffer,
    so it is never trained, never in a state_dict, and never sent to or averaged by the server."""

    def __init__(self, channels: int, spec: PanSpec) -> None:
        super().__init__()
        j = torch.arange(channels, dtype=torch.float32)
        mask = spec.amplitude * torch.sin(2 * math.pi * spec.period * j / channels)
        self.register_buffer("mask", mask.view(1, channels, 1, 1), persistent=False)
        self.op = spec.op

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.mask if self.op == "add" else h * (1 + self.mask)


def position_mask(channels: int, spec: PanSpec | None) -> nn.Module:
    return PositionMask(channels, spec) if spec is not None else nn.Identity()
