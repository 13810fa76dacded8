"""Every receiver of a transmission, in one table: the sweep, ``sample``, ``transmit``, the demo's
grid and the trainer's sample grid all pick receivers here and run them the same way.

A receiver turns the received latent y (what came out of the channel) into images:

==================== ====================================================== =========
name                 output                                                 needs
==================== ====================================================== =========
deep_jscc            the Deep JSCC decoder's x̂ = D(y)                       decoder
diffusion            K posterior samples x_0 ~ p(x | y), DDIM from           UNet
                     x_T ~ N(0, I) (start mode ``gaussian``)
diffusion_mean       their pixel mean (1/K) Σ_k x_0^(k), a Monte-Carlo       UNet
                     MMSE estimate E[x | y] (start mode ``mean``)
diffusion_inversion  DDIM from x_T = DDIM-inversion of the **source** image  UNet,
                     (start mode ``inversion``): an ORACLE upper bound,      source
                     the receiver does not have the source
source               control: the source images themselves (the floor of     source
                     realism distances, the ceiling of accuracy)
control_noise        control: x̂ + Gaussian noise scaled per image to the     decoder,
                     PSNR of each posterior sample (the diffusion row's      UNet,
                     distortion, no learned structure)                        source
==================== ====================================================== =========

The two controls (``control=True``, run only when asked for, e.g. ``evaluate --controls``) are
references, not receivers: both read the source by construction. A generative receiver is worth
its compute only where it beats Deep JSCC *and* ``control_noise`` on realism at its distortion.

Each entry is one function ``(system, received, context) -> images`` (k-diffusion style: small
functions in one table). ``images`` is (S, N, 3, H, W) in [−1, 1]: S outputs for each of the N
received images (K posterior samples, or 1). The :class:`ReceiveContext` carries what a receiver
is told besides y — SNR, DDIM steps, the sampling generator, K, class labels — and the source
images, which it hands only to oracle receivers. It also remembers, per received batch, the K
posterior samples, so ``diffusion_mean`` averages exactly the samples ``diffusion`` drew.

Noise order: receivers run in table order and draw from the context's one generator, so a
batch draws the K Gaussian-start samples (once, for the ``diffusion``, ``diffusion_mean`` and
``control_noise`` rows together), then the inversion's noise, then the control's noise, whichever
of those rows are asked for: asking for the controls changes no other row.

Adding a receiver is adding one entry to :data:`RECEIVERS`; the start modes of
:data:`diffjscc.config.START_MODES` each name one entry (checked at import).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from diffjscc.config import START_MODES
from diffjscc.errors import UserError
from diffjscc.system import TransmissionSystem
from diffjscc.whole_image import larger_than_network, receive_windowed

__all__ = ["RECEIVERS", "Receiver", "ReceiveContext", "SourceAccessError", "available", "by_start",
           "matched_noise", "missing_part", "receive", "require", "select"]

PARTS = {"decoder": "Deep JSCC decoder", "unet": "diffusion receiver"}
"""Parts of a :class:`~diffjscc.system.TransmissionSystem` a receiver may need, in words."""


class SourceAccessError(RuntimeError):
    """A receiver that is not flagged as an oracle asked for the source images."""


class ReceiveContext:
    """What the receivers of one received batch are told besides y.

    ``snr_db``: channel SNR (dB) the receivers are told (SNR-adaptive models use it);
    ``steps``: sampling steps (network evaluations); ``sampler``: one of
    :data:`diffjscc.config.SAMPLERS`; ``guidance``: classifier-free guidance scale (1: none);
    ``eta``: DDIM's stochasticity (0: deterministic); ``spacing``: the sampling timesteps (one of
    :data:`diffjscc.config.SPACINGS`; None: the model's ``sample_spacing``); ``progress``: show
    the sampler's steps (:func:`~diffjscc.runtime.progress.progress_steps`); ``generator``: the
    sampling noise, shared by the receivers in table order; ``samples``: K posterior samples per
    image; ``class_labels``: for class-conditional models; ``batch``: the number of images,
    needed only when there is no received latent
    (an unconditional model generates from the prior); ``source``: the transmitted images in
    [−1, 1], readable only by oracle receivers (see :attr:`source`).

    One context belongs to one received batch: the posterior samples it remembers are those of
    that batch.
    """

    def __init__(self, *, snr_db: float | torch.Tensor | None, steps: int, generator: torch.Generator | None = None,
                 sampler: str = "auto", samples: int = 1, class_labels: torch.Tensor | None = None, source: torch.Tensor | None = None,
                 batch: int | None = None, guidance: float = 1.0, eta: float = 0.0,
                 spacing: str | None = None, progress: bool = False) -> None:
        if samples < 1:
            raise ValueError(f"samples must be positive, got {samples}")
        self.snr_db = snr_db
        self.steps = steps
        self.sampler = sampler
        self.guidance = guidance
        self.eta = eta
        self.spacing = spacing
        self.progress = progress
        self.generator = generator
        self.samples = samples
        self.class_labels = class_labels
        self.batch = batch
        self._source = source
        self._reader: Receiver | None = None
        self._memo: dict[str, tuple[torch.Tensor | None, torch.Tensor]] = {}

    def for_receiver(self, receiver: Receiver) -> ReceiveContext:
        """This context as ``receiver`` sees it: same generator and memo, source only for an oracle."""
        view = copy.copy(self)  # shallow: the generator and the memo are shared
        view._reader = receiver
        return view

    @property
    def source(self) -> torch.Tensor:
        """The transmitted images: an oracle receiver's privilege, refused to every other one."""
        reader = self._reader
        if reader is None or not reader.oracle:
            name = "an unnamed caller" if reader is None else f"receiver {reader.name!r}"
            raise SourceAccessError(f"{name} is not an oracle: a real receiver never sees the source image")
        if self._source is None:
            raise ValueError(f"receiver {reader.name!r} is an ORACLE: give the context the source images")
        return self._source

    def remembered(self, key: str, received: torch.Tensor | None,
                   compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``compute()`` once per received batch under ``key``; later calls get the same tensor."""
        held = self._memo.get(key)
        if held is not None and held[0] is received:
            return held[1]
        value = compute()
        self._memo[key] = (received, value)
        return value


ReceiveFn = Callable[[TransmissionSystem, "torch.Tensor | None", ReceiveContext], torch.Tensor]


@dataclass(frozen=True)
class Receiver:
    """One row of the table.

    ``family`` and ``start`` are the results' ``receiver`` and ``start`` columns (``start``:
    the ``--start`` mode that selects the entry, None for receivers that always run).
    ``control``: a reference row (run only when controls are asked for), labelled "control".
    ``label`` names it in results tables, ``grid_label`` in image grids, ``note`` on the
    console; ``{samples}`` (K) and ``{steps}`` in them are filled in. ``per_sample``: scored
    over K posterior samples per image (the row's ``samples_per_image`` is K). ``needs``: parts
    of the system (:data:`PARTS`) and ``"source"`` — reading the source makes it an oracle.
    """

    name: str
    family: str
    label: str
    grid_label: str
    needs: tuple[str, ...]
    run: ReceiveFn
    start: str | None = None
    note: str = ""
    per_sample: bool = False
    control: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.needs) - set(PARTS) - {"source"}
        if unknown:
            raise ValueError(f"receiver {self.name!r} needs unknown parts {sorted(unknown)}")
        mark = "control" if self.control else "ORACLE"
        if self.oracle and not all(mark in text for text in (self.label, self.grid_label, self.note)):
            raise ValueError(f"receiver {self.name!r} reads the source: its labels must say {mark}")

    @property
    def oracle(self) -> bool:
        """Reads the source image, which a real receiver does not have: an upper bound, not a result."""
        return "source" in self.needs

    @property
    def uses_unet(self) -> bool:
        return "unet" in self.needs

    def describe(self, text: str, samples: int = 1, steps: int = 0) -> str:
        """``text`` (one of the labels) with K and the step count filled in."""
        return text.format(samples=samples, steps=steps)


# ---- the receivers ---------------------------------------------------------------------------
def _deep_jscc(system: TransmissionSystem, received: torch.Tensor | None, context: ReceiveContext) -> torch.Tensor:
    """x̂ = D(y), clamped to the image range: deterministic, draws no noise."""
    return system.decode(received, context.snr_db).clamp(-1, 1)[None]


def _diffuse(system: TransmissionSystem, received: torch.Tensor | None, context: ReceiveContext,
             start: str, source: torch.Tensor | None = None) -> torch.Tensor:
    """One sampler run of the conditional diffusion from ``start``: (N, 3, H, W). The latent of
    an image larger than the network (a whole photo) is sampled image by image through blended
    windows (:func:`~diffjscc.whole_image.receive_windowed`), from a Gaussian start only."""
    if received is not None and larger_than_network(system, received):
        if start != "gaussian":
            raise ValueError(f"start {start!r} is not available for whole images (windows): gaussian only")
        snr = context.snr_db
        one = (lambda i: snr[i:i + 1]) if isinstance(snr, torch.Tensor) and snr.ndim else (lambda i: snr)
        return torch.cat([receive_windowed(system, received[i:i + 1], context.steps, snr_db=one(i),
                                           sampler=context.sampler, generator=context.generator,
                                           guidance=context.guidance, eta=context.eta, spacing=context.spacing,
                                           progress=context.progress)
                          for i in range(received.shape[0])])
    return system.receive(received, steps=context.steps, sampler=context.sampler, guidance=context.guidance,
                          eta=context.eta, spacing=context.spacing, start=start, source=source,
                          class_labels=context.class_labels, generator=context.generator, batch=context.batch,
                          snr_db=context.snr_db, progress=context.progress)


def _posterior_samples(system: TransmissionSystem, received: torch.Tensor | None,
                       context: ReceiveContext) -> torch.Tensor:
    """K samples x_0 ~ p(x | y), each from its own x_T ~ N(0, I): (K, N, 3, H, W), drawn once per batch."""
    return context.remembered("posterior_samples", received, lambda: torch.stack(
        [_diffuse(system, received, context, "gaussian") for _ in range(context.samples)]))


def _posterior_mean(system: TransmissionSystem, received: torch.Tensor | None,
                    context: ReceiveContext) -> torch.Tensor:
    """(1/K) Σ_k x_0^(k) over the batch's posterior samples: the Monte-Carlo MMSE estimate E[x | y]."""
    return _posterior_samples(system, received, context).mean(0, keepdim=True)


def _inversion(system: TransmissionSystem, received: torch.Tensor | None, context: ReceiveContext) -> torch.Tensor:
    """DDIM from x_T = DDIM-inversion of the source: ORACLE."""
    return _diffuse(system, received, context, "inversion", source=context.source)[None]


def _source(system: TransmissionSystem, received: torch.Tensor | None, context: ReceiveContext) -> torch.Tensor:
    """The transmitted images themselves: the control that realism distances cannot beat."""
    return context.source[None]


def _quantized(x: torch.Tensor) -> torch.Tensor:
    """[−1, 1] images as the 8-bit levels the scores see (0..255, float)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round()


def _mse_8bit(images: torch.Tensor, reference_levels: torch.Tensor) -> torch.Tensor:
    """Per-image MSE, in 8-bit levels squared, of [−1, 1] ``images`` against quantized levels."""
    return (_quantized(images) - reference_levels).square().flatten(1).mean(1)


def matched_noise(estimate: torch.Tensor, noise: torch.Tensor, source: torch.Tensor, target_mse: torch.Tensor,
                  iterations: int = 40) -> torch.Tensor:
    """``estimate + s_i * noise`` with the scale s_i of each image found by bisection so that its
    8-bit MSE against ``source`` is ``target_mse[i]`` (8-bit levels squared); s_i = 0 where
    ``estimate`` is already that far or farther. (N, 3, H, W) in [−1, 1]."""
    reference = _quantized(source)
    shape = (-1,) + (1,) * (estimate.dim() - 1)

    low = torch.zeros(estimate.shape[0], device=estimate.device)
    high = torch.full_like(low, 4.0)  # 4 noise standard deviations in [−1, 1] units: past any useful PSNR
    for _ in range(iterations):
        middle = (low + high) / 2
        above = _mse_8bit(estimate + middle.view(shape) * noise, reference) > target_mse
        high = torch.where(above, middle, high)
        low = torch.where(above, low, middle)
    return (estimate + low.view(shape) * noise).clamp(-1, 1)


def _noise_control(system: TransmissionSystem, received: torch.Tensor | None,
                   context: ReceiveContext) -> torch.Tensor:
    """Deep JSCC's x̂ plus Gaussian noise scaled per image so that output k of image i has the
    8-bit MSE (hence the PSNR) of posterior sample k of image i: the diffusion row's distortion
    with no learned structure. (K, N, 3, H, W)."""
    samples = _posterior_samples(system, received, context)
    estimate = _deep_jscc(system, received, context)[0]
    source = context.source
    reference = _quantized(source)
    noise = torch.randn(samples.shape, generator=context.generator, device=samples.device, dtype=samples.dtype)
    return torch.stack([
        matched_noise(estimate, noise[k], source, _mse_8bit(samples[k], reference))
        for k in range(samples.shape[0])])


def _table(*entries: Receiver) -> dict[str, Receiver]:
    table = {entry.name: entry for entry in entries}
    if len(table) != len(entries):
        raise ValueError("two receivers share a name")
    starts = [entry.start for entry in entries if entry.start is not None]
    if sorted(starts) != sorted(START_MODES):
        raise ValueError(f"start modes {list(START_MODES)} must each name one receiver, got {starts}")
    return table


RECEIVERS: dict[str, Receiver] = _table(
    Receiver("deep_jscc", family="deep_jscc", label="Deep JSCC", grid_label="Deep JSCC", needs=("decoder",),
             run=_deep_jscc),
    Receiver("diffusion", family="diffusion", start="gaussian", label="diffusion", grid_label="diffusion {steps}",
             needs=("unet",), per_sample=True, run=_posterior_samples),
    Receiver("diffusion_mean", family="diffusion", start="mean", label="diffusion, mean of {samples}",
             grid_label="diffusion, mean of {samples} {steps}", note="mean of {samples}", needs=("unet",),
             per_sample=True, run=_posterior_mean),
    Receiver("diffusion_inversion", family="diffusion", start="inversion", label="diffusion, ORACLE inversion",
             grid_label="ORACLE inversion {steps}", note="ORACLE: x_T from the source image",
             needs=("unet", "source"), run=_inversion),
    Receiver("source", family="source", label="control: source images", grid_label="control: source",
             note="control: the real images", needs=("source",), control=True, run=_source),
    Receiver("control_noise", family="control_noise", label="control: Deep JSCC + noise at the diffusion PSNR",
             grid_label="control: Deep JSCC + noise", note="control: same PSNR as each posterior sample, no structure",
             needs=("decoder", "unet", "source"), per_sample=True, control=True, run=_noise_control),
)
"""All receivers, in the order they run (and draw noise) for one received batch."""


# ---- which receivers a system has ------------------------------------------------------------
def by_start(mode: str) -> Receiver:
    """The diffusion receiver of a start mode (:data:`diffjscc.config.START_MODES`)."""
    for entry in RECEIVERS.values():
        if entry.start == mode:
            return entry
    raise UserError(f"unknown start mode {mode!r}; expected {', '.join(START_MODES)}")


def missing_part(system: TransmissionSystem, receiver: Receiver) -> str | None:
    """The first part ``receiver`` needs that ``system`` lacks, in words; None when it has them all."""
    for need in receiver.needs:
        if need in PARTS and getattr(system, need) is None:
            return PARTS[need]
    return None


def available(system: TransmissionSystem, controls: bool = False) -> list[Receiver]:
    """The receivers of a transmission through ``system``, in table order (with the control rows
    when ``controls``); none without a transmitter (an unconditional model has no channel)."""
    if system.encoder is None:
        return []
    return [entry for entry in RECEIVERS.values()
            if missing_part(system, entry) is None and (controls or not entry.control)]


def require(system: TransmissionSystem, name: str, hint: str = "") -> Receiver:
    """The receiver ``name`` of ``system``, or a one-line UserError saying what the checkpoint
    lacks for it (``hint``, in brackets, says what to do instead)."""
    (entry,) = select([name])
    if system.encoder is None:
        raise UserError("an unconditional checkpoint has no transmitter")
    lacking = missing_part(system, entry)
    if lacking is not None:
        raise UserError(f"this '{system.cfg.mode}' checkpoint has no {lacking}" + (f" ({hint})" if hint else ""))
    return entry


def select(names: Iterable[str]) -> list[Receiver]:
    """The named receivers in table order (the order they draw noise in)."""
    wanted = set(names)
    unknown = wanted - set(RECEIVERS)
    if unknown:
        raise UserError(f"unknown receiver {sorted(unknown)[0]!r}; expected {', '.join(RECEIVERS)}")
    return [entry for entry in RECEIVERS.values() if entry.name in wanted]


# ---- running one -----------------------------------------------------------------------------
@torch.no_grad()
def receive(system: TransmissionSystem, receiver: Receiver, received: torch.Tensor | None,
            context: ReceiveContext) -> torch.Tensor:
    """Run ``receiver`` on the received latent ``received`` (None: an unconditional model,
    generating ``context.batch`` images): (S, N, 3, H, W) images in [−1, 1]."""
    lacking = missing_part(system, receiver)
    if lacking is not None:
        raise ValueError(f"receiver {receiver.name!r} needs a {lacking}, which this '{system.cfg.mode}' system lacks")
    images = receiver.run(system, received, context.for_receiver(receiver))
    if images.ndim != 5:
        raise ValueError(f"receiver {receiver.name!r} returned shape {tuple(images.shape)}, not (S, N, 3, H, W)")
    return images
