"""Deep JSCC encoder/decoder CNNs (Bourtsoulatze et al. 2019; Kurka & Gündüz 2020).

Encoder: five 5x5 convolutions, the first two with stride 2 (H x W -> H/4 x W/4), each but
the last followed by GDN (or BatchNorm) + PReLU; the last maps to ``c_out`` channels with
no activation (the channel normalises the power). Decoder: the mirror image with transposed
convolutions, inverse GDN (or BatchNorm) + PReLU, and a final ``tanh`` so images lie in
[-1, 1]. The latent has ``c_out * H/4 * W/4`` real symbols, i.e. bandwidth ratio
``k/n = c_out / 48`` for RGB images (see :func:`diffjscc.channel.bandwidth_ratio`).

``snr_adaptive=True`` adds an ADJSCC attention-feature module after every hidden block
(:class:`~diffjscc.encoders.snr_attention.SNRAttention`), so that ``forward(x, snr_db)`` adapts
one network to the channel SNR. The plain layers keep their names (``net.*``), and the
attention modules live beside them (``snr_attention.*``).
"""

from __future__ import annotations

from torch import Tensor, nn

from diffjscc.encoders.gdn import GDN
from diffjscc.encoders.snr_attention import SNRAttention, snr_vector
from diffjscc.errors import UserError

__all__ = ["NORM_KINDS", "JSCCDecoder", "JSCCEncoder", "latent_shape"]

NORM_KINDS: tuple[str, ...] = ("gdn", "batchnorm", "none")

_KERNEL = 5
_PAD = 2
_NUM_LAYERS = 5
_STRIDES = (2, 2, 1, 1, 1)  # encoder; the decoder uses the reverse order


def _check_positive(name: str, value: int) -> int:
    if isinstance(value, bool) or int(value) != value or value <= 0:
        raise UserError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _norm(kind: str, channels: int, inverse: bool) -> nn.Module:
    if kind == "gdn":
        return GDN(channels, inverse=inverse)
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise UserError(f"unknown norm {kind!r}; expected one of {', '.join(NORM_KINDS)}")


def _check_spatial(x: Tensor, name: str) -> None:
    if x.dim() != 4:
        raise UserError(f"{name} expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")


def _run_layers(net: nn.Sequential, attention: nn.ModuleList | None, x: Tensor, snr_db: float | Tensor | None,
                name: str) -> Tensor:
    """The layer stack, with the SNR attention (when present) after every hidden block's PReLU."""
    if attention is None:
        return net(x)
    if snr_db is None:
        raise ValueError(f"this {name} is SNR-adaptive: pass snr_db")
    snr = snr_vector(snr_db, x.shape[0], x.device)
    blocks = iter(attention)
    for layer in net:
        x = layer(x)
        if isinstance(layer, nn.PReLU):
            x = next(blocks)(x, snr)
    return x


def latent_shape(image_size: int, c_out: int) -> tuple[int, int, int]:
    """Latent shape ``(c_out, image_size // 4, image_size // 4)`` of :class:`JSCCEncoder`."""
    image_size = _check_positive("image_size", image_size)
    c_out = _check_positive("c_out", c_out)
    if image_size % 4 != 0:
        raise UserError(f"image_size must be divisible by 4, got {image_size}")
    return (c_out, image_size // 4, image_size // 4)


def _check_sizes(image_channels_name: str, image_channels: int, c_out: int, num_filters: int,
                 norm: str) -> tuple[int, int, int]:
    """The constructor arguments shared by the encoder and the decoder, checked."""
    if norm not in NORM_KINDS:
        raise UserError(f"unknown norm {norm!r}; expected one of {', '.join(NORM_KINDS)}")
    return (_check_positive(image_channels_name, image_channels), _check_positive("c_out", c_out),
            _check_positive("num_filters", num_filters))


class JSCCEncoder(nn.Module):
    """Deep JSCC encoder: (B, in_channels, H, W) in [-1, 1] -> (B, c_out, H/4, W/4).

    H and W must be divisible by 4. The output is unnormalised; the channel scales it to
    unit power per real symbol.
    """

    def __init__(
        self,
        in_channels: int = 3,
        c_out: int = 8,
        num_filters: int = 64,
        norm: str = "gdn",
        snr_adaptive: bool = False,
    ) -> None:
        super().__init__()
        in_channels, c_out, num_filters = _check_sizes("in_channels", in_channels, c_out, num_filters, norm)
        self.in_channels, self.c_out, self.num_filters, self.norm = (
            in_channels, c_out, num_filters, norm)
        layers: list[nn.Module] = []
        ch = in_channels
        for i, stride in enumerate(_STRIDES):
            last = i == _NUM_LAYERS - 1
            out = c_out if last else num_filters
            layers.append(nn.Conv2d(ch, out, _KERNEL, stride=stride, padding=_PAD))
            if not last:
                layers += [_norm(norm, out, inverse=False), nn.PReLU(out)]
            ch = out
        self.net = nn.Sequential(*layers)
        self.snr_attention = (nn.ModuleList(SNRAttention(num_filters) for _ in range(_NUM_LAYERS - 1))
                              if snr_adaptive else None)

    def forward(self, x: Tensor, snr_db: float | Tensor | None = None) -> Tensor:
        _check_spatial(x, "JSCCEncoder")
        if x.shape[-2] % 4 or x.shape[-1] % 4:
            raise UserError(f"image height/width must be divisible by 4, got {tuple(x.shape[-2:])}")
        return _run_layers(self.net, self.snr_attention, x, snr_db, "encoder")


class JSCCDecoder(nn.Module):
    """Deep JSCC decoder: (B, c_out, h, w) -> (B, out_channels, 4h, 4w) in [-1, 1] (tanh)."""

    def __init__(
        self,
        out_channels: int = 3,
        c_out: int = 8,
        num_filters: int = 64,
        norm: str = "gdn",
        snr_adaptive: bool = False,
    ) -> None:
        super().__init__()
        out_channels, c_out, num_filters = _check_sizes("out_channels", out_channels, c_out, num_filters, norm)
        self.out_channels, self.c_out, self.num_filters, self.norm = (
            out_channels, c_out, num_filters, norm)
        layers: list[nn.Module] = []
        ch = c_out
        for i, stride in enumerate(reversed(_STRIDES)):
            last = i == _NUM_LAYERS - 1
            out = out_channels if last else num_filters
            layers.append(nn.ConvTranspose2d(
                ch, out, _KERNEL, stride=stride, padding=_PAD, output_padding=stride - 1))
            if not last:
                layers += [_norm(norm, out, inverse=True), nn.PReLU(out)]
            ch = out
        layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)
        self.snr_attention = (nn.ModuleList(SNRAttention(num_filters) for _ in range(_NUM_LAYERS - 1))
                              if snr_adaptive else None)

    def forward(self, y: Tensor, snr_db: float | Tensor | None = None) -> Tensor:
        _check_spatial(y, "JSCCDecoder")
        return _run_layers(self.net, self.snr_attention, y, snr_db, "decoder")
