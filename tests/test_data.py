"""Datasets: every on-disk form of CIFAR-10 (and CINIC-10) loads, bad roots are clear errors,
augmentation crops and flips exactly, decoded data is cached."""

from __future__ import annotations

import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from fedsign.config import DatasetConfig
from fedsign.data import load_dataset, normalize, random_crop_flip
from fedsign.data.specs import CIFAR_CLASSES, DATASETS
from fedsign.errors import DatasetError
from tests.conftest import CIFAR10_JPEG, needs_cifar10

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def private_cache(request, tmp_path, monkeypatch):
    """Fixture datasets are cached in the test's folder; the real copy keeps the user's cache."""
    if "real_offline" not in request.node.name:
        monkeypatch.setenv("FEDSIGN_CACHE", str(tmp_path / "cache"))
    from fedsign.data.loading import _load

    _load.cache_clear()
    yield
    _load.cache_clear()


def _images(n):
    return RNG.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), RNG.integers(0, 10, n)


def _write_batches(folder, per_batch=4):
    folder.mkdir(parents=True)
    truth = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x, y = _images(per_batch)
        truth[name] = (x, y)
        with open(folder / name, "wb") as handle:
            pickle.dump({b"data": x.reshape(per_batch, -1), b"labels": y.tolist()}, handle)
    return truth


def _write_image_folder(root, splits=("train", "test"), per_class=2, tar=False):
    """`split/class/NNNN.png` trees, or (tar=True) one `cifar10-<split>.tar.gz` per split."""
    truth = {}
    for split in splits:
        archive = tarfile.open(root / f"cifar10-{split}.tar.gz", "w:gz") if tar else None
        xs, ys = [], []
        for label, cls in enumerate(CIFAR_CLASSES):
            for i in range(per_class):
                img = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="PNG")  # lossless, so pixels compare exactly
                name = f"{split}/{cls}/{i:04d}.png"
                if archive is not None:
                    info = tarfile.TarInfo(name)
                    info.size = len(buf.getvalue())
                    archive.addfile(info, io.BytesIO(buf.getvalue()))
                else:
                    (root / split / cls).mkdir(parents=True, exist_ok=True)
                    (root / name).write_bytes(buf.getvalue())
                xs.append(img.transpose(2, 0, 1))
                ys.append(label)
        if archive is not None:
            archive.close()
        truth[split] = (np.stack(xs), np.array(ys))
    return truth


def test_cifar10_batches_py_form(tmp_path):
    truth = _write_batches(tmp_path / "cifar-10-batches-py")
    data = load_dataset(DatasetConfig("cifar10", str(tmp_path)))
    expected_train = np.concatenate([truth[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert data.train.x.shape == (20, 3, 32, 32) and data.train.x.dtype == torch.uint8
    assert np.array_equal(data.train.x.numpy(), expected_train)
    assert np.array_equal(data.test.y.numpy(), truth["test_batch"][1])


def test_batches_with_foreign_pickle_globals_are_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_batches(folder)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(folder / "data_batch_1", "wb") as handle:
        pickle.dump({b"data": Evil(), b"labels": []}, handle)
    with pytest.raises(DatasetError, match="refusing to load"):
        load_dataset(DatasetConfig("cifar10", str(tmp_path)))
    assert not marker.exists()


@pytest.mark.parametrize("tar", [False, True])
def test_cifar10_image_folder_and_archive_forms(tmp_path, tar):
    truth = _write_image_folder(tmp_path, tar=tar)
    data = load_dataset(DatasetConfig("cifar10", str(tmp_path)))
    for split, images in (("train", data.train), ("test", data.test)):
        assert np.array_equal(images.x.numpy(), truth[split][0])
        assert np.array_equal(images.y.numpy(), truth[split][1])


def test_cinic10_folders_with_and_without_valid(tmp_path):
    truth = _write_image_folder(tmp_path, splits=("train", "valid", "test"), per_class=1)
    data = load_dataset(DatasetConfig("cinic10", str(tmp_path)))
    assert len(data.train) == 10 and np.array_equal(data.test.x.numpy(), truth["test"][0])
    both = load_dataset(DatasetConfig("cinic10", str(tmp_path), use_valid=True))
    assert len(both.train) == 20
    assert np.array_equal(both.train.x[10:].numpy(), truth["valid"][0])


@pytest.mark.parametrize("root, words", [
    ("", ["dataset.root is not set", "cifar-10-batches-py"]),
    ("/no/such/dir", ["'/no/such/dir' is not a directory", "ImageFolder"]),
])
def test_missing_roots_are_clear_errors(root, words):
    with pytest.raises(DatasetError) as err:
        load_dataset(DatasetConfig("cifar10", root))
    for word in words:
        assert word in str(err.value)


def test_a_root_with_the_wrong_content_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match="no cifar10 data found"):
        load_dataset(DatasetConfig("cifar10", str(tmp_path)))
    (tmp_path / "train" / "cats").mkdir(parents=True)
    (tmp_path / "test").mkdir()
    with pytest.raises(DatasetError, match="class folders"):
        load_dataset(DatasetConfig("cifar10", str(tmp_path)))
    with pytest.raises(DatasetError, match="no cinic10 data found"):
        load_dataset(DatasetConfig("cinic10", str(tmp_path / "test")))


def test_digits_ship_with_scikit_learn():
    data = load_dataset(DatasetConfig("digits"))
    assert data.train.x.shape[1:] == (1, 8, 8) and len(data.train) + len(data.test) == 1797
    assert set(data.train.y.tolist()) == set(range(10))


def test_decoded_data_is_cached_and_a_damaged_cache_is_rebuilt(tmp_path):
    from fedsign.data.cache import cache_dir
    from fedsign.data.loading import _load

    _write_image_folder(tmp_path, per_class=1)
    first = load_dataset(DatasetConfig("cifar10", str(tmp_path)))
    files = list(cache_dir().glob("cifar10-*.safetensors"))
    assert len(files) == 1
    files[0].write_bytes(b"garbage")
    _load.cache_clear()
    again = load_dataset(DatasetConfig("cifar10", str(tmp_path)))
    assert torch.equal(first.train.x, again.train.x)


@needs_cifar10
def test_the_real_offline_cifar10_copy():
    data = load_dataset(DatasetConfig("cifar10", str(CIFAR10_JPEG)))
    assert data.train.x.shape == (50000, 3, 32, 32) and data.test.x.shape == (10000, 3, 32, 32)
    assert data.train.y.bincount().tolist() == [5000] * 10
    assert data.test.y.bincount().tolist() == [1000] * 10
    mean = data.train.x.float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor(DATASETS["cifar10"].mean), atol=0.02)


def test_random_crop_flip_takes_exact_windows_of_the_padded_image():
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    out = random_crop_flip(x, 4, True, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    flips = 0
    for i in range(len(x)):
        windows = [padded[i, :, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
        plain = any(torch.equal(out[i], w) for w in windows)
        flipped = any(torch.equal(out[i], w.flip(2)) for w in windows)
        assert plain or flipped
        flips += flipped and not plain
    assert 10 < flips < 54  # about half flipped
    again = random_crop_flip(x, 4, True, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_normalize():
    spec = DATASETS["cifar10"]
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    expected = (x.float() / 255 - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    assert torch.allclose(normalize(x, spec), expected)
