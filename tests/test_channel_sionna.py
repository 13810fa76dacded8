"""Tests for diffjscc.channel_sionna: the 3GPP TDL + OFDM channel from the optional Sionna package.

scripts/setup.sh installs the extra where Python >= 3.11 and CI sets DIFFJSCC_REQUIRE_SIONNA=1,
so there a missing Sionna fails this module; elsewhere it is skipped, and
tests/test_channel_sionna_missing.py covers the behaviour without Sionna.
"""

from __future__ import annotations

import os

import pytest
import torch

_rng_state = torch.random.get_rng_state()  # importing sionna.phy re-seeds torch's global RNG;
if os.environ.get("DIFFJSCC_REQUIRE_SIONNA"):  # keep it as it was for the tests that run after
    import sionna.phy  # noqa: F401  (CI: the extra is installed, a failed import is a failure)
else:
    pytest.importorskip("sionna.phy")
torch.random.set_rng_state(_rng_state)

from diffjscc.channel import normalize_power
from diffjscc.runtime.seeding import BatchGenerator  # noqa: E402
from diffjscc.channel_sionna import SionnaTDLChannel, build_sionna_channel  # noqa: E402
from diffjscc.errors import UserError  # noqa: E402


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _latent(*shape: int, seed: int = 100, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return normalize_power(torch.randn(*shape, generator=_gen(seed), dtype=dtype))


@pytest.fixture(scope="module")
def channel() -> SionnaTDLChannel:
    return SionnaTDLChannel()  # TDL-A, 100 ns, 3.5 GHz, static, 30 kHz x 64, CSI


def test_shape_and_dtype(channel: SionnaTDLChannel) -> None:
    for shape, dtype in (((4, 8, 8, 8), torch.float32), ((3, 2, 50), torch.float64)):
        # (3, 2, 50): 50 complex symbols, a partly filled (padded) OFDM symbol
        x = _latent(*shape, dtype=dtype)
        y = channel(x, 10.0, _gen())
        assert y.shape == x.shape and y.dtype == dtype and torch.isfinite(y).all()


def test_zero_forcing_error_matches_noise_over_gain() -> None:
    """After ZF each real symbol's error has variance sigma^2 / |h|^2 (project SNR convention)."""
    snr_db = 10.0
    sigma2 = 10 ** (-snr_db / 10)
    x = _latent(256, 512)
    y, h = SionnaTDLChannel(equalizer="zf")(x, snr_db, _gen(1), return_gain=True)
    err2 = (y - x).pow(2).reshape(256, 256, 2).sum(-1)  # |x_hat - x|^2 per complex symbol
    g2 = h.abs().square()
    # normalised by the known gain: E[|n/h|^2 |h|^2] = 2 sigma^2 exactly
    assert (err2 * g2).mean().item() / (2 * sigma2) == pytest.approx(1.0, abs=0.03)
    # raw error power against the expected noise / |h|^2, averaged over many draws
    ratio = err2.mean().item() / (2 * sigma2 / g2).mean().item()
    assert 0.8 < ratio < 1.25


def test_mmse_error_matches_closed_form_and_is_bounded(channel: SionnaTDLChannel) -> None:
    """The default MMSE equaliser, conj(h) y / (|h|^2 + sigma^2): each real symbol's error has
    variance sigma^2 / (|h|^2 + sigma^2) given h, and |x_hat| <= |x| + |n| / (2 sigma) (|n|/sigma < 8
    here), where zero forcing on the same draws gives far larger symbols in the deep fades."""
    snr_db = 10.0
    sigma2 = 10 ** (-snr_db / 10)
    x = _latent(256, 512)
    y, h = channel(x, snr_db, _gen(1), return_gain=True)
    assert channel.equalizer == "mmse"
    err2 = (y - x).pow(2).reshape(256, 256, 2).sum(-1) / 2  # per real component, per RE
    closed_form = sigma2 / (h.abs().square() + sigma2)
    assert (err2 / closed_form).mean().item() == pytest.approx(1.0, abs=0.03)
    size = torch.complex(y[..., 0::2], y[..., 1::2]).abs() - torch.complex(x[..., 0::2], x[..., 1::2]).abs()
    assert size.max().item() <= 4.0
    zf = SionnaTDLChannel(equalizer="zf")(x, snr_db, _gen(1))
    zf_size = torch.complex(zf[..., 0::2], zf[..., 1::2]).abs() - torch.complex(x[..., 0::2], x[..., 1::2]).abs()
    assert zf_size.max().item() > 2 * size.max().item()


def test_average_gain_is_one(channel: SionnaTDLChannel) -> None:
    """The TDL power-delay profile is normalised: E|h|^2 = 1 per resource element."""
    _, h = channel(_latent(1024, 128), 10.0, _gen(2), return_gain=True)
    assert h.abs().square().mean().item() == pytest.approx(1.0, abs=0.15)
    normalized = SionnaTDLChannel(normalize_channel=True)
    _, h = normalized(_latent(8, 512), 10.0, _gen(2), return_gain=True)
    per_sample = h.abs().square().mean(dim=1)  # 256 symbols = 4 full OFDM symbols: the grid
    torch.testing.assert_close(per_sample, torch.ones(8), rtol=1e-4, atol=1e-4)


def test_high_snr_recovers_input(channel: SionnaTDLChannel) -> None:
    x = _latent(8, 512)
    y = channel(x, 120.0, _gen(3))
    torch.testing.assert_close(y, x, rtol=0, atol=1e-3)


def test_without_csi_output_is_unequalised() -> None:
    no_csi = SionnaTDLChannel(csi=False)
    x = _latent(8, 512)
    y, h = no_csi(x, 120.0, _gen(3), return_gain=True)
    assert (y - x).pow(2).mean().item() > 0.1  # differs from x even without noise
    s = torch.complex(x[..., 0::2], x[..., 1::2])
    out = torch.complex(y[..., 0::2], y[..., 1::2])
    torch.testing.assert_close(out, h * s, rtol=0, atol=1e-3)  # y = h s (+ negligible noise)


@pytest.mark.parametrize("csi,equalizer", [(True, "zf"), (True, "mmse"), (False, "mmse")])
def test_gradient_flows_to_input(csi: bool, equalizer: str) -> None:
    ch = SionnaTDLChannel(csi=csi, equalizer=equalizer)
    x = _latent(4, 128).requires_grad_(True)
    ch(x, 5.0, _gen(4)).pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    if csi:  # ZF: x_hat = x + n/h, d x_hat / dx = 1; MMSE: d x_hat / dx = |h|^2 / (|h|^2 + sigma^2)
        x.grad = None
        _, h = ch(x, 5.0, _gen(4), return_gain=True)
        ch(x, 5.0, _gen(4)).sum().backward()
        g2 = h.abs().square()
        slope = torch.ones_like(g2) if equalizer == "zf" else g2 / (g2 + 10 ** (-5.0 / 10))
        torch.testing.assert_close(x.grad, slope.repeat_interleave(2, dim=1), rtol=1e-4, atol=1e-5)


def test_reproducible_with_generator(channel: SionnaTDLChannel) -> None:
    x = _latent(16, 512)
    a = channel(x, 10.0, _gen(7))
    b = channel(x, 10.0, _gen(7))
    c = channel(x, 10.0, _gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(5)  # no generator: torch's global RNG, not Sionna's own
    d = channel(x, 10.0)
    torch.manual_seed(5)
    assert torch.equal(d, channel(x, 10.0))


def test_batch_generator_slice_draws_like_whole_batch(channel: SionnaTDLChannel) -> None:
    x = _latent(16, 512)
    whole = channel(x, 10.0, BatchGenerator(_gen(9), 16))
    part = channel(x[4:10], 10.0, BatchGenerator(_gen(9), 16, 4, 10))
    assert torch.equal(whole[4:10], part)


def test_per_sample_snr(channel: SionnaTDLChannel) -> None:
    x = _latent(64, 512)
    snr = torch.tensor([0.0, 30.0]).repeat(32)
    y, h = SionnaTDLChannel(equalizer="zf")(x, snr, _gen(10), return_gain=True)
    err2 = (y - x).pow(2).reshape(64, 256, 2).sum(-1) * h.abs().square()  # 2 sigma_b^2 on average
    measured = err2.mean(dim=1) / 2
    expected = 10 ** (-snr / 10)
    torch.testing.assert_close(measured / expected, torch.ones(64), rtol=0, atol=0.3)
    # a float, a 0-d tensor and a full (B,) tensor are the same SNR
    a = channel(x, 10.0, _gen(11))
    b = channel(x, torch.tensor(10.0), _gen(11))
    c = channel(x, torch.full((64,), 10.0), _gen(11))
    assert torch.equal(a, b) and torch.equal(a, c)
    with pytest.raises(UserError, match="per-sample snr_db"):
        channel(x, torch.zeros(3), _gen())


def test_receivers_are_told_the_snr_of_the_received_grid() -> None:
    """With CSI, Channel('sionna_tdl') tells the receivers SNR + 10 log10(mean |h|^2) over each
    sample's data REs (as block fading's |h|^2 · SNR); without CSI the nominal SNR."""
    from diffjscc.channel import Channel

    z = torch.randn(8, 8, 8, 8, generator=_gen(20))
    link = Channel("sionna_tdl", snr_db=10.0).eval()
    y, told = link(z, generator=_gen(21), return_receiver_snr=True)
    same, h = link.sionna(normalize_power(z), 10.0, _gen(21), return_gain=True)
    assert torch.equal(y, same)
    torch.testing.assert_close(told, 10.0 + 10 * torch.log10(h.abs().square().mean(dim=1)))
    assert told.std() > 0.5  # a flat-ish 1.92 MHz grid fades as a block
    blind = Channel("sionna_tdl", snr_db=10.0, csi=False).eval()
    assert torch.equal(blind(z, generator=_gen(21), return_receiver_snr=True)[1], torch.full((8,), 10.0))


def test_speed_makes_the_channel_vary_over_ofdm_symbols() -> None:
    x = _latent(8, 512)  # 256 complex symbols = 4 OFDM symbols of 64 subcarriers
    _, h_static = SionnaTDLChannel(model="D").forward(x, 10.0, _gen(12), return_gain=True)
    _, h_moving = SionnaTDLChannel(model="D", speed_mps=300.0).forward(x, 10.0, _gen(12),
                                                                        return_gain=True)
    static, moving = h_static.reshape(8, 4, 64), h_moving.reshape(8, 4, 64)
    assert torch.equal(static[:, 1:], static[:, :1].expand(-1, 3, -1))
    assert (moving[:, -1] - moving[:, 0]).abs().mean() > 0.1


def test_bad_input_is_user_error(channel: SionnaTDLChannel) -> None:
    with pytest.raises(UserError, match="even number"):
        channel(torch.randn(2, 5), 10.0)
    with pytest.raises(UserError, match="snr_db"):
        channel(torch.randn(2, 4), float("nan"))
    with pytest.raises(UserError, match="TDL delay spread"):
        build_sionna_channel(delay_spread_ns=-1)
    with pytest.raises(UserError, match="equalizer"):
        build_sionna_channel(equalizer="ZF")



def test_config_channel_sionna_tdl_trains_and_evaluates(cifar_root, tmp_path) -> None:
    """`channel: sionna_tdl` by name in the config: training and the evaluation CLI go through it."""
    from pathlib import Path

    from diffjscc.cli import main
    from diffjscc.config import load_config
    from diffjscc.training.trainer import Trainer

    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    cfg = load_config(tiny, ["mode=jscc", "jscc_num_filters=16", "batch_size=8", "device=cpu", "total_steps=2",
                             "save_interval=2", "channel=sionna_tdl", "tdl_model=C", "tdl_delay_spread_ns=300",
                             "snr_range=[0,20]", f"data_dir={cifar_root / 'cifar_train'}", f"log_dir={tmp_path / 'run'}"])
    result = Trainer(cfg, progress=False).train()
    assert result.step == 2 and torch.isfinite(torch.tensor(result.final_loss))
    assert main(["evaluate", "--checkpoint", str(result.last_checkpoint), "--data", str(cifar_root / "cifar_test"),
                 "--snr", "5", "--limit", "8", "--no-fid", "--out", str(tmp_path / "eval")]) == 0
    assert '"channel": "sionna_tdl"' in (tmp_path / "eval" / "results.json").read_text()
