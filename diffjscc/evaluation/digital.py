"""Digital separation baseline: a real image codec followed by an ideal channel code.

The comparison JSCC papers draw: compress each image with a standard codec (Pillow's WebP,
JPEG, JPEG 2000, AVIF), then send the bytes with a capacity-achieving channel code over the
same ``n`` real channel uses the JSCC system gets. Shannon's separation: error-free delivery
of ``n * C`` bits, where per real channel use

    AWGN:      C = 1/2 log2(1 + SNR)                           bits
    Rayleigh:  C = E_h[1/2 log2(1 + |h|^2 SNR)],  |h|^2 ~ Exp(1)   (ergodic capacity)

with SNR linear (``10^(dB/10)``, per real symbol as in :mod:`diffjscc.channel`). The byte
budget of one image is ``B = floor(n * C / 8)``. Each image is encoded at the **largest
quality whose file (headers included, as Pillow writes it) has at most B bytes**. If even the
lowest quality does not fit, the ideal code cannot deliver it — the *cliff* — and the receiver
shows the **mean-colour image** (the per-channel mean of the evaluated set, the best constant
guess without bits): that is what the rows report for lost images, with ``lost_fraction``.

This is an upper bound for a digital system at this block length (capacity needs infinitely
long codes; real codes need margin), and for block fading the ergodic capacity is optimistic
(it ignores outage). Small images are hard for codecs: at 32x32 a JPEG or AVIF file at the
lowest quality has about 300 bytes (mostly headers), more than a k/n = 1/6 channel carries
below ~28 dB — exactly where JSCC wins.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, features

from diffjscc.errors import UserError

__all__ = [
    "CODECS",
    "Codec",
    "DigitalLink",
    "awgn_capacity",
    "byte_budget",
    "capacity_bits_per_use",
    "codec_available",
    "rayleigh_ergodic_capacity",
]

_LAGUERRE = np.polynomial.laguerre.laggauss(96)
_EULER_GAMMA = 0.5772156649015329


def awgn_capacity(snr_db: float) -> float:
    """AWGN capacity in bits per real channel use: ``1/2 log2(1 + 10^(snr_db/10))``."""
    return 0.5 * math.log2(1.0 + 10.0 ** (float(snr_db) / 10.0))


def _exp_e1(x: float) -> float:
    """``e^x E1(x)`` for x > 0, with ``E1(x) = ∫_x^∞ e^{-t}/t dt`` the exponential integral.

    x <= 1: the series ``E1(x) = -γ - ln x - Σ_{k>=1} (-x)^k / (k k!)``; x > 1: 96-node
    Gauss-Laguerre on ``e^x E1(x) = ∫_0^∞ e^{-t} / (t + x) dt`` (smooth there).
    """
    if x <= 1.0:
        total, term = 0.0, 1.0
        for k in range(1, 40):
            term *= -x / k
            total += term / k
        return math.exp(x) * (-_EULER_GAMMA - math.log(x) - total)
    nodes, weights = _LAGUERRE
    return float(np.sum(weights / (nodes + x)))


def rayleigh_ergodic_capacity(snr_db: float) -> float:
    """Ergodic Rayleigh capacity per real use: ``E[1/2 log2(1 + g SNR)]``, ``g = |h|^2 ~ Exp(1)``.

    Integrating by parts, ``E[ln(1 + g SNR)] = e^{1/SNR} E1(1/SNR)``, so
    ``C = e^{1/SNR} E1(1/SNR) / (2 ln 2)``. Always below the AWGN capacity (Jensen).
    """
    snr = 10.0 ** (float(snr_db) / 10.0)
    return _exp_e1(1.0 / snr) / (2.0 * math.log(2.0))


def capacity_bits_per_use(channel: str, snr_db: float) -> tuple[float, str]:
    """Capacity for a :mod:`diffjscc.channel` kind, and its name for result files."""
    if channel == "awgn":
        return awgn_capacity(snr_db), "awgn"
    if channel in ("rayleigh_block", "rayleigh_fast"):
        return rayleigh_ergodic_capacity(snr_db), "rayleigh ergodic"
    raise UserError(f"no digital baseline for channel {channel!r} (awgn, rayleigh_block, rayleigh_fast)")


def byte_budget(num_real_symbols: int, snr_db: float, channel: str = "awgn") -> int:
    """Bytes an ideal code delivers in ``n`` real channel uses: ``floor(n * C / 8)``."""
    if int(num_real_symbols) != num_real_symbols or num_real_symbols <= 0:
        raise UserError(f"number of channel uses must be a positive integer, got {num_real_symbols!r}")
    capacity, _ = capacity_bits_per_use(channel, snr_db)
    return int(math.floor(num_real_symbols * capacity / 8.0))


@dataclass(frozen=True)
class Codec:
    """A Pillow codec with a quality ladder, lowest quality first.

    ``settings`` are the values of Pillow's quality knob from worst to best: ``quality`` for
    WebP/JPEG/AVIF, the compression ratio (``quality_layers``, rates mode) for JPEG 2000.
    """

    name: str
    label: str
    pil_format: str
    feature: str
    settings: tuple[float, ...]
    options: dict = field(default_factory=dict)

    def encode(self, image: Image.Image, index: int) -> bytes:
        setting = self.settings[index]
        buffer = io.BytesIO()
        if self.pil_format == "JPEG2000":
            image.save(buffer, format="JPEG2000", quality_mode="rates", quality_layers=[setting], **self.options)
        else:
            image.save(buffer, format=self.pil_format, quality=int(setting), **self.options)
        return buffer.getvalue()


CODECS: dict[str, Codec] = {
    "webp": Codec("webp", "WebP", "WEBP", "webp", tuple(range(0, 101)), {"method": 6}),
    "jpeg": Codec("jpeg", "JPEG", "JPEG", "jpg", tuple(range(1, 101)), {"optimize": True}),
    # raw codestream (.j2k, no JP2 boxes), 9/7 wavelet, 3 resolution levels (32 -> 8 px)
    "jpeg2000": Codec("jpeg2000", "JPEG 2000", "JPEG2000", "jpg_2000",
                      tuple(float(r) for r in np.geomspace(400.0, 1.0, 64)),
                      {"irreversible": True, "no_jp2": True, "num_resolutions": 3}),
    "avif": Codec("avif", "AVIF", "AVIF", "avif", tuple(range(0, 101)), {}),
}
"""The codecs of the baseline, by CLI name. Quality ladders: WebP 0..100 (method 6), JPEG
1..100 (optimised Huffman tables), JPEG 2000 compression ratio 400 -> 1 (64 log steps), AVIF 0..100."""


def codec_available(name: str) -> bool:
    """Whether this Pillow build can write ``name`` (e.g. AVIF needs Pillow >= 11.3 with libavif)."""
    return features.check(CODECS[name].feature) is True


class DigitalLink:
    """One codec over an ideal channel code, for a fixed set of uint8 (N, H, W, 3) images.

    Encoded sizes are memoised per (image, quality step), so sweeping many SNRs re-encodes little.
    The quality search is a bisection over the ladder (file size grows with quality); whatever
    it returns was measured to fit, so a file never exceeds the budget.
    """

    def __init__(self, codec: Codec, images: np.ndarray) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}")
        self.codec = codec
        self.images = images
        self._pil = [Image.fromarray(im) for im in images]
        self._files: dict[tuple[int, int], bytes] = {}
        self.mean_colour = np.round(images.reshape(-1, 3).astype(np.float64).mean(axis=0)).astype(np.uint8)

    def encoded(self, i: int, step: int) -> bytes:
        key = (i, step)
        if key not in self._files:
            self._files[key] = self.codec.encode(self._pil[i], step)
        return self._files[key]

    def fit(self, i: int, budget: int) -> int | None:
        """Largest quality step of image ``i`` whose file has <= ``budget`` bytes; None if none fits."""
        lo, hi = 0, len(self.codec.settings) - 1
        if len(self.encoded(i, lo)) > budget:
            return None
        if len(self.encoded(i, hi)) <= budget:
            return hi
        while hi - lo > 1:  # invariant: lo fits, hi does not
            mid = (lo + hi) // 2
            if len(self.encoded(i, mid)) <= budget:
                lo = mid
            else:
                hi = mid
        return lo

    def transmit(self, budget: int) -> tuple[np.ndarray, dict]:
        """Received images (uint8, like the input) and statistics at a byte budget.

        A fitting file is decoded exactly (the ideal code makes no errors); an image that does
        not fit is lost and replaced by the mean-colour image.
        """
        out = np.empty_like(self.images)
        sizes, qualities, lost = [], [], 0
        for i in range(len(self.images)):
            step = self.fit(i, budget)
            if step is None:
                out[i] = self.mean_colour
                lost += 1
                continue
            data = self.encoded(i, step)
            with Image.open(io.BytesIO(data)) as decoded:
                out[i] = np.asarray(decoded.convert("RGB"), dtype=np.uint8)
            sizes.append(len(data))
            qualities.append(self.codec.settings[step])
        stats = {
            "budget_bytes": int(budget),
            "mean_bytes": float(np.mean(sizes)) if sizes else 0.0,
            "max_bytes": int(max(sizes)) if sizes else 0,
            "lost_fraction": lost / len(self.images),
            "mean_quality": float(np.mean(qualities)) if qualities else None,
            "min_file_bytes": int(min(len(self.encoded(i, 0)) for i in range(len(self.images)))),
        }
        return out, stats
