"""Send one of the user's own images through a trained system (``diffjscc transmit``).

The whole image is transmitted at once: the Deep JSCC encoder and decoder are fully
convolutional, so an H × W image (edge-padded so that each side is at least the model's
``image_size`` S and S plus a multiple of the windows' stride, 3S/4) becomes one received latent of
``c_out · (H'/4) · (W'/4)`` real symbols, the same k/n as the model's own images, power-normalised
over the whole image. The Deep JSCC decoder reconstructs the whole image; the diffusion receiver
samples the whole image too, its network seeing overlapping S × S windows blended at every step
(:meth:`~diffjscc.system.TransmissionSystem.receive_windowed`). Nothing is stitched, so no seams.

Grayscale inputs are converted to RGB for the model and the output is written back as
grayscale (luma, ITU-R 601); an alpha channel is dropped. PSNR and SSIM compare the 8-bit
output array with the 8-bit input in the same mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from diffjscc.errors import UserError
from diffjscc.evaluation.metrics import SSIM_KERNEL_SIZE, psnr_per_image, ssim_per_image, to_uint8
from diffjscc.receivers import available, require
from diffjscc.system import TransmissionSystem, build_channel

__all__ = ["TransmitResult", "GRAY_MODES", "TRANSMIT_RECEIVERS", "padded_size", "transmit_file", "transmit_image"]

GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "La")
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".webp", ".avif", ".jp2", ".j2k")


@dataclass
class TransmitResult:
    """Reconstruction (uint8 HxW or HxWx3 as written) and the numbers ``transmit`` prints."""

    output: np.ndarray
    psnr: float
    ssim: float | None
    symbols: int  # real channel symbols sent for the whole (padded) image
    k_over_n: float  # real symbols per source dimension (RGB value of the input)
    padded: tuple[int, int]  # the size that was transmitted (edges repeated)
    receiver: str

    @property
    def k_over_n_complex(self) -> float:
        """Complex channel uses per source dimension (the Deep JSCC literature's convention)."""
        return self.k_over_n / 2


def padded_size(side: int, window: int, stride: int) -> int:
    """The transmitted length of a side: at least ``window``, and ``window`` plus a multiple of
    ``stride`` (where the diffusion receiver's windows sit)."""
    return window + max(0, -(-(side - window) // stride)) * stride


TRANSMIT_RECEIVERS = ("diffusion", "deep_jscc")
"""The receivers ``transmit`` offers, by registry name; ``auto`` takes the first the checkpoint has."""


@torch.no_grad()
def transmit_image(system: TransmissionSystem, image: torch.Tensor, snr_db: float, channel: str,
                   receiver: str = "auto", steps: int = 8, sampler: str = "auto", seed: int = 0,
                   batch_size: int = 64, gray: bool = False, guidance: float = 1.0, eta: float = 0.0,
                   spacing: str | None = None) -> TransmitResult:
    """Transmit a (3, H, W) image in [-1, 1] as one image; reconstruction at the input's size."""
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
    if cfg.encoder != "jscc":
        raise UserError(f"transmit needs a fully convolutional Deep JSCC encoder; this checkpoint's is {cfg.encoder!r}")
    device = next(system.parameters()).device
    h, w = image.shape[-2:]
    size = tuple(padded_size(side, cfg.image_size, system.window_stride) for side in (h, w))
    padded = F.pad(image[None], (0, size[1] - w, 0, size[0] - h), mode="replicate").to(device)
    link = build_channel(cfg, channel).eval()
    g_channel = torch.Generator(device=device).manual_seed(seed)
    g_sample = torch.Generator(device=device).manual_seed(seed + 1)
    received, told = system.transmit(padded, snr_db=snr_db, generator=g_channel, channel=link, return_receiver_snr=True)
    if receiver == "deep_jscc":
        recon = system.decode(received, told).clamp(-1, 1)
    else:
        recon = system.receive_windowed(received, steps, snr_db=told, sampler=sampler, generator=g_sample,
                                        batch_size=batch_size, guidance=guidance, eta=eta, spacing=spacing)
    recon = recon[0, :, :h, :w].cpu()
    source_u8, recon_u8 = to_uint8(image), to_uint8(recon)
    if gray:
        source_u8 = source_u8[:1]  # the input was grey: R = G = B
        luma = Image.fromarray(recon_u8.permute(1, 2, 0).numpy()).convert("L")
        recon_u8 = torch.from_numpy(np.asarray(luma, dtype=np.uint8).copy())[None]
    x, y = source_u8[None].float() / 255.0, recon_u8[None].float() / 255.0
    psnr = float(psnr_per_image(x, y)[0])
    ssim = float(ssim_per_image(x, y)[0]) if min(h, w) >= SSIM_KERNEL_SIZE else None
    array = recon_u8[0].numpy() if gray else recon_u8.permute(1, 2, 0).numpy()
    symbols = received[0].numel()
    return TransmitResult(output=array, psnr=psnr, ssim=ssim, symbols=symbols, k_over_n=symbols / (3 * h * w),
                          padded=size, receiver=receiver)


def transmit_file(system: TransmissionSystem, source: Path, target: Path, snr_db: float, channel: str,
                  receiver: str = "auto", steps: int = 8, sampler: str = "auto", seed: int = 0,
                  batch_size: int = 64, guidance: float = 1.0, eta: float = 0.0,
                  spacing: str | None = None) -> TransmitResult:
    """Read ``source`` (any size and mode Pillow reads), transmit, write ``target`` at the same size."""
    from diffjscc.data import load_image_tensor

    image = load_image_tensor(source)  # UserError for a missing or non-image file
    with Image.open(source) as probe:
        gray = probe.mode in GRAY_MODES
    result = transmit_image(system, image, snr_db, channel, receiver=receiver, steps=steps, sampler=sampler,
                            seed=seed, batch_size=batch_size, gray=gray, guidance=guidance, eta=eta,
                            spacing=spacing)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(result.output).save(target)
    except ValueError as err:  # unknown extension
        raise UserError(f"cannot write {target}: {err}") from None
    except OSError as err:
        raise UserError(f"cannot write {target}: {err}") from None
    return result
