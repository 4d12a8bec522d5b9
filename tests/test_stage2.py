"""Stage-2 building blocks: backward simulation is exact for an exact flow map at every (s, k) with a cost
independent of s; the DMD gradient vanishes when the critic is the teacher (CFG 1); the critic learns."""

import torch

from anyflow.lora import LoraSpec, attach_lora
from anyflow.stage2 import backward_simulation, critic_loss, dmd_gradient, dmd_loss, draw_budget
from anyflow.teacher import teacher_velocity
from test_flowmap import GaussianFlow, noise
from tinymodels import inputs, tiny_wan


def test_exact_flow_map_lands_on_the_same_sample_for_every_s_and_k():
    g, z1 = GaussianFlow(), noise(7)
    exact = g.flow_map(z1, torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    u = lambda z, t, r: g.average_velocity(z, t.double(), r.double())
    for s in (1, 2, 4, 16, 50):
        for k in sorted({0, s // 2, s - 1}):
            x0, calls = backward_simulation(u, z1, s, k, shift=3.0)
            assert torch.allclose(x0, exact, atol=1e-6), (s, k)
            assert calls == (1 if s == 1 else 2 if k in (0, s - 1) else 3)      # never grows with s


def test_budget_draws_cover_the_list():
    gen = torch.Generator().manual_seed(0)
    draws = [draw_budget((2, 4, 8), gen) for _ in range(300)]
    assert {s for s, _ in draws} == {2, 4, 8} and all(0 <= k < s for s, k in draws)
    assert {k for s, k in draws if s == 8} == set(range(8))


def test_dmd_gradient_is_zero_when_the_critic_is_the_teacher():
    teacher = tiny_wan()
    x0, text, _ = inputs()
    v = lambda z, tau: teacher_velocity(teacher, z, tau, text)
    grad, stats = dmd_gradient(x0, v, v, v, real_guidance_scale=1.0, shift=3.0, generator=torch.Generator().manual_seed(0))
    assert grad.abs().max() == 0 and stats["dmd_grad_norm"] == 0
    # with CFG 4 the guided teacher differs from the critic: a non-zero, per-sample normalised direction
    uncond = torch.zeros_like(text)
    uncond[:, 0] = 1
    vu = lambda z, tau: teacher_velocity(teacher, z, tau, uncond)
    grad, _ = dmd_gradient(x0, v, vu, v, real_guidance_scale=4.0, shift=3.0, generator=torch.Generator().manual_seed(0))
    assert grad.abs().max() > 0
    x = x0.clone().requires_grad_(True)
    dmd_loss(x, grad).backward()
    assert torch.allclose(x.grad, (2 * grad / grad.numel()).to(x.grad.dtype), atol=1e-7)


def test_critic_loss_falls_on_a_fixed_generator():
    critic = tiny_wan().train()
    params = attach_lora(critic, LoraSpec(rank=4, alpha=4.0))
    opt = torch.optim.AdamW(params, lr=3e-3)
    _, text, _ = inputs()
    x0 = torch.linspace(-1, 1, 16).view(1, 16, 1, 1, 1).expand(2, 16, 3, 8, 8).contiguous()  # a fixed generator
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        loss = critic_loss(lambda z, tau: teacher_velocity(critic, z, tau, text), x0, 3.0, gen)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.92 * sum(losses[:10]) / 10      # above the noise floor of FM
