"""Digital separation baseline: a real image codec (:mod:`.codecs`), then a channel code over the
same channel uses the JSCC system gets — an ideal capacity-achieving code (the upper bound) or
5G NR LDPC + QAM (:mod:`.link`) — and the mean-colour image where an image is lost.

Ideal code. Shannon's separation: error-free delivery of ``n * C`` bits over ``n`` real channel
uses, where per real channel use

    AWGN:      C = 1/2 log2(1 + SNR)                           bits
    Rayleigh:  C = E_h[1/2 log2(1 + |h|^2 SNR)],  |h|^2 ~ Exp(1)   (ergodic capacity)

with SNR linear (``10^(dB/10)``, per real symbol as in :mod:`diffjscc.channel`). The byte
budget of one image is ``B = floor(n * C / 8)``. Each image is encoded at the **largest
quality whose file (or payload, under ``payload`` header accounting) has at most B bytes**. If
even the lowest quality does not fit, the ideal code cannot deliver it — the *cliff* — and the
receiver shows the **mean-colour image** (the per-channel mean of the evaluated set, the best
constant guess without bits): that is what the rows report for lost images, with ``lost_fraction``.
This is an upper bound at this block length (capacity needs infinitely long codes), and for block
fading the ergodic capacity is optimistic (it ignores outage).

LDPC. At a fixed MCS the frame's payload (:class:`~.link.Frame`) is the budget; the image is lost
when nothing fits or when a codeword carrying it fails (:class:`LdpcLink`, from the BLER table
measured on random codewords; :func:`simulate_image` runs the whole chain on one image instead,
to check the table). The adaptive row picks the MCS per SNR from the table alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from diffjscc.errors import UserError
from diffjscc.evaluation.codecs import CODECS, HEADERS, Codec, QualitySearch, codec_available, decode_image
from diffjscc.evaluation.link import (
    MCS_TABLE,
    BlerCurve,
    Frame,
    LdpcChain,
    bler_curve,
    check_digital_channel,
    frame_for,
)
from diffjscc.runtime.seeding import Stream, stream_sequence

__all__ = [
    "ADAPTIVE",
    "CHANNEL_CODES",
    "CODECS",
    "HEADERS",
    "Codec",
    "DigitalLink",
    "LdpcLink",
    "LinkOutcome",
    "awgn_capacity",
    "byte_budget",
    "capacity_bits_per_use",
    "codec_available",
    "rayleigh_ergodic_capacity",
    "simulate_image",
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



# --------------------------------------------------------------------------- links
CHANNEL_CODES = ("ideal", "ldpc")
"""``ideal``: a capacity-achieving code (the upper bound); ``ldpc``: 5G NR LDPC + QAM (:mod:`.link`)."""

ADAPTIVE = "adaptive"
ADAPTIVE_LOSS_TARGET = 0.1
"""The adaptive row's MCS: the most efficient one whose predicted probability of losing an image's
frame, from the random-codeword BLER table, is at most 10 % (5G's CQI rule is a 10 % BLER)."""


@dataclass
class LinkOutcome:
    """Received images and the integer sums a row's statistics come from (exact across ranks)."""

    images: np.ndarray
    sent_bytes: int  # bytes sent, over images that had a file to send
    fitted: int  # images with a file that fits the budget
    lost: int  # images shown as the mean colour (nothing fits, or a codeword failed)


class DigitalLink:
    """One codec over an ideal channel code, for a fixed set of uint8 (N, H, W, 3) images.

    Encoded sizes are memoised per (image, quality step) (:class:`~.codecs.QualitySearch`), so
    sweeping many SNRs re-encodes little. A fitting file is decoded exactly (the ideal code makes
    no errors); an image that does not fit is lost and replaced by the mean-colour image.
    """

    def __init__(self, codec: Codec, images: np.ndarray) -> None:
        self.search = QualitySearch(codec, images)
        self.codec = codec
        self.images = images

    @property
    def mean_colour(self) -> np.ndarray:
        return self.search.mean_colour

    @mean_colour.setter
    def mean_colour(self, value: np.ndarray) -> None:
        self.search.mean_colour = value

    def encoded(self, i: int, step: int) -> bytes:
        return self.search.encoded(i, step).data

    def fit(self, i: int, budget: int, header: str = "file") -> int | None:
        return self.search.fit(i, budget, header)

    def deliver(self, budget: int, header: str = "file") -> LinkOutcome:
        out = np.empty_like(self.images)
        sent = fitted = lost = 0
        for i in range(len(self.images)):
            step = self.search.fit(i, budget, header)
            if step is None:
                out[i], lost = self.search.mean_colour, lost + 1
                continue
            out[i] = self.search.decoded(i, step)
            sent, fitted = sent + self.search.encoded(i, step).size(header), fitted + 1
        return LinkOutcome(out, sent, fitted, lost)

    def transmit(self, budget: int, header: str = "file") -> tuple[np.ndarray, dict]:
        """Received images (uint8, like the input) and statistics at a byte budget."""
        sizes, qualities = [], []
        for i in range(len(self.images)):
            step = self.search.fit(i, budget, header)
            if step is not None:
                sizes.append(self.search.encoded(i, step).size(header))
                qualities.append(self.codec.settings[step])
        outcome = self.deliver(budget, header)
        stats = {
            "budget_bytes": int(budget),
            "mean_bytes": float(np.mean(sizes)) if sizes else 0.0,
            "max_bytes": int(max(sizes)) if sizes else 0,
            "lost_fraction": outcome.lost / len(self.images),
            "mean_quality": float(np.mean(qualities)) if qualities else None,
            "min_file_bytes": int(min(self.search.encoded(i, 0).size(header) for i in range(len(self.images)))),
        }
        return outcome.images, stats


def _rng(seed: int, stream: Stream, image: int, snr_db: float, *more: int) -> np.random.Generator:
    """The generator of one image's ``stream`` at ``snr_db`` (to 0.001 dB) of the run seeded ``seed``."""
    return np.random.default_rng(stream_sequence(seed, stream, image, round(float(snr_db) * 1000), *more))


class LdpcLink:
    """One codec over 5G NR LDPC + QAM (:mod:`diffjscc.evaluation.link`) on ``channel``, using the
    BLER table (random codewords, cached) for each image's codewords.

    Image ``i`` at an MCS sends its largest-quality file that fits the frame's
    :attr:`~.link.Frame.budget_bytes`, in the frame's first codewords; it is lost (mean-colour
    image) when nothing fits or when any of those codewords fails. A codeword fails with the
    table's BLER at the SNR it sees: the SNR itself on AWGN and fast fading, ``SNR + 10 log10
    |h|^2`` under block fading, with one ``h ~ CN(0, 1)`` per image (CSI at the receiver, none at
    the transmitter: a deep fade is an outage). Draws are seeded by (seed, image index, SNR), so
    the same image sees the same fade at every MCS, and no draw depends on sharding (``offset``
    is the global index of the first image).
    """

    def __init__(self, search: QualitySearch, channel: str, n_real: int, seed: int = 0, offset: int = 0,
                 max_codewords: int = 200, curves: dict[str, BlerCurve] | None = None) -> None:
        check_digital_channel(channel)
        self.search, self.channel, self.n_real = search, channel, int(n_real)
        self.seed, self.offset, self.max_codewords = int(seed), int(offset), max_codewords
        self._curves: dict[str, BlerCurve] = curves if curves is not None else {}  # shared by links of one frame

    def frame(self, mcs: str) -> Frame:
        return frame_for(mcs, self.n_real)

    def curve(self, mcs: str) -> BlerCurve:
        if mcs not in self._curves:
            frame = self.frame(mcs)
            self._curves[mcs] = bler_curve(mcs, frame.codeword_bits, frame.info_bits, self.channel,
                                           max_codewords=self.max_codewords)
        return self._curves[mcs]

    def frame_loss(self, mcs: str, snr_db: float) -> float:
        """Predicted probability that a full frame at ``mcs`` loses a codeword (from the table only)."""
        frame, curve = self.frame(mcs), self.curve(mcs)
        if self.channel == "rayleigh_block":  # E over |h|^2 ~ Exp(1), by its quantiles
            gains = -np.log1p(-(np.arange(4000) + 0.5) / 4000)
            bler = curve.bler(snr_db + 10 * np.log10(gains))
            return float(np.mean(1 - (1 - bler) ** frame.codewords))
        return float(1 - (1 - curve.bler(snr_db)) ** frame.codewords)

    def adaptive_mcs(self, snr_db: float, target: float = ADAPTIVE_LOSS_TARGET) -> str:
        """The most efficient MCS with predicted frame loss <= ``target`` (else the most robust)."""
        names = list(MCS_TABLE)
        fitting = [name for name in names if self.frame_loss(name, snr_db) <= target]
        return max(fitting, key=lambda n: MCS_TABLE[n].efficiency) if fitting else names[0]

    def _codeword_snrs(self, i: int, snr_db: float) -> float:
        if self.channel != "rayleigh_block":
            return float(snr_db)
        h = _rng(self.seed, Stream.DIGITAL_FADE, self.offset + i, snr_db).standard_normal(2) * math.sqrt(0.5)
        return float(snr_db + 10 * math.log10(max(float(h @ h), 1e-12)))

    def deliver(self, mcs: str, snr_db: float, header: str = "file") -> LinkOutcome:
        frame, curve = self.frame(mcs), self.curve(mcs)
        images = self.search.images
        out = np.empty_like(images)
        sent = fitted = lost = 0
        mcs_index = list(MCS_TABLE).index(mcs)
        for i in range(len(images)):
            step = self.search.fit(i, frame.budget_bytes, header)
            if step is None:
                out[i], lost = self.search.mean_colour, lost + 1
                continue
            size = self.search.encoded(i, step).size(header)
            sent, fitted = sent + size, fitted + 1
            bler = float(curve.bler(self._codeword_snrs(i, snr_db)))
            draws = _rng(self.seed, Stream.DIGITAL_CODEWORDS, self.offset + i, snr_db, mcs_index).random(
                frame.codewords_for(size))
            if (draws < bler).any():
                out[i], lost = self.search.mean_colour, lost + 1
            else:
                out[i] = self.search.decoded(i, step)
        return LinkOutcome(out, sent, fitted, lost)


def simulate_image(search: QualitySearch, i: int, step: int, frame: Frame, channel: str, snr_db: float,
                   header: str, generator: torch.Generator, chain: LdpcChain | None = None) -> np.ndarray | None:
    """Full simulation of one image (no table): its sent bytes, then random fill, in the frame's
    codewords, LDPC-encoded, QAM-mapped, sent (one block-fading gain for the whole image), demapped
    and BP-decoded; the received file rebuilt (the known header around a payload) and decoded.
    None when a codeword carrying the image's bytes is decoded wrongly (the image is lost)."""
    encoded = search.encoded(i, step)
    data = encoded.sent(header)
    if len(data) > frame.budget_bytes:
        raise ValueError(f"{len(data)} bytes do not fit the frame's {frame.budget_bytes}")
    chain = chain or LdpcChain(frame.mcs, frame.codeword_bits, frame.info_bits)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    total = frame.codewords * frame.info_bits
    fill = torch.randint(0, 2, (total - bits.size,), generator=generator).numpy().astype(np.uint8)
    sent = torch.from_numpy(np.concatenate([bits, fill]).reshape(frame.codewords, frame.info_bits)).float()
    decoded = chain.send(sent, channel, snr_db, generator, rows=frame.codewords if channel == "rayleigh_block" else 0)
    used = frame.codewords_for(len(data))
    if (decoded[:used] != sent[:used]).any():
        return None
    received = np.packbits(decoded.flatten()[:bits.size].numpy().astype(np.uint8)).tobytes()
    return decode_image(encoded.reassemble(received, header))
