"""Gaussian diffusion maths pinned to closed forms, diffusers' schedules and analytic denoisers."""

from __future__ import annotations

import math

import pytest
from pathlib import Path

import torch
from torch.distributions import Normal, kl_divergence

from diffjscc.config import PREDICTIONS
from diffjscc.diffusion.gaussian import GaussianDiffusion
from diffjscc.diffusion.respace import parse_respacing, respace
from diffjscc.diffusion.samplers import ddim_invert, ddim_sample, ddpm_sample
from diffjscc.diffusion.schedule import MAX_BETA, get_betas
from diffjscc.diffusion.unet import ConditionalUNet
from diffjscc.errors import UserError


def _cosine_f(u: torch.Tensor, T: int) -> torch.Tensor:
    return torch.cos((u / T + 0.008) / 1.008 * math.pi / 2) ** 2


def _analytic_denoiser(diffusion: GaussianDiffusion, s: float, learn_sigma: bool = False):
    """Optimal ε̂(x_t, t) for data x0 ~ N(0, s²I): √(1−ᾱ_t)·x_t / (ᾱ_t s² + 1 − ᾱ_t).

    ``t`` is the *network* timestep, so ᾱ comes from the original (un-respaced) process.
    With ``learn_sigma`` a v = 0 channel block is appended.
    """
    alpha_bar = diffusion.alphas_cumprod

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = alpha_bar[t].to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        eps = (1 - a).sqrt() * x / (a * s**2 + 1 - a)
        return torch.cat([eps, torch.zeros_like(eps)], dim=1) if learn_sigma else eps

    return denoise


# ---------------------------------------------------------------- schedules
@pytest.mark.parametrize("T", [50, 1000, 4000])
def test_cosine_alpha_bar_matches_closed_form(T):
    """cumprod(1−β) = f(t+1)/f(0) wherever β was not clipped; β ≤ 0.999 everywhere."""
    betas = get_betas("cosine", T)
    assert betas.dtype == torch.float64 and betas.shape == (T,)
    assert (betas <= MAX_BETA).all() and (betas > 0).all()
    alpha_bar = torch.cumprod(1 - betas, dim=0)
    t = torch.arange(T, dtype=torch.float64)
    closed = _cosine_f(t + 1, T) / _cosine_f(torch.zeros((), dtype=torch.float64), T)
    unclipped = betas < MAX_BETA
    # Clipping only happens at the very end (t = T−1, where f(T) = 0).
    assert unclipped[:-1].all()
    torch.testing.assert_close(alpha_bar[unclipped], closed[unclipped], rtol=1e-10, atol=0)


@pytest.mark.parametrize("T", [50, 1000])
def test_cosine_matches_diffusers(T):
    """Same β as diffusers' squaredcos_cap_v2 (computed there in float32)."""
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2").betas.double()
    torch.testing.assert_close(get_betas("cosine", T), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("T", [100, 1000, 4000])
def test_linear_schedule_endpoints_and_diffusers(T):
    """Linear β runs from 1e-4·1000/T to 0.02·1000/T, as diffusers' linear schedule."""
    from diffusers import DDPMScheduler

    betas = get_betas("linear", T)
    assert betas[0].item() == pytest.approx(1e-4 * 1000 / T, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.02 * 1000 / T, rel=1e-12)
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear",
                        beta_start=1e-4 * 1000 / T, beta_end=0.02 * 1000 / T).betas.double()
    torch.testing.assert_close(betas, ref, rtol=0, atol=1e-6)


def test_bad_schedule_is_user_error():
    """An unknown schedule name or a non-positive T is a UserError."""
    with pytest.raises(UserError, match="noise_schedule"):
        get_betas("quadratic", 10)
    with pytest.raises(UserError, match="diffusion_steps"):
        get_betas("cosine", 0)


