"""Receiver conditioning (embed / spatial / residual), SNR-adaptive models, receiver CSI and
bandwidth ratios: each trains a few steps on real images and samples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffjscc.cli import main
from diffjscc.config import load_config
from diffjscc.errors import UserError
from diffjscc.system import TransmissionSystem, load_system
from diffjscc.training.trainer import Trainer, training_loss

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
MICRO = ["num_channels=16", "channel_mult=[1,2]", "attention_resolutions=[16]", "num_res_blocks=1",
         "jscc_num_filters=16", "diffusion_steps=100", "sample_steps=2", "batch_size=8",
         "log_interval=1", "device=cpu", "sample_interval=0"]


def _train(cifar_root: Path, log_dir: Path, steps: int, *overrides: str) -> Path:
    cfg = load_config(TINY, [*MICRO, f"data_dir={cifar_root / 'cifar_train'}", f"log_dir={log_dir}",
                             f"total_steps={steps}", f"save_interval={steps}", *overrides])
    result = Trainer(cfg, progress=False).train()
    assert result.step == steps and torch.isfinite(torch.tensor(result.final_loss))
    return result.last_checkpoint


@pytest.fixture(scope="module")
def jscc_checkpoints(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Deep JSCC runs to freeze: a plain one and an SNR-adaptive one."""
    root = tmp_path_factory.mktemp("jscc")
    return {"plain": _train(cifar_root, root / "plain", 3, "mode=jscc"),
            "adaptive": _train(cifar_root, root / "adaptive", 3, "mode=jscc", "snr_adaptive=true",
                               "snr_range=[0,20]")}


def _test_images(cifar_root: Path, count: int = 4) -> torch.Tensor:
    from diffjscc.data import load_image_tensor

    files = sorted((cifar_root / "cifar_test").glob("*.png"))[:count]
    return torch.stack([load_image_tensor(f) for f in files])


@pytest.mark.parametrize("mode", ["joint", "frozen"])
@pytest.mark.parametrize("conditioning", ["embed", "spatial", "residual"])
def test_each_conditioning_trains_and_samples(cifar_root: Path, tmp_path: Path, jscc_checkpoints: dict,
                                              mode: str, conditioning: str) -> None:
    extra = [f"jscc_encoder_path={jscc_checkpoints['plain']}"] if mode == "frozen" else []
    ckpt = _train(cifar_root, tmp_path / "run", 2, f"mode={mode}", f"conditioning={conditioning}", *extra)
    system = load_system(str(ckpt))
    assert (system.decoder is not None) == (mode == "frozen" or conditioning == "residual")
    images = _test_images(cifar_root)
    received = system.transmit(images, snr_db=10.0, generator=torch.Generator().manual_seed(0))
    out = system.receive(received, steps=2, generator=torch.Generator().manual_seed(1), snr_db=10.0)
    assert out.shape == images.shape and torch.isfinite(out).all() and out.abs().max() <= 1
    # the receiver reads the received latent: the same noise with another image's latent changes
    # the output (by 0.02-0.09 at most after 2 steps), the same latent reproduces it exactly
    other = system.transmit(images.flip(0), snr_db=10.0, generator=torch.Generator().manual_seed(0))
    moved = system.receive(other, steps=2, generator=torch.Generator().manual_seed(1), snr_db=10.0)
    again = system.receive(received, steps=2, generator=torch.Generator().manual_seed(1), snr_db=10.0)
    assert torch.equal(again, out) and (moved - out).abs().max() > 1e-3


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_x0_and_v_prediction_train_sample_and_resume(cifar_root: Path, tmp_path: Path, jscc_checkpoints: dict,
                                                     prediction: str) -> None:
    """A residual receiver predicting x0 or v trains, samples, inverts, and resumes only under
    the same parametrisation (the weights mean something else under another one)."""
    overrides = ["mode=frozen", "conditioning=residual", f"jscc_encoder_path={jscc_checkpoints['plain']}",
                 f"prediction={prediction}"]
    ckpt = _train(cifar_root, tmp_path / "run", 2, *overrides)
    system = load_system(str(ckpt))
    assert system.diffusion.prediction == prediction
    images = _test_images(cifar_root)
    received = system.transmit(images, snr_db=10.0, generator=torch.Generator().manual_seed(0))
    for start in ("gaussian", "inversion"):
        out = system.receive(received, steps=2, start=start, source=images, generator=torch.Generator().manual_seed(1))
        assert out.shape == images.shape and torch.isfinite(out).all() and out.abs().max() <= 1
    cfg = load_config(TINY, [*MICRO, f"data_dir={cifar_root / 'cifar_train'}", f"log_dir={tmp_path / 'run'}",
                             "total_steps=3", *overrides[:-1]])
    with pytest.raises(UserError, match=f"prediction='{prediction}'"):
        Trainer(cfg, resume="auto", progress=False)


