""""Half UNet" JSCC encoder: the down path of a diffusers-style UNet without time embedding.

Layout (like guided-diffusion's ``EncoderUNetModel`` with adaptive pooling):
``conv_in 3x3 -> [DownBlock2D | AttnDownBlock2D] x len(channel_mult)
-> GroupNorm -> SiLU -> conv 1x1 (c_out) -> AdaptiveAvgPool2d(latent_size)``.

Block ``i`` has ``num_channels * channel_mult[i]`` channels and runs at resolution
``image_size / 2**i``; it is an ``AttnDownBlock2D`` when that resolution is in
``attention_resolutions`` (pixels, e.g. ``(16, 8)``), else a ``DownBlock2D``. A block halves
the resolution only while it is above ``latent_size`` (and never the last block), so with the
defaults the features stop at 8x8 and every transmitted symbol carries its own value; pooling
only acts when the down path ends above ``latent_size``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from diffjscc.errors import UserError

__all__ = ["HalfUNetEncoder", "group_count"]

_NORM_EPS = 1e-5


def group_count(*channels: int, max_groups: int = 32) -> int:
    """Largest number of GroupNorm groups ``<= max_groups`` dividing every given channel count."""
    g = math.gcd(*[int(c) for c in channels])
    for n in range(min(max_groups, g), 0, -1):
        if g % n == 0:
            return n
    return 1


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or int(value) != value or value <= 0:
        raise UserError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class HalfUNetEncoder(nn.Module):
    """Encoder half of a UNet: (B, 3, H, W) in [-1, 1] -> (B, c_out, latent_size, latent_size).

    Same contract as :class:`~diffjscc.encoders.deep_jscc.JSCCEncoder` (unnormalised latent,
    the channel scales it to unit power per real symbol). ``image_size`` is only used to
    decide which blocks get self-attention; other input sizes are accepted.
    """

    def __init__(
        self,
        image_size: int = 32,
        num_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 3,
        attention_resolutions: Sequence[int] = (16, 8),
        num_heads: int = 4,
        dropout: float = 0.0,
        c_out: int = 8,
        latent_size: int = 8,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        image_size = _positive_int("image_size", image_size)
        num_channels = _positive_int("num_channels", num_channels)
        num_res_blocks = _positive_int("num_res_blocks", num_res_blocks)
        num_heads = _positive_int("num_heads", num_heads)
        c_out = _positive_int("c_out", c_out)
        latent_size = _positive_int("latent_size", latent_size)
        in_channels = _positive_int("in_channels", in_channels)
        mults = tuple(_positive_int("channel_mult entry", m) for m in channel_mult)
        if not mults:
            raise UserError("channel_mult must not be empty")
        if not 0.0 <= float(dropout) < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {dropout!r}")
        attn_res = {int(r) for r in attention_resolutions}

        self.image_size = image_size
        self.c_out = c_out
        self.latent_size = latent_size

        from diffusers.models.unets.unet_2d_blocks import get_down_block  # lazily: see diffjscc.diffusion.unet

        self.conv_in = nn.Conv2d(in_channels, num_channels, kernel_size=3, padding=1)
        blocks: list[nn.Module] = []
        self.block_types: list[str] = []
        ch = num_channels
        res = image_size
        for i, mult in enumerate(mults):
            out_ch = num_channels * mult
            is_final = i == len(mults) - 1
            downsample = not is_final and res > latent_size
            use_attn = res in attn_res
            if use_attn and out_ch % num_heads != 0:
                raise UserError(
                    f"num_heads={num_heads} must divide the attention block width {out_ch}"
                )
            block_type = "AttnDownBlock2D" if use_attn else "DownBlock2D"
            blocks.append(
                get_down_block(
                    block_type,
                    num_layers=num_res_blocks,
                    in_channels=ch,
                    out_channels=out_ch,
                    temb_channels=None,  # no time embedding: ResnetBlock2D skips time_emb_proj
                    add_downsample=downsample,
                    resnet_eps=_NORM_EPS,
                    resnet_act_fn="silu",
                    resnet_groups=group_count(ch, out_ch),
                    attention_head_dim=out_ch // num_heads,
                    downsample_padding=1,
                    dropout=float(dropout),
                )
            )
            self.block_types.append(block_type)
            ch = out_ch
            if downsample:
                res = (res + 1) // 2  # 3x3 stride-2 conv with padding 1: ceil(res / 2)
        self.down_blocks = nn.ModuleList(blocks)
        self.out = nn.Sequential(
            nn.GroupNorm(group_count(ch), ch, eps=_NORM_EPS),
            nn.SiLU(),
            nn.Conv2d(ch, c_out, kernel_size=1),
            nn.AdaptiveAvgPool2d(latent_size),
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise UserError(f"HalfUNetEncoder expects a (B, C, H, W) tensor, got {tuple(x.shape)}")
        h = self.conv_in(x)
        for block in self.down_blocks:
            h, _ = block(h, temb=None)
        return self.out(h)
