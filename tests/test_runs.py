"""``train_or_reuse``: the demo's and the benchmarks' one rule for a run folder (train, finish a
killed run, reuse a finished one, refuse one of other settings), on a micro Deep JSCC model."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from diffjscc.config import ARCHITECTURE_KEYS, Config, load_config
from diffjscc.errors import UserError
from diffjscc.runtime.checkpoint import list_checkpoints, load_checkpoint
from diffjscc.training import runs
from diffjscc.training.runs import BOOKKEEPING_KEYS, SETTINGS_KEYS, train_or_reuse
from diffjscc.training.trainer import TrainResult

STEPS = 4


def _config(cifar_root: Path, log_dir: Path, *overrides: str) -> Config:
    return load_config("tiny", ["mode=jscc", "jscc_num_filters=16", "batch_size=4", f"total_steps={STEPS}",
                                "save_interval=2", "log_interval=1", "device=cpu",
                                f"data_dir={cifar_root / 'cifar_train'}", f"log_dir={log_dir}", *overrides])


@pytest.fixture(scope="module")
def finished(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> runs.TrainedRun:
    """A finished 4-step run, checkpoints at steps 2 and 4."""
    log_dir = tmp_path_factory.mktemp("finished") / "run"
    return train_or_reuse(_config(cifar_root, log_dir))


def _snapshot(log_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(log_dir.iterdir()) if p.is_file()}


def test_a_fresh_folder_is_trained_to_total_steps(finished: runs.TrainedRun) -> None:
    assert not finished.reused and finished.step == STEPS and finished.seconds > 0
    assert finished.checkpoint.name == f"ckpt_{STEPS:07d}.pt"
    assert load_checkpoint(finished.checkpoint)["step"] == STEPS


def test_a_finished_run_is_reused_across_bookkeeping_keys_without_training(
        finished: runs.TrainedRun, cifar_root: Path, monkeypatch, capsys) -> None:
    log_dir = finished.checkpoint.parent
    before = _snapshot(log_dir)

    class NoTrainer:
        def __init__(self, *args, **kwargs) -> None:
            raise AssertionError("a finished run must not be trained again")

    monkeypatch.setattr(runs, "Trainer", NoTrainer)
    again = train_or_reuse(_config(cifar_root, log_dir, "log_interval=3", "save_interval=4", "keep_checkpoints=1",
                                   "sample_interval=2", f"test_dir={cifar_root / 'cifar_test'}", "num_workers=1",
                                   "fused_adamw=false", "channels_last=true"))
    assert again.reused and again.checkpoint == finished.checkpoint and again.step == STEPS
    assert _snapshot(log_dir) == before  # nothing was rewritten, not even config.yaml
    assert "reusing the finished run" in capsys.readouterr().out


@pytest.mark.parametrize("override", ["lr=1e-3", f"total_steps={STEPS + 2}", f"total_steps={STEPS - 2}", "seed=1",
                                      "snr_db=5", "jscc_num_filters=8", "bf16=true"])
def test_a_run_of_other_settings_is_refused_in_one_line(finished: runs.TrainedRun, cifar_root: Path,
                                                        override: str) -> None:
    log_dir = finished.checkpoint.parent
    before = _snapshot(log_dir)
    with pytest.raises(UserError) as err:
        train_or_reuse(_config(cifar_root, log_dir, override))
    message = str(err.value)
    key = override.split("=")[0]
    assert "\n" not in message and "other settings" in message and f"{key}=" in message
    assert str(log_dir) in message
    assert _snapshot(log_dir) == before


def test_a_killed_run_is_finished_to_the_weights_of_an_uninterrupted_one(finished: runs.TrainedRun,
                                                                        cifar_root: Path, tmp_path: Path) -> None:
    killed = tmp_path / "killed"
    shutil.copytree(finished.checkpoint.parent, killed)
    (killed / finished.checkpoint.name).unlink()  # as if killed after the step-2 checkpoint
    assert [p.name for p in list_checkpoints(killed)] == ["ckpt_0000002.pt"]
    resumed = train_or_reuse(_config(cifar_root, killed))
    assert not resumed.reused and resumed.step == STEPS and resumed.checkpoint == killed / finished.checkpoint.name
    ours, theirs = load_checkpoint(resumed.checkpoint), load_checkpoint(finished.checkpoint)
    for part in ("model", "ema"):
        for name, tensor in theirs[part].items():
            assert torch.equal(ours[part][name], tensor), f"{part}.{name}"


def test_a_started_run_without_checkpoints_is_judged_by_its_config_yaml(cifar_root: Path, tmp_path: Path) -> None:
    log_dir = tmp_path / "started"
    log_dir.mkdir()
    saved = _config(cifar_root, log_dir, "lr=1e-3").to_dict()
    (log_dir / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    with pytest.raises(UserError, match=r"config\.yaml has lr=0\.001"):
        train_or_reuse(_config(cifar_root, log_dir))
    (log_dir / "config.yaml").write_text("[not, a, mapping]\n")
    with pytest.raises(UserError, match="not a config mapping"):
        train_or_reuse(_config(cifar_root, log_dir))
    # the same settings (and an older file's retired key): started over and trained
    (log_dir / "config.yaml").write_text(yaml.safe_dump({**saved, "lr": 5e-4, "timestep_respacing": ""}))
    run = train_or_reuse(_config(cifar_root, log_dir))
    assert not run.reused and run.step == STEPS


def test_training_that_writes_no_checkpoint_is_a_user_error(cifar_root: Path, tmp_path: Path, monkeypatch) -> None:
    class SilentTrainer:
        def __init__(self, cfg: Config, **kwargs) -> None:
            self.cfg = cfg

        def train(self) -> TrainResult:
            return TrainResult(self.cfg.total_steps, None, 0.0, float("nan"))

    monkeypatch.setattr(runs, "Trainer", SilentTrainer)
    with pytest.raises(UserError, match="wrote no checkpoint") as err:
        train_or_reuse(_config(cifar_root, tmp_path / "silent"))
    assert "\n" not in str(err.value)


def test_every_key_the_weights_depend_on_is_a_setting() -> None:
    names = {f.name for f in dataclasses.fields(Config)}
    assert BOOKKEEPING_KEYS <= names  # no misspelt key silently dropped from the check
    assert set(ARCHITECTURE_KEYS) <= set(SETTINGS_KEYS)
    assert {"total_steps", "lr", "seed", "data_dir", "batch_size", "snr_db", "snr_range", "channel",
            "jscc_encoder_path", "bf16"} <= set(SETTINGS_KEYS)
    assert set(SETTINGS_KEYS) | BOOKKEEPING_KEYS == names
