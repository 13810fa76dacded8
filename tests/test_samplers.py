"""Few-step sampling: the trailing and quadratic spacings, and DPM-Solver++(2M) against the exact
probability-flow ODE of Gaussian data (closed form) and against diffusers' implementation of the
same solver."""

from __future__ import annotations

import math

import pytest
import torch

from diffjscc.config import Config
from diffjscc.diffusion.gaussian import GaussianDiffusion
from diffjscc.diffusion.respace import parse_respacing, respace
from diffjscc.diffusion.samplers import ddim_sample, ddpm_sample, dpm_solver_2m_sample, resolve_sampler
from diffjscc.errors import UserError
from diffjscc.system import TransmissionSystem

T = 1000
DATA_STD = 0.5
FEW_STEP_ERROR = 0.15  # DPM-Solver++(2M), 8 evaluations, trailing: max |x_0 − exact| (measured 0.134; DDIM 0.283)
QUADRATIC_ERROR = 0.12  # the same on the quadratic spacing (measured 0.108; 4 evaluations: 0.182 against 0.469)


def test_trailing_spacing_ends_at_the_last_timestep() -> None:
    for count in (1, 2, 4, 8, 20, 50):
        kept = parse_respacing(f"trailing{count}", T)
        assert len(kept) == count and kept[-1] == T - 1 and kept == sorted(set(kept))
    assert parse_respacing("trailing8", T) == [124, 249, 374, 499, 624, 749, 874, 999]
    assert max(parse_respacing("ddim20", T)) == 950  # the leading spacing never reaches T−1


def test_quadratic_spacing_runs_from_pure_noise_to_the_data() -> None:
    for count in (2, 4, 8, 20, 50, 999, T):
        kept = parse_respacing(f"quadratic{count}", T)
        assert len(kept) == count and kept[0] == 0 and kept[-1] == T - 1 and kept == sorted(set(kept))
    assert parse_respacing("quadratic1", T) == [T - 1]
    eight = parse_respacing("quadratic8", T)
    assert eight == [0, 20, 82, 183, 326, 510, 734, 999]  # round(999 (i/7)²)
    gaps = [b - a for a, b in zip(eight, eight[1:])]
    assert gaps == sorted(gaps)  # dense near the data, coarse near the noise
    assert parse_respacing("quadratic50", T)[:3] == [0, 1, 2]  # round(999 (1/49)²) = 0: raised to stay distinct
    with pytest.raises(UserError, match="quadraticN"):
        parse_respacing("quadratic0", T)


def test_trailing_sampler_starts_from_pure_noise() -> None:
    """The first step of a trailing process sits where x_T ~ N(0, I) is the forward marginal."""
    cfg = Config(mode="unconditional", diffusion_steps=T, sample_spacing="trailing", prediction="v", num_channels=8,
                 channel_mult=[1], num_res_blocks=1, attention_resolutions=[])
    process = TransmissionSystem(cfg).sampling_process(8)
    assert int(process.timestep_map[-1]) == T - 1
    assert math.sqrt(process.alphas_cumprod[-1].item()) < 1e-4  # the image's share of x_T
    leading = TransmissionSystem(Config(**{**cfg.to_dict(), "sample_spacing": "leading"})).sampling_process(8)
    assert math.sqrt(leading.alphas_cumprod[-1].item()) > 0.1  # t = 875: an eighth of the image left
    quadratic = TransmissionSystem(cfg).sampling_process(8, "quadratic")  # a spacing other than the config's
    assert quadratic.timestep_map.tolist() == parse_respacing("quadratic8", T)
    with pytest.raises(UserError, match="unknown timestep spacing 'even'"):
        TransmissionSystem(cfg).sampling_process(8, "even")


