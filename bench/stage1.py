"""Stage-1 step cost against plain flow matching on the same model, batch and LoRA (recipe §6; paper 1.73x).

    .venv/bin/python bench/stage1.py [--preset toy] [--steps 10] [--batch 16]

The student is built from a randomly initialised transformer of the preset's teacher size (cost does not
depend on the weights). Rows, each one optimizer step (forward + backward) on the same batch:
  flow matching   one forward with grad at r = t;
  research form   the research code's forwards: the uncond and both finite-difference forwards for every
                  row, each its own call (recipe §6.4: "the 2 extra forwards are still computed");
  ours            `anyflow.stage1.flowmap_loss`: one batched no-grad call, finite differences only for
                  r != t rows, no uncond forward for text-dropped rows.
at g = 1 and the recipe's g = 3, without and with gradient checkpointing (the reference trains with it on
every block; it adds one forward to every method's backward, so it lowers the ratios). Ratios are to flow
matching in the same setting, interleaved measurements so drift hits every row alike."""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from anyflow.schedule import beta_time_weight
from anyflow.stage1 import flowmap_loss
from anyflow.student import average_velocity
from anyflow.gradckpt import enable_gradient_checkpointing
from tasks.stage1 import loss_spec
from toymodels import toy_models


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="toy")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args()
    m = toy_models(args.preset, args.batch)
    student, text, uncond, b = m.student, m.text, m.uncond, args.batch
    opt = torch.optim.AdamW(m.params, lr=1e-5)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(m.latent_shape, generator=g)
    base = loss_spec(m.cfg)
    bc = lambda x: x.view(-1, 1, 1, 1, 1)

    def fm(spec):
        t = torch.rand(b, generator=g)
        eps = torch.randn(x0.shape, generator=g)
        z = (1 - bc(t)) * x0 + bc(t) * eps
        per = ((average_velocity(student, z, t, t, text) - (eps - x0)) ** 2).flatten(1).mean(1)
        return (beta_time_weight(t, spec.shift) * per).mean()

    def research(spec):       # cost model of the research code: same forwards, no skipping or batching
        t = torch.rand(b, generator=g)
        r = t * torch.rand(b, generator=g)
        eps = torch.randn(x0.shape, generator=g)
        z, v, d = (1 - bc(t)) * x0 + bc(t) * eps, eps - x0, spec.fd_delta
        with torch.no_grad():
            u0 = average_velocity(student, z, t, r, uncond.expand(b, -1, -1)) if spec.fused_guidance_scale != 1 else 0
            dudt = (average_velocity(student, z + d * v, t + d, r, text)
                    - average_velocity(student, z - d * v, t - d, r, text)) / (2 * d)
        u = average_velocity(student, z, t, r, text)
        return (((u + u0) - (v - bc(t - r) * dudt)) ** 2).mean()

    def ours(spec):
        return flowmap_loss(student, x0, text, uncond, spec, g)[0]

    def once(fn, spec):
        start = time.perf_counter()
        fn(spec).backward()
        opt.step()
        opt.zero_grad()
        return time.perf_counter() - start

    methods = {"flow matching": fm, "research form": research, "ours": ours}
    rows = []
    for ckpt in (False, True):
        if ckpt:
            enable_gradient_checkpointing(student)
        for gs in (1.0, 3.0):
            spec = dataclasses.replace(base, fused_guidance_scale=gs)
            times = {k: [] for k in methods}
            for i in range(args.steps + 2):
                for k, fn in methods.items():
                    dt = once(fn, spec)
                    if i >= 2:
                        times[k].append(dt)
            mean = {k: sum(v) / len(v) for k, v in times.items()}
            rows.append((ckpt, gs, mean))
        student.disable_gradient_checkpointing()

    print(f"\npreset {args.preset}, batch {b}, {torch.get_num_threads()} threads, LoRA rank {m.cfg.stage1.lora.rank}, "
          f"{args.steps} timed steps each; ms per iteration (ratio to flow matching)")
    print(f"| grad ckpt | g | flow matching | research form | ours |")
    print(f"|---|---|---|---|---|")
    for ckpt, gs, mean in rows:
        fmt = lambda k: f"{mean[k] * 1000:.1f}" + ("" if k == "flow matching" else f" ({mean[k] / mean['flow matching']:.2f})")
        print(f"| {'on' if ckpt else 'off'} | {gs:g} | {fmt('flow matching')} | {fmt('research form')} | {fmt('ours')} |")
    print("paper: 1.73 (research form, g = 3, checkpointing on); target for ours: <= 1.6")


if __name__ == "__main__":
    main()
