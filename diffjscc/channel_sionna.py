"""A standard channel model for the JSCC latent: 3GPP TR 38.901 TDL fading over OFDM, from Sionna.

The channel kinds of :mod:`diffjscc.channel` are textbook models (AWGN, i.i.d. Rayleigh). This
module sends the same latent through a *standardised* multipath channel instead — Sionna's
tapped-delay-line (TDL-A … TDL-E) model seen through an OFDM resource grid — so that a JSCC
system can be trained and scored on frequency-selective (and, with a speed, time-varying)
fading. Sionna is an optional dependency (``pip install 'diffjscc[sionna]'``, Python >= 3.11):
importing this module never imports it; constructing :class:`SionnaTDLChannel` does.

Conventions are those of :mod:`diffjscc.channel` (read its docstring first): a latent of ``N``
real symbols per sample with unit power per real symbol, SNR in dB per real symbol (noise
variance ``sigma^2 = 10**(-SNR/10)`` per real symbol), complex view ``s_k = z[2k] + 1j z[2k+1]``,
per-sample SNR tensors of shape (B,), and an optional ``torch.Generator`` or
:class:`~diffjscc.channel.BatchGenerator` for reproducible draws.

One transmission (per sample, ``M = N/2`` complex symbols)
---------------------------------------------------------
1. **Mapping.** ``s_0 … s_{M-1}`` fill an OFDM resource grid of ``S = ceil(M / F)`` OFDM symbols
   × ``F = fft_size`` subcarriers row by row (OFDM symbol by OFDM symbol, subcarrier index
   fastest); the last OFDM symbol is zero-padded. No pilots, guard bands or DC null: with
   perfect CSI none are needed, and every resource element (RE) carries data. This is exactly
   what Sionna's ``ResourceGridMapper`` does for a grid with an empty pilot pattern.
2. **Channel.** Sionna's ``TDL`` draws a channel impulse response for each sample (one link,
   one antenna at each end), sampled once per OFDM symbol (so a speed > 0 makes the channel
   change from one OFDM symbol to the next), and ``GenerateOFDMChannel`` turns it into the
   frequency response ``h[s, f]`` of every RE; ``ApplyOFDMChannel`` gives ``h[s, f] x[s, f]``.
   An ideal OFDM link is assumed (cyclic prefix longer than the channel: no ISI, no ICI).
3. **Noise.** ``y = h x + n`` with ``n ~ CN(0, 2 sigma^2)``: variance ``sigma^2`` per real
   component, the project's convention (drawn here, not by Sionna: see *Reproducibility*).
4. **Receiver.** With ``csi=True`` (perfect receiver CSI) one-tap equalisation per RE:
   MMSE (``equalizer="mmse"``, the default) ``x_hat = y conj(h) / (|h|^2 + sigma^2)``, or zero
   forcing (``"zf"``) ``x_hat = y conj(h) / |h|^2 = x + n / h``, as :mod:`diffjscc.channel`
   defines them; with ``csi=False`` the unequalised ``y`` itself.
   The data REs are read back in mapping order and returned as real symbols in ``x``'s shape.

SNR and normalisation
---------------------
Sionna normalises every TDL power-delay profile to unit total power and its sum-of-sinusoids
taps have unit mean power, so ``E|h[s, f]|^2 = 1`` for every RE, averaged over channel draws.
Hence ``snr_db`` is the **average** SNR per real symbol (equivalently per complex symbol, since
``E|s|^2 = 2`` and ``E|n|^2 = 2 sigma^2``) over the channel distribution, the same definition
as :func:`diffjscc.channel.rayleigh_block`. The SNR of one RE is ``|h[s, f]|^2 * 10**(SNR/10)``:
after zero forcing the error of each real output symbol has variance ``sigma^2 / |h[s, f]|^2``,
after MMSE ``sigma^2 / (|h[s, f]|^2 + sigma^2)``. ``normalize_channel=True`` instead uses Sionna's per-sample
normalisation (``GenerateOFDMChannel(normalize_channel=True)``): each sample's ``h`` is scaled
so that its mean ``|h|^2`` over the whole grid is exactly 1, which removes the fading of the
sample's average power and keeps only its frequency/time selectivity. With the defaults
(64 subcarriers × 30 kHz = 1.92 MHz, 100 ns delay spread) the grid is narrower than the
coherence bandwidth, so that option would remove most of the fading; it is off by default.

Reproducibility
---------------
Sionna draws its randomness from ``sionna.phy.config.torch_rng(device)``, a generator that
``sionna.phy.config.seed`` seeds. This module does not use that generator, nor the seed:

* the TDL draws (Doppler, angles of arrival, phases) are made with **the generator passed to
  forward** — ``torch.Generator`` as given, the generator inside a ``BatchGenerator`` (drawn for
  the whole batch of ``total`` rows, the slice kept, so a sample's channel does not depend on
  how a batch is split across processes), or torch's default generator of the device when
  ``generator`` is None (so ``torch.manual_seed`` governs it, like every other channel);
* the noise is drawn with the same generator, after the TDL draws.

So the same generator state gives the same output (same device, dtype, Sionna version and
options). Not reproducible: across devices (CPU and CUDA streams differ), between float32 and
float64 inputs (Sionna draws in its working precision), across Sionna versions that change the
draw order or the TR 38.901 tables (we pin ``spec_version="19.2"``), and under
``torch.compile``, where Sionna ignores explicit generators and uses the global RNG.

Note that importing ``sionna.phy``, and setting ``sionna.phy.config.seed``, re-seeds torch's
*global* CPU (and CUDA) generator as a side effect (``Config._reset_rngs``). The lazy import
here saves and restores torch's global RNG state around the first import, so constructing this
channel does not disturb a run seeded with ``torch.manual_seed``; never set
``sionna.phy.config.seed`` in diffjscc code for the same reason.

Gradients flow from the output to ``x`` (through ``h x`` and the equaliser); the channel
response and the noise are drawn without gradient.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from diffjscc.config import EQUALIZERS, TDL_MODELS
from diffjscc.errors import UserError
from diffjscc.runtime.seeding import BatchGenerator

__all__ = ["TDL_MODELS", "SionnaTDLChannel", "build_sionna_channel", "MISSING_SIONNA_MESSAGE"]

MISSING_SIONNA_MESSAGE = (
    "channel 'sionna_tdl' needs the optional Sionna package: pip install 'diffjscc[sionna]'"
)
_TDL_SPEC_VERSION = "19.2"  # TR 38.901 tables, pinned: a Sionna upgrade cannot change them silently
_GAIN_EPS = 1e-12  # floor on the equaliser's denominator (as diffjscc.channel)

_sionna: SimpleNamespace | None = None  # the Sionna classes, once imported


def _import_sionna() -> SimpleNamespace:
    """Import the few Sionna classes this module uses, once, without touching torch's RNG.

    ``import sionna.phy`` calls ``torch.default_generator.seed()`` (and the CUDA equivalents);
    the global RNG state is restored afterwards so a seeded run stays seeded. A missing or
    broken Sionna (any ``ImportError``: the package, or one of its dependencies) becomes the
    one-line :class:`UserError` the CLI shows.
    """
    global _sionna
    if _sionna is not None:
        return _sionna
    cpu_state = torch.random.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        from sionna.phy.channel import ApplyOFDMChannel, GenerateOFDMChannel
        from sionna.phy.channel.tr38901 import TDL
        from sionna.phy.ofdm import ResourceGrid
    except ImportError:
        raise UserError(MISSING_SIONNA_MESSAGE) from None
    finally:
        torch.random.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)

    class _GeneratorTDL(TDL):  # type: ignore[misc, valid-type]
        """Sionna's TDL, drawing from the generator we set instead of Sionna's global one.

        ``TDL.__call__`` passes ``self.torch_rng`` to every draw; overriding that property is
        the narrowest way to route its randomness through diffjscc's generators.
        """

        draw_generator: torch.Generator | None = None

        @property
        def torch_rng(self) -> torch.Generator:
            if self.draw_generator is None:
                raise RuntimeError("draw_generator must be set before drawing a TDL channel")
            return self.draw_generator

    _sionna = SimpleNamespace(TDL=_GeneratorTDL, ResourceGrid=ResourceGrid,
                              GenerateOFDMChannel=GenerateOFDMChannel,
                              ApplyOFDMChannel=ApplyOFDMChannel)
    return _sionna


def _sionna_device(device: torch.device) -> str:
    """Sionna's name for ``device``: ``"cpu"`` or ``"cuda:<index>"`` (it wants the index)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index}"
    return device.type


