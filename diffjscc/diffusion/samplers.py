"""Samplers as small functions of (diffusion, denoiser, x): DDPM, DDIM, DPM-Solver++(2M) and DDIM
inversion.

DDPM (Ho et al. 2020) draws x_{i−1} ~ p(x_{i−1} | x_i) = N(μ_θ, Σ_θ) at every index: the only
sampler that uses the learned variance Σ_θ (``learn_sigma``; β_i without it), which Nichol &
Dhariwal (2021, §4) train so that ancestral sampling works with few respaced steps.

``denoiser(x, timesteps)`` returns the network output for a batch at the network's timestep
values; conditioning (received latent, class) is closed over by the caller. All loops run over
the indices of ``diffusion`` — pass a respaced process (:func:`.respace.respace`) for fewer steps.

DDIM (Song et al. 2021), index i with ᾱ_{−1} = 1:

    x̂_0 = (x_i − √(1−ᾱ_i) ε̂) / √ᾱ_i
    x_{i−1} = √ᾱ_{i−1} x̂_0 + √(1 − ᾱ_{i−1} − σ_i²) ε̂ + σ_i z,
    σ_i = η √((1−ᾱ_{i−1})/(1−ᾱ_i)) √(1 − ᾱ_i/ᾱ_{i−1})

DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2) integrates the same probability-flow
ODE as η = 0 DDIM to second order in λ = log(√ᾱ/√(1−ᾱ)): with α = √ᾱ, σ = √(1−ᾱ), h_i = λ_{i−1} − λ_i
and r_i = h_{i+1}/h_i,

    D_i = (1 + 1/(2 r_i)) x̂_0(x_i) − 1/(2 r_i) x̂_0(x_{i+1})       (x̂_0(x_i) alone at the first step)
    x_{i−1} = (σ_{i−1}/σ_i) x_i + α_{i−1} (1 − e^{−h_i}) D_i

and the last step (to ᾱ_{−1} = 1, σ = 0, λ = ∞) returns x̂_0 (first order, as diffusers'
``lower_order_final``). It is the default with ≤ 8 network evaluations, where DDIM's first-order
error shows (tests/test_samplers.py measures both against the exact ODE of Gaussian data). We keep
our own loop rather than diffusers' ``DPMSolverMultistepScheduler`` because the residual receiver
clamps x̂_0 per pixel (a range that depends on the Deep JSCC estimate), which the scheduler's
thresholding cannot express; the test checks both give the same images without that clamp.

DDIM inversion runs the η = 0 update the other way, x_{i−1} → x_i, with ε̂ evaluated at
x_{i−1}: deterministic x_0 → x_T, so that sampling can start from an encoded source image.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from diffjscc.config import FEW_STEPS, FROM_PURE_NOISE_SPACINGS, SAMPLERS, SPACINGS
from diffjscc.diffusion.gaussian import GaussianDiffusion
from diffjscc.errors import UserError
from diffjscc.runtime.progress import progress_steps

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def resolve_sampler(name: str, steps: int, start: str | None = None, eta: float = 0.0) -> str:
    """The sampler that ``name`` means at ``steps`` network evaluations: ``auto`` is
    DPM-Solver++(2M) at ≤ FEW_STEPS, DDIM above (where the two agree and DDIM is the reference),
    and DDIM whenever ``eta`` > 0 (DDIM's stochastic steps; DPM-Solver++(2M) is deterministic,
    DDPM stochastic with the model's own variance). A run from an inverted source
    (``start="inversion"``) is always deterministic DDIM, the inversion's mirror."""
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r}; expected {', '.join(SAMPLERS)}")
    if not 0.0 <= eta <= 1.0:  # also rejects NaN
        raise UserError(f"--eta must be in [0, 1] (0: deterministic DDIM, 1: DDPM-like), got {eta}")
    if start == "inversion":
        return "ddim"
    if eta > 0:
        if name == "dpm++2m":
            raise UserError("--eta > 0 needs DDIM (--sampler ddim or auto): DPM-Solver++(2M) is deterministic")
        if name == "ddpm":
            raise UserError("--eta > 0 needs DDIM (--sampler ddim or auto): DDPM draws with the model's own variance")
        return "ddim"
    if name == "auto":
        return "dpm++2m" if steps <= FEW_STEPS else "ddim"
    return name


