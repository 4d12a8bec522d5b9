"""Student from teacher: weights, delta_embedder init, layouts; at r = t the fresh student is the teacher."""

import pytest
import torch
from anyflow.student import average_velocity, per_frame, student_from_teacher, to_channel_major, to_frame_major
from anyflow.teacher import teacher_velocity
from anyflow.wan import load_teacher
from tinymodels import inputs, tiny_wan


def test_layout_helpers_round_trip():
    x = torch.randn(2, 16, 3, 4, 4)
    assert to_frame_major(x).shape == (2, 3, 16, 4, 4) and torch.equal(to_channel_major(to_frame_major(x)), x)
    assert torch.equal(per_frame(torch.tensor([0.5, 0.25]), 3), torch.tensor([[500.0] * 3, [250.0] * 3]))


def test_delta_embedder_starts_as_the_time_embedder():
    student = student_from_teacher(tiny_wan())
    emb = student.condition_embedder
    for (n1, p1), (n2, p2) in zip(emb.time_embedder.named_parameters(), emb.delta_embedder.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    assert student.config.gate_value == 0.25


@pytest.mark.parametrize("patch", [(1, 2, 2), (1, 1, 1)])
@torch.no_grad()
def test_fresh_student_equals_teacher_at_r_equals_t(patch):
    teacher = tiny_wan(patch_size=patch)
    student = student_from_teacher(teacher).eval()
    z, text, t = inputs()
    v = teacher_velocity(teacher, z, t, text)
    u = average_velocity(student, z, t, t, text)
    assert (u - v).abs().max() < 1e-5
    # off the diagonal the second time moves the embedding (interpolated conditioning, gate 0.25)
    assert (average_velocity(student, z, t, t * 0.2, text) - v).abs().max() > 1e-4


@torch.no_grad()
def test_collapsed_text_is_exact_for_the_student():
    student = student_from_teacher(tiny_wan()).eval()
    z, text, t = inputs()
    full = to_channel_major(student(to_frame_major(z), timestep=per_frame(t, 3), r_timestep=per_frame(t * 0.5, 3),
                                    encoder_hidden_states=text, return_dict=False)[0])
    assert (average_velocity(student, z, t, t * 0.5, text) - full).abs().max() < 1e-5


def test_unsupported_teacher_is_refused():
    with pytest.raises(ValueError, match="qk_norm"):
        student_from_teacher(tiny_wan(qk_norm="rms_norm"))


@torch.no_grad()
def test_toy_and_real_format_teachers_convert(ci_teacher, random_wan_folder):
    for folder in (ci_teacher.path, random_wan_folder):
        teacher = load_teacher(folder)
        student = student_from_teacher(teacher.transformer).eval()
        text = teacher.encode_prompts(["a red circle moving left", "a cat"])
        z = torch.randn(2, 16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
        t = torch.tensor([0.8, 0.4])
        assert (average_velocity(student, z, t, t, text) - teacher_velocity(teacher.transformer, z, t, text)
                ).abs().max() < 1e-5
