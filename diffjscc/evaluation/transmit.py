"""Send one of the user's own images through a trained system (``diffjscc transmit``).

The whole image is transmitted at once (:mod:`diffjscc.whole_image`): edge-padded so that each
side is at least the model's ``image_size`` S and S plus a multiple of the windows' stride, 3S/4,
it becomes one received latent of ``c_out · (H'/4) · (W'/4)`` real symbols, the same k/n as the
model's own images, power-normalised over the whole image. The Deep JSCC decoder reconstructs
the whole image; the diffusion receiver samples the whole image too, its network seeing
overlapping S × S windows blended at every step. Nothing is stitched, so no seams.

With ``samples`` K ≥ 2 the diffusion receiver draws K posterior samples of the one received
latent: the output is the first (the one a single-sample run gives), and ``transmit`` also
writes their pixel mean (an MMSE estimate) and a map of their per-pixel standard deviation
(:func:`~diffjscc.whole_image.pixel_spread`): where the receiver guessed.

Grayscale inputs are converted to RGB for the model and the output is written back as
grayscale (luma, ITU-R 601); an alpha channel is dropped. PSNR and SSIM compare the 8-bit
output array with the 8-bit input in the same mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffjscc.errors import UserError
from diffjscc.evaluation.metrics import SSIM_KERNEL_SIZE, psnr_per_image, ssim_per_image, to_uint8
from diffjscc.receivers import available, require
from diffjscc.runtime.seeding import batch_seeds
from diffjscc.system import TransmissionSystem, build_channel
from diffjscc.whole_image import pad_for_windows, pixel_spread, receive_windowed, spread_image

__all__ = ["TransmitResult", "GRAY_MODES", "TRANSMIT_RECEIVERS", "samples_targets", "transmit_file", "transmit_image"]

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
    samples: int = 1  # K posterior samples drawn (output: the first)
    mean: np.ndarray | None = None  # K >= 2: the pixel mean of the K samples, as ``output``
    mean_psnr: float | None = None
    spread: np.ndarray | None = None  # K >= 2: per-pixel std of the K 8-bit samples (H, W), 8-bit levels

    @property
    def k_over_n_complex(self) -> float:
        """Complex channel uses per source dimension (the Deep JSCC literature's convention)."""
        return self.k_over_n / 2


TRANSMIT_RECEIVERS = ("diffusion", "deep_jscc")
"""The receivers ``transmit`` offers, by registry name; ``auto`` takes the first the checkpoint has."""


@torch.no_grad()
def transmit_image(system: TransmissionSystem, image: torch.Tensor, snr_db: float, channel: str,
                   receiver: str = "auto", steps: int | None = None, sampler: str = "auto", seed: int = 0,
                   batch_size: int = 64, gray: bool = False, guidance: float = 1.0, eta: float = 0.0,
                   spacing: str | None = None, samples: int = 1, progress: bool = False) -> TransmitResult:
    """Transmit a (3, H, W) image in [-1, 1] as one image; reconstruction at the input's size
    (with ``samples`` K ≥ 2, also the mean and the per-pixel spread of K diffusion samples).
    ``steps`` None: the model's own ``sample_steps``; ``progress``: show the sampler's steps."""
    cfg = system.cfg
    steps = cfg.sample_steps if steps is None else steps
    if samples < 1:
        raise UserError("--samples must be positive")
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
    if samples > 1 and not entry.uses_unet:
        raise UserError("--samples K draws K posterior samples of the diffusion receiver; Deep JSCC's output is "
                        "deterministic (use --samples 1 or the diffusion receiver)")
    device = next(system.parameters()).device
    h, w = image.shape[-2:]
    padded = pad_for_windows(image[None], cfg.image_size).to(device)
    size = tuple(padded.shape[-2:])
    link = build_channel(cfg, channel).eval()
    channel_seed, sample_seed = batch_seeds(seed, 0)  # the draws evaluate gives the first image sent whole
    g_channel = torch.Generator(device=device).manual_seed(channel_seed)
    g_sample = torch.Generator(device=device).manual_seed(sample_seed)
    received, told = system.transmit(padded, snr_db=snr_db, generator=g_channel, channel=link, return_receiver_snr=True)
    if receiver == "deep_jscc":
        drawn = [system.decode(received, told).clamp(-1, 1)]
    else:  # K samples from one stream: the first is the single-sample output
        drawn = [receive_windowed(system, received, steps, snr_db=told, sampler=sampler, generator=g_sample,
                                  batch_size=batch_size, guidance=guidance, eta=eta, spacing=spacing,
                                  progress=progress)
                 for _ in range(samples)]
    source_u8 = to_uint8(image)[:1] if gray else to_uint8(image)  # a grey input has R = G = B
    outputs = [_as_written(to_uint8(recon[0, :, :h, :w].cpu()), gray) for recon in drawn]
    psnr, ssim = _scores(source_u8, outputs[0])
    symbols = received[0].numel()
    result = TransmitResult(output=_array(outputs[0]), psnr=psnr, ssim=ssim, symbols=symbols,
                            k_over_n=symbols / (3 * h * w), padded=size, receiver=receiver, samples=samples)
    if samples > 1:
        mean = _as_written(to_uint8(torch.stack(drawn).mean(0)[0, :, :h, :w].cpu()), gray)
        result.mean, result.mean_psnr = _array(mean), _scores(source_u8, mean)[0]
        result.spread = pixel_spread(torch.stack(outputs)).numpy()
    return result


def _as_written(recon_u8: torch.Tensor, gray: bool) -> torch.Tensor:
    """An 8-bit RGB reconstruction (3, H, W) as it is written: luma (ITU-R 601) for a grey input."""
    if not gray:
        return recon_u8
    luma = Image.fromarray(recon_u8.permute(1, 2, 0).numpy()).convert("L")
    return torch.from_numpy(np.asarray(luma, dtype=np.uint8).copy())[None]


def _array(image_u8: torch.Tensor) -> np.ndarray:
    return image_u8[0].numpy() if image_u8.shape[0] == 1 else image_u8.permute(1, 2, 0).numpy()


def _scores(source_u8: torch.Tensor, output_u8: torch.Tensor) -> tuple[float, float | None]:
    """PSNR and SSIM (None under 11 px) of an 8-bit output against the 8-bit source."""
    x, y = source_u8[None].float() / 255.0, output_u8[None].float() / 255.0
    ssim = float(ssim_per_image(x, y)[0]) if min(x.shape[-2:]) >= SSIM_KERNEL_SIZE else None
    return float(psnr_per_image(x, y)[0]), ssim


def samples_targets(target: Path) -> tuple[Path, Path]:
    """Where ``transmit --samples K`` writes the mean of the K samples and their spread map,
    beside ``target``: ``<stem>_mean<suffix>`` and ``<stem>_spread.png``."""
    return target.with_name(f"{target.stem}_mean{target.suffix}"), target.with_name(f"{target.stem}_spread.png")


def transmit_file(system: TransmissionSystem, source: Path, target: Path, snr_db: float, channel: str,
                  receiver: str = "auto", steps: int | None = None, sampler: str = "auto", seed: int = 0,
                  batch_size: int = 64, guidance: float = 1.0, eta: float = 0.0,
                  spacing: str | None = None, samples: int = 1, overwrite: bool = False,
                  progress: bool = False) -> TransmitResult:
    """Read ``source`` (any size and mode Pillow reads), transmit, write ``target`` at the same size;
    with ``samples`` K ≥ 2 also the mean and the spread map (:func:`samples_targets`), which
    replace files already there only with ``overwrite``."""
    from diffjscc.data import load_image_tensor

    extra = samples_targets(target) if samples > 1 else ()
    existing = [path for path in extra if path.exists()]
    if existing and not overwrite:
        raise UserError(f"{existing[0]} exists: choose another OUT (or pass --overwrite)")
    image = load_image_tensor(source)  # UserError for a missing or non-image file
    with Image.open(source) as probe:
        gray = probe.mode in GRAY_MODES
    result = transmit_image(system, image, snr_db, channel, receiver=receiver, steps=steps, sampler=sampler,
                            seed=seed, batch_size=batch_size, gray=gray, guidance=guidance, eta=eta,
                            spacing=spacing, samples=samples, progress=progress)
    pictures = [(target, result.output)]
    if result.spread is not None:
        pictures += [(extra[0], result.mean), (extra[1], spread_image(torch.from_numpy(result.spread)).numpy())]
    for path, picture in pictures:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(picture).save(path)
        except ValueError as err:  # unknown extension
            raise UserError(f"cannot write {path}: {err}") from None
        except OSError as err:
            raise UserError(f"cannot write {path}: {err}") from None
    return result
