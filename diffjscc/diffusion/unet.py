"""The conditional denoiser: diffusers' UNet2DModel plus our conditioning on the received latent.

Conditioning follows the original Diff_JSCC receiver ("embed"): the received channel symbols
(a flat vector of ``latent_dim`` reals) go through a small MLP to the timestep-embedding width
and are added to the timestep embedding; an optional class label adds a learned embedding the
same way. diffusers' ``class_embed_type="identity"`` adds whatever vector we pass as
``class_labels`` to the timestep embedding, which is exactly that hook.

Layout mirrors improved-diffusion's 32×32 UNet: widths ``num_channels·channel_mult``,
``num_res_blocks`` residual blocks per level, self-attention at the listed resolutions,
scale-shift (FiLM) timestep conditioning, 6 output channels (ε and the variance
interpolation v) when the variance is learned.
"""

from __future__ import annotations

import torch
from torch import nn

from diffusers import UNet2DModel


class ConditionalUNet(nn.Module):
    """ε-prediction UNet conditioned on the received latent (and optionally a class label)."""

    def __init__(self, image_size: int = 32, in_channels: int = 3, num_channels: int = 128,
                 channel_mult: tuple[int, ...] = (1, 2, 2, 2), num_res_blocks: int = 3,
                 attention_resolutions: tuple[int, ...] = (16, 8), num_heads: int = 4,
                 dropout: float = 0.0, use_scale_shift_norm: bool = True, learn_sigma: bool = False,
                 latent_dim: int | None = None, num_classes: int | None = None) -> None:
        super().__init__()
        widths = tuple(num_channels * m for m in channel_mult)
        resolutions = [image_size // 2**i for i in range(len(channel_mult))]
        use_attention = [res in attention_resolutions for res in resolutions]
        down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in use_attention)
        up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(use_attention))
        attn_widths = [w for w, a in zip(widths, use_attention) if a] or [widths[-1]]
        self.emb_dim = 4 * num_channels
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        conditional = latent_dim is not None or num_classes is not None
        self.unet = UNet2DModel(
            sample_size=image_size,
            in_channels=in_channels,
            out_channels=self.out_channels,
            down_block_types=down,
            up_block_types=up,
            block_out_channels=widths,
            layers_per_block=num_res_blocks,
            attention_head_dim=attn_widths[0] // num_heads,
            norm_num_groups=min(32, num_channels),
            dropout=dropout,
            resnet_time_scale_shift="scale_shift" if use_scale_shift_norm else "default",
            class_embed_type="identity" if conditional else None,
        )
        self.latent_proj = (
            nn.Sequential(nn.Linear(latent_dim, self.emb_dim), nn.SiLU(), nn.Linear(self.emb_dim, self.emb_dim))
            if latent_dim is not None else None
        )
        self.class_embedding = nn.Embedding(num_classes, self.emb_dim) if num_classes is not None else None

    def condition(self, batch: int, latent: torch.Tensor | None, class_labels: torch.Tensor | None,
                  device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
        """The vector added to the timestep embedding, or None for an unconditional model."""
        if self.latent_proj is None and self.class_embedding is None:
            return None
        cond = torch.zeros(batch, self.emb_dim, device=device, dtype=dtype)
        if self.latent_proj is not None:
            if latent is None:
                raise ValueError("this UNet is conditioned on the received latent; pass latent=")
            cond = cond + self.latent_proj(latent.flatten(1).to(dtype))
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("this UNet is class-conditional; pass class_labels=")
            cond = cond + self.class_embedding(class_labels)
        return cond

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, latent: torch.Tensor | None = None,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        cond = self.condition(x.shape[0], latent, class_labels, x.device, x.dtype)
        return self.unet(x, timesteps, class_labels=cond).sample
