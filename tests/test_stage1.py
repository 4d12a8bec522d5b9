"""Stage-1 loss properties: flow matching at r = t, the central difference against an autograd JVP,
the adaptive reweighting, and guidance fusion at g = 1."""

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from anyflow.schedule import beta_time_weight, sample_time_pairs
from anyflow.stage1 import FlowMapLossSpec, adaptive_weights, flowmap_loss
from anyflow.student import average_velocity, student_from_teacher
from tinymodels import inputs, tiny_wan


def student(dtype=torch.float32):
    return student_from_teacher(tiny_wan()).to(dtype).eval()


def test_r_equals_t_is_flow_matching():
    model = student()
    x0, text, _ = inputs()
    uncond = torch.zeros(1, *text.shape[1:])
    uncond[:, 0] = 1.0
    spec = FlowMapLossSpec(diffusion_ratio=1.0, consistency_ratio=0.0, fused_guidance_scale=1.0, text_dropout=0.0)
    loss, parts = flowmap_loss(model, x0, text, uncond, spec, torch.Generator().manual_seed(0))
    # replay the same draws: (t, r), then ε, then the dropout coin
    g = torch.Generator().manual_seed(0)
    pairs = sample_time_pairs(2, 1.0, 0.0, spec.shift, g)
    eps = torch.randn(x0.shape, generator=g)
    t = pairs.t
    z = (1 - t.view(-1, 1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1, 1) * eps
    with torch.no_grad():
        fm = ((average_velocity(model, z, t, t, text) - (eps - x0)) ** 2).flatten(1).mean(1)
    assert torch.equal(pairs.r, pairs.t)
    assert torch.allclose(loss, (beta_time_weight(t, spec.shift) * fm).mean(), rtol=1e-5)
    assert abs(parts["loss_diffusion"] - fm.mean().item()) < 1e-5


def test_central_difference_matches_the_autograd_jvp():
    model = student(torch.float64)
    x0, text, _ = inputs()
    x0, text = x0.double(), text.double()
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t, r = torch.tensor([0.7, 0.55], dtype=torch.float64), torch.tensor([0.2, 0.0], dtype=torch.float64)
    z = (1 - t.view(-1, 1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1, 1) * eps
    v = eps - x0
    f = lambda zz, tt: average_velocity(model, zz, tt, r, text)
    with torch.no_grad():
        with sdpa_kernel(SDPBackend.MATH):                                # the math kernel has forward AD
            _, jvp = torch.func.jvp(f, (z, t), (v, torch.ones_like(t)))  # d/dt u along (v, 1, 0)
        err = {}
        for delta in (3e-4, 1e-4):
            fd = (f(z + delta * v, t + delta) - f(z - delta * v, t - delta)) / (2 * delta)
            err[delta] = ((fd - jvp).abs().max() / jvp.abs().max()).item()
    assert jvp.abs().max() > 1e-3                                       # a non-trivial derivative
    assert err[1e-4] < 1e-2                                             # matches the JVP ...
    assert 6 < err[3e-4] / err[1e-4] < 12                               # ... with the central difference's O(δ²) error


def test_adaptive_weights_give_non_diffusion_samples_the_diffusion_mean():
    losses = torch.tensor([0.2, 0.4, 5.0, 0.01])
    is_diff = torch.tensor([True, True, False, False])
    s = adaptive_weights(losses, is_diff, c=1e-5)
    assert torch.equal(s[:2], torch.ones(2))
    assert torch.allclose(losses[2:] * s[2:], torch.full((2,), 0.3), rtol=1e-3)      # D = mean(0.2, 0.4)
    gathered = adaptive_weights(losses, is_diff, 1e-5, gather=lambda x: torch.cat([x, x.new_tensor([1.0, 1.0])
                                if x.dtype != torch.bool else x.new_tensor([True, True])]))
    assert torch.allclose(losses[2:] * gathered[2:], torch.full((2,), 0.65), rtol=1e-3)  # D over all processes
    loss = torch.tensor([0.5, 2.0], requires_grad=True)
    s = adaptive_weights(loss, torch.tensor([True, False]), 1e-5)
    assert not s.requires_grad                                                         # stop-grad constant


def test_fusion_at_g_1_is_the_conditional_prediction_and_gradients_flow_to_lora_only():
    from anyflow.lora import LoraSpec, attach_lora

    model = student()
    params = attach_lora(model, LoraSpec(rank=2, alpha=2.0))
    x0, text, _ = inputs()
    uncond = torch.zeros(1, *text.shape[1:])
    uncond[:, 0] = 1.0
    base = dict(text_dropout=0.0, diffusion_ratio=0.5, consistency_ratio=0.0)
    l1, _ = flowmap_loss(model, x0, text, uncond, FlowMapLossSpec(fused_guidance_scale=1.0, **base),
                         torch.Generator().manual_seed(1))
    l3, _ = flowmap_loss(model, x0, text, uncond, FlowMapLossSpec(fused_guidance_scale=3.0, **base),
                         torch.Generator().manual_seed(1))
    assert torch.isfinite(l1) and not torch.allclose(l1, l3)
    l3.backward()
    assert all(p.grad is not None for p in params if ".lora_B." in [n for n, q in model.named_parameters() if q is p][0])
    assert all(p.grad is None for n, p in model.named_parameters() if ".lora_" not in n)


def test_fused_guidance_reuses_the_conditional_forward_for_text_dropped_rows():
    model = student()
    x0, text, _ = inputs()
    uncond = torch.zeros(1, *text.shape[1:])
    uncond[:, 0] = 1.0
    spec = FlowMapLossSpec(diffusion_ratio=1.0, consistency_ratio=0.0, fused_guidance_scale=3.0, text_dropout=0.5)
    for seed in range(50):   # a seed whose dropout coin drops exactly one of the two rows
        g = torch.Generator().manual_seed(seed)
        pairs = sample_time_pairs(2, 1.0, 0.0, spec.shift, g)
        eps = torch.randn(x0.shape, generator=g)
        drop = torch.rand(2, generator=g) < spec.text_dropout
        if drop.sum() == 1:
            break
    loss, _ = flowmap_loss(model, x0, text, uncond, spec, torch.Generator().manual_seed(seed))
    t = pairs.t
    z = (1 - t.view(-1, 1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1, 1) * eps
    with torch.no_grad():   # the recipe's form: a separate unconditional forward for every row
        u_c = average_velocity(model, z, t, t, torch.where(drop.view(-1, 1, 1), uncond, text))
        u_0 = average_velocity(model, z, t, t, uncond.expand(2, -1, -1))
        per = (((u_c + 2 * u_0) / 3 - (eps - x0)) ** 2).flatten(1).mean(1)
    assert torch.allclose(loss, (beta_time_weight(t, spec.shift) * per).mean(), rtol=1e-5)


def test_gradient_checkpointing_changes_memory_not_the_result_or_the_cache_key():
    import conf
    from anyflow.lora import LoraSpec, attach_lora
    from tasks.artifacts import StageHandle
    from tasks.stage1 import stage1_key
    from tasks.stage2 import stage2_key
    from anyflow.gradckpt import enable_gradient_checkpointing

    x0, text, _ = inputs()
    uncond = torch.zeros(1, *text.shape[1:])
    spec = FlowMapLossSpec(diffusion_ratio=0.5, consistency_ratio=0.0, text_dropout=0.0)
    grads = []
    for ckpt in (False, True):
        model = student()
        params = attach_lora(model, LoraSpec(rank=2, alpha=2.0))
        for p in params:
            torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(7))
        if ckpt:
            enable_gradient_checkpointing(model)
        loss, _ = flowmap_loss(model, x0, text, uncond, spec, torch.Generator().manual_seed(2))
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in params]))
    assert grads[0].abs().max() > 0 and torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-5)

    h = StageHandle(stage="x", key="k", path="/x", summary={"lora": "lora.safetensors"})
    on = conf.load("ci", ["stage1.gradient_checkpointing=true", "stage2.gradient_checkpointing=true"])
    off = conf.load("ci")
    assert stage1_key(on, h, h) == stage1_key(off, h, h)
    assert stage2_key(on, h, h, h) == stage2_key(off, h, h, h)
    assert stage1_key(conf.load("ci", ["stage1.lr=1e-3"]), h, h) != stage1_key(off, h, h)