def _default_generator(device: torch.device) -> torch.Generator:
    """Torch's global generator of ``device`` (what ``torch.randn(..., generator=None)`` uses)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.default_generators[index]
    if device.type == "cpu":
        return torch.default_generator
    raise UserError(f"channel 'sionna_tdl' supports CPU and CUDA tensors, got device {device}")


def _snr_sigma(snr_db: float | Tensor, batch: int, device: torch.device) -> Tensor:
    """Noise std per real component, ``10**(-SNR/20)``, shape (B,) float64 on ``device``."""
    if isinstance(snr_db, Tensor):
        snr = snr_db.detach().to(device=device, dtype=torch.float64)
        if snr.dim() == 0:
            snr = snr.expand(batch)
        elif snr.dim() != 1 or snr.shape[0] != batch:
            raise UserError(f"per-sample snr_db must have shape ({batch},), got {tuple(snr.shape)}")
    else:
        try:
            value = float(snr_db)
        except (TypeError, ValueError):
            raise UserError(f"snr_db must be a number of dB, got {snr_db!r}") from None
        snr = torch.full((batch,), value, device=device, dtype=torch.float64)
    if not torch.isfinite(snr).all():
        raise UserError("snr_db contains non-finite values")
    return torch.pow(10.0, -snr / 20.0)


class SionnaTDLChannel(nn.Module):
    """3GPP TDL fading over an OFDM grid (Sionna), with AWGN and MMSE, zero forcing or no CSI.

    See the module docstring for the transmission, the SNR definition and what is
    reproducible. Arguments (units in the names):

    * ``model``: TR 38.901 TDL profile ``"A"`` … ``"E"`` (A–C: NLOS Rayleigh taps; D, E: a
      LOS first tap, Rician).
    * ``delay_spread_ns``: RMS delay spread that scales the profile's normalised delays
      (TR 38.901 Table 7.7.3-1/2: e.g. 10 ns very short, 100 ns nominal, 300 ns long).
    * ``carrier_frequency_ghz``: carrier frequency; with ``speed_mps`` it sets the maximum
      Doppler shift ``f_D = speed / c * f_c``.
    * ``speed_mps``: receiver speed; 0 gives a channel that is constant over the grid's time.
    * ``subcarrier_spacing_khz``, ``fft_size``: the OFDM grid (30 kHz × 64 subcarriers).
    * ``csi``: the receiver knows ``h`` and equalises each RE; False returns ``y = h x + n``
      unequalised.
    * ``equalizer``: with ``csi``, ``"mmse"`` (``conj(h) y / (|h|^2 + sigma^2)``) or ``"zf"``
      (``y / h``).
    * ``normalize_channel``: Sionna's per-sample normalisation to unit mean ``|h|^2`` over the
      grid (default off: the SNR is the average over channel draws).

    The Sionna objects hold no learnable state and are built on first use for each
    (device, precision, grid size) and cached outside the module's state dict.
    """

    def __init__(
        self,
        model: str = "A",
        delay_spread_ns: float = 100.0,
        carrier_frequency_ghz: float = 3.5,
        speed_mps: float = 0.0,
        subcarrier_spacing_khz: float = 30.0,
        fft_size: int = 64,
        csi: bool = True,
        normalize_channel: bool = False,
        equalizer: str = "mmse",
    ) -> None:
        super().__init__()
        if not isinstance(model, str) or model.upper() not in TDL_MODELS:
            raise UserError(f"TDL model must be one of {', '.join(TDL_MODELS)}, got {model!r}")
        self.model = model.upper()
        self.delay_spread_ns = self._positive("TDL delay spread (ns)", delay_spread_ns)
        self.carrier_frequency_ghz = self._positive("carrier frequency (GHz)",
                                                    carrier_frequency_ghz)
        self.subcarrier_spacing_khz = self._positive("subcarrier spacing (kHz)",
                                                     subcarrier_spacing_khz)
        speed = self._number("UE speed (m/s)", speed_mps)
        if speed < 0:
            raise UserError(f"UE speed (m/s) must be >= 0, got {speed_mps!r}")
        self.speed_mps = speed
        if isinstance(fft_size, bool) or not isinstance(fft_size, int) or fft_size < 1:
            raise UserError(f"fft_size must be a positive integer, got {fft_size!r}")
        self.fft_size = fft_size
        self.csi = bool(csi)
        if equalizer not in EQUALIZERS:
            raise UserError(f"unknown equalizer {equalizer!r}; expected one of {', '.join(EQUALIZERS)}")
        self.equalizer = equalizer
        self.normalize_channel = bool(normalize_channel)
        _import_sionna()  # fail here, at construction, with the one-line message
        self._tdl: dict[tuple[str, str], Any] = {}
        self._ofdm: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}

    @staticmethod
    def _number(name: str, value: Any) -> float:
        if isinstance(value, bool):
            raise UserError(f"{name} must be a number, got {value!r}")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise UserError(f"{name} must be a number, got {value!r}") from None
        if not math.isfinite(out):
            raise UserError(f"{name} must be finite, got {value!r}")
        return out

    @classmethod
    def _positive(cls, name: str, value: Any) -> float:
        out = cls._number(name, value)
        if out <= 0:
            raise UserError(f"{name} must be > 0, got {value!r}")
        return out

    # ------------------------------------------------------------------ Sionna objects
    def _sionna_blocks(self, device: str, precision: str, num_ofdm_symbols: int
                       ) -> tuple[Any, Any, Any]:
        """(TDL, GenerateOFDMChannel, ApplyOFDMChannel) for ``num_ofdm_symbols``, cached."""
        key = (device, precision, num_ofdm_symbols)
        if key not in self._ofdm:
            sn = _import_sionna()
            tkey = (device, precision)
            if tkey not in self._tdl:
                self._tdl[tkey] = sn.TDL(
                    model=self.model, delay_spread=self.delay_spread_ns * 1e-9,
                    carrier_frequency=self.carrier_frequency_ghz * 1e9,
                    min_speed=self.speed_mps, max_speed=self.speed_mps,
                    precision=precision, device=device, spec_version=_TDL_SPEC_VERSION)
            grid = sn.ResourceGrid(num_ofdm_symbols=num_ofdm_symbols, fft_size=self.fft_size,
                                   subcarrier_spacing=self.subcarrier_spacing_khz * 1e3,
                                   precision=precision, device=device)
            generate = sn.GenerateOFDMChannel(self._tdl[tkey], grid,
                                              normalize_channel=self.normalize_channel,
                                              precision=precision, device=device)
            apply = sn.ApplyOFDMChannel(precision=precision, device=device)
            self._ofdm[key] = (self._tdl[tkey], generate, apply)
        return self._ofdm[key]

    def _draw_channel(self, batch: int, num_ofdm_symbols: int, precision: str,
                      like: Tensor, generator: torch.Generator | BatchGenerator | None) -> Tensor:
        """Frequency response (B, S, F), complex, on ``like``'s device, without gradient.

        Drawn on the generator's device (``like``'s when there is none) with that generator;
        a BatchGenerator draws for its whole batch and keeps its rows.
        """
        gen = generator.generator if isinstance(generator, BatchGenerator) else generator
        device = gen.device if gen is not None else like.device
        tdl, generate, _ = self._sionna_blocks(_sionna_device(device), precision, num_ofdm_symbols)
        rows = generator.total if isinstance(generator, BatchGenerator) else batch
        tdl.draw_generator = gen if gen is not None else _default_generator(device)
        try:
            with torch.no_grad():
                h = generate(rows)  # [rows, rx=1, rx_ant=1, tx=1, tx_ant=1, S, F]
        finally:
            tdl.draw_generator = None
        h = h[:, 0, 0, 0, 0]
        if isinstance(generator, BatchGenerator):
            h = h[generator.start:generator.stop]
        return h.to(like.device)

    def _draw_noise(self, shape: tuple[int, ...], like: Tensor,
                    generator: torch.Generator | BatchGenerator | None) -> Tensor:
        """Standard normal draw of ``shape`` (batch first) in ``like``'s dtype and device."""
        if isinstance(generator, BatchGenerator):
            out = generator.randn(shape, batch_dim=0, device=like.device, dtype=like.dtype)
        else:
            device = generator.device if generator is not None else like.device
            out = torch.randn(shape, generator=generator, device=device, dtype=like.dtype)
        return out.to(like.device)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: Tensor,
        snr_db: float | Tensor,
        generator: torch.Generator | BatchGenerator | None = None,
        return_gain: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Send ``x`` (B, ...) (unit power per real symbol) through TDL + OFDM + AWGN.

        ``snr_db``: a float, a 0-d tensor or a (B,) tensor (per-sample SNR in dB per real
        symbol, average over the channel). Returns a real tensor of ``x``'s shape and dtype
        (equalised with ``csi``, else ``y = h x + n``), plus the complex channel gain
        ``h`` of every complex symbol, shape (B, N/2), when ``return_gain`` is true.
        """
        if x.dim() < 2:
            raise UserError(
                f"channel input must have a batch dimension, got shape {tuple(x.shape)}")
        batch, n = x.shape[0], x[0].numel()
        if n % 2 != 0:
            raise UserError(
                f"complex channel needs an even number of real symbols per sample, got {n}")
        work = x if x.dtype in (torch.float32, torch.float64) else x.float()
        precision = "double" if work.dtype == torch.float64 else "single"
        m = n // 2
        n_sym = -(-m // self.fft_size)  # ceil: OFDM symbols in the grid
        pad = n_sym * self.fft_size - m

        # complex symbols (interleaved view), zero-padded, row-major onto the (S, F) grid
        pairs = work.reshape(batch, m, 2)
        s = torch.complex(pairs[..., 0], pairs[..., 1])
        grid = torch.nn.functional.pad(s, (0, pad)).reshape(batch, n_sym, self.fft_size)

        sigma = _snr_sigma(snr_db, batch, work.device).to(work.dtype).view(batch, 1, 1)
        h = self._draw_channel(batch, n_sym, precision, work, generator)  # (B, S, F)
        noise = self._draw_noise((batch, n_sym, self.fft_size, 2), work, generator)
        noise = torch.complex(noise[..., 0], noise[..., 1]) * sigma  # variance sigma^2 per component

        _, _, apply = self._sionna_blocks(_sionna_device(work.device), precision, n_sym)
        y = apply(grid[:, None, None], h[:, None, None, None, None])[:, 0, 0] + noise  # h x + n
        if self.csi:  # MMSE: y conj(h) / (|h|^2 + sigma^2); zero forcing: y conj(h) / |h|^2 = x + n / h
            g2 = h.real.square() + h.imag.square()
            d = (g2 + sigma.square() if self.equalizer == "mmse" else g2).clamp_min(_GAIN_EPS)
            y = y * h.conj() / d
        y = y.reshape(batch, n_sym * self.fft_size)[:, :m]
        out = torch.stack((y.real, y.imag), dim=-1).reshape(x.shape).to(x.dtype)
        if not return_gain:
            return out
        return out, h.reshape(batch, -1)[:, :m]

    def extra_repr(self) -> str:
        s = (f"model={self.model!r}, delay_spread_ns={self.delay_spread_ns}, "
             f"carrier_frequency_ghz={self.carrier_frequency_ghz}, speed_mps={self.speed_mps}, "
             f"subcarrier_spacing_khz={self.subcarrier_spacing_khz}, fft_size={self.fft_size}, "
             f"csi={self.csi}" + (f", equalizer={self.equalizer!r}" if self.csi else ""))
        return s + (", normalize_channel=True" if self.normalize_channel else "")


_OPTIONS = ("model", "delay_spread_ns", "carrier_frequency_ghz", "speed_mps",
            "subcarrier_spacing_khz", "fft_size", "csi", "normalize_channel", "equalizer")


def build_sionna_channel(**options: Any) -> SionnaTDLChannel:
    """The ``sionna_tdl`` channel of a config: :class:`SionnaTDLChannel` from keyword options.

    Accepts exactly the constructor's keywords (``model``, ``delay_spread_ns``,
    ``carrier_frequency_ghz``, ``speed_mps``, ``subcarrier_spacing_khz``, ``fft_size``, ``csi``,
    ``normalize_channel``, ``equalizer``); an unknown one, a bad value or a missing Sionna is a
    :class:`UserError` (one line for the CLI) rather than a ``TypeError`` traceback.
    """
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise UserError(f"unknown sionna_tdl option(s) {', '.join(map(repr, unknown))}; "
                        f"expected some of {', '.join(_OPTIONS)}")
    return SionnaTDLChannel(**options)

