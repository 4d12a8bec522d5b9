"""Flow-map step and samplers: identity at r = t, composition, exactness on a Gaussian (linear) ODE."""

import math

import torch

from anyflow.flowmap import (classifier_free_guidance, flowmap_step, jump_errors, sample_euler, sample_flow_map,
                             x0_estimate)


class GaussianFlow:
    """Data x₀ ~ N(μ, s²I) under z_σ = (1 − σ)x₀ + σε: the probability-flow ODE is linear in z and its flow map
    Φ(z, t, r) = m_r + (std_r / std_t)(z − m_t) is known in closed form (m_σ = (1 − σ)μ, std_σ² = (1 − σ)²s² + σ²)."""

    def __init__(self, mu=0.7, s=0.3):
        self.mu, self.s = mu, s

    def m(self, sig):
        return (1 - sig) * self.mu

    def std(self, sig):
        return torch.sqrt((1 - sig) ** 2 * self.s ** 2 + sig ** 2)

    def _b(self, x, like):
        return x.view(-1, *([1] * (like.ndim - 1)))

    def flow_map(self, z, t, r):
        t, r = self._b(t, z), self._b(r, z)
        return self.m(r) + self.std(r) / self.std(t) * (z - self.m(t))

    def velocity(self, z, t):
        t = self._b(t, z)
        dstd = ((1 - t) * -(self.s ** 2) + t) / self.std(t)
        return -self.mu + dstd / self.std(t) * (z - self.m(t))

    def average_velocity(self, z, t, r):
        """u = (z − Φ(z, t, r)) / (t − r), and v at r = t."""
        diag = (t == r)
        safe_r = torch.where(diag, t - 1e-3, r)
        u = (z - self.flow_map(z, t, safe_r)) / self._b(t - safe_r, z)
        return torch.where(self._b(diag, z), self.velocity(z, t), u)


def noise(seed=0, shape=(3, 2, 2, 2, 2)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_step_is_identity_at_r_equals_t():
    z, u = noise(0), noise(1)
    t = torch.tensor([0.3, 0.7, 1.0], dtype=torch.float64)
    assert torch.equal(flowmap_step(z, u, t, t), z)


def test_step_formula_and_x0_estimate():
    z, u = noise(0), noise(1)
    t, r = torch.full((3,), 0.8, dtype=torch.float64), torch.full((3,), 0.3, dtype=torch.float64)
    assert torch.allclose(flowmap_step(z, u, t, r), z - 0.5 * u)
    assert torch.allclose(x0_estimate(z, u, t), z - 0.8 * u)


def test_exact_flow_map_composes():
    g, z = GaussianFlow(), noise(2)
    t, s, r = (torch.full((3,), x, dtype=torch.float64) for x in (0.9, 0.5, 0.1))
    assert torch.allclose(g.flow_map(g.flow_map(z, t, s), s, r), g.flow_map(z, t, r), atol=1e-12)
    # one flow-map step with the exact u is the exact map
    assert torch.allclose(flowmap_step(z, g.average_velocity(z, t, r), t, r), g.flow_map(z, t, r), atol=1e-12)


def test_one_step_equals_n_steps_with_the_exact_flow_map():
    g, z1 = GaussianFlow(), noise(3)
    exact = g.flow_map(z1, torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    for n in (1, 2, 4, 16):
        for shift in (1.0, 3.0):
            out = sample_flow_map(g.average_velocity, z1, n, shift)
            assert torch.allclose(out, exact, atol=1e-10), (n, shift)


def test_euler_converges_to_the_flow_map_at_first_order():
    g, z1 = GaussianFlow(), noise(4)
    exact = g.flow_map(z1, torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    errs = [(sample_euler(g.velocity, z1, n, 1.0) - exact).abs().max().item() for n in (8, 16, 32, 64)]
    assert all(a > b for a, b in zip(errs, errs[1:]))
    assert 1.6 < errs[-2] / errs[-1] < 2.4      # halving the step halves the error
    # at r = t the exact average velocity is the velocity: the flow map reduces to flow matching
    t = torch.full((3,), 0.6, dtype=torch.float64)
    assert torch.allclose(g.average_velocity(z1, t, t), g.velocity(z1, t))


def test_cfg_convention():
    c, u = noise(5), noise(6)
    assert torch.allclose(classifier_free_guidance(c, u, 1.0), c, atol=1e-15)
    assert torch.allclose(classifier_free_guidance(c, u, 4.0), c + 3 * (c - u))
    assert math.isclose(classifier_free_guidance(torch.tensor(2.0), torch.tensor(1.0), 0.0).item(), 1.0)


def test_jump_errors_vanish_for_the_exact_flow_map_and_not_for_euler():
    g, z1 = GaussianFlow(), noise(7)
    rows = jump_errors(g.average_velocity, g.velocity, z1, 4, 3.0, substeps=512)
    assert [round(r["t"], 6) for r in rows][0] == 1.0 and rows[-1]["r"] == 0.0 and len(rows) == 4
    for r in rows:
        assert r["flow_map"] < 1e-4 * r["euler"], r                       # exact up to the fine solve's O(1/512)
        assert abs(r["own_velocity_euler"] - r["euler"]) < 1e-12         # u(z, t, t) = v: the same Euler step
        assert r["euler"] > 1e-6
    # a "flow map" that is only Euler (u := v for every r) is as wrong as Euler
    euler_only = jump_errors(lambda z, t, r: g.velocity(z, t), g.velocity, z1, 4, 3.0, substeps=512)
    assert all(abs(r["flow_map"] - r["euler"]) < 1e-12 for r in euler_only)