# ---------------------------------------------------------------- forward process and posterior
def test_q_sample_statistics():
    """For fixed x0, x_t over many noise draws has mean √ᾱ_t x0 and variance 1 − ᾱ_t."""
    d = GaussianDiffusion.from_schedule("cosine", 100)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.tensor([-1.0, -0.3, 0.0, 0.7, 1.0], dtype=torch.float64).view(1, 5, 1, 1)
    n = 20000
    for step in (0, 10, 50, 99):
        t = torch.full((n,), step, dtype=torch.long)
        noise = torch.randn((n, 5, 1, 1), generator=gen, dtype=torch.float64)
        x_t = d.q_sample(x0.expand(n, -1, -1, -1), t, noise)
        a = d.alphas_cumprod[step]
        sd = (1 - a).sqrt()
        # mean within 5 standard errors, variance within 5 standard errors (≈ σ²·√(2/n)).
        assert torch.allclose(x_t.mean(0), a.sqrt() * x0[0], atol=5 * float(sd) / math.sqrt(n) + 1e-12)
        var = x_t.var(0)
        assert torch.allclose(var, (1 - a).expand_as(var), atol=5 * float(1 - a) * math.sqrt(2 / n) + 1e-15)


def test_q_posterior_matches_textbook():
    """μ̃ and β̃ equal the textbook formulas at every t > 0."""
    T = 30
    d = GaussianDiffusion.from_schedule("cosine", T)
    gen = torch.Generator().manual_seed(1)
    t = torch.arange(1, T)
    x0 = torch.rand((T - 1, 3, 2, 2), generator=gen, dtype=torch.float64) * 2 - 1
    x_t = torch.randn((T - 1, 3, 2, 2), generator=gen, dtype=torch.float64)
    mean, log_var = d.q_posterior(x0, x_t, t)

    betas = get_betas("cosine", T)
    ab = torch.cumprod(1 - betas, 0)
    ab_prev = ab[t - 1].view(-1, 1, 1, 1)
    ab_t, beta_t = ab[t].view(-1, 1, 1, 1), betas[t].view(-1, 1, 1, 1)
    mu = (ab_prev.sqrt() * beta_t / (1 - ab_t)) * x0 + ((1 - beta_t).sqrt() * (1 - ab_prev) / (1 - ab_t)) * x_t
    var = beta_t * (1 - ab_prev) / (1 - ab_t)
    torch.testing.assert_close(mean, mu, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(log_var.exp(), var.expand_as(x_t), rtol=1e-12, atol=0)


def test_predict_x0_inverts_q_sample():
    """x̂0 from the true ε recovers x0, and predict_eps recovers ε from x0."""
    d = GaussianDiffusion.from_schedule("linear", 100)
    gen = torch.Generator().manual_seed(2)
    x0 = torch.rand((4, 3, 2, 2), generator=gen, dtype=torch.float64) * 2 - 1
    eps = torch.randn((4, 3, 2, 2), generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 5, 50, 99])
    x_t = d.q_sample(x0, t, eps)
    torch.testing.assert_close(d.predict_x0(x_t, t, eps), x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(d.predict_eps(x_t, t, x0), eps, rtol=1e-7, atol=1e-7)


# ---------------------------------------------------------------- what the network predicts
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_prediction_target_converts_back(prediction):
    """The training target of each parametrisation maps back to the true (x0, ε), and a network
    outputting exactly that target has zero loss."""
    d = GaussianDiffusion.from_schedule("cosine", 100, prediction=prediction)
    gen = torch.Generator().manual_seed(12)
    x0 = torch.rand((4, 3, 2, 2), generator=gen, dtype=torch.float64) * 2 - 1
    eps = torch.randn((4, 3, 2, 2), generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 5, 50, 99])
    x_t = d.q_sample(x0, t, eps)
    target = d.training_target(x0, t, eps)
    got_x0, got_eps = d.x0_and_eps(target, x_t, t)
    torch.testing.assert_close(got_x0, x0, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(got_eps, eps, rtol=1e-6, atol=1e-6)
    assert d.training_losses(target, x0, x_t, t, eps)["loss"].abs().max() < 1e-10
    if prediction == "v":  # v = √ᾱ ε − √(1−ᾱ) x0 (Salimans & Ho 2022)
        a = d.alphas_cumprod[t].view(-1, 1, 1, 1)
        torch.testing.assert_close(target, a.sqrt() * eps - (1 - a).sqrt() * x0)


def _as_prediction(denoise, diffusion: GaussianDiffusion, prediction: str):
    """The same optimal denoiser, outputting ``prediction`` instead of ε."""
    alpha_bar = diffusion.alphas_cumprod

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = denoise(x, t)
        a = alpha_bar[t].to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        return {"epsilon": eps, "x0": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[prediction]

    return predict


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_samplers_agree_across_predictions(prediction):
    """DDIM sampling and inversion give the same trajectories whether the optimal network
    outputs ε, x0 or v: the parametrisation changes training, not the sampler's maths."""
    s = 0.5
    base = GaussianDiffusion.from_schedule("cosine", 1000)
    other = GaussianDiffusion.from_schedule("cosine", 1000, prediction=prediction)
    eps_net = _analytic_denoiser(base, s)
    other_net = _as_prediction(eps_net, base, prediction)
    spacing = parse_respacing("ddim20", 1000)
    process, other_process = respace(base, spacing), respace(other, spacing)
    assert other_process.prediction == prediction
    gen = torch.Generator().manual_seed(13)
    x_T = torch.randn((4, 3, 8, 8), generator=gen, dtype=torch.float64)
    torch.testing.assert_close(ddim_sample(other_process, other_net, x_T, clip=False),
                               ddim_sample(process, eps_net, x_T, clip=False), rtol=1e-6, atol=1e-6)
    x0 = s * torch.randn((4, 3, 8, 8), generator=gen, dtype=torch.float64)
    torch.testing.assert_close(ddim_invert(other_process, other_net, x0), ddim_invert(process, eps_net, x0),
                               rtol=1e-6, atol=1e-6)


def test_unknown_prediction_is_rejected():
    with pytest.raises(ValueError, match="prediction"):
        GaussianDiffusion.from_schedule("cosine", 10, prediction="sample")


# ---------------------------------------------------------------- hybrid loss
def _reference_vlb_bits(d: GaussianDiffusion, x0, x_t, t, eps_hat, v, continuous: bool = False):
    """L_t in bits/dim computed independently (float64, exact normal CDF; ``continuous``: the
    t = 0 term is the Gaussian density of torch.distributions, for targets off the 8-bit grid)."""
    betas = d.betas
    ab = torch.cumprod(1 - betas, 0)
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    post_var = betas * (1 - ab_prev) / (1 - ab)
    log_post_var_clipped = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
    out = []
    for b in range(x0.shape[0]):
        i = int(t[b])
        a, ap, beta = ab[i], ab_prev[i], betas[i]
        c1 = ap.sqrt() * beta / (1 - a)
        c2 = (1 - beta).sqrt() * (1 - ap) / (1 - a)
        x0_hat = (x_t[b] - (1 - a).sqrt() * eps_hat[b]) / a.sqrt()  # unclipped
        mu_theta = c1 * x0_hat + c2 * x_t[b]
        frac = (v[b] + 1) / 2
        log_sigma2 = frac * torch.log(beta) + (1 - frac) * log_post_var_clipped[i]
        sd_theta = (0.5 * log_sigma2).exp()
        if i > 0:
            mu_true = c1 * x0[b] + c2 * x_t[b]
            kl = kl_divergence(Normal(mu_true, post_var[i].sqrt()), Normal(mu_theta, sd_theta))
            out.append(kl.mean() / math.log(2))
        elif continuous:
            out.append(-Normal(mu_theta, sd_theta).log_prob(x0[b]).mean() / math.log(2))
        else:
            std = Normal(torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64))
            xb = x0[b]
            cdf_plus = std.cdf((xb + 1 / 255 - mu_theta) / sd_theta)
            cdf_min = std.cdf((xb - 1 / 255 - mu_theta) / sd_theta)
            logp = torch.where(xb < -0.999, torch.log(cdf_plus),
                               torch.where(xb > 0.999, torch.log(1 - cdf_min), torch.log(cdf_plus - cdf_min)))
            out.append(-logp.mean() / math.log(2))
    return torch.stack(out)


def test_hybrid_loss_matches_independent_vlb():
    """loss = mean((ε−ε̂)²) + λ·T·L_vlb with L_vlb = KL (t>0) or decoder NLL (t=0), in bits."""
    T, lam = 50, 0.001
    d = GaussianDiffusion.from_schedule("cosine", T, learn_sigma=True)
    gen = torch.Generator().manual_seed(3)
    shape = (6, 3, 4, 4)
    x0 = torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1
    x0[:, 0, 0, 0] = -1.0  # exercise both edge bins of the discretised decoder
    x0[:, 0, 0, 1] = 1.0
    x0 = x0.float().double()  # the code computes in float32: same inputs
    t = torch.tensor([0, 0, 1, 7, 25, 49])
    noise = torch.randn(shape, generator=gen, dtype=torch.float64).float().double()
    x_t = d.q_sample(x0, t, noise).float().double()
    eps_hat = (noise + 0.5 * torch.randn(shape, generator=gen, dtype=torch.float64)).float().double()
    v = (torch.rand(shape, generator=gen, dtype=torch.float64) * 1.8 - 0.9).float().double()
    out = torch.cat([eps_hat, v], dim=1).float()

    terms = d.training_losses(out, x0.float(), x_t.float(), t, noise.float(), vlb_weight=lam)
    ref_vlb = _reference_vlb_bits(d, x0, x_t, t, eps_hat, v)
    ref_mse = ((noise - eps_hat) ** 2).mean(dim=(1, 2, 3))
    assert (ref_vlb > 0).all()
    torch.testing.assert_close(terms["mse"].double(), ref_mse, rtol=1e-5, atol=1e-7)
    # KL terms (t > 0): same formula, only float32 rounding.
    torch.testing.assert_close(terms["vlb"][t > 0].double(), ref_vlb[t > 0], rtol=1e-4, atol=1e-6)
    # Decoder NLL (t = 0): the code uses the tanh approximation of Φ (as improved-diffusion),
    # the reference the exact normal CDF, so agreement is ≈1e-3 relative, not float precision.
    torch.testing.assert_close(terms["vlb"][t == 0].double(), ref_vlb[t == 0], rtol=1e-3, atol=0)
    torch.testing.assert_close(terms["loss"].double(), ref_mse + lam * T * ref_vlb, rtol=1e-3, atol=1e-6)


def test_vlb_decoder_of_a_residual_target_is_the_continuous_gaussian():
    """A residual (x − x̂)/scale is off the 8-bit grid and beyond ±1: its t = 0 term is −log N(x_0; μ_θ, Σ_θ),
    not the discretised decoder (whose ±1/255 bins and edge bins at ±0.999 assume 8-bit pixels)."""
    T = 50
    d = GaussianDiffusion.from_schedule("cosine", T, learn_sigma=True)
    gen = torch.Generator().manual_seed(11)
    shape = (5, 3, 4, 4)
    x0 = (0.8 * torch.randn(shape, generator=gen, dtype=torch.float64)).float().double()  # |r| > 1 in places
    t = torch.tensor([0, 0, 0, 3, 49])
    noise = torch.randn(shape, generator=gen, dtype=torch.float64).float().double()
    x_t = d.q_sample(x0, t, noise).float().double()
    eps_hat = (noise + 0.3 * torch.randn(shape, generator=gen, dtype=torch.float64)).float().double()
    v = (torch.rand(shape, generator=gen, dtype=torch.float64) * 1.8 - 0.9).float().double()
    out = torch.cat([eps_hat, v], dim=1).float()

    residual = d.training_losses(out, x0.float(), x_t.float(), t, noise.float(), target_is_8bit=False)["vlb"]
    reference = _reference_vlb_bits(d, x0, x_t, t, eps_hat, v, continuous=True)
    torch.testing.assert_close(residual.double(), reference, rtol=1e-4, atol=1e-5)
    image = d.training_losses(out, x0.float(), x_t.float(), t, noise.float())["vlb"]  # the 8-bit decoder
    assert torch.equal(image[t > 0], residual[t > 0])
    assert ((image[t == 0].double() - reference[t == 0]).abs() > 0.1).all()  # what residual targets had before


def test_trainer_uses_the_continuous_decoder_for_residual_targets(monkeypatch):
    """training_loss tells the diffusion whether its target is the 8-bit image or a residual."""
    from diffjscc.config import Config
    from diffjscc.system import TransmissionSystem
    from diffjscc.training.trainer import training_loss

    seen = []
    original = GaussianDiffusion.training_losses

    def recording(self, *args, **kwargs):
        seen.append(kwargs.get("target_is_8bit", True))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GaussianDiffusion, "training_losses", recording)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(12)) * 2 - 1
    for conditioning in ("residual", "spatial"):
        cfg = Config(mode="joint", conditioning=conditioning, learn_sigma=True, image_size=16, c_out=4,
                     latent_dim=64, num_channels=16, channel_mult=[1], num_res_blocks=1, attention_resolutions=[],
                     jscc_num_filters=8, diffusion_steps=10).validate()
        training_loss(TransmissionSystem(cfg), images, None, torch.Generator().manual_seed(13))
    assert seen == [False, True]


