"""Evaluation: per-image PSNR/SSIM/MS-SSIM (``metrics``); the protocol
of ``diffjscc evaluate`` (``protocol``: SNR sweeps, result files) with FID (``fid``,
``inception``), LPIPS (``lpips``) and the digital baseline (``digital``); ``transmit`` for one
image of any size; report figures (``figures``). Submodules other than ``metrics`` are imported
explicitly, so plotting and codec code loads only when used."""

from diffjscc.evaluation.metrics import (
    psnr_per_image,
    quantize_8bit,
    ssim_per_image,
    to_unit_range,
)

__all__ = ["psnr_per_image", "quantize_8bit", "ssim_per_image", "to_unit_range"]