def test_checkpoints_from_before_the_prediction_key_load_and_resume(cifar_root: Path, tmp_path: Path) -> None:
    """A checkpoint whose saved config has no ``prediction`` was trained with ε: it loads as ε and
    resumes under the default config."""
    from diffjscc.runtime.checkpoint import load_checkpoint, save_checkpoint

    ckpt = _train(cifar_root, tmp_path / "run", 2, "mode=joint")
    payload = load_checkpoint(ckpt)
    del payload["config"]["prediction"]
    save_checkpoint(payload, ckpt)
    assert load_system(str(ckpt)).diffusion.prediction == "epsilon"
    cfg = load_config(TINY, [*MICRO, f"data_dir={cifar_root / 'cifar_train'}", f"log_dir={tmp_path / 'run'}",
                             "total_steps=3", "save_interval=3", "mode=joint"])
    assert Trainer(cfg, resume="auto", progress=False).train().step == 3


def test_spatial_conditioning_sees_where_the_symbols_are() -> None:
    """A spatial receiver's output near a latent position depends on that position's symbols
    through the lifted maps, which an embed receiver only has as one global vector."""
    cfg = load_config(TINY, [*MICRO, "mode=joint", "conditioning=spatial"])
    unet = TransmissionSystem(cfg).unet.eval()
    latent = torch.randn(1, cfg.c_out, cfg.latent_size, cfg.latent_size)
    moved = latent.clone()
    moved[..., 0, 0] += 3.0  # change the symbols of the top-left latent position only
    maps, maps_moved = unet.condition(latent).maps, unet.condition(moved).maps
    assert maps.shape == (1, cfg.num_channels, cfg.image_size, cfg.image_size)
    changed = (maps - maps_moved).abs().sum(dim=1)[0]
    assert changed[:4, :4].min() > 0 and changed[16:, 16:].max() == 0  # local, like the encoder's field


def _zero_network_ddim(alpha_bars: torch.Tensor, x_T: torch.Tensor, prediction: str, low: torch.Tensor,
                       high: torch.Tensor) -> torch.Tensor:
    """DDIM (η = 0) written out for a network whose output is 0, pixel by pixel in float64: x̂_0
    is what a zero ε, x_0 or v implies at x_t, clamped to [low, high]; ε is recomputed from it."""
    x, low, high = x_T.double(), low.double(), high.double()
    bars = [float(a) for a in alpha_bars.flip(0)] + [1.0]  # ᾱ from the first sampling step down to ᾱ_{−1} = 1
    for a, a_prev in zip(bars[:-1], bars[1:]):
        x0 = {"epsilon": x / a ** 0.5, "x0": torch.zeros_like(x), "v": a ** 0.5 * x}[prediction]
        x0 = torch.minimum(torch.maximum(x0, low), high)
        eps = (x - a ** 0.5 * x0) / (1 - a) ** 0.5
        x = a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps
    return x


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
def test_residual_receiver_is_built_around_the_deep_jscc_estimate(cifar_root: Path, jscc_checkpoints: dict,
                                                                  prediction: str) -> None:
    """With its output layer zeroed, a residual receiver returns exactly what DDIM gives for a zero
    network around the Deep JSCC estimate: x̂ itself for x0-prediction, x̂ + s·clamp(x_T/√ᾱ_T)
    for ε, and the written-out recursion for v."""
    cfg = load_config(TINY, [*MICRO, "mode=frozen", "conditioning=residual", f"prediction={prediction}",
                             f"jscc_encoder_path={jscc_checkpoints['plain']}"])
    system = TransmissionSystem(cfg)
    from diffjscc.system import load_jscc_into

    load_jscc_into(system, str(jscc_checkpoints["plain"]))
    system.eval()
    images = _test_images(cifar_root)
    received = system.transmit(images, snr_db=10.0, generator=torch.Generator().manual_seed(0))
    base = system.residual_base(received)
    assert torch.allclose(base, system.decode(received))
    residual = system.to_residual(images, base)
    assert torch.allclose(system.from_residual(residual, base), images, atol=1e-6)
    low, high = system.clip_range(base)
    assert torch.allclose(system.from_residual(low, base), -torch.ones_like(base), atol=1e-6)
    assert torch.allclose(system.from_residual(high, base), torch.ones_like(base), atol=1e-6)
    # the diffusion target is the scaled residual: training sees (x − x̂)/s, not x
    with torch.no_grad():
        system.unet.unet.conv_out.weight.zero_()
        system.unet.unet.conv_out.bias.zero_()
    steps = 3
    out = system.receive(received, steps=steps, sampler="ddim", generator=torch.Generator().manual_seed(1))
    x_T = torch.randn(images.shape, generator=torch.Generator().manual_seed(1))  # the receiver's first draw
    alpha_bars = system.sampling_process(steps).alphas_cumprod
    generated = _zero_network_ddim(alpha_bars, x_T, prediction, low, high)
    expected = (base.double() + cfg.residual_scale * generated).clamp(-1, 1).float()
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=0)
    if prediction == "x0":
        torch.testing.assert_close(out, base.clamp(-1, 1), atol=1e-6, rtol=0)
    if prediction == "epsilon":
        a_T = float(alpha_bars[-1])
        closed_form = base + cfg.residual_scale * torch.minimum(torch.maximum(x_T / a_T ** 0.5, low), high)
        torch.testing.assert_close(out, closed_form.clamp(-1, 1), atol=2e-5, rtol=0)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize("conditioning", ["embed", "residual"])
