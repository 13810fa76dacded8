"""Image-quality metrics for reports: PSNR, SSIM and MS-SSIM per image (8-bit, as saved PNGs).

Conventions (the ones JSCC papers use, so numbers are comparable):

- Images inside the package are in [-1, 1]; metrics are computed in [0, 1] after rounding to
  8-bit levels ``k / 255``, i.e. on exactly the pixels a saved PNG would hold.
- ``PSNR = 10 log10(data_range^2 / MSE)`` in dB, MSE over all C*H*W values of one image.
  The MSE is floored at ``1e-10`` so identical images give a finite 100 dB (for
  ``data_range=1``) instead of ``inf``, which would poison a mean.
- SSIM is Wang et al. (2004): Gaussian window sigma 1.5 (11 taps), K1 = 0.01, K2 = 0.03,
  population (not sample) covariance, per channel, averaged over channels and over the
  *valid* region only, as scikit-image's ``structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1)`` does.
- MS-SSIM (Wang, Simoncelli & Bovik 2003) with settings valid at 32x32, see
  :func:`ms_ssim_per_image`: torchmetrics' defaults (5 scales, 11-tap window) need >= 176 px.
- Dataset figures are the mean of per-image values (not the PSNR of the pooled MSE).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

__all__ = [
    "MSE_FLOOR",
    "SSIM_SIGMA",
    "SSIM_KERNEL_SIZE",
    "to_unit_range",
    "quantize_8bit",
    "to_uint8",
    "psnr_per_image",
    "ssim_per_image",
    "MS_SSIM_BETAS",
    "MS_SSIM_KERNEL_SIZE",
    "MS_SSIM_SIGMA",
    "ms_ssim_per_image",
]

MSE_FLOOR = 1e-10
"""Smallest MSE used in PSNR: identical images score ``10 log10(data_range^2 / 1e-10)`` dB."""

SSIM_SIGMA = 1.5
SSIM_KERNEL_SIZE = 11
"""Gaussian window: torchmetrics and scikit-image both use ``2 * int(3.5 * sigma + 0.5) + 1``
taps, i.e. 11 for sigma = 1.5."""


def to_unit_range(x: Tensor) -> Tensor:
    """Map package images from [-1, 1] to [0, 1], clamping overshoot from decoders/samplers."""
    return ((x + 1.0) * 0.5).clamp(0.0, 1.0)


def quantize_8bit(x_unit: Tensor) -> Tensor:
    """Round [0, 1] images to the 256 levels ``k / 255`` a saved 8-bit PNG would hold.

    Reported metrics use these values so they match what anyone re-measuring the saved
    images would get.
    """
    return torch.round(x_unit.clamp(0.0, 1.0) * 255.0) / 255.0


def to_uint8(x: Tensor) -> Tensor:
    """Package images in [-1, 1] -> uint8 in [0, 255], the pixels a saved PNG holds.

    ``to_uint8(x) / 255 == quantize_8bit(to_unit_range(x))``, so metrics on either agree.
    """
    return torch.round(to_unit_range(x.detach().float()) * 255.0).to(torch.uint8)


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"images must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.ndim != 4:
        raise ValueError(f"expected (B, C, H, W) images, got shape {tuple(x.shape)}")


def _as_float(x: Tensor) -> Tensor:
    """Float32 at least (uint8 / half inputs would lose precision in the sums)."""
    return x if x.dtype == torch.float64 else x.float()


def psnr_per_image(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """PSNR in dB of each image pair, shape (B,); MSE is floored at ``MSE_FLOOR``.

    ``x`` and ``y`` are (B, C, H, W) in [0, data_range]. The floor makes identical images
    give ``10 log10(data_range^2 / 1e-10)`` (100 dB for ``data_range=1``) rather than
    ``inf``, so dataset means stay finite.
    """
    _check_pair(x, y)
    x, y = _as_float(x), _as_float(y)
    psnr = peak_signal_noise_ratio(
        x, y, data_range=data_range, reduction="none", dim=(1, 2, 3)
    )
    cap = 10.0 * math.log10(data_range**2 / MSE_FLOOR)
    return psnr.clamp(max=cap)


def ssim_per_image(x: Tensor, y: Tensor) -> Tensor:
    """SSIM of each image pair, shape (B,), identical to scikit-image's Wang et al. settings.

    ``x`` and ``y`` are (B, C, H, W) in [0, 1]; H and W must be at least 11.

    Why the crop: torchmetrics >= 1.x reflect-pads the image and averages the SSIM map over
    all H*W pixels, while scikit-image averages only the interior where the 11x11 window
    fits (it crops ``(11 - 1) // 2 = 5`` px per side). On 32x32 CIFAR images the two
    differ by up to ~0.16. We take torchmetrics' full SSIM map
    (``return_full_image=True``) and average its interior ourselves; inside the crop no
    padded pixel is touched, so the result equals scikit-image to float precision.
    """
    _check_pair(x, y)
    pad = (SSIM_KERNEL_SIZE - 1) // 2
    if x.shape[-1] < SSIM_KERNEL_SIZE or x.shape[-2] < SSIM_KERNEL_SIZE:
        raise ValueError(
            f"SSIM needs images of at least {SSIM_KERNEL_SIZE}x{SSIM_KERNEL_SIZE} px, "
            f"got {tuple(x.shape[-2:])}"
        )
    x, y = _as_float(x), _as_float(y)
    _, ssim_map = structural_similarity_index_measure(
        x,
        y,
        gaussian_kernel=True,
        sigma=SSIM_SIGMA,
        kernel_size=SSIM_KERNEL_SIZE,
        data_range=1.0,
        reduction="none",
        return_full_image=True,
    )
    return ssim_map[..., pad:-pad, pad:-pad].mean(dim=(1, 2, 3))


_WANG_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_BETAS = tuple(b / sum(_WANG_BETAS[:3]) for b in _WANG_BETAS[:3])
"""Exponents of the 3 scales: Wang et al.'s first three (0.0448, 0.2856, 0.3001) renormalised to
sum to 1, i.e. (0.0711, 0.4530, 0.4760), so a uniform similarity s at every scale gives s."""
MS_SSIM_SIGMA = 1.0
MS_SSIM_KERNEL_SIZE = 2 * int(3.5 * MS_SSIM_SIGMA + 0.5) + 1
"""Gaussian window of MS-SSIM: sigma = 1 px, 9 taps. torchmetrics sizes a Gaussian window from
sigma alone (2 * int(3.5 sigma + 0.5) + 1) and ignores ``kernel_size``; we state the size it uses."""


def ms_ssim_per_image(x: Tensor, y: Tensor) -> Tensor:
    """MS-SSIM of each image pair, shape (B,), with settings that are valid on 32x32 images.

    ``x`` and ``y`` are (B, C, H, W) in [0, 1], H and W >= 32.

    ``MS-SSIM = l_M^{b_M} * prod_{j=1..M} cs_j^{b_j}`` over M scales, each a 2x2 average-pool
    of the previous one. torchmetrics' default (M = 5 scales, the 11-tap sigma = 1.5 window,
    Wang et al.'s five exponents) rejects images under 176 px, and at 32 px its 5th scale
    would be 2x2 pixels. We use M = 3 scales (32, 16, 8 px) with Wang et al.'s first three
    exponents renormalised to sum 1 (:data:`MS_SSIM_BETAS`) and a sigma = 1 Gaussian window
    of 9 taps (:data:`MS_SSIM_SIGMA`, :data:`MS_SSIM_KERNEL_SIZE`); K1 = 0.01, K2 = 0.03,
    data range 1. As torchmetrics computes it: ``cs_j`` (j < M) is the mean over the valid
    region (windows inside the image) of all channels; the coarsest scale's ``l_M cs_M`` is the
    mean over the whole 8x8 image with reflect padding, where a 9-tap window has no valid region.
    Negative terms are clamped at 0 (``normalize="relu"``) so powers stay real on very bad
    reconstructions. ``tests/test_metrics.py`` checks this against a SciPy implementation.
    """
    _check_pair(x, y)
    if min(x.shape[-2:]) < 32:
        raise ValueError(f"MS-SSIM (3 scales) needs images of at least 32x32 px, got {tuple(x.shape[-2:])}")
    x, y = _as_float(x), _as_float(y)
    return multiscale_structural_similarity_index_measure(
        x,
        y,
        gaussian_kernel=True,
        sigma=MS_SSIM_SIGMA,
        # read only by torchmetrics' image-size check, which would refuse 32 px for 9; the
        # Gaussian window itself is sized from sigma (MS_SSIM_KERNEL_SIZE taps)
        kernel_size=7,
        data_range=1.0,
        betas=MS_SSIM_BETAS,
        normalize="relu",
        reduction="none",
    )

