"""Activation (gradient) checkpointing for diffusers transformers that works with `anyflow.textpad`.

`collapsed_text` swaps the cross-attention processors only for the duration of a forward call, but
checkpointed blocks are recomputed later, during backward, after the plain processors are back; torch then
either fails on a different saved-tensor count or, worse, returns the gradient of another function. The
checkpoint function here recomputes each block with the processors that were installed at forward time."""

from __future__ import annotations

import torch
import torch.utils.checkpoint
from torch import nn


def _checkpoint_with_processors(block: nn.Module, *args):
    """Checkpoint one transformer block; its recomputation re-installs the forward-time `attn2` processors."""
    attn = [m for name, m in block.named_modules() if name.endswith("attn2") and hasattr(m, "processor")]
    installed = [m.processor for m in attn]

    def run(*a):
        current = [m.processor for m in attn]
        try:
            for m, p in zip(attn, installed):
                m.processor = p
            return block(*a)
        finally:
            for m, p in zip(attn, current):
                m.processor = p

    return torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=False)


def enable_gradient_checkpointing(model) -> None:
    """Checkpoint every transformer block of a diffusers model (recompute activations in backward: less memory,
    about one more forward of compute), compatible with `collapsed_text`."""
    model.enable_gradient_checkpointing(gradient_checkpointing_func=_checkpoint_with_processors)
