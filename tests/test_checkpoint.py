"""Checkpoints: safetensors with metadata that rebuilds the model; bad files are clear errors."""

from __future__ import annotations

import pytest
import torch

from fedsign.checkpoint import (checkpoint_metadata, load_checkpoint, load_metadata, model_from_checkpoint,
                                save_checkpoint)
from fedsign.data.specs import DATASETS
from fedsign.errors import CheckpointError
from fedsign.models import PanSpec, build_model, exchanged_state
from tests.conftest import pickle_bombs


def _save(tmp_path, name="smallcnn_bn", pan=None, **meta):
    torch.manual_seed(0)
    model = build_model(name, DATASETS["digits"], pan)
    model.train()
    model(torch.randn(8, 1, 8, 8))  # move the BN statistics away from their init
    metadata = checkpoint_metadata(model=name, dataset="digits", round=3, role="server", method="fedavg",
                                   seed=0, pan=pan)
    metadata.update(meta)
    path = save_checkpoint(tmp_path / "ckpt.safetensors", exchanged_state(model), metadata)
    return model, path


@pytest.mark.parametrize("pan", [None, PanSpec("add", 4, 0.25)])
def test_round_trip_rebuilds_the_same_function(tmp_path, pan):
    model, path = _save(tmp_path, "smallcnn_bn", pan)
    rebuilt, meta = model_from_checkpoint(path)
    assert meta["round"] == "3" and meta["role"] == "server" and meta["num_classes"] == "10"
    x = torch.randn(5, 1, 8, 8)
    model.eval(), rebuilt.eval()
    assert torch.allclose(model(x), rebuilt(x))
    tensors, _ = load_checkpoint(path)
    assert not any(k.endswith("num_batches_tracked") for k in tensors)


def test_no_temporary_files_left(tmp_path):
    _save(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]


@pytest.mark.parametrize("write", ["checkpoint", "text"])
def test_a_crash_between_write_and_rename_keeps_the_old_file(tmp_path, monkeypatch, write):
    """Atomic writes: when the rename into place fails (the process dies there), the old file is
    intact and no temporary file is left. Mutants killed: writing the target in place, and not
    removing the temporary file on failure."""
    import os

    from fedsign.run_dir import write_atomic

    target = tmp_path / ("ckpt.safetensors" if write == "checkpoint" else "results.json")
    if write == "checkpoint":
        old = save_checkpoint(target, {"w": torch.ones(3)}, {"round": "1"}).read_bytes()
    else:
        write_atomic(target, "old")
        old = target.read_bytes()

    def crash(src, dst):
        raise OSError("killed between write and rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        if write == "checkpoint":
            save_checkpoint(target, {"w": torch.zeros(3)}, {"round": "2"})
        else:
            write_atomic(target, "new")
    assert target.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_pickle_or_garbage_is_refused_without_unpickling(tmp_path):
    """A pickle (plain or torch.save) that would create a marker file when unpickled: refused by every
    checkpoint reader, and the marker never appears. Mutant killed: a reader that falls back to
    torch.load / pickle.load (the old test's payload left no trace when unpickled)."""
    for evil, marker in pickle_bombs(tmp_path):
        for read in (load_checkpoint, load_metadata, model_from_checkpoint):
            with pytest.raises(CheckpointError, match="not a readable safetensors"):
                read(evil)
        assert not marker.exists()
    _, path = _save(tmp_path)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(truncated)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_metadata_that_does_not_match_the_weights(tmp_path):
    _, path = _save(tmp_path, "smallcnn", model="logreg")
    with pytest.raises(CheckpointError, match="do not fit the model"):
        model_from_checkpoint(path)
    _, path = _save(tmp_path, "smallcnn", model="resnet99")
    with pytest.raises(CheckpointError, match=r"unknown model 'resnet99' \(known: vgg8, vgg8_bn, vgg11, "):
        model_from_checkpoint(path)


def test_metadata_holds_every_documented_key_with_its_value():
    """The metadata contract (fedsign/checkpoint.py's docstring). Mutants killed: a renamed key, a
    value replaced by None, a default client id or pan tag other than ''."""
    server = checkpoint_metadata(model="vgg8", dataset="cifar10", round=4, role="server", method="moon", seed=3)
    assert server == {"model": "vgg8", "dataset": "cifar10", "num_classes": "10", "round": "4", "role": "server",
                      "client_id": "", "method": "moon", "seed": "3", "pan": ""}
    client = checkpoint_metadata(model="vgg8", dataset="cifar10", round=4, role="client", method="fedpan", seed=3,
                                 client_id=17, pan=PanSpec("add", 4, 0.25), run_stamp=12.5)
    assert client["client_id"] == "17" and client["pan"] == "add:4:0.25" and client["run_stamp"] == "12.5"


@pytest.mark.parametrize("meta, words", [
    ({"model": ""}, r"lacks the metadata \['model'\] needed to rebuild"),
    ({"dataset": "mnist9"}, r"unknown dataset 'mnist9' \(known: cifar10, cinic10, digits\)"),
    ({"num_classes": "100"}, r"num_classes=100 does not match digits"),
    ({"pan": "bogus"}, r"cannot rebuild its model: "),
])
def test_metadata_that_cannot_rebuild_the_model_is_named(tmp_path, meta, words):
    """Each refusal of model_from_checkpoint says what is wrong. Mutants killed: the missing-keys check
    dropped, any message replaced by None, the wrong metadata key read for the message."""
    _, path = _save(tmp_path, "smallcnn")
    tensors, metadata = load_checkpoint(path)
    save_checkpoint(path, tensors, {**metadata, **meta})
    with pytest.raises(CheckpointError, match=words):
        model_from_checkpoint(path)


def test_weights_that_do_not_fit_name_the_file_and_a_missing_pan_tag_is_no_mask(tmp_path):
    """Mutants killed: load_exchanged not told the file's name; the default of a missing 'pan' tag."""
    _, path = _save(tmp_path, "smallcnn", model="logreg")
    with pytest.raises(CheckpointError, match=rf"checkpoint '{path}' do not fit the model"):
        model_from_checkpoint(path)
    model, path = _save(tmp_path, "smallcnn")
    tensors, meta = load_checkpoint(path)
    del meta["pan"]  # written by a version before FedPAN's tag
    save_checkpoint(path, tensors, meta)
    rebuilt, _ = model_from_checkpoint(path, device="meta")  # the device asked for (meta: no GPU needed)
    assert all(p.device.type == "meta" for p in rebuilt.parameters())
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in model.parameters())