def _gaussian_problem(steps: int, spacing: str = "trailing"):
    """A v-prediction process, the exact denoiser of data N(μ, DATA_STD² I) and the exact ODE map."""
    full = GaussianDiffusion.from_schedule("cosine", T, prediction="v")
    process = respace(full, parse_respacing(f"{spacing}{steps}", T))
    mean = torch.linspace(-0.8, 0.8, 3 * 4 * 4, dtype=torch.float64).view(1, 3, 4, 4)

    def denoiser(x: torch.Tensor, model_t: torch.Tensor) -> torch.Tensor:
        a = full.alphas_cumprod[model_t].view(-1, 1, 1, 1)
        x0 = mean + DATA_STD**2 * a.sqrt() / (a * DATA_STD**2 + 1 - a) * (x - a.sqrt() * mean)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * x0  # v

    a_T = process.alphas_cumprod[-1]
    x_T = torch.randn((5, 3, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # probability-flow ODE of Gaussian data in y = x/√ᾱ, σ = √((1−ᾱ)/ᾱ): y − μ ∝ √(DATA_STD² + σ²)
    sigma_T = ((1 - a_T) / a_T).sqrt()
    exact = mean + (x_T / a_T.sqrt() - mean) * DATA_STD / (DATA_STD**2 + sigma_T**2).sqrt()
    return process, denoiser, x_T, exact


def test_dpm_solver_matches_the_exact_ode_in_few_steps() -> None:
    errors = {}
    for steps in (4, 8, 16):
        process, denoiser, x_T, exact = _gaussian_problem(steps)
        errors[steps] = (dpm_solver_2m_sample(process, denoiser, x_T, clip=False) - exact).abs().max().item()
        if steps == 8:
            ddim_error = (ddim_sample(process, denoiser, x_T, clip=False) - exact).abs().max().item()
    assert errors[8] < FEW_STEP_ERROR
    assert errors[8] < ddim_error / 2  # the second order pays at 8 evaluations
    assert errors[16] < errors[8] / 2.5  # and the error falls faster than first order


def test_quadratic_spacing_brings_few_steps_nearer_the_exact_ode() -> None:
    """Trailing's last step jumps to x̂_0 from t = 124 (8 steps) or 249 (4): quadratic's starts at t = 20 (82)."""
    def error(steps: int, spacing: str) -> float:
        process, denoiser, x_T, exact = _gaussian_problem(steps, spacing)
        return (dpm_solver_2m_sample(process, denoiser, x_T, clip=False) - exact).abs().max().item()

    assert error(8, "quadratic") < QUADRATIC_ERROR < error(8, "trailing")
    assert error(4, "quadratic") < error(4, "trailing") / 2


def test_dpm_solver_agrees_with_diffusers() -> None:
    """The same solver in diffusers (DPMSolverMultistepScheduler, trailing, σ = 0 at the end)."""
    from diffusers import DPMSolverMultistepScheduler

    steps = 6
    process, denoiser, x_T, _ = _gaussian_problem(steps)
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=T, trained_betas=GaussianDiffusion.from_schedule("cosine", T).betas.numpy(),
        prediction_type="v_prediction", algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing",
        final_sigmas_type="zero", lower_order_final=True)
    scheduler.set_timesteps(steps)
    assert scheduler.timesteps.tolist() == process.timestep_map.flip(0).tolist()
    x = x_T.float()
    for t in scheduler.timesteps:
        x = scheduler.step(denoiser(x.double(), t.repeat(x.shape[0])).float(), t, x).prev_sample
    ours = dpm_solver_2m_sample(process, denoiser, x_T, clip=False)
    assert (ours - x.double()).abs().max().item() < 2e-3


def test_auto_sampler_is_the_few_step_solver_up_to_eight_steps() -> None:
    assert [resolve_sampler("auto", n) for n in (1, 8, 9, 50)] == ["dpm++2m", "dpm++2m", "ddim", "ddim"]
    assert resolve_sampler("ddim", 4) == "ddim"
    with pytest.raises(UserError, match="unknown sampler"):
        resolve_sampler("euler", 4)


def test_epsilon_models_refuse_the_spacings_that_start_from_pure_noise(cifar_root, tmp_path, capsys) -> None:
    """At t = T−1 (trailing, quadratic) an ε model's x̂_0 = (x − √(1−ᾱ)ε̂)/√ᾱ divides by √ᾱ ≈ 5e-5:
    one line from the config, the system and the CLI; v and x0 models, and the leading spacing, run."""
    from diffjscc.cli import main
    from diffjscc.runtime.checkpoint import save_checkpoint

    tiny = dict(mode="unconditional", diffusion_steps=T, num_channels=8, channel_mult=[1], num_res_blocks=1,
                attention_resolutions=[])
    epsilon = Config(**tiny, prediction="epsilon")
    first_step = respace(GaussianDiffusion.from_schedule("cosine", T), parse_respacing("trailing8", T))
    assert 1 / first_step.sqrt_alphas_cumprod[-1].item() > 2e4  # an ε̂ error of 1e-4 is a 2 in x̂_0
    for spacing in ("trailing", "quadratic"):
        with pytest.raises(UserError, match="sample_spacing"):
            Config(**tiny, prediction="epsilon", sample_spacing=spacing).validate()
        with pytest.raises(UserError, match=f"--spacing {spacing} starts at t = T-1"):
            TransmissionSystem(epsilon).sampling_process(8, spacing)
        for prediction in ("v", "x0"):
            process = TransmissionSystem(Config(**tiny, prediction=prediction, sample_spacing=spacing).validate()
                                         ).sampling_process(8)
            assert int(process.timestep_map[-1]) == T - 1
    Config(mode="jscc", sample_spacing="trailing").validate()  # mode jscc ignores the diffusion keys

    receiver = Config(mode="joint", conditioning="spatial", prediction="epsilon", learn_sigma=False, num_channels=16,
                      channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[], jscc_num_filters=16,
                      diffusion_steps=100).validate()
    system = TransmissionSystem(receiver)
    checkpoint = save_checkpoint({"config": receiver.to_dict(), "model": system.state_dict(), "step": 0},
                                 tmp_path / "epsilon.pt")
    image = str(sorted((cifar_root / "cifar_test").iterdir())[0])
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(cifar_root / "cifar_test"), "--snr", "10",
                 "--limit", "2", "--steps", "2", "--spacing", "trailing", "--no-fid", "--no-realism", "--no-progress",
                 "--out", str(tmp_path / "eval")]) == 2
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert "--spacing trailing starts at t = T-1" in error
    assert main(["transmit", "--checkpoint", str(checkpoint), "--snr", "10", "--steps", "2", "--spacing",
                 "quadratic", image, str(tmp_path / "rx.png")]) == 2
    assert "--spacing quadratic starts at t = T-1" in capsys.readouterr().err
    assert main(["transmit", "--checkpoint", str(checkpoint), "--snr", "10", "--steps", "2", "--spacing", "leading",
                 image, str(tmp_path / "rx.png")]) == 0


