"""Run a trained system's receivers on images and score them (PSNR/SSIM at one SNR).

Receivers of one checkpoint:

* ``deep_jscc``  — the JSCC decoder (modes ``jscc`` and ``frozen``): the Deep JSCC baseline;
* ``diffusion``  — the conditional diffusion decoder, from x_T ~ N(0, I) (``gaussian``, a real
  receiver) or from x_T = DDIM-inversion of the *source* (``inversion``: an **oracle** upper
  bound — the receiver does not have the source; reports flag it).

The full protocol (SNR sweeps, FID, baselines) lives in :mod:`diffjscc.evaluation.protocol`;
this one is the minimal, honest path shared by ``sample``, the demo and the trainer.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from diffjscc.channel import bandwidth_ratio
from diffjscc.errors import UserError
from diffjscc.evaluation.metrics import MetricAccumulator
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
    received = system.transmit(images, snr_db=snr_db, generator=generator) if system.encoder is not None else None
    if system.decoder is not None and received is not None:
        rows.append(system.jscc_decode(received))
        names.append("Deep JSCC")
    elif received is not None:
        rows.append(latent_preview(received, images.shape[-1]))
        names.append("received y")
    if system.unet is not None:
        rows.append(system.receive(received, steps=steps, class_labels=labels, generator=generator,
                                   batch=images.shape[0]))
        names.append(f"diffusion {steps}")
    return rows, names


def _batches(dataset, limit: int | None, batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor | None]]:
    count = len(dataset) if limit is None else min(limit, len(dataset))
    for start in range(0, count, batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, count))]
        if isinstance(items[0], tuple):
            yield torch.stack([it[0] for it in items]), torch.tensor([it[1] for it in items])
        else:
            yield torch.stack(items), None


@torch.no_grad()
def evaluate_system(system: TransmissionSystem, dataset, snr_db: float, steps: int = 20,
                    start: str = "gaussian", limit: int | None = None, batch_size: int = 64,
                    seed: int = 0, progress: bool = True) -> list[dict]:
    """PSNR/SSIM (8-bit quantised, per-image means) of every receiver at one SNR.

    One row per receiver with the SNR, k/n, DDIM steps, start mode, seed and image count.
    """
    cfg = system.cfg
    if system.encoder is None:
        raise UserError("an unconditional checkpoint has no transmitter: nothing to evaluate over a channel")
    device = next(system.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    scores = {"deep_jscc": MetricAccumulator()} if system.decoder is not None else {}
    if system.unet is not None:
        scores["diffusion"] = MetricAccumulator()
    total = len(dataset) if limit is None else min(limit, len(dataset))
    bar = tqdm(total=total, desc=f"evaluate {snr_db:g} dB", disable=not progress, leave=False)
    for images, labels in _batches(dataset, limit, batch_size):
        images = images.to(device)
        labels = labels.to(device) if labels is not None and cfg.class_cond else None
        received = system.transmit(images, snr_db=snr_db, generator=generator)
        if "deep_jscc" in scores:
            scores["deep_jscc"].update(images, system.jscc_decode(received))
        if "diffusion" in scores:
            output = system.receive(received, steps=steps, start=start, source=images,
                                    class_labels=labels, generator=generator)
            scores["diffusion"].update(images, output)
        bar.update(images.shape[0])
    bar.close()
    ratio = bandwidth_ratio(cfg.latent_dim, (3, cfg.image_size, cfg.image_size))
    rows = []
    for receiver, accumulator in scores.items():
        result = accumulator.compute()
        is_diffusion = receiver == "diffusion"
        rows.append({
            "receiver": receiver, "mode": cfg.mode, "channel": cfg.channel, "snr_db": float(snr_db),
            "k_over_n": ratio, "steps": steps if is_diffusion else 0,
            "start": start if is_diffusion else "-", "oracle": bool(is_diffusion and start == "inversion"),
            "psnr": float(result["psnr"]), "ssim": float(result["ssim"]), "n": int(result["n"]), "seed": seed,
        })
    return rows
