"""DDIM steps against quality: images/s and PSNR of the diffusion receiver at 10..250 steps.

On a trained tiny checkpoint (``--checkpoint``, or a residual v-prediction receiver trained here
for ``--train-steps`` steps on the CIFAR-10 subset and reused on the next run), each step count is scored by the evaluation
protocol on real test images at AWGN ``--snr`` dB (Gaussian start: a real receiver), and its
sampling speed is timed on its own (encoder + channel + DDIM, no scoring), interleaved over
rounds so that every step count sees the same machine load. Target: 20 DDIM steps
within 0.5 dB PSNR of 250 steps (met when not more than 0.5 dB below; ``converged`` records
whether the two are within 0.5 dB either way).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from bench.common import add_data_arguments, machine_info, prepare_cifar, spread_subset, write_json
from diffjscc.config import load_config
from diffjscc.data import ImageFolderDataset
from diffjscc.errors import UserError
from diffjscc.evaluation.sweep import Protocol, load_models, run_protocol
from diffjscc.training.runs import train_or_reuse

TARGET_STEPS, TARGET_DB = 20, 0.5  # against the largest step count (250 by default)
# The receiver trained when no --checkpoint is given: the best of `bench quality` (joint mode
# trains its Deep JSCC decoder beside the diffusion); --set overrides it.
DEFAULT_RECEIVER = ["conditioning=residual", "prediction=v"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/tiny.yaml", help="config to train when no --checkpoint")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a trained diffusion checkpoint (.pt)")
    parser.add_argument("--train-steps", type=int, default=600, help="training steps of the checkpoint trained here")
    add_data_arguments(parser)
    parser.add_argument("--work", type=Path, default=Path("bench/work/sample"),
                        help="the trained checkpoint (reused when present: delete to retrain) and the test subset")
    parser.add_argument("--steps", default="10,20,50,100,250", help="comma-separated DDIM step counts")
    parser.add_argument("--snr", type=float, default=10.0, help="AWGN SNR in dB")
    parser.add_argument("--test-images", type=int, default=64,
                        help="test images scored per step count (the 250-step row costs ~3 min per 64 on a CPU core)")
    parser.add_argument("--timing-images", type=int, default=16, help="batch timed per step count and round")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved timing rounds (fastest kept)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for the model trained here")
    parser.add_argument("--results", type=Path, default=Path("bench/results"), help="folder for sample.json")
    parser.set_defaults(run=run)


def train_checkpoint(config: str, train_dir: Path, log_dir: Path, steps: int, overrides: list[str]) -> Path:
    """Train (or finish, or reuse) a diffusion model of ``config`` for ``steps`` steps."""
    cfg = load_config(config, [f"data_dir={train_dir}", f"log_dir={log_dir}", f"total_steps={steps}",
                               f"save_interval={steps}", "sample_interval=0", *overrides])
    run = train_or_reuse(cfg)
    if not run.reused:
        print(f"trained {config} (mode {cfg.mode}) to step {run.step} in {run.seconds:.0f} s → {run.checkpoint}",
              flush=True)
    return run.checkpoint


def time_sampling(system, images: torch.Tensor, steps_list: list[int], snr: float, rounds: int) -> dict[int, float]:
    """Fastest seconds per batch of transmit + DDIM receive, per step count, interleaved rounds."""
    best = {steps: math.inf for steps in steps_list}
    with torch.no_grad():
        for _ in range(rounds):
            for steps in steps_list:
                generator = torch.Generator(device=images.device).manual_seed(0)
                start = time.perf_counter()
                received = system.transmit(images, snr_db=snr, generator=generator)
                system.receive(received, steps=steps, generator=generator)
                if images.device.type == "cuda":
                    torch.cuda.synchronize()
                best[steps] = min(best[steps], time.perf_counter() - start)
    return best


def run(args) -> int:
    steps_list = [int(s) for s in args.steps.split(",") if s.strip()]
    train_dir, test_dir = prepare_cifar(args.archive, args.data_root)
    checkpoint = args.checkpoint
    trained_here = checkpoint is None
    if trained_here:
        checkpoint = train_checkpoint(args.config, train_dir, args.work / "run", args.train_steps,
                                      [f"device={args.device}", *DEFAULT_RECEIVER, *args.overrides])
    test_dir = spread_subset(test_dir, args.test_images, args.work / f"test_{args.test_images}")
    models = load_models([checkpoint], device=args.device)
    system = models[0].system
    if system.unet is None:
        raise UserError(f"{checkpoint} has no diffusion receiver (mode {system.cfg.mode})")

    rows: dict[int, dict] = {}
    for steps in steps_list:
        document = run_protocol(models, test_dir, Protocol(snrs=[args.snr], starts=("gaussian",), steps=steps),
                                fid_info={"skipped": "FID not computed in this benchmark"},
                                progress=False, echo=lambda *a, **k: None)
        row = next(r for r in document["results"] if r["start"] == "gaussian")
        deep = next((r for r in document["results"] if r["receiver"] == "deep_jscc"), None)
        rows[steps] = {"steps": steps, "psnr": row["psnr"], "ssim": row["ssim"], "n": row["n"],
                       "deep_jscc_psnr": deep["psnr"] if deep else None}
        print(f"  {steps:>4} steps: PSNR {row['psnr']:.2f} dB", flush=True)

    dataset = ImageFolderDataset(test_dir, image_size=system.cfg.image_size)
    test_images, _ = dataset.first(args.timing_images, args.device)
    seconds = time_sampling(system, test_images, steps_list, args.snr, args.rounds)
    for steps in steps_list:
        rows[steps]["images_per_s"] = test_images.shape[0] / seconds[steps]

    reference_steps = max(steps_list)  # 250 by default: the reference of the target
    reference = rows[reference_steps]
    for row in rows.values():
        row[f"psnr_minus_{reference_steps}"] = row["psnr"] - reference["psnr"]
    gap = None
    if TARGET_STEPS in rows and reference_steps > TARGET_STEPS:
        gap = rows[TARGET_STEPS]["psnr"] - reference["psnr"]

    print(f"\nDDIM on {checkpoint} ({system.cfg.mode}), AWGN {args.snr:g} dB, Gaussian start, "
          f"PSNR over {rows[steps_list[0]]['n']} test images (every class); img/s timed on {test_images.shape[0]}")
    print(f"{'steps':>6}{'img/s':>10}{'PSNR dB':>10}{'SSIM':>8}{f'Δ vs {reference_steps}':>10}")
    for steps in steps_list:
        row = rows[steps]
        print(f"{steps:>6}{row['images_per_s']:>10.2f}{row['psnr']:>10.2f}{row['ssim']:>8.4f}"
              f"{row[f'psnr_minus_{reference_steps}']:>+10.2f}")
    deep = rows[steps_list[0]]["deep_jscc_psnr"]
    if deep is not None:
        print(f"(Deep JSCC decoder of the same checkpoint: {deep:.2f} dB)")
    if gap is not None:
        print(f"target: {TARGET_STEPS} steps at most {TARGET_DB} dB below {reference_steps}: {gap:+.2f} dB → "
              f"{'met' if gap >= -TARGET_DB else 'NOT met'}")
        if gap > TARGET_DB:
            print(f"note: {TARGET_STEPS} steps score higher than {reference_steps}: PSNR has not converged in the "
                  f"step count (fewer DDIM steps give smoother outputs, which PSNR rewards)")
    write_json(args.results / "sample.json", {
        "benchmark": "sample", "checkpoint": str(checkpoint), "trained_here": trained_here,
        "train_steps": args.train_steps if trained_here else None, "mode": system.cfg.mode,
        "snr_db": args.snr, "start": "gaussian", "test_images": rows[steps_list[0]]["n"],
        "timing_images": int(test_images.shape[0]), "rounds": args.rounds, "threads": torch.get_num_threads(),
        "target": {"steps": TARGET_STEPS, "reference_steps": reference_steps, "within_db": TARGET_DB,
                   "gap_db": gap, "met": None if gap is None else gap >= -TARGET_DB,
                   "converged": None if gap is None else abs(gap) <= TARGET_DB},
        "machine": machine_info(), "rows": [rows[s] for s in steps_list]})
    return 0
