"""Stage-2 generator-iteration cost against the simulated budget s (flow-map backward simulation: 2-3
network calls whatever s is; consistency-style backward simulation would need s).

    .venv/bin/python bench/stage2.py [--preset toy] [--iters 6] [--batch 8]

One generator iteration = backward simulation (with gradients through every jump) + the DMD gradient
(critic, teacher cond/uncond) + backward; the stage-1 co-training loss is left out to isolate the rollout.
Random-init models of the preset's teacher size; k is drawn uniformly per iteration (seeded, same across s)."""

from __future__ import annotations

import argparse
import copy
import time

import torch

from anyflow.stage2 import backward_simulation, dmd_gradient, dmd_loss
from anyflow.student import average_velocity
from anyflow.teacher import teacher_velocity
from toymodels import toy_models


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="toy")
    p.add_argument("--iters", type=int, default=6)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    m = toy_models(args.preset, args.batch)
    cfg, teacher, student, params, text, uncond, shape = (m.cfg, m.teacher, m.student, m.params, m.text, m.uncond,
                                                          m.latent_shape)
    critic = copy.deepcopy(teacher)
    rows = []
    for s in (4, 16, 50):
        g = torch.Generator().manual_seed(0)
        times, calls = [], []
        for i in range(args.iters + 1):
            k = int(torch.randint(s, (1,), generator=g))
            start = time.perf_counter()
            x0, n = backward_simulation(lambda z, t, r: average_velocity(student, z, t, r, text),
                                        torch.randn(shape, generator=g), s, k, cfg.stage1.shift)
            grad, _ = dmd_gradient(x0, lambda z, tau: teacher_velocity(teacher, z, tau, text),
                                   lambda z, tau: teacher_velocity(teacher, z, tau, uncond.expand(len(z), -1, -1)),
                                   lambda z, tau: teacher_velocity(critic, z, tau, text), 4.0, cfg.stage1.shift, g)
            dmd_loss(x0, grad).backward()
            for q in params:
                q.grad = None
            if i:
                times.append(time.perf_counter() - start)
                calls.append(n)
        rows.append((s, sum(times) / len(times), sum(calls) / len(calls)))
    print(f"\npreset {args.preset}, batch {args.batch}, {torch.get_num_threads()} threads")
    print(f"  {'s':>3}  {'s/iter':>8}  {'generator calls':>15}")
    for s, t, c in rows:
        print(f"  {s:>3}  {t:8.3f}  {c:15.2f}")


if __name__ == "__main__":
    main()
