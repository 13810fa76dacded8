"""The fast training paths give the results of eager fp32, within stated tolerances.

* bf16 autocast: the training loss on a fixed batch of real images agrees with fp32 within 1 %
  relative (bf16 keeps 8 significant bits, a unit roundoff of 2^-8 ≈ 0.4 % per operation; the
  loss, a mean over many elements, averages those errors down). bf16 stays opt-in (``bf16``):
  without native bf16 the CPU emulates it, many times slower than fp32.
* fused AdamW (the trainer's default, ``fused_adamw: true``) is torch's default AdamW update:
  on the same gradients, weights within 1e-6 (only the floating-point order differs). Through a
  few training steps the losses stay equal within 1e-5 relative and the weights within one
  learning-rate step: AdamW divides by sqrt(v), which turns the rounding noise of gradients that
  are zero in exact arithmetic (a conv bias just before a GroupNorm) into updates of size ~lr.
  The state_dict keys are the same, so checkpoints are interchangeable.
* channels_last (opt-in) gives the same losses within 1e-4 relative.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffjscc.config import load_config
from diffjscc.data import ImageFolderDataset
from diffjscc.system import TransmissionSystem
from diffjscc.training.trainer import Trainer, training_loss

BF16_LOSS_RTOL = 1e-2
FUSED_UPDATE_ATOL = 1e-6
FUSED_LOSS_RTOL = 1e-5
CHANNELS_LAST_LOSS_RTOL = 1e-4


def _batch(folder: Path, count: int = 16) -> torch.Tensor:
    return ImageFolderDataset(folder, image_size=32).first(count)[0]


@pytest.mark.parametrize("mode", ["joint", "jscc"])
def test_bf16_autocast_loss_agrees_with_fp32(cifar_root: Path, mode: str) -> None:
    images = _batch(cifar_root / "cifar_test")
    cfg = load_config("tiny", ["device=cpu", f"mode={mode}"])
    torch.manual_seed(0)
    system = TransmissionSystem(cfg).train()

    def loss(bf16: bool) -> dict[str, float]:
        torch.manual_seed(1)  # the same dropout masks (none in tiny, but keep it exact)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), torch.no_grad():
            terms = training_loss(system, images, None, torch.Generator().manual_seed(7))
        return {key: float(value) for key, value in terms.items()}

    fp32, bf16 = loss(False), loss(True)
    assert fp32.keys() == bf16.keys()
    for key in fp32:
        assert bf16[key] == pytest.approx(fp32[key], rel=BF16_LOSS_RTOL), key
    if mode == "joint":
        assert bf16["loss"] != fp32["loss"]  # autocast did run the UNet in bf16


def _train(cifar_root: Path, log_dir: Path, overrides: list[str], steps: int = 3) -> Trainer:
    cfg = load_config("tiny", ["device=cpu", f"data_dir={cifar_root / 'cifar_train'}", f"log_dir={log_dir}",
                               f"total_steps={steps}", f"save_interval={steps}", "batch_size=8",
                               "log_interval=1", *overrides])
    trainer = Trainer(cfg, progress=False)
    trainer.train()
    return trainer


def test_fused_adamw_update_equals_the_default_adamw_update() -> None:
    torch.manual_seed(0)
    initial = [torch.randn(64, 32, 3, 3), torch.randn(64) * 0.01, torch.zeros(5)]

    def run(fused: bool | None) -> list[torch.Tensor]:
        params = [torch.nn.Parameter(p.clone()) for p in initial]
        optimizer = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.01, fused=fused)
        generator = torch.Generator().manual_seed(1)
        for _ in range(5):
            for p in params:
                p.grad = torch.randn(p.shape, generator=generator) * 1e-3
            optimizer.step()
        return [p.detach() for p in params]

    for fused, plain, start in zip(run(True), run(None), initial):
        torch.testing.assert_close(fused, plain, rtol=0, atol=FUSED_UPDATE_ATOL)
        assert not torch.equal(fused, start)


def test_fused_adamw_is_the_trainer_default_and_trains_as_the_default_adamw(cifar_root: Path,
                                                                           tmp_path: Path) -> None:
    fused = _train(cifar_root, tmp_path / "fused", [])
    plain = _train(cifar_root, tmp_path / "plain", ["fused_adamw=false"])
    assert fused.cfg.fused_adamw and fused.optimizer.param_groups[0]["fused"]
    assert not plain.optimizer.param_groups[0]["fused"]
    logs = [_losses(run) for run in (fused, plain)]
    assert len(logs[0]) == 3 and logs[0] == pytest.approx(logs[1], rel=FUSED_LOSS_RTOL)
    fused_state, plain_state = fused.system.state_dict(), plain.system.state_dict()
    assert fused_state.keys() == plain_state.keys()
    assert fused.optimizer.state_dict()["state"].keys() == plain.optimizer.state_dict()["state"].keys()
    for key, value in fused_state.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, plain_state[key], rtol=0, atol=fused.cfg.lr, msg=key)


def _losses(trainer: Trainer) -> list[float]:
    return [json.loads(line)["loss"] for line in (trainer.log_dir / "metrics.jsonl").read_text().splitlines()]


def test_channels_last_gives_the_same_losses_and_state_dict_keys(cifar_root: Path, tmp_path: Path) -> None:
    nhwc = _train(cifar_root, tmp_path / "nhwc", ["channels_last=true"], steps=2)
    nchw = _train(cifar_root, tmp_path / "nchw", [], steps=2)
    weight = nhwc.system.unet.unet.conv_in.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert nhwc.system.state_dict().keys() == nchw.system.state_dict().keys()
    logs = [_losses(run) for run in (nhwc, nchw)]
    assert len(logs[0]) == 2 and logs[0] == pytest.approx(logs[1], rel=CHANNELS_LAST_LOSS_RTOL)
