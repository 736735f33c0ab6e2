"""Which on-disk form of a dataset a root directory holds, and how to read it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fedsign.data.cifar_batches import read_cifar_batches
from fedsign.data.imagefolder import read_image_folder, read_image_tar
from fedsign.data.images import ImageSet
from fedsign.data.specs import DatasetSpec
from fedsign.errors import DatasetError

Reader = Callable[[], dict[str, ImageSet]]  # split name -> images


@dataclass
class Source:
    form: str  # a short description, e.g. "cifar-10-batches-py"
    paths: tuple[Path, ...]  # the files/folders read (their size and mtime key the cache)
    read: Reader


CIFAR10_FORMS = (
    "a 'cifar-10-batches-py' folder (torchvision's format)",
    "'train/' and 'test/' ImageFolder trees (train/<class>/<image>)",
    "'*train*.tar.gz' and '*test*.tar.gz' archives of those trees (the offline JPEG copy)",
)
CINIC10_FORMS = (
    "CINIC-10's official 'train/', 'valid/' and 'test/' ImageFolder trees",
    "an archive '*.tar.gz' holding those trees",
)


def _tar_pair(root: Path) -> tuple[Path, Path] | None:
    archives = sorted(root.glob("*.tar.gz")) + sorted(root.glob("*.tgz"))
    train = [a for a in archives if "train" in a.name]
    test = [a for a in archives if "test" in a.name]
    return (train[0], test[0]) if len(train) == 1 and len(test) == 1 else None


def cifar10_source(root: Path, spec: DatasetSpec) -> Source | None:
    for folder in (root / "cifar-10-batches-py", root):
        if (folder / "data_batch_1").is_file():
            def read(folder: Path = folder) -> dict[str, ImageSet]:
                train, test = read_cifar_batches(folder)
                return {"train": train, "test": test}
            return Source("cifar-10-batches-py", (folder,), read)
    if (root / "train").is_dir() and (root / "test").is_dir():
        return Source("ImageFolder", (root / "train", root / "test"), lambda: {
            s: read_image_folder(root / s, spec.classes, spec.image_size) for s in ("train", "test")})
    pair = _tar_pair(root)
    if pair:
        return Source("ImageFolder .tar.gz", pair, lambda: {
            s: read_image_tar(a, s, spec.classes, spec.image_size) for s, a in zip(("train", "test"), pair)})
    return None


def cinic10_source(root: Path, spec: DatasetSpec) -> Source | None:
    splits = ("train", "valid", "test")
    if all((root / s).is_dir() for s in splits):
        return Source("ImageFolder", tuple(root / s for s in splits), lambda: {
            s: read_image_folder(root / s, spec.classes, spec.image_size) for s in splits})
    archives = sorted(root.glob("*.tar.gz")) + sorted(root.glob("*.tgz"))
    if len(archives) == 1:
        archive = archives[0]
        return Source("ImageFolder .tar.gz", (archive,), lambda: {
            s: read_image_tar(archive, s, spec.classes, spec.image_size) for s in splits})
    return None


def dataset_root(name: str, root: str) -> str:
    """dataset.root, or when it is empty the environment's $FEDSIGN_CIFAR10 / $FEDSIGN_CINIC10."""
    return root or (os.environ.get(f"FEDSIGN_{name.upper()}", "") if name != "digits" else "")


def find_source(name: str, root_text: str, spec: DatasetSpec, download: bool) -> Source:
    forms = CIFAR10_FORMS if name == "cifar10" else CINIC10_FORMS
    hint = (f"Point dataset.root (or $FEDSIGN_{name.upper()}) at a directory holding one of: {'; '.join(forms)}"
            + (" (or set dataset.download=true when online)." if name == "cifar10" else "."))
    root_text = dataset_root(name, root_text)
    if not root_text:
        raise DatasetError(f"dataset.root is not set for {name}. {hint}")
    root = Path(root_text).expanduser().resolve()
    if not root.is_dir():
        if name == "cifar10" and download:
            root.mkdir(parents=True, exist_ok=True)
        else:
            raise DatasetError(f"dataset.root '{root_text}' is not a directory. {hint}")
    finder = cifar10_source if name == "cifar10" else cinic10_source
    source = finder(root, spec)
    if source is None and name == "cifar10" and download:
        _download_cifar10(root)
        source = finder(root, spec)
    if source is None:
        raise DatasetError(f"no {name} data found under '{root_text}'. {hint}")
    return source


def _download_cifar10(root: Path) -> None:
    try:
        from torchvision.datasets import CIFAR10

        CIFAR10(str(root), train=True, download=True)
    except Exception as exc:  # noqa: BLE001 (network errors come in many types)
        raise DatasetError(f"could not download CIFAR-10 into '{root}': {exc}") from None
