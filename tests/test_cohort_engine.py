"""The cohort engine's parts: one batch plan for both engines (augmentation included), clients of
unequal size, BatchNorm refused with a clear error, the Grid's QUERY answers and per-client error
replies, and `fedsign-sim engine=cohort` end to end."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_module

from fedsign.config import DatasetConfig, RunConfig, TrainConfig
from fedsign.data import ImageSet, load_dataset
from fedsign.data.specs import DATASETS
from fedsign.errors import ConfigError
from fedsign.local_training import Step, batch_plan, make_batch, train_locally
from fedsign.methods import make_objective
from fedsign.models import build_model, exchanged_state
from sim.cohort.cohort_training import CohortClient, check_cohort_model, groups_at, stack_steps, train_cohort
from sim.cohort.engine import run_cohort
from sim.cohort.grid import CohortGrid
from sim.main import run, to_run_config
from tests.conftest import CIFAR10_JPEG, needs_cifar10

CIFAR = DATASETS["cifar10"]


def test_stacked_batches_are_each_clients_own_batches():
    torch.manual_seed(0)
    sizes = [70, 45, 64]
    sets = [ImageSet(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (n,)))
            for n in sizes]
    shared = ImageSet(torch.cat([s.x for s in sets]), torch.cat([s.y for s in sets]))
    cfg = TrainConfig(local_epochs=2, batch_size=16)
    offsets = [0, 70, 115]
    own = [batch_plan(n, cfg, CIFAR, True, seed, torch.device("cpu")) for seed, n in enumerate(sizes)]
    moved = [batch_plan(n, cfg, CIFAR, True, seed, torch.device("cpu"), offset=o)
             for seed, (n, o) in enumerate(zip(sizes, offsets))]
    # 70 = 4*16 + 6, 45 = 2*16 + 13, 64 = 4*16: each client its own number of steps
    assert [len(p) for p in own] == [10, 6, 8]
    checked = 0
    for t in range(10):
        for members in groups_at(moved, t):
            x, y = make_batch(shared, stack_steps([moved[i][t] for i in members]), CIFAR)
            for row, i in enumerate(members):
                x_own, y_own = make_batch(sets[i], own[i][t], CIFAR)
                assert torch.equal(x[row], x_own) and torch.equal(y[row], y_own)
                checked += 1
    assert checked == sum(len(p) for p in own)
    # augmentation did happen (not the identity crop of every image)
    first = own[0][0]
    assert not torch.equal(make_batch(sets[0], first, CIFAR)[0], make_batch(sets[0], Step(first.index, None), CIFAR)[0])


def test_groups_follow_batch_sizes():
    cfg = TrainConfig(local_epochs=1, batch_size=4)
    plans = [batch_plan(n, cfg, DATASETS["digits"], False, 0, torch.device("cpu")) for n in (9, 5, 8)]
    # 9 = 4 + 4 + 1 and 5 = 4 + 1 (1-sample tails dropped), 8 = 4 + 4
    assert [[len(s.index) for s in p] for p in plans] == [[4, 4], [4], [4, 4]]
    assert groups_at(plans, 0) == [[0, 1, 2]] and groups_at(plans, 1) == [[0, 2]] and groups_at(plans, 2) == []


@pytest.mark.slow  # loads the CIFAR-10 copy: about 24 s on 2 cores
@needs_cifar10
def test_augmented_cifar10_clients_train_alike_in_both_engines(one_thread, float64):
    data = load_dataset(DatasetConfig("cifar10", str(CIFAR10_JPEG)))
    cfg = RunConfig.from_flat({"method.name": "fedavg", "train.local_epochs": 1, "train.batch_size": 32,
                               "train.lr": 0.02})
    torch.manual_seed(0)
    model = build_model("smallcnn", CIFAR)
    start = {k: v.clone() for k, v in exchanged_state(model).items()}
    clients = [CohortClient(data.train.subset(torch.arange(o, o + n)), start, {}, 100 + o)
               for o, n in ((0, 150), (1000, 97), (2000, 64))]
    cohort = train_cohort(model, make_objective(cfg), clients, CIFAR, cfg.train, True)
    for c, got in zip(clients, cohort):
        model.load_state_dict(start, strict=False)
        alone = train_locally(model, make_objective(cfg), {}, c.data, CIFAR, cfg.train, True, c.seed)
        assert got.steps == alone.steps and got.train_loss == pytest.approx(alone.train_loss, rel=1e-9)
        for key in start:
            assert got.state[key].dtype == torch.float64
            assert torch.allclose(got.state[key], alone.state[key], rtol=1e-9, atol=1e-11), key


def test_batch_norm_models_are_refused(tmp_path):
    cfg = RunConfig.from_flat({"engine.name": "cohort", "model.name": "smallcnn_bn", "out": str(tmp_path / "bn")})
    with pytest.raises(ConfigError) as refused:
        run_cohort(cfg)
    assert str(refused.value) == ("engine.name=cohort does not train models with BatchNorm (model.name=smallcnn_bn): "
                                  "their running statistics are not kept per client; use engine=flower, or a model "
                                  "without _bn")
    assert not (tmp_path / "bn").exists()  # refused before any run directory is made


def test_models_that_exchange_other_buffers_are_refused():
    model = torch.nn.Linear(2, 2)
    for name in ("scale", "shift", "bias_buffer", "centre"):
        model.register_buffer(name, torch.ones(2))
    with pytest.raises(ConfigError) as refused:
        check_cohort_model(model)
    assert str(refused.value) == ("engine.name=cohort trains parameters only, but the model also exchanges buffers "
                                  "['bias_buffer', 'centre', 'scale']; use engine=flower")
    model.register_buffer("steps", torch.zeros((), dtype=torch.int64))  # not exchanged: integer
    with pytest.raises(ConfigError) as refused:
        check_cohort_model(model, "x")
    assert str(refused.value).startswith("engine.name=cohort trains parameters only, but the model (model.name=x) "
                                         "also exchanges buffers ['bias_buffer', 'centre', 'scale'];")
    check_cohort_model(torch.nn.Linear(2, 2), "linear")  # parameters only: accepted


def test_fedsign_sim_runs_the_cohort_engine(tmp_path, one_thread):
    """`fedsign-sim engine=cohort ...`: Hydra's engine group and sim.main's dispatch (in-process)."""
    out = tmp_path / "run"
    with initialize_config_module(config_module="sim.conf", version_base="1.3"):
        hcfg = compose(config_name="config", overrides=[
            "engine=cohort", "method=fedavg", "train.rounds=2", "federation.num_clients=4",
            "federation.fraction=0.5", "train.local_epochs=1", "device=cpu", f"out={out}"])
    cfg = to_run_config(hcfg)
    assert cfg.engine.name == "cohort"
    results = run(cfg)
    assert results == json.loads((out / "results.json").read_text())
    assert results["engine"] == "cohort" and results["rounds"] == 2 and 0 < results["final_accuracy"] <= 1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2] and rows[-1]["rejected_updates"] == 0
    assert (out / "checkpoints" / "server_round0002.safetensors").is_file()


def test_grid_answers_queries_and_reports_bad_updates_per_client(tmp_path):
    from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

    grid = CohortGrid(3)
    nodes = sorted(grid.get_node_ids())
    queries = [Message(RecordDict(), message_type=MessageType.QUERY, dst_node_id=n) for n in nodes]
    replies = grid.send_and_receive(queries)
    answers = {r.metadata.src_node_id: int(r.content["metrics"]["partition-id"]) for r in replies}
    assert answers == {n: i for i, n in enumerate(nodes)}

    flat = RunConfig.from_flat({"federation.num_clients": 3, "out": str(tmp_path)}).to_flat()
    wrong = ArrayRecord(torch_state_dict={"w": torch.zeros(2)})  # not the model's arrays
    trains = [Message(RecordDict({"arrays": wrong, "config": ConfigRecord({**flat, "server-round": 1})}),
                      message_type=MessageType.TRAIN, dst_node_id=n) for n in nodes[:2]]
    replies = list(grid.send_and_receive(trains))
    assert [r.metadata.src_node_id for r in replies] == nodes[:2]
    assert all(r.has_error() and "do not fit" in r.error.reason for r in replies)


def test_clients_the_authors_scheme_drops_are_never_sampled(tmp_path, one_thread):
    """partition.scheme=authors leaves clients under partition.min_size empty: as in the authors' code
    they never train (before, they were sampled and rejected). The rows log train_ce beside train_loss."""
    from fedsign.workspace import active_clients, partitions

    cfg = RunConfig.from_flat({"engine.name": "cohort", "partition.scheme": "authors", "partition.alpha": 0.1,
                               "partition.min_size": 60, "federation.num_clients": 20, "federation.fraction": 0.5,
                               "train.rounds": 3, "train.local_epochs": 1, "method.name": "fedsign",
                               "device": "cpu", "out": str(tmp_path / "run")})
    empty = [c for c, part in enumerate(partitions(cfg)) if len(part) == 0]
    assert empty and set(active_clients(cfg)) == set(range(20)) - set(empty)
    run(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        assert row["rejected_updates"] == 0 and row["missing_replies"] == 0 and len(row["replied"]) == 10
        assert not set(row["replied"]) & set(empty)
        assert row["train_ce"] > 0 and row["train_loss"] < row["train_ce"]  # FedSign's −γR term
