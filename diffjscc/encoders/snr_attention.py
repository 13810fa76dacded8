"""SNR attention: the ADJSCC attention-feature module (Xu et al. 2021) that makes one network
serve every channel SNR.

A feature map (B, C, H, W) is pooled to its channel means; the channel SNR (dB) is appended;
two fully connected layers map that context to one sigmoid gain per channel, which rescales
the features. At low SNR the network can so shift its features (and, in the encoder, its
power allocation across latent channels) towards robustness, at high SNR towards detail —
what separately trained single-SNR models do, without keeping one model per SNR.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["SNR_SCALE_DB", "SNRAttention", "snr_vector"]

SNR_SCALE_DB = 20.0  # SNRs enter the networks as snr_db / 20: order one over the usual 0–20 dB


def snr_vector(snr_db: float | Tensor, batch: int, device: torch.device | str) -> Tensor:
    """Per-sample SNR in dB as a float32 (B,) tensor from a float, a 0-d or a (B,) tensor."""
    snr = torch.as_tensor(snr_db, dtype=torch.float32, device=device)
    if snr.dim() == 0:
        snr = snr.expand(batch)
    if snr.shape != (batch,):
        raise ValueError(f"snr_db must be a number or a ({batch},) tensor, got shape {tuple(snr.shape)}")
    return snr


class SNRAttention(nn.Module):
    """Channel-wise gains from (pooled features, SNR): ADJSCC's attention-feature (AF) module.

    The gain is ``2·sigmoid(·)`` with the last layer zero-initialised, so every gain starts at
    exactly 1: an untrained adaptive network computes what the plain one does, and learns the
    SNR dependence on top. (ADJSCC's plain sigmoid starts at 0.5 per module — 1/16 after the
    four modules of a Deep JSCC CNN — which measurably slowed training here.)
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 8)
        self.gate = nn.Sequential(nn.Linear(channels + 1, hidden), nn.ReLU(), nn.Linear(hidden, channels))
        nn.init.zeros_(self.gate[-1].weight)
        nn.init.zeros_(self.gate[-1].bias)

    def forward(self, features: Tensor, snr_db: Tensor) -> Tensor:
        context = torch.cat([features.mean(dim=(2, 3)), (snr_db / SNR_SCALE_DB).to(features.dtype)[:, None]], dim=1)
        return features * (2 * torch.sigmoid(self.gate(context)))[:, :, None, None]