def test_ddpm_sampler_draws_with_the_learned_variance(cifar_root, tmp_path, capsys) -> None:
    """``--sampler ddpm``: ancestral sampling whose noise is the model's learned σ, through the system
    (the residual clamp included) and the CLI; DDIM's --eta does not apply to it."""
    from diffjscc.cli import main
    from diffjscc.runtime.checkpoint import save_checkpoint

    assert resolve_sampler("ddpm", 8) == resolve_sampler("ddpm", 50) == "ddpm"
    assert resolve_sampler("ddpm", 8, start="inversion") == "ddim"  # inversion's mirror is deterministic
    with pytest.raises(UserError, match="DDPM draws with the model's own variance"):
        resolve_sampler("ddpm", 8, eta=0.5)
    cfg = Config(mode="joint", conditioning="residual", prediction="v", learn_sigma=True, num_channels=16,
                 channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[], jscc_num_filters=16,
                 diffusion_steps=100, sample_spacing="trailing").validate()
    torch.manual_seed(0)
    system = TransmissionSystem(cfg).eval()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    received = system.transmit(images, snr_db=5.0, generator=torch.Generator().manual_seed(2))

    def receive(seed: int) -> torch.Tensor:
        return system.receive(received, steps=4, sampler="ddpm", generator=torch.Generator().manual_seed(seed))

    base = system.residual_base(received)
    process = system.sampling_process(4)
    generator = torch.Generator().manual_seed(3)
    x_T = torch.randn((2, 3, 32, 32), generator=generator)
    direct = ddpm_sample(process, system.denoiser(received, base=base), x_T, clip=system.clip_range(base),
                         generator=generator)
    assert torch.equal(receive(3), system.from_residual(direct, base).clamp(-1, 1))
    assert not torch.equal(receive(3), receive(4))
    # the learned σ is what it draws with (DDIM ignores it): other v channels, other samples from the same noise
    network = system.denoiser(received, base=base)

    def with_variance(v: float):
        return lambda x, t: torch.cat([network(x, t)[:, :3], torch.full_like(x, v)], dim=1)

    def run(sampler, v: float) -> torch.Tensor:
        return sampler(process, with_variance(v), x_T, clip=system.clip_range(base),
                       generator=torch.Generator().manual_seed(5))

    assert torch.equal(run(ddim_sample, -1.0), run(ddim_sample, 1.0))
    spread = [(run(ddpm_sample, v) - run(ddim_sample, v)).std().item() for v in (-1.0, 1.0)]
    assert spread[0] < spread[1]  # v = 1: σ² = β_t, the larger of the two ends
    checkpoint = save_checkpoint({"config": cfg.to_dict(), "model": system.state_dict(), "step": 0},
                                 tmp_path / "receiver.pt")
    image = str(sorted((cifar_root / "cifar_test").iterdir())[0])
    capsys.readouterr()
    assert main(["transmit", "--checkpoint", str(checkpoint), "--snr", "5", "--steps", "4", "--sampler", "ddpm",
                 image, str(tmp_path / "rx.png")]) == 0
    assert "4 steps of ddpm" in capsys.readouterr().out
