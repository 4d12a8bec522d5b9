"""LoRA through peft: only adapters train, save → load is exact, merged equals unmerged."""

import pytest
import torch

from anyflow.lora import SELF_ATTENTION_FFN, TIME_EMBEDDERS, LoraSpec, attach_lora, load_lora, lora_parameters, \
    merge_lora, save_lora
from anyflow.student import average_velocity, student_from_teacher
from tinymodels import inputs, tiny_wan

SPEC = LoraSpec(rank=4, alpha=8.0, targets=SELF_ATTENTION_FFN + TIME_EMBEDDERS)


def perturbed_student(seed=0):
    student = student_from_teacher(tiny_wan()).eval()
    params = attach_lora(student, SPEC)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return student


@torch.no_grad()
def outputs(student):
    z, text, t = inputs()
    return average_velocity(student, z, t, t * 0.5, text)


def test_only_lora_parameters_train():
    student = student_from_teacher(tiny_wan()).eval()
    before = outputs(student)
    params = attach_lora(student, SPEC)
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(trainable) == len(params) == len(lora_parameters(student))
    assert any("delta_embedder" in n for n in trainable) and not any("attn2" in n for n in trainable)
    assert torch.equal(outputs(student), before)           # lora_B = 0: attaching changes nothing


def test_save_load_reproduces_outputs_exactly(tmp_path):
    student = perturbed_student()
    ref = outputs(student)
    path = save_lora(student, tmp_path / "adapter.safetensors", SPEC)
    fresh = student_from_teacher(tiny_wan()).eval()
    assert load_lora(fresh, path) == SPEC
    assert torch.equal(outputs(fresh), ref)


def test_merge_matches_unmerged():
    student = perturbed_student()
    ref = outputs(student)
    merged = merge_lora(student)
    assert not lora_parameters(merged)
    assert (outputs(merged) - ref).abs().max() < 1e-5
    assert (ref - outputs(student_from_teacher(tiny_wan()).eval())).abs().max() > 1e-3   # the adapter did something


def test_unknown_target_is_named():
    with pytest.raises(ValueError, match="attn9.to_q"):
        attach_lora(student_from_teacher(tiny_wan()), LoraSpec(targets=("attn9.to_q",)))
    with pytest.raises(ValueError, match="rank"):
        LoraSpec(rank=0)


def test_teacher_architecture_takes_lora_too():
    critic = tiny_wan()
    params = attach_lora(critic, LoraSpec(rank=2, alpha=2.0))
    assert params and all(p.requires_grad for p in params)
    assert not any(p.requires_grad for n, p in critic.named_parameters() if ".lora_" not in n)


def test_load_rejects_foreign_files(tmp_path):
    from anyflow.checkpoint import save_tensors

    path = save_tensors({"w": torch.zeros(2)}, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="not a LoRA file"):
        load_lora(student_from_teacher(tiny_wan()), path)


def test_lora_init_is_seeded_and_leaves_the_global_rng_alone():
    def lora_a(seed, global_seed):
        student = student_from_teacher(tiny_wan())         # tiny_wan seeds the global RNG itself
        torch.manual_seed(global_seed)
        state = torch.get_rng_state()
        attach_lora(student, SPEC, seed=seed)
        assert torch.equal(torch.get_rng_state(), state)   # the caller's stream is not consumed
        return torch.cat([p.flatten() for n, p in student.named_parameters() if ".lora_A." in n])

    first = lora_a(0, global_seed=123)
    assert torch.equal(lora_a(0, global_seed=999), first)  # the global state does not matter
    assert not torch.equal(lora_a(1, global_seed=123), first)


def test_widened_adapter_starts_where_the_file_left_off_and_saves_whole(tmp_path):
    """extra_targets adds zero-initialised LoRA on new modules: the same outputs as the file's adapter, the new
    modules train, and saving writes (and loading then needs) the widened adapter."""
    student = perturbed_student()
    ref = outputs(student)
    path = save_lora(student, tmp_path / "adapter.safetensors", SPEC)
    wide = student_from_teacher(tiny_wan()).eval()
    spec = load_lora(wide, path, extra_targets=("attn2.to_k", "attn2.to_v", "attn1.to_q"))
    assert spec.targets == SPEC.targets + ("attn2.to_k", "attn2.to_v")     # attn1.to_q was already there
    assert torch.equal(outputs(wide), ref)
    new = [p for n, p in wide.named_parameters() if "attn2.to_v.lora_B" in n]
    assert new and all(p.requires_grad and not p.any() for p in new)
    with torch.no_grad():
        for p in new:
            p.fill_(0.01)
    wide_out = outputs(wide)
    assert (wide_out - ref).abs().max() > 1e-4                            # the cross-attention adapter acts
    wide_path = save_lora(wide, tmp_path / "wide.safetensors", spec)
    again = student_from_teacher(tiny_wan()).eval()
    assert load_lora(again, wide_path) == spec and torch.equal(outputs(again), wide_out)
    with pytest.raises(ValueError, match="already attached"):
        load_lora(again, path, extra_targets=("attn2.to_q",))
