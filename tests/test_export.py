"""Export: an (untrained) toy student as an AnyFlowPipeline folder, loaded and sampled at any NFE."""

import json

import numpy as np
import pytest
import torch
from diffusers import AnyFlowPipeline

import anyflow  # noqa: F401  (registers LinearPatchVAE for from_pretrained)
from anyflow.export import EXPORT_META, export_student, load_student
from anyflow.flowmap import sample_flow_map
from anyflow.lora import LoraSpec, attach_lora, merge_lora
from anyflow.student import average_velocity, student_from_teacher
from anyflow.wan import load_teacher, teacher_video_size

PROMPTS = ["a red circle moving left on a black background", "a blue square moving up on a white background"]


@pytest.fixture(scope="module")
def exported(ci_teacher, tmp_path_factory):
    teacher = load_teacher(ci_teacher.path)
    student = student_from_teacher(teacher.transformer)
    params = attach_lora(student, LoraSpec(rank=2, alpha=2.0))
    with torch.no_grad():
        for p in params:
            p.add_(0.01)
    out = tmp_path_factory.mktemp("export") / "student"
    return export_student(merge_lora(student), ci_teacher.path, out, shift=3.0,
                          video=teacher_video_size(ci_teacher.path), provenance={"stage": "test"})


def test_folder_loads_in_anyflow_pipeline_at_any_nfe(exported):
    meta = json.loads((exported / EXPORT_META).read_text())
    assert meta["shift"] == 3.0 and meta["video"] == {"height": 32, "width": 32, "num_frames": 9}
    pipe = AnyFlowPipeline.from_pretrained(exported)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.shift == 3.0 and type(pipe.transformer).__name__ == "AnyFlowTransformer3DModel"
    for steps in (1, 4, 32):
        frames = pipe(PROMPTS[:1], height=32, width=32, num_frames=9, num_inference_steps=steps,
                      output_type="np").frames
        assert frames.shape == (1, 9, 32, 32, 3) and np.isfinite(frames).all()


def test_generate_is_batch_independent_and_seeded(exported):
    student = load_student(exported)
    a = student.generate(PROMPTS, nfe=2, seed=7, batch_size=2)
    b = student.generate(PROMPTS, nfe=2, seed=7, batch_size=1)
    assert a.shape == (2, 9, 32, 32, 3) and np.allclose(a, b, atol=1e-5)
    assert not np.allclose(a, student.generate(PROMPTS, nfe=2, seed=8))
    with pytest.raises(ValueError, match="nfe"):
        student.generate(PROMPTS, nfe=0, seed=0)


@torch.no_grad()
def test_any_nfe_sampler_equals_the_pipeline(exported, ci_teacher):
    student = load_student(exported)
    text = load_teacher(ci_teacher.path).encode_prompts(PROMPTS)
    noise = torch.randn(2, 16, 5, 8, 8, generator=torch.Generator().manual_seed(0))
    model = student.pipe.transformer
    for nfe in (1, 3, 8):
        ours = sample_flow_map(lambda z, t, r: average_velocity(model, z, t, r, text), noise, nfe, shift=3.0)
        theirs = student.pipe(prompt_embeds=text, latents=noise, height=32, width=32, num_frames=9,
                              num_inference_steps=nfe, output_type="latent").frames
        assert (ours - theirs).abs().max() < 1e-4, nfe


def test_export_refuses_unmerged_lora_and_existing_targets(ci_teacher, exported, tmp_path):
    student = student_from_teacher(load_teacher(ci_teacher.path).transformer)
    attach_lora(student, LoraSpec(rank=2, alpha=2.0))
    with pytest.raises(ValueError, match="merge"):
        export_student(student, ci_teacher.path, tmp_path / "s", 3.0, teacher_video_size(ci_teacher.path))
    with pytest.raises(FileExistsError, match=str(exported)):
        export_student(merge_lora(student), ci_teacher.path, exported, 3.0, teacher_video_size(ci_teacher.path))


def test_cli_sample_writes_gifs_and_a_contact_sheet(exported, tmp_path, capsys):
    from PIL import Image

    from flows.cli import main

    assert main(["sample", str(exported), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--nfe", "1,4",
                 "--out", str(tmp_path)]) == 0
    assert (tmp_path / "nfe4_1.gif").is_file() and np.load(tmp_path / "frames_nfe1.npy").shape == (2, 9, 32, 32, 3)
    gif = Image.open(tmp_path / "nfe1_0.gif")
    assert gif.n_frames == 9 and gif.size == (128, 128)
    assert Image.open(tmp_path / "sheet.png").size[1] > 2 * 64
    assert main(["sample", str(exported), "--prompt", "x", "--nfe", "four"]) == 2
    assert "--nfe" in capsys.readouterr().err


def test_cli_sample_writes_an_mp4_per_prompt_and_nfe(exported, tmp_path, capsys):
    import imageio.v3 as iio

    from flows.cli import main

    assert main(["sample", "--model", str(exported), "--prompt", PROMPTS[0], "--nfe", "4",
                 "--out", str(tmp_path / "video.mp4")]) == 0
    video = iio.imread(tmp_path / "video.mp4")
    assert video.shape == (9, 32, 32, 3) and video.std() > 0
    assert main(["sample", "--model", str(exported), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--nfe", "1,2",
                 "--out", str(tmp_path / "many.gif")]) == 0
    assert sorted(p.name for p in tmp_path.glob("many_*.gif")) == [
        "many_nfe1_0.gif", "many_nfe1_1.gif", "many_nfe2_0.gif", "many_nfe2_1.gif"]
    assert main(["sample", "--prompt", "x"]) == 2 and "--model" in capsys.readouterr().err


@torch.no_grad()
def test_evaluation_grid_shift_reaches_the_pipeline(exported, ci_teacher):
    from tasks.evaluate import on_grid, shift_notice

    student = on_grid(load_student(exported), 5.0)
    assert student.pipe.scheduler.config.shift == 5.0
    text = load_teacher(ci_teacher.path).encode_prompts(PROMPTS[:1])
    noise = torch.randn(1, 16, 5, 8, 8, generator=torch.Generator().manual_seed(1))
    model = student.pipe.transformer
    run = lambda: student.pipe(prompt_embeds=text, latents=noise, height=32, width=32, num_frames=9,
                               num_inference_steps=3, output_type="latent").frames
    ours = lambda shift: sample_flow_map(lambda z, t, r: average_velocity(model, z, t, r, text), noise, 3, shift=shift)
    assert (ours(5.0) - run()).abs().max() < 1e-4 and (ours(3.0) - run()).abs().max() > 1e-3
    assert shift_notice(3.0, 3.0) is None and "evaluation.shift=3" in shift_notice(3.0, 5.0)
