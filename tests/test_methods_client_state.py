"""Method state through the real ClientApp over two rounds: MOON's previous model is the client's
last local model, FedDyn's gradient state is −α(w_1 − w_g); both in Context.state (simulation) and
on disk under the node's state-dir (deployment, surviving a fresh Context). FedPAN's reply carries
no mask. FedDyn's server state h equals a hand computation over two rounds and survives a resume."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from fedsign.client_app import train
from fedsign.config import RunConfig
from fedsign.data.specs import dataset_spec
from fedsign.models import PanSpec, build_model, exchanged_state, parameter_names
from strategies.feddyn import FedDynConfig, FedDynObjective, FedDynStrategy
from strategies.functional import unprefixed
from strategies.moon import MoonObjective
from tests.conftest import pushed, train_reply


def _flat(method, out, **extra):
    return RunConfig.from_flat({"method.name": method, "federation.num_clients": 2, "federation.fraction": 1.0,
                                "train.local_epochs": 1, "train.batch_size": 64, "out": str(out),
                                **extra}).to_flat()


def _context(state_dir=None):
    node_config = {"partition-id": 0, "num-partitions": 2}
    if state_dir is not None:
        node_config["state-dir"] = str(state_dir)
    return Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config={})


def _train(flat, arrays, server_round, context):
    config = ConfigRecord({**flat, "server-round": server_round, "run-stamp": "test-run"})
    message = Message(RecordDict({"arrays": ArrayRecord(torch_state_dict=arrays), "config": config}),
                      message_type=MessageType.TRAIN, dst_node_id=5)
    reply = train(message, context)
    return reply.content["arrays"].to_torch_state_dict()


def _spy_prepare(monkeypatch, cls):
    """Record the method state each call of `cls.prepare` receives."""
    seen = []
    original = cls.prepare

    def prepare(self, model, global_params, state):
        seen.append({k: v.detach().cpu().clone() for k, v in state.items()})
        return original(self, model, global_params, state)

    monkeypatch.setattr(cls, "prepare", prepare)
    return seen


def _global(pan=None):
    torch.manual_seed(0)
    return {k: v.clone() for k, v in exchanged_state(build_model("smallcnn", dataset_spec("digits"), pan)).items()}


@pytest.mark.parametrize("store", ["context", "state-dir"])
def test_moon_previous_model_is_last_rounds_local_model(flower_ids, monkeypatch, tmp_path, store):
    seen = _spy_prepare(monkeypatch, MoonObjective)
    flat = _flat("moon", tmp_path / "run")
    state_dir = tmp_path / "state" if store == "state-dir" else None
    context = _context(state_dir)
    theta0 = _global()  # the run's initial model (seed 0), as the server builds it
    g0 = {k: v + 0.02 for k, v in theta0.items()}  # a later global model: the client's first round
    w1 = _train(flat, g0, 1, context)
    if store == "state-dir":
        context = _context(state_dir)  # a restarted SuperNode: only the disk remains
    g1 = {k: v + 0.01 for k, v in g0.items()}  # the next global model differs from the local one
    w2 = _train(flat, g1, 2, context)
    first = unprefixed("prev", seen[0])  # first round: the previous model is θ_0 (a never-sampled party of the authors' MOON holds θ_0)
    assert first and all(torch.equal(v, theta0[k]) for k, v in first.items())
    previous = unprefixed("prev", seen[1])
    assert set(previous) == set(parameter_names(build_model("smallcnn", dataset_spec("digits"))))
    for k, v in previous.items():
        assert torch.equal(v, w1[k]), k  # exactly round 1's local model, not the global one
    assert not torch.equal(w2["classifier.weight"], w1["classifier.weight"])
    if store == "state-dir":
        assert list((tmp_path / "state").rglob("client-0-round*.safetensors"))


def test_feddyn_gradient_state_after_a_round(flower_ids, monkeypatch, tmp_path):
    seen = _spy_prepare(monkeypatch, FedDynObjective)
    alpha = 0.05
    flat = _flat("feddyn", tmp_path / "run", **{"method.alpha": alpha})
    context = _context()
    g0 = _global()
    w1 = _train(flat, g0, 1, context)
    _train(flat, w1, 2, context)
    grad = unprefixed("grad", seen[1])
    for k, v in grad.items():
        assert torch.allclose(v, -alpha * (w1[k] - g0[k]), atol=1e-7), k  # g ← 0 − α(w_1 − w_g)


def test_fedpan_reply_carries_no_mask(flower_ids, tmp_path):
    pan = PanSpec("add", 4.0, 0.25)
    flat = _flat("fedpan", tmp_path / "run", **{"method.pan_op": "add", "method.pan_t": 4.0, "method.pan_a": 0.25})
    w1 = _train(flat, _global(pan), 1, _context())
    masked = build_model("smallcnn", dataset_spec("digits"), pan)
    assert any("mask" in name for name, _ in masked.named_buffers())
    assert set(w1) == set(exchanged_state(build_model("smallcnn", dataset_spec("digits"))))
    assert not any("mask" in k for k in w1)


# ---- FedDyn server ----
def _feddyn_strategy(alpha):
    return FedDynStrategy(FedDynConfig(alpha=alpha), nodes={0: 11, 1: 12, 2: 13}, clients_per_round=2, seed=0,
                          param_keys=["w"])


def _round(strategy, server_round, glob, clients):
    """One round in which the sampled clients reply with `clients` (in the order of their ids)."""
    messages = pushed(strategy.configure_train(server_round, glob, ConfigRecord({})))
    client_of = {node: cid for cid, node in strategy.nodes.items()}
    replies = [train_reply(m, c, {"num-examples": 10 * (i + 1), "partition-id": client_of[m.metadata.dst_node_id]})
               for i, (m, c) in enumerate(zip(messages, clients))]
    outcome = strategy.aggregate_train(server_round, replies)
    assert outcome.metrics["rejected_updates"] == 0 and "sign_flip_fraction" in outcome.metrics
    return outcome.new_global


def test_feddyn_server_update_matches_a_hand_computation_over_two_rounds(flower_ids):
    alpha, m = 0.5, 3
    g0 = {"w": torch.tensor([1.0, -2.0, 0.5]), "bn": torch.tensor([1.0, 1.0])}
    r1 = [{"w": torch.tensor([1.5, -1.0, 0.0]), "bn": torch.tensor([2.0, 0.0])},
          {"w": torch.tensor([0.0, -3.0, 1.5]), "bn": torch.tensor([0.0, 4.0])}]
    strategy = _feddyn_strategy(alpha)
    g1 = _round(strategy, 1, g0, r1)
    h1 = -alpha / m * ((r1[0]["w"] - g0["w"]) + (r1[1]["w"] - g0["w"]))
    assert torch.allclose(g1["w"], (r1[0]["w"] + r1[1]["w"]) / 2 - h1 / alpha, atol=1e-6)
    assert torch.allclose(g1["bn"], torch.tensor([1.0, 2.0]))  # statistics: plain mean, no correction

    r2 = [{"w": g1["w"] + torch.tensor([0.2, 0.1, -0.3]), "bn": torch.tensor([1.0, 1.0])},
          {"w": g1["w"] + torch.tensor([-0.4, 0.5, 0.1]), "bn": torch.tensor([1.0, 3.0])}]
    saved = strategy.state_dict()
    assert torch.allclose(saved["h.w"].float(), h1, atol=1e-6)
    g2 = _round(strategy, 2, g1, r2)
    h2 = h1 - alpha / m * ((r2[0]["w"] - g1["w"]) + (r2[1]["w"] - g1["w"]))
    assert torch.allclose(g2["w"], (r2[0]["w"] + r2[1]["w"]) / 2 - h2 / alpha, atol=1e-6)

    resumed = _feddyn_strategy(alpha)  # a resumed run restores h and computes the same round 2
    resumed.load_state_dict(saved)
    assert torch.equal(_round(resumed, 2, g1, r2)["w"], g2["w"])


def test_feddyn_fedrepo_server_mixes_the_mean_into_the_old_model(flower_ids):
    """fedrepo: w_g ← c·mean(w_k) + (1 − c)·w_g with c = clients per round / clients (here 2/3), for
    every exchanged tensor, and no server state."""
    strategy = FedDynStrategy(FedDynConfig(alpha=0.5, variant="fedrepo"), nodes={0: 11, 1: 12, 2: 13},
                              clients_per_round=2, seed=0, param_keys=["w"])
    g0 = {"w": torch.tensor([1.0, -2.0, 0.5]), "bn": torch.tensor([1.0, 1.0])}
    r1 = [{"w": torch.tensor([1.5, -1.0, 0.0]), "bn": torch.tensor([2.0, 0.0])},
          {"w": torch.tensor([0.0, -3.0, 1.5]), "bn": torch.tensor([0.0, 4.0])}]
    g1 = _round(strategy, 1, g0, r1)
    c = 2 / 3
    for key in g0:
        assert torch.allclose(g1[key], c * (r1[0][key] + r1[1][key]) / 2 + (1 - c) * g0[key], atol=1e-6), key
    assert strategy.state_dict() == {}


def test_feddyn_rejects_alpha_zero():
    with pytest.raises(ValueError, match="alpha"):
        FedDynConfig(alpha=0.0)
