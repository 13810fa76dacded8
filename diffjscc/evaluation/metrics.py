"""Image-quality metrics for reports: PSNR and SSIM per image, and a running mean over batches.

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
- Dataset figures are the mean of per-image values (not the PSNR of the pooled MSE).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

__all__ = [
    "MSE_FLOOR",
    "SSIM_SIGMA",
    "SSIM_KERNEL_SIZE",
    "to_unit_range",
    "quantize_8bit",
    "psnr_per_image",
    "ssim_per_image",
    "MetricAccumulator",
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


class MetricAccumulator:
    """Running mean of per-image PSNR (dB) and SSIM over any number of batches.

    Each image counts once whatever the batch size, so splitting a dataset into batches
    does not change the result. The PSNR reported is the mean of per-image PSNRs (the
    field's convention), not the PSNR of the dataset-wide MSE.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        self.psnr_sum = 0.0
        self.ssim_sum = 0.0
        self.n = 0

    @torch.no_grad()
    def update(self, source: Tensor, reconstruction: Tensor) -> None:
        """Add a batch of (B, 3, H, W) images in [-1, 1], measured on their 8-bit versions."""
        x = quantize_8bit(to_unit_range(_as_float(source.detach())))
        y = quantize_8bit(to_unit_range(_as_float(reconstruction.detach())))
        self.psnr_sum += float(psnr_per_image(x, y).double().sum())
        self.ssim_sum += float(ssim_per_image(x, y).double().sum())
        self.n += x.shape[0]

    def compute(self) -> dict[str, float | int]:
        """Means so far: ``{"psnr": dB, "ssim": unitless, "n": images}``; NaN means if n == 0."""
        if self.n == 0:
            return {"psnr": math.nan, "ssim": math.nan, "n": 0}
        return {"psnr": self.psnr_sum / self.n, "ssim": self.ssim_sum / self.n, "n": self.n}
