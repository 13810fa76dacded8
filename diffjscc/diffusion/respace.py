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
            f"timestep respacing '{spec}' is not 'ddimN', 'trailingN', 'N' or 'a,b,c' with 1 <= N <= {num_timesteps}"
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


def respace(diffusion: GaussianDiffusion, use_timesteps: list[int]) -> GaussianDiffusion:
    """A process over ``use_timesteps`` (sorted indices of ``diffusion``) with the same ᾱ there."""
    keep = torch.as_tensor(sorted(set(use_timesteps)), dtype=torch.long, device=diffusion.betas.device)
    alpha_bar = diffusion.alphas_cumprod[keep]
    prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    betas = 1.0 - alpha_bar / prev
    return GaussianDiffusion(betas, learn_sigma=diffusion.learn_sigma,
                             timestep_map=diffusion.timestep_map[keep], prediction=diffusion.prediction)
