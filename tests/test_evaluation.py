"""NFE sweep pieces: common random numbers, bootstrap CIs, the any-step check, a tiny sweep on the ci
teacher (rows, CFG-counted teacher NFEs, reference row, plot), and the training-time probe against it."""

import numpy as np
import torch

from anyflow.evaluation import SweepSpec, ToyPrompts, anystep_check, bootstrap_ci, initial_noise, plot_sweep, \
    probe_student, step_convergence, student_sampler, teacher_sampler, toy_sweep
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


def test_tiny_sweep_on_the_ci_teacher(ci_teacher, tmp_path):
    teacher = load_teacher(ci_teacher.path)
    spec = SweepSpec(nfe_list=(1, 2, 4), num_prompts=4, reference_steps=4, bootstrap_samples=50, shift=3.0)
    student = student_from_teacher(teacher.transformer).eval()
    samplers = {"student": student_sampler(student, spec.shift),
                "teacher_euler": teacher_sampler(teacher, teacher.uncond_embedding(), 4.0, spec.shift)}
    result = toy_sweep(samplers, teacher, spec, toy_world_of(ci_teacher.path))
    cells = {(r["model"], r["nfe"]) for r in result.rows}
    assert cells == {("reference", 8), ("student", 1), ("student", 2), ("student", 4),
                     ("teacher_euler", 2), ("teacher_euler", 4)}
    ref = next(r for r in result.rows if r["model"] == "reference")
    assert ref["latent_rel_error"] == 0
    assert all(0 <= r["total"] <= 1 and r["total_ci_lo"] <= r["total"] <= r["total_ci_hi"] for r in result.rows)
    assert all(r["seam_ratio"] > 0 for r in result.rows)     # the VAE's patch size reached ToyBench
    assert set(result.anystep) == {"ok", "pairs", "spearman"}             # one NFE >= 4: no span
    conv = {(r["model"], r["nfe"]): r["step_convergence"] for r in result.rows}
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
