"""Tiny random models and inputs shared by the model tests (imported by name; tests/ is on sys.path)."""

import torch
from diffusers import WanTransformer3DModel


def tiny_wan(**kw) -> WanTransformer3DModel:
    torch.manual_seed(0)
    args = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
                text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=64)
    return WanTransformer3DModel(**{**args, **kw}).eval()


def inputs(batch=2, text_dim=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, 16, 3, 8, 8, generator=g)
    text = torch.randn(batch, 20, text_dim, generator=g)
    text[:, 6:] = 0                                   # Wan convention: real tokens, then zero rows
    return z, text, torch.tensor([0.9, 0.35])[:batch]
