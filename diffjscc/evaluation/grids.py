"""Image grids of a trained system's receivers (:mod:`diffjscc.receivers`) on a few images, for
looking at them: ``diffjscc sample``, the demo and the trainer's sample grids.

The comparison rows are source | Deep JSCC (or, for a system without a Deep JSCC decoder, a
look at the received latent y) | diffusion from a Gaussian start. An unconditional model has
no channel: its diffusion row generates from the prior. Scoring lives in
:mod:`diffjscc.evaluation.sweep`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from diffjscc.receivers import ReceiveContext, missing_part, receive, select
from diffjscc.errors import UserError
from diffjscc.runtime.seeding import Stream, stream_generator
from diffjscc.system import TransmissionSystem
from diffjscc.whole_image import pad_for_windows

COMPARISON = ("deep_jscc", "diffusion")
"""The receivers of a comparison grid, by registry name."""


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
                     steps: int, generator: torch.Generator | None = None, snr_db: float | None = None,
                     receivers: Sequence[str] = COMPARISON, sampler: str = "auto", guidance: float = 1.0,
                     eta: float = 0.0, spacing: str | None = None,
                     progress: bool = False) -> tuple[list[torch.Tensor], list[str]]:
    """Rows for a grid: the source, then each of ``receivers`` (registry names, run in table
    order) that ``system`` has; one output each. A comparison grid of a system without a Deep
    JSCC decoder shows the received latent in its place. The transmission and the receivers
    draw from ``generator`` in that order."""
    rows, names = [images], ["source"]
    snr_db = system.cfg.snr_db if snr_db is None else snr_db
    received, told = (system.transmit(images, snr_db=snr_db, generator=generator, return_receiver_snr=True)
                      if system.encoder is not None else (None, snr_db))
    if received is not None and system.decoder is None and "deep_jscc" in receivers:
        rows.append(latent_preview(received, images.shape[-1]))
        names.append("received y")
    context = ReceiveContext(snr_db=told, steps=steps, sampler=sampler, generator=generator, class_labels=labels, source=images,
                             batch=images.shape[0], guidance=guidance, eta=eta, spacing=spacing, progress=progress)
    for receiver in select(receivers):
        if missing_part(system, receiver) is None:
            rows.append(receive(system, receiver, received, context)[0])
            names.append(receiver.describe(receiver.grid_label, samples=context.samples, steps=steps))
    return rows, names


@torch.no_grad()
def reconstruct_whole(system: TransmissionSystem, image: torch.Tensor, steps: int,
                      generator: torch.Generator | None = None, snr_db: float | None = None,
                      receivers: Sequence[str] = COMPARISON, sampler: str = "auto", guidance: float = 1.0,
                      eta: float = 0.0, spacing: str | None = None,
                      progress: bool = False) -> tuple[list[torch.Tensor], list[str]]:
    """:func:`reconstruct_rows` of one (3, H, W) image of any size, sent whole as ``transmit``
    sends it (:mod:`diffjscc.whole_image`): rows of one (1, 3, H, W) image each."""
    cfg = system.cfg
    if cfg.encoder != "jscc" or (cfg.class_cond and system.unet is not None):
        raise UserError(f"images not of the model's {cfg.image_size}x{cfg.image_size} are sent whole, which needs a "
                        f"fully convolutional Deep JSCC encoder and a receiver without classes")
    if any(name != "deep_jscc" and name not in COMPARISON for name in receivers):
        raise UserError("whole images are sampled through windows from a Gaussian start only (no --start "
                        f"{', '.join(name for name in receivers if name not in COMPARISON)})")
    height, width = image.shape[-2:]
    padded = pad_for_windows(image[None], cfg.image_size)
    rows, names = reconstruct_rows(system, padded, None, steps, generator=generator, snr_db=snr_db,
                                   receivers=receivers, sampler=sampler, guidance=guidance, eta=eta, spacing=spacing,
                                   progress=progress)
    return [row[..., :height, :width] for row in rows], names


def write_training_grid(system: TransmissionSystem, images: torch.Tensor, labels: torch.Tensor | None,
                        path: Path) -> None:
    """The trainer's sample grid (:data:`~diffjscc.training.trainer.SampleGrid`): the comparison
    rows at the config's SNR and ``sample_steps``, drawn from the config seed's
    :attr:`~diffjscc.runtime.seeding.Stream.GRID` stream."""
    from diffjscc.evaluation.figures import save_image_grid

    generator = stream_generator(system.cfg.seed, Stream.GRID, device=images.device)
    rows, names = reconstruct_rows(system, images, labels, steps=system.cfg.sample_steps, generator=generator)
    save_image_grid(rows, path, row_labels=names)
