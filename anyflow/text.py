"""Toy text stack: a word-level tokenizer and a tiny frozen UMT5 encoder, in the classes Wan2.1 uses.

The tokenizer is a `tokenizers` WordLevel model wrapped in `PreTrainedTokenizerFast` (appends </s> like
T5); the encoder is a seeded random-init `UMT5EncoderModel`. Prompt encoding goes through diffusers'
own `WanPipeline.encode_prompt`, so training embeddings match inference exactly (cut to the real
tokens, zero-padded to `max_sequence_length`; the unconditional branch is the empty prompt).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2, as in T5


@dataclass(frozen=True, kw_only=True)
class TextEncoderSpec:
    """Size of the tiny UMT5 encoder (d_model is the transformer's text_dim)."""

    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    d_ff: int = 128
    seed: int = 0                   # random init; the encoder stays frozen
    max_sequence_length: int = 512  # WanPipeline's default: training must pad to the same length


def build_tokenizer(vocabulary: list[str]) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over `vocabulary`; unknown words map to <unk>, every sequence ends in </s>."""
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *vocabulary])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=4096
    )


def build_text_encoder(vocab_size: int, spec: TextEncoderSpec) -> UMT5EncoderModel:
    """Seeded random-init UMT5 encoder, frozen (eval mode, no grad)."""
    config = UMT5Config(
        vocab_size=vocab_size, d_model=spec.d_model, d_kv=spec.d_model // spec.num_heads, d_ff=spec.d_ff,
        num_layers=spec.num_layers, num_heads=spec.num_heads, relative_attention_num_buckets=8,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, dropout_rate=0.0,
    )
    with torch.random.fork_rng():
        torch.manual_seed(spec.seed)
        encoder = UMT5EncoderModel(config)
    return encoder.eval().requires_grad_(False)
