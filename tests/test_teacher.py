"""The toy teacher: flow-matching pieces, the ci-preset build as a real WanPipeline folder, and the check that
toy-only steps name themselves on any other Wan folder."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import WanPipeline

import anyflow  # noqa: F401  (registers LinearPatchVAE for from_pretrained)
from tinymodels import tiny_wan

from anyflow.teacher import TeacherTrainHparams, sample_sigma, train_teacher, training_batch


def test_sigma_samples_are_logit_normal_then_shifted():
    hp = TeacherTrainHparams(shift=1.0)
    sig = sample_sigma(20000, hp, torch.Generator().manual_seed(0))
    assert 0 < sig.min() and sig.max() < 1
    logit = torch.logit(sig)
    assert abs(logit.mean()) < 0.05 and abs(logit.std() - 1) < 0.05


def test_hparams_validate():
    with pytest.raises(ValueError, match="text_dropout"):
        TeacherTrainHparams(text_dropout=1.5)
    with pytest.raises(ValueError, match="optimizer must be 'adamw' or 'muon', got 'sgd'"):
        TeacherTrainHparams(optimizer="sgd")
    with pytest.raises(ValueError, match="image_every must be >= 0"):
        TeacherTrainHparams(image_every=-1)
    with pytest.raises(ValueError, match="muon_lr"):
        TeacherTrainHparams(muon_lr=0.0)


def _toy_data(n=12, prompts=3):
    """One fixed latent video per prompt (learnable), `n` training rows."""
    g = torch.Generator().manual_seed(0)
    index = torch.arange(n) % prompts
    return (torch.randn(prompts, 16, 3, 8, 8, generator=g)[index], index,
            torch.randn(prompts, 6, 32, generator=g), torch.zeros(1, 6, 32))


def test_image_steps_train_on_first_latent_frames_at_the_video_steps_token_count():
    latents, index, embeds, uncond = _toy_data()
    hp = TeacherTrainHparams(batch_size=4, text_dropout=0.5)
    x0, text, sigma, eps = training_batch(latents, index, embeds, uncond, hp, torch.Generator().manual_seed(1), True)
    assert x0.shape == (12, 16, 1, 8, 8) and eps.shape == x0.shape and text.shape == (12, 6, 32)
    assert sigma.shape == (12,)
    frames = {tuple(x.flatten()[:4].tolist()) for x in x0}
    assert frames <= {tuple(v[:, :1].flatten()[:4].tolist()) for v in latents}      # each is some video's frame 0
    videos = training_batch(latents, index, embeds, uncond, hp, torch.Generator().manual_seed(1))[0]
    assert videos.shape == (4, 16, 3, 8, 8)
    assert x0.numel() == videos.numel()                  # same tokens per step


def test_muon_with_image_steps_trains_and_logs_both_losses():
    latents, index, embeds, uncond = _toy_data()
    hp = TeacherTrainHparams(num_steps=40, batch_size=4, lr=3e-3, warmup_steps=2, ema_start_step=100,
                             optimizer="muon", image_every=2)
    logged = []
    model = train_teacher(tiny_wan(), latents, index, embeds, uncond, hp,
                          log=lambda m, step: logged.append((step, dict(m))), progress=False)
    assert [s for s, m in logged if "teacher/image_loss" in m] == list(range(1, 40, 2))
    video = [m["teacher/loss"] for s, m in logged if "teacher/loss" in m]
    assert len(video) == 20 and np.mean(video[-5:]) < 0.9 * np.mean(video[:5])
    assert all(m["teacher/muon_lr"] / 0.02 == pytest.approx(m["teacher/lr"] / 3e-3) for _, m in logged)
    assert not model.training


def test_ci_teacher_is_a_wan_pipeline_folder(ci_teacher):
    folder = Path(ci_teacher.path)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    assert {"transformer", "vae", "text_encoder", "tokenizer", "scheduler"} <= set(index)
    assert (folder / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert ci_teacher.summary["num_steps"] == 30 and np.isfinite(ci_teacher.summary["final_loss"])


def test_ci_teacher_samples_with_the_standard_call(ci_teacher):
    pipe = WanPipeline.from_pretrained(ci_teacher.path)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe("a red circle moving left on a black background", height=32, width=32, num_frames=9,
                  num_inference_steps=2, guidance_scale=3.0, output_type="np").frames
    assert frames.shape == (1, 9, 32, 32, 3) and frames.min() >= 0 and frames.max() <= 1
    latents = pipe(["a blue square moving up on a white background"] * 2, height=32, width=32, num_frames=9,
                   num_inference_steps=2, guidance_scale=1.0, output_type="latent").frames
    assert latents.shape == (2, 16, 5, 8, 8)


def test_teacher_build_is_cached(ci_config, ci_teacher):
    from tasks.teacher import build_teacher

    cfg = ci_config.model_copy(update={"paths": ci_config.paths.model_copy(
        update={"root": str(Path(ci_teacher.path).parents[2])})})
    again = build_teacher(cfg, progress=False)
    assert again.path == ci_teacher.path and again.summary["cache_hit"]


def test_toy_only_steps_name_themselves_on_another_wan_folder(ci_teacher, random_wan_folder):
    from dataclasses import replace

    from anyflow.toybuild import toy_world_of
    from tasks.teacher import require_toy_world

    world = require_toy_world(ci_teacher, "ToyBench", "use vbench")
    assert world is not None and world == toy_world_of(ci_teacher.path)
    real = replace(ci_teacher, path=str(random_wan_folder))
    with pytest.raises(ValueError, match=r"stage2.probe_every=5 needs a toy teacher; .* is not one \(set it to 0\)"):
        require_toy_world(real, "stage2.probe_every=5", "set it to 0")
