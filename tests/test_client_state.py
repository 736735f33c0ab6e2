"""Client method state under a node's state-dir survives a SuperNode restart (a fresh Context), and
is ignored, with a warning, when it is damaged or stale (another run, or not from an earlier round).
End to end through fedsign's ClientApp with FedDyn, whose gradient state changes the local update."""

from __future__ import annotations

import logging

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from fedsign import client_app
from fedsign.client_state import ClientStateStore, Stamp
from fedsign.config import RunConfig
from fedsign.data.specs import dataset_spec
from fedsign.models import build_model, exchanged_state
from tests.conftest import pickle_bombs


def node(state_dir=None) -> Context:
    """A SuperNode's context; a new one = the node restarted (its in-memory state is gone)."""
    config = {"partition-id": 0, "num-partitions": 10}
    if state_dir is not None:
        config["state-dir"] = str(state_dir)
    return Context(run_id=1, node_id=7, node_config=config, state=RecordDict(), run_config={})


def test_store_round_trip_restart_and_stamps(tmp_path, caplog):
    w = {"grad.w": torch.arange(6.0).reshape(2, 3)}
    ClientStateStore(node(tmp_path), "/runs/a", Stamp("stamp-A")).save(0, w, server_round=2)
    assert len(list(tmp_path.rglob("client-0-round00002.safetensors"))) == 1
    restarted = ClientStateStore(node(tmp_path), "/runs/a", Stamp("stamp-A"))
    assert torch.equal(restarted.load(0, server_round=3)["grad.w"], w["grad.w"])
    with caplog.at_level(logging.WARNING, logger="fedsign"):
        assert restarted.load(0, server_round=2) == {}  # not from an earlier round
        assert ClientStateStore(node(tmp_path), "/runs/a", Stamp("stamp-B")).load(0, 3) == {}  # another run
    assert caplog.text.count("ignoring saved method state") == 2
    assert ClientStateStore(node(tmp_path), "/runs/other", Stamp("stamp-A")).load(0, 3) == {}  # another run dir


@pytest.mark.parametrize("on_disk", [False, True])
def test_a_resumed_server_gets_the_states_of_its_resume_point(tmp_path, on_disk):
    """checkpoint.every=2; the server is killed after round 5 and resumes from round 4 (a new segment):
    round 5 is redone with the state of round 4, not the killed segment's round 5. Only what a resume
    could need is kept: the newest state and the newest at or before each of the last two checkpoints."""
    context = node(tmp_path if on_disk else None)
    first = Stamp("run", segment="A", resumed_from=0, checkpoint_every=2)
    for r in range(1, 6):
        ClientStateStore(context, "/runs/a", first).save(3, {"x": torch.full((2,), float(r))}, server_round=r)
    kept = sorted(s.round for s in ClientStateStore(context, "/runs/a", first)._index(3))
    assert kept == [2, 4, 5]
    resumed = ClientStateStore(context, "/runs/a", Stamp("run", segment="B", resumed_from=4, checkpoint_every=2))
    assert float(resumed.load(3, server_round=5)["x"][0]) == 4.0
    resumed.save(3, {"x": torch.full((2,), 50.0)}, server_round=5)
    assert float(resumed.load(3, server_round=6)["x"][0]) == 50.0  # this segment's own round 5
    # killed between a client's round 4 and the server's checkpoint of round 4: resume from round 2
    early = ClientStateStore(context, "/runs/a", Stamp("run", segment="C", resumed_from=2, checkpoint_every=2))
    assert float(early.load(3, server_round=3)["x"][0]) == 2.0


def test_a_pickled_state_file_is_ignored_never_unpickled(tmp_path, caplog):
    """Mutant killed: a client-state reader that unpickles (the marker file would appear)."""
    store = ClientStateStore(node(tmp_path / "state"), "/runs/a", Stamp("s"))
    store.folder.mkdir(parents=True)
    for bomb, marker in pickle_bombs(tmp_path):
        bomb.rename(store.folder / "client-0-round00001.safetensors")
        with caplog.at_level(logging.WARNING, logger="fedsign"):
            assert store.load(0, server_round=2) == {}
        assert not marker.exists() and "damaged method state file" in caplog.text


def test_store_in_memory_without_state_dir():
    context = node()
    store = ClientStateStore(context, "/runs/a", Stamp("s"))
    store.save(1, {"x": torch.ones(2)}, server_round=1)
    assert torch.equal(ClientStateStore(context, "/runs/a", Stamp("s")).load(1, 2)["x"], torch.ones(2))
    assert ClientStateStore(node(), "/runs/a", Stamp("s")).load(1, 2) == {}  # a restart loses in-memory state


def _train(context: Context, cfg: RunConfig, server_round: int, stamp: str = "run-1") -> dict[str, torch.Tensor]:
    torch.manual_seed(0)  # the same global model each time (the ClientApp trains its cached model in place)
    glob = exchanged_state(build_model(cfg.model.name, dataset_spec(cfg.dataset.name)))
    config = ConfigRecord({**cfg.to_flat(), "server-round": server_round, "run-stamp": stamp})
    message = Message(RecordDict({"arrays": ArrayRecord(torch_state_dict=glob), "config": config}),
                      message_type=MessageType.TRAIN, dst_node_id=7)
    return client_app.train(message, context).content["arrays"].to_torch_state_dict()


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_feddyn_state_survives_a_restart_and_damage_is_handled(flower_ids, tmp_path, caplog):
    cfg = RunConfig.from_flat({"method.name": "feddyn", "method.alpha": 0.5, "federation.num_clients": 10,
                               "train.local_epochs": 1, "train.batch_size": 32, "partition.scheme": "iid",
                               "device": "cpu", "out": str(tmp_path / "run")})
    state_dir = tmp_path / "state"
    _train(node(state_dir), cfg, server_round=1)
    [path] = state_dir.rglob("client-0-round*.safetensors")
    saved = path.read_bytes()

    def only(content: bytes | None) -> None:
        """The node's state folder holding just `content` as its round-1 state (or nothing)."""
        for old in state_dir.rglob("client-0-round*.safetensors"):
            old.unlink()
        if content is not None:
            path.write_bytes(content)

    with_state = _train(node(state_dir), cfg, server_round=2)  # restarted node: state read from disk
    only(None)
    without_state = _train(node(state_dir), cfg, server_round=2)
    assert not _same(with_state, without_state)  # the saved gradient state changed the update

    for content, stamp in ((b"\x00garbage", "run-1"), (saved, "run-2")):  # damaged; saved by another run
        only(content)
        with caplog.at_level(logging.WARNING, logger="fedsign"):
            assert _same(_train(node(state_dir), cfg, server_round=2, stamp=stamp), without_state)
    assert "damaged method state file" in caplog.text and "ignoring saved method state" in caplog.text
    only(saved)
    assert _same(_train(node(state_dir), cfg, server_round=2), with_state)
