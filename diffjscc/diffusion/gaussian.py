"""Gaussian diffusion maths in one object: forward process, posterior, reverse process, losses.

Notation (Ho et al. 2020; Nichol & Dhariwal 2021), index t = 0 … T-1:

    q(x_t | x_0)        = N(√ᾱ_t · x_0, (1 − ᾱ_t) I)
    q(x_{t-1} | x_t,x_0) = N(μ̃_t, β̃_t I),  μ̃_t = c1_t·x_0 + c2_t·x_t,
                           β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)
    p(x_{t-1} | x_t)     = N(μ_θ, Σ_θ),  μ_θ = μ̃_t with the predicted x̂_0,
                           Σ_θ = exp(f·log β_t + (1 − f)·log β̃_t), f = (v_σ + 1)/2, when the variance
                           is learned (the network outputs v_σ, trained towards [−1, 1] but not
                           clamped to it, as improved-diffusion), else β_t ("large").

The network predicts ε (``prediction="epsilon"``, the original), x_0 (``"x0"``) or
v = √ᾱ_t·ε − √(1 − ᾱ_t)·x_0 (``"v"``, Salimans & Ho 2022), plus the variance interpolation
(v_σ above) when ``learn_sigma``. Whatever it predicts is converted to the pair (x̂_0, ε̂)
that the posterior and the samplers use. The timesteps given to the network are
``timestep_map[t]``: for a respaced process (fewer steps, see :mod:`.respace`) they are the
original timesteps, so one trained network serves every number of sampling steps.

The hybrid loss is L_simple + λ·T·L_t^{vlb} with the VLB term computed on a stop-gradient mean,
so that it trains only the variance (Nichol & Dhariwal, §3.1). Its t = 0 term is the decoder
−log p(x_0 | x_1): for 8-bit images Ho et al.'s discretised Gaussian (each pixel value a bin of
width 2/255); for a target off that grid — the residual (x − x̂)/scale around a continuous Deep
JSCC estimate x̂ — the continuous Gaussian density (its bits/dim are then a differential entropy,
not comparable with 8-bit ones). The learned variance is what ancestral sampling
(:func:`~diffjscc.diffusion.samplers.ddpm_sample`, ``--sampler ddpm``) draws with. The diffusers
library has the UNet and DDPM/DDIM schedulers but not this VLB term, hence this module.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from diffjscc.config import PREDICTIONS
from diffjscc.diffusion.schedule import get_betas


def _extract(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] reshaped to broadcast against ``like`` (B, C, H, W), in like's dtype."""
    out = values.to(t.device)[t].to(like.dtype)
    return out.view(-1, *([1] * (like.dim() - 1)))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all non-batch dimensions."""
    return x.mean(dim=tuple(range(1, x.dim())))


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, e^{2·log_scale}), the continuous density, elementwise, in nats."""
    return -0.5 * (math.log(2.0 * math.pi) + 2.0 * log_scale + (x - mean) ** 2 * torch.exp(-2.0 * log_scale))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log p(x) of 8-bit data x ∈ [−1, 1] under N(mean, e^{2·log_scale}) integrated over its bin.

    Each pixel value is the bin [x − 1/255, x + 1/255]; the end bins extend to ±∞ (Ho et al.'s
    decoder L_0). Elementwise, in nats.
    """
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


@dataclass
class ModelPrediction:
    """The reverse-process quantities at one step."""

    mean: torch.Tensor
    log_variance: torch.Tensor
    pred_x0: torch.Tensor
    eps: torch.Tensor


class GaussianDiffusion:
    """All schedule-derived arrays (float64, on the device of the betas given; :meth:`to` moves
    them) and the equations that use them. Kept on the model's device, every use is a device-side
    index and cast, with no host-to-device copy in the sampling or training loop."""

    def __init__(self, betas: torch.Tensor, learn_sigma: bool = False,
                 timestep_map: torch.Tensor | None = None, prediction: str = "epsilon") -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.dim() != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D tensor in (0, 1]")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, not {prediction!r}")
        self.betas = betas
        self.learn_sigma = learn_sigma
        self.prediction = prediction
        self.num_timesteps = len(betas)
        self.timestep_map = (torch.arange(self.num_timesteps, device=betas.device) if timestep_map is None
                             else torch.as_tensor(timestep_map, dtype=torch.long, device=betas.device))
        alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # β̃_0 = 0: use β̃_1 in the log so that log-variances stay finite (as improved-diffusion);
        # a one-step process (e.g. 1 sampling step) has no β̃_1 and uses β_0.
        first = self.posterior_variance[1:2] if self.num_timesteps > 1 else betas[:1]
        self.posterior_log_variance_clipped = torch.log(torch.cat([first, self.posterior_variance[1:]]))
        # "fixed large" reverse variance: β_t, with the same finite value at t = 0.
        self.log_betas_large = torch.log(torch.cat([first, betas[1:]]))
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * alphas.sqrt() / (1.0 - self.alphas_cumprod)

    def to(self, device: torch.device | str) -> "GaussianDiffusion":
        """The same process with its arrays on ``device`` (``self`` if they are there already)."""
        device = torch.device(device)
        if self.betas.device == device:
            return self
        moved = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(moved, name, value.to(device))
        return moved

    @classmethod
    def from_schedule(cls, schedule: str, num_timesteps: int, learn_sigma: bool = False,
                      prediction: str = "epsilon") -> "GaussianDiffusion":
        return cls(get_betas(schedule, num_timesteps), learn_sigma=learn_sigma, prediction=prediction)

    # ---- forward process --------------------------------------------------------------------
    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The timestep values the network sees for process indices ``t``."""
        return self.timestep_map.to(t.device)[t]

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε."""
        return (_extract(self.sqrt_alphas_cumprod, t, x0) * x0
                + _extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise)

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean μ̃_t and log-variance log β̃_t of q(x_{t−1} | x_t, x_0)."""
        mean = _extract(self.posterior_mean_coef1, t, x_t) * x0 + _extract(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, _extract(self.posterior_log_variance_clipped, t, x_t).expand_as(x_t)

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x̂_0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t."""
        return _extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - _extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """ε implied by x_t and a (possibly clipped) x̂_0."""
        return (_extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / _extract(self.sqrt_recipm1_alphas_cumprod, t, x_t)

    def training_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output for x_t = q_sample(x0, t, noise)."""
        if self.prediction == "epsilon":
            return noise
        if self.prediction == "x0":
            return x0
        return (_extract(self.sqrt_alphas_cumprod, t, x0) * noise
                - _extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0)

    def x0_and_eps(self, prediction: torch.Tensor, x_t: torch.Tensor,
                   t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂_0, ε̂) implied by the network's prediction at x_t, whatever it predicts."""
        prediction = prediction.to(x_t.dtype)
        if self.prediction == "epsilon":
            return self.predict_x0(x_t, t, prediction), prediction
        if self.prediction == "x0":
            return prediction, self.predict_eps(x_t, t, prediction)
        root_a = _extract(self.sqrt_alphas_cumprod, t, x_t)
        root_1ma = _extract(self.sqrt_one_minus_alphas_cumprod, t, x_t)
        return root_a * x_t - root_1ma * prediction, root_1ma * x_t + root_a * prediction

    # ---- reverse process --------------------------------------------------------------------
    def split_output(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prediction, v_σ) from the network output; v_σ is None without a learned variance."""
        if self.learn_sigma:
            prediction, v = out.chunk(2, dim=1)
            return prediction, v
        return out, None

    def p_mean_variance(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                        clip: bool | tuple[torch.Tensor, torch.Tensor] = True) -> ModelPrediction:
        """Mean and log-variance of p(x_{t−1} | x_t) from a network output ``out``.

        ``clip=True`` clamps x̂_0 to the image range [−1, 1]; a ``(low, high)`` pair of tensors
        clamps it to those bounds instead (a residual's range, which depends on the pixel).
        """
        prediction, v = self.split_output(out)
        if v is None:
            log_variance = _extract(self.log_betas_large, t, x_t).expand_as(x_t)
        else:
            frac = (v.float() + 1) / 2  # no clamp (as improved-diffusion): the VLB's gradient stays alive outside
            min_log = _extract(self.posterior_log_variance_clipped, t, x_t)
            max_log = _extract(torch.log(self.betas), t, x_t)
            log_variance = frac * max_log + (1 - frac) * min_log
        pred_x0, eps = self.x0_and_eps(prediction, x_t, t)
        if clip is not False:
            low, high = (-1.0, 1.0) if clip is True else clip
            pred_x0 = pred_x0.clamp(low, high)
            eps = self.predict_eps(x_t, t, pred_x0)
        mean, _ = self.q_posterior(pred_x0, x_t, t)
        return ModelPrediction(mean=mean, log_variance=log_variance, pred_x0=pred_x0, eps=eps.to(x_t.dtype))

    # ---- training ---------------------------------------------------------------------------
    def vlb_terms(self, out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                  target_is_8bit: bool = True) -> torch.Tensor:
        """L_t of the variational bound in bits per dimension, shape (B,).

        t > 0: KL(q(x_{t−1}|x_t,x_0) || p(x_{t−1}|x_t)); t = 0: −log p(x_0|x_1) of the
        discretised Gaussian decoder when ``x0`` is an 8-bit image in [−1, 1], else (a residual
        target, off that grid) of the continuous Gaussian.
        """
        true_mean, true_log_var = self.q_posterior(x0, x_t, t)
        pred = self.p_mean_variance(out, x_t, t, clip=False)
        kl = mean_flat(normal_kl(true_mean, true_log_var, pred.mean, pred.log_variance)) / math.log(2.0)
        decoder = discretized_gaussian_log_likelihood if target_is_8bit else gaussian_log_likelihood
        nll = -mean_flat(decoder(x0, pred.mean, 0.5 * pred.log_variance)) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(self, out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                        noise: torch.Tensor, vlb_weight: float = 0.001,
                        target_is_8bit: bool = True) -> dict[str, torch.Tensor]:
        """Per-sample losses: ``mse`` = mean squared error of the prediction (ε, x_0 or v) against
        its target; with a learned variance also ``vlb`` and ``loss`` = mse + λ·T·vlb (the VLB
        estimate of one uniformly drawn term, scaled to the sum over T terms, on a detached
        prediction so that it trains only the variance). ``target_is_8bit``: ``x0`` is an 8-bit
        image (the discretised decoder at t = 0), not a residual (the continuous one)."""
        out = out.float()
        prediction, v = self.split_output(out)
        mse = mean_flat((self.training_target(x0.float(), t, noise.float()) - prediction) ** 2)
        terms = {"mse": mse, "loss": mse}
        if v is not None:
            frozen = torch.cat([prediction.detach(), v], dim=1)
            vlb = self.vlb_terms(frozen, x0.float(), x_t.float(), t, target_is_8bit)
            terms["vlb"] = vlb
            terms["loss"] = mse + vlb_weight * self.num_timesteps * vlb
        return terms
