"""The whole transmission system for one config: transmitter, channel and receiver(s).

    image ─ encoder ─▶ z ─ channel (power norm + noise) ─▶ y (received latent)
                                                            ├─ JSCC decoder ─▶ x̂ (Deep JSCC)
                                                            └─ conditional diffusion ─▶ x̂

Which parts exist depends on ``mode``:

==============  =========================  ============  ==================
mode            encoder                    JSCC decoder  conditional UNet
==============  =========================  ============  ==================
jscc            trained                    trained       —
joint           trained (jscc/half_unet)   —             trained
frozen          from a jscc checkpoint     kept (eval)   trained
unconditional   —                          —             trained, no latent
==============  =========================  ============  ==================
"""

from __future__ import annotations

import torch
from torch import nn

from diffjscc.channel import AnyGenerator, Channel
from diffjscc.config import Config, config_from_dict
from diffjscc.diffusion.gaussian import GaussianDiffusion
from diffjscc.diffusion.respace import parse_respacing, respace
from diffjscc.diffusion.samplers import ddim_invert, ddim_sample
from diffjscc.diffusion.unet import ConditionalUNet
from diffjscc.encoders import HalfUNetEncoder, JSCCDecoder, JSCCEncoder
from diffjscc.errors import UserError
from diffjscc.training.checkpoint import load_checkpoint

START_MODES = ("gaussian", "inversion")


def build_encoder(cfg: Config) -> nn.Module:
    if cfg.encoder == "half_unet":
        return HalfUNetEncoder(
            image_size=cfg.image_size, num_channels=cfg.num_channels, channel_mult=tuple(cfg.channel_mult),
            num_res_blocks=cfg.num_res_blocks, attention_resolutions=tuple(cfg.attention_resolutions),
            num_heads=cfg.num_heads, dropout=cfg.dropout, c_out=cfg.c_out, latent_size=cfg.latent_size)
    return JSCCEncoder(in_channels=3, c_out=cfg.c_out, num_filters=cfg.jscc_num_filters, norm=cfg.jscc_norm)


class TransmissionSystem(nn.Module):
    """Every network of one experiment, so that one state_dict (and one EMA) holds them all."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.channel = Channel(cfg.channel, snr_db=cfg.snr_db,
                               snr_range=tuple(cfg.snr_range) if cfg.snr_range else None)
        self.encoder = build_encoder(cfg) if cfg.has_encoder else None
        self.decoder = (JSCCDecoder(out_channels=3, c_out=cfg.c_out, num_filters=cfg.jscc_num_filters,
                                    norm=cfg.jscc_norm)
                        if cfg.mode in ("jscc", "frozen") else None)
        self.unet = (ConditionalUNet(
            image_size=cfg.image_size, num_channels=cfg.num_channels, channel_mult=tuple(cfg.channel_mult),
            num_res_blocks=cfg.num_res_blocks, attention_resolutions=tuple(cfg.attention_resolutions),
            num_heads=cfg.num_heads, dropout=cfg.dropout, use_scale_shift_norm=cfg.use_scale_shift_norm,
            learn_sigma=cfg.learn_sigma, latent_dim=cfg.latent_dim if cfg.has_encoder else None,
            num_classes=cfg.num_classes if cfg.class_cond else None)
            if cfg.has_diffusion else None)
        self.diffusion = (GaussianDiffusion.from_schedule(cfg.noise_schedule, cfg.diffusion_steps, cfg.learn_sigma)
                          if cfg.has_diffusion else None)

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
                 generator: AnyGenerator = None) -> torch.Tensor:
        """Images in [−1, 1] → received latent (B, c_out, h, w) after the channel."""
        if self.encoder is None:
            raise ValueError("an unconditional model has no transmitter")
        return self.channel(self.encoder(images), snr_db=snr_db, generator=generator)

    # ---- receivers ----------------------------------------------------------------------------
    def sampling_process(self, steps: int) -> GaussianDiffusion:
        """The trained process respaced to ``steps`` DDIM steps (strided, never t = T−1)."""
        assert self.diffusion is not None
        total = self.diffusion.num_timesteps
        return respace(self.diffusion, parse_respacing(f"ddim{min(steps, max(total - 1, 1))}", total))

    def denoiser(self, received: torch.Tensor | None, class_labels: torch.Tensor | None = None):
        """The network as a function of (x_t, t) with the conditioning closed over."""
        assert self.unet is not None
        latent = received.flatten(1) if received is not None else None
        return lambda x, t: self.unet(x, t, latent=latent, class_labels=class_labels)

    @torch.no_grad()
    def receive(self, received: torch.Tensor | None, steps: int, start: str = "gaussian",
                source: torch.Tensor | None = None, class_labels: torch.Tensor | None = None,
                generator: torch.Generator | None = None, batch: int | None = None,
                progress: bool = False) -> torch.Tensor:
        """Diffusion receiver: received latent → image in [−1, 1] by DDIM.

        ``start="gaussian"`` draws x_T ~ N(0, I): a real receiver. ``start="inversion"`` obtains
        x_T by DDIM inversion of ``source`` — the *source image*, which a real receiver does not
        have: an oracle upper bound, to be labelled as such wherever it is reported.
        """
        process = self.sampling_process(steps)
        denoise = self.denoiser(received, class_labels)
        count = received.shape[0] if received is not None else batch
        shape = (count, 3, self.cfg.image_size, self.cfg.image_size)
        if start == "gaussian":
            device = next(self.parameters()).device
            x_T = torch.randn(shape, generator=generator, device=device)
        elif start == "inversion":
            if source is None:
                raise ValueError("start='inversion' needs the source images (oracle mode)")
            x_T = ddim_invert(process, denoise, source, progress=progress)
        else:
            raise ValueError(f"unknown start mode {start!r}; expected one of {START_MODES}")
        return ddim_sample(process, denoise, x_T, generator=generator, progress=progress).clamp(-1, 1)

    @torch.no_grad()
    def jscc_decode(self, received: torch.Tensor) -> torch.Tensor:
        """Deep JSCC receiver (the baseline): received latent → image in [−1, 1]."""
        if self.decoder is None:
            raise ValueError("this model has no JSCC decoder (mode jscc or frozen have one)")
        return self.decoder(received)


def _state_from(payload: dict, prefer_ema: bool) -> dict:
    return payload["ema"] if prefer_ema and "ema" in payload else payload["model"]


def load_jscc_into(system: TransmissionSystem, path: str) -> None:
    """Copy the (EMA) encoder and decoder of a ``mode: jscc`` checkpoint into ``system``."""
    payload = load_checkpoint(path)
    saved = payload["config"]
    if saved.get("mode") != "jscc":
        raise UserError(f"jscc_encoder_path {path} is a '{saved.get('mode')}' checkpoint, not a 'jscc' one")
    for key in ("c_out", "image_size", "jscc_num_filters", "jscc_norm"):
        if saved.get(key) != getattr(system.cfg, key):
            raise UserError(f"jscc_encoder_path {path} has {key}={saved.get(key)!r} but the config "
                            f"says {key}={getattr(system.cfg, key)!r}")
    state = _state_from(payload, prefer_ema=True)
    for name in ("encoder", "decoder"):
        part = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
        getattr(system, name).load_state_dict(part)
        getattr(system, name).requires_grad_(False)


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
