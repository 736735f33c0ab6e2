"""Every setting of `fedsign-figures`, for its two forms: `quick` (scikit-learn digits, SmallCNN, seconds
on a CPU; what CI runs) and `full` (the papers' models on CIFAR-10, for a GPU), plus the constants of
the GPU time estimates. Training recipes follow the asymmetric-valley paper's App. A.3 (SGD momentum
0.9, lr 0.03, cosine annealing, batch 256, weight decay 5e-4), with fewer epochs than its 200; the FL
runs follow Table 1 (Sect. 6.2: 100 clients, 10 % per round, 5 local epochs, Dirichlet alpha 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from sim.figures_models import ProbeSettings, Recipe

SCALES = (0.2, 1.0, 2.0)  # s in theta + lambda * s * NS(eps) (Sect. 3.2, 4.1)
# Fig. 9 / Sect. 4.2.2: the default LR 0.03, BS 256, WD 5e-4, each varied to two other values.
HYPER_FULL = {"lr": (0.1, 0.003), "batch_size": (32, 2048), "weight_decay": (1e-3, 1e-5)}


@dataclass(frozen=True)
class Form:
    name: str
    base: Recipe  # the model of Figs. 3-5, 7-9 (the paper: VGG16-BN on CIFAR-10)
    bn_model: str  # a model with BN for Fig. 7
    hyper: dict[str, tuple[float, float]]  # Fig. 9 / Fig. 8 variants of the base recipe
    companion: Recipe  # the companion paper's figures; its kept epochs are the checkpoints shown
    probe: ProbeSettings
    points: int  # lambdas in [-1, 1] per curve (the companion paper: 41)
    hessian_k: int = 5  # eigenpairs per end (companion Fig. 8: top 5 P.E. and N.E.)
    cosine_k: int = 10  # eigenpairs per end for companion Fig. 9's cosine bars
    eigsh_maxiter: int = 20  # ARPACK restarts per eigsh call (the bottom of a spectrum converges slowly)
    slq_runs: int = 3
    slq_steps: int = 60
    perturbations: int = 100  # companion Fig. 13: 100 Gaussian eps per lambda
    mine_epochs: int = 10
    mine_lr: float = 0.01
    mine_batch: int = 64
    fl: dict = field(default_factory=dict)  # the FL runs' dotted config keys (method and seed added)
    fedsign_gamma: float = 0.1  # the top of the paper's grid {0.001, 0.01, 0.1}; rms reduction (default)
    softmax_max_iter: int = 500  # App. D.3, Listing 2

    def with_epochs(self, epochs: int) -> Form:
        """The same form with every central training run `epochs` long (snapshots past it dropped)."""
        return replace(self, base=replace(self.base, epochs=epochs), companion=replace(self.companion, epochs=epochs))

    def with_rounds(self, rounds: int) -> Form:
        return replace(self, fl={**self.fl, "train.rounds": rounds})


QUICK_BASE = Recipe("smallcnn", "digits", epochs=12, lr=0.05, batch_size=32, snapshots=(0, 2))
QUICK = Form(
    name="quick", base=QUICK_BASE, bn_model="smallcnn_bn",
    hyper={"lr": (0.1, 0.01), "batch_size": (16, 128), "weight_decay": (1e-3, 1e-5)},  # all train on digits
    companion=QUICK_BASE, probe=ProbeSettings(images=0, train_images=256), points=21,
    cosine_k=5, eigsh_maxiter=6, slq_runs=2, slq_steps=20, perturbations=30,
    fl={"dataset.name": "digits", "model.name": "smallcnn", "engine.name": "cohort",
        "federation.num_clients": 10, "federation.fraction": 0.5, "partition.alpha": 0.5,
        "train.rounds": 10, "train.local_epochs": 2, "train.batch_size": 16, "train.lr": 0.05,
        "eval.every": 5},
)
FULL = Form(
    name="full", base=Recipe("vgg16_bn", "cifar10", epochs=30), bn_model="vgg16_bn", hyper=HYPER_FULL,
    companion=Recipe("resnet20", "cifar10", epochs=30, snapshots=(0, 2, 8)),
    probe=ProbeSettings(images=2000, train_images=1000), points=41,
    fl={"dataset.name": "cifar10", "model.name": "vgg8", "engine.name": "cohort",
        "federation.num_clients": 100, "federation.fraction": 0.1, "partition.alpha": 0.5,
        "train.rounds": 200, "train.local_epochs": 5, "train.batch_size": 64, "train.lr": 0.03,
        "train.momentum": 0.9, "train.weight_decay": 1e-5, "train.grad_clip": 100.0,
        "eval.every": 10, "checkpoint.every": 20},
)
FORMS = {"quick": QUICK, "full": FULL}

# ---- GPU time estimates (one H200; NOT measured: no GPU was lent when these were written) ----
# Central training: images / throughput, or a floor of seconds per SGD step where small batches are
# bound by kernel launches (the workplace's H100 notes: 23k samples/s for one VGG8 step at batch 64,
# eager). Throughputs are guesses scaled by each model's forward FLOPs (VGG16 ~4.6x VGG8).
TRAIN_IMAGES_PER_S = {"vgg16_bn": 10_000, "resnet20": 20_000, "vgg8": 25_000, "smallcnn": 50_000}
STEP_FLOOR_S = {"vgg16_bn": 0.006, "resnet20": 0.006, "vgg8": 0.003, "smallcnn": 0.002}
EVAL_IMAGES_PER_S = {"vgg16_bn": 60_000, "resnet20": 80_000, "vgg8": 150_000, "smallcnn": 300_000}
FL_ROUND_S = 0.8  # Table 1 with VGG8 on the cohort engine (the H100 notes: 0.6 s per 10-client round)
DATASET_TRAIN_IMAGES = {"cifar10": 50_000, "digits": 1_437}