def test_vlb_trains_the_variance_outside_minus_one_to_one():
    """No clamp of v before the interpolation (improved-diffusion has none): at v = ±1.5 the VLB still
    has a gradient in v, and its log-variance extrapolates linearly beyond [log β̃_t, log β_t]."""
    T = 50
    d = GaussianDiffusion.from_schedule("cosine", T, learn_sigma=True)
    gen = torch.Generator().manual_seed(14)
    shape = (4, 3, 4, 4)
    x0 = torch.rand(shape, generator=gen) * 2 - 1
    t = torch.tensor([0, 5, 20, 49])
    noise = torch.randn(shape, generator=gen)
    x_t = d.q_sample(x0, t, noise)
    for outside in (1.5, -1.5):
        v = torch.full(shape, outside, requires_grad=True)
        terms = d.training_losses(torch.cat([noise, v], dim=1), x0, x_t, t, noise)
        (grad,) = torch.autograd.grad(terms["vlb"].sum(), v)
        assert (grad.abs() > 0).all()
    pred = d.p_mean_variance(torch.cat([noise, torch.full(shape, 3.0)], dim=1), x_t, t, clip=False)
    low, high = d.posterior_log_variance_clipped[t], torch.log(d.betas[t])
    torch.testing.assert_close(pred.log_variance[:, 0, 0, 0].double(), 2 * high - low, rtol=1e-5, atol=1e-6)


