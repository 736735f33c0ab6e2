"""The torch device a config asks for."""

from __future__ import annotations

import torch

from fedsign.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} was asked for, but no CUDA GPU is visible; use device=cpu or auto")
    return torch.device(name)
