"""Benchmark Muon on the toy teacher: optimizer step and whole training step, torch.optim.Muon vs anyflow.muon.

    .venv/bin/python bench/muon.py [--preset toy] [--steps 100] [--threads 2]

Times (1) the Muon step alone over the teacher's hidden matrices (torch.optim.Muon: per matrix, bf16
Newton-Schulz; anyflow.muon.Muon: stacked by shape, fp32) and (2) a whole flow-matching training step of the
preset's teacher at its batch size with AdamW, Muon + AdamW through torch.optim.Muon, and anyflow's MuonAdamW.
Random latents and text of the toy shapes (bench/toymodels.py); prints a table.
"""

from __future__ import annotations

import argparse
import time

import torch

import conf
from anyflow.muon import Muon, MuonAdamW, hidden_matrices
from anyflow.teacher import build_transformer, flow_matching_loss, sample_sigma
from toymodels import toy_models


class _TorchMuonAdamW(MuonAdamW):
    """MuonAdamW with torch.optim.Muon inside (the reference)."""

    def __init__(self, params, hidden, **kw):
        super().__init__(params, hidden, **kw)
        self.muon = torch.optim.Muon(self.muon.param_groups[0]["params"], lr=kw["muon_lr"], weight_decay=0.0,
                                     momentum=0.95)


def _timed(fn, steps: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="toy")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    hp = conf.load(args.preset).teacher.toy.train
    toy = toy_models(args.preset, hp.batch_size)
    torch.set_num_threads(args.threads)
    spec, shape, text = toy.cfg.teacher.toy, toy.latent_shape, toy.text
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(shape, generator=g)

    rows = []
    model = build_transformer(spec.arch, spec.vae_z_dim, spec.text.d_model, seed=0)
    hidden = hidden_matrices(model)
    for p in hidden:
        p.grad = torch.randn_like(p)
    for name, opt in (("torch.optim.Muon", torch.optim.Muon(hidden, lr=0.02)), ("anyflow.muon.Muon", Muon(hidden, lr=0.02))):
        rows.append((f"Muon step, {len(hidden)} matrices", name, _timed(opt.step, args.steps)))

    def training(make_opt):
        model = build_transformer(spec.arch, spec.vae_z_dim, spec.text.d_model, seed=0)
        opt = make_opt(model)

        def step():
            loss = flow_matching_loss(model, x0, text, sample_sigma(len(x0), hp, g), torch.randn(shape, generator=g))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return _timed(step, args.steps)

    kw = dict(lr=hp.lr, muon_lr=hp.muon_lr)
    for name, make in (("AdamW", lambda m: torch.optim.AdamW(m.parameters(), lr=hp.lr, betas=(0.9, 0.99))),
                       ("torch.optim.Muon + AdamW", lambda m: _TorchMuonAdamW(m.parameters(), hidden_matrices(m), **kw)),
                       ("anyflow.muon.MuonAdamW", lambda m: MuonAdamW(m.parameters(), hidden_matrices(m), **kw))):
        rows.append((f"training step, batch {hp.batch_size}", name, training(make)))

    print(f"\n{args.threads} threads, {args.steps} timed steps each, preset {args.preset}\n")
    print("| what | optimizer | ms | steps/s |\n|---|---|---|---|")
    for what, name, ms in rows:
        print(f"| {what} | {name} | {ms:.1f} | {1000 / ms:.2f} |")


if __name__ == "__main__":
    main()
