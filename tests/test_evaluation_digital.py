"""Digital separation baseline: capacity and byte budget pinned to closed forms, codecs never over
budget, and the cliff, on real CIFAR-10 images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffjscc.errors import UserError
from diffjscc.evaluation.digital import (
    CODECS,
    DigitalLink,
    awgn_capacity,
    byte_budget,
    capacity_bits_per_use,
    codec_available,
    rayleigh_ergodic_capacity,
)
from diffjscc.evaluation.metrics import psnr_per_image

AVAILABLE = [name for name in CODECS if codec_available(name)]


@pytest.mark.parametrize("snr_db, expected", [(0.0, 32), (5.0, 65), (10.0, 110), (15.0, 160), (20.0, 213)])
def test_awgn_byte_budget_is_floor_n_half_log2_over_8(snr_db: float, expected: int) -> None:
    n = 512  # real channel uses of a k/n = 1/6 CIFAR latent
    assert byte_budget(n, snr_db) == math.floor(n * 0.5 * math.log2(1 + 10 ** (snr_db / 10)) / 8) == expected


def test_capacity_closed_forms() -> None:
    assert awgn_capacity(0.0) == pytest.approx(0.5)  # 1/2 log2(2)
    assert awgn_capacity(10 * math.log10(3)) == pytest.approx(1.0)  # 1/2 log2(4)
    special = pytest.importorskip("scipy.special")
    for snr_db in (-5.0, 0.0, 10.0, 20.0, 30.0):
        snr = 10 ** (snr_db / 10)
        closed = math.exp(1 / snr) * special.exp1(1 / snr) / (2 * math.log(2))  # E[1/2 log2(1 + g snr)], g ~ Exp(1)
        assert rayleigh_ergodic_capacity(snr_db) == pytest.approx(closed, rel=1e-9)
        assert rayleigh_ergodic_capacity(snr_db) < awgn_capacity(snr_db)  # Jensen
    assert capacity_bits_per_use("rayleigh_fast", 10.0)[1] == "rayleigh ergodic"
    with pytest.raises(UserError):
        byte_budget(512, 10.0, "none")
    with pytest.raises(UserError):
        byte_budget(0, 10.0)


@pytest.mark.parametrize("name", AVAILABLE)
def test_files_never_exceed_the_budget_and_quality_is_the_largest_that_fits(name: str, cifar_images) -> None:
    images = cifar_images[:6]
    link = DigitalLink(CODECS[name], images)
    last = len(CODECS[name].settings) - 1
    for budget in (100, 213, 400, 900, 2000):
        for i in range(len(images)):
            step = link.fit(i, budget)
            if step is None:
                assert len(link.encoded(i, 0)) > budget  # the cliff: not even the lowest quality fits
                continue
            assert len(link.encoded(i, step)) <= budget
            if step < last:
                assert len(link.encoded(i, step + 1)) > budget
        received, stats = link.transmit(budget)
        assert received.shape == images.shape and received.dtype == np.uint8
        assert stats["max_bytes"] <= budget and stats["budget_bytes"] == budget


@pytest.mark.parametrize("name", AVAILABLE)
def test_the_cliff_gives_the_mean_colour_image(name: str, cifar_images) -> None:
    images = cifar_images[:8]
    link = DigitalLink(CODECS[name], images)
    lost, stats = link.transmit(budget=16)  # below any real file
    assert stats["lost_fraction"] == 1.0 and stats["mean_quality"] is None
    mean_colour = np.round(images.reshape(-1, 3).mean(axis=0)).astype(np.uint8)
    assert (lost == mean_colour).all()

    kept, stats = link.transmit(budget=3000)  # roomy: nothing lost, far better than the mean colour
    assert stats["lost_fraction"] == 0.0

    def psnr(received: np.ndarray) -> float:
        to = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255  # noqa: E731
        return float(psnr_per_image(to(images), to(received)).mean())

    assert psnr(kept) > psnr(lost) + 5


def test_webp_quality_grows_with_the_budget(cifar_images) -> None:
    link = DigitalLink(CODECS["webp"], cifar_images[:16])
    to = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    scores = [float(psnr_per_image(to(cifar_images[:16]), to(link.transmit(b)[0])).mean()) for b in (150, 300, 900)]
    assert scores[0] < scores[1] < scores[2]
