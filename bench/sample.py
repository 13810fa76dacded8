"""Network evaluations against quality: PSNR, fd_cls and images/s of the diffusion receiver for
each sampler (DDIM, DPM-Solver++(2M)) and timestep spacing (the model's own and ``quadratic``) at
1, 2, 4, 8, 20 and 50 evaluations per image.

On a trained checkpoint (``--checkpoint``, a shipped ``--model``, or a residual v-prediction
receiver trained here for ``--train-steps`` steps on the CIFAR-10 subset and reused on the next
run), each (sampler, steps) is scored by the evaluation protocol on real test images spread over
every class at AWGN ``--snr`` dB (Gaussian start: a real receiver), with the shipped classifier's
``fd_cls``, and its sampling speed is timed on its own (encoder + channel + sampler, no scoring),
interleaved over rounds so that every row sees the same machine load. Target: a sampler with
≤ 8 evaluations within 0.3 dB PSNR and 10 % fd_cls of 50-step DDIM (the reference is DDIM at the
largest step count run, on the first spacing listed).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from bench.common import add_data_arguments, machine_info, prepare_cifar, spread_subset, write_json
from diffjscc.config import SPACINGS, load_config
from diffjscc.diffusion.samplers import check_spacing, resolve_sampler
from diffjscc.data import ImageFolderDataset
from diffjscc.errors import UserError
from diffjscc.evaluation.sweep import Protocol, load_models, run_protocol
from diffjscc.training.runs import train_or_reuse

TARGET_NFE, TARGET_DB, TARGET_FD = 8, 0.3, 0.10  # against DDIM at the largest step count (50 by default)
# The receiver trained when no --checkpoint is given: the best of `bench quality` (joint mode
# trains its Deep JSCC decoder beside the diffusion); --set overrides it.
DEFAULT_RECEIVER = ["conditioning=residual", "prediction=v"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/tiny.yaml", help="config to train when no --checkpoint")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a trained diffusion checkpoint (.pt)")
    parser.add_argument("--model", default=None, help="a shipped diffusion receiver (diffjscc models) instead")
    parser.add_argument("--train-steps", type=int, default=600, help="training steps of the checkpoint trained here")
    add_data_arguments(parser)
    parser.add_argument("--work", type=Path, default=Path("bench/work/sample"),
                        help="the trained checkpoint (reused when present: delete to retrain) and the test subset")
    parser.add_argument("--steps", default="1,2,4,8,20,50", help="comma-separated network evaluations per image")
    parser.add_argument("--samplers", default="ddim,dpm++2m", help="comma-separated samplers (ddim, dpm++2m)")
    parser.add_argument("--spacings", default="",
                        help=f"comma-separated timestep spacings ({', '.join(SPACINGS)}; default: the model's "
                             "sample_spacing, then quadratic but for epsilon models); the reference is DDIM "
                             "on the first")
    parser.add_argument("--snr", type=float, default=10.0, help="AWGN SNR in dB")
    parser.add_argument("--test-images", type=int, default=500,
                        help="test images scored per row, spread over the classes (fd_cls needs a few hundred)")
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


def time_sampling(system, images: torch.Tensor, rows: list[tuple[str, str, int]], snr: float,
                  rounds: int) -> dict[tuple[str, str, int], float]:
    """Fastest seconds per batch of transmit + receive, per (sampler, spacing, steps), interleaved rounds."""
    best = {row: math.inf for row in rows}
    with torch.no_grad():
        for _ in range(rounds):
            for sampler, spacing, steps in rows:
                generator = torch.Generator(device=images.device).manual_seed(0)
                start = time.perf_counter()
                received = system.transmit(images, snr_db=snr, generator=generator)
                system.receive(received, steps=steps, sampler=sampler, spacing=spacing, generator=generator,
                               snr_db=snr)
                if images.device.type == "cuda":
                    torch.cuda.synchronize()
                key = sampler, spacing, steps
                best[key] = min(best[key], time.perf_counter() - start)
    return best


def meets_target(row: dict) -> bool:
    """≤ TARGET_NFE evaluations, PSNR within TARGET_DB of the reference either way (a few-step
    sampler that lands nearer the blurry MMSE estimate scores higher PSNR without reproducing the
    reference's samples), and fd_cls at most TARGET_FD above the reference's."""
    return (row["steps"] <= TARGET_NFE and abs(row["psnr_minus_reference"]) <= TARGET_DB
            and row["fd_cls_ratio"] is not None and row["fd_cls_ratio"] <= 1 + TARGET_FD)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def run(args) -> int:
    from diffjscc.evaluation.classifier import load_classifier
    from diffjscc.evaluation.realism import RealismScorer
    from diffjscc.runtime.pretrained import checkpoint_for

    steps_list = [int(s) for s in args.steps.split(",") if s.strip()]
    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    for sampler in samplers:
        resolve_sampler(sampler, 1)  # a one-line error for an unknown name
    spacings = list(dict.fromkeys(s.strip() for s in args.spacings.split(",") if s.strip()))
    for spacing in spacings:
        check_spacing(spacing)  # a one-line error before any training
    train_dir, test_dir = prepare_cifar(args.archive, args.data_root)
    trained_here = args.checkpoint is None and args.model is None
    if trained_here:
        checkpoint = train_checkpoint(args.config, train_dir, args.work / "run", args.train_steps,
                                      [f"device={args.device}", *DEFAULT_RECEIVER, *args.overrides])
    else:
        checkpoint = checkpoint_for(args.checkpoint, args.model)
    test_dir = spread_subset(test_dir, args.test_images, args.work / f"test_{args.test_images}")
    models = load_models([checkpoint], device=args.device, names=[args.model])
    system = models[0].system
    if system.unet is None:
        raise UserError(f"{checkpoint} has no diffusion receiver (mode {system.cfg.mode})")
    realism = RealismScorer(load_classifier(), seed=0)

    quadratic = [] if system.cfg.prediction == "epsilon" else ["quadratic"]  # ε models cannot start at T−1
    spacings = spacings or list(dict.fromkeys([system.cfg.sample_spacing, *quadratic]))
    grid = [(sampler, spacing, steps) for spacing in spacings for sampler in samplers for steps in steps_list]
    rows: dict[tuple[str, str, int], dict] = {}
    deep = None
    for sampler, spacing, steps in grid:
        protocol = Protocol(snrs=[args.snr], starts=("gaussian",), steps=steps, sampler=sampler, spacing=spacing)
        document = run_protocol(models, test_dir, protocol, fid_info={"skipped": "FID not computed in this benchmark"},
                                realism=realism, progress=False, echo=lambda *a, **k: None)
        row = next(r for r in document["results"] if r["start"] == "gaussian")
        deep = next((r for r in document["results"] if r["receiver"] == "deep_jscc"), deep)
        rows[sampler, spacing, steps] = {"sampler": sampler, "spacing": spacing, "steps": steps, "psnr": row["psnr"],
                                         "ssim": row["ssim"], "fd_cls": row["fd_cls"], "n": row["n"]}
        print(f"  {sampler:>8} {spacing:>9} {steps:>3} evaluations: PSNR {row['psnr']:.2f} dB, "
              f"fd_cls {_number(row['fd_cls'])}", flush=True)

    dataset = ImageFolderDataset(test_dir, image_size=system.cfg.image_size)
    test_images, _ = dataset.first(args.timing_images, args.device)
    seconds = time_sampling(system, test_images, grid, args.snr, args.rounds)
    for key in grid:
        rows[key]["images_per_s"] = test_images.shape[0] / seconds[key]

    reference_key = ("ddim", spacings[0], max(steps_list)) if "ddim" in samplers else grid[-1]
    reference = rows[reference_key]
    for row in rows.values():
        row["psnr_minus_reference"] = row["psnr"] - reference["psnr"]
        row["fd_cls_ratio"] = (row["fd_cls"] / reference["fd_cls"]
                               if row["fd_cls"] is not None and reference["fd_cls"] else None)
        row["meets_target"] = meets_target(row)
    passing = [row for row in rows.values() if row["meets_target"]]
    best = min(passing, key=lambda row: (row["steps"], row["sampler"], row["spacing"]), default=None)

    label = f"{reference_key[0]} {reference_key[2]} {reference_key[1]}"
    print(f"\nsamplers on {checkpoint} ({system.cfg.mode}), AWGN {args.snr:g} dB, "
          f"Gaussian start, PSNR and fd_cls over {reference['n']} test images (every class); img/s timed on "
          f"{test_images.shape[0]}")
    print(f"{'sampler':>8}{'spacing':>10}{'NFE':>5}{'img/s':>9}{'PSNR dB':>9}{'SSIM':>8}{'fd_cls':>8}"
          f"{f'Δ vs {label}':>24}{'fd ratio':>10}")
    for key in grid:
        row = rows[key]
        print(f"{row['sampler']:>8}{row['spacing']:>10}{row['steps']:>5}{row['images_per_s']:>9.2f}"
              f"{row['psnr']:>9.2f}{row['ssim']:>8.4f}"
              f"{_number(row['fd_cls']):>8}{row['psnr_minus_reference']:>+24.2f}{_number(row['fd_cls_ratio']):>10}")
    if deep is not None:
        print(f"(Deep JSCC decoder of the same checkpoint: {deep['psnr']:.2f} dB, fd_cls {_number(deep['fd_cls'])})")
    print(f"target: <= {TARGET_NFE} evaluations within {TARGET_DB} dB PSNR and {TARGET_FD:.0%} fd_cls of {label}: "
          + (f"met by {best['sampler']} ({best['spacing']} spacing) at {best['steps']}" if best else "NOT met"))
    write_json(args.results / "sample.json", {
        "benchmark": "sample", "checkpoint": str(checkpoint), "model": args.model, "trained_here": trained_here,
        "train_steps": args.train_steps if trained_here else None, "mode": system.cfg.mode,
        "sample_spacing": system.cfg.sample_spacing, "spacings": spacings, "snr_db": args.snr, "start": "gaussian",
        "test_images": reference["n"], "timing_images": int(test_images.shape[0]), "rounds": args.rounds,
        "threads": torch.get_num_threads(),
        "deep_jscc": None if deep is None else {"psnr": deep["psnr"], "fd_cls": deep["fd_cls"]},
        "target": {"max_evaluations": TARGET_NFE, "reference": list(reference_key), "within_db": TARGET_DB,
                   "within_fd_cls": TARGET_FD, "met": best is not None,
                   "met_by": None if best is None else [best["sampler"], best["spacing"], best["steps"]]},
        "machine": machine_info(), "rows": [rows[key] for key in grid]})
    return 0
