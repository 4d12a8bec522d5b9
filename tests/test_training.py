"""The shared training loop: LoRA-only updates, EMA, and exact resume from a checkpoint (a resumed run
reproduces the uninterrupted loss curve and weights)."""

import numpy as np
import pytest
import torch

from anyflow.lora import LoraSpec, attach_lora, lora_parameters
from anyflow.shards import ShardReader, ShardWriter
from anyflow.stage1 import FlowMapLossSpec, flowmap_loss
from anyflow.student import student_from_teacher
from anyflow.training import LoopSpec, Update, train, train_updates
from tinymodels import tiny_wan


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    w = ShardWriter(out, 8)
    for lo in range(0, 24, 8):
        w.write_shard([{"key": f"{i:08d}", "latents": np.random.default_rng(i).standard_normal((3, 16, 8, 8)).astype(np.float32),
                        "prompt_embeds": np.random.default_rng(100 + i).standard_normal((4, 32)).astype(np.float32),
                        "prompt": f"p{i}", "meta": {}} for i in range(lo, lo + 8)])
    w.write_manifest({"max_sequence_length": 12})
    return out


def tiny_setup(shards, spec: FlowMapLossSpec, uncond: torch.Tensor):
    """A tiny student with its LoRA, a stage-1 step function and the shards as a batch source."""
    student = student_from_teacher(tiny_wan())
    params = attach_lora(student, LoraSpec(rank=2, alpha=2.0))
    reader = ShardReader(shards)
    step = lambda model, batch, gen: flowmap_loss(model, batch.latents, batch.prompt_embeds, uncond, spec, gen)
    return student, params, step, lambda pos: reader.batches(4, seed=0, start=pos)


def run(shards, ckpt, crash_at=None, steps=6):
    uncond = torch.zeros(1, 12, 32)
    uncond[:, 0] = 1
    student, params, loss_step, batches = tiny_setup(shards, FlowMapLossSpec(text_dropout=0.5), uncond)

    def step(model, batch, gen):
        if crash_at is not None and step.calls == crash_at:
            raise RuntimeError("killed")
        step.calls += 1
        return loss_step(model, batch, gen)
    step.calls = 0

    loop = LoopSpec(num_steps=steps, lr=1e-2, warmup_steps=2, ema_decay=0.9, ema_start_step=1, checkpoint_every=2,
                    seed=3, name="t")
    logged = []
    summary = train(student, params, step, batches, loop, ckpt,
                    log=lambda m, s: logged.append((s, m["t/loss"])), progress=False)
    return student, summary, logged


def test_resumed_run_reproduces_the_uninterrupted_one(shards, tmp_path):
    ref_model, ref, ref_log = run(shards, tmp_path / "a")
    with pytest.raises(RuntimeError, match="killed"):
        run(shards, tmp_path / "b", crash_at=3)                       # dies in step 4; checkpoint at step 2
    model, resumed, log = run(shards, tmp_path / "b")
    assert resumed["resumed_from"] == 2 and [s for s, _ in log] == [2, 3, 4, 5]
    assert [l for _, l in log] == [l for s, l in ref_log if s >= 2]     # bit-identical loss curve
    for (n, a), (_, b) in zip(ref_model.named_parameters(), model.named_parameters()):
        assert torch.equal(a, b), n                                     # and EMA weights


def test_only_lora_moves_and_ema_is_applied(shards, tmp_path):
    before = {n: p.detach().clone() for n, p in student_from_teacher(tiny_wan()).named_parameters()}
    model, summary, log = run(shards, tmp_path / "c")
    after = {n.replace(".base_layer", ""): p for n, p in model.named_parameters()}
    assert all(torch.equal(before[n], after[n]) for n in before)          # base weights untouched
    assert any(p.abs().sum() > 0 for n, p in after.items() if ".lora_B." in n)
    assert summary["steps"] == 6 and len(log) == 6 and np.isfinite(summary["final_loss"])
    assert sorted(p.name for p in (tmp_path / "c").glob("step-*")) == ["step-0000004", "step-0000006"]


@pytest.mark.parametrize("ramp", [False, True])
def test_ema_decay_is_the_configured_one_after_the_start_unless_ramped(shards, tmp_path, ramp):
    """Recipe §4.3: the EMA copies the weights until the start step, then decays by ema_decay. diffusers'
    EMAModel ramps min(decay, (1 + n) / (10 + n)) by default, which only `ema_ramp` asks for."""
    student, params, step, batches = tiny_setup(shards, FlowMapLossSpec(), torch.zeros(1, 12, 32))
    loop = LoopSpec(num_steps=6, lr=1e-2, ema_decay=0.9, ema_start_step=2, ema_ramp=ramp, checkpoint_every=6,
                    name="t")
    decays = []
    train(student, params, step, batches, loop, tmp_path, log=lambda m, s: decays.append(m["t/ema_decay"]),
          progress=False)
    ramped = [min(0.9, (1 + n) / (10 + n)) for n in (1, 2, 3)]   # n = step - start - 1
    assert decays == pytest.approx([0.0, 0.0, 0.0] + (ramped if ramp else [0.9, 0.9, 0.9]))


def test_loop_spec_takes_every_field_a_config_section_has():
    import conf
    from tasks.stagerun import loop_spec

    cfg = conf.load("ci", ["stage1.weight_decay=0.01", "stage2.lr=3e-6"])
    s1, s2 = loop_spec(cfg.stage1, "stage1"), loop_spec(cfg.stage2, "stage2")
    assert (s1.num_steps, s1.weight_decay, s1.warmup_steps, s1.betas, s1.name) == (10, 0.01, 2, (0.9, 0.95), "stage1")
    assert (s2.lr, s2.betas, s2.warmup_steps, s2.weight_decay, s2.checkpoint_every) == (3e-6, (0.0, 0.999), 0, 0.0, 2)


def test_after_step_sees_the_ema_weights_and_changes_nothing(shards, tmp_path):
    """Probes score the EMA weights (what a stage exports) from inside the loop; leaving them must restore the
    trained weights exactly, so a run with the hook ends bit for bit where a run without it does."""
    loop = LoopSpec(num_steps=4, lr=1e-2, warmup_steps=0, ema_decay=0.5, ema_start_step=0, checkpoint_every=4,
                    seed=3, name="t")

    def go(ckpt, hook=None):
        student, params, step, batches = tiny_setup(shards, FlowMapLossSpec(text_dropout=0.5), torch.zeros(1, 12, 32))
        train_updates([Update("t", student, params, step, lr=loop.lr, ema=True)], batches, loop, ckpt, progress=False,
                      after_step=None if hook is None else lambda done, ema: hook(done, ema, params))
        return params

    seen = []

    def hook(done, ema_weights, params):
        raw = [p.detach().clone() for p in params]
        with ema_weights():
            inside = [p.detach().clone() for p in params]
        seen.append((done, any(not torch.equal(a, b) for a, b in zip(raw, inside)),
                     all(torch.equal(a, p) for a, p in zip(raw, params))))

    plain, hooked = go(tmp_path / "a"), go(tmp_path / "b", hook)
    assert [d for d, _, _ in seen] == [1, 2, 3, 4]
    assert all(differs for _, differs, _ in seen[1:])      # the EMA lags the trained weights once they move
    assert all(restored for _, _, restored in seen)
    assert all(torch.equal(a, b) for a, b in zip(plain, hooked))
