"""Mutation testing of the modules where a silent bug would corrupt results, with mutmut 3.8.1.

    pip install -e ".[dev,mutation]"
    python -m tests.mutation                      # every module of MODULES (hours on 2 cores: see docs/testing.md)
    python -m tests.mutation strategies/validation.py fedsign/resume.py      # some of them
    python -m tests.mutation --survivors sim/cohort/grid.py   # only the recorded survivors, after new tests
    python -m tests.mutation --report             # docs/testing.md again from docs/results/mutation.json

mutmut's settings are [tool.mutmut] in pyproject.toml (`mutmut run` works there too). This script
runs it in a scratch copy of the tracked files (mutmut writes a `mutants/` tree beside them), reads
every mutant's verdict, and matches each surviving mutant against EQUIVALENT below: mutants that
cannot change any result, each with the reason. The score of a module is killed / (mutants −
equivalent); a mutant the selected tests never run counts as surviving. The verdicts go to
docs/results/mutation.json (merged with earlier runs of other modules), and docs/testing.md is
generated from it, with the command, date, commit and machine. A benchmark, not part of CI.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import fnmatch
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "mutation.json"
DOC = ROOT / "docs" / "testing.md"
MODULES = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]["only_mutate"]
COMMAND = "python -m tests.mutation"
KILLED = {"killed", "timeout", "segfault", "caught by type check"}
# Modules, each group with the fast tests written for it (a smaller selection than pyproject's, so
# that a surviving mutant does not run every test of the suite): one mutmut run per group.
GROUPS: list[tuple[list[str], list[str]]] = [
    (["strategies/base.py", "strategies/validation.py", "strategies/sampling.py", "strategies/sign_metrics.py",
      "strategies/registry.py"],
     ["tests/test_fedavg.py", "tests/test_faults.py", "tests/test_methods_client_state.py",
      "tests/test_training_reference.py", "tests/test_config.py"]),
    (["strategies/objective.py", "strategies/functional.py", "strategies/fedavg.py", "strategies/fedprox.py",
      "strategies/moon.py", "strategies/feddyn.py", "strategies/fedpan.py", "strategies/fedsign.py"],
     ["tests/test_methods_objectives.py", "tests/test_methods_client_state.py", "tests/test_training_reference.py",
      "tests/test_config.py"]),
    (["fedsign/local_training.py", "sim/cohort/*.py"],
     # one case each of the two server-level comparisons and no Hydra run (all of them would run per mutant:
     # over 2 h on 2 cores)
     ["tests/test_local_training.py", "tests/test_stacked_sgd.py", "tests/test_inprocess_grid.py",
      "tests/test_flower_internals.py",
      *(f"tests/test_cohort_engine.py::{name}" for name in (
          "test_stacked_batches_are_each_clients_own_batches", "test_groups_follow_batch_sizes",
          "test_batch_norm_models_are_refused", "test_models_that_exchange_other_buffers_are_refused",
          "test_grid_answers_queries_and_reports_bad_updates_per_client",
          "test_clients_the_authors_scheme_drops_are_never_sampled")),
      "tests/test_training_reference.py::test_both_engines_reach_the_hand_computed_global_model[fedsign]",
      "tests/test_cohort_equivalence.py::test_cohort_round_equals_the_client_app_path[feddyn]"]),
    (["fedsign/resume.py", "fedsign/checkpoint.py"],
     ["tests/test_checkpoint.py", "tests/test_bad_input.py", "tests/test_resume_in_process.py",
      "tests/test_client_state.py"]),
    (["landscape/directions.py", "landscape/valley.py", "landscape/sign_sweep.py", "landscape/evaluator.py"],
     ["tests/test_landscape_directions.py", "tests/test_landscape_evaluator.py", "tests/test_landscape_probes.py",
      "tests/test_landscape_softmax.py", "tests/test_landscape_hessian.py"]),
]

# (module, function, the mutated line as mutmut shows it, stripped) -> why it cannot change a result;
# the line "*" stands for every mutant of a function that only runs on CUDA (ON_GPU)
ON_CPU = "moves tensors to the device they are on already when no GPU is present (tests/test_gpu.py runs it on CUDA)"
ON_GPU = "runs only when the data are on a CUDA device (tests/test_gpu.py)"
CORRECTION = "torch.var_mean's correction defaults to 1 (the unbiased variance), the value written"
VMAP_ONE = "one point through vmap instead of a plain call: the same numbers (the plain call avoids batched-weight kernels)"
REPLAY_SET = "evaluate() sets the replay state on entry, before anything reads it"
REPLAY_ONE = "with one point, recording the replay costs the one pass it would save: the same numbers"
RESTOP = ("the first recalibration pass re-registers the same stop hook after each of its batches: the same passes, "
          "the same statistics")
TOP_PREFIX = ("torch.func.functional_call resolves '.running_mean' ('' names the model itself) to the same buffer, "
              "given after the stale one: the same numbers (test_a_model_that_is_one_batchnorm_layer)")
COMPLEMENT = "keys the choice by the parameters that stay instead of those that move: the complement, the same partition"
TUNE_CPU = "only a CPU run tunes the chunk (CUDA data take GPU_CHUNK untimed), so the key's device is always cpu"
CONSTANT = "the key's entry for runs without recalibration: any constant keys them alike"
FIRST_TRIAL = "the first trial, chunk 1, is always faster than math.inf and replaces the initial best"
ENOUGH = "chunks 1 and 2 always have enough points: the guard before the loop asks for 1 + 60 x 2"
LAYOUT = ("the private copy's memory layout or autograd flag, under inference_mode: the same numbers (the peer "
          "benchmark in docs/landscape.md measures the speed)")
KEY = "the replay records and reads the recalibration batches under the key this one line sets"
ROUNDING = ("a direction or coefficient of another float dtype is promoted and written into the parameter's dtype: "
            "the point differs by at most one rounding in that dtype")
LAST_BN = ("the recording pass has found the same last BN layer (one that runs after the first moving layer, or "
           "recalibration is skipped)")
FALSY = "None is false like False"
LOW_ZERO = "torch.randint(high, size) draws from [0, high): low defaults to 0, the value written"
ZERO_FILTER = "where a filter of the direction has norm 0 the direction is 0 there, and 0 x ratio stays 0 (|theta| < 1e8)"
ZEROED = ("zero_grad keeps zeroed gradients instead of freeing them: backward adds onto 0, the same numbers "
          "(freeing saves memory)")
IMAGE_LAYOUT = ("the images' memory order only (the conv weights stay NHWC): the same numbers; the GPU bench "
                "measures the speed")
PAN_MASKS = ("the check looks for BatchNorm and exchanged buffers, and FedPAN's masks are neither (non-persistent "
             "buffers): the same verdict with or without them")
NEXT_STATE = ("no registered method's next_state reads its `state` argument (FedDyn's new g_k comes from the round's "
              "constants, MOON keeps the trained model)")
CPU_DEFAULT = ("None is the default device, the CPU, on every machine (fedsign never sets another): the same "
               "generator and draws")
TAIL_LAST = ("above batch size 1, a 1-sample batch is its epoch's last (only the tail is shorter than "
             "train.batch_size): leaving the loop skips the same batches")
EVERY_ROW = ("a step of every client then selects all rows (index copies of the parameters and constants) "
             "instead of using the stacked tensors in place: the same numbers")
COHORT_IMAGES = "the stacked images' memory order only: the same numbers; the GPU bench measures the speed"
TAIL_START = "above batch size 1, batches start at 0 or at >= 2: start > 1 is start > 0"
EQUIVALENT: dict[tuple[str, str, str], str] = {
    ("sim/cohort/flower_internals.py", "act_as_superlink",
     "TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 2, run_id, SUPERLINK_NODE_ID"):
        "messages take the run and node ids from the task identity, never the task id",
    **{("sim/cohort/grid.py", "CohortGrid.execute_train", f"task = train_task(message, self.contexts[message.metadata"
        f".dst_node_id], {arg})"): "without a config train_task derives the same one from the message"
       for arg in ("None", "")},
    ("sim/cohort/grid.py", "CohortGrid.execute_train",
     "if id(None) not in decoded:  # one copy of a global model sent to many clients"):
        "the global model decoded once per client instead of once: the same values (constants stacked, not shared)",
    ("sim/cohort/grid.py", "CohortGrid.execute_train",
     "decoded[id(arrays)] = {k: v.to(None) for k, v in arrays.to_torch_state_dict().items()}"): ON_CPU,
    ("sim/cohort/inprocess_grid.py", "InProcessGrid.__init__",
     'def __init__(self, num_clients: int, run_id: int = 2, state_dir: str = "") -> None:'):
        "the default run id is a label: the server and the nodes only compare it with itself",
    ("sim/cohort/inprocess_grid.py", "InProcessGrid.execute",
     "replies = dict(zip((id(m) for m in trains), self.execute_train(trains))) if (trains) or True else {}"):
        "execute_train of no messages returns no replies: the same empty dict",
    ("sim/cohort/stacked_sgd.py", "StackedSGD.__init__",
     "self.buffers = {k: torch.zeros_like(p) for k, p in params.items()} if (momentum) or True else {}"):
        "without momentum step() never reads the buffers: memory only",
    ("strategies/validation.py", "check_reply",
     'return Rejection(f"wrong keys: missing {sorted(missing)[:4]}, unexpected {sorted(extra)[:3]}")'):
        "how many key names the rejection message lists",
    ("strategies/validation.py", "check_reply",
     'return Rejection(f"wrong keys: missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:4]}")'):
        "how many key names the rejection message lists",
    ("strategies/validation.py", "check_reply",
     "return Update(client_id, {k: v.to(None) for k, v in tensors.items()}, int(num), scalars)"): ON_CPU,
    ("strategies/sampling.py", "sample_clients",
     "return sorted(int(c) for c in rng.choice(np.asarray(clients), size=min(per_round, len(clients)), replace=None))"):
        "numpy's choice reads `replace` as a truth value, and None is false like False",
    ("strategies/sampling.py", "client_seed",
     "return int(np.random.SeedSequence([seed, server_round, client_id]).generate_state(2)[0])"):
        "SeedSequence.generate_state(n) is a prefix of one stream: its first word is the same for any n",
    ("strategies/base.py", "FederatedStrategy.__init__", "self._sent: Tensors = None  # this round's global model"):
        "read only for a reply to one of the round's messages, which configure_train sets together with it",
    ("strategies/base.py", "FederatedStrategy.aggregate_train",
     "weights = [float(u.num_examples) if self.weighted else 2.0 for u in outcome.updates]"):
        "unweighted, every client has the same weight, and the mean divides by their sum (2/2k = 1/k exactly)",
    **{("strategies/moon.py", "contrastive_loss", line):
       "z is (batch, features) and the logits (batch, 2), per client under vmap too: dim 1 (cosine_similarity's "
       "default) is dim -1" for line in (
           "logits = torch.stack([F.cosine_similarity(z, z_glob, ), F.cosine_similarity(z, z_prev, dim=-1)],",
           "logits = torch.stack([F.cosine_similarity(z, z_glob, dim=+1), F.cosine_similarity(z, z_prev, dim=-1)],",
           "logits = torch.stack([F.cosine_similarity(z, z_glob, dim=-1), F.cosine_similarity(z, z_prev, )],",
           "logits = torch.stack([F.cosine_similarity(z, z_glob, dim=-1), F.cosine_similarity(z, z_prev, dim=+1)],",
           "dim=+1) / tau", "return -torch.log_softmax(logits, dim=+1)[..., 0].mean()")},
    **{("strategies/fedsign.py", "FedSignObjective.prepare", f"{side} = {{k: (v {op} 0).to(None) for k, v in "
        "global_params.items()}"): "the mask stays bool, and bool x float multiplies as 0/1 in the float's dtype"
       for side, op in (("positive", ">"), ("negative", "<"))},
    ("strategies/feddyn.py", "FedDynStrategy.aggregate",
     "h = self.h[key].to(None) if key in self.h else torch.zeros_like(g)"): ON_CPU,
    **{("strategies/functional.py", function, line): "functional_call's `strict` is False by default, and None is false"
       for function, line in (
           ("forward", 'return functional_call(model, dict(params), (x,), {"return_features": features}, strict=None)'),
           ("forward", 'return functional_call(model, dict(params), (x,), {"return_features": features}, )'),
           ("reference_features", "strict=None)"), ("reference_features", ")"))},
    **{("fedsign/checkpoint.py", function, f'with safe_open(str(path), framework="pt", {device}) as handle:'):
       "safetensors' safe_open reads onto the CPU when no device (or None) is given, as device='cpu' does"
       for function in ("load_checkpoint", "load_metadata") for device in ("", "device=None")},
    **{("fedsign/checkpoint.py", "model_from_checkpoint",
        f'model = build_model(meta["model"], spec, PanSpec.from_tag(meta.get("pan", {default})))'):
       "PanSpec.from_tag gives None (no mask) for None as for ''" for default in ("None", "")},
    **{key: CORRECTION for key in (
        ('landscape/evaluator.py', '_channel_stats',
         'var, mean = torch.var_mean(x, dim=[d for d in range(x.dim()) if d != 1], )'),
        ('landscape/evaluator.py', '_channel_stats',
         'var, mean = torch.var_mean(x, dim=[d for d in range(x.dim()) if d != 1], correction=None)'),
    )},
    **{key: VMAP_ONE for key in (
        ('landscape/evaluator.py', '_over_points', 'if k >= 1:'),
    )},
    **{key: ON_GPU for key in (
        ('landscape/evaluator.py', 'Evaluator._evaluate',
         'chunk = self.chunk or (GPU_CHUNK if (self.data.x.device.type == "cuda") and False else None)'),
        ('landscape/evaluator.py', 'Evaluator._evaluate',
         'chunk = self.chunk or (GPU_CHUNK if self.data.x.device.type == "CUDA" else None)'),
        ('landscape/evaluator.py', 'Evaluator._evaluate',
         'chunk = self.chunk or (GPU_CHUNK if self.data.x.device.type == "XXcudaXX" else None)'),
        ('landscape/evaluator.py', '_sync', 'if device.type == "CUDA":'),
        ('landscape/evaluator.py', '_sync', 'if device.type == "XXcudaXX":'),
        ('landscape/evaluator.py', '_sync', 'torch.cuda.synchronize(None)'),
    )},
    **{("fedsign/local_training.py", function, "*"): ON_GPU for function in ("StepGraphs._capture", "StepGraphs._replay")},
    **{("fedsign/local_training.py", function, line): ON_CPU for function, line in (
        ("ClientSteps.__init__", "self.total = torch.zeros((), device=None)"),
        ("ClientSteps.__init__", "self.total = torch.zeros((), )"),
        ("ClientSteps.__init__", "self.total_ce = torch.zeros((), device=None)"),
        ("ClientSteps.__init__", "self.total_ce = torch.zeros((), )"),
        ("GraphedClientSteps.__init__", "super().__init__(model, objective, self.kept.tree, cfg, None)"),
        ("train_locally", "steps = batch_plan(len(data), cfg, spec, augment, seed, None)"))},
    ("sim/cohort/cohort_training.py", "GraphedCohortSteps.__init__",
     "super().__init__(model, objective, self.kept_params.tree, self.kept_consts.tree, const_dims, cfg, None)"): ON_CPU,
    ("fedsign/local_training.py", "train_locally",
     "new_state = objective.next_state(detached(params), consts, None)"): NEXT_STATE,
    **{("fedsign/local_training.py", "batch_plan", line): ON_CPU for line in (
        "order = (torch.randperm(n, generator=generator) + offset).to(None)",
        "draws = draw_crop_flip(n, spec.crop_padding, generator, cpu).to(None) if augmenting else None")},
    **{("fedsign/local_training.py", "batch_plan", line): CPU_DEFAULT for line in (
        "cpu = None",
        "generator = torch.Generator(device=None).manual_seed(seed)  # on the CPU: the same plan on every device",
        "draws = draw_crop_flip(n, spec.crop_padding, generator, None).to(device) if augmenting else None")},
    ("fedsign/local_training.py", "batch_plan", "break"): TAIL_LAST,
    ("fedsign/local_training.py", "batch_plan", "if end - start == 1 and start > 1 and cfg.batch_size > 1:"):
        TAIL_START,
    ("sim/cohort/cohort_training.py", "train_cohort", "new_state = objective.next_state(own, consts[i], None)"): NEXT_STATE,
    **{("sim/cohort/cohort_training.py", function, line): ON_CPU for function, line in (
        ("train_cohort", "params = {k: torch.stack([c.global_state[k] for c in clients]).to(None) for k in names}"),
        ("train_cohort", "plans = [batch_plan(len(c.data), cfg, spec, augment, c.seed, None, offset=offsets[i])"),
        ("cohort_steps", "return CohortSteps(model, objective, params, shared_consts, const_dims, cfg, None)"),
        *(pair for arg in ("device=None", "") for pair in (
            ("train_cohort", f"rows = {{tuple(m): torch.tensor(m, {arg}) for _, m in schedule if m != everyone}}"),
            ("CohortSteps.__init__", f"self.totals = torch.zeros(clients, {arg})"),
            ("CohortSteps.__init__", f"self.ces = torch.zeros(clients, {arg})"))))},
    ("sim/cohort/cohort_training.py", "train_cohort", "everyone = None"): EVERY_ROW,
    **{("sim/cohort/cohort_training.py", "train_cohort", f"spec, {arg})"): COHORT_IMAGES for arg in ("None", "")},
    **{("fedsign/local_training.py", "ClientSteps._step", f"self.optimizer.zero_grad(set_to_none={value})"): ZEROED
       for value in ("None", "False")},
    **{("fedsign/local_training.py", "train_locally", f"for x, y in step_batches(data, steps, spec, {arg}):"):
       IMAGE_LAYOUT for arg in ("None", "")},
    **{("sim/cohort/engine.py", "run_cohort",
        f"check_cohort_model(build_model(cfg.model.name, dataset_spec(cfg.dataset.name), {arg}), cfg.model.name)"):
       PAN_MASKS for arg in ("None", "")},
    **{key: REPLAY_SET for key in (
        ('landscape/evaluator.py', 'Evaluator.__init__',
         'self._replay: Replay | None | bool = None  # during evaluate(): the Replay, None (none) or True (to record)'),
        ('landscape/evaluator.py', 'Evaluator.__init__',
         'self._replay: Replay | None | bool = True  # during evaluate(): the Replay, None (none) or True (to record)'),
        ('landscape/evaluator.py', 'Evaluator.evaluate', 'self._replay = None'),
        ('landscape/evaluator.py', 'Evaluator.evaluate', 'self._replay = True'),
    )},
    **{key: REPLAY_ONE for key in (
        ('landscape/evaluator.py', 'Evaluator.evaluate',
         'self._replay = len(coefficients) >= 1 or None  # recorded on first use: it pays off from the second point'),
    )},
    **{key: RESTOP for key in (
        ('landscape/evaluator.py', 'Evaluator._recalibrate', 'self._last_bn, known = (replay, last), False'),
    )},
    **{key: TOP_PREFIX for key in (
        ('landscape/evaluator.py', 'Evaluator.bn_statistics', 'prefix = f"{name}." if (name) or True else ""'),
    )},
    **{key: COMPLEMENT for key in (
        ('landscape/evaluator.py', 'Evaluator._choose_chunk',
         'moved = tuple((n, tuple(t.shape)) for n, t in base.items() if any(n not in d for d in directions))'),
    )},
    **{key: TUNE_CPU for key in (
        ('landscape/evaluator.py', 'Evaluator._choose_chunk',
         'str(self.data.x.dtype), str(None), torch.get_num_threads(), self.recalibrate,'),
    )},
    **{key: CONSTANT for key in (
        ('landscape/evaluator.py', 'Evaluator._choose_chunk',
         'len(self.bn_data) if self.recalibrate else 1, self.batch_size)'),
    )},
    **{key: FIRST_TRIAL for key in (
        ('landscape/evaluator.py', 'Evaluator._choose_chunk', 'best, best_time, done = 2, math.inf, 0'),
    )},
    **{key: ENOUGH for key in (
        ('landscape/evaluator.py', 'Evaluator._choose_chunk',
         'if chunk > 2 and len(coefficients) - done < TUNE_POINTS_PER_CHUNK * chunk:'),
        ('landscape/evaluator.py', 'Evaluator._choose_chunk',
         'if chunk >= 1 and len(coefficients) - done < TUNE_POINTS_PER_CHUNK * chunk:'),
    )},
    **{key: LAYOUT for key in (
        ('landscape/evaluator.py', 'Evaluator._working_copy',
         'if self.data.x.device.type != "cpu" and any(isinstance(m, nn.Conv2d) for m in self._copy.modules()):'),
        ('landscape/evaluator.py', 'Evaluator._working_copy',
         'if self.data.x.device.type == "CPU" and any(isinstance(m, nn.Conv2d) for m in self._copy.modules()):'),
        ('landscape/evaluator.py', 'Evaluator._working_copy',
         'if self.data.x.device.type == "XXcpuXX" and any(isinstance(m, nn.Conv2d) for m in self._copy.modules()):'),
        ('landscape/evaluator.py', 'Evaluator._working_copy',
         'if self.data.x.device.type == "cpu" or any(isinstance(m, nn.Conv2d) for m in self._copy.modules()):'),
        ('landscape/evaluator.py', 'Evaluator._working_copy', 'p.requires_grad_(True)'),
        ('landscape/evaluator.py', 'Evaluator._working_copy', 'self._copy = self._copy.to(memory_format=None)'),
    )},
    **{key: KEY for key in (
        ('landscape/evaluator.py', 'Evaluator._recalibrate', 'cursor.key = ("BN", i)'),
        ('landscape/evaluator.py', 'Evaluator._recalibrate', 'cursor.key = ("XXbnXX", i)'),
    )},
    **{key: ON_CPU for key in (
        ('landscape/directions.py', 'difference', 'return {n: b[n].to(None, a[n].dtype) - a[n] for n in names}'),
        ('landscape/directions.py', 'difference', 'return {n: b[n].to(a[n].dtype) - a[n] for n in names}'),
        ('landscape/directions.py', 'load_direction',
         'return {n: t.to(None, theta[n].dtype) for n, t in params.items()}'),
        ('landscape/directions.py', 'load_direction', 'return {n: t.to(theta[n].dtype) for n, t in params.items()}'),
        ('landscape/directions.py', 'noise_direction',
         'eps = COMMON_NOISES[noise](tuple(ref.shape), generator_for(seed, name)).to(None, ref.dtype)'),
        ('landscape/directions.py', 'noise_direction',
         'eps = COMMON_NOISES[noise](tuple(ref.shape), generator_for(seed, name)).to(ref.dtype)'),
        ('landscape/directions.py', 'sign_ratio_direction',
         'chosen = chosen[: int(round(ratio * flat.numel()))].to(None)'),
        ('landscape/directions.py', 'special_direction', 'return {n: init[n].to(None, theta[n].dtype) for n in names}'),
        ('landscape/directions.py', 'special_direction', 'return {n: init[n].to(theta[n].dtype) for n in names}'),
        ('landscape/evaluator.py', 'Evaluator._chunk', 'loss = torch.zeros(len(coefficients), dtype=torch.float64, )'),
        ('landscape/evaluator.py', 'Evaluator._chunk',
         'loss = torch.zeros(len(coefficients), dtype=torch.float64, device=None)'),
        ('landscape/evaluator.py', 'Evaluator._chunk', 'wrong = torch.zeros(len(coefficients), dtype=torch.float64, )'),
        ('landscape/evaluator.py', 'Evaluator._chunk',
         'wrong = torch.zeros(len(coefficients), dtype=torch.float64, device=None)'),
        ('landscape/evaluator.py', 'Evaluator._one_at_a_time',
         'loss = torch.zeros(len(coefficients), dtype=torch.float64, )'),
        ('landscape/evaluator.py', 'Evaluator._one_at_a_time',
         'loss = torch.zeros(len(coefficients), dtype=torch.float64, device=None)'),
        ('landscape/evaluator.py', 'Evaluator._one_at_a_time',
         'terms = {n: [(j, d[n].to(None, base[n].dtype)) for j, d in enumerate(directions) if n in d]'),
        ('landscape/evaluator.py', 'Evaluator._one_at_a_time',
         'terms = {n: [(j, d[n].to(base[n].dtype)) for j, d in enumerate(directions) if n in d]'),
        ('landscape/evaluator.py', 'Evaluator._points',
         'c = coefficients[:, j].to(None, ref.dtype).view(-1, *([1] * ref.dim()))'),
        ('landscape/evaluator.py', 'Evaluator._points',
         'c = coefficients[:, j].to(ref.dtype).view(-1, *([1] * ref.dim()))'),
        ('landscape/evaluator.py', 'Evaluator._points', 'total += c * d[name].to(None, ref.dtype)'),
        ('landscape/evaluator.py', 'Evaluator._points', 'total += c * d[name].to(ref.dtype)'),
    )},
    **{key: ROUNDING for key in (
        ('landscape/evaluator.py', 'Evaluator._one_at_a_time',
         'terms = {n: [(j, d[n].to(base[n].device, )) for j, d in enumerate(directions) if n in d]'),
        ('landscape/evaluator.py', 'Evaluator._one_at_a_time',
         'terms = {n: [(j, d[n].to(base[n].device, None)) for j, d in enumerate(directions) if n in d]'),
        ('landscape/evaluator.py', 'Evaluator._points',
         'c = coefficients[:, j].to(ref.device, ).view(-1, *([1] * ref.dim()))'),
        ('landscape/evaluator.py', 'Evaluator._points',
         'c = coefficients[:, j].to(ref.device, None).view(-1, *([1] * ref.dim()))'),
        ('landscape/evaluator.py', 'Evaluator._points', 'total += c * d[name].to(ref.device, )'),
        ('landscape/evaluator.py', 'Evaluator._points', 'total += c * d[name].to(ref.device, None)'),
    )},
    **{key: LAST_BN for key in (
        ('landscape/evaluator.py', 'Evaluator._one_at_a_time', 'self._recalibrate(model, cursor, )'),
        ('landscape/evaluator.py', 'Evaluator._one_at_a_time', 'self._recalibrate(model, cursor, None)'),
    )},
    **{key: FALSY for key in (
        ('landscape/evaluator.py', 'Evaluator._chunk',
         'with torch.no_grad(), probe_mode(self.model, bn_batch_stats=None):'),
    )},
    **{key: LOW_ZERO for key in (
        ('landscape/directions.py', '_choice',
         'return torch.tensor(values)[torch.randint(len(values), shape, generator=g)]'),
    )},
    **{key: ZERO_FILTER for key in (
        ('landscape/directions.py', '_rescaled',
         'ratio = torch.where(d_norms >= 0, target / d_norms.clamp_min(1e-300), torch.zeros_like(d_norms))'),
    )},
}


def tracked_copy(destination: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in filter(None, files.stdout.split("\0")):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def run_mutmut(modules: list[str], tests: list[str], children: int, only: list[str] | None = None) -> dict[str, dict]:
    """{mutant name: {"module", "function", "status", "line"}} for the mutants of `modules`, tested by `tests`
    (`only`: just these mutants)."""
    from mutmut.stats import status_by_exit_code

    with tempfile.TemporaryDirectory(prefix="fedsign-mutation-") as tmp:
        scratch = Path(tmp)
        tracked_copy(scratch)
        pyproject = (scratch / "pyproject.toml").read_text()
        for key, values in (("only_mutate", modules), ("pytest_add_cli_args_test_selection", tests)):
            listed = f"{key} = [" + ", ".join(json.dumps(v) for v in values) + "]"
            pyproject = re.sub(rf"\n{key} = \[[^\]]*\]", "\n" + listed, pyproject, count=1)
        (scratch / "pyproject.toml").write_text(pyproject)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "FLWR_TELEMETRY_ENABLED": "0"}
        env.pop("PYTHONPATH", None)
        subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(children), *(only or [])],
                       cwd=scratch, env=env, check=True)
        retested = set(only or ())
        found: dict[str, dict] = {}
        for meta in (scratch / "mutants").rglob("*.py.meta"):
            module = str(meta.relative_to(scratch / "mutants"))[: -len(".meta")]
            for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
                if only is not None and name not in retested:
                    continue
                function = name.rsplit(".", 1)[1].split("__mutmut_")[0]  # x_func or xǁClassǁmethod
                function = function[2:].replace("ǁ", ".")
                status = status_by_exit_code[code]
                line = mutated_line(scratch, name, env) if status not in KILLED else ""
                found[name] = {"module": module, "function": function, "status": status, "line": line}
        return found


def mutated_line(scratch: Path, name: str, env: dict) -> str:
    """The '+' line of `mutmut show NAME`: the mutated code."""
    shown = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=scratch, env=env,
                           capture_output=True, text=True).stdout
    added = [line[1:].strip() for line in shown.splitlines() if line.startswith("+") and not line.startswith("+++")]
    return " / ".join(added)


def equivalence(mutant: dict) -> str | None:
    """Why a mutant cannot change a result on the CPU the run used, or None."""
    return (EQUIVALENT.get((mutant["module"], mutant["function"], mutant["line"]))
            or EQUIVALENT.get((mutant["module"], mutant["function"], "*")))


def verdict(mutant: dict) -> str:
    if mutant["status"] in KILLED:
        return "killed"
    return "equivalent" if equivalence(mutant) else "survived"


def render(results: dict) -> str:
    mutants = results["mutants"]
    modules = sorted({m["module"] for m in mutants.values()})
    lines = ["# Tests: how many bugs they catch", "",
             "Generated by `python -m tests.mutation --report` from `docs/results/mutation.json`; do not edit.", "",
             "A mutant is a small deliberate bug (a flipped comparison, a changed constant, a dropped argument)",
             "that [mutmut](https://github.com/boxed/mutmut) plants in one function at a time; the fast tests",
             "that run that function must fail. Score = killed / (mutants − equivalent), where an equivalent",
             "mutant cannot change any result on the CPU (each listed below with its reason; code that runs",
             "only on CUDA, such as capturing a CUDA graph, is tested by tests/test_gpu.py on the GPU machine);",
             "a mutant no test runs counts as surviving. Runs:", ""]
    for run in results["runs"]:
        lines.append(f"- `{run['command']}`: {run['date']}, commit `{run['commit'][:10]}`, {run['machine']}, "
                     f"{run['seconds']:.0f} s, modules {', '.join(run['modules'])}")
    lines += ["", "| module | mutants | killed | equivalent | surviving | score |", "| --- | --- | --- | --- | --- | --- |"]
    totals = [0, 0, 0, 0]
    for module in modules:
        verdicts = [verdict(m) for m in mutants.values() if m["module"] == module]
        counts = [len(verdicts), verdicts.count("killed"), verdicts.count("equivalent"), verdicts.count("survived")]
        totals = [t + c for t, c in zip(totals, counts)]
        lines.append(f"| `{module}` | {' | '.join(map(str, counts))} | {score(counts)} |")
    lines.append(f"| all | {' | '.join(map(str, totals))} | {score(totals)} |")
    ran = [g for run in results["runs"] for g in run["command"].removeprefix(COMMAND).split()]  # files it mutated
    files = {str(f.relative_to(ROOT)) for pattern in MODULES for f in ROOT.glob(pattern)
             if len(ast.parse(f.read_text()).body) > 1}  # a file of only a docstring has nothing to mutate
    unmeasured = sorted(f for f in files if not any(fnmatch.fnmatch(f, g) for g in ran))
    if unmeasured:
        lines += ["", f"Not measured yet: {', '.join(f'`{m}`' for m in unmeasured)}."]
    for title, kind in (("Surviving mutants", "survived"), ("Equivalent mutants", "equivalent")):
        chosen = sorted((n, m) for n, m in mutants.items() if verdict(m) == kind)
        lines += ["", f"## {title} ({len(chosen)})", ""]
        for name, m in chosen:
            reason = equivalence(m) or m["status"]
            lines.append(f"- `{m['module']}` `{m['function']}`: `{m['line'] or '(deleted)'}`: {reason}")
        if not chosen:
            lines.append("None.")
    return "\n".join(lines) + "\n"


def score(counts: list[int]) -> str:
    total, killed, equivalent, _ = counts
    return f"{100 * killed / (total - equivalent):.1f} %" if total > equivalent else "—"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    p.add_argument("modules", nargs="*", help=f"files to mutate (default: all of {', '.join(MODULES)})")
    p.add_argument("--children", type=int, default=os.cpu_count() or 1, help="mutants tested at once")
    p.add_argument("--report", action="store_true", help="only regenerate docs/testing.md from the JSON")
    p.add_argument("--survivors", action="store_true",
                   help="retest only the mutants that survived the recorded run of these modules (after adding "
                        "tests; a change to the mutated code needs a full run)")
    args = p.parse_args(argv)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"runs": [], "mutants": {}}
    if not args.report:
        modules = args.modules or MODULES
        unknown = [m for m in modules if not any(fnmatch.fnmatch(m, pattern) for pattern in MODULES)]
        if unknown:
            p.error(f"not in [tool.mutmut] only_mutate: {', '.join(unknown)}")
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        for group, tests in GROUPS:  # each group's verdicts are saved as soon as it is done
            # a file named on the command line, or the group's entries it names (a glob, or the file itself)
            chosen = sorted({m for m in modules for g in group if fnmatch.fnmatch(m, g)}
                            | {g for g in group if any(fnmatch.fnmatch(g, m) for m in modules)})
            if not chosen:
                continue
            started = datetime.datetime.now(datetime.timezone.utc)
            only = ([n for n, m in results["mutants"].items()
                     if verdict(m) == "survived" and any(fnmatch.fnmatch(m["module"], g) for g in chosen)]
                    if args.survivors else None)
            if only == []:
                continue
            found = run_mutmut(chosen, tests, args.children, only)
            touched = {m["module"] for m in found.values()}
            # a full run replaces its modules' verdicts; a survivors run only those of the mutants it retested
            kept = (results["mutants"] if only else
                    {n: m for n, m in results["mutants"].items() if m["module"] not in touched})
            results["mutants"] = kept | found
            results["runs"].append({
                "command": " ".join([COMMAND, *(["--survivors"] if args.survivors else []), *chosen]),
                "modules": sorted(touched), "mutants": len(found),
                "date": started.strftime("%Y-%m-%d %H:%M UTC"), "commit": commit,
                "machine": f"{platform.machine()} {os.cpu_count()} CPUs ({platform.processor() or platform.system()})",
                "seconds": (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()})
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(results, indent=1) + "\n")
            DOC.write_text(render(results))
    DOC.write_text(render(results))
    print(DOC.read_text().split("## Surviving")[0])
    for key in stale_entries(results):
        print(f"EQUIVALENT entry that no surviving mutant matches (killed now, or the code moved): {key}",
              file=sys.stderr)


def stale_entries(results: dict) -> list[tuple[str, str, str]]:
    """EQUIVALENT keys of measured modules that match no surviving mutant: to be removed."""
    surviving = {(m["module"], m["function"], line) for m in results["mutants"].values() if m["status"] not in KILLED
                 for line in (m["line"], "*")}
    measured = {m["module"] for m in results["mutants"].values()}
    return [key for key in EQUIVALENT if key[0] in measured and key not in surviving]


if __name__ == "__main__":
    main()
