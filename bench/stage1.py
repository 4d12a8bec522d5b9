"""Stage-1 step cost against plain flow matching on the same model, batch and LoRA (recipe §6, paper 1.73x).

    .venv/bin/python bench/stage1.py [--preset toy] [--steps 10] [--batch 16]

The student is built from a randomly initialised transformer of the preset's teacher size (cost does not
depend on the weights). Flow matching: one forward+backward at r = t. Stage 1: the full flow-map loss
(guidance-fused no-grad branch and the central difference, batched into one no-grad call, skipped for
r = t samples) + backward. Prints seconds per iteration and the ratio."""

from __future__ import annotations

import argparse
import time

import torch

from anyflow.schedule import beta_time_weight
from anyflow.stage1 import flowmap_loss
from anyflow.student import average_velocity
from tasks.stage1 import loss_spec
from toymodels import toy_models


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="toy")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args()
    m = toy_models(args.preset, args.batch)
    cfg, student, params, text, uncond = m.cfg, m.student, m.params, m.text, m.uncond
    opt = torch.optim.AdamW(params, lr=1e-5)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(m.latent_shape, generator=g)
    spec = loss_spec(cfg)

    def fm_step():
        t = torch.rand(args.batch, generator=g)
        eps = torch.randn(x0.shape, generator=g)
        z = (1 - t.view(-1, 1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1, 1) * eps
        per = ((average_velocity(student, z, t, t, text) - (eps - x0)) ** 2).flatten(1).mean(1)
        return (beta_time_weight(t, spec.shift) * per).mean()

    def s1_step():
        return flowmap_loss(student, x0, text, uncond, spec, g)[0]

    def timed(fn):
        out = []
        for i in range(args.steps + 2):
            start = time.perf_counter()
            fn().backward()
            opt.step()
            opt.zero_grad()
            if i >= 2:
                out.append(time.perf_counter() - start)
        return sum(out) / len(out)

    fm, s1 = timed(fm_step), timed(s1_step)
    print(f"\npreset {args.preset}, batch {args.batch}, {torch.get_num_threads()} threads, LoRA rank {cfg.stage1.lora.rank}")
    print(f"  flow matching   {fm * 1000:7.1f} ms/it")
    print(f"  stage 1         {s1 * 1000:7.1f} ms/it")
    print(f"  ratio           {s1 / fm:7.2f}   (paper 1.73; target <= 1.6)")


if __name__ == "__main__":
    main()
