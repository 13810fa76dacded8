"""The whole transmission system for one config: transmitter, channel and receiver(s).

    image ─ encoder ─▶ z ─ channel (power norm + noise) ─▶ y (received latent)
                                                            ├─ JSCC decoder ─▶ x̂ (Deep JSCC)
                                                            └─ conditional diffusion ─▶ x̂

SNR-adaptive systems (``snr_adaptive``) pass the channel SNR to the decoder and the UNet
(and, with ``snr_feedback``, to the encoder): every method that crosses the channel takes
``snr_db``, a float or one value per image. The encoder gets the nominal SNR; the receivers get
what :meth:`TransmissionSystem.transmit` returns with ``return_receiver_snr``, the SNR of each
received block (``|h|²·SNR`` under block fading with CSI; see :mod:`diffjscc.channel`).

Which parts exist depends on ``mode``:

==============  =========================  ============  ==================
mode            encoder                    JSCC decoder  conditional UNet
==============  =========================  ============  ==================
jscc            trained                    trained       —
joint           trained (jscc/half_unet)   —             trained
frozen          from a jscc checkpoint     kept (eval)   trained
unconditional   —                          —             trained, no latent
==============  =========================  ============  ==================

With ``conditioning: residual`` the JSCC decoder also exists in ``joint`` mode (trained with
its MSE beside the diffusion loss) and the diffusion receiver generates the residual
``(x − x̂) / residual_scale`` around the Deep JSCC estimate x̂, conditioned on it.
"""

from __future__ import annotations

import torch
from torch import nn

from diffjscc.channel import Channel
from diffjscc.config import ARCHITECTURE_KEYS, Config, config_from_dict, first_mismatch
from diffjscc.diffusion.gaussian import GaussianDiffusion
from diffjscc.diffusion.respace import parse_respacing, respace
from diffjscc.diffusion.samplers import (check_guidance_scale, check_spacing, ddim_invert, ddim_sample,
                                         ddpm_sample, dpm_solver_2m_sample, resolve_sampler, sampling_eta)
from diffjscc.diffusion.unet import Condition, ConditionalUNet
from diffjscc.encoders import HalfUNetEncoder, JSCCDecoder, JSCCEncoder
from diffjscc.errors import UserError
from diffjscc.runtime.checkpoint import load_checkpoint
from diffjscc.runtime.device import bf16_enabled
from diffjscc.runtime.pretrained import path_or_model
from diffjscc.runtime.seeding import AnyGenerator


def build_encoder(cfg: Config) -> nn.Module:
    if cfg.encoder == "half_unet":
        return HalfUNetEncoder(
            image_size=cfg.image_size, num_channels=cfg.num_channels, channel_mult=tuple(cfg.channel_mult),
            num_res_blocks=cfg.num_res_blocks, attention_resolutions=tuple(cfg.attention_resolutions),
            num_heads=cfg.num_heads, dropout=cfg.dropout, c_out=cfg.c_out, latent_size=cfg.latent_size)
    return JSCCEncoder(in_channels=3, c_out=cfg.c_out, num_filters=cfg.jscc_num_filters, norm=cfg.jscc_norm,
                       snr_adaptive=cfg.snr_adaptive and cfg.snr_feedback)


def build_channel(cfg: Config, kind: str | None = None, equalizer: str | None = None) -> Channel:
    """The config's channel (or the channel ``kind`` with the config's CSI and TDL options; or
    another ``equalizer`` than the config's, for a fading channel with CSI)."""
    kind = kind or cfg.channel
    tdl = {"model": cfg.tdl_model, "delay_spread_ns": cfg.tdl_delay_spread_ns, "speed_mps": cfg.tdl_speed_mps}
    return Channel(kind, snr_db=cfg.snr_db, snr_range=tuple(cfg.snr_range) if cfg.snr_range else None,
                   csi=cfg.csi, sionna_options=tdl if kind == "sionna_tdl" else None,
                   equalizer=equalizer or cfg.equalizer)


