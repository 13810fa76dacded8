"""Timestep respacing: sample with S < T steps from a model trained with T steps.

As in improved-diffusion, a respaced process keeps the subsequence ``use_timesteps`` of the
original one and recomputes β so that ᾱ at the kept steps is unchanged:
β'_i = 1 − ᾱ_{τ_i} / ᾱ_{τ_{i−1}}. The network still sees the original timestep values τ_i
(``timestep_map``), so the same weights work for every spacing.
"""

from __future__ import annotations

import torch

from diffjscc.diffusion.gaussian import GaussianDiffusion
from diffjscc.errors import UserError


def parse_respacing(spec: str | int, num_timesteps: int) -> list[int]:
    """The kept timesteps for a spacing spec.

    * ``"ddimN"`` (or an int N): the N steps ``floor(i·T/N)``, i.e. ``range(0, T, T // N)``
      when N divides T — never includes t = T−1 (unless N = T), where the cosine schedule's
      ᾱ ≈ 0 would make DDIM inversion divide by ~0;
    * ``"trailingN"``: the N steps ``round(T − i·T/N) − 1``, which end at t = T−1 (Lin et al. 2024,
      "Common diffusion noise schedules and sample steps are flawed", Table 2): sampling starts
      where x_T ~ N(0, I) is the forward process's marginal (the cosine schedule's ᾱ_{T−1} is
      2.4e-9), not at t = 950 of 1000 (20 steps, √ᾱ ≈ 0.08) where part of the image remains;
    * ``"quadraticN"``: the N steps ``round((T−1)(i/(N−1))²)`` (raised where needed to stay
      distinct), from t = 0 to t = T−1: dense near the data, like the "quadratic" spacing of DDIM's
      CIFAR-10 experiments (Song et al. 2021), so that a few-step solver's last step starts at
      small noise (t = 20 of 1000 at N = 8) instead of jumping to x̂_0 from t = 124 as trailing's does;
    * ``"N"``: N steps evenly spread over [0, T−1] including both ends (DDPM-style);
    * ``"a,b,c"``: the range split into sections with a, b, c steps each.
    """
    text = str(spec).strip()
    try:
        if text.startswith("trailing"):
            count = int(text[len("trailing"):])
            if not 1 <= count <= num_timesteps:
                raise ValueError
            return sorted({round(num_timesteps - i * num_timesteps / count) - 1 for i in range(count)})
        if text.startswith("quadratic"):
            count = int(text[len("quadratic"):])
            if not 1 <= count <= num_timesteps:
                raise ValueError
            return _quadratic(count, num_timesteps)
        if isinstance(spec, int) or text.startswith("ddim"):
            count = int(text[4:] if text.startswith("ddim") else text)
            if not 1 <= count <= num_timesteps:
                raise ValueError
            # floor(i·T/N): equals range(0, T, T // N) when N divides T, and stays spread over
            # the whole range otherwise (truncating range(0, T, T // N) to N entries stopped
            # early, e.g. ddim600 of T = 1000 ended at t = 599 where ᾱ ≈ 0.34, not ≈ 0).
            return [i * num_timesteps // count for i in range(count)]
        sections = [int(part) for part in text.split(",")]
    except ValueError:
        raise UserError(
            f"timestep respacing '{spec}' is not 'ddimN', 'trailingN', 'quadraticN', 'N' or 'a,b,c' "
            f"with 1 <= N <= {num_timesteps}"
        ) from None
    size_per = num_timesteps // len(sections)
    extra = num_timesteps % len(sections)
    start, kept = 0, []
    for i, count in enumerate(sections):
        size = size_per + (1 if i < extra else 0)
        if not 1 <= count <= size:
            raise UserError(f"timestep respacing '{spec}': cannot take {count} steps from a section of {size}")
        stride = (size - 1) / (count - 1) if count > 1 else 1.0
        kept.extend(start + round(stride * j) for j in range(count))
        start += size
    return sorted(set(kept))


def _quadratic(count: int, num_timesteps: int) -> list[int]:
    """``count`` distinct steps from 0 to T−1, spaced quadratically in t (one step: T−1 alone)."""
    if count == 1:
        return [num_timesteps - 1]
    kept: list[int] = []
    for i in range(count):
        step = round((num_timesteps - 1) * (i / (count - 1)) ** 2)
        kept.append(max(step, kept[-1] + 1) if kept else step)
    return kept  # ends at T−1: the raises never pass it while count ≤ T


def respace(diffusion: GaussianDiffusion, use_timesteps: list[int]) -> GaussianDiffusion:
    """A process over ``use_timesteps`` (sorted indices of ``diffusion``) with the same ᾱ there."""
    keep = torch.as_tensor(sorted(set(use_timesteps)), dtype=torch.long, device=diffusion.betas.device)
    alpha_bar = diffusion.alphas_cumprod[keep]
    prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    betas = 1.0 - alpha_bar / prev
    return GaussianDiffusion(betas, learn_sigma=diffusion.learn_sigma,
                             timestep_map=diffusion.timestep_map[keep], prediction=diffusion.prediction)