def test_vlb_term_is_stop_gradient_on_eps():
    """The VLB term trains only v; ε̂ is trained by the MSE alone."""
    T = 50
    d = GaussianDiffusion.from_schedule("cosine", T, learn_sigma=True)
    gen = torch.Generator().manual_seed(4)
    shape = (4, 3, 4, 4)
    x0 = torch.rand(shape, generator=gen) * 2 - 1
    t = torch.tensor([0, 3, 20, 49])
    noise = torch.randn(shape, generator=gen)
    x_t = d.q_sample(x0, t, noise)
    eps_hat = noise + 0.5 * torch.randn(shape, generator=gen)
    v = torch.rand(shape, generator=gen) * 1.8 - 0.9
    out = torch.cat([eps_hat, v], dim=1).requires_grad_(True)

    terms = d.training_losses(out, x0, x_t, t, noise)
    (g_vlb,) = torch.autograd.grad(terms["vlb"].sum(), out, retain_graph=True)
    assert torch.equal(g_vlb[:, :3], torch.zeros_like(g_vlb[:, :3]))
    assert (g_vlb[:, 3:].abs() > 0).float().mean() > 0.9

    (g_loss,) = torch.autograd.grad(terms["loss"].sum(), out, retain_graph=True)
    (g_mse,) = torch.autograd.grad(terms["mse"].sum(), out)
    torch.testing.assert_close(g_loss[:, :3], g_mse[:, :3], rtol=0, atol=0)
    assert torch.equal(g_mse[:, 3:], torch.zeros_like(g_mse[:, 3:]))


