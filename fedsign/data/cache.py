"""Decode once: decoded splits are cached as uint8 safetensors files keyed by the source's files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fedsign.atomic import atomic_target
from fedsign.data.images import ImageSet


def cache_dir() -> Path:
    return Path(os.environ.get("FEDSIGN_CACHE", Path.home() / ".cache" / "fedsign")).expanduser()


def cache_key(name: str, form: str, paths: tuple[Path, ...], extra: str = "") -> str:
    """Name, form and each source path with its size and modification time."""
    parts = [name, form, extra]
    for path in paths:
        stat = path.stat()
        parts.append(f"{path}:{stat.st_size}:{stat.st_mtime_ns}")
    return f"{name}-{hashlib.sha1('|'.join(parts).encode()).hexdigest()[:16]}"


def load_cached(key: str) -> dict[str, ImageSet] | None:
    path = cache_dir() / f"{key}.safetensors"
    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError):
        return None  # a damaged cache entry is rebuilt, never trusted
    splits = {k[:-2] for k in tensors if k.endswith(".x")}
    return {s: ImageSet(tensors[f"{s}.x"], tensors[f"{s}.y"]) for s in splits}


def store_cached(key: str, splits: dict[str, ImageSet]) -> None:
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for split, images in splits.items():
            tensors[f"{split}.x"] = images.x.contiguous()
            tensors[f"{split}.y"] = images.y.contiguous()
        with atomic_target(folder / f"{key}.safetensors") as tmp:  # readers never see half a file
            save_file(tensors, tmp)
    except OSError:
        pass  # an unwritable cache only costs a re-decode next time
