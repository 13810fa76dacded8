"""``python -m bench train-step`` times the trainer's own step, not a copy of it.

From the same seed and the same batches, steps run through the benchmark's set-up
(:func:`bench.train_step.build_setup`, :func:`~bench.train_step.run_step`) leave bit-identical
weights, EMA weights and AdamW state to those :meth:`Trainer.train` leaves. Two steps, so that
the annealed learning rate and the step-seeded draws (t, ε, SNR, channel noise) of a later step
are covered too; dropout is on, so that the global RNG must match as well. A control run that
gives the same batches other step indices (hence other draws and learning rates) must differ:
a benchmark with its own loop or its own draws would fail the comparison.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bench.train_step import StepSetup, Variant, build_setup, run_step
from diffjscc.config import Config, load_config
from diffjscc.training.trainer import EpochBatchSampler, Trainer

MICRO = ["num_channels=16", "channel_mult=[1,2]", "attention_resolutions=[16]", "num_res_blocks=1",
         "jscc_num_filters=16", "diffusion_steps=100", "batch_size=8", "log_interval=1", "device=cpu",
         "dropout=0.1", "seed=5"]
STEPS = 2
CPU = torch.device("cpu")


def _config(cifar_root: Path, log_dir: Path, overrides: tuple[str, ...]) -> Config:
    return load_config("tiny", [f"data_dir={cifar_root / 'cifar_train'}", f"log_dir={log_dir}",
                                f"total_steps={STEPS}", f"save_interval={STEPS}", "lr_anneal=true", *MICRO,
                                *overrides])


def _trainer_batches(trainer: Trainer, count: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """The trainer's first ``count`` batches, read as its DataLoader reads them."""
    cfg = trainer.cfg
    order = iter(EpochBatchSampler(len(trainer.dataset), cfg.batch_size, cfg.seed))
    batches = []
    for _ in range(count):
        items = [trainer.dataset[i] for i in next(order)]
        labels = torch.tensor([label for _, label in items]) if cfg.class_cond else None
        batches.append((torch.stack([image for image, _ in items]), labels))
    return batches


def _bench_steps(cfg: Config, batches: list, step_indices: list[int]) -> StepSetup:
    setup = build_setup(cfg, Variant.trainer_default(cfg, CPU), CPU, batches[0])
    for (images, labels), step in zip(batches, step_indices):
        setup = replace(setup, images=images, labels=labels)
        assert not run_step(setup, step).skipped
    return setup


def _states(source) -> dict[str, dict[str, torch.Tensor]]:
    """Weights, EMA weights and AdamW moments of a Trainer or a TrainStep."""
    optimizer = source.optimizer.state_dict()["state"]
    moments = {f"{index}.{name}": value for index, state in optimizer.items() for name, value in state.items()}
    return {"weights": source.system.state_dict(), "ema": source.ema.module.state_dict(), "adamw": moments}


@pytest.mark.parametrize("overrides", [
    ("mode=joint",),
    ("mode=jscc",),
    ("mode=joint", "class_cond=true", "snr_range=[0,20]", "channel=rayleigh_block"),
], ids=["joint", "jscc", "joint-class-rayleigh-snr-range"])
def test_bench_steps_leave_the_weights_trainer_steps_leave(cifar_root: Path, tmp_path: Path,
                                                           overrides: tuple[str, ...]) -> None:
    cfg = _config(cifar_root, tmp_path / "run", overrides)
    trainer = Trainer(cfg, progress=False)
    initial = {key: value.clone() for key, value in trainer.system.state_dict().items()}
    batches = _trainer_batches(trainer, STEPS)
    assert trainer.train().step == STEPS

    bench = _bench_steps(cfg, batches, list(range(STEPS))).train_step
    trained, benched = _states(trainer), _states(bench)
    for part in trained:
        assert trained[part].keys() == benched[part].keys() and trained[part], part
        for key, value in trained[part].items():
            assert torch.equal(value, benched[part][key]), (part, key)
    assert int(bench.ema.n_averaged) == int(trainer.ema.n_averaged) == STEPS
    assert any(not torch.equal(initial[key], value) for key, value in trained["weights"].items())

    # The control: the same batches as other steps (other draws and learning rates) train otherwise.
    control = _states(_bench_steps(cfg, batches, list(reversed(range(STEPS)))).train_step)
    assert any(not torch.equal(value, control["weights"][key]) for key, value in trained["weights"].items())


def test_variants_without_a_config_key_are_applied_after_the_trainers_set_up() -> None:
    cfg = load_config("tiny", MICRO)
    setup = build_setup(cfg, Variant(adamw="foreach", classic_attention=True), CPU)
    optimizer = setup.train_step.optimizer
    assert optimizer.defaults["foreach"] and not optimizer.defaults["fused"]
    assert optimizer.param_groups[0]["weight_decay"] == cfg.weight_decay
    assert [p for group in optimizer.param_groups for p in group["params"]] == list(
        setup.train_step.system.trainable_parameters())
    processors = {type(m.processor).__name__ for m in setup.train_step.system.modules() if hasattr(m, "processor")}
    assert processors == {"AttnProcessor"}
    assert setup.images.shape == (cfg.batch_size, 3, cfg.image_size, cfg.image_size)
    result = run_step(setup)
    assert not result.skipped and torch.isfinite(result.grad_norm)
    assert optimizer.state  # the rebuilt optimizer is the one the step uses

    fast = build_setup(cfg, Variant.trainer_default(cfg, CPU), CPU).train_step
    assert fast.cfg.fused_adamw and fast.optimizer.defaults["fused"]
    eager = build_setup(cfg, Variant(), CPU).train_step
    assert not (eager.cfg.fused_adamw or eager.cfg.channels_last or eager.cfg.bf16 == "true" or eager.cfg.compile)
