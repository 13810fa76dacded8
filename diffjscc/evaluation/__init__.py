"""Evaluation: per-image PSNR/SSIM and their running means (``metrics``), report figures
(``figures``, imported explicitly so plotting code loads only when plotting)."""

from diffjscc.evaluation.metrics import (
    MetricAccumulator,
    psnr_per_image,
    quantize_8bit,
    ssim_per_image,
    to_unit_range,
)

__all__ = ["MetricAccumulator", "psnr_per_image", "quantize_8bit", "ssim_per_image", "to_unit_range"]
