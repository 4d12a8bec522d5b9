"""NFE sweep pieces: common random numbers, bootstrap CIs, the any-step check, and a tiny sweep on the ci
teacher (rows, CFG-counted teacher NFEs, reference row, plot)."""

import numpy as np
import torch

from anyflow.evaluation import SweepSpec, anystep_check, bootstrap_ci, initial_noise, plot_sweep, student_sampler, \
    teacher_sampler, toy_sweep
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
    assert set(result.anystep) == {"ok", "pairs", "spearman"}
    assert result.videos[("student", 2)].shape == (4, 9, 32, 32, 3)
    plot_sweep(result.rows, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 10_000
