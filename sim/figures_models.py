"""What a figure is made from: the models it probes (central training runs with the asymmetric-valley
paper's recipe, App. A.3; FedAvg / FedSign runs through `sim.main.run`; or checkpoints a user gives),
kept as fedsign safetensors checkpoints under OUT/models so figures that share a model train it once
and a rerun reuses it; and the context and result of making one figure.

A probe rebuilds the model from its checkpoint (`landscape.context.CheckpointContext`) with fixed,
seeded data subsets: test images to evaluate on, training images for BN recalibration (and for the
Hessian and mining probes, which work on the training loss).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from fedsign.checkpoint import checkpoint_metadata, load_checkpoint, save_checkpoint  # noqa: E402
from fedsign.data import random_crop_flip  # noqa: E402
from fedsign.data.specs import dataset_spec  # noqa: E402
from fedsign.errors import CheckpointError, ConfigError  # noqa: E402
from fedsign.models import build_model, exchanged_state  # noqa: E402
from fedsign.run_dir import holds_run, write_atomic  # noqa: E402
from landscape.context import CheckpointContext, data_subset  # noqa: E402
from landscape.evaluator import Evaluator  # noqa: E402
from landscape.groups import group_names  # noqa: E402
from landscape.result import ProbeResult, probe_metadata  # noqa: E402
from landscape.train import train_classifier  # noqa: E402

if TYPE_CHECKING:
    from sim.figures_settings import Form

Log = Callable[[str], None]
BN_INITS = ("ones", "uniform", "gaussian")  # Sect. 4.2.1: 1, U(0, 1), G(0, 0.1) for every BN weight


@dataclass(frozen=True)
class Recipe:
    """One central training run: SGD with momentum, cosine-annealed learning rate over the epochs
    (App. A.3: lr 0.03, batch 256, weight decay 5e-4, 200 epochs for VGG16-BN on CIFAR-10)."""

    model: str
    dataset: str
    epochs: int
    lr: float = 0.03
    batch_size: int = 256
    weight_decay: float = 5e-4
    momentum: float = 0.9
    images: int = 0  # training images (a seeded subset; 0 = the whole split)
    bn_init: str = "ones"  # initial BN weights: ones (PyTorch's default) | uniform | gaussian
    snapshots: tuple[int, ...] = (0,)  # epochs also kept as checkpoints (0 = the initial model)
    seed: int = 0

    def key(self) -> str:
        """A readable folder name with a hash of every field (a changed field is a different run)."""
        digest = hashlib.sha1(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:8]
        return (f"{self.model}-{self.dataset}-e{self.epochs}-lr{self.lr:g}-bs{self.batch_size}"
                f"-wd{self.weight_decay:g}-bn{self.bn_init}-s{self.seed}-{digest}")

    def kept_epochs(self) -> list[int]:
        return sorted({e for e in self.snapshots if 0 <= e < self.epochs} | {self.epochs})


def cosine_lr(lr: float, epoch: int, epochs: int) -> float:
    """Cosine annealing stepped once per epoch (torch's CosineAnnealingLR with T_max = epochs)."""
    return 0.5 * lr * (1.0 + math.cos(math.pi * epoch / epochs))


def init_batch_norm(model: nn.Module, kind: str, seed: int) -> None:
    """Re-draw every BN weight: all ones, U(0, 1) or G(0, 0.1) (std 0.1), biases zero (Sect. 4.2.1)."""
    if kind not in BN_INITS:
        raise ConfigError(f"BN initialisation {kind!r} is not known; accepted: {', '.join(BN_INITS)}")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                shape = m.weight.shape
                value = {"ones": lambda: torch.ones(shape), "uniform": lambda: torch.rand(shape, generator=gen),
                         "gaussian": lambda: 0.1 * torch.randn(shape, generator=gen)}[kind]()
                m.weight.copy_(value)
                m.bias.zero_()


@dataclass
class Trained:
    """A finished central run: its checkpoint per kept epoch, loss per epoch, seconds spent training."""

    recipe: Recipe
    checkpoints: dict[int, Path]
    history: list[float]
    seconds: float
    reused: bool

    @property
    def final(self) -> Path:
        return self.checkpoints[self.recipe.epochs]

    def describe(self) -> dict:
        return {"recipe": dataclasses.asdict(self.recipe),
                "checkpoints": {e: str(p) for e, p in self.checkpoints.items()}, "train_loss": self.history,
                "train_seconds": round(self.seconds, 2), "reused": self.reused}


@dataclass(frozen=True)
class ProbeSettings:
    """The data a probe sees: `images` test images, `train_images` training images (seeded subsets,
    0 = all), evaluated `batch_size` images at a time."""

    images: int
    train_images: int
    batch_size: int = 500


@dataclass
class Probe:
    """A checkpoint ready for the landscape probes: the rebuilt model, its parameters theta, the
    names of all its parameters (group ALL) and an evaluator on the test subset (BN recalibrated
    on the training subset at every point)."""

    path: Path
    context: CheckpointContext
    evaluator: Evaluator
    theta: dict[str, torch.Tensor]
    names: list[str]

    @property
    def model(self) -> nn.Module:
        return self.context.model

    def train_evaluator(self) -> Evaluator:
        """The training subset's loss with the checkpoint's own BN statistics: the function whose
        Hessian `landscape.hessian.HessianOperator` takes (model in eval mode)."""
        return Evaluator(self.model, self.context.train, recalibrate=False, batch_size=self.evaluator.batch_size,
                         chunk=self.evaluator.chunk)


@dataclass
class ModelStore:
    """Trains, runs or loads the models a figure needs, under `root` (OUT/models)."""

    root: Path
    device: str
    data_root: str
    probe_settings: ProbeSettings
    seed: int
    log: Log
    seconds_spent: dict[str, float] = field(default_factory=dict)

    # ---- central training ----
    def central(self, recipe: Recipe) -> Trained:
        folder = self.root / recipe.key()
        paths = {e: folder / f"epoch{e:04d}.safetensors" for e in recipe.kept_epochs()}
        record = folder / "training.json"
        if record.is_file() and all(p.is_file() for p in paths.values()):
            saved = json.loads(record.read_text())
            self.log(f"model {recipe.key()}: reusing {folder}")
            return Trained(recipe, paths, saved["train_loss"], saved["train_seconds"], reused=True)
        return self._train(recipe, paths, record)

    def _train(self, recipe: Recipe, paths: dict[int, Path], record: Path) -> Trained:
        spec = dataset_spec(recipe.dataset)
        torch.manual_seed(recipe.seed)
        model = build_model(recipe.model, spec).to(self.device)
        init_batch_norm(model, recipe.bn_init, recipe.seed)
        data = data_subset(recipe.dataset, self.data_root, "train", recipe.images, recipe.seed, self.device)
        augment = None
        if spec.crop_padding or spec.flip:  # on normalised images: zero padding = the mean colour
            gen = torch.Generator(device=self.device).manual_seed(recipe.seed)
            augment = lambda x, _: random_crop_flip(x, spec.crop_padding, spec.flip, gen)  # noqa: E731
        meta = dict(model=recipe.model, dataset=recipe.dataset, role="server", method="central", seed=recipe.seed,
                    recipe=json.dumps(dataclasses.asdict(recipe), sort_keys=True))
        self.log(f"model {recipe.key()}: training {recipe.epochs} epochs on {len(data)} images ({self.device})")
        started, history = time.perf_counter(), []
        if 0 in paths:
            save_checkpoint(paths[0], exchanged_state(model), checkpoint_metadata(round=0, **meta))
        for epoch in range(recipe.epochs):
            lr = cosine_lr(recipe.lr, epoch, recipe.epochs)
            # One epoch per call, so the learning rate follows the schedule and snapshots can be kept;
            # the SGD momentum buffer therefore restarts every epoch.
            loss = train_classifier(model, data, epochs=1, lr=lr, momentum=recipe.momentum,
                                    weight_decay=recipe.weight_decay, batch_size=recipe.batch_size,
                                    seed=recipe.seed * 100_003 + epoch, augment=augment)[0]
            history.append(loss)
            self.log(f"model {recipe.key()}: epoch {epoch + 1}/{recipe.epochs} lr {lr:.4g} loss {loss:.4f} "
                     f"({time.perf_counter() - started:.0f} s)")
            if epoch + 1 in paths:
                save_checkpoint(paths[epoch + 1], exchanged_state(model), checkpoint_metadata(round=epoch + 1, **meta))
        seconds = time.perf_counter() - started
        self.seconds_spent[recipe.key()] = seconds
        write_atomic(record, json.dumps({"recipe": dataclasses.asdict(recipe), "train_loss": history,
                                         "train_seconds": seconds}, indent=1))
        return Trained(recipe, paths, history, seconds, reused=False)

    # ---- federated runs ----
    def federated(self, flat: dict) -> tuple[Path, dict]:
        """Run (or reuse) one FL config of dotted keys; returns the final server checkpoint and results.json."""
        from fedsign.config import RunConfig
        from sim.main import run

        digest = hashlib.sha1(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:8]
        folder = self.root / f"fl-{flat['method.name']}-{flat['dataset.name']}-{flat['model.name']}-{digest}"
        results_path = folder / "results.json"
        if results_path.is_file():
            self.log(f"FL run {folder.name}: reusing {folder}")
            results = json.loads(results_path.read_text())
        else:
            resume = {}
            if holds_run(folder):  # a run killed earlier: continue it, or start again if it never saved a state
                if (folder / "checkpoints" / "resume.safetensors").is_file():
                    resume = {"resume": str(folder)}
                else:
                    shutil.rmtree(folder)
            self.log(f"FL run {folder.name}: {flat['method.name']} for {flat['train.rounds']} rounds"
                     + (" (resumed)" if resume else ""))
            started = time.perf_counter()
            results = run(RunConfig.from_flat({**flat, "out": str(folder), **resume}))
            self.seconds_spent[folder.name] = time.perf_counter() - started
        return folder / "checkpoints" / f"server_round{int(results['rounds']):04d}.safetensors", results

    # ---- probing ----
    def probe(self, path: str | Path) -> Probe:
        s = self.probe_settings
        context = CheckpointContext.load(str(path), images=s.images, train_images=s.train_images, seed=self.seed,
                                         device=self.device, data_root=self.data_root)
        evaluator = context.evaluator(True, s.batch_size)
        theta = evaluator.parameters()
        return Probe(Path(path), context, evaluator, theta, group_names(context.model, "ALL"))

    def parameters_like(self, path: str | Path, probe: Probe) -> dict[str, torch.Tensor]:
        """Another checkpoint's parameters (e.g. the initial model) on the probe's device, checked to fit it."""
        tensors, _ = load_checkpoint(path)
        misfit = [n for n in probe.theta if n not in tensors or tensors[n].shape != probe.theta[n].shape]
        if misfit:
            raise CheckpointError(f"checkpoint '{path}' does not fit the model of '{probe.path}' (e.g. '{misfit[0]}')")
        return {n: tensors[n].to(t.device, t.dtype) for n, t in probe.theta.items()}


def final_server_checkpoint(path: Path) -> Path:
    """A checkpoint file as given, or the last server_roundNNNN checkpoint of a run directory."""
    if path.is_dir():
        rounds = sorted((path / "checkpoints").glob("server_round*.safetensors"))
        if not rounds:
            raise CheckpointError(f"run directory '{path}' holds no server checkpoint "
                                  "(checkpoints/server_round*.safetensors)")
        return rounds[-1]
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    return path


@dataclass
class Source:
    """A checkpoint to probe, where it came from (JSON-ready), and its initial model if known."""

    label: str
    path: Path
    info: dict
    init: Path | None = None


@dataclass
class FigureContext:
    """Everything one figure is made with: its form's settings, the model store, the checkpoints the
    user gave (`--checkpoint [LABEL=]PATH`, in order) and the initial model (`--init`)."""

    name: str
    form: Form
    store: ModelStore
    given: list[tuple[str, Path]]
    init: Path | None
    seed: int
    log: Log

    def sources(self, recipes: dict[str, Recipe]) -> list[Source]:
        """The checkpoints the user gave (all of them, in order), else the labelled recipes trained here."""
        if self.given:
            return [Source(label, path, {"checkpoint": str(path), "given": True}, self.init)
                    for label, path in self.given]
        sources = []
        for label, recipe in recipes.items():
            trained = self.store.central(recipe)
            sources.append(Source(label, trained.final, trained.describe(), trained.checkpoints.get(0)))
        return sources

    def lambdas(self, start: float = -1.0, stop: float = 1.0) -> np.ndarray:
        """The form's density of points (form.points over [-1, 1]) over [start, stop]."""
        per_unit = (self.form.points - 1) / 2
        return np.linspace(start, stop, int(round((stop - start) * per_unit)) + 1)

    def metadata(self, probe: Probe, scaling: str = "ns", **extra) -> dict:
        """A probe result's metadata, as the landscape CLI writes it."""
        c = probe.context
        return probe_metadata(seed=self.seed, scaling=scaling, group="ALL", data=c.test.description,
                              dtype=c.test.x.dtype, bn_data=c.train.description,
                              bn_recalibrated=probe.evaluator.recalibrate, model=c.meta.get("model", ""),
                              device=str(c.device), checkpoint=str(probe.path), **extra)

    def progress(self, what: str, every_s: float = 15.0) -> Callable[[int, int], None]:
        """An evaluator progress callback that logs at most every `every_s` seconds."""
        last = [time.perf_counter()]

        def report(done: int, total: int) -> None:
            if time.perf_counter() - last[0] >= every_s:
                last[0] = time.perf_counter()
                self.log(f"{self.name}: {what}: {done}/{total} points of the current curve set")
        return report


@dataclass
class Made:
    """A made figure: its JSON content, the headline numbers the gallery shows, and a function that
    draws the image into a path (the format follows the suffix: .png, .pdf)."""

    data: dict
    summary: dict
    draw: Callable[[Path], None]


def result_json(result: ProbeResult, probe: Probe) -> dict:
    """A probe result as the landscape CLI's JSON, naming the checkpoint it probed."""
    result.checkpoint = str(probe.path)
    return result.to_dict()


def finish(fig, path: Path, title: str) -> None:
    """Title a multi-panel figure and write it (format from the suffix)."""
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
