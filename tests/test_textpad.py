"""Collapsing Wan's zero padding is exact: same outputs and gradients as the full 512-row computation."""

import pytest
import torch

from anyflow.teacher import TeacherArch, build_transformer
from anyflow.textpad import collapse_padding, collapsed_text

TINY = TeacherArch(num_layers=2, num_attention_heads=2, attention_head_dim=16, ffn_dim=64, freq_dim=32)


def padded_embeds(lengths, total=512, dim=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    e = torch.zeros(len(lengths), total, dim)
    for i, n in enumerate(lengths):
        e[i, :n] = torch.randn(n, dim, generator=g)
    return e


def test_bias_is_log_multiplicity():
    short, bias = collapse_padding(padded_embeds([3, 1]))
    assert short.shape == (2, 4, 32)
    torch.testing.assert_close(bias[0], torch.tensor([0, 0, 0, torch.log(torch.tensor(509.0))]))
    torch.testing.assert_close(bias[1, 1:], torch.log(torch.tensor(511.0 / 3)).expand(3))


def test_collapsed_forward_and_grad_equal_full():
    model = build_transformer(TINY, in_channels=16, text_dim=32, seed=0)
    e = padded_embeds([10, 10, 1, 7])
    z, t = torch.randn(4, 16, 5, 8, 8), torch.tensor([900.0, 500.0, 100.0, 10.0])
    full = model(z, timestep=t, encoder_hidden_states=e, return_dict=False)[0]
    g_full = torch.autograd.grad(full.square().sum(), list(model.parameters()))
    short, bias = collapse_padding(e)
    with collapsed_text(model, bias):
        fast = model(z, timestep=t, encoder_hidden_states=short, return_dict=False)[0]
    g_fast = torch.autograd.grad(fast.square().sum(), list(model.parameters()))
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_fast, g_full):  # float32 summation order differs: compare whole tensors by relative norm
        assert (a - b).norm() <= 1e-3 * b.norm() + 1e-6
    # the bias matters: without it the short sequence gives a different answer
    plain = model(z, timestep=t, encoder_hidden_states=short, return_dict=False)[0]
    assert (plain - full).abs().max() > 1e-3


def test_processors_are_restored():
    model = build_transformer(TINY, in_channels=16, text_dim=32, seed=0)
    before = [m.processor for n, m in model.named_modules() if n.endswith("attn2")]
    with pytest.raises(RuntimeError):
        with collapsed_text(model, torch.zeros(1, 2)):
            raise RuntimeError("boom")
    assert [m.processor for n, m in model.named_modules() if n.endswith("attn2")] == before


def test_rejects_non_prefix_padding():
    e = padded_embeds([3])
    e[0, 5] = 1.0
    with pytest.raises(ValueError, match="prefix"):
        collapse_padding(e)


def test_a_stock_pipeline_call_with_collapsed_text_matches_the_full_call(ci_teacher):
    from anyflow.synthesis import collapsed_pipeline_text
    from anyflow.wan import load_teacher, teacher_video_size

    teacher = load_teacher(ci_teacher.path)
    video = teacher_video_size(ci_teacher.path)
    embeds = teacher.encode_prompts(["a red circle moving left on a black background", "a blue square moving up"])
    neg = teacher.uncond_embedding().expand(2, -1, -1)

    def run():
        gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
        return teacher.pipe(prompt_embeds=embeds, negative_prompt_embeds=neg, height=video.height, width=video.width,
                            num_frames=video.num_frames, num_inference_steps=4, guidance_scale=4.0, generator=gens,
                            output_type="latent").frames

    full = run()
    transformer = teacher.pipe.transformer
    with collapsed_pipeline_text(transformer):
        collapsed = run()
    assert "forward" not in vars(transformer)                    # the class's forward is back
    assert torch.allclose(collapsed, full, atol=1e-4 * full.abs().max().item())
    assert (full[0] - full[1]).abs().max() > 0.1                 # two prompts, two different samples
