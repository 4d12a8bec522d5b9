"""Downstream fine-tuning pieces: each domain's DownstreamBench separates it from the base domain, mixed batches
resume exactly, the paired before/after interval, and the forgetting verdict."""

import dataclasses

import numpy as np
import torch

from anyflow import toyworld
from anyflow.downstream import before_after_summary, mixed_batches, paired_ci
from anyflow.toydomains import DOMAINS, bouncing_scores, get_domain, purple_conditions, render_in_colour
from anyflow.shards import ShardReader
from test_shards import write


def test_downstream_bench_scores_the_bouncing_law_not_the_base_motion():
    world = toyworld.WorldSpec()
    down = toyworld.sample_conditions(48, 3, "downstream", world)
    base = toyworld.sample_conditions(48, 3, "base", world)
    d = bouncing_scores(toyworld.render_batch(down, world), down, world)
    b = bouncing_scores(toyworld.render_batch(base, world), base, world)
    assert d["motion"].mean() > 0.9 and d["speed"].mean() > 0.95 and d["colour"].mean() == 1
    assert b["score"].mean() < 0.3 < 0.9 < d["score"].mean()
    static = np.repeat(toyworld.render_batch(down, world)[:, :1], world.num_frames, axis=1)   # frozen frame 0
    assert bouncing_scores(static, down, world)["score"].mean() < 0.3


def test_purple_bench_reads_the_new_colour_and_only_it():
    """Purple renders score 1 on colour (and on shape, direction, count); the same prompts rendered in the
    nearest base colours (magenta, blue) score 0: the score measures the new colour, not colour in general."""
    world = toyworld.WorldSpec()
    conds = purple_conditions(64, 5, world)
    assert {c.colour for c in conds} == {"purple"} and len({c.prompt for c in conds}) > 20
    bench = get_domain("purple")
    good = bench.scores(bench.render(conds, world), conds, world)
    assert good["score"].mean() == 1 and min(good[k].mean() for k in bench.items) >= 0.99
    for near in ("magenta", "blue"):
        shifted = [dataclasses.replace(c, colour=near) for c in conds]
        assert bench.scores(render_in_colour(shifted, world), conds, world)["score"].mean() == 0
    static = np.repeat(bench.render(conds, world)[:, :1], world.num_frames, axis=1)
    assert bench.scores(static, conds, world)["direction"].mean() == 0
    assert np.array_equal(render_in_colour(shifted, world), toyworld.render_batch(shifted, world))


def test_every_domain_is_new_to_the_base_prompts():
    """No downstream prompt is a base-domain prompt, and each domain's conditions are seeded."""
    base = {c.prompt for c in toyworld.attribute_grid("base")}
    for name, dom in DOMAINS.items():
        first, again = dom.conditions(32, 1, toyworld.WorldSpec()), dom.conditions(32, 1, toyworld.WorldSpec())
        assert first == again and not {c.prompt for c in first} & base, name


def test_mixed_batches_hold_the_replay_share_and_resume_where_they_stopped(tmp_path):
    write(tmp_path / "main", n=20)
    write(tmp_path / "base", n=12)
    main, base = ShardReader(tmp_path / "main"), ShardReader(tmp_path / "base")
    stream = mixed_batches(main, base, batch_size=4, replay_size=1, seed=0)
    batches = [next(stream) for _ in range(5)]
    assert all(len(b.prompts) == 4 and b.latents.shape[0] == 4 for b in batches)
    assert [b.position for b in batches] == [4, 8, 12, 16, 20]
    resumed = mixed_batches(main, base, batch_size=4, replay_size=1, seed=0, start=batches[2].position)
    for want in batches[3:]:
        got = next(resumed)
        assert got.prompts == want.prompts and torch.equal(got.latents, want.latents)
    only_main = next(mixed_batches(main, None, batch_size=4, replay_size=0, seed=0))
    assert only_main.prompts == next(main.batches(4, seed=0)).prompts


def test_paired_interval_and_forgetting_verdict():
    rng = np.random.default_rng(0)
    before = rng.uniform(size=200)
    assert paired_ci(before, before) == (0.0, 0.0, 0.0)
    d, lo, hi = paired_ci(before + 0.05, before)
    assert abs(d - 0.05) < 1e-12 and lo <= d <= hi
    rows = [{"domain": "base", "model": m, "nfe": 4, "total": v.mean()} for m, v in
            (("before", before), ("after", before - 0.1))]
    verdict = before_after_summary(rows, {("base", "before", 4): before, ("base", "after", 4): before - 0.1})
    assert not verdict["base_within_noise"] and abs(verdict["base"]["4"]["diff"] + 0.1) < 1e-12
    noisy = before + rng.normal(0, 0.05, size=200) - 0.001
    rows[1]["total"] = noisy.mean()
    verdict = before_after_summary(rows, {("base", "before", 4): before, ("base", "after", 4): noisy})
    assert verdict["base_within_noise"]


def test_anchor_loss_is_zero_at_the_anchor_and_trains_only_the_student():
    """anchor_loss: 0 when u_θ = u_θ₀; after a perturbation it is positive, its gradient reaches the student
    only, and it equals the squared gap of the two maps at states of the anchor's own trajectory."""
    import copy

    from anyflow.downstream import anchor_loss
    from anyflow.flowmap import flowmap_step
    from anyflow.schedule import time_grid
    from anyflow.student import average_velocity, student_from_teacher
    from tinymodels import inputs, tiny_wan

    anchor = student_from_teacher(tiny_wan()).requires_grad_(False)
    model = copy.deepcopy(anchor).requires_grad_(True)
    z, text, _ = inputs()
    assert anchor_loss(model, anchor, text, z, 4, 3.0, torch.Generator().manual_seed(0)).item() < 1e-10

    with torch.no_grad():
        model.proj_out.bias.add_(0.1)            # u_θ = u_θ₀ + 0.1: the loss is exactly 0.01
    loss = anchor_loss(model, anchor, text, z, 4, 3.0, torch.Generator().manual_seed(0))
    assert abs(loss.item() - 0.01) < 1e-6
    loss.backward()
    assert model.proj_out.bias.grad.abs().sum() > 0
    assert all(p.grad is None for p in anchor.parameters())

    # The states are the anchor's trajectory: with one step per sample drawn as i, z_{t_i} is reached by i jumps.
    with torch.no_grad():
        for p in model.parameters():             # a perturbation whose effect depends on the state
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    g = torch.Generator().manual_seed(0)
    step = torch.randint(2, (z.shape[0],), generator=g)   # the order anchor_loss draws in
    noise = torch.randn(z.shape, generator=g)
    grid = time_grid(2, 3.0).float()
    with torch.no_grad():
        z1 = flowmap_step(noise, average_velocity(anchor, noise, grid[0].expand(2), grid[1].expand(2), text),
                          grid[0].expand(2), grid[1].expand(2))
        states = torch.where(step.view(-1, 1, 1, 1, 1) == 0, noise, z1)
        expected = ((average_velocity(model, states, grid[step], grid[step + 1], text)
                     - average_velocity(anchor, states, grid[step], grid[step + 1], text)) ** 2).mean()
    got = anchor_loss(model, anchor, text, z, 2, 3.0, torch.Generator().manual_seed(0))
    assert sorted(step.tolist()) == [0, 1]      # both a first-step and a second-step state
    assert torch.allclose(got, expected, atol=1e-6) and not torch.allclose(got, torch.zeros(()), atol=1e-4)