def test_fixed_variance_loss_is_plain_mse():
    """Without a learned variance the loss is L_simple only."""
    d = GaussianDiffusion.from_schedule("linear", 20)
    eps_hat, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    x0 = torch.zeros(2, 3, 4, 4)
    terms = d.training_losses(eps_hat, x0, x0, torch.tensor([0, 5]), noise)
    assert "vlb" not in terms
    torch.testing.assert_close(terms["loss"], ((noise - eps_hat) ** 2).mean(dim=(1, 2, 3)))


# ---------------------------------------------------------------- respacing
def test_parse_respacing_ddim():
    """ddimN is range(0, T, T/N) when N divides T and never reaches t = T−1."""
    assert parse_respacing("ddim20", 1000) == list(range(0, 1000, 50))
    assert parse_respacing(20, 1000) == list(range(0, 1000, 50))
    assert parse_respacing("ddim50", 4000) == list(range(0, 4000, 80))
    for n in (1, 3, 7, 20, 300, 400, 600, 999):
        steps = parse_respacing(f"ddim{n}", 1000)
        assert len(steps) == n and steps == sorted(set(steps)) and steps[0] == 0
        assert 999 not in steps
        # Spread over the whole range: the last kept step is within one stride of the end.
        assert steps[-1] >= 1000 - math.ceil(1000 / n)


