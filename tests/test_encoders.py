"""Tests for diffjscc.encoders: shapes, GDN formula, gradients, half-UNet, tiny overfit."""

from __future__ import annotations

import pytest
import torch

from diffjscc.channel import Channel
from diffjscc.encoders import (
    GDN,
    IGDN,
    HalfUNetEncoder,
    JSCCDecoder,
    JSCCEncoder,
    group_count,
    latent_shape,
)
from diffjscc.errors import UserError


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("norm", ["gdn", "batchnorm"])
def test_deep_jscc_shapes(size: int, norm: str) -> None:
    torch.manual_seed(0)
    enc = JSCCEncoder(c_out=8, num_filters=16, norm=norm)
    dec = JSCCDecoder(c_out=8, num_filters=16, norm=norm)
    x = torch.rand(2, 3, size, size) * 2 - 1
    z = enc(x)
    assert z.shape == (2, *latent_shape(size, 8))
    y = dec(z)
    assert y.shape == x.shape
    assert y.min() >= -1 and y.max() <= 1


def test_non_square_and_errors() -> None:
    enc, dec = JSCCEncoder(num_filters=8), JSCCDecoder(num_filters=8)
    x = torch.rand(1, 3, 32, 48)
    assert dec(enc(x)).shape == x.shape
    with pytest.raises(UserError):
        enc(torch.rand(1, 3, 30, 32))
    with pytest.raises(UserError):
        JSCCEncoder(norm="layernorm")
    with pytest.raises(UserError):
        latent_shape(30, 8)
    assert latent_shape(32, 8) == (8, 8, 8)


def test_gdn_matches_formula() -> None:
    torch.manual_seed(1)
    c = 4
    gdn = GDN(c)
    with torch.no_grad():  # set arbitrary non-negative beta/gamma through the reparametrisation
        beta_true = torch.rand(c) + 0.5
        gamma_true = torch.rand(c, c) * 0.3
        gdn.beta.copy_(gdn.beta_reparam.init(beta_true))
        gdn.gamma.copy_(gdn.gamma_reparam.init(gamma_true))
    beta, gamma = gdn.effective_params()
    assert torch.allclose(beta, beta_true, atol=1e-6)
    assert torch.allclose(gamma, gamma_true, atol=1e-6)

    x = torch.randn(2, c, 3, 5)
    y = gdn(x)
    # y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2)
    denom = beta.view(1, c, 1, 1) + torch.einsum("ij,bjhw->bihw", gamma, x * x)
    assert torch.allclose(y, x / denom.sqrt(), atol=1e-6)

    igdn = IGDN(c)
    with torch.no_grad():
        igdn.load_state_dict(gdn.state_dict())
    assert torch.allclose(igdn(x), x * denom.sqrt(), atol=1e-6)


def test_gdn_parameters_stay_non_negative() -> None:
    gdn = GDN(3)
    with torch.no_grad():
        gdn.beta.fill_(-5.0)
        gdn.gamma.fill_(-5.0)
    beta, gamma = gdn.effective_params()
    assert (beta >= 1e-6 - 1e-12).all() and (gamma >= 0).all()
    x = torch.randn(2, 3, 4, 4)
    assert torch.isfinite(gdn(x)).all()
    # gradient still flows (lower bound lets "upward" gradients through)
    loss = -gdn.effective_params()[0].sum()
    loss.backward()
    assert gdn.beta.grad is not None and (gdn.beta.grad != 0).any()


def test_gradients_flow_encoder_decoder() -> None:
    enc, dec = JSCCEncoder(num_filters=8), JSCCDecoder(num_filters=8)
    x = torch.rand(2, 3, 32, 32, requires_grad=True) * 2 - 1
    x.retain_grad()
    y = dec(Channel("awgn", 10.0)(enc(x)))
    y.pow(2).mean().backward()
    for p in list(enc.parameters()) + list(dec.parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_half_unet_shape_and_grad() -> None:
    torch.manual_seed(0)
    enc = HalfUNetEncoder(num_channels=32, num_res_blocks=1, c_out=8, latent_size=8)
    # 32 -> 16 -> 8, then the path stops downsampling at the latent size: the last level runs
    # at 8x8 too (attention there), so no symbol is a replicated copy of another.
    assert enc.block_types == ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"]
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    h = enc.conv_in(x)
    for block in enc.down_blocks:
        h, _ = block(h, temb=None)
    assert h.shape[-2:] == (8, 8)
    z = enc(x)
    assert z.shape == (2, 8, 8, 8)
    z.pow(2).mean().backward()
    assert enc.conv_in.weight.grad is not None and enc.conv_in.weight.grad.abs().sum() > 0
    # odd widths: GroupNorm groups must divide the channel counts
    enc2 = HalfUNetEncoder(num_channels=24, channel_mult=(1, 3), num_res_blocks=1,
                           attention_resolutions=(16,), num_heads=3, c_out=4, latent_size=4)
    assert enc2(torch.rand(1, 3, 32, 32)).shape == (1, 4, 4, 4)
    assert group_count(64) == 32 and group_count(24, 72) == 24 and group_count(48, 96) == 24 and group_count(40) == 20


def test_half_unet_default_config() -> None:
    enc = HalfUNetEncoder()
    with torch.no_grad():
        z = enc(torch.rand(1, 3, 32, 32) * 2 - 1)
    assert z.shape == (1, 8, 8, 8)
    with pytest.raises(UserError):
        HalfUNetEncoder(num_channels=30, num_heads=7)


def _smooth_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth deterministic images in [-1, 1]: sums of low-frequency sinusoids."""
    g = torch.Generator().manual_seed(seed)
    coords = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    imgs = torch.zeros(n, 3, size, size)
    for _ in range(3):
        fx, fy, ph = torch.rand(3, n, 3, 1, 1, generator=g) * torch.tensor([3.0, 3.0, 6.28]).view(3, 1, 1, 1, 1)
        amp = torch.rand(n, 3, 1, 1, generator=g)
        imgs = imgs + amp * torch.sin(6.28 * (fx * xx + fy * yy) + ph)
    return (imgs / imgs.abs().amax(dim=(1, 2, 3), keepdim=True)).clamp(-1, 1) * 0.9


@pytest.fixture
def single_thread():
    """Tiny CPU models run faster (and far steadier on a busy machine) on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_tiny_overfit_reduces_mse(single_thread: None) -> None:
    torch.manual_seed(0)
    enc = JSCCEncoder(c_out=8, num_filters=16)
    dec = JSCCDecoder(c_out=8, num_filters=16)
    ch = Channel("awgn", snr_db=20.0).train()
    x = _smooth_images(8)
    opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=3e-3)
    g = torch.Generator().manual_seed(0)

    def mse() -> float:
        with torch.no_grad():
            return torch.mean((dec(ch(enc(x), generator=torch.Generator().manual_seed(1))) - x) ** 2).item()

    before = mse()
    for _ in range(60):
        opt.zero_grad()
        loss = torch.mean((dec(ch(enc(x), generator=g)) - x) ** 2)
        loss.backward()
        opt.step()
    after = mse()
    assert after * 2 <= before, (before, after)
