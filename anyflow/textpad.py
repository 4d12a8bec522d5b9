"""Exact, cheap cross-attention over Wan's zero-padded prompt embeddings (a training-time speed-up).

The Wan convention pads every prompt embedding with zero rows up to `max_sequence_length` (512 in the
standard pipeline call), so all pad positions carry the same key and value. Softmax attention over m
identical keys equals attention over one of them with log(m) added to its logit:

    Σ_i e^{s_i} v_i + m·e^{s_p} v_p  =  Σ_i e^{s_i} v_i + e^{s_p + log m} v_p

So a batch [B, S, D] can be cut to its first K = max(real tokens) + 1 rows, each remaining pad row
carrying the additive bias log((S − n_b) / (K − n_b)) for sample b with n_b real tokens. Outputs and
gradients equal the full-length computation (to float rounding) at a fraction of the cost when S ≫ K.
Inference keeps the full 512 rows through the stock pipelines; nothing here changes what is learned.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def collapse_padding(embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, S, D] zero-padded embeddings -> (embeds [B, K, D], additive key bias [B, K])."""
    B, S, _ = embeds.shape
    real = embeds.abs().amax(dim=-1) > 0                                  # (B, S)
    n = real.sum(dim=1)                                                   # real tokens per sample
    if not torch.equal(real, torch.arange(S, device=embeds.device)[None] < n[:, None]):
        raise ValueError("collapse_padding: real tokens must form a prefix followed by zero rows (Wan convention)")
    K = int(n.max()) + 1
    if K > S:  # no pad row at all: nothing to collapse
        return embeds, torch.zeros(B, S, dtype=embeds.dtype, device=embeds.device)
    pad_bias = torch.log((S - n).double() / (K - n).double()).to(embeds.dtype)   # (B,)
    positions = torch.arange(K, device=embeds.device)[None]
    bias = torch.where(positions < n[:, None], torch.zeros((), dtype=embeds.dtype), pad_bias[:, None])
    return embeds[:, :K], bias


class _BiasedCrossAttention:
    """Wraps a cross-attention processor and feeds it an additive key bias as its attention mask."""

    def __init__(self, inner, bias: torch.Tensor):
        self.inner, self.bias = inner, bias

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        mask = self.bias[:, None, None, :].to(hidden_states.dtype)       # (B, 1, 1, K): broadcast over heads, queries
        return self.inner(attn, hidden_states, encoder_hidden_states, mask, *args, **kwargs)


@contextmanager
def collapsed_text(model: nn.Module, bias: torch.Tensor):
    """Within the block, every cross-attention (`*.attn2`) of `model` adds `bias` [B, K] to its logits."""
    modules = [m for name, m in model.named_modules() if name.endswith("attn2") and hasattr(m, "processor")]
    if not modules:
        raise ValueError(f"collapsed_text: {type(model).__name__} has no cross-attention (attn2) modules")
    originals = [m.processor for m in modules]
    try:
        for m in modules:
            m.processor = _BiasedCrossAttention(m.processor, bias)
        yield
    finally:
        for m, p in zip(modules, originals):
            m.processor = p