def test_parse_respacing_even_and_sections():
    """'N' spreads N steps over [0, T−1] including both ends; 'a,b' splits into sections."""
    steps = parse_respacing("10", 1000)
    assert len(steps) == 10 and steps[0] == 0 and steps[-1] == 999
    assert steps == sorted(set(steps))
    assert parse_respacing("1000", 1000) == list(range(1000))
    steps = parse_respacing("5,5", 1000)
    assert len(steps) == 10
    assert sum(s < 500 for s in steps) == 5 and sum(s >= 500 for s in steps) == 5
    assert {0, 499, 500, 999} <= set(steps)


@pytest.mark.parametrize("spec", ["", "ddim", "ddim0", "ddim1001", "ddimx", "abc", "0", "1001",
                                  "5,,5", "600,600", "-3", "ddim-5"])
def test_parse_respacing_bad_specs(spec):
    """Malformed or impossible specs are UserErrors."""
    with pytest.raises(UserError):
        parse_respacing(spec, 1000)


def test_respace_keeps_alpha_bar():
    """A respaced process has the original ᾱ at the kept steps and maps to the kept timesteps."""
    d = GaussianDiffusion.from_schedule("cosine", 1000, learn_sigma=True)
    keep = parse_respacing("ddim20", 1000)
    r = respace(d, keep)
    assert r.num_timesteps == 20 and r.learn_sigma
    torch.testing.assert_close(r.alphas_cumprod, d.alphas_cumprod[keep], rtol=1e-12, atol=0)
    assert r.timestep_map.tolist() == keep
    assert r.model_timesteps(torch.tensor([0, 19])).tolist() == [0, 950]
    # Respacing a respaced process composes the maps.
    rr = respace(r, [0, 10, 19])
    assert rr.timestep_map.tolist() == [0, 500, 950]
    torch.testing.assert_close(rr.alphas_cumprod, d.alphas_cumprod[[0, 500, 950]], rtol=1e-12, atol=0)


