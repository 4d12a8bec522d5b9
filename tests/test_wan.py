"""Teacher loading from Diffusers Wan folders: the real format (random weights) and the toy teacher."""

import json
import shutil

import numpy as np
import pytest
import torch

from anyflow.wan import VideoSize, check_wan_folder, load_teacher, teacher_video_size


def test_real_format_folder_loads_with_the_wan_conventions(random_wan_folder):
    teacher = load_teacher(random_wan_folder, negative_prompt="blurry video")
    assert type(teacher.vae).__name__ == "AutoencoderKLWan" and type(teacher.pipe.text_encoder).__name__ == "UMT5EncoderModel"
    assert not any(p.requires_grad for p in teacher.transformer.parameters())
    emb = teacher.encode_prompts(["a red cat moving left", "a dog"])
    assert emb.shape == (2, 512, 32)
    real = emb.abs().amax(-1) > 0
    assert real[0].sum() == 6 and real[1].sum() == 3                   # words + </s>, cut then zero-padded
    assert not real[0, 6:].any() and not real[1, 3:].any()
    uncond = teacher.uncond_embedding()
    assert uncond.shape == (1, 512, 32) and (uncond.abs().amax(-1) > 0).sum() == 3
    assert not torch.allclose(uncond, teacher.encode_prompts([""]))  # the configured negative prompt, not ""


def test_latent_normalisation_round_trips(random_wan_folder):
    teacher = load_teacher(random_wan_folder)
    mean, std = (torch.tensor(teacher.vae.config[k]).view(1, -1, 1, 1, 1) for k in ("latents_mean", "latents_std"))
    mu = torch.randn(1, 16, 2, 4, 4)
    assert torch.allclose(teacher.normalize(mu), (mu - mean) / std)
    assert torch.allclose(teacher.denormalize(teacher.normalize(mu)), mu, atol=1e-6)
    pixels = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    z = teacher.encode_video(pixels)
    assert z.shape == (1, 16, 2, 4, 4)                                 # 4x temporal, 8x spatial
    frames = teacher.decode(z)
    assert frames.shape == (1, 5, 32, 32, 3) and frames.min() >= 0 and frames.max() <= 1


def test_toy_teacher_loads_the_same_way(ci_teacher):
    teacher = load_teacher(ci_teacher.path)
    size = teacher_video_size(ci_teacher.path)
    assert size == VideoSize(height=32, width=32, num_frames=9)
    z = teacher.encode_video(torch.zeros(2, 3, 9, 32, 32))
    assert z.shape == (2, 16, 5, 8, 8)
    assert teacher.decode(z).shape == (2, 9, 32, 32, 3)
    assert teacher_video_size("/nonexistent") == VideoSize(480, 832, 81)   # Wan2.1 default


def test_bad_folders_are_named(tmp_path, random_wan_folder):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        check_wan_folder(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(random_wan_folder, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(FileNotFoundError, match="vae"):
        check_wan_folder(broken)
    index = json.loads((broken / "model_index.json").read_text())
    index["text_encoder"] = [None, None]
    (broken / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="text_encoder"):
        check_wan_folder(broken)
