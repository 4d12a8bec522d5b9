"""bench/teacher_variants.py's object-weighted loss: the mask finds the object, weight 1 is plain flow matching."""

import importlib.util
from pathlib import Path

import numpy as np
import torch
from tinymodels import tiny_wan

from anyflow import toybuild, toyworld
from anyflow.teacher import flow_matching_loss

_SPEC = importlib.util.spec_from_file_location(
    "teacher_variants", Path(__file__).parents[1] / "bench" / "teacher_variants.py")
variants = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(variants)


def test_object_mask_covers_the_rendered_object(ci_config):
    spec = ci_config.teacher.toy
    components = toybuild.build_components(spec)
    conds = toyworld.sample_conditions(8, seed=3, spec=spec.world)
    videos = toyworld.render_batch(conds, spec.world)
    latents = toybuild.encode_videos(components.vae, videos)              # [B, C, L, h, w]
    mask = variants.object_mask(latents, 0.25)[:, 0]                       # [B, L, h, w]
    share = mask.flatten(2).mean(2)
    assert (share > 0).all() and (share <= 0.25).all()                     # every frame: some object, mostly background
    patch = videos.shape[2] // latents.shape[3]
    for b in range(len(conds)):
        for l in range(latents.shape[2]):
            frame = videos[b, 2 * l]                                      # latent frame l ends at pixel frame 2l
            obj = np.abs(frame - frame[0, 0]).sum(-1) > 0.1                # the background fills the corner pixel
            ys, xs = np.nonzero(obj)
            my, mx = (torch.nonzero(mask[b, l]).float().mean(0) + 0.5) * patch
            assert abs(my - ys.mean()) < patch and abs(mx - xs.mean()) < patch


def test_object_weight_one_is_flow_matching():
    model = tiny_wan()
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.zeros(2, 16, 3, 8, 8), torch.randn(2, 16, 3, 8, 8, generator=g)
    x0[:, :, :, 2:4, 5:7] = 1.0                                            # an "object" on a flat background
    assert variants.object_mask(x0, 0.25).sum() == 2 * 3 * 4
    text, sigma = torch.randn(2, 4, model.config.text_dim, generator=g), torch.tensor([0.3, 0.8])
    plain = flow_matching_loss(model, x0, text, sigma, eps)
    torch.testing.assert_close(variants.object_weighted_loss(1.0, 0.25)(model, x0, text, sigma, eps), plain)
    assert not torch.allclose(variants.object_weighted_loss(4.0, 0.25)(model, x0, text, sigma, eps), plain)
