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
    received_snr_db,
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


def _mmse_error_variance(g2: torch.Tensor, snr_db: float) -> torch.Tensor:
    """Closed form: the MMSE output conj(h) y / (|h|^2 + sigma^2) misses s by
    -sigma^2 s / (|h|^2 + sigma^2) + conj(h) n / (|h|^2 + sigma^2), of variance per real symbol
    (sigma^4 E|s|^2 + |h|^2 E|n|^2) / 2 / (|h|^2 + sigma^2)^2 = sigma^2 / (|h|^2 + sigma^2)."""
    sigma2 = 10 ** (-snr_db / 10)
    return sigma2 / (g2 + sigma2)


@pytest.mark.parametrize("equalizer", ["zf", "mmse"])
@pytest.mark.parametrize("snr_db", [0.0, 10.0, 20.0])
def test_rayleigh_block_post_equalisation_snr(snr_db: float, equalizer: str) -> None:
    """Per block, the error variance of the equalised output: sigma^2 / |h|^2 after zero forcing,
    sigma^2 / (|h|^2 + sigma^2) after MMSE (its closed form)."""
    x = _unit_signal(batch=8, seed=4)
    y, h = rayleigh_block(x, snr_db, generator=_gen(5), return_gain=True, equalizer=equalizer)
    assert y.shape == x.shape and h.shape == (8,) and h.is_complex()
    g2 = h.abs().double() ** 2
    error_variance = g2.reciprocal() * 10 ** (-snr_db / 10) if equalizer == "zf" else _mmse_error_variance(g2, snr_db)
    expected = -10 * torch.log10(error_variance)
    measured = _measured_snr_db(x, y)
    assert torch.all((measured - expected).abs() < 0.2), (measured, expected)


@pytest.mark.parametrize("snr_db", [0.0, 10.0])
def test_rayleigh_fast_mmse_error_variance_closed_form(snr_db: float) -> None:
    """MMSE error per real symbol: sigma^2 / (|h_k|^2 + sigma^2) given h_k, and averaged over
    |h|^2 ~ Exp(1) the integral of sigma^2 / (g + sigma^2) e^(-g) dg (by quadrature here),
    finite where zero forcing's E[sigma^2 / |h|^2] is not."""
    x = _unit_signal(batch=4, seed=21)
    y, h = rayleigh_fast(x, snr_db, generator=_gen(22), return_gain=True, equalizer="mmse")
    error = (to_complex(y - x).abs() ** 2 / 2).double()  # per real component, (B, N/2)
    given_h = _mmse_error_variance(h.abs().double() ** 2, snr_db)
    assert (error / given_h).mean().item() == pytest.approx(1.0, abs=0.02)
    g = torch.linspace(0, 60, 600_001, dtype=torch.float64)
    average = torch.trapezoid(_mmse_error_variance(g, snr_db) * torch.exp(-g), g).item()
    assert error.mean().item() == pytest.approx(average, rel=0.03)
    assert average < 1.0  # never worse than sending nothing: E|s_k - 0|^2 / 2 = 1


@pytest.mark.parametrize("kind", ["rayleigh_block", "rayleigh_fast"])
@pytest.mark.parametrize("snr_db", [0.0, 10.0, 20.0])
def test_mmse_bounds_the_largest_equalised_symbol(kind: str, snr_db: float) -> None:
    """|s_hat| = |h| |h s + n| / (|h|^2 + sigma^2) <= |s| + |n| / (2 sigma) whatever h is, and
    |n| / sigma stays below 8 here (P = e^-32 per symbol); zero forcing's n / h is unbounded
    (E[1/|h|^2] is infinite): the same draws give symbols far larger."""
    fade = rayleigh_block if kind == "rayleigh_block" else rayleigh_fast
    x = _unit_signal(batch=20_000, n=50, seed=23) if kind == "rayleigh_block" else _unit_signal(batch=2, seed=23)
    excess = {}
    for equalizer in ("mmse", "zf"):
        y = fade(x, snr_db, generator=_gen(24), equalizer=equalizer)
        excess[equalizer] = (to_complex(y).abs() - to_complex(x).abs()).max().item()
    assert excess["mmse"] <= 4.0, excess
    assert excess["zf"] > 10 * excess["mmse"], excess


def test_block_fading_gains_statistics() -> None:
    """One h ~ CN(0, 1) per block: |h|^2 ~ Exp(1) (CDF 1 - e^-g), a uniform phase, independent
    blocks, and the same gain on every symbol of a block (the unequalised y / s)."""
    x = _unit_signal(batch=20_000, n=16, seed=25)
    y, h = rayleigh_block(x, 300.0, generator=_gen(26), return_gain=True, csi=False)  # noiseless y = h s
    g2 = (h.abs() ** 2).double()
    ecdf = torch.arange(1, g2.numel() + 1, dtype=torch.float64) / g2.numel()
    assert (ecdf - (1 - torch.exp(-g2.sort().values))).abs().max().item() < 0.015  # Kolmogorov-Smirnov
    assert g2.mean().item() == pytest.approx(1.0, abs=0.03) and g2.var().item() == pytest.approx(1.0, abs=0.08)
    assert (g2 < 0.01).double().mean().item() == pytest.approx(1 - math.exp(-0.01), abs=0.003)  # deep fades
    assert h.mean().abs().item() < 0.02 and (h * h).mean().abs().item() < 0.03  # circular
    assert abs(torch.corrcoef(torch.stack([g2[1:], g2[:-1]]))[0, 1].item()) < 0.03  # blocks independent
    per_symbol = to_complex(y) / to_complex(x)
    assert (per_symbol - h[:, None]).abs().max().item() < 1e-4


