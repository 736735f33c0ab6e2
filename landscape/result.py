"""What every probe returns: named arrays plus metadata (seed, scaling, group, data subset, dtype),
written as one JSON object: probe, checkpoint, metadata, arrays, and each array again at the top level
(docs/landscape.md lists the keys)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsign.atomic import atomic_target


def to_plain(value: Any) -> Any:
    """Tensors/arrays -> lists, numpy scalars -> Python numbers, NaN/inf -> None (valid JSON)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return to_plain(value.tolist())
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class ProbeResult:
    probe: str
    arrays: dict[str, Any]
    metadata: dict[str, Any]
    checkpoint: str | list[str] = ""
    extra: dict[str, Any] = field(default_factory=dict)  # not-JSON companions (e.g. mined direction tensors)

    def to_dict(self) -> dict[str, Any]:
        return to_plain({"probe": self.probe, "checkpoint": self.checkpoint, "metadata": self.metadata,
                         "arrays": self.arrays, **self.arrays})

    def write_json(self, path: str | Path) -> Path:
        """Write atomically: a failed run never leaves half a file (nor replaces an old one)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=1) + "\n"
        with atomic_target(path) as tmp:
            Path(tmp).write_text(text)
        return path


def probe_metadata(*, seed: int, scaling: str, group: str, data: str, dtype: torch.dtype | str,
                   **extra: Any) -> dict[str, Any]:
    return {"seed": seed, "scaling": scaling, "group": group, "data": data,
            "dtype": str(dtype).replace("torch.", ""), **extra}
