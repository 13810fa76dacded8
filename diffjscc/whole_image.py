"""An image of any size sent whole: the padding that puts it on the windows' grid, and the
diffusion receiver whose network sees overlapping windows blended at every step.

The Deep JSCC encoder and decoder are fully convolutional, so an H × W image, edge-padded to
H' × W' (:func:`pad_for_windows`: each side at least the model's ``image_size`` S and S plus a
multiple of the windows' stride, 3S/4), becomes one received latent of ``c_out · (H'/4) · (W'/4)``
real symbols, power-normalised over the whole image. The Deep JSCC decoder reconstructs it
whole; the diffusion receiver (:func:`receive_windowed`) samples it whole too, its network
seeing S × S windows whose outputs are blended (MultiDiffusion): nothing is stitched, so no
seams. Callers crop the reconstruction back to H × W.

Where the receiver guessed: K posterior samples of one image differ where y did not decide
the pixels; :func:`pixel_spread` is their per-pixel standard deviation, a map of that doubt
(zero where every sample agrees), :func:`spread_image` that map as an 8-bit picture.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffjscc.config import SPREAD_SCALE
from diffjscc.diffusion.samplers import resolve_sampler
from diffjscc.diffusion.unet import Condition
from diffjscc.system import TransmissionSystem, sample_from

__all__ = ["larger_than_network", "pad_for_windows", "padded_size", "pixel_spread", "receive_windowed",
           "spread_image", "transmitted_symbols", "window_stride"]


def window_stride(image_size: int) -> int:
    """Pixels between the diffusion receiver's windows on a large image: three quarters of a
    window of ``image_size``, a multiple of 4 (one latent position is 4 pixels)."""
    return max(4, 3 * image_size // 16 * 4)


def padded_size(side: int, window: int, stride: int) -> int:
    """The transmitted length of a side: at least ``window``, and ``window`` plus a multiple of
    ``stride`` (where the diffusion receiver's windows sit)."""
    return window + max(0, -(-(side - window) // stride)) * stride


def pad_for_windows(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """(N, 3, H, W) images with their last row and column repeated up to the transmitted size
    (:func:`padded_size` of each side for windows of ``image_size``)."""
    h, w = images.shape[-2:]
    stride = window_stride(image_size)
    size = tuple(padded_size(side, image_size, stride) for side in (h, w))
    return F.pad(images, (0, size[1] - w, 0, size[0] - h), mode="replicate")


def transmitted_symbols(c_out: int, image_size: int, height: int, width: int) -> int:
    """Real channel symbols of an ``height`` × ``width`` image sent whole by a Deep JSCC encoder of
    ``c_out`` latent channels and windows of ``image_size``: ``c_out · (H'/4) · (W'/4)`` over the
    padded size (:func:`padded_size`), what the digital baselines of whole images get."""
    stride = window_stride(image_size)
    return c_out * (padded_size(height, image_size, stride) // 4) * (padded_size(width, image_size, stride) // 4)


def larger_than_network(system: TransmissionSystem, received: torch.Tensor) -> bool:
    """Whether ``received`` is the latent of an image other than the network's S × S (a whole
    photo), which the diffusion receiver samples through windows."""
    size = system.cfg.image_size
    return tuple(received.shape[-2:]) != (size // 4, size // 4)


@torch.no_grad()
def receive_windowed(system: TransmissionSystem, received: torch.Tensor, steps: int,
                     snr_db: float | torch.Tensor | None = None, sampler: str = "auto",
                     generator: torch.Generator | None = None, stride: int | None = None,
                     batch_size: int = 64, guidance: float = 1.0, eta: float = 0.0,
                     spacing: str | None = None, progress: bool = False) -> torch.Tensor:
    """Diffusion receiver of ``system`` for one image larger than its network: received latent
    (1, c, h, w) of an image of 4h × 4w pixels → that image in [−1, 1].

    The sampler runs on the whole image; at every step the network sees overlapping
    ``image_size`` windows (``stride`` pixels apart), each with its own
    window of y (and of the Deep JSCC estimate), and their outputs are blended with weights
    that fall towards each window's edges (MultiDiffusion, Bar-Tal et al. 2023): every pixel
    follows one trajectory, so no seams appear where windows meet. Needs (4h − image_size)
    and (4w − image_size) to be multiples of ``stride`` (default :func:`window_stride`).
    """
    assert system.unet is not None
    size = system.cfg.image_size
    stride = stride or window_stride(size)
    height, width = 4 * received.shape[-2], 4 * received.shape[-1]
    if received.shape[0] != 1 or stride % 4 or (height - size) % stride or (width - size) % stride:
        raise ValueError(f"receive_windowed needs one image whose sides minus {size} are multiples of the "
                         f"stride {stride} (a multiple of 4), got {height}x{width}")
    corners = [(i, j) for i in range(0, height - size + 1, stride) for j in range(0, width - size + 1, stride)]
    latent_size = size // 4
    latents = torch.cat([received[..., i // 4:i // 4 + latent_size, j // 4:j // 4 + latent_size]
                         for i, j in corners])
    base = system.residual_base(received, snr_db)
    windows_of_base = None if base is None else torch.cat([base[..., i:i + size, j:j + size] for i, j in corners])
    conditions = system.conditions(latents, None, system.receiver_snr(snr_db), windows_of_base, len(corners),
                                   guidance)

    def network(first: int):  # the (guided) network of at most batch_size windows from ``first``
        return system.conditioned_network(
            [Condition(None if c.vector is None else c.vector[first:first + batch_size],
                       None if c.maps is None else c.maps[first:first + batch_size]) for c in conditions],
            guidance)

    chunks = [(corners[first:first + batch_size], network(first)) for first in range(0, len(corners), batch_size)]
    ramp = 1 - 0.9 * (2 * (torch.arange(size, device=received.device) + 0.5) / size - 1).abs()
    weight = (ramp[:, None] * ramp[None, :])  # 1 at the centre, 0.1 at the edges
    total = torch.zeros(height, width, device=received.device)
    for i, j in corners:
        total[i:i + size, j:j + size] += weight

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        outputs = []
        for where, network in chunks:
            windows = torch.cat([x[..., i:i + size, j:j + size] for i, j in where])
            outputs.append(network(windows, t.expand(windows.shape[0])))
        out = torch.cat(outputs)
        blended = torch.zeros(1, out.shape[1], height, width, device=x.device, dtype=out.dtype)
        for k, (i, j) in enumerate(corners):
            blended[..., i:i + size, j:j + size] += weight * out[k]
        return blended / total

    x_T = torch.randn((1, 3, height, width), generator=generator, device=received.device)
    generated = sample_from(system.sampling_process(steps, spacing), denoise, x_T, system.clip_range(base),
                            resolve_sampler(sampler, steps, eta=eta), generator, progress=progress, eta=eta)
    return system.from_residual(generated, base).clamp(-1, 1)


def pixel_spread(samples: torch.Tensor) -> torch.Tensor:
    """Per-pixel spread of K ≥ 2 samples (K, C, H, W) of 8-bit levels (uint8 or float): the
    standard deviation over the samples (unbiased, K − 1), root-mean-square over the C
    channels, in 8-bit levels, (H, W). Zero exactly where all K samples agree."""
    if samples.shape[0] < 2:
        raise ValueError(f"the spread of samples needs K >= 2 samples, got {samples.shape[0]}")
    return samples.double().var(dim=0, unbiased=True).mean(dim=0).sqrt()


def spread_image(spread: torch.Tensor) -> torch.Tensor:
    """The (H, W) spread in 8-bit levels as a uint8 picture: :data:`~diffjscc.config.SPREAD_SCALE`
    (4) levels per level of standard deviation, rounded: black is 0, white (255) a standard
    deviation of 63.75 levels or more."""
    return (spread * SPREAD_SCALE).round().clamp(0, 255).to(torch.uint8)