def test_teacher_target_at_r_equals_t_regresses_the_teachers_guided_velocity():
    from anyflow.stage1 import guided_teacher_target
    from anyflow.teacher import teacher_velocity

    teacher, model = tiny_wan(), student()
    x0, text, _ = inputs()
    uncond = torch.zeros(1, *text.shape[1:])
    uncond[:, 0] = 1.0
    target = guided_teacher_target(teacher, uncond, 1.5)
    spec = FlowMapLossSpec(diffusion_ratio=1.0, consistency_ratio=0.0, fused_guidance_scale=1.0, text_dropout=0.0)
    loss, _ = flowmap_loss(model, x0, text, uncond, spec, torch.Generator().manual_seed(0), target_velocity=target)
    g = torch.Generator().manual_seed(0)
    t = sample_time_pairs(2, 1.0, 0.0, spec.shift, g).t
    eps = torch.randn(x0.shape, generator=g)
    z = (1 - t.view(-1, 1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1, 1) * eps
    with torch.no_grad():
        v_c = teacher_velocity(teacher, z, t, text)
        v_u = teacher_velocity(teacher, z, t, uncond.expand(2, -1, -1))
        v_t = v_u + 1.5 * (v_c - v_u)
        per = ((average_velocity(model, z, t, t, text) - v_t) ** 2).flatten(1).mean(1)
        # text-dropped rows get the unguided velocity, kept rows the guided one
        mixed = target(z, t, torch.where(torch.tensor([True, False]).view(-1, 1, 1), uncond, text),
                       torch.tensor([True, False]))
    assert torch.allclose(loss, (beta_time_weight(t, spec.shift) * per).mean(), rtol=1e-5)
    assert torch.allclose(mixed[0], v_u[0], atol=1e-6) and torch.allclose(mixed[1], v_t[1], atol=1e-6)
    assert not torch.allclose(v_t, eps - x0, atol=1e-2)       # not the data target in disguise


def test_teacher_target_makes_the_exact_flow_map_of_a_linear_ode_a_fixed_point(monkeypatch):
    """dz/dσ = λz has the flow map z_r = z_t·e^{λ(r − t)}, i.e. u = z_t(1 − e^{−λ(t − r)})/(t − r). With that ODE
    as the teacher, the exact u gives zero loss at every (t, r) up to the central difference's O(δ²); with the
    data target ε − x₀ it does not (that loss is the conditional-velocity variance)."""
    import anyflow.stage1 as s1

    lam = 0.7

    def exact_u(_model, z, t, r, _text):
        d = (t - r).double().view(-1, 1, 1, 1, 1)
        ratio = torch.where(d > 0, -torch.expm1(-lam * d) / d.clamp_min(1e-12), torch.full_like(d, lam))
        return (z.double() * ratio).float()

    monkeypatch.setattr(s1, "average_velocity", exact_u)
    x0, text, _ = inputs(batch=8)
    uncond = torch.zeros(1, *text.shape[1:])
    spec = FlowMapLossSpec(diffusion_ratio=0.25, consistency_ratio=0.25, fused_guidance_scale=1.0, text_dropout=0.0)
    linear = lambda z, t, text, dropped: lam * z
    with torch.no_grad():
        _, teacher_parts = flowmap_loss(None, x0, text, uncond, spec, torch.Generator().manual_seed(1),
                                        target_velocity=linear)
        _, data_parts = flowmap_loss(None, x0, text, uncond, spec, torch.Generator().manual_seed(1))
    for part in ("loss_diffusion", "loss_consistency", "loss_general"):
        assert teacher_parts[part] < 1e-8, (part, teacher_parts[part])
        assert data_parts[part] > 0.1, (part, data_parts[part])


def test_velocity_target_keeps_default_keys_and_keys_the_teacher_target():
    import conf
    from tasks.artifacts import StageHandle
    from tasks.finetune import finetune_params
    from tasks.stage1 import stage1_key, stage1_params
    from tasks.stage2 import stage2_key, stage2_params

    h = StageHandle(stage="x", key="k", path="/x", summary={"lora": "lora.safetensors"})
    data, teacher = conf.load("ci"), conf.load("ci", ["stage1.velocity_target=teacher"])
    assert "velocity_target" not in stage1_params(data)             # keys made before the field still match
    assert "velocity_target" not in stage2_params(data)["stage1_loss"]
    assert stage1_key(teacher, h, h) != stage1_key(data, h, h)
    assert stage2_key(teacher, h, h, h) != stage2_key(data, h, h, h)
    assert stage2_params(teacher)["stage1_loss"]["target_guidance_scale"] == teacher.synthesis.guidance_scale
    assert finetune_params(teacher) == finetune_params(data)        # fine-tuning always learns from its data
