"""Classifier-free guidance on the received symbols and DDIM's η: the perception–distortion knobs
(--guidance, --eta)."""

from __future__ import annotations

import json

import pytest
import torch

from diffjscc.config import Config, load_config
from diffjscc.diffusion.samplers import resolve_sampler
from diffjscc.encoders.snr_attention import SNR_SCALE_DB
from diffjscc.errors import UserError
from diffjscc.runtime.checkpoint import save_checkpoint
from diffjscc.system import TransmissionSystem
from diffjscc.training.trainer import training_loss


def _system(condition_dropout: float = 0.1, **overrides) -> TransmissionSystem:
    """A small untrained residual receiver (random weights: the maths does not need training)."""
    cfg = Config(mode="joint", conditioning="residual", prediction="v", learn_sigma=True, snr_adaptive=True,
                 sample_spacing="trailing", num_channels=16, channel_mult=[1, 2], num_res_blocks=1,
                 attention_resolutions=[], jscc_num_filters=16, diffusion_steps=100,
                 condition_dropout=condition_dropout, **overrides).validate()
    torch.manual_seed(0)
    return TransmissionSystem(cfg).eval()


def _received(system: TransmissionSystem) -> torch.Tensor:
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return system.transmit(images, snr_db=5.0, generator=torch.Generator().manual_seed(2))