# ---------------------------------------------------------------- samplers with an analytic denoiser
def test_ddim_inversion_round_trip():
    """ddim_sample(ddim_invert(x0)) ≈ x0 for the optimal denoiser; more steps, smaller error."""
    s = 0.5
    base = GaussianDiffusion.from_schedule("cosine", 1000)
    denoise = _analytic_denoiser(base, s)
    x0 = s * torch.randn((8, 3, 8, 8), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    errors = {}
    for steps in (20, 100):
        process = respace(base, parse_respacing(f"ddim{steps}", 1000))
        x_T = ddim_invert(process, denoise, x0)
        if steps == 100:
            assert abs(x_T.std().item() - 1.0) < 0.1
        back = ddim_sample(process, denoise, x_T, clip=False)
        errors[steps] = (back - x0).abs().max().item()
    assert errors[100] < 0.05
    assert errors[100] < errors[20]


def test_ddpm_sampling_matches_data_std():
    """Ancestral sampling with the optimal ε̂ produces samples with std ≈ s."""
    s = 0.5
    base = GaussianDiffusion.from_schedule("cosine", 200)
    gen = torch.Generator().manual_seed(6)
    x_T = torch.randn((16, 3, 16, 16), generator=gen, dtype=torch.float64)
    for process in (base, respace(base, parse_respacing("50", 200))):
        out = ddpm_sample(process, _analytic_denoiser(base, s), x_T, clip=False, generator=gen)
        assert abs(out.std().item() / s - 1) < 0.1
        assert abs(out.mean().item()) < 0.05


def test_ddpm_sampling_learned_sigma_path():
    """The learned-variance branch (v = 0: geometric mean of β̃ and β) also gives std ≈ s."""
    s = 0.5
    base = GaussianDiffusion.from_schedule("cosine", 200, learn_sigma=True)
    gen = torch.Generator().manual_seed(7)
    x_T = torch.randn((16, 3, 16, 16), generator=gen, dtype=torch.float64)
    process = respace(base, parse_respacing("50", 200))
    out = ddpm_sample(process, _analytic_denoiser(base, s, learn_sigma=True), x_T, clip=False, generator=gen)
    assert abs(out.std().item() / s - 1) < 0.1


def test_the_schedule_follows_the_model_to_its_device():
    """Moving a system moves its diffusion arrays (float64 kept), so sampling and training index
    them on the device instead of copying from the host at every use. ("meta" stands in for a GPU:
    a device other than the CPU that needs no hardware.)"""
    from diffjscc.config import load_config
    from diffjscc.system import TransmissionSystem

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml",
                      ["num_channels=16", "channel_mult=[1,2]", "attention_resolutions=[16]", "diffusion_steps=50"])
    system = TransmissionSystem(cfg)
    cpu_process = system.sampling_process(5)
    system.to("meta")
    arrays = {name: value for name, value in vars(system.diffusion).items() if isinstance(value, torch.Tensor)}
    assert len(arrays) >= 10 and all(value.device.type == "meta" for value in arrays.values())
    assert system.diffusion.alphas_cumprod.dtype == torch.float64
    t = torch.tensor([3, 7], device="meta")
    assert system.diffusion.q_sample(torch.empty(2, 3, 4, 4, device="meta"), t,
                                     torch.empty(2, 3, 4, 4, device="meta")).device.type == "meta"
    assert cpu_process.alphas_cumprod.device.type == "cpu" and cpu_process.timestep_map.device.type == "cpu"


def test_ddim_determinism():
    """DDIM with η = 0 ignores the generator; with η = 1 it depends on it (and is reproducible)."""
    base = GaussianDiffusion.from_schedule("cosine", 100)
    process = respace(base, parse_respacing("ddim10", 100))
    denoise = _analytic_denoiser(base, 0.5)
    x_T = torch.randn((2, 3, 4, 4), generator=torch.Generator().manual_seed(8))

    def run(eta, seed):
        return ddim_sample(process, denoise, x_T, eta=eta, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(0.0, 1), run(0.0, 2))
    assert torch.equal(run(1.0, 1), run(1.0, 1))
    assert not torch.allclose(run(1.0, 1), run(1.0, 2))


# ---------------------------------------------------------------- conditional UNet
def _tiny_unet(**kwargs) -> ConditionalUNet:
    torch.manual_seed(0)
    return ConditionalUNet(image_size=16, num_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                           attention_resolutions=(8,), **kwargs).eval()


def test_unet_output_channels():
    """6 output channels (ε, v) with a learned variance, 3 without."""
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([0, 999])
    with torch.no_grad():
        assert _tiny_unet(learn_sigma=True).forward(x, t).shape == (2, 6, 16, 16)
        assert _tiny_unet(learn_sigma=False).forward(x, t).shape == (2, 3, 16, 16)


def test_unet_uses_latent_and_class():
    """The output depends on the received latent and on the class label (one batched forward)."""
    net = _tiny_unet(learn_sigma=True, latent_dim=8, num_classes=3)
    gen = torch.Generator().manual_seed(9)
    x, t = torch.randn((1, 3, 16, 16), generator=gen), torch.tensor([500])
    latent = torch.randn((1, 8), generator=gen)
    # rows: reference, other latent, other class, the same latent as a (c, h, w) map
    xs, ts = x.expand(4, -1, -1, -1), t.expand(4)
    latents = torch.cat([latent, latent + 1.0, latent, latent]).view(4, 2, 2, 2)
    labels = torch.tensor([0, 0, 2, 0])
    with torch.no_grad():
        out = net(xs, ts, latent=latents, class_labels=labels)
    assert out.shape == (4, 6, 16, 16)
    assert (out[0] - out[1]).abs().max() > 1e-4
    assert (out[0] - out[2]).abs().max() > 1e-4
    torch.testing.assert_close(out[3], out[0])


