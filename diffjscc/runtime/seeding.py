"""Seeded draws that do not depend on how the work is split across processes.

* :class:`BatchGenerator` draws for a whole (global) batch and keeps one slice of its rows, so
  a sample's random numbers do not depend on which process holds it;
* :func:`step_generator` / :func:`mixed_seed` give one training step's draws from (seed, step)
  alone, so a resumed run draws what an uninterrupted one would;
* :func:`batch_seeds` gives one evaluation batch's channel and sampling seeds from (seed, index);
* :func:`global_rng_states` / :func:`restore_global_rng_states`: the global generators that
  dropout draws from (CPU, and the GPU's on CUDA), for checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["AnyGenerator", "BatchGenerator", "batch_seeds", "global_rng_states", "mixed_seed",
           "restore_global_rng_states", "step_generator"]


class BatchGenerator:
    """Draws for rows ``[start, stop)`` of a batch of ``total``: every draw is made for all
    ``total`` rows with ``generator`` (on its device; the global RNG when None) and the
    other rows are dropped.

    A sample thus gets the same random numbers whichever slice of the batch it is in: data-
    parallel training, where each process holds one slice of the global batch, draws exactly
    what one process with the whole batch draws. ``batch_dim`` names the batch axis of a draw.
    """

    def __init__(self, generator: torch.Generator | None, total: int, start: int = 0,
                 stop: int | None = None) -> None:
        stop = total if stop is None else stop
        if not 0 <= start < stop <= total:
            raise ValueError(f"rows [{start}, {stop}) are not a slice of a batch of {total}")
        self.generator, self.total, self.start, self.stop = generator, total, start, stop

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def _whole(self, shape: Sequence[int], batch_dim: int) -> list[int]:
        full = list(shape)
        if full[batch_dim] != self.rows:
            raise ValueError(f"draw of shape {tuple(shape)} has {full[batch_dim]} rows on dim {batch_dim}, "
                             f"this slice has {self.rows}")
        full[batch_dim] = self.total
        return full

    def _device(self, device: torch.device | str | None) -> torch.device | str | None:
        return self.generator.device if self.generator is not None else device

    def randn(self, shape: Sequence[int], batch_dim: int = 0, device: torch.device | str | None = None,
              dtype: torch.dtype | None = None) -> Tensor:
        out = torch.randn(self._whole(shape, batch_dim), generator=self.generator,
                          device=self._device(device), dtype=dtype)
        return out.narrow(batch_dim, self.start, self.rows).to(device)

    def rand(self, shape: Sequence[int], batch_dim: int = 0, device: torch.device | str | None = None,
             dtype: torch.dtype | None = None) -> Tensor:
        out = torch.rand(self._whole(shape, batch_dim), generator=self.generator,
                         device=self._device(device), dtype=dtype)
        return out.narrow(batch_dim, self.start, self.rows).to(device)

    def randint(self, high: int, shape: Sequence[int], batch_dim: int = 0,
                device: torch.device | str | None = None) -> Tensor:
        out = torch.randint(0, high, self._whole(shape, batch_dim), generator=self.generator,
                            device=self._device(device))
        return out.narrow(batch_dim, self.start, self.rows).to(device)


AnyGenerator = torch.Generator | BatchGenerator | None


def step_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of one step's draws (t, ε, channel SNR and noise), from (seed, step) alone.

    Every rank builds the same one, so with a :class:`~diffjscc.channel.BatchGenerator` a
    sample's draws do not depend on the number of processes, and a resumed run draws what an
    uninterrupted one would with no RNG state restored. SeedSequence decorrelates
    neighbouring (seed, step) pairs.
    """
    return torch.Generator(device=device).manual_seed(mixed_seed(seed, step))


def mixed_seed(*numbers: int) -> int:
    """One 64-bit seed from several integers (any sign), well mixed by numpy's SeedSequence."""
    entropy = [n & (2**64 - 1) for n in numbers]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])


def batch_seeds(seed: int, index: int) -> tuple[int, int]:
    """Seeds of evaluation batch ``index``'s channel and sampling generators: (seed, seed + 1)
    for batch 0, independent 64-bit seeds derived from (seed, index) for the others."""
    if index == 0:
        return seed, seed + 1
    channel, sample = np.random.SeedSequence([seed % 2**64, index]).generate_state(2, dtype=np.uint64)
    return int(channel), int(sample)


def global_rng_states(device: torch.device) -> dict[str, Tensor]:
    """The global RNG states a training step draws from outside its seeded generators (dropout):
    the CPU's, and on CUDA the training GPU's, which restarting would otherwise reset."""
    states = {"rng_state": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda_rng_state"] = torch.cuda.get_rng_state(device)
    return states


def restore_global_rng_states(payload: dict, device: torch.device) -> None:
    """Set what :func:`global_rng_states` saved (older checkpoints may lack either state)."""
    if "rng_state" in payload:
        torch.set_rng_state(payload["rng_state"])
    if device.type == "cuda" and "cuda_rng_state" in payload:
        torch.cuda.set_rng_state(payload["cuda_rng_state"], device)
