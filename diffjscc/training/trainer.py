"""One training loop for every mode: ``jscc``, ``joint``, ``frozen`` and ``unconditional``.

The modes differ only in :func:`training_loss` (what is computed from a batch) and in which
parameters :class:`~diffjscc.system.TransmissionSystem` exposes as trainable. Everything else —
data order, AdamW, EMA, clipping, bf16 autocast, checkpoints, resume, logging, sample grids —
is shared. The channel is applied in every mode that has an encoder (the original Diff_JSCC
skipped it during training).
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
import yaml
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from diffjscc import __version__
from diffjscc.channel import bandwidth_ratio
from diffjscc.config import Config
from diffjscc.data import ImageFolderDataset
from diffjscc.errors import UserError
from diffjscc.system import TransmissionSystem, load_jscc_into
from diffjscc.training.checkpoint import (checkpoint_path, latest_valid_checkpoint, load_checkpoint,
                                          prune_checkpoints, save_checkpoint)
from diffjscc.training.run_log import RunLog

MAX_NONFINITE_IN_A_ROW = 10
GRID_IMAGES = 8


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; asking for a missing GPU is a UserError."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was requested but no CUDA GPU is available (use --set device=cpu)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class EpochBatchSampler(Sampler[list[int]]):
    """Endless batches: epoch e shuffles with seed + e, so a resumed run sees the same order.

    ``start_step`` skips the batches already consumed; with ``drop_last`` semantics every
    step has exactly ``batch_size`` images.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, start_step: int = 0) -> None:
        if num_items < batch_size:
            raise UserError(f"the data folder has {num_items} images, fewer than batch_size={batch_size}")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.steps_per_epoch = num_items // batch_size
        self.start_step = start_step

    def __iter__(self) -> Iterator[list[int]]:
        epoch, offset = divmod(self.start_step, self.steps_per_epoch)
        while True:
            order = torch.randperm(self.num_items, generator=torch.Generator().manual_seed(self.seed + epoch))
            for b in range(offset, self.steps_per_epoch):
                yield order[b * self.batch_size:(b + 1) * self.batch_size].tolist()
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


