"""One training loop for every mode: ``jscc``, ``joint``, ``frozen`` and ``unconditional``.

The modes differ only in :func:`training_loss` (what is computed from a batch) and in which
parameters :class:`~diffjscc.system.TransmissionSystem` exposes as trainable. Everything else —
data order, AdamW, EMA, clipping, bf16 autocast, checkpoints, resume, logging, sample grids —
is shared. The channel is applied in every mode that has an encoder (the original Diff_JSCC
skipped it during training).

The model set-up and one batch's update are :class:`TrainStep`; :class:`Trainer` adds data,
run folder, resume, signals, logging and checkpoints around it. ``python -m bench train-step``
times that same :class:`TrainStep`.

The same loop runs data-parallel under torchrun, mpiexec or srun (see
:mod:`diffjscc.runtime.distributed`), and W processes train as one process with the same
global batch does, up to the order of floating-point sums:

* the global batch of step k is the single-process batch k; rank r takes its contiguous
  slice (:class:`EpochBatchSampler`);
* the step's draws (diffusion t, ε, channel SNR and noise) come from the generator of
  (seed, step) (:attr:`~diffjscc.runtime.seeding.Stream.TRAINING_STEP`) and are drawn for the
  whole global batch, each rank keeping its rows (:func:`step_generator`,
  :class:`~diffjscc.channel.BatchGenerator`);
* DistributedDataParallel averages the gradients of equal-sized local means, which is the
  gradient of the global mean, so every rank takes the same AdamW step and EMA update.

Dropout masks come from each process's global RNG and are not part of that equivalence.
"""

from __future__ import annotations

import datetime
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from diffjscc import __version__
from diffjscc.channel import bandwidth_ratio
from diffjscc.config import ARCHITECTURE_KEYS, Config, config_from_dict, first_mismatch
from diffjscc.data import ImageFolderDataset, RandomCropDataset
from diffjscc.errors import UserError
from diffjscc.system import TransmissionSystem, init_from_checkpoint, load_jscc_into
from diffjscc.runtime.checkpoint import (checkpoint_path, latest_valid_checkpoint, load_checkpoint,
                                          prune_checkpoints, record_checkpoint, save_checkpoint)
from diffjscc.runtime.device import bf16_enabled, configure_job_numerics, resolve_device
from diffjscc.runtime.distributed import (DistContext, DistributedError, all_gather_tensors, all_reduce_sum,
                                          barrier, broadcast_buffers)
from diffjscc.runtime.progress import progress_bar
from diffjscc.runtime.rundir import RESUMES_NAME, RunLock, new_run_id, prepare_fresh_run, write_text_atomic
from diffjscc.runtime.seeding import (BatchGenerator, Stream, global_rng_states, restore_global_rng_states,
                                      step_generator, stream_generator, stream_seed)
from diffjscc.training.run_log import RunLog

MAX_NONFINITE_IN_A_ROW = 10
MAX_NONFINITE_FRACTION = 0.01
NONFINITE_FRACTION_MIN_STEPS = 1000
"""A run stops when more than 1 % of its steps so far were skipped, the fraction counted over at
least the first 1000 steps (so 11 skips stop a run before step 1000, and a rare skip does not)."""
GRID_IMAGES = 8


