"""The speed levers of local training (train.precision, train.channels_last, train.step_mode) and the
GPU's own checks (issue list of `python -m sim.gpu_check`).

Every lever test runs on the CPU and, marked `gpu`, on CUDA (skipped without it): a captured CUDA graph
replays the eager step exactly, channels_last changes only the memory order, bf16 autocast stays near
fp32. The CUDA-only tests check what only a GPU can show: each engine trains one round of each method
there, the cohort equals per-client training, no local step waits for the host, the landscape
evaluator's vmap chunk equals a plain loop, a checkpoint written from CUDA loads on a CPU.
The levers' fast unit tests, and batches built in blocks on the CPU and CUDA, are in
tests/test_local_training.py. `pytest -m gpu` selects the CUDA tests; `python -m sim.gpu_check` runs
them (sim.gpu_check.GPU_TESTS) on the GPU machine."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import torch

from fedsign.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from fedsign.config import RunConfig
from fedsign.data import ImageSet
from fedsign.data.specs import DATASETS
from fedsign.local_training import GRAPH_STATS, train_locally
from fedsign.methods import make_objective
from fedsign.models import build_model, exchanged_state
from fedsign.server_app import run_server
from landscape import Evaluator, ProbeData
from sim.cohort.grid import CohortGrid
from sim.cohort.inprocess_grid import InProcessGrid
from sim.gpu_check import plain_loop
from strategies.registry import METHOD_NAMES
from tests.conftest import CIFAR10_JPEG

pytestmark = pytest.mark.slow  # many float64 trainings on a CPU; the GPU check runs it on CUDA

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
gpu = [pytest.mark.gpu, needs_cuda]
DEVICES = ["cpu", pytest.param("cuda", marks=gpu)]
ENGINES = {"flower": InProcessGrid, "cohort": CohortGrid}  # InProcessGrid: the real ClientApp, as a Ray actor runs it
CLIENTS = 6


def setting(device: str, method: str = "fedavg", **extra) -> RunConfig:
    """Two rounds on digits, 3 of 6 Dirichlet clients of unequal size (batch tails of several lengths)."""
    return RunConfig.from_flat({
        "method.name": method, "dataset.name": "digits", "model.name": "smallcnn", "federation.num_clients": CLIENTS,
        "federation.fraction": 0.5, "train.rounds": 2, "train.local_epochs": 2, "train.batch_size": 16,
        "train.lr": 0.02, "device": device, "seed": 3, "checkpoint.every": 1, **extra})


def run_rounds(engine: str, cfg: RunConfig, out) -> list[dict[str, torch.Tensor]]:
    run_server(ENGINES[engine](CLIENTS), cfg.replace(engine__name=engine, out=str(out)))
    return [load_checkpoint(out / "checkpoints" / f"server_round{r:04d}.safetensors")[0]
            for r in range(1, cfg.train.rounds + 1)]


def assert_close(a: list[dict], b: list[dict], rtol: float, atol: float, what: str) -> None:
    for round_a, round_b in zip(a, b):
        assert round_a.keys() == round_b.keys()
        for key in round_a:
            assert torch.allclose(round_a[key], round_b[key], rtol=rtol, atol=atol), (what, key)


def moved(states: list[dict]) -> float:
    return max(float((states[1][k] - states[0][k]).abs().max()) for k in states[0])


@pytest.fixture(autouse=True)
def no_plots(monkeypatch):
    """The runs' PNGs (curves, partitions) take half a small run's time and are tested elsewhere."""
    monkeypatch.setattr("fedsign.server_loop.plot_run", lambda *args, **kwargs: None)
    monkeypatch.setattr("fedsign.server_loop.write_partition_report", lambda *args, **kwargs: None)


# ---- CUDA only (first: what only a GPU can show, before the levers' CUDA cases) ----
def cifar_setting(method: str, **extra) -> RunConfig:
    """One round of VGG8 on CIFAR-10 ($FEDSIGN_CIFAR10, which sim.gpu_check sets): 4 of the authors' 100
    clients (Table 1's partition), 1 epoch, every speed lever on."""
    root = os.environ.get("FEDSIGN_CIFAR10") or (str(CIFAR10_JPEG) if CIFAR10_JPEG.is_dir() else "")
    if not root:
        pytest.skip("no CIFAR-10 copy: set $FEDSIGN_CIFAR10")
    return RunConfig.from_flat({
        "method.name": method, "dataset.name": "cifar10", "dataset.root": root, "model.name": "vgg8",
        "partition.scheme": "authors", "federation.num_clients": 100, "federation.fraction": 0.04,
        "train.rounds": 1, "train.local_epochs": 1, "train.batch_size": 64, "train.lr": 0.03, "device": "cuda",
        "seed": 0, "train.step_mode": "cuda_graph", "train.channels_last": True, "train.precision": "bf16", **extra})


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("engine", list(ENGINES) + ["ray"])
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_each_engine_trains_a_round_of_each_method_on_cuda(engine, method, tmp_path):
    """VGG8 with every lever (CUDA graphs of every method's step, bf16, channels_last); the plain way
    is plain PyTorch, and the levers' equality with it is tested above."""
    if engine == "ray" and importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is not installed (the GPU host stages it in a second call)")
    cfg = cifar_setting(method)
    out = tmp_path / "run"
    if engine == "ray":
        from sim.main import run

        results = run(cfg.replace(engine__name="flower", out=str(out)))
    else:
        results = run_server(ENGINES[engine](cfg.federation.num_clients), cfg.replace(engine__name=engine,
                                                                                     out=str(out)))
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(row["loss"]) and np.isfinite(row["train_loss"]) and results["rejected_updates"] == 0
    assert row["replied"] and not row["missing"]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_cohort_equals_per_client_training_on_cuda(method, tmp_path, float64):
    flower = run_rounds("flower", setting("cuda", method), tmp_path / "clientapp")
    cohort = run_rounds("cohort", setting("cuda", method), tmp_path / "cohort")
    assert_close(flower, cohort, 1e-9, 1e-11, method)
    assert moved(flower) > 1e-3


def host_syncs(fn) -> int:
    """CUDA synchronisations (stream/device/event syncs, incl. blocking copies) made by fn()."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(e.count for e in prof.key_averages() if "Synchronize" in e.key and e.key.startswith("cuda"))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("engine", list(ENGINES))
@pytest.mark.parametrize("step_mode", ["eager", "cuda_graph"])
def test_no_local_step_waits_for_the_host(engine, step_mode):
    """Data, augmentation draws and batches stay on the device: a client with 10x the steps makes the
    same number of host synchronisations (the plan's copies per epoch, the final losses), not more."""
    from sim.cohort.cohort_training import CohortClient, train_cohort

    spec, device = DATASETS["cifar10"], torch.device("cuda")
    cfg = RunConfig.from_flat({"train.local_epochs": 2, "train.batch_size": 16, "train.step_mode": step_mode,
                               "device": "cuda"})
    torch.manual_seed(0)
    model = build_model("smallcnn", spec).to(device)
    start = {k: v.clone() for k, v in exchanged_state(model).items()}
    objective = make_objective(cfg)

    def train(n: int) -> None:
        data = ImageSet(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, device=device),
                        torch.randint(0, 10, (n,), device=device))
        if engine == "cohort":
            train_cohort(model, objective, [CohortClient(data, start, {}, 1), CohortClient(data, start, {}, 2)],
                         spec, cfg.train, True)
        else:
            model.load_state_dict(start, strict=False)
            train_locally(model, objective, {}, data, spec, cfg.train, True, 1)

    train(160)  # first CUDA kernels, graph captures
    few, many = host_syncs(lambda: train(16)), host_syncs(lambda: train(160))
    assert few >= cfg.train.local_epochs  # the counter sees the plan's copies (one or more per epoch)
    assert many == few, (few, many)


@pytest.mark.gpu
@needs_cuda
def test_landscape_vmap_chunk_equals_the_plain_loop(no_tf32):
    from fedsign.data import normalize
    from landscape import noise_direction, scale_direction

    spec = DATASETS["cifar10"]
    torch.manual_seed(0)
    model = build_model("vgg8", spec).cuda().eval()
    test = ImageSet(torch.randint(0, 256, (600, 3, 32, 32), dtype=torch.uint8, device="cuda"),
                    torch.randint(0, 10, (600,), device="cuda"))
    evaluator = Evaluator(model, ProbeData(normalize(test.x, spec), test.y), batch_size=500, chunk=16)
    theta = evaluator.parameters()
    direction = scale_direction(noise_direction(theta, list(theta), "gaussian", 0, sign=True), theta, "ns")
    lambdas = np.linspace(-1.0, 1.0, 21)
    loss, _ = evaluator.curve(theta, direction, lambdas)
    expected = plain_loop(model, theta, direction, lambdas, test, spec)
    assert np.allclose(loss.numpy(), expected, rtol=1e-4, atol=1e-5), np.abs(loss.numpy() - expected).max()


@pytest.fixture
def no_tf32():
    """Full fp32 matmuls and convolutions (TF32 rounds inputs to 10 bits: two paths would differ ~1e-3)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.gpu
@needs_cuda
def test_a_checkpoint_written_from_cuda_loads_on_a_cpu(tmp_path):
    from fedsign.checkpoint import checkpoint_metadata

    spec = DATASETS["cifar10"]
    torch.manual_seed(0)
    model = build_model("vgg8", spec).cuda().to(memory_format=torch.channels_last)
    state = exchanged_state(model)
    path = save_checkpoint(tmp_path / "cuda.safetensors", state,
                           checkpoint_metadata(model="vgg8", dataset="cifar10", round=1, role="server",
                                               method="fedavg", seed=0, pan=None))
    loaded, meta = load_checkpoint(path)
    assert meta["model"] == "vgg8"
    for key, value in state.items():
        assert loaded[key].device.type == "cpu" and torch.equal(loaded[key], value.cpu())
    rebuilt, _ = model_from_checkpoint(path, "cpu")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(x), model.eval()(x.cuda()).cpu(), rtol=1e-3, atol=1e-4)


# ---- the levers, on the CPU and on CUDA ----
# on the CPU the methods whose constants and state differ in structure (none, shared, stacked, per client)
GRAPH_CASES = ([("cpu", m) for m in ("fedavg", "moon", "feddyn", "fedsign")]
               + [pytest.param("cuda", m, marks=gpu) for m in METHOD_NAMES])


@pytest.mark.parametrize(("device", "method"), GRAPH_CASES)
@pytest.mark.parametrize("engine", list(ENGINES))
def test_cuda_graph_steps_equal_eager_steps(device, engine, method, tmp_path, one_thread, float64):
    """The graphed steps (kept tensors, zeroed momentum, constants copied in; captured on CUDA) give the
    eager steps' global model in both rounds: the second reuses what the first kept."""
    GRAPH_STATS.__init__()
    eager = run_rounds(engine, setting(device, method), tmp_path / "eager")
    graphed = run_rounds(engine, setting(device, method, **{"train.step_mode": "cuda_graph"}), tmp_path / "graph")
    assert_close(eager, graphed, 1e-12, 1e-14, f"{engine}/{method}")
    assert moved(eager) > 1e-3
    if device == "cuda":
        assert GRAPH_STATS.failures == [] and GRAPH_STATS.captured > 0 and GRAPH_STATS.replayed > GRAPH_STATS.captured


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("engine", list(ENGINES))
def test_channels_last_changes_only_the_memory_order(device, engine, tmp_path, one_thread, float64):
    plain = run_rounds(engine, setting(device, "fedprox"), tmp_path / "plain")
    nhwc = run_rounds(engine, setting(device, "fedprox", **{"train.channels_last": True}), tmp_path / "nhwc")
    assert_close(plain, nhwc, 1e-10, 1e-12, engine)
    assert all(t.is_contiguous() for state in nhwc for t in state.values())  # what is exchanged is plain


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("engine", list(ENGINES))
def test_bf16_autocast_stays_near_fp32(device, engine, tmp_path, one_thread):
    """bf16 keeps 8 bits of mantissa in the forward pass: the second round's update of the global model
    stays within a few percent of fp32's (measured: 0.8 % on the CPU), far from a wrong or missing update."""
    fp32 = run_rounds(engine, setting(device), tmp_path / "fp32")
    bf16 = run_rounds(engine, setting(device, **{"train.precision": "bf16"}), tmp_path / "bf16")
    step_fp32 = torch.cat([(fp32[1][k] - fp32[0][k]).flatten() for k in fp32[0]])
    step_bf16 = torch.cat([(bf16[1][k] - bf16[0][k]).flatten() for k in fp32[0]])
    assert step_bf16.dtype == torch.float32
    assert float((step_bf16 - step_fp32).norm() / step_fp32.norm()) < 0.05