def test_oracle_inversion_reconstructs_its_source(cifar_root: Path, jscc_checkpoints: dict, prediction: str,
                                                  conditioning: str) -> None:
    """The oracle receiver inverts the source and samples it back. For a network whose output is 0
    the DDIM round trip is exact for ε-prediction (max error ≤ 1e-5) and converges with the number
    of steps for v (≤ 5e-3 at 50 steps, where a Gaussian start lands far away). A trained network
    reconstructs only as well as its ε̂ is smooth in x and t; this pins the plumbing."""
    from diffjscc.receivers import RECEIVERS, ReceiveContext, receive
    from diffjscc.system import load_jscc_into

    mode = ["mode=frozen", f"jscc_encoder_path={jscc_checkpoints['plain']}"] if conditioning == "residual" else []
    cfg = load_config(TINY, [*MICRO, "mode=joint", f"conditioning={conditioning}", f"prediction={prediction}", *mode])
    system = TransmissionSystem(cfg)
    if conditioning == "residual":
        load_jscc_into(system, str(jscc_checkpoints["plain"]))
    system.eval()
    with torch.no_grad():
        system.unet.unet.conv_out.weight.zero_()
        system.unet.unet.conv_out.bias.zero_()
    images = _test_images(cifar_root)
    received = system.transmit(images, snr_db=10.0, generator=torch.Generator().manual_seed(0))
    errors = {}
    for steps in (5, 50):
        context = ReceiveContext(snr_db=10.0, steps=steps, source=images, generator=torch.Generator().manual_seed(1))
        out = receive(system, RECEIVERS["diffusion_inversion"], received, context)[0]
        errors[steps] = (out - images).abs().max().item()
    gaussian = system.receive(received, steps=50, generator=torch.Generator().manual_seed(1))
    if prediction == "epsilon":
        assert errors[5] < 1e-5 and errors[50] < 1e-5, errors
    else:
        assert errors[50] < 5e-3 and errors[50] < errors[5], errors
    assert (gaussian - images).abs().max() > 0.5