class EpochBatchSampler(Sampler[list[int]]):
    """Endless batches: epoch e shuffles with the (seed, e) generator of :attr:`~Stream.EPOCH_ORDER`, so a
    resumed run sees the same order.

    ``start_step`` skips the batches already consumed; with ``drop_last`` semantics every
    step has exactly ``batch_size`` images. Data-parallel: ``batch_size`` is the global batch
    and a rank yields only its ``rows`` ``[start, stop)`` of each one — that is the sharding.

    Not torch's DistributedSampler: it deals rank r every W-th image of the epoch (padding the
    epoch to a multiple of W) and cannot start mid-epoch, so its step-k batches would not be,
    image for image and row for row, the single-process batch k that the equivalence with one
    process needs, nor restart where a resumed run stopped.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, start_step: int = 0,
                 rows: tuple[int, int] | None = None) -> None:
        if num_items < batch_size:
            raise UserError(f"the data folder has {num_items} images, fewer than batch_size={batch_size}")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.steps_per_epoch = num_items // batch_size
        self.start_step = start_step
        self.rows = rows or (0, batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, offset = divmod(self.start_step, self.steps_per_epoch)
        start, stop = self.rows
        while True:
            order = torch.randperm(self.num_items, generator=stream_generator(self.seed, Stream.EPOCH_ORDER, epoch))
            for b in range(offset, self.steps_per_epoch):
                yield order[b * self.batch_size:(b + 1) * self.batch_size][start:stop].tolist()
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # endless; DataLoader only needs it for len(loader)
        return 2**62


def ema_with_warmup(rate: float):
    """EMA update with decay min(rate, (1 + n) / (10 + n)) after n updates.

    A plain 0.9999 EMA of a short run is still mostly the random initialisation; the warm-up
    lets the average follow the weights early and reach ``rate`` later (n ≈ 10/(1 − rate)).
    """

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        decay = min(rate, (1.0 + n) / (10.0 + n))
        floats = [(a, c) for a, c in zip(averaged, current) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1.0 - decay)
        for a, c in zip(averaged, current):
            if not a.is_floating_point():
                a.copy_(c)  # integer buffers (BatchNorm counters) are copied, not averaged

    return update


def training_images(cfg: Config, folder: str) -> ImageFolderDataset | RandomCropDataset:
    """The images a run trains on: whole ``image_size`` images, or random ``crop_size`` crops of
    photos of any size (seeded by ``cfg.seed``, so that a resumed run sees the same crops)."""
    if cfg.crop_size:
        return RandomCropDataset(folder, cfg.crop_size, seed=cfg.seed)
    return ImageFolderDataset(folder, image_size=cfg.image_size, with_labels=cfg.class_cond, strict=cfg.strict_data)


def training_loss(system: TransmissionSystem, images: torch.Tensor, labels: torch.Tensor | None,
                  generator: torch.Generator | BatchGenerator | None = None) -> dict[str, torch.Tensor]:
    """Scalar ``loss`` (and parts to log) for one batch, whatever the mode.

    ``generator`` makes the step's draws; a BatchGenerator draws them for the global batch
    and keeps this process's rows of it.
    """
    cfg = system.cfg
    draws = generator if isinstance(generator, BatchGenerator) else BatchGenerator(generator, images.shape[0])
    snr = system.channel.sample_snr(images.shape[0], images.device, draws) if system.encoder is not None else None
    # the receivers are told the SNR of the block they got (|h|²·SNR under block fading with CSI)
    if cfg.mode == "jscc":
        received, told = system.transmit(images, snr_db=snr, generator=draws, return_receiver_snr=True)
        reconstruction = system.decode(received, told)
        mse = F.mse_loss(reconstruction.float(), images.float())
        return {"loss": mse, "mse": mse}
    received, base, parts, told = None, None, {}, None
    if cfg.mode == "frozen":
        with torch.no_grad():
            received, told = system.transmit(images, snr_db=snr, generator=draws, return_receiver_snr=True)
            base = system.residual_base(received, told)
    elif cfg.mode == "joint":
        received, told = system.transmit(images, snr_db=snr, generator=draws, return_receiver_snr=True)
        base = system.residual_base(received, told)
        if base is not None:  # the joint residual model trains its Deep JSCC decoder too
            parts["jscc_mse"] = F.mse_loss(base.float(), images.float())
            base = base.detach()
    diffusion = system.diffusion
    target = system.to_residual(images, base)
    t = draws.randint(diffusion.num_timesteps, (images.shape[0],), device=images.device)
    noise = draws.randn(images.shape, device=images.device, dtype=images.dtype)
    x_t = diffusion.q_sample(target, t, noise)
    keep = None  # classifier-free guidance: the same network learns p(x) beside p(x | y)
    if cfg.condition_dropout:
        keep = (draws.rand((images.shape[0],), device=images.device) >= cfg.condition_dropout).float()
    out = system.unet(x_t, diffusion.model_timesteps(t), latent=received,
                      class_labels=labels if cfg.class_cond else None,
                      snr_db=told if cfg.snr_adaptive else None, estimate=base, keep=keep)
    terms = diffusion.training_losses(out, target, x_t, t, noise, vlb_weight=cfg.vlb_weight,
                                      target_is_8bit=base is None)  # a residual is off the 8-bit grid
    losses = {key: value.mean() for key, value in terms.items()}
    if parts:
        losses["loss"] = losses["loss"] + parts["jscc_mse"]
    return {**losses, **parts}


class StepLoss(nn.Module):
    """:func:`training_loss` as a module's forward: DistributedDataParallel averages the
    gradients of what the forward of the module it wraps computed."""

    def __init__(self, system: TransmissionSystem) -> None:
        super().__init__()
        self.system = system

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None,
                generator: BatchGenerator) -> dict[str, torch.Tensor]:
        return training_loss(self.system, images, labels, generator)


SampleGrid = Callable[[TransmissionSystem, torch.Tensor, "torch.Tensor | None", Path], None]
"""Writes a PNG of the receivers' outputs: (EMA system in eval mode, images, labels or None, path).
The trainer sits below evaluation, so the CLI passes :func:`diffjscc.evaluation.grids.write_training_grid`."""


@dataclass
class StepResult:
    """What the loop needs from one :class:`TrainStep` call."""

    terms: dict[str, torch.Tensor]
    """``loss`` and its parts, this process's means (not detached: ``.detach()`` to keep them)."""
    grad_norm: torch.Tensor
    """Total gradient norm before clipping; NaN when the loss was not finite (no backward)."""
    skipped: bool
    """The loss or the gradient was not finite on some rank: weights, AdamW and EMA untouched."""
    stop: bool
    """Some rank was asked to stop (SIGTERM/SIGINT): every rank saves and exits after this step."""


