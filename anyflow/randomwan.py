"""A random-weight Wan2.1 folder in the real Diffusers format: `AutoencoderKLWan`, `UMT5EncoderModel`, a
T5 (Unigram/sentencepiece-style) tokenizer, `WanTransformer3DModel`, `UniPCMultistepScheduler`.

It exercises the real-model loading path without downloads (tests), and at `RandomWanSpec.wan_1_3b()`
sizes it gives a realistic-size model for GPU speed/memory benchmarks. The weights mean nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import T5TokenizerFast, UMT5Config, UMT5EncoderModel

_WORDS = "a an the red green blue cat dog car moving running left right up down on in of video slowly".split()


@dataclass(frozen=True, kw_only=True)
class RandomWanSpec:
    num_layers: int = 2
    num_attention_heads: int = 2
    attention_head_dim: int = 12
    ffn_dim: int = 32
    freq_dim: int = 16
    text_dim: int = 32          # UMT5 d_model
    text_layers: int = 1
    vae_base_dim: int = 8       # AutoencoderKLWan width (z_dim 16, 8x spatial, 4x temporal as in Wan2.1)
    seed: int = 0

    @classmethod
    def wan_1_3b(cls) -> "RandomWanSpec":
        """The Wan2.1-T2V-1.3B transformer shape (12 x 128 heads, ffn 8960, 30 layers, text_dim 4096)."""
        return cls(num_layers=30, num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, freq_dim=256,
                   text_dim=4096, text_layers=1, vae_base_dim=8)


def _tokenizer() -> T5TokenizerFast:
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(f"▁{w}", -1.0) for w in _WORDS]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0)


def build_random_wan_folder(out_dir: str | Path, spec: RandomWanSpec = RandomWanSpec()) -> Path:
    """Save a seeded random-weight WanPipeline folder at `out_dir`; return it."""
    tokenizer = _tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(spec.seed)
        text_encoder = UMT5EncoderModel(UMT5Config(
            vocab_size=len(tokenizer), d_model=spec.text_dim, d_kv=max(spec.text_dim // 4, 8), d_ff=2 * spec.text_dim,
            num_layers=spec.text_layers, num_heads=4, relative_attention_num_buckets=8, pad_token_id=0,
            eos_token_id=1, decoder_start_token_id=0))
        vae = AutoencoderKLWan(base_dim=spec.vae_base_dim, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                               temperal_downsample=[False, True, True])
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=spec.num_attention_heads,
            attention_head_dim=spec.attention_head_dim, in_channels=16, out_channels=16, text_dim=spec.text_dim,
            freq_dim=spec.freq_dim, ffn_dim=spec.ffn_dim, num_layers=spec.num_layers, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                       scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                         flow_shift=5.0))
    pipe.save_pretrained(out_dir)
    return Path(out_dir)
