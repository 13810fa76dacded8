"""Tests for diffjscc.channel: power normalisation, AWGN / Rayleigh statistics, Channel module."""

from __future__ import annotations

import math

import pytest
import torch

from diffjscc.channel import (
    Channel,
    awgn,
    bandwidth_ratio,
    from_complex,
    normalize_power,
    parse_snr_list,
    rayleigh_block,
    rayleigh_fast,
    to_complex,
)
from diffjscc.errors import UserError

N_SYMBOLS = 100_000


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unit_signal(batch: int = 4, n: int = N_SYMBOLS, seed: int = 0) -> torch.Tensor:
    g = _gen(seed)
    z = 3.0 * torch.randn(batch, n, generator=g, dtype=torch.float64) + 0.5
    return normalize_power(z)


def _measured_snr_db(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample SNR in dB = 10 log10(mean x^2 / mean (y - x)^2)."""
    dims = tuple(range(1, x.dim()))
    return 10 * torch.log10(x.pow(2).mean(dims) / (y - x).pow(2).mean(dims))


def test_normalize_power_unit_power_per_sample() -> None:
    g = _gen(1)
    scales = torch.tensor([0.01, 1.0, 7.0, 300.0]).view(4, 1, 1, 1)
    z = torch.randn(4, 10, 100, 100, generator=g) * scales  # 10^5 symbols per sample
    x = normalize_power(z)
    power = x.pow(2).mean(dim=(1, 2, 3))
    assert torch.allclose(power, torch.ones(4), rtol=0.01)
    assert torch.isfinite(normalize_power(torch.zeros(2, 8))).all()


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 10.0, 20.0])
def test_awgn_measured_snr(snr_db: float) -> None:
    x = _unit_signal()
    y = awgn(x, snr_db, generator=_gen(2))
    assert y.shape == x.shape
    measured = _measured_snr_db(x, y)
    assert torch.all((measured - snr_db).abs() < 0.2), measured


def test_awgn_per_sample_snr_tensor() -> None:
    x = _unit_signal(batch=4)
    snrs = torch.tensor([-5.0, 0.0, 10.0, 20.0])
    y = awgn(x, snrs, generator=_gen(3))
    measured = _measured_snr_db(x, y)
    assert torch.all((measured - snrs.double()).abs() < 0.2), measured
    ch = Channel("awgn").eval()
    y2 = ch(x.float().view(4, 10, 100, 100), snr_db=snrs, generator=_gen(3))
    assert y2.shape == (4, 10, 100, 100)
    with pytest.raises(UserError):
        awgn(x, torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 20.0])
def test_rayleigh_block_post_equalisation_snr(snr_db: float) -> None:
    x = _unit_signal(batch=8, seed=4)
    y, h = rayleigh_block(x, snr_db, generator=_gen(5), return_gain=True)
    assert y.shape == x.shape and h.shape == (8,) and h.is_complex()
    expected = 10 * torch.log10(h.abs() ** 2) + snr_db
    measured = _measured_snr_db(x, y)
    assert torch.all((measured - expected).abs() < 0.2), (measured, expected)


def test_rayleigh_fast_shape_and_finite() -> None:
    x = normalize_power(torch.randn(3, 8, 8, 8, generator=_gen(6)))
    y, h = rayleigh_fast(x, 10.0, generator=_gen(7), return_gain=True)
    assert y.shape == x.shape and h.shape == (3, 256)
    assert torch.isfinite(y).all()
    # unit-mean |h|^2 over many symbols (h ~ CN(0, 1))
    _, h_big = rayleigh_fast(_unit_signal(batch=1), 10.0, generator=_gen(8), return_gain=True)
    assert abs(h_big.abs().pow(2).mean().item() - 1.0) < 0.02
    # noiseless limit recovers the input exactly (ZF with perfect CSI)
    y_clean = rayleigh_fast(x.double(), 300.0, generator=_gen(9))
    assert torch.allclose(y_clean, x.double(), atol=1e-6)


@pytest.mark.parametrize("snr_db", [0.0, 10.0])
def test_rayleigh_fast_post_equalisation_snr_per_symbol(snr_db: float) -> None:
    """ZF leaves symbol k with noise n_k / h_k: its SNR is |h_k|^2 · SNR. Scaling each error
    back by |h_k| must give noise of the nominal variance sigma^2 per real component."""
    x = _unit_signal(batch=2, seed=11)
    y, h = rayleigh_fast(x, snr_db, generator=_gen(12), return_gain=True)
    error = to_complex(y - x) * h.abs()  # (B, N/2): n_k · conj(h_k)/|h_k|, same law as n_k
    measured = error.abs().pow(2).mean() / 2  # per real component
    assert abs(measured.item() / 10 ** (-snr_db / 10) - 1) < 0.05
    # and per symbol the SNR follows |h_k|^2: weak symbols are the noisy ones
    weak, strong = h.abs() < 0.3, h.abs() > 1.5
    assert (to_complex(y - x)[weak].abs().mean() > 5 * to_complex(y - x)[strong].abs().mean())


@pytest.mark.parametrize("kind", ["rayleigh_block", "rayleigh_fast"])
def test_fading_without_csi_returns_the_unequalised_signal(kind: str) -> None:
    x = _unit_signal(batch=4, seed=13)
    fade = rayleigh_block if kind == "rayleigh_block" else rayleigh_fast
    y, h = fade(x, 300.0, generator=_gen(14), return_gain=True, csi=False)  # noiseless: y = h s
    s = to_complex(x)
    assert torch.allclose(to_complex(y), s * (h[:, None] if kind == "rayleigh_block" else h), atol=1e-6)
    assert not torch.allclose(y, x, atol=1e-2)
    same = fade(x, 300.0, generator=_gen(14), csi=True)
    assert torch.allclose(same, x, atol=1e-6)  # the same draws, equalised
    assert "csi=False" in repr(Channel(kind, csi=False))


def test_complex_view_roundtrip_interleaved() -> None:
    x = torch.arange(8.0).view(1, 2, 2, 2)
    s = to_complex(x)
    assert torch.equal(s, torch.tensor([[0 + 1j, 2 + 3j, 4 + 5j, 6 + 7j]], dtype=torch.complex64))
    assert torch.equal(from_complex(s, x.shape), x)


@pytest.mark.parametrize("kind", ["awgn", "rayleigh_block", "rayleigh_fast", "none"])
def test_gradient_flows_through_channel(kind: str) -> None:
    z = torch.randn(2, 8, 8, 8, requires_grad=True)
    y = Channel(kind, snr_db=10.0)(z, generator=_gen(10))
    assert y.shape == z.shape
    y.pow(2).sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["awgn", "rayleigh_block", "rayleigh_fast"])
def test_seeded_generator_reproducible(kind: str) -> None:
    z = torch.randn(4, 8, 8, 8)
    ch = Channel(kind, snr_db=5.0, snr_range=(0.0, 20.0)).train()
    a = ch(z, generator=_gen(11))
    b = ch(z, generator=_gen(11))
    c = ch(z, generator=_gen(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_channel_none_is_power_normalisation() -> None:
    z = 5 * torch.randn(2, 8, 4, 4)
    assert torch.allclose(Channel("none")(z), normalize_power(z))


def test_eval_fixed_snr_train_draws_in_range() -> None:
    ch = Channel("awgn", snr_db=7.0, snr_range=(2.0, 12.0))
    ch.eval()
    assert torch.equal(ch.sample_snr(16), torch.full((16,), 7.0))
    ch.train()
    snr = ch.sample_snr(1000, generator=_gen(13))
    assert snr.shape == (1000,)
    assert snr.min() >= 2.0 and snr.max() <= 12.0 and snr.std() > 1.0
    # train mode without a range uses the fixed SNR
    assert torch.equal(Channel("awgn", snr_db=3.0).train().sample_snr(5), torch.full((5,), 3.0))
    # the eval-mode forward really uses 7 dB
    x = torch.randn(1, N_SYMBOLS, generator=_gen(14))
    y = ch.eval()(x, generator=_gen(15))
    measured = _measured_snr_db(normalize_power(x), y)
    assert abs(measured.item() - 7.0) < 0.2
    assert "awgn" in repr(ch) and "7.0" in repr(ch)


def test_user_errors() -> None:
    with pytest.raises(UserError):
        Channel("rician")
    with pytest.raises(UserError):
        Channel("awgn", snr_range=(10.0, 0.0))
    with pytest.raises(UserError):
        Channel("awgn", snr_db=float("nan"))
    with pytest.raises(UserError):
        rayleigh_block(torch.randn(2, 7), 10.0)
    with pytest.raises(UserError):
        Channel("rayleigh_fast")(torch.randn(2, 3, 3, 3))
    for bad in ["", "0,,5", "a,b", "0;5", "1,inf"]:
        with pytest.raises(UserError):
            parse_snr_list(bad)
    with pytest.raises(UserError):
        bandwidth_ratio(0, (3, 32, 32))


def test_parse_snr_list() -> None:
    assert parse_snr_list("0,5,10") == [0.0, 5.0, 10.0]
    assert parse_snr_list(" -5, 2.5 ,20 ") == [-5.0, 2.5, 20.0]


def test_bandwidth_ratio() -> None:
    assert bandwidth_ratio(512, (3, 32, 32)) == 1 / 6
    assert math.isclose(bandwidth_ratio(8 * 16 * 16, (3, 64, 64)), 1 / 6)
