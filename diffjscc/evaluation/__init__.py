"""Evaluation: per-image PSNR/SSIM/MS-SSIM (``metrics``); the protocol of ``diffjscc evaluate``
split by concern — the sweep over checkpoints x SNRs x receivers (``sweep``), scoring
(``scoring``, with FID: ``fid``, ``inception``; LPIPS and DISTS: ``perceptual``), the digital baseline
(``digital``), the result rows and files (``results``) and console lines (``report``);
``transmit`` for one image of any size; image grids (``grids``) and report figures
(``figures``). Submodules other than ``metrics`` are imported explicitly, so plotting and codec
code loads only when used."""

from diffjscc.evaluation.metrics import (
    psnr_per_image,
    quantize_8bit,
    ssim_per_image,
    to_unit_range,
)

__all__ = ["psnr_per_image", "quantize_8bit", "ssim_per_image", "to_unit_range"]