def training_loss(system: TransmissionSystem, images: torch.Tensor,
                  labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Scalar ``loss`` (and parts to log) for one batch, whatever the mode."""
    cfg = system.cfg
    if cfg.mode == "jscc":
        reconstruction = system.decoder(system.transmit(images))
        mse = F.mse_loss(reconstruction.float(), images.float())
        return {"loss": mse, "mse": mse}
    received = None
    if cfg.mode in ("joint", "frozen"):
        if cfg.mode == "frozen":
            with torch.no_grad():
                received = system.transmit(images)
        else:
            received = system.transmit(images)
    diffusion = system.diffusion
    t = torch.randint(0, diffusion.num_timesteps, (images.shape[0],), device=images.device)
    noise = torch.randn_like(images)
    x_t = diffusion.q_sample(images, t, noise)
    out = system.unet(x_t, diffusion.model_timesteps(t),
                      latent=received.flatten(1) if received is not None else None,
                      class_labels=labels if cfg.class_cond else None)
    terms = diffusion.training_losses(out, images, x_t, t, noise, vlb_weight=cfg.vlb_weight)
    return {key: value.mean() for key, value in terms.items()}


@dataclass
class TrainResult:
    step: int
    last_checkpoint: Path | None
    images_per_second: float
    final_loss: float


class Trainer:
    """Builds everything from a Config and runs (or resumes) training to ``total_steps``."""

    def __init__(self, cfg: Config, resume: str | None = None, progress: bool = True) -> None:
        self.cfg = cfg
        self.progress = progress
        self.device = resolve_device(cfg.device)
        self.log_dir = Path(cfg.log_dir)
        torch.manual_seed(cfg.seed)
        self.dataset = ImageFolderDataset(cfg.data_dir, image_size=cfg.image_size, with_labels=cfg.class_cond)
        self.system = TransmissionSystem(cfg).to(self.device)
        if cfg.mode == "frozen":
            load_jscc_into(self.system, cfg.jscc_encoder_path)
        self.optimizer = torch.optim.AdamW(self.system.trainable_parameters(), lr=cfg.lr,
                                           weight_decay=cfg.weight_decay)
        self.ema = AveragedModel(self.system, multi_avg_fn=ema_with_warmup(cfg.ema_rate), use_buffers=True)
        self.step = 0
        self._stop_signal: int | None = None
        if resume:
            self._resume(resume)

    # ---- checkpoints ------------------------------------------------------------------------
    def _resume(self, resume: str) -> None:
        if resume == "auto":
            found = latest_valid_checkpoint(self.log_dir)
            if found is None:
                return  # nothing to resume: a fresh start, as a pre-empted job's first launch
            path, payload = found
        else:
            path, payload = Path(resume), load_checkpoint(resume)
        saved = payload["config"]
        for key in ("mode", "encoder", "image_size", "c_out", "latent_dim", "num_channels", "channel_mult",
                    "num_res_blocks", "attention_resolutions", "learn_sigma", "diffusion_steps",
                    "noise_schedule", "class_cond", "jscc_num_filters", "jscc_norm"):
            if saved.get(key) != getattr(self.cfg, key):
                raise UserError(f"checkpoint {path} was trained with {key}={saved.get(key)!r}, "
                                f"but the config says {key}={getattr(self.cfg, key)!r}")
        try:
            self.system.load_state_dict(payload["model"])
            self.ema.module.load_state_dict(payload["ema"])
            self.optimizer.load_state_dict(payload["optimizer"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise UserError(f"checkpoint {path} does not fit this config: {str(err).splitlines()[0]}") from None
        self.ema.n_averaged.fill_(int(payload.get("ema_updates", payload["step"])))
        self.step = int(payload["step"])
        if "rng_state" in payload:
            torch.set_rng_state(payload["rng_state"])
        tqdm.write(f"resumed from {path} at step {self.step}")

    def save(self) -> Path:
        payload = {
            "model": self.system.state_dict(),
            "ema": self.ema.module.state_dict(),
            "ema_updates": int(self.ema.n_averaged.item()),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "config": self.cfg.to_dict(),
            "rng_state": torch.get_rng_state(),
            "versions": {"torch": str(torch.__version__), "diffjscc": __version__},
        }
        path = save_checkpoint(payload, checkpoint_path(self.log_dir, self.step))
        prune_checkpoints(self.log_dir, self.cfg.keep_checkpoints)
        return path

    def describe(self) -> str:
        """One line on what is being trained: mode, size, channel, k/n, data, device."""
        cfg = self.cfg
        trainable = sum(p.numel() for p in self.system.trainable_parameters())
        parts = [f"mode={cfg.mode}", f"{trainable / 1e6:.2f}M trainable parameters",
                 f"{len(self.dataset)} images from {cfg.data_dir}", f"batch {cfg.batch_size}", f"device {self.device}"]
        if cfg.has_encoder:
            snr = f"SNR {cfg.snr_range[0]:g}..{cfg.snr_range[1]:g} dB" if cfg.snr_range else f"SNR {cfg.snr_db:g} dB"
            ratio = bandwidth_ratio(cfg.latent_dim, (3, cfg.image_size, cfg.image_size))
            parts.insert(2, f"channel {cfg.channel} at {snr}, {cfg.latent_dim} symbols/image (k/n = {ratio:.4f})")
        return ", ".join(parts)

    # ---- loop -------------------------------------------------------------------------------
    def _lr_at(self, step: int) -> float:
        if not self.cfg.lr_anneal:
            return self.cfg.lr
        return self.cfg.lr * max(0.0, 1.0 - step / self.cfg.total_steps)

    def _on_signal(self, signum: int, _frame) -> None:
        self._stop_signal = signum

    def train(self) -> TrainResult:
        cfg = self.cfg
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.log_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        sampler = EpochBatchSampler(len(self.dataset), cfg.batch_size, cfg.seed, start_step=self.step)
        # Its own generator: creating the iterator must not draw from the global RNG, whose
        # state a resumed run restores (so that noise and channel draws continue exactly).
        loader = DataLoader(self.dataset, batch_sampler=sampler, num_workers=cfg.num_workers,
                            pin_memory=self.device.type == "cuda",
                            generator=torch.Generator().manual_seed(cfg.seed))
        run_log = RunLog(self.log_dir)
        tqdm.write(self.describe())
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        bar = tqdm(total=cfg.total_steps, initial=self.step, disable=not self.progress,
                   desc=f"train[{cfg.mode}]", dynamic_ncols=True)
        last_path: Path | None = None
        nonfinite_in_a_row, nonfinite_total = 0, 0
        window_images, window_start = 0, time.perf_counter()
        images_per_second, loss_value = 0.0, float("nan")
        self.system.train()
        batches = iter(loader)
        try:
            while self.step < cfg.total_steps:
                images, labels = self._to_device(next(batches))
                for group in self.optimizer.param_groups:
                    group["lr"] = self._lr_at(self.step)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                    terms = training_loss(self.system, images, labels)
                loss = terms["loss"]
                self.optimizer.zero_grad(set_to_none=True)
                if not torch.isfinite(loss):
                    nonfinite_in_a_row += 1
                    nonfinite_total += 1
                    if nonfinite_in_a_row >= MAX_NONFINITE_IN_A_ROW:
                        raise UserError(f"training loss was not finite for {nonfinite_in_a_row} steps in a row "
                                        f"at step {self.step}; lower lr or disable bf16")
                    tqdm.write(f"step {self.step}: non-finite loss, step skipped")
                    continue
                nonfinite_in_a_row = 0
                loss.backward()
                grad_norm = (torch.nn.utils.clip_grad_norm_(self.system.trainable_parameters(), cfg.grad_clip)
                             if cfg.grad_clip > 0 else torch.tensor(float("nan")))
                self.optimizer.step()
                self.ema.update_parameters(self.system)
                self.step += 1
                loss_value = loss.item()
                window_images += images.shape[0]
                bar.update(1)
                if self.step % cfg.log_interval == 0 or self.step == cfg.total_steps:
                    elapsed = time.perf_counter() - window_start
                    images_per_second = window_images / max(elapsed, 1e-9)
                    record = {"step": self.step, "lr": self._lr_at(self.step - 1),
                              "grad_norm": float(grad_norm), "img_per_s": images_per_second,
                              "skipped_nonfinite": nonfinite_total,
                              **{k: float(v.detach()) for k, v in terms.items()}}
                    run_log.write(record)
                    bar.set_postfix(loss=f"{loss_value:.4f}", img_s=f"{images_per_second:.1f}")
                    window_images, window_start = 0, time.perf_counter()
                if self.step % cfg.save_interval == 0 or self.step == cfg.total_steps:
                    last_path = self.save()
                if cfg.sample_interval and self.step % cfg.sample_interval == 0 and self.step != cfg.total_steps:
                    self.write_sample_grid()
                if self._stop_signal is not None:
                    last_path = self.save()
                    tqdm.write(f"received signal {self._stop_signal}: saved {last_path}, exiting")
                    raise SystemExit(128 + self._stop_signal)
            if last_path is None:  # resumed at (or past) the end: nothing new to save
                last_path = checkpoint_path(self.log_dir, self.step)
            self.write_sample_grid()
        finally:
            bar.close()
            run_log.close()
            for s, handler in previous.items():
                signal.signal(s, handler)
        return TrainResult(self.step, last_path, images_per_second, loss_value)

    def _to_device(self, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        images, labels = (batch if isinstance(batch, (tuple, list)) else (batch, None))
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True) if labels is not None else None
        return images, labels

    # ---- sample grid ------------------------------------------------------------------------
    @torch.no_grad()
    def write_sample_grid(self) -> Path:
        """PNG rows: source | received-decoded | diffusion output, from the EMA weights."""
        from diffjscc.evaluation.figures import save_image_grid
        from diffjscc.evaluation.receivers import reconstruct_rows

        source_dir = self.cfg.test_dir or self.cfg.data_dir
        dataset = (self.dataset if source_dir == self.cfg.data_dir
                   else ImageFolderDataset(source_dir, image_size=self.cfg.image_size,
                                           with_labels=self.cfg.class_cond))
        count = min(GRID_IMAGES, len(dataset))
        items = [dataset[i] for i in range(count)]
        images = torch.stack([it[0] if isinstance(it, tuple) else it for it in items]).to(self.device)
        labels = (torch.tensor([it[1] for it in items], device=self.device)
                  if self.cfg.class_cond else None)
        model = self.ema.module
        was_training = model.training
        model.eval()
        generator = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
        rows, names = reconstruct_rows(model, images, labels, steps=self.cfg.sample_steps, generator=generator)
        model.train(was_training)
        path = self.log_dir / f"samples_{self.step:07d}.png"
        save_image_grid(rows, path, row_labels=names)
        return path