def test_snr_adaptive_models_use_the_snr(cifar_root: Path, jscc_checkpoints: dict) -> None:
    system = load_system(str(jscc_checkpoints["adaptive"]))
    assert set(system.encoder.state_dict()) > {k for k in system.encoder.state_dict() if k.startswith("net.")}
    images = _test_images(cifar_root)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731 - the same channel draws each time
    with torch.no_grad():
        assert not torch.allclose(system.encoder(images, 0.0), system.encoder(images, 20.0))
        received = system.transmit(images, snr_db=10.0, generator=g())
        assert not torch.allclose(system.decode(received, 0.0), system.decode(received, 20.0))
        per_image = torch.tensor([0.0, 5.0, 10.0, 20.0])
        assert system.decode(system.transmit(images, snr_db=per_image, generator=g()), per_image).shape \
            == images.shape
    with pytest.raises(ValueError, match="SNR-adaptive"):
        system.decode(received)
    plain = load_system(str(jscc_checkpoints["plain"]))
    assert all(k.startswith("net.") for k in plain.encoder.state_dict())  # old checkpoints still load


def test_snr_adaptive_diffusion_trains_on_a_frozen_adaptive_encoder(cifar_root: Path, tmp_path: Path,
                                                                     jscc_checkpoints: dict) -> None:
    ckpt = _train(cifar_root, tmp_path / "run", 2, "mode=frozen", "conditioning=residual", "snr_adaptive=true",
                  "snr_range=[0,20]", f"jscc_encoder_path={jscc_checkpoints['adaptive']}")
    system = load_system(str(ckpt))
    assert system.unet.snr_embedding is not None
    images = _test_images(cifar_root)
    received = system.transmit(images, snr_db=3.0, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(system.receive(received, steps=2, snr_db=3.0)).all()
    # a frozen encoder must match: an adaptive diffusion run cannot freeze a plain Deep JSCC
    with pytest.raises(UserError, match="snr_adaptive"):
        _train(cifar_root, tmp_path / "bad", 1, "mode=frozen", "snr_adaptive=true",
               f"jscc_encoder_path={jscc_checkpoints['plain']}")


@pytest.mark.parametrize("channel", ["rayleigh_block", "rayleigh_fast"])
@pytest.mark.parametrize("csi", [True, False])
def test_fading_channels_train_with_and_without_csi(cifar_root: Path, tmp_path: Path, channel: str,
                                                    csi: bool) -> None:
    ckpt = _train(cifar_root, tmp_path / "run", 2, "mode=joint", "conditioning=spatial", f"channel={channel}",
                  f"csi={str(csi).lower()}", "snr_range=[0,20]")
    system = load_system(str(ckpt))
    assert system.channel.csi is csi and system.channel.kind == channel
    out = system.receive(system.transmit(_test_images(cifar_root), snr_db=5.0), steps=2)
    assert torch.isfinite(out).all()


def test_bandwidth_ratios_beyond_one_sixth_through_the_cli(cifar_root: Path, tmp_path: Path) -> None:
    """k/n = 1/12 and 1/24 by config (c_out), evaluated together: rows carry their k/n."""
    ckpts = [_train(cifar_root, tmp_path / f"c{c}", 2, "mode=jscc", f"c_out={c}", f"latent_dim={c * 64}")
             for c in (4, 2)]
    out = tmp_path / "eval"
    argv = ["evaluate", "--data", str(cifar_root / "cifar_test"), "--snr", "0,10", "--limit", "8", "--no-fid",
            "--out", str(out)]
    for ckpt in ckpts:
        argv += ["--checkpoint", str(ckpt)]
    assert main(argv) == 0
    import json

    rows = json.loads((out / "results.json").read_text())["results"]
    assert sorted({round(r["k_over_n"], 5) for r in rows}) == [round(1 / 24, 5), round(1 / 12, 5)]
    assert main(["plot", str(out / "results.json"), "--out", str(tmp_path / "curves.png")]) == 0


@pytest.mark.parametrize("overrides, message", [
    (["mode=unconditional", "conditioning=residual"], "conditioning"),
    (["mode=joint", "encoder=half_unet", "conditioning=residual"], "residual"),
    (["mode=unconditional", "snr_adaptive=true"], "snr_adaptive"),
    (["mode=joint", "encoder=half_unet", "snr_adaptive=true"], "snr_feedback"),
    (["conditioning=film"], "conditioning"),
    (["residual_scale=0"], "residual_scale"),
    (["channel=sionna_tdl", "tdl_model=Z"], "tdl_model"),
])
def test_bad_conditioning_configs_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_config(TINY, overrides)


def test_a_receiver_config_also_trains_its_deep_jscc_base() -> None:
    """cifar10.yaml's two stages: mode jscc ignores the receiver keys (conditioning, condition_dropout)."""
    cfg = load_config("configs/cifar10.yaml", ["mode=jscc"])
    assert (cfg.conditioning, cfg.condition_dropout) == ("residual", 0.1)
    system = TransmissionSystem(load_config(TINY, [*MICRO, "mode=jscc", "conditioning=residual",
                                                   "condition_dropout=0.1"]))
    assert system.unet is None and system.decoder is not None


def test_training_loss_of_joint_residual_trains_the_decoder_too() -> None:
    cfg = load_config(TINY, [*MICRO, "mode=joint", "conditioning=residual"])
    system = TransmissionSystem(cfg).train()
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    terms = training_loss(system, images, None, torch.Generator().manual_seed(0))
    assert set(terms) >= {"loss", "mse", "vlb", "jscc_mse"}
    terms["loss"].backward()
    assert all(p.grad is not None for p in system.decoder.parameters())
    assert system.encoder.net[0].weight.grad.abs().sum() > 0


def test_a_bf16_model_samples_under_bf16_autocast() -> None:
    """Sampling uses the precision the model trained with: a ``bf16`` model's network runs under
    autocast (so its output differs from fp32 by bf16 rounding, not more), returned as float32."""
    torch.manual_seed(0)
    systems = {}
    for bf16 in (False, True):
        cfg = load_config(TINY, [*MICRO, "mode=joint", f"bf16={str(bf16).lower()}"])
        systems[bf16] = TransmissionSystem(cfg).eval()
    with torch.no_grad():
        torch.nn.init.normal_(systems[False].unet.unet.conv_out.weight, std=0.05)  # a non-zero output
    systems[True].load_state_dict(systems[False].state_dict())
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    received = systems[False].transmit(images, snr_db=10.0, generator=torch.Generator().manual_seed(0))
    x, t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([10, 90])
    with torch.no_grad():
        full, half = (systems[b].denoiser(received)(x, t) for b in (False, True))
    assert half.dtype == torch.float32 and not torch.equal(full, half)
    assert (full - half).abs().max() <= 0.05 * full.abs().max()


def test_init_from_starts_a_further_stage_from_a_receivers_weights(cifar_root: Path, tmp_path: Path,
                                                                   jscc_checkpoints: dict) -> None:
    """``init_from``: the trained weights and the EMA copy start from the checkpoint's EMA weights,
    the frozen Deep JSCC parts from ``jscc_encoder_path`` (not the checkpoint's); AdamW starts
    afresh; another architecture is a one-line refusal naming the key."""
    from diffjscc.runtime.checkpoint import load_checkpoint, save_checkpoint
    from diffjscc.training.trainer import TrainStep

    frozen = ["mode=frozen", "conditioning=residual", f"jscc_encoder_path={jscc_checkpoints['plain']}"]
    payload = load_checkpoint(_train(cifar_root, tmp_path / "first", 2, *frozen))
    ema = payload["ema"]
    # a copy whose frozen encoder is off: init_from must not take it over jscc_encoder_path's
    ema_moved = {k: v + 1 if k.startswith("encoder.") and v.is_floating_point() else v for k, v in ema.items()}
    save_checkpoint({**payload, "ema": ema_moved}, tmp_path / "moved.pt")

    def set_up(*overrides: str) -> TrainStep:
        cfg = load_config(TINY, [*MICRO, f"data_dir={cifar_root / 'cifar_train'}", f"log_dir={tmp_path / 'second'}",
                                 "seed=3", *frozen, *overrides])
        return TrainStep(cfg, torch.device("cpu"))

    second = set_up(f"init_from={tmp_path / 'moved.pt'}")
    for weights in (second.system.state_dict(), second.ema.module.state_dict()):
        assert weights.keys() == ema.keys()
        for key, value in weights.items():
            assert torch.equal(value, ema[key]), key  # the UNet from the EMA, the encoder not from the copy
    assert not second.optimizer.state
    assert any(not torch.equal(ema[key], value) for key, value in set_up().system.state_dict().items())

    with pytest.raises(UserError, match="num_res_blocks=1.*num_res_blocks=2"):
        set_up(f"init_from={tmp_path / 'moved.pt'}", "num_res_blocks=2")
    with pytest.raises(UserError, match="mode='jscc'"):
        set_up(f"init_from={jscc_checkpoints['plain']}")