def test_receivers_are_told_the_snr_of_the_received_block() -> None:
    """Block fading with CSI: SNR + 10 log10 |h|^2 per image; fast fading: within a fraction of
    a dB of the nominal SNR; AWGN, no CSI or no channel: the nominal SNR itself."""
    z = torch.randn(6, 8, 8, 8, generator=_gen(27))
    block = Channel("rayleigh_block", snr_db=10.0).eval()
    y, told = block(z, generator=_gen(28), return_receiver_snr=True)
    _, h = rayleigh_block(normalize_power(z), 10.0, generator=_gen(28), return_gain=True)
    assert torch.equal(y, block(z, generator=_gen(28)))
    assert torch.allclose(told, 10.0 + 10 * torch.log10(h.abs() ** 2))
    assert torch.allclose(received_snr_db(torch.full((6,), 10.0), h), told)
    assert told.std() > 1.0  # one SNR per image, as its gain
    _, told_fast = Channel("rayleigh_fast").eval()(z, snr_db=10.0, generator=_gen(28), return_receiver_snr=True)
    assert told_fast.shape == (6,) and (told_fast - 10.0).abs().max() < 1.0
    per_image = torch.tensor([0.0, 4.0, 8.0, 12.0, 16.0, 20.0])
    for channel in (Channel("awgn"), Channel("rayleigh_block", csi=False), Channel("none")):
        assert channel.eval()(z, snr_db=per_image, generator=_gen(28), return_receiver_snr=True)[1] is per_image


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
    y, h = rayleigh_fast(x, snr_db, generator=_gen(12), return_gain=True, equalizer="zf")
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
    assert "equalizer='zf'" in repr(Channel(kind, equalizer="zf"))


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
    with pytest.raises(UserError, match="equalizer"):
        Channel("rayleigh_block", equalizer="lmmse")
    with pytest.raises(UserError, match="equalizer"):
        rayleigh_fast(torch.randn(2, 8), 10.0, equalizer="ZF")
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


# --------------------------------------------------------------------------- in the system
def _fading_system(*overrides: str):
    from diffjscc.config import load_config
    from diffjscc.system import TransmissionSystem

    torch.manual_seed(0)
    cfg = load_config("tiny", ["mode=jscc", "jscc_num_filters=8", "channel=rayleigh_block", "snr_range=[0,20]",
                               "device=cpu", *overrides])
    return TransmissionSystem(cfg)


def _images(cifar_images, count: int = 8) -> torch.Tensor:
    return torch.from_numpy(cifar_images[:count]).permute(0, 3, 1, 2).float() / 127.5 - 1


def test_adaptive_receivers_are_told_the_block_snr_in_training_and_evaluation(cifar_images) -> None:
    """Block fading with CSI: the training loss and the evaluation grids decode with SNR + 10 log10 |h|^2,
    the SNR of the block received (ADJSCC); the encoder's feedback stays the nominal SNR."""
    from diffjscc.evaluation.grids import reconstruct_rows
    from diffjscc.runtime.seeding import BatchGenerator
    from diffjscc.training.trainer import training_loss

    system = _fading_system("snr_adaptive=true").train()
    with torch.no_grad():  # the SNR gates start at gain 1 for every SNR (zero last layer): make them SNR-dependent
        for attention in system.decoder.snr_attention:
            torch.nn.init.normal_(attention.gate[-1].weight, std=0.5, generator=_gen(29))
    images = _images(cifar_images)
    with torch.no_grad():
        loss = training_loss(system, images, None, _gen(30))["loss"]
        draws = BatchGenerator(_gen(30), images.shape[0])
        nominal = system.channel.sample_snr(images.shape[0], images.device, draws)
        received, told = system.transmit(images, snr_db=nominal, generator=draws, return_receiver_snr=True)
    assert (told - nominal).abs().max() > 1.0
    told_loss = torch.nn.functional.mse_loss(system.decode(received, told), images)
    nominal_loss = torch.nn.functional.mse_loss(system.decode(received, nominal), images)
    assert loss.item() == pytest.approx(told_loss.item(), rel=1e-7)
    assert abs(loss.item() - nominal_loss.item()) > 100 * abs(loss.item() - told_loss.item()) + 1e-7

    system.eval()
    rows, _ = reconstruct_rows(system, images, None, steps=1, generator=_gen(31), snr_db=10.0,
                               receivers=("deep_jscc",))
    received, told = system.transmit(images, snr_db=10.0, generator=_gen(31), return_receiver_snr=True)
    assert torch.allclose(rows[1], system.decode(received, told).clamp(-1, 1))
    assert not torch.allclose(rows[1], system.decode(received, 10.0).clamp(-1, 1))


def test_deep_jscc_trains_on_block_fading(cifar_images) -> None:
    """A tiny Deep JSCC trained for 300 steps of the trainer's own step on rayleigh_block (MMSE,
    the default): no step skipped, a finite loss, and each hundred steps' mean below the last's."""
    from diffjscc.config import load_config
    from diffjscc.training.trainer import TrainStep

    cfg = load_config("tiny", ["mode=jscc", "jscc_num_filters=8", "channel=rayleigh_block", "snr_range=[0,20]",
                               "device=cpu", "batch_size=8", "total_steps=300", "lr=2e-3"])
    assert cfg.equalizer == "mmse"
    step = TrainStep(cfg, torch.device("cpu"))
    images, order = _images(cifar_images, 64), _gen(32)
    losses = []
    for index in range(cfg.total_steps):
        result = step(images[torch.randint(64, (cfg.batch_size,), generator=order)], None, index)
        assert not result.skipped
        losses.append(result.terms["loss"].item())
    assert all(math.isfinite(value) for value in losses)
    means = [sum(losses[i:i + 100]) / 100 for i in (0, 100, 200)]
    assert means[0] > means[1] > means[2], means
