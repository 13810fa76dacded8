"""Train a model into its run folder, or reuse the run already finished there.

The demo and the benchmarks keep their runs under a work folder and reuse them on the next
invocation, so a rerun only scores. :func:`train_or_reuse` is that one rule:

* nothing in ``cfg.log_dir``: train from scratch;
* a finished run of the same settings (its newest checkpoint at ``total_steps``): reuse its
  checkpoint without building a Trainer;
* an unfinished run of the same settings (a killed job): resume it (``resume="auto"``) and
  finish it;
* a run of other settings (its ``config.yaml`` or newest checkpoint disagrees on a key of
  :data:`SETTINGS_KEYS`): refused with a one-line :class:`UserError`, never silently reused,
  resumed under a changed schedule or overwritten.

Settings are every config key except :data:`BOOKKEEPING_KEYS`, which change neither the
weights a run ends with nor the steps that lead there (where files go, how often they are
written, which device or kernel layout computes the same update). ``total_steps`` is a
setting: the learning rate anneals to 0 at ``total_steps``, so a run finished at 600 steps
is not the first 600 steps of a 1200-step run, and a reused run's budget is what was asked.
One process only: the data-parallel trainer is launched by ``diffjscc train`` instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

import yaml

from diffjscc.config import Config, first_mismatch
from diffjscc.errors import UserError
from diffjscc.runtime.checkpoint import latest_valid_checkpoint
from diffjscc.training.trainer import Trainer

BOOKKEEPING_KEYS = frozenset({
    "log_dir",  # the folder itself: a run may be moved
    "test_dir", "sample_interval", "sample_steps",  # sample grids only
    "log_interval", "save_interval", "keep_checkpoints",  # how often files are written
    "device", "num_workers",  # where the same steps are computed, how batches are loaded
    "fused_adamw", "channels_last", "compile",  # the same update, other kernels (bench train-step)
})
SETTINGS_KEYS = tuple(f.name for f in fields(Config) if f.name not in BOOKKEEPING_KEYS)


@dataclass(frozen=True)
class TrainedRun:
    """The final checkpoint of a run, and whether this call trained it."""

    checkpoint: Path
    step: int
    reused: bool  # the run was finished before this call: nothing was trained
    seconds: float  # wall time of this call's training (0 when reused)
    images_per_second: float  # of the last logged window (0 when reused)


def train_or_reuse(cfg: Config, progress: bool = False,
                   sample_grid: Callable[..., None] | None = None) -> TrainedRun:
    """Train ``cfg`` to ``total_steps`` in ``cfg.log_dir``, resume it there, or reuse the finished run.

    ``progress`` and ``sample_grid`` go to the Trainer (the training layer cannot import the
    evaluation's grid writer: the caller passes it). Raises UserError when the folder holds a
    run of other settings (see the module docstring) or when training wrote no checkpoint.
    """
    log_dir = Path(cfg.log_dir)
    _check_same_settings(log_dir / "config.yaml", _saved_config_file(log_dir), cfg)
    found = latest_valid_checkpoint(log_dir)
    if found is not None:
        path, payload = found
        _check_same_settings(path, payload["config"], cfg)
        if int(payload["step"]) >= cfg.total_steps:
            print(f"{log_dir}: reusing the finished run {path.name} (step {int(payload['step'])})", flush=True)
            return TrainedRun(path, int(payload["step"]), reused=True, seconds=0.0, images_per_second=0.0)
    started = time.perf_counter()
    result = Trainer(cfg, resume="auto", progress=progress, sample_grid=sample_grid).train()
    seconds = time.perf_counter() - started
    if result.last_checkpoint is None or not result.last_checkpoint.is_file():
        raise UserError(f"training mode={cfg.mode} in {log_dir} wrote no checkpoint")
    return TrainedRun(result.last_checkpoint, result.step, reused=False, seconds=seconds,
                      images_per_second=result.images_per_second)


def _check_same_settings(source: Path, saved: dict[str, Any] | None, cfg: Config) -> None:
    """UserError naming the first setting on which a run's saved config (from ``source``)
    disagrees with ``cfg``; nothing when they agree or nothing was saved."""
    if saved is None:
        return
    mismatch = first_mismatch(saved, cfg, SETTINGS_KEYS)
    if mismatch is not None:
        key, trained_with = mismatch
        raise UserError(f"{source.parent} holds a run of other settings ({source.name} has {key}={trained_with!r}, "
                        f"this run asks for {key}={getattr(cfg, key)!r}): delete it or train into another folder")


def _saved_config_file(log_dir: Path) -> dict[str, Any] | None:
    """The config.yaml a run wrote when it started (None when there is none)."""
    path = log_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        saved = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise UserError(f"{path} is not valid YAML: delete the run folder {log_dir} or train into another") from None
    if not isinstance(saved, dict):
        raise UserError(f"{path} is not a config mapping: delete the run folder {log_dir} or train into another")
    return saved
