"""Send one of the user's own images through a trained system (``diffjscc transmit``).

The models are fixed-size (32x32 for CIFAR-10 configs), so an image of any size is cut into
``S x S`` tiles at the model's resolution ``S`` (the last row/column padded by repeating edge
pixels), each tile is transmitted on its own (``latent_dim`` real channel symbols per tile;
for Rayleigh block fading one gain h per tile), the received tiles are stitched and the
padding cropped, so the output has the input's size. Tiles are independent, so seams can show.

Grayscale inputs are converted to RGB for the model and the output is written back as
grayscale (luma, ITU-R 601); an alpha channel is dropped. PSNR and SSIM compare the 8-bit
output array with the 8-bit input in the same mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from diffjscc.errors import UserError
from diffjscc.evaluation.metrics import SSIM_KERNEL_SIZE, psnr_per_image, ssim_per_image, to_uint8
from diffjscc.receivers import ReceiveContext, available, receive, require
from diffjscc.system import TransmissionSystem, build_channel

__all__ = ["TransmitResult", "GRAY_MODES", "TRANSMIT_RECEIVERS", "transmit_file", "transmit_image"]

GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "La")
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".webp", ".avif", ".jp2", ".j2k")


@dataclass
class TransmitResult:
    """Reconstruction (uint8 HxW or HxWx3 as written) and the numbers ``transmit`` prints."""

    output: np.ndarray
    psnr: float
    ssim: float | None
    tiles: int
    symbols: int
    k_over_n: float
    receiver: str


def _tiles(x: torch.Tensor, size: int) -> tuple[torch.Tensor, int, int]:
    """(3, H, W) -> (T, 3, size, size) tiles of the edge-padded image, row-major; rows, cols."""
    _, h, w = x.shape
    rows, cols = math.ceil(h / size), math.ceil(w / size)
    padded = F.pad(x[None], (0, cols * size - w, 0, rows * size - h), mode="replicate")[0]
    tiles = padded.unfold(1, size, size).unfold(2, size, size)  # (3, rows, cols, size, size)
    return tiles.permute(1, 2, 0, 3, 4).reshape(rows * cols, 3, size, size), rows, cols


def _stitch(tiles: torch.Tensor, rows: int, cols: int, h: int, w: int) -> torch.Tensor:
    size = tiles.shape[-1]
    grid = tiles.reshape(rows, cols, 3, size, size).permute(2, 0, 3, 1, 4)
    return grid.reshape(3, rows * size, cols * size)[:, :h, :w]


TRANSMIT_RECEIVERS = ("diffusion", "deep_jscc")
"""The receivers ``transmit`` offers, by registry name; ``auto`` takes the first the checkpoint has."""


@torch.no_grad()
def transmit_image(system: TransmissionSystem, image: torch.Tensor, snr_db: float, channel: str,
                   receiver: str = "auto", steps: int = 20, seed: int = 0, batch_size: int = 64,
                   gray: bool = False) -> TransmitResult:
    """Transmit a (3, H, W) image in [-1, 1] tile by tile; reconstruction at the input's size."""
    cfg = system.cfg
    if receiver == "auto":
        has = {r.name for r in available(system)}
        receiver = next((name for name in TRANSMIT_RECEIVERS if name in has), TRANSMIT_RECEIVERS[0])
    if receiver not in TRANSMIT_RECEIVERS:
        raise UserError(f"unknown receiver {receiver!r}; expected auto, {', '.join(TRANSMIT_RECEIVERS)}")
    other = next(name for name in TRANSMIT_RECEIVERS if name != receiver)
    entry = require(system, receiver, hint=f"use --receiver {other}")
    if cfg.class_cond and entry.uses_unet:
        raise UserError("a class-conditional diffusion receiver needs a class label; transmit supports "
                        "unconditional-class checkpoints only (or use --receiver deep_jscc)")
    device = next(system.parameters()).device
    h, w = image.shape[-2:]
    tiles, rows, cols = _tiles(image, cfg.image_size)
    link = build_channel(cfg, channel).eval()
    g_channel = torch.Generator(device=device).manual_seed(seed)
    g_sample = torch.Generator(device=device).manual_seed(seed + 1)
    out = []
    for start in range(0, tiles.shape[0], batch_size):
        x = tiles[start:start + batch_size].to(device)
        received = system.transmit(x, snr_db=snr_db, generator=g_channel, channel=link)
        context = ReceiveContext(snr_db=snr_db, steps=steps, generator=g_sample)
        out.append(receive(system, entry, received, context)[0].cpu())
    recon = _stitch(torch.cat(out), rows, cols, h, w)
    source_u8, recon_u8 = to_uint8(image), to_uint8(recon)
    if gray:
        source_u8 = source_u8[:1]  # the input was grey: R = G = B
        luma = Image.fromarray(recon_u8.permute(1, 2, 0).numpy()).convert("L")
        recon_u8 = torch.from_numpy(np.asarray(luma, dtype=np.uint8).copy())[None]
    x, y = source_u8[None].float() / 255.0, recon_u8[None].float() / 255.0
    psnr = float(psnr_per_image(x, y)[0])
    ssim = float(ssim_per_image(x, y)[0]) if min(h, w) >= SSIM_KERNEL_SIZE else None
    array = recon_u8[0].numpy() if gray else recon_u8.permute(1, 2, 0).numpy()
    symbols = tiles.shape[0] * cfg.latent_dim
    return TransmitResult(output=array, psnr=psnr, ssim=ssim, tiles=tiles.shape[0], symbols=symbols,
                          k_over_n=symbols / (3 * h * w), receiver=receiver)


def transmit_file(system: TransmissionSystem, source: Path, target: Path, snr_db: float, channel: str,
                  receiver: str = "auto", steps: int = 20, seed: int = 0, batch_size: int = 64) -> TransmitResult:
    """Read ``source`` (any size and mode Pillow reads), transmit, write ``target`` at the same size."""
    from diffjscc.data import load_image_tensor

    image = load_image_tensor(source)  # UserError for a missing or non-image file
    with Image.open(source) as probe:
        gray = probe.mode in GRAY_MODES
    result = transmit_image(system, image, snr_db, channel, receiver=receiver, steps=steps, seed=seed,
                            batch_size=batch_size, gray=gray)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(result.output).save(target)
    except ValueError as err:  # unknown extension
        raise UserError(f"cannot write {target}: {err}") from None
    except OSError as err:
        raise UserError(f"cannot write {target}: {err}") from None
    return result
