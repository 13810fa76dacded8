"""The conditional denoiser: diffusers' UNet2DModel plus our conditioning on the received latent.

Three ways to condition on the received symbols y (``conditioning`` in the config):

* ``embed`` — the original Diff_JSCC receiver: y (a flat vector of ``latent_dim`` reals) goes
  through a small MLP to the timestep-embedding width and is added to the timestep embedding.
  diffusers' ``class_embed_type="identity"`` adds whatever vector we pass as ``class_labels``
  to the timestep embedding, which is exactly that hook. One global vector must carry where
  everything is in the image: the network learns that slowly.
* ``spatial`` — additionally, y keeps its (c_out, H/4, W/4) layout: a small convolutional
  lifter upsamples it to image-sized feature maps that are concatenated to x_t at the UNet
  input, so every pixel's denoiser sees the symbols that describe its neighbourhood.
* ``residual`` — as ``spatial``, plus the Deep JSCC decoder's estimate x̂ (3 channels) is
  concatenated too; :class:`~diffjscc.system.TransmissionSystem` then diffuses the residual
  x − x̂ (scaled), so an untrained denoiser already starts from Deep JSCC's quality.

An optional class label and, for SNR-adaptive models, the channel SNR add learned
embeddings to the timestep embedding the same way. :meth:`ConditionalUNet.condition` builds
the conditioning once per received batch (samplers reuse it at every step).

Layout mirrors improved-diffusion's 32×32 UNet: widths ``num_channels·channel_mult``,
``num_res_blocks`` residual blocks per level, self-attention at the listed resolutions,
scale-shift (FiLM) timestep conditioning. ``num_heads`` is the number of attention heads at
the first attention level: diffusers' UNet2DModel takes one per-head width for all its attention
layers (``attention_head_dim``), which we set to that level's width / ``num_heads``, so a level
k times wider, and the middle block if it is, has k·``num_heads`` heads (improved-diffusion has
``num_heads`` everywhere; the two agree when every attention level and the middle block have one
width, as in every shipped model and config). The output is the config's ``prediction`` target
(ε, x₀ or v; see :mod:`diffjscc.diffusion.gaussian`), 3 channels, plus 3 for the variance
interpolation when the variance is learned (6 in all).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from diffjscc.config import CONDITIONINGS
from diffjscc.encoders.snr_attention import SNR_SCALE_DB, snr_vector

ESTIMATE_CHANNELS = 3  # the Deep JSCC estimate x̂ concatenated in ``residual`` conditioning


def import_diffusers() -> None:
    """Import diffusers now rather than when the first UNet is built.

    The commands that may run as one rank of torchrun / mpiexec (``train``, ``evaluate``) call
    this before their process group starts, which is when every process imported it before the
    import became lazy. With the import inside a rank's run instead, a gloo rank aborted at exit
    ("terminate called without an active exception") in 2 of 3 full test runs; the cause was not
    found, and this ordering never showed it.
    """
    import diffusers  # noqa: F401


@dataclass
class Condition:
    """What the denoiser is conditioned on, computed once per received batch."""

    vector: torch.Tensor | None  # added to the timestep embedding (B, emb_dim)
    maps: torch.Tensor | None  # concatenated to x_t (B, C, H, W)


class LatentLifter(nn.Module):
    """Received symbols (B, c, H/4, W/4) → feature maps (B, out, H, W): two ×2 nearest
    upsamplings, each followed by a 3×3 convolution, so that maps line up with pixels."""

    def __init__(self, latent_channels: int, width: int, out_channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(latent_channels, width, 3, padding=1), nn.SiLU(), nn.Upsample(scale_factor=2),
            nn.Conv2d(width, width, 3, padding=1), nn.SiLU(), nn.Upsample(scale_factor=2),
            nn.Conv2d(width, out_channels, 3, padding=1))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.net(latent)


class ConditionalUNet(nn.Module):
    """The denoising UNet (ε, x₀ or v prediction) conditioned on the received latent (and
    optionally a class label / the SNR).

    ``latent_channels`` (the latent's c_out) is needed by ``spatial`` and ``residual``
    conditioning, which read y as (c_out, image_size/4, image_size/4) maps.
    """

    def __init__(self, image_size: int = 32, in_channels: int = 3, num_channels: int = 128,
                 channel_mult: tuple[int, ...] = (1, 2, 2, 2), num_res_blocks: int = 3,
                 attention_resolutions: tuple[int, ...] = (16, 8), num_heads: int = 4,
                 dropout: float = 0.0, use_scale_shift_norm: bool = True, learn_sigma: bool = False,
                 latent_dim: int | None = None, num_classes: int | None = None,
                 conditioning: str = "embed", latent_channels: int | None = None,
                 snr_adaptive: bool = False) -> None:
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {conditioning!r}")
        spatial = conditioning != "embed" and latent_dim is not None
        if spatial and (latent_channels is None or latent_dim % latent_channels):
            raise ValueError(f"{conditioning!r} conditioning needs latent_channels dividing latent_dim")
        widths = tuple(num_channels * m for m in channel_mult)
        resolutions = [image_size // 2**i for i in range(len(channel_mult))]
        use_attention = [res in attention_resolutions for res in resolutions]
        down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in use_attention)
        up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(use_attention))
        # one per-head width for every attention layer (see the module docstring): num_heads at the first
        attn_widths = [w for w, a in zip(widths, use_attention) if a] or [widths[-1]]
        self.emb_dim = 4 * num_channels
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.conditioning = conditioning
        self.image_size = image_size
        self.latent_channels = latent_channels
        lift_channels = num_channels if spatial else 0
        estimate_channels = ESTIMATE_CHANNELS if spatial and conditioning == "residual" else 0
        conditional = latent_dim is not None or num_classes is not None or snr_adaptive
        # imported here, not at the top: diffusers (which imports torch._dynamo) takes ~2.9 s to
        # import on a 2-core CPU machine, which a process that only runs Deep JSCC never needs
        from diffusers import UNet2DModel

        self.unet = UNet2DModel(
            sample_size=image_size,
            in_channels=in_channels + lift_channels + estimate_channels,
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
        self.snr_embedding = (
            nn.Sequential(nn.Linear(1, self.emb_dim), nn.SiLU(), nn.Linear(self.emb_dim, self.emb_dim))
            if snr_adaptive else None
        )
        self.lifter = LatentLifter(latent_channels, num_channels, lift_channels) if spatial else None
        self.uses_estimate = estimate_channels > 0

    def condition(self, latent: torch.Tensor | None = None, class_labels: torch.Tensor | None = None,
                  snr_db: float | torch.Tensor | None = None, estimate: torch.Tensor | None = None,
                  batch: int | None = None, keep: torch.Tensor | None = None) -> Condition:
        """Everything the denoiser is conditioned on, for a batch of received latents.

        ``latent`` is y, flat (B, latent_dim) or in its (B, c_out, h, w) layout; ``estimate``
        the Deep JSCC reconstruction (``residual`` conditioning); ``snr_db`` the channel SNR
        (SNR-adaptive models). ``batch`` sizes an unconditional batch. ``keep`` (B,), 1 or 0 per
        image: where 0, everything that comes from y (its embedding, its maps, the estimate) is
        zeroed — the dropped condition of classifier-free guidance; the SNR and class stay.
        """
        if latent is not None:
            batch, device, dtype = latent.shape[0], latent.device, latent.dtype
        else:
            param = next(self.parameters())
            device, dtype = param.device, param.dtype
        vector = None
        if self.latent_proj is not None or self.class_embedding is not None or self.snr_embedding is not None:
            vector = torch.zeros(batch, self.emb_dim, device=device, dtype=dtype)
        if keep is not None:
            keep = keep.to(device=device, dtype=dtype)
        if self.latent_proj is not None:
            if latent is None:
                raise ValueError("this UNet is conditioned on the received latent; pass latent=")
            embedded = self.latent_proj(latent.flatten(1).to(dtype))
            vector = vector + (embedded if keep is None else keep[:, None] * embedded)
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("this UNet is class-conditional; pass class_labels=")
            vector = vector + self.class_embedding(class_labels)
        if self.snr_embedding is not None:
            if snr_db is None:
                raise ValueError("this UNet is SNR-adaptive; pass snr_db=")
            snr = snr_vector(snr_db, batch, device)[:, None] / SNR_SCALE_DB
            vector = vector + self.snr_embedding(snr.to(dtype))
        maps = None
        if self.lifter is not None:
            side = self.image_size // 4
            maps = self.lifter(latent.reshape(batch, self.latent_channels, side, side).to(dtype))
            if self.uses_estimate:
                if estimate is None:
                    raise ValueError("residual conditioning needs the Deep JSCC estimate; pass estimate=")
                maps = torch.cat([maps, estimate.to(dtype)], dim=1)
            if keep is not None:
                maps = keep[:, None, None, None] * maps
        return Condition(vector, maps)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, latent: torch.Tensor | None = None,
                class_labels: torch.Tensor | None = None, snr_db: float | torch.Tensor | None = None,
                estimate: torch.Tensor | None = None, condition: Condition | None = None,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        """Network output for x_t; pass a prepared ``condition`` or what :meth:`condition` takes."""
        if condition is None:
            condition = self.condition(latent, class_labels, snr_db, estimate, batch=x.shape[0], keep=keep)
        if condition.maps is not None:
            x = torch.cat([x, condition.maps.to(x.dtype)], dim=1)
        return self.unet(x, timesteps, class_labels=condition.vector).sample
