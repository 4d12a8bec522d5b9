"""Toy text stack: word-level tokenizer, frozen seeded UMT5, Wan prompt convention."""

import torch

from anyflow import toyworld
from anyflow.text import TextEncoderSpec, build_text_encoder, build_tokenizer


def test_tokenizer_is_word_level_with_eos():
    tok = build_tokenizer(toyworld.vocabulary())
    ids = tok("a red circle moving left on a black background").input_ids
    assert len(ids) == 10 and ids[-1] == tok.eos_token_id          # 9 words + </s>
    assert tok("a purple circle").input_ids[1] == tok.unk_token_id  # unknown word -> <unk>
    padded = tok(["a red circle"], padding="max_length", max_length=16, return_tensors="pt")
    assert padded.input_ids.shape == (1, 16) and int(padded.attention_mask.sum()) == 4


def test_every_toy_word_is_in_vocabulary():
    tok = build_tokenizer(toyworld.vocabulary())
    for domain in ("base", "downstream"):
        for cond in toyworld.attribute_grid(domain):
            assert tok.unk_token_id not in tok(cond.prompt).input_ids, cond.prompt


def test_text_encoder_is_seeded_and_frozen():
    spec = TextEncoderSpec(d_model=32, num_layers=1, num_heads=2, d_ff=64)
    a, b = build_text_encoder(40, spec), build_text_encoder(40, spec)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not any(p.requires_grad for p in a.parameters()) and not a.training
    other = build_text_encoder(40, TextEncoderSpec(d_model=32, num_layers=1, num_heads=2, d_ff=64, seed=1))
    assert not torch.equal(next(a.parameters()), next(other.parameters()))
