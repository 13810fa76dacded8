"""The practical channel code of the digital baseline: 5G NR LDPC and QAM over the channels of
:mod:`diffjscc.channel`, a block-error-rate (BLER) table measured on random codewords, and the
frame that carries one image.

Conventions (those of :mod:`diffjscc.channel`):

* One complex QAM symbol is **two real channel uses**; a frame over ``n`` real channel uses
  carries at most ``n/2`` QAM symbols. QAM is normalised to ``E|s|^2 = 1``; the channel sees
  ``sqrt(2) (Re s, Im s)`` interleaved, unit power per real symbol, and adds noise of variance
  ``sigma^2 = 10^(-SNR/10)`` per real symbol, so ``Es/N0 = SNR`` (linear), per complex symbol.
* Rayleigh block (one ``h ~ CN(0, 1)`` per transmitted row: per image in a full simulation) and
  fast (one per symbol) fading, with CSI at the receiver: the zero-forced symbol ``y/h`` has
  complex noise variance ``N0/|h|^2``, and the demapper's LLRs use exactly that (the gain enters
  the LLRs). Block fading with CSI is an AWGN channel at SNR ``|h|^2 SNR`` for a whole image,
  so its codewords look up the AWGN BLER at that SNR: a deep fade loses the image (outage).

The code (Sionna ``sionna.phy.fec.ldpc``): 5G NR LDPC with rate matching
(:class:`LDPC5GEncoder`, 38.212 bit interleaving for the modulation), decoded by belief
propagation (:class:`LDPC5GDecoder`, flooding, boxplus-phi, :data:`BP_ITERATIONS` iterations, no
early stop). Demapping: exact APP LLRs (:class:`sionna.phy.mapping.Demapper`).

Frame of one image over ``n`` real channel uses at an MCS (``m`` bits per symbol, rate ``r``):
``C = (n // 2) m`` coded bits are split into ``c = ceil(C / 8192)`` codewords of the same length
``n_cw = m * ((n // 2) // c)`` (a few symbols may stay unused: never more channel uses than the
JSCC system), with ``k = floor(r n_cw)`` information bits each. The 5G CRCs are paid for: a
transport-block CRC (16 bits up to 3,824 bits, else 24) and, when segmented, a 24-bit CRC per
code block. Error detection itself is a genie (the decoded bits are compared with those sent),
which those CRCs approximate.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from diffjscc.channel import awgn, rayleigh_block, rayleigh_fast
from diffjscc.errors import UserError
from diffjscc.runtime.rundir import write_text_atomic

__all__ = [
    "BP_ITERATIONS",
    "DIGITAL_CHANNELS",
    "MCS_TABLE",
    "BlerCurve",
    "Frame",
    "LdpcChain",
    "Mcs",
    "bler_curve",
    "check_digital_channel",
    "frame_for",
    "qam_llrs",
    "require_sionna",
]

BP_ITERATIONS = 20
MAX_CODEWORD_BITS = 8192
DIGITAL_CHANNELS = ("awgn", "rayleigh_block", "rayleigh_fast")
SNR_STEP_DB = 0.5


@dataclass(frozen=True)
class Mcs:
    """A modulation and coding scheme: QAM order and LDPC code rate (a fraction of 1024, as 5G's)."""

    name: str
    modulation: str
    bits_per_symbol: int
    rate_1024: int

    @property
    def code_rate(self) -> float:
        return self.rate_1024 / 1024

    @property
    def efficiency(self) -> float:
        """Information bits per complex QAM symbol (before CRC)."""
        return self.bits_per_symbol * self.code_rate


MCS_TABLE: dict[str, Mcs] = {m.name: m for m in (
    Mcs("qpsk-1/4", "QPSK", 2, 256),
    Mcs("qpsk-1/2", "QPSK", 2, 512),
    Mcs("qpsk-3/4", "QPSK", 2, 768),
    Mcs("16qam-1/2", "16-QAM", 4, 512),
    Mcs("16qam-3/4", "16-QAM", 4, 768),
    Mcs("64qam-2/3", "64-QAM", 6, 683),
    Mcs("64qam-5/6", "64-QAM", 6, 853),
    Mcs("256qam-3/4", "256-QAM", 8, 768),
    Mcs("256qam-9/10", "256-QAM", 8, 922),
)}
"""The MCS table, in the spirit of 5G's CQI table 2 (38.214 Table 5.2.2.1-3: QPSK to 256-QAM,
rates 78/1024 to 948/1024): 0.5 to 7.2 information bits per complex symbol, lowest first."""


def check_digital_channel(channel: str) -> None:
    """Refuse, in one line, a channel the digital chain cannot model."""
    if channel not in DIGITAL_CHANNELS:
        raise UserError(f"the digital baseline cannot model channel {channel!r} (it models "
                        f"{', '.join(DIGITAL_CHANNELS)}): choose --channel awgn|rayleigh_block|rayleigh_fast "
                        f"or drop --digital")


def require_sionna():
    """The Sionna classes of the LDPC chain, or a one-line error saying how to install Sionna."""
    try:
        from sionna.phy.fec.ldpc import LDPC5GDecoder, LDPC5GEncoder
        from sionna.phy.mapping import Demapper, Mapper
    except ImportError:
        raise UserError("--channel-code ldpc needs Sionna: pip install 'diffjscc[sionna]' (Python >= 3.11)") from None
    return LDPC5GEncoder, LDPC5GDecoder, Mapper, Demapper


# --------------------------------------------------------------------------- QAM over the channel
def _modulate(symbols: torch.Tensor) -> torch.Tensor:
    """(B, M) complex unit-energy symbols -> (B, 2M) real channel symbols of unit power each."""
    return torch.view_as_real(symbols).reshape(symbols.shape[0], -1) * math.sqrt(2.0)


def qam_llrs(symbols: torch.Tensor, channel: str, snr_db: float, demapper,
             generator: torch.Generator | None) -> torch.Tensor:
    """Send (B, M) unit-energy QAM symbols over ``channel`` at ``snr_db``; the bit LLRs (B, M m)
    with the receiver's CSI (noise variance ``N0/|h|^2`` per zero-forced symbol)."""
    x = _modulate(symbols)
    n0 = 10.0 ** (-float(snr_db) / 10.0)
    if channel == "awgn":
        y, no = awgn(x, snr_db, generator), torch.tensor(n0)
    elif channel in ("rayleigh_block", "rayleigh_fast"):
        fade = rayleigh_block if channel == "rayleigh_block" else rayleigh_fast
        y, h = fade(x, snr_db, generator, return_gain=True, csi=True)
        gain = h.abs().square().clamp_min(1e-12)
        no = n0 / (gain if gain.dim() == 2 else gain[:, None])
    else:
        check_digital_channel(channel)
    pairs = y.reshape(y.shape[0], -1, 2) / math.sqrt(2.0)
    received = torch.complex(pairs[..., 0], pairs[..., 1])
    return demapper(received, no)


# --------------------------------------------------------------------------- frame
@dataclass(frozen=True)
class Frame:
    """How one image's ``n_real`` channel uses are filled at one MCS."""

    mcs: str
    n_real: int  # real channel uses available (the JSCC system's)
    codewords: int
    codeword_bits: int  # n_cw, coded bits per codeword
    info_bits: int  # k per codeword
    crc_bits: int  # all CRC bits of the frame

    @property
    def used_real(self) -> int:
        """Real channel uses actually sent (<= n_real)."""
        return 2 * self.codewords * self.codeword_bits // MCS_TABLE[self.mcs].bits_per_symbol

    @property
    def payload_bits(self) -> int:
        """Image bits the frame carries: information bits minus CRCs."""
        return self.codewords * self.info_bits - self.crc_bits

    @property
    def budget_bytes(self) -> int:
        return max(self.payload_bits, 0) // 8

    def codewords_for(self, n_bytes: int) -> int:
        """Codewords that carry ``n_bytes`` of data (the image is lost if any of them fails)."""
        return min(self.codewords, max(1, math.ceil(8 * n_bytes * self.codewords / max(self.payload_bits, 1))))


def frame_for(mcs: Mcs | str, n_real: int) -> Frame:
    """The frame of one image at ``mcs`` over ``n_real`` real channel uses (see the module docstring)."""
    mcs = MCS_TABLE[mcs] if isinstance(mcs, str) else mcs
    symbols = int(n_real) // 2
    coded = symbols * mcs.bits_per_symbol
    count = max(1, math.ceil(coded / MAX_CODEWORD_BITS))
    n_cw = mcs.bits_per_symbol * (symbols // count)
    k = math.floor(mcs.code_rate * n_cw)
    tb_crc = 16 if count * k <= 3824 else 24
    crc = tb_crc + (24 * count if count > 1 else 0)
    if k < 12 or count * k <= crc:
        raise UserError(f"{n_real} real channel uses are too few for MCS {mcs.name} "
                        f"({n_cw} coded bits a codeword)")
    return Frame(mcs.name, int(n_real), count, n_cw, k, crc)


# --------------------------------------------------------------------------- LDPC chain
class LdpcChain:
    """Encoder, QAM mapper, channel, APP demapper and BP decoder for one MCS and codeword length."""

    def __init__(self, mcs: Mcs | str, codeword_bits: int, info_bits: int | None = None,
                 iterations: int = BP_ITERATIONS) -> None:
        encoder_cls, decoder_cls, mapper_cls, demapper_cls = require_sionna()
        self.mcs = MCS_TABLE[mcs] if isinstance(mcs, str) else mcs
        self.n = int(codeword_bits)
        self.k = int(info_bits) if info_bits is not None else math.floor(self.mcs.code_rate * self.n)
        m = self.mcs.bits_per_symbol
        self.iterations = iterations
        self.encoder = encoder_cls(self.k, self.n, num_bits_per_symbol=m, check_input=False)
        self.decoder = decoder_cls(self.encoder, num_iter=iterations, hard_out=True, return_infobits=True)
        self.mapper = mapper_cls("qam", m)
        self.demapper = demapper_cls("app", "qam", m)

    @torch.no_grad()
    def send(self, bits: torch.Tensor, channel: str, snr_db: float, generator: torch.Generator | None,
             rows: int = 0) -> torch.Tensor:
        """Decoded information bits of (B, k) ``bits``, one codeword a row. ``rows`` > 0 groups
        consecutive codewords ``rows`` at a time into one channel row (one block-fading gain)."""
        coded = self.encoder(bits.float())
        symbols = self.mapper(coded)
        if rows > 1:
            shape = symbols.shape
            llr = qam_llrs(symbols.reshape(shape[0] // rows, -1), channel, snr_db, self.demapper, generator)
            llr = llr.reshape(shape[0], -1)
        else:
            llr = qam_llrs(symbols, channel, snr_db, self.demapper, generator)
        return self.decoder(llr)

    def block_errors(self, count: int, channel: str, snr_db: float, generator: torch.Generator) -> int:
        """Codeword errors among ``count`` random codewords."""
        bits = torch.randint(0, 2, (count, self.k), generator=generator).float()
        return int((self.send(bits, channel, snr_db, generator) != bits).any(dim=1).sum())


# --------------------------------------------------------------------------- BLER table
@dataclass
class BlerCurve:
    """Block error rate against SNR of one MCS at one codeword length, measured on random codewords.

    ``points`` are (snr_db, errors, trials) on a 0.5 dB grid covering the waterfall: the walk
    stops after two all-error points below and two error-free points above, so the BLER is taken
    as that of the lowest point below the grid and of the highest above it, linear in between.
    """

    mcs: str
    channel: str  # "awgn" or "rayleigh_fast" (block fading looks up the AWGN curve)
    codeword_bits: int
    info_bits: int
    iterations: int
    max_codewords: int
    max_errors: int
    seed: int
    points: list[tuple[float, int, int]]

    def bler(self, snr_db: float | np.ndarray) -> np.ndarray:
        pts = sorted(self.points)
        xs = np.array([p[0] for p in pts])
        ys = np.array([p[1] / p[2] for p in pts])
        return np.interp(np.asarray(snr_db, dtype=np.float64), xs, ys)

    def threshold_db(self, target: float = 0.1) -> float:
        """Lowest grid SNR from which the measured BLER stays <= ``target``."""
        pts = sorted(self.points)
        for i, (snr, _, _) in enumerate(pts):
            if all(e / t <= target for _, e, t in pts[i:]):
                return snr
        return math.inf


def _cache_dir() -> Path:
    return Path(os.environ.get("DIFFJSCC_BLER_CACHE") or Path.home() / ".cache" / "diffjscc" / "bler")


def _shannon_db(efficiency: float) -> float:
    return 10 * math.log10(2.0 ** efficiency - 1.0)


def bler_curve(mcs: Mcs | str, codeword_bits: int, info_bits: int, channel: str = "awgn",
               iterations: int = BP_ITERATIONS, max_codewords: int = 200, max_errors: int = 20,
               seed: int = 0, batch: int = 50, cache: bool = True) -> BlerCurve:
    """The BLER curve of ``mcs`` (cached as JSON under ``$DIFFJSCC_BLER_CACHE`` or
    ``~/.cache/diffjscc/bler``), measured once when missing: at each grid SNR, random codewords
    until ``max_errors`` block errors or ``max_codewords`` codewords. The walk starts at the
    Shannon limit of the MCS's efficiency (no code works below it) and goes up then down."""
    mcs = MCS_TABLE[mcs] if isinstance(mcs, str) else mcs
    table_channel = "awgn" if channel in ("awgn", "rayleigh_block") else channel
    check_digital_channel(table_channel)
    import sionna

    key = dict(mcs=mcs.name, channel=table_channel, codeword_bits=int(codeword_bits), info_bits=int(info_bits),
               iterations=iterations, max_codewords=max_codewords, max_errors=max_errors, seed=seed,
               sionna=sionna.__version__, format=1)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = _cache_dir() / f"{mcs.name.replace('/', '_')}_{table_channel}_{codeword_bits}_{digest}.json"
    if cache and path.is_file():
        stored = json.loads(path.read_text())
        return BlerCurve(**{k: stored[k] for k in BlerCurve.__dataclass_fields__},)
    chain = LdpcChain(mcs, codeword_bits, info_bits, iterations)
    generator = torch.Generator().manual_seed(seed)

    def measure(snr: float) -> tuple[float, int, int]:
        errors = trials = 0
        while trials < max_codewords and errors < max_errors:
            size = min(batch, max_codewords - trials)
            errors += chain.block_errors(size, table_channel, snr, generator)
            trials += size
        return (snr, errors, trials)

    start = math.floor(_shannon_db(mcs.efficiency) / SNR_STEP_DB) * SNR_STEP_DB
    points, clean, snr = [], 0, start
    while clean < 2 and snr <= 60.0:
        points.append(measure(snr))
        clean = clean + 1 if points[-1][1] == 0 else 0
        snr += SNR_STEP_DB
    failed, snr = 0, start - SNR_STEP_DB
    if points[0][1] == points[0][2]:
        failed = 1
    while failed < 2 and snr >= -15.0:
        points.append(measure(snr))
        failed = failed + 1 if points[-1][1] == points[-1][2] else 0
        snr -= SNR_STEP_DB
    curve = BlerCurve(mcs.name, table_channel, int(codeword_bits), int(info_bits), iterations, max_codewords,
                      max_errors, seed, sorted(points))
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps({**asdict(curve), "key": key}, indent=1))
    return curve
