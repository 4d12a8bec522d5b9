"""NFE sweep pieces: common random numbers, bootstrap CIs, the any-step check, consistency-style sampling, a tiny
sweep on the ci teacher (rows, CFG-counted teacher NFEs, reference row, baselines' statistics, plot), and the
training-time probe against it."""

import numpy as np
import torch

from anyflow.evaluation import SweepSpec, ToyPrompts, anystep_check, bootstrap_ci, consistency_sampler, \
    initial_noise, plot_sweep, probe_student, sample_consistency, step_convergence, student_sampler, teacher_sampler, \
    toy_sweep
from anyflow.flowmap import sample_flow_map
from anyflow.student import student_from_teacher
from anyflow.toybuild import toy_world_of
from anyflow.wan import load_teacher


def test_noise_is_common_across_set_sizes():
    a, b = initial_noise(3, (2, 4), seed=5), initial_noise(5, (2, 4), seed=5)
    assert torch.equal(a, b[:3]) and not torch.equal(a[0], a[1])


def test_bootstrap_ci_brackets_the_mean():
    x = np.random.default_rng(0).random(200)
    se, lo, hi = bootstrap_ci(x, 500, seed=0)
    assert lo < x.mean() < hi and 0 < se < 0.05


def test_anystep_check_flags_a_real_drop_only():
    rng = np.random.default_rng(0)
    base = rng.random(300)
    rising = [base, base + 0.02, base + 0.04]
    assert anystep_check([4, 8, 16], rising, 300, 0)["ok"]
    noisy_flat = [base, base + rng.normal(0, 0.01, 300), base + rng.normal(0, 0.01, 300)]
    assert anystep_check([4, 8, 16], noisy_flat, 300, 0)["ok"]          # flat within noise is not a fall
    falling = [base, base - 0.05, base - 0.1]
    out = anystep_check([4, 8, 16], falling, 300, 0)
    assert not out["ok"] and out["spearman"] < 0 and out["pairs"][0]["delta"] < 0


def test_span_is_the_protocols_four_to_last_change_and_weaker_than_the_pairwise_check():
    rng = np.random.default_rng(1)
    base = rng.random(400)
    # rises to 8, then dips: every step counts in the pairwise check, the span only compares 4 with 16
    peaked = [base - 0.3, base, base + 0.06, base + 0.03 + rng.normal(0, 0.02, 400)]
    out = anystep_check([2, 4, 8, 16], peaked, 400, 0)
    assert not out["ok"] and out["pairs"][-1]["delta_hi"] < 0
    span = out["span"]
    assert (span["from"], span["to"]) == (4, 16) and span["ok"]
    assert 0 < span["ci_lo"] < span["delta"] < span["ci_hi"]
    assert abs(span["delta"] - (peaked[3] - peaked[1]).mean()) < 1e-12
    assert abs(out["spearman_span"] - 0.5) < 1e-9 and abs(out["spearman"] - 0.8) < 1e-9   # the span's ρ skips 2 NFE
    down = anystep_check([4, 8, 16], [base, base - 0.01, base - 0.02], 400, 0)
    assert not down["span"]["ok"] and down["span"]["ci_hi"] < 0 and abs(down["spearman_span"] + 1) < 1e-9
    assert "span" not in anystep_check([1, 2, 4], [base, base, base], 50, 0)       # one NFE >= 4: no span


def test_step_convergence_is_relative_and_zero_for_equal_samples():
    x = torch.randn(5, 3, 4)
    assert step_convergence(x, x) == 0.0
    assert abs(step_convergence(x + 0.1 * x, x) - 0.1) < 1e-6            # ‖0.1·x‖ / ‖x‖ per sample


def gaussian_flow_map(mu: float, s: float):
    """The exact flow map of data N(mu, s²) per element on the path z_t = (1 − t)x + tε: the ODE keeps each point's
    standardised position, z_r = (1 − r)mu + a_r (z_t − (1 − t)mu) / a_t with a_t² = (1 − t)²s² + t²."""
    def a(t):
        return ((1 - t) ** 2 * s ** 2 + t ** 2).sqrt()

    def u(z, t, r):
        t, r = (x.double().view(-1, *[1] * (z.dim() - 1)) for x in (t, r))
        z_r = (1 - r) * mu + a(r) * (z.double() - (1 - t) * mu) / a(t)
        return ((z.double() - z_r) / (t - r)).to(z.dtype)
    return u


