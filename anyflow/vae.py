"""Linear patch VAE for the toy world: PCA on spatio-temporal patches, with the AutoencoderKLWan interface.

The Wan pipelines only touch `config.{z_dim, latents_mean, latents_std, scale_factor_spatial,
scale_factor_temporal}`, `dtype`, `_encode(x) -> moments` and `decode(z, return_dict=False)[0]`, so a
linear autoencoder that offers exactly those loads into `WanPipeline`/`AnyFlowPipeline` folders.

Time follows Wan's causal convention: F = T*(L-1) + 1 pixel frames become L latent frames; latent frame 0
encodes pixel frame 0 alone (repeated T times, like Wan's causal padding), latent frame l >= 1 encodes
pixel frames 1+T(l-1) .. T*l. Each latent pixel is the PCA projection of one T x p x p x 3 patch.

Shapes: x [B, 3, F, H, W] in [-1, 1] (pixel space); z [B, C, L, H/p, W/p] (C = z_dim).
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

_LOGVAR = -30.0  # the posterior is a point mass: encode() samples return the mean


class LinearPatchVAE(ModelMixin, ConfigMixin):
    """PCA autoencoder over T x p x p x 3 patches (see module docstring)."""

    @register_to_config
    def __init__(
        self,
        z_dim: int = 16,
        scale_factor_spatial: int = 4,
        scale_factor_temporal: int = 2,
        latents_mean: list[float] | None = None,
        latents_std: list[float] | None = None,
    ):
        super().__init__()
        dim = scale_factor_temporal * scale_factor_spatial**2 * 3
        if z_dim > dim:
            raise ValueError(f"LinearPatchVAE: z_dim={z_dim} exceeds the patch dimension {dim}")
        self.register_to_config(latents_mean=latents_mean or [0.0] * z_dim, latents_std=latents_std or [1.0] * z_dim)
        # Frozen parameters (not buffers) so ModelMixin.dtype/device and safetensors saving just work.
        self.components = nn.Parameter(torch.zeros(z_dim, dim), requires_grad=False)  # (C, D) orthonormal rows
        self.patch_mean = nn.Parameter(torch.zeros(dim), requires_grad=False)         # (D,)

    # --- patch layout -------------------------------------------------------------------------
    def _to_patches(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, F, H, W] -> [B, L, H/p, W/p, D] with the causal temporal grouping."""
        T, p = self.config.scale_factor_temporal, self.config.scale_factor_spatial
        B, _, F, H, W = x.shape
        if (F - 1) % T or H % p or W % p:
            raise ValueError(f"LinearPatchVAE: video {tuple(x.shape)} needs F = {T}k+1 and H, W divisible by {p}")
        x = torch.cat([x[:, :, :1].expand(-1, -1, T, -1, -1), x[:, :, 1:]], dim=2)  # (B, 3, T*L, H, W)
        L = x.shape[2] // T
        x = x.reshape(B, 3, L, T, H // p, p, W // p, p)
        return x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(B, L, H // p, W // p, -1)

    def _from_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Inverse of `_to_patches`; latent frame 0's T copies of pixel frame 0 are averaged."""
        T, p = self.config.scale_factor_temporal, self.config.scale_factor_spatial
        B, L, h, w, _ = patches.shape
        x = patches.reshape(B, L, h, w, T, p, p, 3).permute(0, 7, 1, 4, 2, 5, 3, 6)
        x = x.reshape(B, 3, L * T, h * p, w * p)
        return torch.cat([x[:, :, :T].mean(dim=2, keepdim=True), x[:, :, T:]], dim=2)

    # --- AutoencoderKLWan interface -------------------------------------------------------------
    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """Moments [B, 2C, L, H/p, W/p]: (mean, logvar) as AutoencoderKLWan returns them."""
        patches = self._to_patches(x.to(self.dtype))
        mu = (patches - self.patch_mean) @ self.components.T          # (B, L, h, w, C)
        mu = mu.permute(0, 4, 1, 2, 3)                                 # (B, C, L, h, w)
        return torch.cat([mu, torch.full_like(mu, _LOGVAR)], dim=1)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        posterior = DiagonalGaussianDistribution(self._encode(x))
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        patches = z.to(self.dtype).permute(0, 2, 3, 4, 1) @ self.components + self.patch_mean
        video = self._from_patches(patches).clamp(-1, 1)
        return DecoderOutput(sample=video) if return_dict else (video,)

    # --- closed-form fit ------------------------------------------------------------------------
    @classmethod
    def fit(cls, videos: np.ndarray, z_dim: int = 16, spatial: int = 4, temporal: int = 2) -> "LinearPatchVAE":
        """Fit PCA on videos [N, F, H, W, 3] in [0, 1]; set latents_mean/std so normalised latents are ~N(0, 1)."""
        vae = cls(z_dim=z_dim, scale_factor_spatial=spatial, scale_factor_temporal=temporal)
        x = pixels_to_vae(videos)
        patches = vae._to_patches(x).reshape(-1, vae.components.shape[1]).double()
        mean = patches.mean(dim=0)
        cov = (patches - mean).T @ (patches - mean) / (len(patches) - 1)
        eigvals, eigvecs = torch.linalg.eigh(cov)                      # ascending
        vae.components.data = eigvecs[:, -z_dim:].flip(-1).T.float().contiguous()
        vae.patch_mean.data = mean.float()
        mu = vae._encode(x)[:, :z_dim]
        vae.register_to_config(
            latents_mean=mu.mean(dim=(0, 2, 3, 4)).tolist(), latents_std=mu.std(dim=(0, 2, 3, 4)).tolist()
        )
        return vae


def pixels_to_vae(videos: np.ndarray) -> torch.Tensor:
    """[N, F, H, W, 3] in [0, 1] (numpy) -> [N, 3, F, H, W] in [-1, 1] (torch), the VAE's input."""
    return torch.from_numpy(np.ascontiguousarray(videos)).float().permute(0, 4, 1, 2, 3) * 2 - 1


def vae_to_pixels(x: torch.Tensor) -> np.ndarray:
    """Inverse of `pixels_to_vae`."""
    return ((x.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1).cpu().numpy()
