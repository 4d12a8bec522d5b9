"""The procedural world: deterministic, in-frame trajectories, two domains."""

import numpy as np
import pytest

from anyflow import toyworld
from anyflow.toyworld import WorldSpec


def test_seeded_and_deterministic():
    a = toyworld.render_batch(toyworld.sample_conditions(8, 3))
    b = toyworld.render_batch(toyworld.sample_conditions(8, 3))
    c = toyworld.render_batch(toyworld.sample_conditions(8, 4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.shape == (8, 9, 32, 32, 3) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1


@pytest.mark.parametrize("domain", ["base", "downstream"])
def test_trajectories_stay_inside_the_frame(domain):
    spec = WorldSpec()
    half = spec.object_size / 2
    for cond in toyworld.sample_conditions(300, 0, domain):
        traj = toyworld.trajectory(cond, spec)
        assert (traj >= half - 1e-6).all() and (traj[:, 0] <= spec.height - half + 1e-6).all()
        assert (traj[:, 1] <= spec.width - half + 1e-6).all()


def test_base_motion_is_constant_velocity_in_the_prompted_direction():
    spec = WorldSpec()
    for cond in toyworld.sample_conditions(50, 1):
        step = np.diff(toyworld.trajectory(cond, spec), axis=0)
        np.testing.assert_allclose(step, np.tile(np.array(toyworld.DIRECTIONS[cond.direction]) * spec.speed, (8, 1)))


def test_downstream_bounces():
    """Some downstream videos reverse direction (never in the base domain): the motion the teacher never saw."""
    reversals = 0
    for cond in toyworld.sample_conditions(100, 2, "downstream"):
        axis = 0 if cond.direction in ("up", "down") else 1
        steps = np.diff(toyworld.trajectory(cond)[:, axis])
        reversals += bool((steps > 0).any() and (steps < 0).any())
    assert reversals > 50


def test_prompts_and_domains():
    cond = toyworld.Condition("circle", "red", "black", "left")
    assert cond.prompt == "a red circle moving left on a black background"
    assert {c.motion for c in toyworld.sample_conditions(20, 0, "downstream")} == {"bouncing"}
    assert len(toyworld.attribute_grid()) == 3 * 6 * 3 * 4


def test_spec_rejects_a_world_that_does_not_fit():
    with pytest.raises(ValueError, match="does not fit"):
        WorldSpec(height=16, width=16)
