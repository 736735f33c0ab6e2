"""ImageFolder trees (`<split>/<class>/<image>`) on disk or inside a .tar.gz, decoded to uint8 arrays."""

from __future__ import annotations

import io
import os
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fedsign.data.images import ImageSet
from fedsign.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")


def _decode(blob: bytes | Path, size: int) -> np.ndarray:
    with Image.open(io.BytesIO(blob) if isinstance(blob, bytes) else blob) as img:
        img = img.convert("RGB")
        if img.size != (size, size):
            raise ValueError(f"image of size {img.size}, expected {size}x{size}")
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def _decode_all(items: list[tuple[bytes | Path, int]], size: int, where: str) -> ImageSet:
    if not items:
        raise DatasetError(f"no images found in {where}")
    workers = max(1, min(8, os.cpu_count() or 1))  # Pillow releases the GIL while decoding
    try:
        with ThreadPoolExecutor(workers) as pool:
            arrays = list(pool.map(lambda item: _decode(item[0], size), items, chunksize=256))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot decode an image in {where}: {exc}") from None
    x = torch.from_numpy(np.stack(arrays))
    y = torch.tensor([label for _, label in items], dtype=torch.int64)
    return ImageSet(x, y)


def read_image_folder(split_dir: Path, classes: tuple[str, ...], size: int) -> ImageSet:
    """Read `split_dir/<class>/*` with labels in the order of `classes`."""
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if sorted(classes) != found:
        raise DatasetError(
            f"{split_dir} has class folders {found}; expected exactly {sorted(classes)}"
        )
    items: list[tuple[bytes | Path, int]] = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (split_dir / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        items += [(p, label) for p in files]
    return _decode_all(items, size, str(split_dir))


def read_image_tar(archive: Path, split: str, classes: tuple[str, ...], size: int) -> ImageSet:
    """Read members `[prefix/]<split>/<class>/<image>` of a .tar.gz, in sorted member order."""
    index = {name: label for label, name in enumerate(classes)}
    found: list[tuple[str, bytes, int]] = []
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                parts = Path(member.name).parts
                if not member.isfile() or len(parts) < 3 or Path(member.name).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                if parts[-3] != split:
                    continue
                if parts[-2] not in index:
                    raise DatasetError(f"{archive}: class folder '{parts[-2]}' is not one of {list(classes)}")
                handle = tar.extractfile(member)
                assert handle is not None
                found.append((member.name, handle.read(), index[parts[-2]]))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DatasetError(f"cannot read archive {archive}: {exc}") from None
    found.sort(key=lambda item: item[0])
    return _decode_all([(blob, label) for _, blob, label in found], size, f"{archive} ({split}/)")
