"""Time shift, N-step grid, Beta(2, 1.5) time weight and the (t, r) sampler (recipe §1.1, §2, §6.2)."""

import pytest
import torch

from anyflow.schedule import beta_time_weight, sample_time_pairs, shift_sigma, split_counts, time_grid


def test_shift_keeps_endpoints_and_order():
    s = torch.linspace(0, 1, 101, dtype=torch.float64)
    for shift in (0.5, 1.0, 3.0, 5.0):
        out = shift_sigma(s, shift)
        assert out[0] == 0 and out[-1] == 1 and (out.diff() > 0).all()
    assert (shift_sigma(s[1:-1], 3.0) > s[1:-1]).all()   # s > 1 moves mass to high noise
    assert torch.equal(shift_sigma(s, 1.0), s)


def test_grid_endpoints_and_reference_values():
    for n in (1, 2, 4, 7, 32):
        g = time_grid(n, 3.0)
        assert len(g) == n + 1 and g[0] == 1 and g[-1] == 0 and (g.diff() < 0).all()
    # recipe §2, shift 5: N=4 → [1000, 937.5, 833.3, 625, 0]
    assert torch.allclose(time_grid(4, 5.0) * 1000, torch.tensor([1000, 937.5, 833.333, 625, 0], dtype=torch.float64),
                          atol=1e-3)
    with pytest.raises(ValueError):
        time_grid(0, 3.0)


def test_beta_weight_matches_the_reference_table():
    # recipe §2 (shift 5 grid normalisation): w(0.5)=1.29, w(2/3)=1.41 (peak), w(0.9)=1.04, w(0.05)=0.17
    w = beta_time_weight(torch.tensor([0.05, 0.5, 2 / 3, 0.9, 0.99]), 5.0)
    assert torch.allclose(w, torch.tensor([0.17, 1.29, 1.41, 1.04, 0.36]), atol=0.01)
    assert abs(beta_time_weight(time_grid(1000, 5.0), 5.0).mean().item() - 1) < 1e-9
    assert beta_time_weight(torch.tensor([0.0, 1.0]), 5.0).abs().max() == 0


@pytest.mark.parametrize("batch", [1, 2, 3, 4, 16, 33])
def test_split_always_has_a_diffusion_sample(batch):
    n_diff, n_cons, n_gen = split_counts(batch, 0.5, 0.25)
    assert n_diff >= 1 and n_cons >= 0 and n_gen >= 0 and n_diff + n_cons + n_gen == batch


def test_split_rejects_bad_ratios():
    with pytest.raises(ValueError, match="split"):
        split_counts(8, 0.8, 0.3)


def test_time_pairs_categories():
    p = sample_time_pairs(16, 0.5, 0.25, 3.0, torch.Generator().manual_seed(0))
    assert p.is_diffusion.sum() == 8 and (p.t >= p.r).all() and (p.t <= 1).all() and (p.r >= 0).all()
    assert torch.equal(p.t[p.is_diffusion], p.r[p.is_diffusion])
    assert (p.r[8:12] == 0).all() and (p.r[12:] > 0).all() and (p.r[12:] < p.t[12:]).all()
    one = sample_time_pairs(1, 0.5, 0.25, 3.0, torch.Generator().manual_seed(0))
    assert one.is_diffusion.all()   # the reference's round(0.5) = 0 would give none (recipe P3)


def test_time_pairs_are_uniform_pairs_before_the_shift():
    p = sample_time_pairs(40000, 0.0, 0.0, 1.0, torch.Generator().manual_seed(1))
    general = ~p.is_diffusion
    # max/min of two uniforms: E[t] = 2/3, E[r] = 1/3
    assert abs(p.t[general].mean() - 2 / 3) < 0.01 and abs(p.r[general].mean() - 1 / 3) < 0.01
