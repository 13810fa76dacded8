"""Run a trained system's receivers on a few images, for looking at them (grids).

Receivers of one checkpoint:

* ``deep_jscc``  — the JSCC decoder (modes ``jscc`` and ``frozen``): the Deep JSCC baseline;
* ``diffusion``  — the conditional diffusion decoder, from x_T ~ N(0, I) (``gaussian``, a real
  receiver) or from x_T = DDIM-inversion of the *source* (``inversion``: an **oracle** upper
  bound — the receiver does not have the source; reports flag it).

Scoring (SNR sweeps, PSNR/SSIM/MS-SSIM/FID, baselines) lives in :mod:`diffjscc.evaluation.protocol`;
this module makes the comparison rows that ``sample``, the demo and the trainer's grids show.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from diffjscc.system import TransmissionSystem


def latent_preview(received: torch.Tensor, size: int) -> torch.Tensor:
    """First three latent channels, scaled to [−1, 1] per image and upsampled: a look at y."""
    shown = received[:, :3]
    if shown.shape[1] < 3:
        shown = shown.repeat(1, 3, 1, 1)[:, :3]
    flat = shown.flatten(1)
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    scaled = (shown - lo.view(-1, 1, 1, 1)) / (hi - lo).clamp(min=1e-8).view(-1, 1, 1, 1) * 2 - 1
    return F.interpolate(scaled, size=(size, size), mode="nearest")


@torch.no_grad()
def reconstruct_rows(system: TransmissionSystem, images: torch.Tensor, labels: torch.Tensor | None,
                     steps: int, generator: torch.Generator | None = None,
                     snr_db: float | None = None) -> tuple[list[torch.Tensor], list[str]]:
    """Rows for a comparison grid: source | received-decoded | diffusion output."""
    rows, names = [images], ["source"]
    snr_db = system.cfg.snr_db if snr_db is None else snr_db
    received = system.transmit(images, snr_db=snr_db, generator=generator) if system.encoder is not None else None
    if system.decoder is not None and received is not None:
        rows.append(system.decode(received, snr_db))
        names.append("Deep JSCC")
    elif received is not None:
        rows.append(latent_preview(received, images.shape[-1]))
        names.append("received y")
    if system.unet is not None:
        rows.append(system.receive(received, steps=steps, class_labels=labels, generator=generator,
                                   batch=images.shape[0], snr_db=snr_db))
        names.append(f"diffusion {steps}")
    return rows, names


def write_training_grid(system: TransmissionSystem, images: torch.Tensor, labels: torch.Tensor | None,
                        path: Path) -> None:
    """The trainer's sample grid (:data:`~diffjscc.training.trainer.SampleGrid`): the comparison
    rows at the config's SNR and ``sample_steps``, sampling seeded by the config's seed."""
    from diffjscc.evaluation.figures import save_image_grid

    generator = torch.Generator(device=images.device).manual_seed(system.cfg.seed)
    rows, names = reconstruct_rows(system, images, labels, steps=system.cfg.sample_steps, generator=generator)
    save_image_grid(rows, path, row_labels=names)
