"""Independent random streams: every stream of a run is derived from its one seed by numpy's
SeedSequence under its own name (:class:`~diffjscc.runtime.seeding.Stream`), so that no stream
of one seed is another stream of it, or any stream of another seed."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from diffjscc.runtime.seeding import Stream, batch_seeds, step_generator, stream_generator, stream_seed, \
    stream_sequence
from diffjscc.training.trainer import EpochBatchSampler

SEEDS = range(12)
INDICES = range(4)  # each index of a stream: 0..3


def _all_stream_seeds(seed: int) -> dict[tuple, int]:
    """(stream, indices) → 64-bit seed, for every stream and every index tuple in INDICES."""
    return {(stream, key): stream_seed(seed, stream, *key)
            for stream in Stream for key in itertools.product(INDICES, repeat=len(stream.indices))}


def test_stream_tags_are_unique_and_fixed() -> None:
    tags = [stream.tag for stream in Stream]
    assert len(set(tags)) == len(tags) and min(tags) >= 1
    # a changed tag silently changes every seeded number of its stream (and the golden files)
    assert (Stream.CHANNEL.tag, Stream.SAMPLING.tag, Stream.TRAINING_STEP.tag) == (8, 9, 2)


def test_no_stream_of_any_seed_equals_another() -> None:
    """For seeds 0..11, every stream and indices 0..3 of each: all derived seeds distinct, and
    the first draws of their torch generators too."""
    seen: dict[int, tuple] = {}
    for seed in SEEDS:
        for (stream, key), value in _all_stream_seeds(seed).items():
            assert value not in seen, f"{(seed, stream.name, key)} has the seed of {seen[value]}"
            seen[value] = (seed, stream.name, key)
    first = {torch.randn(1, generator=torch.Generator().manual_seed(value)).item() for value in seen}
    assert len(first) == len(seen)


def test_seed_1_channel_noise_is_not_seed_0_sampling_noise() -> None:
    """The defect: batch_seeds(seed, 0) was (seed, seed + 1)."""
    noise = {(seed, name): torch.randn(64, generator=torch.Generator().manual_seed(value))
             for seed in SEEDS for name, value in zip(("channel", "sampling"), batch_seeds(seed, 0))}
    for (a, b) in itertools.combinations(noise, 2):
        assert not torch.allclose(noise[a], noise[b]), (a, b)
    assert batch_seeds(1, 0)[0] != batch_seeds(0, 0)[1]


def test_next_epoch_order_is_not_the_next_seed_order() -> None:
    """The data order of epoch 1 of seed 0 was seed 1's epoch 0 (seed + epoch)."""
    steps_per_epoch = 40 // 8
    zero, one = iter(EpochBatchSampler(40, 8, seed=0)), iter(EpochBatchSampler(40, 8, seed=1))
    zero_epochs = [next(zero) for _ in range(2 * steps_per_epoch)]
    one_epoch = [next(one) for _ in range(steps_per_epoch)]
    assert zero_epochs[steps_per_epoch:] != one_epoch
    assert zero_epochs[:steps_per_epoch] != one_epoch


def test_streams_are_numpy_spawned_children_of_the_seed() -> None:
    """The derivation is SeedSequence's own spawning: stream tag k is child k of
    SeedSequence(seed), each index (low, then high 32 bits) a child of that."""
    def child(sequence: np.random.SeedSequence, k: int) -> np.random.SeedSequence:
        return sequence.spawn(k + 1)[k]

    for seed, batch in ((0, 0), (5, 3), (2**40 + 1, 7)):
        spawned = child(child(child(np.random.SeedSequence(seed), Stream.CHANNEL.tag), batch), 0)
        assert np.array_equal(stream_sequence(seed, Stream.CHANNEL, batch).generate_state(4),
                              spawned.generate_state(4))
    init = child(np.random.SeedSequence(3), Stream.MODEL_INIT.tag)
    assert stream_seed(3, Stream.MODEL_INIT) == int(init.generate_state(1, dtype=np.uint64)[0])


def test_large_and_negative_numbers_stay_distinct() -> None:
    """Indices are two fixed 32-bit words each, so (2**32 + a, b) and (a, 2**32 * b + 1) differ;
    numbers are taken modulo 2**64."""
    assert stream_seed(0, Stream.DROPOUT, 2**32 + 1, 0) != stream_seed(0, Stream.DROPOUT, 1, 1)
    assert stream_seed(0, Stream.DROPOUT, 1, 2**32) != stream_seed(0, Stream.DROPOUT, 2**32 + 1, 0)
    assert stream_seed(2**32, Stream.GRID) != stream_seed(0, Stream.GRID) != stream_seed(1, Stream.GRID)
    assert stream_seed(-1, Stream.DIGITAL_FADE, 0, -5000) == stream_seed(2**64 - 1, Stream.DIGITAL_FADE, 0,
                                                                          2**64 - 5000)


def test_a_stream_takes_its_own_number_of_indices() -> None:
    with pytest.raises(ValueError, match="TRAINING_STEP takes the indices"):
        stream_seed(0, Stream.TRAINING_STEP)
    with pytest.raises(ValueError, match="GRID takes the indices"):
        stream_generator(0, Stream.GRID, 3)


def test_generators_are_pure_functions_of_seed_stream_and_indices() -> None:
    """What exact resume and sharding rest on: the same (seed, step) gives the same draws."""
    assert torch.equal(torch.randn(5, generator=step_generator(4, 9)), torch.randn(5, generator=step_generator(4, 9)))
    assert torch.equal(torch.randn(5, generator=step_generator(4, 9)),
                       torch.randn(5, generator=stream_generator(4, Stream.TRAINING_STEP, 9)))
    assert not torch.equal(torch.randn(5, generator=step_generator(4, 9)),
                           torch.randn(5, generator=step_generator(4, 10)))