def sampling_eta(eta: float, start: str | None = None) -> float:
    """The η a run uses: a run from an inverted source is deterministic (the inversion's mirror)."""
    return 0.0 if start == "inversion" else eta


def network_evaluations(steps: int, guidance: float = 1.0) -> int:
    """Network evaluations per image of one sampler run: guidance (≠ 1) evaluates with and without y."""
    return steps * (1 if guidance == 1.0 else 2)


def check_guidance_scale(guidance: float) -> None:
    """A classifier-free guidance scale is a finite number ≥ 0 (1: no guidance)."""
    if not (math.isfinite(guidance) and guidance >= 0):
        raise UserError(f"--guidance must be a finite number >= 0 (1: no guidance), got {guidance}")


def check_spacing(spacing: str, prediction: str | None = None) -> None:
    """A timestep spacing is one of :data:`diffjscc.config.SPACINGS`, and for a model that predicts
    ``prediction`` one that it can start from: an ε model's first step at t = T−1 (trailing,
    quadratic) would turn x̂_0 = (x − √(1−ᾱ)·ε̂)/√ᾱ, with √ᾱ ≈ 5e-5, into a ±1 pattern after clipping."""
    if spacing not in SPACINGS:
        raise UserError(f"unknown timestep spacing {spacing!r}; expected {', '.join(SPACINGS)}")
    if prediction == "epsilon" and spacing in FROM_PURE_NOISE_SPACINGS:
        raise UserError(f"--spacing {spacing} starts at t = T-1, where an epsilon model's x0 estimate divides by "
                        f"sqrt(alpha_bar) ~ 0: use --spacing leading with this model (v or x0 models can)")


def _full(batch: int, index: int, device: torch.device) -> torch.Tensor:
    return torch.full((batch,), index, device=device, dtype=torch.long)


def _alpha_bar(diffusion: GaussianDiffusion, index: int, like: torch.Tensor) -> torch.Tensor:
    """ᾱ at process index ``index``, with ᾱ_{−1} = 1 (the clean image)."""
    if index < 0:
        return torch.ones((), dtype=like.dtype, device=like.device)
    return diffusion.alphas_cumprod[index].to(device=like.device, dtype=like.dtype)


def _steps(indices, progress: bool, desc: str):
    """The sampler's indices, with the one progress mechanism (a bar on a terminal, lines in a log)."""
    return progress_steps(indices, desc, enabled=progress)


@torch.no_grad()
def ddim_sample(diffusion: GaussianDiffusion, denoiser: Denoiser, x_T: torch.Tensor, eta: float = 0.0,
                clip: bool | tuple[torch.Tensor, torch.Tensor] = True, generator: torch.Generator | None = None,
                progress: bool = False) -> torch.Tensor:
    """x_T → x_0 with DDIM (η = 0: deterministic); ``clip`` as in ``p_mean_variance``."""
    x = x_T
    batch = x.shape[0]
    for i in _steps(reversed(range(diffusion.num_timesteps)), progress, "DDIM"):
        t = _full(batch, i, x.device)
        out = denoiser(x, diffusion.model_timesteps(t))
        pred = diffusion.p_mean_variance(out, x, t, clip=clip)
        a_t, a_prev = _alpha_bar(diffusion, i, x), _alpha_bar(diffusion, i - 1, x)
        sigma = eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()
        x = a_prev.sqrt() * pred.pred_x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * pred.eps
        if eta > 0 and i > 0:
            x = x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x