def test_unet_conditioning_errors():
    """Unconditional UNet takes latent=None; a conditioned one without its inputs is a ValueError."""
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([3])
    with torch.no_grad():
        assert _tiny_unet()(x, t, latent=None).shape == (1, 3, 16, 16)
        with pytest.raises(ValueError, match="latent"):
            _tiny_unet(latent_dim=8)(x, t)
        with pytest.raises(ValueError, match="class"):
            _tiny_unet(latent_dim=8, num_classes=3)(x, t, latent=torch.randn(1, 8))


def test_a_single_step_process_samples() -> None:
    """`--steps 1` respaces to one step: its log-variances must still be finite."""
    diffusion = respace(GaussianDiffusion.from_schedule("cosine", 100, learn_sigma=True), [0])
    assert torch.isfinite(diffusion.posterior_log_variance_clipped).all()
    x_T = torch.randn(2, 3, 4, 4)
    out = ddim_sample(diffusion, lambda x, t: torch.zeros(x.shape[0], 6, 4, 4), x_T)
    assert torch.isfinite(out).all()
    out = ddpm_sample(diffusion, lambda x, t: torch.zeros(x.shape[0], 6, 4, 4), x_T)
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------- attention heads
def _attention_heads(unet: ConditionalUNet) -> dict[str, int]:
    from diffusers.models.attention_processor import Attention

    return {name: module.heads for name, module in unet.unet.named_modules() if isinstance(module, Attention)}


def test_num_heads_are_those_of_the_first_attention_level() -> None:
    """As documented (config.py, diffusion/unet.py): num_heads at the first attention level; a level
    twice as wide, and the middle block, have twice the heads (diffusers keeps one head width)."""
    unet = ConditionalUNet(image_size=16, num_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                           attention_resolutions=(16, 8), num_heads=2)
    heads = _attention_heads(unet)
    assert heads and {name: n for name, n in heads.items() if name.startswith("down_blocks.0")} == {
        "down_blocks.0.attentions.0": 2}
    assert heads["down_blocks.1.attentions.0"] == heads["mid_block.attentions.0"] == 4
    shipped = ConditionalUNet(image_size=32, num_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                              attention_resolutions=(8,), num_heads=4)  # the shipped receivers' layout
    assert set(_attention_heads(shipped).values()) == {4}


def test_num_heads_is_part_of_the_architecture(tmp_path: Path) -> None:
    """Same-shaped weights, other attention: init_from (and resume) under another num_heads is refused;
    a checkpoint saved without the key counts as the default."""
    from diffjscc.config import ARCHITECTURE_KEYS, Config, first_mismatch
    from diffjscc.runtime.checkpoint import save_checkpoint
    from diffjscc.system import TransmissionSystem, init_from_checkpoint

    tiny = dict(mode="unconditional", num_channels=16, channel_mult=[1, 2], num_res_blocks=1,
                attention_resolutions=[16], diffusion_steps=10)
    trained = TransmissionSystem(Config(**tiny, num_heads=4).validate())
    path = save_checkpoint({"config": trained.cfg.to_dict(), "model": trained.state_dict(), "step": 0},
                           tmp_path / "heads4.pt")
    other = TransmissionSystem(Config(**tiny, num_heads=2).validate())
    assert other.state_dict().keys() == trained.state_dict().keys()  # the weights alone would load
    with pytest.raises(UserError, match="num_heads=4"):
        init_from_checkpoint(other, str(path))
    init_from_checkpoint(TransmissionSystem(Config(**tiny, num_heads=4).validate()), str(path))
    old = {key: value for key, value in trained.cfg.to_dict().items() if key != "num_heads"}
    assert first_mismatch(old, Config(**tiny), ARCHITECTURE_KEYS) is None
    assert first_mismatch(old, Config(**tiny, num_heads=2), ARCHITECTURE_KEYS) == ("num_heads", 4)