def _counting(system: TransmissionSystem) -> list[int]:
    calls = []
    forward = system.unet.forward

    def counted(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    system.unet.forward = counted
    return calls


def test_guidance_at_its_neutral_scale_is_the_unguided_receiver_exactly() -> None:
    system = _system()
    received = _received(system)
    calls = _counting(system)
    unguided = system.receive(received, steps=4, snr_db=5.0, generator=torch.Generator().manual_seed(3))
    assert len(calls) == 4
    neutral = system.receive(received, steps=4, snr_db=5.0, guidance=1.0, generator=torch.Generator().manual_seed(3))
    assert len(calls) == 8  # one network evaluation per step, as without guidance
    assert torch.equal(neutral, unguided)
    guided = system.receive(received, steps=4, snr_db=5.0, guidance=3.0, generator=torch.Generator().manual_seed(3))
    assert len(calls) == 16  # two per step: with and without y
    assert not torch.allclose(guided, unguided, atol=1e-4)


def test_guided_prediction_is_u_plus_w_times_c_minus_u() -> None:
    """The guided output against the two network outputs computed independently: the condition
    dropped zeroes y's embedding and maps (the estimate too) and keeps the SNR."""
    system = _system()
    received = _received(system)
    base = system.residual_base(received, 5.0)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    t = torch.full((3,), 40)
    with torch.no_grad():
        given = system.unet(x, t, latent=received, snr_db=5.0, estimate=base)
        dropped = system.unet.condition(received, None, 5.0, base, keep=torch.zeros(3))
        assert not dropped.maps.any()
        snr_only = system.unet.snr_embedding(torch.full((3, 1), 5.0 / SNR_SCALE_DB))
        assert torch.allclose(dropped.vector, snr_only)
        without = system.unet(x, t, condition=dropped)
        for w in (0.0, 2.5):
            out = system.denoiser(received, snr_db=5.0, base=base, guidance=w)(x, t)
            expected = without[:, :3] + w * (given[:, :3] - without[:, :3])
            assert torch.allclose(out[:, :3], expected, atol=1e-5)
            assert torch.equal(out[:, 3:], given[:, 3:])  # the learned variance: the conditional one's


def test_guidance_needs_a_receiver_trained_with_condition_dropout() -> None:
    system = _system(condition_dropout=0.0)
    received = _received(system)
    with pytest.raises(UserError, match="condition_dropout"):
        system.receive(received, steps=2, snr_db=5.0, guidance=2.0)
    with pytest.raises(UserError, match="finite number >= 0"):
        _system().receive(received, steps=2, snr_db=5.0, guidance=float("nan"))
    system.receive(received, steps=2, snr_db=5.0, guidance=1.0)  # neutral: no dropout needed


def test_condition_dropout_drops_y_for_that_share_of_training_images() -> None:
    system = _system(condition_dropout=0.5).train()
    seen = []
    forward = system.unet.forward
    system.unet.forward = lambda *a, keep=None, **k: (seen.append(keep), forward(*a, keep=keep, **k))[1]
    images = torch.rand(64, 3, 32, 32) * 2 - 1
    training_loss(system, images, None, torch.Generator().manual_seed(0))
    training_loss(system, images, None, torch.Generator().manual_seed(0))
    assert torch.equal(seen[0], seen[1])  # drawn from the step's generator: resumable, rank-independent
    assert set(seen[0].tolist()) == {0.0, 1.0} and 16 <= int(seen[0].sum()) <= 48
    system.cfg.condition_dropout = 0.0
    training_loss(system, images, None, torch.Generator().manual_seed(0))
    assert seen[-1] is None


@pytest.mark.parametrize("overrides, message", [
    (["condition_dropout=1.0"], "must be in \\[0, 1\\)"),
    (["condition_dropout=-0.1"], "must be in \\[0, 1\\)"),
    (["mode=unconditional", "condition_dropout=0.1"], "'unconditional' has none"),
])
def test_bad_condition_dropout_names_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_config("configs/tiny.yaml", overrides)


def test_eta_runs_ddim_and_adds_noise() -> None:
    assert resolve_sampler("auto", 8, eta=0.5) == "ddim"
    assert resolve_sampler("auto", 8, start="inversion", eta=0.5) == "ddim"
    with pytest.raises(UserError, match="DPM-Solver"):
        resolve_sampler("dpm++2m", 8, eta=0.5)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(UserError, match="--eta must be in"):
            resolve_sampler("ddim", 8, eta=bad)
    system = _system()
    received = _received(system)
    def sample(eta: float) -> torch.Tensor:
        return system.receive(received, steps=4, snr_db=5.0, eta=eta, sampler="ddim",
                              generator=torch.Generator().manual_seed(5))

    deterministic, stochastic = sample(0.0), sample(1.0)
    assert torch.equal(sample(1.0), stochastic)  # reproducible from its generator
    assert (stochastic - deterministic).abs().mean() > 1e-3


def test_evaluate_records_eta_and_spacing_and_refuses_guidance_without_dropout(cifar_root, tmp_path, capsys) -> None:
    from diffjscc.cli import main

    data = str(cifar_root / "cifar_test")
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", "diffusion_128", "--data", data, "--snr", "10", "--limit", "4", "--steps", "2",
                 "--eta", "0.5", "--no-fid", "--no-realism", "--out", str(out), "--no-progress"]) == 0
    rows = json.loads((out / "results.json").read_text())["results"]
    diffusion = next(r for r in rows if r["receiver"] == "diffusion")
    assert (diffusion["sampler"], diffusion["eta"], diffusion["guidance"]) == ("ddim", 0.5, 1.0)
    assert diffusion["spacing"] == "trailing"  # the shipped receiver's sample_spacing
    deep = next(r for r in rows if r["receiver"] == "deep_jscc")
    assert deep["eta"] is None and deep["guidance"] is None and deep["spacing"] is None
    capsys.readouterr()
    unguidable = _system(condition_dropout=0.0)  # a receiver trained without condition dropout
    checkpoint = save_checkpoint({"config": unguidable.cfg.to_dict(), "model": unguidable.state_dict(), "step": 0},
                                 tmp_path / "no_dropout.pt")
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", data, "--snr", "10", "--limit", "4",
                 "--steps", "2", "--guidance", "2", "--no-fid", "--no-realism", "--out", str(tmp_path / "guided"),
                 "--no-progress"]) == 2
    (error,) = capsys.readouterr().err.strip().splitlines()  # one line, before any FID/LPIPS note
    assert error.startswith("diffjscc: error:") and "condition_dropout" in error
    assert not (tmp_path / "guided" / "results.json").exists()
    assert main(["evaluate", "--model", "diffusion_128", "--data", data, "--snr", "10", "--limit", "4", "--steps", "2",
                 "--guidance", "2", "--spacing", "quadratic", "--no-fid", "--no-realism", "--out", str(tmp_path / "shipped"),
                 "--no-progress"]) == 0
    guided = next(r for r in json.loads((tmp_path / "shipped" / "results.json").read_text())["results"]
                  if r["receiver"] == "diffusion")
    assert (guided["guidance"], guided["spacing"]) == (2.0, "quadratic")  # the shipped ones can
    assert main(["transmit", "--model", "diffusion_128", "--snr", "10", "--sampler", "dpm++2m", "--eta", "1",
                 str(next((cifar_root / "cifar_test").iterdir())), str(tmp_path / "rx.png")]) == 2
    assert "DPM-Solver" in capsys.readouterr().err