def has_jscc_decoder(cfg: Config) -> bool:
    """Deep JSCC decoder: the baseline receiver (jscc, frozen) and the residual's first estimate."""
    return cfg.mode in ("jscc", "frozen") or (cfg.mode == "joint" and cfg.conditioning == "residual")


class TransmissionSystem(nn.Module):
    """Every network of one experiment, so that one state_dict (and one EMA) holds them all."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.channel = build_channel(cfg)
        self.encoder = build_encoder(cfg) if cfg.has_encoder else None
        self.decoder = (JSCCDecoder(out_channels=3, c_out=cfg.c_out, num_filters=cfg.jscc_num_filters,
                                    norm=cfg.jscc_norm, snr_adaptive=cfg.snr_adaptive)
                        if has_jscc_decoder(cfg) else None)
        self.unet = (ConditionalUNet(
            image_size=cfg.image_size, num_channels=cfg.num_channels, channel_mult=tuple(cfg.channel_mult),
            num_res_blocks=cfg.num_res_blocks, attention_resolutions=tuple(cfg.attention_resolutions),
            num_heads=cfg.num_heads, dropout=cfg.dropout, use_scale_shift_norm=cfg.use_scale_shift_norm,
            learn_sigma=cfg.learn_sigma, latent_dim=cfg.latent_dim if cfg.has_encoder else None,
            num_classes=cfg.num_classes if cfg.class_cond else None,
            conditioning=cfg.conditioning, latent_channels=cfg.c_out, snr_adaptive=cfg.snr_adaptive)
            if cfg.has_diffusion else None)
        self.diffusion = (GaussianDiffusion.from_schedule(cfg.noise_schedule, cfg.diffusion_steps, cfg.learn_sigma,
                                                          cfg.prediction)
                          if cfg.has_diffusion else None)

    def _apply(self, fn, recurse: bool = True):
        """``.to()``, ``.cuda()``, ``.cpu()``: the diffusion schedule follows the weights' device."""
        super()._apply(fn, recurse)
        if self.diffusion is not None:
            weight = next(self.parameters(), None)
            if weight is not None:
                self.diffusion = self.diffusion.to(weight.device)
        return self

    # ---- what is trained --------------------------------------------------------------------
    def frozen_modules(self) -> list[nn.Module]:
        """Parts loaded from a pre-trained JSCC run in ``frozen`` mode (never updated)."""
        return [m for m in (self.encoder, self.decoder) if m is not None] if self.cfg.mode == "frozen" else []

    def trainable_parameters(self) -> list[nn.Parameter]:
        frozen = {id(p) for m in self.frozen_modules() for p in m.parameters()}
        return [p for p in self.parameters() if id(p) not in frozen]

    def train(self, mode: bool = True) -> "TransmissionSystem":
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()  # frozen BatchNorm/GDN statistics stay as pre-trained
        return self

    # ---- transmitter + channel --------------------------------------------------------------
    def transmit(self, images: torch.Tensor, snr_db: float | torch.Tensor | None = None,
                 generator: AnyGenerator = None, channel: Channel | None = None,
                 return_receiver_snr: bool = False) -> torch.Tensor | tuple[torch.Tensor, float | torch.Tensor]:
        """Images in [−1, 1] → received latent (B, c_out, h, w) after the channel.

        ``snr_db=None`` draws the SNR as the channel does (per image from ``snr_range`` in
        training); ``channel`` replaces the configured one (evaluation on another channel).
        ``return_receiver_snr``: also the SNR to tell the receivers (:meth:`decode`,
        :meth:`receive`): the SNR of each received block under fading with CSI, else ``snr_db``.
        """
        if self.encoder is None:
            raise ValueError("an unconditional model has no transmitter")
        channel = channel or self.channel
        if snr_db is None:
            snr_db = channel.sample_snr(images.shape[0], images.device, generator)
        uses_snr = self.cfg.snr_adaptive and self.cfg.snr_feedback
        latent = self.encoder(images, snr_db) if uses_snr else self.encoder(images)
        return channel(latent, snr_db=snr_db, generator=generator, return_receiver_snr=return_receiver_snr)

    # ---- receivers ----------------------------------------------------------------------------
    def receiver_snr(self, snr_db: float | torch.Tensor | None) -> float | torch.Tensor | None:
        """The SNR a receiver is told: required by SNR-adaptive models, ignored by the others."""
        if not self.cfg.snr_adaptive:
            return None
        if snr_db is None:
            raise ValueError("this model is SNR-adaptive: its receivers need snr_db")
        return snr_db

    def sampling_process(self, steps: int, spacing: str | None = None) -> GaussianDiffusion:
        """The trained process respaced to ``steps`` sampling steps, spaced as ``spacing`` says
        (default: the config's ``sample_spacing``): ``leading`` strided from t = 0 (never t = T−1),
        ``trailing`` strided down from t = T−1, ``quadratic`` from T−1 to 0, dense near t = 0."""
        assert self.diffusion is not None
        total = self.diffusion.num_timesteps
        spacing = spacing or self.cfg.sample_spacing
        check_spacing(spacing, self.cfg.prediction)
        spec = f"ddim{min(steps, max(total - 1, 1))}" if spacing == "leading" else f"{spacing}{min(steps, total)}"
        return respace(self.diffusion, parse_respacing(spec, total))

    def residual_base(self, received: torch.Tensor, snr_db: float | torch.Tensor | None = None) -> torch.Tensor | None:
        """The Deep JSCC estimate x̂ that ``residual`` conditioning diffuses around, else None."""
        if self.cfg.conditioning != "residual" or received is None:
            return None
        return self.decode(received, snr_db)

    def to_residual(self, images: torch.Tensor, base: torch.Tensor | None) -> torch.Tensor:
        """What the diffusion models: the image, or its scaled residual around ``base``."""
        return images if base is None else (images - base) / self.cfg.residual_scale

    def from_residual(self, generated: torch.Tensor, base: torch.Tensor | None) -> torch.Tensor:
        return generated if base is None else base + self.cfg.residual_scale * generated

    def clip_range(self, base: torch.Tensor | None) -> bool | tuple[torch.Tensor, torch.Tensor]:
        """Where the sampler clamps x̂_0: the image range, or for a residual the values that
        keep x̂ + residual_scale·r inside [−1, 1]."""
        if base is None:
            return True
        return self.to_residual(-torch.ones_like(base), base), self.to_residual(torch.ones_like(base), base)

    def denoiser(self, received: torch.Tensor | None, class_labels: torch.Tensor | None = None,
                 snr_db: float | torch.Tensor | None = None, base: torch.Tensor | None = None,
                 batch: int | None = None, guidance: float = 1.0):
        """The network as a function of (x_t, t) with the conditioning computed once and closed over.

        A model trained with ``bf16`` runs its network under bf16 autocast here too where that
        setting turns it on for this device (``auto``: native bf16 only), its output cast back to
        float32; the sampler's arithmetic stays in float32/64 either way. ``guidance`` ≠ 1 is
        classifier-free guidance on y (see :meth:`_guided`).
        """
        assert self.unet is not None
        conditions = self.conditions(received, class_labels, self.receiver_snr(snr_db), base, batch, guidance)
        return self.conditioned_network(conditions, guidance)

    def conditions(self, received: torch.Tensor | None, class_labels: torch.Tensor | None,
                    snr: float | torch.Tensor | None, base: torch.Tensor | None, batch: int | None,
                    guidance: float) -> list[Condition]:
        """The condition with y; with guidance (≠ 1) also the one without it (y dropped)."""
        self.check_guidance(guidance)
        count = received.shape[0] if received is not None else batch
        keeps = [None] if guidance == 1.0 else [None, torch.zeros(count)]
        return [self.unet.condition(received, class_labels, snr, base, batch=count, keep=keep) for keep in keeps]

    def conditioned_network(self, conditions: list[Condition], guidance: float):
        """The network for :meth:`conditions`' output: plain, or guided between its two conditions."""
        calls = [self._network(condition) for condition in conditions]
        return calls[0] if guidance == 1.0 else self._guided(*calls, guidance)

    def _network(self, condition: Condition):
        """The UNet as a function of (x_t, t) for a prepared condition, under bf16 autocast when
        the model's ``bf16`` setting turns it on for this device (output cast back to float32);
        decided once here, not at every step."""
        device = next(self.unet.parameters()).device
        if not bf16_enabled(self.cfg.bf16, device):
            return lambda x, t: self.unet(x, t, condition=condition)

        def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return self.unet(x, t, condition=condition).float()

        return denoise

    def check_guidance(self, guidance: float) -> None:
        """Guidance needs the unconditional prediction, which only ``condition_dropout`` training teaches."""
        check_guidance_scale(guidance)
        if guidance != 1.0 and not self.cfg.condition_dropout:
            raise UserError("--guidance needs a receiver trained with condition_dropout > 0 (it learns the "
                            "unconditional prediction); this one was trained without: use --guidance 1")

    def _guided(self, conditional, unconditional, guidance: float):
        """Classifier-free guidance (Ho & Salimans 2022) of the predicted ε, x_0 or v (linear in
        each other at a given x_t): u + w·(c − u) with c the prediction given y and u without
        it; w = 1 is the conditional receiver, w > 1 moves away from the unconditional one
        (sharper, further from the MMSE estimate). The learned variance stays the conditional
        one's. Two network evaluations per step."""
        split = self.diffusion.split_output

        def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            given, variance = split(conditional(x, t))
            without, _ = split(unconditional(x, t))
            guided = without + guidance * (given - without)
            return guided if variance is None else torch.cat([guided, variance], dim=1)

        return denoise

    @torch.no_grad()
    def receive(self, received: torch.Tensor | None, steps: int, start: str = "gaussian",
                source: torch.Tensor | None = None, class_labels: torch.Tensor | None = None,
                generator: torch.Generator | None = None, batch: int | None = None,
                progress: bool = False, snr_db: float | torch.Tensor | None = None,
                sampler: str = "auto", guidance: float = 1.0, eta: float = 0.0,
                spacing: str | None = None) -> torch.Tensor:
        """Diffusion receiver: received latent → image in [−1, 1] with ``sampler`` (see
        :func:`~diffjscc.diffusion.samplers.resolve_sampler`; inversion always runs DDIM),
        classifier-free ``guidance`` (1: none), DDIM's ``eta`` (0: deterministic) and the
        timestep ``spacing`` (default: the config's ``sample_spacing``).

        ``start="gaussian"`` draws x_T ~ N(0, I): a real receiver. ``start="inversion"`` obtains
        x_T by DDIM inversion of ``source`` — the *source image*, which a real receiver does not
        have: an oracle upper bound, to be labelled as such wherever it is reported.
        """
        process = self.sampling_process(steps, spacing)
        count = received.shape[0] if received is not None else batch
        base = self.residual_base(received, snr_db)
        denoise = self.denoiser(received, class_labels, snr_db, base, batch=count, guidance=guidance)
        shape = (count, 3, self.cfg.image_size, self.cfg.image_size)
        if start == "gaussian":
            device = next(self.parameters()).device
            x_T = torch.randn(shape, generator=generator, device=device)
        elif start == "inversion":
            if source is None:
                raise ValueError("start='inversion' needs the source images (oracle mode)")
            x_T = ddim_invert(process, denoise, self.to_residual(source, base), progress=progress)
        else:
            raise ValueError(f"unknown start mode {start!r}; expected gaussian or inversion")
        generated = sample_from(process, denoise, x_T, self.clip_range(base),
                                resolve_sampler(sampler, steps, start, eta), generator, progress,
                                eta=sampling_eta(eta, start))
        return self.from_residual(generated, base).clamp(-1, 1)

    def decode(self, received: torch.Tensor, snr_db: float | torch.Tensor | None = None) -> torch.Tensor:
        """Deep JSCC receiver: the JSCC decoder on the received latent (differentiable; told the
        SNR if adaptive). Image in [−1, 1] only approximately: callers that show it clamp."""
        if self.decoder is None:
            raise ValueError("this model has no JSCC decoder (mode jscc or frozen have one)")
        snr = self.receiver_snr(snr_db)
        return self.decoder(received) if snr is None else self.decoder(received, snr)


