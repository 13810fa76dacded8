"""Differentiable wireless channels for the JSCC latent.

Conventions used throughout this module
---------------------------------------
* A latent ``z`` of shape ``(B, ...)`` is a block of ``N = prod(shape[1:])`` **real**
  channel symbols per sample.
* Power is measured **per real symbol**: after :func:`normalize_power`,
  ``mean(z**2) = 1`` for every sample.
* SNR is given in dB and is the SNR **per real symbol**: the noise added to each real
  symbol has variance ``sigma**2 = 10**(-SNR_dB / 10)``.
* Complex view (fading channels): the flattened latent is read as **interleaved** pairs,
  complex symbol ``k`` is ``s_k = z[2k] + 1j * z[2k+1]`` (``N`` must be even). A complex
  symbol therefore has power ``E|s|^2 = 2`` and complex noise ``E|n|^2 = 2 sigma^2``, so the
  per-complex-symbol SNR equals the per-real-symbol SNR.
* Bandwidth ratio ``k/n``: each real symbol counts as one channel use (see
  :func:`bandwidth_ratio`).
* Equalisation (fading with receiver CSI, ``equalizer``): ``"mmse"`` returns
  ``s_hat = conj(h) y / (|h|^2 + sigma^2)`` (``sigma^2 = E|n|^2 / E|s|^2``, the noise variance per
  real symbol), whose error per real symbol has variance ``sigma^2 / (|h|^2 + sigma^2) <= 1`` and
  whose size is bounded, ``|s_hat| <= |s| + |n| / (2 sigma)``; ``"zf"`` returns ``y / h = s + n / h``,
  unbiased but with error variance ``sigma^2 / |h|^2``, unbounded in deep fades
  (``E[1/|h|^2]`` is infinite under Rayleigh fading).
* Receiver SNR: a fading channel with CSI tells the receivers the SNR of the block they got,
  ``SNR_dB + 10 log10(mean_k |h_k|^2)`` per sample (:func:`received_snr_db`: ``|h|^2 * SNR``
  under block fading, within a fraction of a dB of the nominal SNR under fast fading); the
  transmitter, which does not know ``h``, keeps the nominal SNR.

All functions are differentiable with respect to their input (the noise and fading
gains are sampled without gradient) and take an optional ``torch.Generator`` for
reproducible draws — or a :class:`~diffjscc.runtime.seeding.BatchGenerator`, which draws for a whole batch and keeps
some of its rows, so that a sample's noise does not depend on how a batch is split across
processes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from diffjscc.config import CHANNELS, EQUALIZERS
from diffjscc.errors import UserError
from diffjscc.runtime.seeding import AnyGenerator, BatchGenerator

__all__ = [
    "Channel",
    "awgn",
    "bandwidth_ratio",
    "from_complex",
    "noise_std",
    "normalize_power",
    "parse_snr_list",
    "rayleigh_block",
    "received_snr_db",
    "rayleigh_fast",
    "to_complex",
]

_POWER_EPS = 1e-12
_GAIN_EPS = 1e-12


# --------------------------------------------------------------------------- helpers
def _randn(shape: Sequence[int], like: Tensor, generator: AnyGenerator, batch_dim: int = 0) -> Tensor:
    """Standard normal draw of ``shape`` on ``like``'s device/dtype.

    Drawn on the generator's device (so a CPU generator also works for CUDA inputs)
    in float32/float64, then moved and cast to match ``like``. ``batch_dim`` is the batch
    axis of ``shape`` (used by a :class:`BatchGenerator`).
    """
    dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
    if isinstance(generator, BatchGenerator):
        out = generator.randn(shape, batch_dim=batch_dim, device=like.device, dtype=dtype)
    else:
        device = generator.device if generator is not None else like.device
        out = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    return out.to(device=like.device, dtype=like.dtype)


def _snr_to_sigma(snr_db: float | Tensor, x: Tensor) -> Tensor:
    """Noise std per real symbol, ``sigma = 10**(-SNR_dB/20)``, shaped to broadcast on ``x``.

    ``snr_db`` is a float, a 0-d tensor, or a ``(B,)`` tensor (one SNR per sample).
    """
    if isinstance(snr_db, Tensor):
        # Checked where that costs nothing: reading a CUDA tensor back would block every step
        # (the trainer's per-sample SNRs are drawn on the device from a finite range).
        if snr_db.device.type == "cpu" and not torch.isfinite(snr_db).all():
            raise UserError("snr_db contains non-finite values")
        snr = snr_db.detach().to(device=x.device, dtype=torch.float32)
        if snr.dim() == 0:
            snr = snr.expand(x.shape[0])
        elif snr.dim() != 1 or snr.shape[0] != x.shape[0]:
            raise UserError(
                f"per-sample snr_db must have shape ({x.shape[0]},), got {tuple(snr.shape)}"
            )
    else:
        snr_f = float(snr_db)
        if not math.isfinite(snr_f):
            raise UserError(f"snr_db must be a finite number of dB, got {snr_db!r}")
        snr = torch.full((x.shape[0],), snr_f, device=x.device, dtype=torch.float32)
    sigma = torch.pow(10.0, -snr / 20.0).to(x.dtype)
    return sigma.view(-1, *([1] * (x.dim() - 1)))


def noise_std(snr_db: float) -> float:
    """Noise standard deviation per real symbol for unit signal power: ``10**(-SNR/20)``."""
    return 10.0 ** (-float(snr_db) / 20.0)


def _pairs(x: Tensor) -> tuple[Tensor, Tensor]:
    """Split ``x`` (B, ...) into interleaved real/imag parts of shape (B, N/2)."""
    if x.dim() < 2:
        raise UserError(f"channel input must have a batch dimension, got shape {tuple(x.shape)}")
    n = x[0].numel()
    if n % 2 != 0:
        raise UserError(
            f"complex channel needs an even number of real symbols per sample, got {n}"
        )
    p = x.reshape(x.shape[0], n // 2, 2)
    return p[..., 0], p[..., 1]


def _unpairs(re: Tensor, im: Tensor, shape: torch.Size) -> Tensor:
    """Inverse of :func:`_pairs`: interleave (B, N/2) real/imag back into ``shape``."""
    return torch.stack((re, im), dim=-1).reshape(shape)


def to_complex(x: Tensor) -> Tensor:
    """Complex view of a real latent: ``s_k = x[2k] + 1j x[2k+1]`` over the flattened sample.

    Returns a complex tensor of shape (B, N/2). ``N`` must be even (else ``UserError``).
    """
    re, im = _pairs(x)
    return _complex(re, im)


def _complex(re: Tensor, im: Tensor) -> Tensor:
    """``re + 1j im`` (half/bfloat16 parts are promoted to float32 first)."""
    if re.dtype not in (torch.float32, torch.float64):
        re, im = re.float(), im.float()
    return torch.complex(re, im)


def from_complex(s: Tensor, shape: Sequence[int]) -> Tensor:
    """Inverse of :func:`to_complex`: interleave real/imag parts of ``s`` (B, N/2) into ``shape``."""
    return _unpairs(s.real, s.imag, torch.Size(shape))


# --------------------------------------------------------------------------- channel maths
def normalize_power(z: Tensor, eps: float = _POWER_EPS) -> Tensor:
    """Scale each sample to unit average power per real symbol.

    ``z_i <- z_i / sqrt(mean_j(z_ij^2) + eps)`` over all non-batch dims, so
    ``mean(z_i^2) = 1`` (exactly up to ``eps``; an all-zero sample stays zero).
    """
    if z.dim() < 2:
        raise UserError(f"channel input must have a batch dimension, got shape {tuple(z.shape)}")
    dims = tuple(range(1, z.dim()))
    power = z.pow(2).mean(dim=dims, keepdim=True)
    return z * torch.rsqrt(power + eps)


def awgn(x: Tensor, snr_db: float | Tensor, generator: AnyGenerator = None) -> Tensor:
    """Additive white Gaussian noise: ``y = x + n``, ``n ~ N(0, sigma^2)`` i.i.d. per real symbol.

    ``x`` is assumed to have unit power per real symbol; ``sigma^2 = 10**(-SNR_dB/10)``.
    ``snr_db`` is a float or a (B,) tensor (per-sample SNR, broadcast over other dims).
    """
    sigma = _snr_to_sigma(snr_db, x)
    return x + sigma * _randn(x.shape, x, generator)


def _rayleigh(
    x: Tensor,
    snr_db: float | Tensor,
    generator: AnyGenerator,
    return_gain: bool,
    per_symbol: bool,
    csi: bool = True,
    equalizer: str = "mmse",
) -> Tensor | tuple[Tensor, Tensor]:
    """Shared Rayleigh implementation (block: one h per sample; fast: one h per complex symbol).

    ``csi=False``: the receiver does not know h and gets ``y = h s + n`` unequalised.
    """
    _check_equalizer(equalizer)
    sr, si = _pairs(x)  # (B, M)
    b, m = sr.shape
    sigma = _snr_to_sigma(snr_db, sr)  # (B, 1)
    hshape = (b, m) if per_symbol else (b, 1)
    # h ~ CN(0, 1): real and imaginary parts ~ N(0, 1/2)
    h = _randn((2, *hshape), sr, generator, batch_dim=1) * math.sqrt(0.5)
    hr, hi = h[0], h[1]
    # complex noise with per-real-component variance sigma^2 (E|n|^2 = 2 sigma^2)
    n = _randn((2, b, m), sr, generator, batch_dim=1) * sigma
    nr, ni = n[0], n[1]
    # y = h s + n
    yr = hr * sr - hi * si + nr
    yi = hr * si + hi * sr + ni
    if csi:
        # s_hat = y conj(h) / d: zero forcing d = |h|^2 (s + n / h), MMSE d = |h|^2 + sigma^2
        # (E|n|^2 / E|s|^2 = 2 sigma^2 / 2); the floor only matters for a zero-forcing h ~ 0
        g2 = hr * hr + hi * hi
        d = (g2 + sigma * sigma if equalizer == "mmse" else g2).clamp_min(_GAIN_EPS)
        yr, yi = (yr * hr + yi * hi) / d, (yi * hr - yr * hi) / d
    out = _unpairs(yr, yi, x.shape)
    if not return_gain:
        return out
    gain = _complex(hr, hi)
    return out, (gain if per_symbol else gain[:, 0])


def rayleigh_block(
    x: Tensor,
    snr_db: float | Tensor,
    generator: AnyGenerator = None,
    return_gain: bool = False,
    csi: bool = True,
    equalizer: str = "mmse",
) -> Tensor | tuple[Tensor, Tensor]:
    """Block Rayleigh fading with perfect CSI and MMSE (or zero-forcing) equalisation.

    Per sample, one ``h ~ CN(0, 1)`` multiplies all complex symbols (interleaved view, see
    module docstring): ``y = h s + n``, ``n ~ CN(0, 2 sigma^2)`` (``sigma^2`` per real
    component, ``sigma^2 = 10**(-SNR_dB/10)``). The SNR of the block is ``|h|^2 * SNR``, i.e.
    ``SNR_dB + 10 log10 |h|^2``. The receiver returns ``conj(h) y / (|h|^2 + sigma^2)``
    (``equalizer="mmse"``) or ``y / h = s + n / h`` (``"zf"``); ``csi=False`` returns ``y``
    itself (no CSI at the receiver).

    Returns a real tensor of ``x``'s shape, plus the complex gains ``h`` of shape (B,)
    when ``return_gain`` is true.
    """
    return _rayleigh(x, snr_db, generator, return_gain, per_symbol=False, csi=csi, equalizer=equalizer)


def rayleigh_fast(
    x: Tensor,
    snr_db: float | Tensor,
    generator: AnyGenerator = None,
    return_gain: bool = False,
    csi: bool = True,
    equalizer: str = "mmse",
) -> Tensor | tuple[Tensor, Tensor]:
    """Fast (i.i.d. per complex symbol) Rayleigh fading with perfect CSI and MMSE or zero forcing.

    Like :func:`rayleigh_block` but with an independent ``h_k ~ CN(0, 1)`` for every complex
    symbol ``k``; the SNR of symbol ``k`` is ``|h_k|^2 * SNR``.
    Returns a real tensor of ``x``'s shape, plus ``h`` of shape (B, N/2) when asked.
    """
    return _rayleigh(x, snr_db, generator, return_gain, per_symbol=True, csi=csi, equalizer=equalizer)


def received_snr_db(snr_db: float | Tensor, gain: Tensor) -> Tensor:
    """SNR (dB) of each received block: ``snr_db + 10 log10(mean_k |h_k|^2)``, shape (B,).

    ``gain`` holds the complex gains, (B,) for block fading or (B, M) per symbol; ``snr_db`` is
    the nominal SNR (a float or (B,)). Under block fading this is ``|h|^2 * SNR``, what an
    SNR-adaptive receiver (ADJSCC) should be told; it is drawn without gradient.
    """
    g2 = gain.detach().abs().square().reshape(gain.shape[0], -1).mean(dim=1).to(torch.float32)
    snr = torch.as_tensor(snr_db, dtype=torch.float32, device=g2.device).detach()
    return snr + 10.0 * torch.log10(g2.clamp_min(_GAIN_EPS))


def _check_equalizer(equalizer: str) -> None:
    if equalizer not in EQUALIZERS:
        raise UserError(f"unknown equalizer {equalizer!r}; expected one of {', '.join(EQUALIZERS)}")


def bandwidth_ratio(num_real_symbols: int, image_shape: tuple[int, int, int]) -> float:
    """Bandwidth (compression) ratio ``k/n`` = real channel symbols / source dimensions.

    Project convention: each **real** symbol is one channel use, so a (8, 8, 8) latent
    (512 real symbols) for a 3x32x32 image (3072 values) gives ``512 / 3072 = 1/6``.
    Counting complex channel uses instead (two real symbols each) gives half this value.
    """
    if isinstance(num_real_symbols, bool) or int(num_real_symbols) != num_real_symbols \
            or num_real_symbols <= 0:
        raise UserError(f"num_real_symbols must be a positive integer, got {num_real_symbols!r}")
    dims = tuple(image_shape)
    if len(dims) == 0 or any(int(d) != d or d <= 0 for d in dims):
        raise UserError(f"image_shape must be positive integers, got {image_shape!r}")
    return float(num_real_symbols) / float(math.prod(int(d) for d in dims))


def parse_snr_list(text: str) -> list[float]:
    """Parse a comma-separated list of SNRs in dB, e.g. ``"0,5,10"`` or ``"-5, 0, 2.5"``."""
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"SNR list must be comma-separated numbers in dB, got {text!r}")
    values: list[float] = []
    for item in text.split(","):
        item = item.strip()
        try:
            v = float(item)
        except ValueError:
            raise UserError(f"bad SNR value {item!r} in SNR list {text!r}") from None
        if not math.isfinite(v):
            raise UserError(f"SNR values must be finite, got {item!r} in {text!r}")
        values.append(v)
    return values


# --------------------------------------------------------------------------- module
class Channel(nn.Module):
    """Power normalisation followed by a noisy channel: ``y = channel(normalize_power(z))``.

    kinds: ``"awgn"``, ``"rayleigh_block"``, ``"rayleigh_fast"`` (equalised by ``equalizer``,
    ``"mmse"`` or ``"zf"``, with perfect CSI, or unequalised with ``csi=False``),
    ``"sionna_tdl"`` (3GPP TDL + OFDM from the optional
    Sionna package, configured by ``sionna_options``; see :mod:`diffjscc.channel_sionna`) and
    ``"none"`` (identity after power normalisation; for debugging).

    SNR (dB, per real symbol) when ``forward`` gets ``snr_db=None``: in training mode a
    per-sample SNR ``~ U[lo, hi]`` if ``snr_range=(lo, hi)`` is set, else the fixed
    ``snr_db``; in eval mode always the fixed ``snr_db``.
    """

    def __init__(
        self,
        kind: str = "awgn",
        snr_db: float = 10.0,
        snr_range: tuple[float, float] | None = None,
        csi: bool = True,
        sionna_options: dict | None = None,
        equalizer: str = "mmse",
    ) -> None:
        super().__init__()
        if kind not in CHANNELS:
            raise UserError(
                f"unknown channel kind {kind!r}; expected one of {', '.join(CHANNELS)}"
            )
        _check_equalizer(equalizer)
        try:
            snr_f = float(snr_db)
        except (TypeError, ValueError):
            raise UserError(f"channel snr_db must be a number of dB, got {snr_db!r}") from None
        if not math.isfinite(snr_f):
            raise UserError(f"channel snr_db must be finite, got {snr_db!r}")
        rng: tuple[float, float] | None = None
        if snr_range is not None:
            try:
                lo, hi = (float(v) for v in snr_range)
            except (TypeError, ValueError):
                raise UserError(
                    f"snr_range must be two numbers (lo, hi) in dB, got {snr_range!r}"
                ) from None
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise UserError(f"snr_range must be finite, got {snr_range!r}")
            if lo > hi:
                raise UserError(f"snr_range lo > hi: ({lo}, {hi})")
            rng = (lo, hi)
        self.kind = kind
        self.snr_db = snr_f
        self.snr_range = rng
        self.csi = bool(csi)
        self.equalizer = equalizer
        self.sionna = None
        if kind == "sionna_tdl":
            from diffjscc.channel_sionna import build_sionna_channel

            self.sionna = build_sionna_channel(csi=self.csi, equalizer=equalizer, **(sionna_options or {}))

    def sample_snr(
        self,
        batch: int,
        device: torch.device | str | None = None,
        generator: AnyGenerator = None,
    ) -> Tensor:
        """Per-sample SNRs in dB, shape (B,): ``U[lo, hi]`` in training mode with a range, else fixed."""
        if self.training and self.snr_range is not None:
            lo, hi = self.snr_range
            if isinstance(generator, BatchGenerator):
                u = generator.rand((batch,), device=device)
            else:
                gdev = generator.device if generator is not None else device
                u = torch.rand(batch, generator=generator, device=gdev)
            snr = lo + (hi - lo) * u
            return snr if device is None else snr.to(device)
        return torch.full((batch,), self.snr_db, device=device)

    def forward(
        self,
        z: Tensor,
        snr_db: float | Tensor | None = None,
        generator: AnyGenerator = None,
        return_receiver_snr: bool = False,
    ) -> Tensor | tuple[Tensor, float | Tensor | None]:
        """Normalise power per sample, then apply the channel; output has ``z``'s shape.

        With ``return_receiver_snr`` also the SNR the receivers are told: for fading with CSI
        the SNR of each received block (:func:`received_snr_db`, shape (B,)), else the
        nominal SNR used (``snr_db``, or the one drawn when it is None).
        """
        x = normalize_power(z)
        if self.kind == "none":
            return (x, snr_db) if return_receiver_snr else x
        snr = self.sample_snr(z.shape[0], z.device, generator) if snr_db is None else snr_db
        gain = None
        if self.kind == "awgn":
            y = awgn(x, snr, generator)
        elif self.kind == "rayleigh_block":
            y, gain = rayleigh_block(x, snr, generator, return_gain=True, csi=self.csi, equalizer=self.equalizer)
        elif self.kind == "rayleigh_fast":
            y, gain = rayleigh_fast(x, snr, generator, return_gain=True, csi=self.csi, equalizer=self.equalizer)
        else:
            y, gain = self.sionna(x, snr, generator, return_gain=True)
        if not return_receiver_snr:
            return y
        return y, (received_snr_db(snr, gain) if gain is not None and self.csi else snr)

    def extra_repr(self) -> str:
        s = f"kind={self.kind!r}, snr_db={self.snr_db}"
        if self.snr_range is not None:
            s += f", snr_range={self.snr_range}"
        if self.kind.startswith("rayleigh") and not self.csi:
            s += ", csi=False"
        elif self.kind.startswith("rayleigh"):
            s += f", equalizer={self.equalizer!r}"
        return s
