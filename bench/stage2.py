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

import conf
from anyflow.lora import attach_lora
from anyflow.stage2 import backward_simulation, dmd_gradient, dmd_loss
from anyflow.student import average_velocity, student_from_teacher
from anyflow.teacher import build_transformer, teacher_velocity


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="toy")
    p.add_argument("--iters", type=int, default=6)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(2)
    cfg = conf.load(args.preset)
    toy = cfg.teacher.toy
    teacher = build_transformer(toy.arch, toy.vae_z_dim, toy.text.d_model, seed=0).eval().requires_grad_(False)
    student = student_from_teacher(teacher, cfg.stage1.gate_value)
    params = attach_lora(student, cfg.stage1.lora)
    critic = copy.deepcopy(teacher)
    w = toy.world
    shape = (args.batch, toy.vae_z_dim, (w.num_frames - 1) // 2 + 1, w.height // 4, w.width // 4)
    text = torch.zeros(args.batch, 512, toy.text.d_model)
    text[:, :12] = torch.randn(args.batch, 12, toy.text.d_model)
    uncond = torch.zeros(1, 512, toy.text.d_model)
    uncond[:, 0] = 1
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