class TrainStep:
    """The trainer's model set-up and its one training step, without data, run folder or resume.

    A class of its own so that ``python -m bench train-step`` times, and a test compares, this
    very step rather than a copy. Set-up: the system on ``device`` (initial weights from
    ``cfg.seed``'s :attr:`~Stream.MODEL_INIT` stream, or ``cfg.init_from``'s), channels_last,
    the frozen mode's pre-trained encoder, AdamW (fused when ``cfg.fused_adamw``), the EMA copy,
    in-place ``torch.compile``; :meth:`distribute` adds the DistributedDataParallel wrapper once
    the Trainer has resumed. A call is one step on one batch.
    """

    def __init__(self, cfg: Config, device: torch.device, dist: DistContext | None = None) -> None:
        self.cfg, self.device = cfg, device
        self.dist = dist or DistContext()
        self.rows = self.dist.rows(cfg.batch_size)  # this rank's rows of every global batch
        torch.manual_seed(stream_seed(cfg.seed, Stream.MODEL_INIT))
        self.system = TransmissionSystem(cfg).to(device)
        if cfg.channels_last:  # NHWC convolutions; the state_dict keys and values are unchanged
            self.system = self.system.to(memory_format=torch.channels_last)
        if cfg.mode == "frozen":
            load_jscc_into(self.system, cfg.jscc_encoder_path)
        if cfg.init_from:  # before the EMA copy is made: it starts from these weights too
            init_from_checkpoint(self.system, cfg.init_from)
        try:  # fused: one kernel for every parameter, the same AdamW update (bench train-step)
            self.optimizer = torch.optim.AdamW(self.system.trainable_parameters(), lr=cfg.lr,
                                               weight_decay=cfg.weight_decay, fused=cfg.fused_adamw or None)
        except RuntimeError:  # no fused AdamW for this device in this torch (CPU before 2.4)
            self.optimizer = torch.optim.AdamW(self.system.trainable_parameters(), lr=cfg.lr,
                                               weight_decay=cfg.weight_decay)
        self.ema = AveragedModel(self.system, multi_avg_fn=ema_with_warmup(cfg.ema_rate), use_buffers=True)
        self.step_loss: nn.Module = StepLoss(self.system)
        if cfg.compile and self.system.unet is not None:
            # In place (nn.Module.compile): state_dict keys, checkpoints and the EMA copy stay as they are.
            self.system.unet.compile()

    def distribute(self) -> None:
        """Average gradients over the ranks: wrap the loss module in DistributedDataParallel.

        Parameters without grad (the frozen encoder) are left out by DDP itself.
        """
        self.step_loss = DistributedDataParallel(
            self.step_loss, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def lr_at(self, step: int) -> float:
        """The learning rate of ``step``: constant, or decayed linearly to 0 at ``total_steps``."""
        if not self.cfg.lr_anneal:
            return self.cfg.lr
        return self.cfg.lr * max(0.0, 1.0 - step / self.cfg.total_steps)

    def agree(self, loss_finite: bool, stop: bool) -> tuple[bool, bool]:
        """Skip the step if any rank's loss is not finite; stop if any rank got a signal.

        Every rank must take the same branch, or one waits forever in a collective the others
        never reach: one tiny all-reduce per step, nothing in one process.
        """
        if not self.dist.enabled:
            return loss_finite, stop
        flags = all_reduce_sum(torch.tensor([float(not loss_finite), float(stop)]))
        return bool(flags[0] == 0), bool(flags[1] > 0)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor | None, step: int,
                 stop_requested: bool = False) -> StepResult:
        """Train on this rank's rows of global batch ``step``: forward, backward, AdamW, EMA.

        The draws come from (``cfg.seed``, ``step``) alone, so a resumed run and every split of
        the batch over ranks draw what one uninterrupted process does. A non-finite loss or
        gradient (on any rank) changes nothing; the caller counts those skips.
        """
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        draws = BatchGenerator(step_generator(cfg.seed, step, self.device), cfg.batch_size, *self.rows)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16_enabled(cfg.bf16, self.device)):
            terms = self.step_loss(images, labels, draws)
        loss = terms["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        # The guard's two reads (is the loss finite, is the gradient norm finite) are this step's
        # only host synchronisations; losses and norms are read back at log intervals.
        loss_finite, stop = self.agree(bool(torch.isfinite(loss)), stop_requested)
        grad_norm = torch.tensor(float("nan"))
        if loss_finite:
            loss.backward()
            # The norm is computed even without clipping (max_norm=inf): a non-finite
            # gradient must be caught before it reaches the weights and the EMA.
            grad_norm = torch.nn.utils.clip_grad_norm_(
                self.system.trainable_parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        if not (loss_finite and torch.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            return StepResult(terms, grad_norm, skipped=True, stop=stop)
        self.optimizer.step()
        self.ema.update_parameters(self.system)
        return StepResult(terms, grad_norm, skipped=False, stop=stop)


@dataclass
class TrainResult:
    step: int
    last_checkpoint: Path | None
    images_per_second: float
    final_loss: float


class Trainer:
    """Builds everything from a Config and runs (or resumes) training to ``total_steps``.

    The model, AdamW, EMA and the step itself are :attr:`train_step` (a :class:`TrainStep`);
    the Trainer adds the data, the run folder, resume, signals, logging, checkpoints and grids.
    """

    def __init__(self, cfg: Config, resume: str | None = None, progress: bool = True,
                 dist: DistContext | None = None, sample_grid: SampleGrid | None = None,
                 overwrite: bool = False) -> None:
        self.cfg = cfg
        self.sample_grid = sample_grid
        self.dist = dist or DistContext()
        self.progress = progress and self.dist.is_main
        self.device = self.dist.place(resolve_device(cfg.device))
        configure_job_numerics(self.device)  # a training job's speed settings (TF32, cudnn.benchmark on CUDA)
        self.log_dir = Path(cfg.log_dir)
        self.run_id = new_run_id()  # a resumed run keeps its checkpoint's
        # log_dir belongs to this run until train() ends (rank 0 holds it): see runtime.rundir.
        self.run_lock = RunLock(self.log_dir).acquire() if self.dist.is_main else None
        try:
            if self.run_lock is not None and not resume:
                prepare_fresh_run(self.log_dir, overwrite)
            self.dataset = training_images(cfg, cfg.data_dir)
            self.train_step = TrainStep(cfg, self.device, self.dist)
            self.step = 0
            self.skipped_steps = 0  # steps whose loss or gradient was not finite, resumed runs included
            self.skipped_in_a_row = 0
            self._stop_signal: int | None = None
            self._resumed: tuple[Path, dict] | None = None  # (checkpoint, its config) when resuming
            if resume:
                self._resume(resume)
            if self.run_lock is not None:
                self.run_lock.mark_holder()
        except BaseException:
            self.release()
            raise
        if self.dist.enabled:
            self._check_ranks_start_together()
            if self.dist.rank:  # rank 0 keeps a single process's global RNG (dropout)
                # Identical dropout masks on different images would correlate the ranks.
                torch.manual_seed(stream_seed(cfg.seed, Stream.DROPOUT, self.step, self.dist.rank))
            self.train_step.distribute()

    def release(self) -> None:
        """Give up log_dir (done by :meth:`train` at its end; the process's end does it too)."""
        if self.run_lock is not None:
            self.run_lock.release()

    @property
    def system(self) -> TransmissionSystem:
        return self.train_step.system

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.train_step.optimizer

    @property
    def ema(self) -> AveragedModel:
        return self.train_step.ema

    # ---- checkpoints ------------------------------------------------------------------------
    def _resume(self, resume: str) -> None:
        if resume == "auto":
            found = latest_valid_checkpoint(self.log_dir)
            if found is None:
                return  # nothing to resume: a fresh start, as a pre-empted job's first launch
            path, payload = found
        else:
            path, payload = Path(resume), load_checkpoint(resume)
        mismatch = first_mismatch(payload["config"], self.cfg, ARCHITECTURE_KEYS)
        if mismatch is not None:
            key, trained_with = mismatch
            raise UserError(f"checkpoint {path} was trained with {key}={trained_with!r}, "
                            f"but the config says {key}={getattr(self.cfg, key)!r}")
        self._check_folder_config(path, payload["config"])
        self.run_id = str(payload.get("run_id") or self.run_id)
        try:
            self.system.load_state_dict(payload["model"])
            self.ema.module.load_state_dict(payload["ema"])
            self.optimizer.load_state_dict(payload["optimizer"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise UserError(f"checkpoint {path} does not fit this config: {str(err).splitlines()[0]}") from None
        self.ema.n_averaged.fill_(int(payload.get("ema_updates", payload["step"])))
        self.step = int(payload["step"])
        self.skipped_steps = int(payload.get("skipped_nonfinite", 0))
        self.skipped_in_a_row = int(payload.get("skipped_in_a_row", 0))
        restore_global_rng_states(payload, self.device)
        self._resumed = (path, payload["config"])
        if self.dist.is_main:
            tqdm.write(f"resumed from {path} at step {self.step}")

    def _check_folder_config(self, path: Path, trained: dict) -> None:
        """log_dir's config.yaml must be the config of the run being resumed, not another run's."""
        folder_config = self.log_dir / "config.yaml"
        if not folder_config.is_file():
            return
        try:
            saved = yaml.safe_load(folder_config.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise UserError(f"{folder_config} is not readable YAML ({type(err).__name__})") from None
        mismatch = first_mismatch(saved if isinstance(saved, dict) else {}, config_from_dict(trained),
                                  ARCHITECTURE_KEYS)
        if mismatch is not None:
            key, value = mismatch
            raise UserError(f"{folder_config} says {key}={value!r} but checkpoint {path} was trained with "
                            f"{key}={trained.get(key)!r}: the folder holds another run's config")

    def _record_config(self) -> None:
        """``config.yaml`` is the config the run started with, written once (atomically) by a
        start from step 0; each resume appends to ``resumes.yaml`` its step, checkpoint, time
        and the keys whose values differ from ``config.yaml`` (with the values it runs with), so
        the config of any part of the run is ``config.yaml`` updated by that entry's ``changed``.
        A resume into a folder without ``config.yaml`` writes the checkpoint's config there."""
        path = self.log_dir / "config.yaml"
        current = yaml.safe_load(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        if self._resumed is None or not path.is_file():
            original = current if self._resumed is None else self._resumed[1]
            write_text_atomic(path, yaml.safe_dump(original, sort_keys=False))
        if self._resumed is None:
            return
        saved = yaml.safe_load(path.read_text())  # a mapping: checked by _check_folder_config
        changed = {key: value for key, value in current.items() if key not in saved or saved[key] != value}
        resumes_path = self.log_dir / RESUMES_NAME
        try:
            resumes = yaml.safe_load(resumes_path.read_text()) if resumes_path.is_file() else []
        except yaml.YAMLError:
            raise UserError(f"{resumes_path} is not readable YAML: move it away to resume") from None
        if not isinstance(resumes, list):
            raise UserError(f"{resumes_path} is not a list of resumes: move it away to resume")
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        resumes.append({"step": self.step, "checkpoint": self._resumed[0].name, "time": stamp, "changed": changed})
        write_text_atomic(resumes_path, yaml.safe_dump(resumes, sort_keys=False))

    def _check_ranks_start_together(self) -> None:
        """Every rank must resume from the same step (``--resume auto`` reads log_dir on each)."""
        steps = [int(s) for s in all_gather_tensors(torch.tensor([self.step]))]
        if len(set(steps)) > 1:
            raise UserError(f"the processes would resume at different steps {steps}: log_dir {self.log_dir} "
                            f"must be one folder that every node sees")

    def _check_ranks_agree(self) -> None:
        """Weights and EMA must be identical on all ranks (same averaged gradients, same steps);
        compared by a float64 checksum before every checkpoint, so a divergence cannot go unseen.

        Buffers are the exception: each rank's BatchNorm (``jscc_norm: batchnorm``) updates its
        running statistics from its own rows of the batch. Rank 0's are broadcast first, so the
        checkpoint holds rank 0's running statistics (estimated from its share of each global
        batch) on every rank, as DDP's own buffer broadcast before each forward already makes them.
        In training each rank normalises with its own rows' statistics (SyncBatchNorm would use the
        global batch's, but runs on GPUs only, and the same config must train alike on CPU).
        """
        if not self.dist.enabled:
            return
        with torch.no_grad():
            for module in (self.system, self.ema.module):
                broadcast_buffers(module)
            sums = torch.stack([sum(t.double().sum() for t in m.state_dict().values() if t.is_floating_point())
                                for m in (self.system, self.ema.module)]).cpu()
        gathered = all_gather_tensors(sums)
        if any(not torch.equal(g, gathered[0]) for g in gathered):
            raise DistributedError(f"rank {self.dist.rank}: the processes' weights differ at step {self.step} "
                                   f"(checksums {[g.tolist() for g in gathered]}); they must stay identical")

    def save(self) -> Path:
        payload = {
            "model": self.system.state_dict(),
            "ema": self.ema.module.state_dict(),
            "ema_updates": int(self.ema.n_averaged.item()),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "skipped_nonfinite": self.skipped_steps,
            "skipped_in_a_row": self.skipped_in_a_row,
            "config": self.cfg.to_dict(),
            "run_id": self.run_id,
            **global_rng_states(self.device),
            "versions": {"torch": str(torch.__version__), "diffjscc": __version__},
        }
        path = save_checkpoint(payload, checkpoint_path(self.log_dir, self.step))
        record_checkpoint(self.log_dir, self.run_id, path)
        prune_checkpoints(self.log_dir, self.cfg.keep_checkpoints, self.run_id)
        return path

    def describe(self) -> str:
        """One line on what is being trained: mode, size, channel, k/n, data, device."""
        cfg = self.cfg
        trainable = sum(p.numel() for p in self.system.trainable_parameters())
        start, stop = self.train_step.rows
        batch = (f"batch {cfg.batch_size} = {self.dist.world_size} × {stop - start} "
                 f"on {self.dist.describe()}" if self.dist.enabled else f"batch {cfg.batch_size}")
        parts = [f"mode={cfg.mode}", f"{trainable / 1e6:.2f}M trainable parameters",
                 self._describe_data(), batch, f"device {self.device}"]
        if cfg.has_encoder:
            snr = f"SNR {cfg.snr_range[0]:g}..{cfg.snr_range[1]:g} dB" if cfg.snr_range else f"SNR {cfg.snr_db:g} dB"
            ratio = bandwidth_ratio(cfg.latent_dim, (3, cfg.image_size, cfg.image_size))
            parts.insert(2, f"channel {cfg.channel} at {snr}, {cfg.latent_dim} symbols/image (k/n = {ratio:.4f})")
            if cfg.snr_adaptive:
                parts.insert(3, "SNR-adaptive" + (" (SNR fed back to the encoder)" if cfg.snr_feedback else ""))
        if cfg.mode in ("joint", "frozen"):
            parts.insert(1, f"conditioning={cfg.conditioning}")
        return ", ".join(parts)

    def _describe_data(self) -> str:
        if isinstance(self.dataset, RandomCropDataset):
            return (f"random {self.cfg.crop_size}x{self.cfg.crop_size} crops of {len(self.dataset.files)} "
                    f"images from {self.cfg.data_dir}")
        return f"{len(self.dataset)} images from {self.cfg.data_dir}"

    # ---- loop -------------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame) -> None:
        self._stop_signal = signum

    def train(self) -> TrainResult:
        cfg = self.cfg
        main = self.dist.is_main  # only rank 0 writes logs, grids and checkpoints
        if main:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._record_config()
        sampler = EpochBatchSampler(len(self.dataset), cfg.batch_size, cfg.seed, start_step=self.step,
                                    rows=self.train_step.rows)
        # Its own generator: creating the iterator must not draw from the global RNG, whose
        # state a resumed run restores (so that dropout continues exactly).
        loader = DataLoader(self.dataset, batch_sampler=sampler, num_workers=cfg.num_workers,
                            pin_memory=self.device.type == "cuda",
                            generator=stream_generator(cfg.seed, Stream.DATA_LOADER))
        run_log = RunLog(self.log_dir, start_step=self.step) if main else None
        if main:
            tqdm.write(self.describe())
            if cfg.compile and self.dist.enabled and self.system.unet is not None:
                # Each rank compiles on its first step; the first gradient all-reduce waits for all.
                tqdm.write(f"torch.compile: every rank compiles on its first step (minutes on CPU); a rank "
                           f"that waits more than --dist-timeout={self.dist.timeout_s:g} s for the others "
                           f"ends the run, so raise --dist-timeout if compile times differ that much")
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        # A tqdm bar on a terminal; plain lines (step, loss, img/s, ETA) in a log file.
        bar = progress_bar(cfg.total_steps, f"train[{cfg.mode}]", enabled=self.progress, initial=self.step,
                           unit="step", dynamic_ncols=True)
        last_path: Path | None = None
        window_images, window_start = 0, time.perf_counter()
        images_per_second, loss_value = 0.0, float("nan")
        self.system.train()
        batches = iter(loader)
        try:
            while self.step < cfg.total_steps:
                images, labels = self._to_device(next(batches))
                done = self.train_step(images, labels, self.step, stop_requested=self._stop_signal is not None)
                terms, grad_norm, stopping = done.terms, done.grad_norm, done.stop
                # A skipped step is still a step: it has used up its batch and its (seed, step)
                # draws, so later steps, and a run resumed after it, draw what one without it would.
                self.skipped_in_a_row = self.skipped_in_a_row + 1 if done.skipped else 0
                self.skipped_steps += done.skipped
                if done.skipped and main:
                    tqdm.write(f"step {self.step}: non-finite loss or gradient, step skipped "
                               f"({self.skipped_steps} so far)")
                self.step += 1
                self._check_skips()
                window_images += images.shape[0] * self.dist.world_size
                bar.update(1)
                if self.step % cfg.log_interval == 0 or self.step == cfg.total_steps:
                    elapsed = time.perf_counter() - window_start
                    images_per_second = window_images / max(elapsed, 1e-9)
                    # Means over the global batch: the mean of the ranks' equal-sized local means.
                    means = all_reduce_sum(torch.stack([v.detach().float() for v in terms.values()]))
                    means = (means / self.dist.world_size).tolist()
                    loss_value = means[list(terms).index("loss")]
                    record = {"step": self.step, "lr": self.train_step.lr_at(self.step - 1),
                              "grad_norm": float(grad_norm), "img_per_s": images_per_second,
                              "skipped_nonfinite": self.skipped_steps, **dict(zip(terms, means))}
                    if run_log is not None:
                        run_log.write(record)
                    bar.set_postfix(loss=f"{loss_value:.4f}", img_s=f"{images_per_second:.1f}")
                    window_images, window_start = 0, time.perf_counter()
                if self.step % cfg.save_interval == 0 or self.step == cfg.total_steps or stopping:
                    self._check_ranks_agree()
                    if main:
                        last_path = self.save()
                if (main and cfg.sample_interval and self.step % cfg.sample_interval == 0
                        and self.step != cfg.total_steps):
                    self.write_sample_grid()
                if stopping:
                    barrier()  # every rank leaves after rank 0's checkpoint is on disk
                    signum = int(self._stop_signal or signal.SIGTERM)  # or another rank got it
                    if main:
                        tqdm.write(f"received signal {signum}: saved {last_path}, exiting")
                    raise SystemExit(128 + signum)
            if last_path is None:  # resumed at (or past) the end: nothing new to save
                last_path = checkpoint_path(self.log_dir, self.step)
            if main:
                self.write_sample_grid()
        finally:
            bar.close()
            if run_log is not None:
                run_log.close()
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.release()
        return TrainResult(self.step, last_path, images_per_second, loss_value)

    def _check_skips(self) -> None:
        """Stop with one line when the skips say the run is broken: 10 in a row, or more than
        1 % of the steps so far (:data:`MAX_NONFINITE_FRACTION`)."""
        advice = "lower lr or disable bf16"
        if self.skipped_in_a_row >= MAX_NONFINITE_IN_A_ROW:
            raise UserError(f"training loss or gradient was not finite for {self.skipped_in_a_row} steps in a row "
                            f"at step {self.step}; {advice}")
        if self.skipped_steps > MAX_NONFINITE_FRACTION * max(self.step, NONFINITE_FRACTION_MIN_STEPS):
            raise UserError(f"training loss or gradient was not finite in {self.skipped_steps} of the {self.step} "
                            f"steps so far (more than {MAX_NONFINITE_FRACTION * 100:g} % of them, or over "
                            f"{MAX_NONFINITE_FRACTION * NONFINITE_FRACTION_MIN_STEPS:g} in the first "
                            f"{NONFINITE_FRACTION_MIN_STEPS}); {advice}")

    def _to_device(self, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        images, labels = batch
        images = images.to(self.device, non_blocking=True)
        return images, labels.to(self.device, non_blocking=True) if self.cfg.class_cond else None

    # ---- sample grid ------------------------------------------------------------------------
    @torch.no_grad()
    def write_sample_grid(self) -> Path | None:
        """The caller's ``sample_grid`` of the EMA weights on the first test (or training) images."""
        if self.sample_grid is None:
            return None
        source_dir = self.cfg.test_dir or self.cfg.data_dir
        dataset = self.dataset if source_dir == self.cfg.data_dir else training_images(self.cfg, source_dir)
        images, labels = dataset.first(GRID_IMAGES, self.device)
        model = self.ema.module
        was_training = model.training
        model.eval()
        path = self.log_dir / f"samples_{self.step:07d}.png"
        self.sample_grid(model, images, labels, path)
        model.train(was_training)
        return path