def sample_from(process: GaussianDiffusion, denoise, x_T: torch.Tensor, clip, sampler: str,
            generator: torch.Generator | None, progress: bool = False, eta: float = 0.0) -> torch.Tensor:
    """x_T → x_0 over ``process`` (one network evaluation per index) with the resolved ``sampler``."""
    if sampler == "dpm++2m":
        return dpm_solver_2m_sample(process, denoise, x_T, clip=clip, progress=progress)
    if sampler == "ddpm":
        return ddpm_sample(process, denoise, x_T, clip=clip, generator=generator, progress=progress)
    return ddim_sample(process, denoise, x_T, eta=eta, clip=clip, generator=generator, progress=progress)


def _state_from(payload: dict, prefer_ema: bool) -> dict:
    return payload["ema"] if prefer_ema and "ema" in payload else payload["model"]


def load_jscc_into(system: TransmissionSystem, path: str) -> None:
    """Copy the (EMA) encoder and decoder of a ``mode: jscc`` checkpoint into ``system``; ``path``
    may name a shipped model instead (``diffjscc models``), loaded after its hash is checked."""
    path = path_or_model(path)
    payload = load_checkpoint(path)
    saved = payload["config"]
    if saved.get("mode") != "jscc":
        raise UserError(f"jscc_encoder_path {path} is a '{saved.get('mode')}' checkpoint, not a 'jscc' one")
    keys = ["c_out", "image_size", "jscc_num_filters", "jscc_norm", "snr_adaptive"]
    keys += ["snr_feedback"] if system.cfg.snr_adaptive else []
    mismatch = first_mismatch(saved, system.cfg, keys)
    if mismatch is not None:
        key, trained_with = mismatch
        raise UserError(f"jscc_encoder_path {path} has {key}={trained_with!r} but the config "
                        f"says {key}={getattr(system.cfg, key)!r}")
    state = _state_from(payload, prefer_ema=True)
    for name in ("encoder", "decoder"):
        part = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
        getattr(system, name).load_state_dict(part)
        getattr(system, name).requires_grad_(False)