def test_consistency_sampling_keeps_the_data_law_with_an_exact_flow_map():
    """With an exact map every x̂₀ has the data's law and each re-noise is fresh, so consistency sampling draws
    N(mu, s²) at any N, but not the flow-map sampler's sample: it re-noises where the flow map follows the ODE."""
    mu, s = 0.5, 0.3
    u = gaussian_flow_map(mu, s)
    noise = initial_noise(2000, (2, 1, 1, 1), seed=0)
    flow = sample_flow_map(u, noise, 4, shift=3.0)
    assert torch.equal(sample_consistency(u, noise, 1, 3.0, seed=7), sample_flow_map(u, noise, 1, 3.0))
    for n in (2, 4, 8):
        x = sample_consistency(u, noise, n, 3.0, seed=7)
        assert abs(x.mean().item() - mu) < 0.02 and abs(x.std().item() / s - 1) < 0.05, n
        assert (x - flow).abs().mean() > 0.1 * s                          # fresh noise, not the ODE's sample
    assert abs(flow.mean().item() - mu) < 0.02 and abs(flow.std().item() / s - 1) < 0.05


def test_consistency_renoising_is_reproducible_per_sample_and_seeded():
    u = gaussian_flow_map(0.0, 1.0)
    noise = initial_noise(6, (2, 1, 2, 2), seed=3)
    whole = sample_consistency(u, noise, 4, 3.0, seed=1)
    assert torch.equal(whole, sample_consistency(u, noise, 4, 3.0, seed=1))                  # a rerun repeats it
    assert torch.equal(whole[2:5], sample_consistency(u, noise[2:5], 4, 3.0, seed=1))        # batching does not matter
    assert not torch.equal(whole, sample_consistency(u, noise, 4, 3.0, seed=2))              # the seed does


def test_tiny_sweep_on_the_ci_teacher(ci_teacher, tmp_path):
    teacher = load_teacher(ci_teacher.path)
    spec = SweepSpec(nfe_list=(1, 2, 4), num_prompts=4, reference_steps=4, bootstrap_samples=50, shift=3.0)
    student = student_from_teacher(teacher.transformer).eval()
    samplers = {"student": student_sampler(student, spec.shift),
                "teacher_euler": teacher_sampler(teacher, teacher.uncond_embedding(), 4.0, spec.shift),
                "consistency": consistency_sampler(student, spec.shift, spec.seed)}
    result = toy_sweep(samplers, teacher, spec, toy_world_of(ci_teacher.path))
    cells = {(r["model"], r["nfe"]) for r in result.rows}
    assert cells == {("reference", 8), ("student", 1), ("student", 2), ("student", 4),
                     ("teacher_euler", 2), ("teacher_euler", 4), ("consistency", 1), ("consistency", 2),
                     ("consistency", 4)}
    total = {(r["model"], r["nfe"]): r["total"] for r in result.rows}
    assert total[("consistency", 1)] == total[("student", 1)]           # one step: the same single jump
    assert total[("consistency", 4)] != total[("student", 4)]
    ref = next(r for r in result.rows if r["model"] == "reference")
    assert ref["latent_rel_error"] == 0
    assert all(0 <= r["total"] <= 1 and r["total_ci_lo"] <= r["total"] <= r["total_ci_hi"] for r in result.rows)
    assert all(r["seam_ratio"] > 0 for r in result.rows)     # the VAE's patch size reached ToyBench
    assert set(result.anystep) == {"ok", "pairs", "spearman", "baselines"}      # one NFE >= 4: no span
    base = result.anystep["baselines"]
    assert set(base) == {"teacher_euler", "consistency"}
    assert [(p["from"], p["to"]) for p in base["consistency"]["pairs"]] == [(1, 2), (2, 4)]
    assert [(p["from"], p["to"]) for p in base["teacher_euler"]["pairs"]] == [(2, 4)]
    conv = {(r["model"], r["nfe"]): r["step_convergence"] for r in result.rows}
    assert conv[("consistency", 1)] > 0
    assert conv[("student", 1)] > 0 and conv[("student", 2)] > 0 and conv[("teacher_euler", 2)] > 0
    assert conv[("student", 4)] is None and conv[("reference", 8)] is None      # no 2N in the sweep
    assert result.videos[("student", 2)].shape == (4, 9, 32, 32, 3)
    plot_sweep(result.rows, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 10_000


def test_probe_scores_what_the_sweep_scores(ci_teacher):
    """The training-time probe is the sweep's student row on fewer NFEs: same prompts, noise and Total."""
    teacher = load_teacher(ci_teacher.path)
    world = toy_world_of(ci_teacher.path)
    spec = SweepSpec(nfe_list=(1, 2), num_prompts=4, reference_steps=1, bootstrap_samples=0, shift=3.0)
    student = student_from_teacher(teacher.transformer).eval()
    rows = toy_sweep({"student": student_sampler(student, spec.shift)}, teacher, spec, world).rows
    probe = probe_student(student, teacher, ToyPrompts.build(teacher, world, 4, spec.seed), (1, 2), spec.shift)
    assert probe == {r["nfe"]: r["total"] for r in rows if r["model"] == "student"}