@torch.no_grad()
def dpm_solver_2m_sample(diffusion: GaussianDiffusion, denoiser: Denoiser, x_T: torch.Tensor,
                         clip: bool | tuple[torch.Tensor, torch.Tensor] = True,
                         progress: bool = False) -> torch.Tensor:
    """x_T → x_0 with DPM-Solver++(2M), one network evaluation per index of ``diffusion``."""
    x = x_T
    batch = x.shape[0]
    previous_x0, previous_h = None, None
    for i in _steps(reversed(range(diffusion.num_timesteps)), progress, "DPM-Solver++(2M)"):
        t = _full(batch, i, x.device)
        pred_x0 = diffusion.p_mean_variance(denoiser(x, diffusion.model_timesteps(t)), x, t, clip=clip).pred_x0
        if i == 0:  # to the clean image (σ = 0): x̂_0 itself
            return pred_x0
        # float64 scalars: λ at a zero-SNR start is −∞, and e^{−h} = 0, r = ∞ follow from it exactly
        a_t, a_s = diffusion.alphas_cumprod[i].item(), diffusion.alphas_cumprod[i - 1].item()
        lam_t = 0.5 * (math.log(a_t) - math.log1p(-a_t)) if a_t > 0 else -math.inf
        lam_s = 0.5 * (math.log(a_s) - math.log1p(-a_s))
        h = lam_s - lam_t
        data = pred_x0
        if previous_x0 is not None and math.isfinite(previous_h):
            r = previous_h / h
            data = (1 + 0.5 / r) * pred_x0 - (0.5 / r) * previous_x0
        x = (math.sqrt((1 - a_s) / (1 - a_t)) * x + math.sqrt(a_s) * -math.expm1(-h) * data).to(x.dtype)
        previous_x0, previous_h = pred_x0, h
    return x


@torch.no_grad()
def ddpm_sample(diffusion: GaussianDiffusion, denoiser: Denoiser, x_T: torch.Tensor,
                clip: bool | tuple[torch.Tensor, torch.Tensor] = True, generator: torch.Generator | None = None,
                progress: bool = False) -> torch.Tensor:
    """x_T → x_0 by ancestral sampling from p(x_{t−1}|x_t) (learned or fixed variance; on a
    respaced process the learned one interpolates its β'_i and β̃'_i, as improved-diffusion);
    ``clip`` as in ``p_mean_variance``. The last step returns the mean, x̂_0."""
    x = x_T
    batch = x.shape[0]
    for i in _steps(reversed(range(diffusion.num_timesteps)), progress, "DDPM"):
        t = _full(batch, i, x.device)
        pred = diffusion.p_mean_variance(denoiser(x, diffusion.model_timesteps(t)), x, t, clip=clip)
        x = pred.mean
        if i > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + torch.exp(0.5 * pred.log_variance) * noise
    return x


@torch.no_grad()
def ddim_invert(diffusion: GaussianDiffusion, denoiser: Denoiser, x0: torch.Tensor,
                progress: bool = False) -> torch.Tensor:
    """x_0 → x_T deterministically (the η = 0 DDIM update run forwards in time)."""
    x = x0
    batch = x.shape[0]
    for i in _steps(range(diffusion.num_timesteps), progress, "DDIM inversion"):
        # ε̂ at the current point x_{i−1}, evaluated with the network's timestep of step i.
        t = _full(batch, i, x.device)
        prediction, _ = diffusion.split_output(denoiser(x, diffusion.model_timesteps(t)))
        _, eps = diffusion.x0_and_eps(prediction, x, t)
        a_prev, a_t = _alpha_bar(diffusion, i - 1, x), _alpha_bar(diffusion, i, x)
        pred_x0 = (x - (1 - a_prev).sqrt() * eps) / a_prev.sqrt()
        x = a_t.sqrt() * pred_x0 + (1 - a_t).sqrt() * eps
    return x