def init_from_checkpoint(system: TransmissionSystem, path: str) -> None:
    """Copy the trained weights of a checkpoint (its EMA weights) or of a shipped model into
    ``system``, whose architecture must be the one they were trained with: a further stage of
    training. In ``frozen`` mode the frozen Deep JSCC parts stay those of ``jscc_encoder_path``."""
    path = path_or_model(path)
    payload = load_checkpoint(path)
    mismatch = first_mismatch(payload["config"], system.cfg, ARCHITECTURE_KEYS)
    if mismatch is not None:
        key, trained_with = mismatch
        raise UserError(f"init_from {path} was trained with {key}={trained_with!r}, "
                        f"but the config says {key}={getattr(system.cfg, key)!r}")
    frozen = tuple(f"{name}." for name, module in system.named_children() if module in system.frozen_modules())
    target = system.state_dict()
    trained = {k: v for k, v in _state_from(payload, prefer_ema=True).items() if not k.startswith(frozen)}
    expected = {k for k in target if not k.startswith(frozen)}
    differing = sorted(expected ^ set(trained))
    if differing:
        key = differing[0]
        raise UserError(f"init_from {path} does not fit this config: "
                        f"{'no weight' if key in expected else 'unexpected weight'} {key}")
    try:
        system.load_state_dict({**target, **trained})
    except RuntimeError as err:
        raise UserError(f"init_from {path} does not fit this config: {str(err).splitlines()[0]}") from None


def load_system(path: str, device: torch.device | str = "cpu", prefer_ema: bool = True) -> TransmissionSystem:
    """Rebuild a trained system from a checkpoint (EMA weights by default), in eval mode."""
    payload = load_checkpoint(path)
    cfg = config_from_dict(payload["config"])
    system = TransmissionSystem(cfg)
    try:
        system.load_state_dict(_state_from(payload, prefer_ema))
    except RuntimeError as err:
        raise UserError(f"checkpoint {path} does not match its own config: {str(err).splitlines()[0]}") from None
    return system.to(device).eval()
