"""Noise schedules β_t for t = 0 … T-1, in float64 (the products lose precision in float32).

Both follow Nichol & Dhariwal (2021), "Improved Denoising Diffusion Probabilistic Models":

* linear:  β_t evenly spaced in [β_start, β_end], with β_start = 1e-4·1000/T and
  β_end = 0.02·1000/T so that any T gives the same curve as Ho et al.'s T = 1000;
* cosine:  ᾱ(t) = f(t)/f(0) with f(t) = cos²(((t/T) + s)/(1 + s) · π/2), s = 0.008, and
  β_t = 1 − ᾱ((t+1)/T·T)/ᾱ(t), clipped at 0.999 to avoid the singularity at t = T.
"""

from __future__ import annotations

import math

import torch

from diffjscc.errors import UserError

COSINE_OFFSET = 0.008
MAX_BETA = 0.999


def cosine_alpha_bar(t: torch.Tensor | float, num_timesteps: int, s: float = COSINE_OFFSET) -> torch.Tensor:
    """Closed-form ᾱ(t) of the cosine schedule, t in [0, T] (continuous)."""
    t = torch.as_tensor(t, dtype=torch.float64)

    def f(u: torch.Tensor) -> torch.Tensor:
        return torch.cos((u / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2

    return f(t) / f(torch.zeros((), dtype=torch.float64))


def get_betas(schedule: str, num_timesteps: int) -> torch.Tensor:
    """β_t for ``schedule`` in {"linear", "cosine"}, shape (T,), float64."""
    if num_timesteps <= 0:
        raise UserError(f"diffusion_steps must be positive, got {num_timesteps}")
    if schedule == "linear":
        scale = 1000.0 / num_timesteps
        return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)
    if schedule == "cosine":
        t = torch.arange(num_timesteps, dtype=torch.float64)
        ratio = cosine_alpha_bar(t + 1, num_timesteps) / cosine_alpha_bar(t, num_timesteps)
        return torch.clamp(1.0 - ratio, max=MAX_BETA)
    raise UserError(f"unknown noise_schedule '{schedule}' (expected linear or cosine)")
