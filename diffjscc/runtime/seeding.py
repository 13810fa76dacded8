"""Seeded draws: independent streams from one seed, that do not depend on how the work is split.

* :class:`Stream` names every random stream of a run (channel noise, sampling noise, training
  draws, data order, crops, ...); :func:`stream_sequence` / :func:`stream_seed` /
  :func:`stream_generator` derive one generator of a stream from the user's seed with numpy's
  ``SeedSequence(seed, spawn_key=(stream tag, *indices))``. No stream of one seed is another
  stream, nor any stream of another seed (``(seed, seed + 1)`` once made ``--seed 1``'s channel
  noise ``--seed 0``'s sampling noise);
* :class:`BatchGenerator` draws for a whole (global) batch and keeps one slice of its rows, so
  a sample's random numbers do not depend on which process holds it;
* :func:`step_generator` gives one training step's draws from (seed, step) alone, so a resumed
  run draws what an uninterrupted one would;
* :func:`batch_seeds` gives one evaluation batch's channel and sampling seeds from (seed, index);
* :func:`global_rng_states` / :func:`restore_global_rng_states`: the global generators that
  dropout draws from (CPU, and the GPU's on CUDA), for checkpoints.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["AnyGenerator", "BatchGenerator", "Stream", "batch_seeds", "global_rng_states",
           "restore_global_rng_states", "step_generator", "stream_generator", "stream_seed", "stream_sequence"]


class Stream(enum.Enum):
    """Every random stream drawn from a run's seed, with the indices that pick one of its generators.

    A member's tag is the first word of its SeedSequence spawn key: fixed for good (changing one
    changes every seeded number of that stream) and unique (``tests/test_seeding.py``).
    """

    MODEL_INIT = 1, ()  # the global RNG when a model is built: its initial weights, then (trainer) rank 0's dropout
    TRAINING_STEP = 2, ("step",)  # one training step's t, ε, channel SNR and noise (all ranks alike)
    DROPOUT = 3, ("step", "rank")  # the global RNG of data-parallel rank > 0, reseeded at the step it starts from
    EPOCH_ORDER = 4, ("epoch",)  # the shuffle of one training epoch
    DATA_LOADER = 5, ()  # the DataLoader's own generator (its worker seeds)
    CROP = 6, ("item",)  # the corner and flip of one training crop of a photo
    GRID = 7, ()  # the sample grids (diffjscc sample, the trainer's and the demo's): one stream, batch after batch
    CHANNEL = 8, ("batch",)  # one evaluation batch's channel noise (an image sent whole, transmit: a batch of one)
    SAMPLING = 9, ("batch",)  # one evaluation batch's x_T and sampler noise, every receiver in table order
    DIGITAL_FADE = 10, ("image", "snr_millidb")  # a digital baseline image's block-fading gain
    DIGITAL_CODEWORDS = 11, ("image", "snr_millidb", "mcs")  # whether its codewords fail, per MCS
    KID_SUBSETS = 12, ("set",)  # the random subsets of one output set's kid_cls
    PATCH_KID_SUBSETS = 13, ()  # the random subsets of patch_kid
    CLASSIFIER_BATCHES = 14, ()  # train-classifier's epoch shuffles and augmentations (its init: MODEL_INIT)
    PATCH_CROPS = 15, ("split",)  # the patch net's random crops: split 0 trains it, split 1 measures it

    def __init__(self, tag: int, indices: tuple[str, ...]) -> None:
        self.tag, self.indices = tag, indices


_WORD = 2**32


def stream_sequence(seed: int, stream: Stream, *indices: int) -> np.random.SeedSequence:
    """The SeedSequence of ``stream`` at ``indices`` (as many as ``stream.indices`` names) of the
    run seeded ``seed``: the seed is its entropy, ``(stream.tag, *indices)`` its spawn key.

    Integers of any sign are taken modulo 2**64, and each index is two 32-bit words of the key,
    so distinct (seed, stream, indices) give distinct inputs to SeedSequence's hash, whose
    outputs are then unrelated, neighbouring seeds and indices included.
    """
    if len(indices) != len(stream.indices):
        raise ValueError(f"stream {stream.name} takes the indices ({', '.join(stream.indices)}), got {indices}")
    words = [word for index in indices for word in divmod(int(index) % 2**64, _WORD)[::-1]]
    return np.random.SeedSequence(int(seed) % 2**64, spawn_key=(stream.tag, *words))


def stream_seed(seed: int, stream: Stream, *indices: int) -> int:
    """A 64-bit seed (for ``torch.Generator.manual_seed``) of ``stream`` at ``indices``: :func:`stream_sequence`'s."""
    return int(stream_sequence(seed, stream, *indices).generate_state(1, dtype=np.uint64)[0])


def stream_generator(seed: int, stream: Stream, *indices: int,
                     device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded with :func:`stream_seed` (seed, stream, indices)."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, stream, *indices))


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
    uninterrupted one would with no RNG state restored (:attr:`Stream.TRAINING_STEP`).
    """
    return stream_generator(seed, Stream.TRAINING_STEP, step, device=device)


def batch_seeds(seed: int, index: int) -> tuple[int, int]:
    """Seeds of evaluation batch ``index``'s channel and sampling generators
    (:attr:`Stream.CHANNEL`, :attr:`Stream.SAMPLING`); ``transmit``'s one image is batch 0."""
    return stream_seed(seed, Stream.CHANNEL, index), stream_seed(seed, Stream.SAMPLING, index)


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
