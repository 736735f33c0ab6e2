"""Replaying what is the same at every point of a probe (used by the one-point-at-a-time evaluator).

At theta_k = base + sum_j c_kj d_j only the parameters the directions touch move. In execution order,
let P be the first module that owns a moving parameter. Then
- every module whose forward pass ends before P's starts computes the same output at every point
  (nothing it depends on moves; BN layers inside it recalibrate to the same statistics): its outputs
  are recorded once per data batch and replayed;
- P's input is the same at every point, and if P is a Linear or Conv layer its output is affine in its
  parameters: P(x; W + sum_j c_j D_j, b + sum_j c_j e_j) = P(x; W, b) + sum_j c_j P(x; D_j, e_j) (the bias
  is the e_j term), so P's output is base + sum_j c_j term_j, one multiply-add per direction.
With --group CLF this leaves the classifier alone to compute; with all parameters moving it spares the
first layer. The recordings are kept per (pass, batch) for the data and the BN recalibration data;
nothing is recorded when they would exceed a memory budget, or when a module runs twice per forward.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

Params = dict[str, torch.Tensor]
Key = tuple[str, int]  # ("bn" | "eval", batch index)
AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class Cursor:
    """Which pass and batch the model is running (set by the evaluator's loops), and the point's coefficients."""

    key: Key = ("eval", 0)
    row: list[float] = field(default_factory=list)


class _Replayed(nn.Module):
    """Stands in for a module whose output is the same at every point."""

    def __init__(self, outputs: dict[Key, torch.Tensor], cursor: Cursor) -> None:
        super().__init__()
        self.outputs, self.cursor = outputs, cursor

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.outputs[self.cursor.key].clone()  # a fresh tensor: later in-place ops cannot touch the record


class _AffineReplayed(nn.Module):
    """Stands in for P: P(x; base) + sum_j c_j P(x; d_j) from the recorded terms."""

    def __init__(self, base: dict[Key, torch.Tensor], terms: list[tuple[int, dict[Key, torch.Tensor]]],
                 cursor: Cursor) -> None:
        super().__init__()
        self.base, self.terms, self.cursor = base, terms, cursor

    def forward(self, *args, **kwargs) -> torch.Tensor:
        key, row = self.cursor.key, self.cursor.row
        (j, outputs), rest = self.terms[0], self.terms[1:]
        out = torch.add(self.base[key], outputs[key], alpha=row[j])
        for j, outputs in rest:
            out.add_(outputs[key], alpha=row[j])
        return out


def _owner(name: str) -> str:
    return name.rpartition(".")[0]


def _inside(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


class Replay:
    """The plan for one model copy and set of moving parameters; `capturing()` records a pass at base,
    `installed()` swaps the recorded modules in."""

    def __init__(self, model: nn.Module, constant: list[str], affine: str | None, needs_recalibration: bool,
                 cursor: Cursor) -> None:
        self.model, self.constant, self.affine = model, constant, affine
        self.needs_recalibration = needs_recalibration
        self.cursor = cursor
        self.outputs: dict[str, dict[Key, torch.Tensor]] = {name: {} for name in constant}
        self.affine_inputs: dict[Key, torch.Tensor] = {}
        self.affine_base: dict[Key, torch.Tensor] = {}
        self.affine_terms: list[tuple[int, dict[Key, torch.Tensor]]] = []

    @classmethod
    def plan(cls, model: nn.Module, moved: set[str], sample: torch.Tensor, images: int, budget_bytes: int,
             directions: int, recalibrate: bool, cursor: Cursor) -> Replay | None:
        """Trace one forward pass on `sample` (one input) to find P and the constant modules; None when
        nothing can be replayed within budget_bytes for `images` inputs (the data plus, with recalibrate,
        the recalibration data)."""
        modules = dict(model.named_modules())
        events: list[tuple[str, str]] = []
        sizes: dict[str, int | None] = {}  # bytes of each module's output (None: not one tensor)
        input_sizes: dict[str, int] = {}
        nbytes = lambda t: t.numel() * t.element_size() if isinstance(t, torch.Tensor) else None  # noqa: E731
        hooks = []
        for name, m in modules.items():
            def start(mod, args, name=name):
                events.append(("start", name))
                input_sizes[name] = nbytes(args[0]) if args else None

            def end(mod, args, out, name=name):
                events.append(("end", name))
                sizes[name] = nbytes(out)
            hooks += [m.register_forward_pre_hook(start), m.register_forward_hook(end)]
        try:
            with torch.inference_mode():
                model(sample)
        finally:
            for h in hooks:
                h.remove()
        starts = [name for kind, name in events if kind == "start"]
        repeated = {name for name in starts if starts.count(name) > 1}
        owners = {_owner(n) for n in moved}
        first = next((i for i, (kind, name) in enumerate(events) if kind == "start" and name in owners), None)
        if first is None or "" in owners:
            return None
        p_name = events[first][1]
        ended = [name for kind, name in events[:first] if kind == "end"]
        constant = [n for n in ended if n and n not in repeated and sizes.get(n) is not None]
        constant = [n for n in constant if not any(n.startswith(c + ".") for c in constant)]  # outermost only
        p = modules[p_name]
        p_moved = {n.rpartition(".")[2] for n in moved if _owner(n) == p_name}
        affine = p_name if (type(p) in AFFINE and p_name not in repeated and p_moved <= {"weight", "bias"}
                            and sizes.get(p_name) is not None and input_sizes.get(p_name) is not None) else None
        cost = sum(sizes[n] for n in constant) * images
        if affine is not None:
            affine_cost = (input_sizes[affine] + sizes[affine] * (1 + directions)) * images  # input, base, terms
            if cost + affine_cost > budget_bytes:
                affine = None
            else:
                cost += affine_cost
        if cost > budget_bytes:
            constant = []
        if not constant and affine is None:
            return None
        bn_left = [n for n, m in modules.items() if isinstance(m, _BatchNorm) and m.track_running_stats
                   and not _inside(n, constant)]
        return cls(model, constant, affine, recalibrate and bool(bn_left), cursor)

    @contextlib.contextmanager
    def capturing(self):
        """While a pass runs at base: record the constant modules' outputs and P's input per cursor key."""
        modules = dict(self.model.named_modules())
        hooks = []
        for name in self.constant:
            outputs = self.outputs[name]
            hooks.append(modules[name].register_forward_hook(
                lambda mod, args, out, outputs=outputs: outputs.__setitem__(self.cursor.key, out.detach())))
        if self.affine is not None:
            hooks.append(modules[self.affine].register_forward_pre_hook(
                lambda mod, args: self.affine_inputs.__setitem__(self.cursor.key, args[0].detach())))
        try:
            yield
        finally:
            for h in hooks:
                h.remove()

    def record_terms(self, directions: list[Params]) -> None:
        """P's output at base and each direction's term P(x; d_j), from the recorded inputs."""
        if self.affine is None:
            return
        p = dict(self.model.named_modules())[self.affine]
        prefix = self.affine + "."

        def apply(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
            if isinstance(p, nn.Linear):
                return nn.functional.linear(x, weight, bias)
            return p._conv_forward(x, weight, bias)

        for key, x in self.affine_inputs.items():
            self.affine_base[key] = apply(x, p.weight, p.bias)
        for j, d in enumerate(directions):
            weight, bias = d.get(prefix + "weight"), d.get(prefix + "bias")
            if weight is None and bias is None:
                continue
            # in P's own memory layout (channels-last on a CPU), so the terms come out in it too
            weight = torch.zeros_like(p.weight) if weight is None else torch.empty_like(p.weight).copy_(weight)
            bias = None if bias is None else bias.to(p.weight.device, p.weight.dtype)
            self.affine_terms.append((j, {key: apply(x, weight, bias) for key, x in self.affine_inputs.items()}))
        self.affine_inputs.clear()
        if not self.affine_terms:  # no direction moves P after all
            self.affine = None

    @contextlib.contextmanager
    def installed(self):
        """The recorded modules replaced by their replays in the model copy; put back afterwards."""
        modules = dict(self.model.named_modules())
        swaps = [(name, _Replayed(self.outputs[name], self.cursor)) for name in self.constant]
        if self.affine is not None:
            swaps.append((self.affine, _AffineReplayed(self.affine_base, self.affine_terms, self.cursor)))
        for name, replacement in swaps:
            parent, _, child = name.rpartition(".")
            setattr(modules[parent], child, replacement)
        try:
            yield
        finally:
            for name, _ in swaps:
                parent, _, child = name.rpartition(".")
                setattr(modules[parent], child, modules[name])
