"""Checkpoints: safetensors files (never pickle) whose string metadata is enough to rebuild the model.

Metadata keys: model, dataset, num_classes, round, role (server/client), client_id,
method, seed; plus `pan` (FedPAN mask spec, '' if none) so the exact architecture can be rebuilt.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from fedsign.atomic import atomic_target
from fedsign.data.specs import DATASETS, dataset_spec
from fedsign.errors import CheckpointError, FedsignError
from fedsign.models.pan import PanSpec
from fedsign.models.registry import MODEL_NAMES, build_model
from fedsign.models.state import load_exchanged

REQUIRED_KEYS = ("model", "dataset", "num_classes", "round", "role", "client_id", "method", "seed")


def checkpoint_metadata(*, model: str, dataset: str, round: int, role: str, method: str, seed: int,
                        client_id: int | str = "", pan: PanSpec | None = None, **extra: object) -> dict[str, str]:
    meta = {
        "model": model, "dataset": dataset, "num_classes": str(dataset_spec(dataset).num_classes),
        "round": str(round), "role": role, "client_id": str(client_id), "method": method,
        "seed": str(seed), "pan": pan.tag() if pan else "",
    }
    meta.update({k: str(v) for k, v in extra.items()})
    return meta


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write atomically (temporary file, then rename): a crash never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_target(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata; a missing, corrupted or non-safetensors file is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"'{path}' is not a readable safetensors checkpoint ({exc})") from None
    return tensors, metadata


def load_metadata(path: str | Path) -> dict[str, str]:
    """A checkpoint's metadata alone (its tensors are not read)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"'{path}' is not a readable safetensors checkpoint ({exc})") from None


def model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, str]]:
    """Rebuild the model named in the metadata and load the weights; mismatches are CheckpointErrors."""
    tensors, meta = load_checkpoint(path)
    missing = [k for k in ("model", "dataset") if not meta.get(k)]
    if missing:
        raise CheckpointError(f"'{path}' lacks the metadata {missing} needed to rebuild its model")
    if meta["model"] not in MODEL_NAMES:
        raise CheckpointError(f"'{path}': unknown model '{meta['model']}' (known: {', '.join(MODEL_NAMES)})")
    if meta["dataset"] not in DATASETS:
        raise CheckpointError(f"'{path}': unknown dataset '{meta['dataset']}' (known: {', '.join(DATASETS)})")
    spec = DATASETS[meta["dataset"]]
    if meta.get("num_classes") and meta["num_classes"] != str(spec.num_classes):
        raise CheckpointError(f"'{path}': num_classes={meta['num_classes']} does not match {spec.name}")
    try:
        model = build_model(meta["model"], spec, PanSpec.from_tag(meta.get("pan", "")))
    except (FedsignError, ValueError) as exc:
        raise CheckpointError(f"'{path}': cannot rebuild its model: {exc}") from None
    load_exchanged(model, tensors, what=f"checkpoint '{path}'")
    return model.to(device), meta
