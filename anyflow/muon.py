"""Muon for small models on CPU: torch.optim.Muon's update, with the Newton-Schulz iterations batched and in fp32.

Muon (Jordan et al. 2024, "Muon: MomentUm Orthogonalized by Newton-Schulz"; torch.optim.Muon): for a 2-D weight W
with gradient G, momentum B ← μB + (1 − μ)G, update U = G + μ(B − G) (Nesterov) or B, O = NS₅(U) ≈ the
orthogonal factor of U (quintic Newton-Schulz, X ← aX + (bA + cA²)X with A = XXᵀ, X₀ = U/‖U‖_F), then
W ← W(1 − ηλ) − η·√max(1, m/n)·O.

torch.optim.Muon runs NS per matrix in bf16, which on a 2-core CPU is slower than fp32 for 128-wide matrices:
110 ms per step for the toy teacher's 40 matrices, against 43 ms here and a 175 ms AdamW training step.
`Muon` here keeps torch's class (validation, defaults, state_dict format) and replaces only `step`: matrices of
one shape are stacked and orthogonalised together, in fp32.
`MuonAdamW` puts Muon on the hidden matrices and AdamW on everything else behind one optimizer, so one LR
scheduler and one `accelerator.prepare` drive both.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

import torch


def newton_schulz(U: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float) -> torch.Tensor:
    """NS_steps(U) for a stack of matrices [..., m, n] (fp32): X₀ = U/‖U‖_F, then X ← aX + (bA + cA²)X, A = XXᵀ,
    on the wide orientation (m ≤ n), as torch.optim.Muon does per matrix."""
    a, b, c = coefficients
    X = U.float()
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * (A @ A)) @ X
    return X.mT if tall else X


class Muon(torch.optim.Muon):
    """torch.optim.Muon with batched fp32 Newton-Schulz (same hyperparameters, defaults and state)."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["adjust_lr_fn"] not in (None, "original"):
                raise ValueError(f"Muon: adjust_lr_fn {group['adjust_lr_fn']!r} is not supported here (only 'original')")
            by_shape: dict[torch.Size, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                by_shape[p.shape].append((p, update))
            for shape, items in by_shape.items():
                O = newton_schulz(torch.stack([u for _, u in items]), group["ns_coefficients"], group["ns_steps"],
                                  group["eps"])
                lr = group["lr"]
                scaled = lr * math.sqrt(max(1.0, shape[0] / shape[1]))
                for (p, _), o in zip(items, O):
                    p.mul_(1 - lr * group["weight_decay"])
                    p.add_(o.to(p.dtype), alpha=-scaled)
        return loss


def hidden_matrices(model: torch.nn.Module, blocks: str = "blocks") -> list[torch.Tensor]:
    """The 2-D weights inside `model.<blocks>` (the transformer blocks' linear layers), Muon's share. Embeddings,
    the output head, norms, biases and 2-D modulation tables (`scale_shift_table`) stay with AdamW."""
    return [p for name, p in getattr(model, blocks).named_parameters()
            if p.ndim == 2 and "scale_shift" not in name]


class MuonAdamW(torch.optim.Optimizer):
    """Muon on `hidden` parameters, AdamW on the rest of `params`; one optimizer to the outside.

    `param_groups` is the two inner optimizers' groups, read live, so an LR scheduler scales both by the same
    factor from their own base lrs (Muon's `muon_lr`, AdamW's `lr`)."""

    def __init__(self, params: Iterable[torch.Tensor], hidden: Iterable[torch.Tensor], *, lr: float, muon_lr: float,
                 weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.99), momentum: float = 0.95):
        params = list(params)
        hidden_ids = {id(p) for p in hidden}
        muon_params = [p for p in params if id(p) in hidden_ids]
        if len(muon_params) != len(hidden_ids):
            raise ValueError("MuonAdamW: every hidden matrix must also be in params")
        self.muon = Muon(muon_params, lr=muon_lr, weight_decay=weight_decay, momentum=momentum)
        self.adamw = torch.optim.AdamW([p for p in params if id(p) not in hidden_ids], lr=lr,
                                       weight_decay=weight_decay, betas=betas)
        self.defaults, self.state = {}, defaultdict(dict)
        self._optimizer_step_pre_hooks, self._optimizer_step_post_hooks = {}, {}

    @property
    def param_groups(self):  # live: accelerate's load_state_dict replaces the inner optimizers' group dicts
        return self.muon.param_groups + self.adamw.param_groups

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def zero_grad(self, set_to_none: bool = True):
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def state_dict(self):
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict):
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
