"""Quality per compute: a converged Deep JSCC against diffusion receivers, with controls.

On the CIFAR-10 subset, k/n = 1/6 real (1/12 complex; the config's 512 symbols), AWGN at
``--snr`` dB: train the Deep JSCC baseline (``mode: jscc``) with its own recipe and budget
(``--jscc-images``, batch 64, learning rate 1e-3 annealed to 0), then one diffusion receiver per
``--conditioning`` and ``--prediction`` (ε, x_0 or v) on that frozen encoder (``mode: frozen``),
each for ``--images`` training images.

**Convergence criterion of the baseline**: its PSNR on ``--validation-images`` held-out images
(disjoint from the scored test images) is measured at each of its last checkpoints (every tenth
of the run); it counts as converged when the last checkpoint is less than
:data:`CONVERGED_DB` above the one a tenth of the run earlier. The curve and the verdict are
printed and recorded; a baseline that is not converged is said to be so in the table's heading.

Score them all on held-out test images with the evaluation protocol: the Deep JSCC decoder, one
diffusion sample (Gaussian start: a real receiver), the ``mean`` of K samples (an MMSE
estimate), the ORACLE inversion start (x_T from the source image, which a receiver does not
have: an upper bound), and the controls ``source`` and ``control_noise`` (Deep JSCC plus noise
at each diffusion sample's PSNR), with the realism scores ``fd_cls``/``kid_cls``/``acc_cls``
(the shipped classifier's features: not Inception FID/KID). Every row gives its training FLOPs
and wall time; the models are *not* trained at equal compute, and the table never says so.

Targets: one diffusion sample within 3 dB PSNR of Deep JSCC, the mean within 1 dB — and, since
``control_noise`` meets the first by construction, a lower ``fd_cls`` than both Deep JSCC and
``control_noise`` (the verdict lines).
Runs are kept under ``--work`` and reused (delete them to retrain).

``--preset targets`` instead scores the shipped receivers against the receiver targets in their
three settings (:mod:`bench.quality_targets`), without training.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench import quality_targets
from bench.common import add_data_arguments, machine_info, prepare_cifar, spread_subset, write_json
from bench.train_step import train_flops_per_image
from diffjscc.config import CONDITIONINGS, PREDICTIONS, START_MODES, load_config
from diffjscc.errors import UserError
from diffjscc.evaluation.classifier import load_classifier
from diffjscc.evaluation.realism import RealismScorer
from diffjscc.evaluation.sweep import Protocol, load_models, run_protocol
from diffjscc.runtime.checkpoint import list_checkpoints
from diffjscc.receivers import Receiver, ReceiveContext, available, receive
from diffjscc.training.runs import train_or_reuse

TARGETS_DB = {"gaussian": 3.0, "mean": 1.0}  # allowed PSNR deficit against Deep JSCC
# About 20 minutes per tiny diffusion model on this 2-core machine (measured ~33 img/s when shared
# with other jobs); --quick: about a minute per model.
FULL_BUDGET = {"images": 40000, "test_images": 256, "jscc_images": 1_280_000, "validation_images": 500}
QUICK_BUDGET = {"images": 2000, "test_images": 64, "jscc_images": 2000, "validation_images": 64}
# The Deep JSCC recipe (20 000 steps of 64: ~25 min on 2 cores): 27.0 dB at 10 dB in the receiver issue's run
JSCC_RECIPE = ["batch_size=64", "lr=1.0e-3", "lr_anneal=true"]
CHECKPOINTS_KEPT = 10  # the baseline's convergence curve: one checkpoint every tenth of its run
CONVERGED_DB = 0.1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=["targets"], default=None,
                        help="targets: score the shipped receivers in the three settings of the receiver targets "
                             "(512 symbols at 0 and 10 dB, 128 at 10 dB; 1,000 test images; no training)")
    quality_targets.add_arguments(parser)
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--images", type=int, default=None,
                        help=f"training images seen per diffusion receiver (default {FULL_BUDGET['images']}: ~20 "
                             f"min per tiny model on 2 CPU cores; --quick: {QUICK_BUDGET['images']}, ~1 min)")
    parser.add_argument("--jscc-images", type=int, default=None,
                        help=f"training images of the Deep JSCC baseline (default {FULL_BUDGET['jscc_images']}: "
                             f"~25 min on 2 CPU cores; --quick: {QUICK_BUDGET['jscc_images']})")
    parser.add_argument("--validation-images", type=int, default=None,
                        help=f"held-out images of the baseline's convergence check, disjoint from the test images "
                             f"(default {FULL_BUDGET['validation_images']}; --quick: "
                             f"{QUICK_BUDGET['validation_images']})")
    parser.add_argument("--quick", action="store_true",
                        help="a budget of about a minute per model and 64 test images: shows that it works")
    parser.add_argument("--conditioning", default=",".join(CONDITIONINGS),
                        help="comma-separated diffusion receivers to train: embed, spatial, residual")
    parser.add_argument("--prediction", default="epsilon",
                        help="comma-separated diffusion parametrisations to train for each conditioning: "
                             "epsilon (the original), x0, v")
    parser.add_argument("--starts", default=",".join(START_MODES),
                        help="comma-separated start modes: gaussian, mean, inversion (ORACLE)")
    parser.add_argument("--samples-per-image", type=int, default=4, help="K samples averaged by the mean start")
    parser.add_argument("--sampling-steps", type=int, default=20, help="DDIM steps of the diffusion receivers")
    parser.add_argument("--snr", type=float, default=10.0, help="AWGN SNR in dB (training and evaluation)")
    parser.add_argument("--test-images", type=int, default=None,
                        help=f"held-out images scored (default {FULL_BUDGET['test_images']}; --quick: "
                             f"{QUICK_BUDGET['test_images']}), spread over every class")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (default: the config's)")
    add_data_arguments(parser)
    parser.add_argument("--work", type=Path, default=Path("bench/work/quality"),
                        help="training runs (reused when present) and the test subset")
    parser.add_argument("--threads", type=int, default=None, help="intra-op CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every model")
    parser.add_argument("--train-only", action="store_true",
                        help="train (or find) the models and stop: several invocations with different "
                             "--conditioning/--prediction can train in parallel, then one run scores them all")
    parser.add_argument("--results", type=Path, default=Path("bench/results"),
                        help="folder for quality.json and quality.md")
    parser.set_defaults(run=run)


def _train(config: str, log_dir: Path, overrides: list[str], images: int, checkpoints: int = 1) -> dict:
    """Train one model for ``images`` training images (or reuse the finished run), keeping
    ``checkpoints`` evenly spaced checkpoints; its record, kept in ``bench_training.json`` beside
    the run so that a reused run keeps its training time."""
    cfg = load_config(config, overrides + [f"log_dir={log_dir}", "sample_interval=0"])
    steps = max(math.ceil(images / cfg.batch_size), 1)
    every = max(steps // checkpoints, 1)
    cfg = load_config(config, overrides + [f"log_dir={log_dir}", "sample_interval=0", f"total_steps={steps}",
                                           f"save_interval={every}", f"keep_checkpoints={checkpoints}",
                                           f"log_interval={min(cfg.log_interval, steps)}"])
    run = train_or_reuse(cfg)
    record_path = log_dir / "bench_training.json"
    if run.reused and record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("steps") == run.step:  # the record of this run (the folder may have moved since)
            return {"train_flops": record["train_flops_per_image"] * record["images"], **record,
                    "checkpoint": str(run.checkpoint)}
    record = {"checkpoint": str(run.checkpoint), "overrides": overrides, "steps": run.step,
              "batch_size": cfg.batch_size, "images": run.step * cfg.batch_size,
              "seconds": None if run.reused else run.seconds,  # None: reused a run trained without this record
              "mode": cfg.mode, "conditioning": cfg.conditioning if cfg.has_diffusion else None,
              "prediction": cfg.prediction if cfg.has_diffusion else None,
              "train_flops_per_image": train_flops_per_image(cfg)}
    record["train_flops"] = record["train_flops_per_image"] * record["images"]
    record_path.write_text(json.dumps(record, indent=2))
    if not run.reused:
        print(f"{log_dir.name}: {steps} steps x {cfg.batch_size} images in {run.seconds / 60:.1f} min", flush=True)
    return record


@torch.no_grad()
def _receiver_flops_per_image(system, steps: int, samples: int) -> dict[str, float]:
    """FLOPs per output image of each receiver the system has (encoder and channel excluded), by
    start mode (``deep_jscc`` for the decoder): one sample's for ``gaussian``, K samples' for ``mean``."""
    device = next(system.parameters()).device  # the image and draws on the model's device (CUDA too)
    image = torch.zeros(1, 3, system.cfg.image_size, system.cfg.image_size, device=device)
    received = system.transmit(image, generator=torch.Generator(device=device).manual_seed(0))

    def count(receiver: Receiver) -> float:
        context = ReceiveContext(snr_db=system.cfg.snr_db, steps=steps, samples=samples, source=image,
                                 generator=torch.Generator(device=device).manual_seed(0))
        with FlopCounterMode(display=False) as counter:
            outputs = receive(system, receiver, received, context).shape[0]
        return float(counter.get_total_flops()) / outputs

    return {receiver.start or receiver.name: count(receiver) for receiver in available(system)}


def _convergence(run_dir: Path, validation_dir: Path, snr: float) -> dict:
    """The baseline's PSNR on the validation images at each kept checkpoint, and the verdict."""
    curve = []
    for checkpoint in list_checkpoints(run_dir):
        document = run_protocol(load_models([checkpoint]), validation_dir, Protocol(snrs=[snr]),
                                fid_info={"skipped": "not computed"}, progress=False, echo=lambda *a, **k: None)
        row = next(r for r in document["results"] if r["receiver"] == "deep_jscc")
        curve.append({"step": int(checkpoint.stem.split("_")[-1]), "psnr": row["psnr"]})
    gain = curve[-1]["psnr"] - curve[-2]["psnr"] if len(curve) > 1 else math.nan
    return {"criterion": f"PSNR on {_count(validation_dir)} held-out validation images gains less than "
                         f"{CONVERGED_DB:g} dB over the last tenth of the run",
            "curve": curve, "last_gain_db": gain, "converged": bool(gain < CONVERGED_DB)}


def _count(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.suffix == ".png")


def run(args) -> int:
    if args.preset == "targets":
        return quality_targets.run(args)
    budget = QUICK_BUDGET if args.quick else FULL_BUDGET
    images = args.images or budget["images"]
    jscc_images = args.jscc_images or budget["jscc_images"]
    test_count = args.test_images or budget["test_images"]
    conditionings = [c.strip() for c in args.conditioning.split(",") if c.strip()]
    predictions = [p.strip() for p in args.prediction.split(",") if p.strip()]
    starts = tuple(s.strip() for s in args.starts.split(",") if s.strip())
    for name in conditionings:
        if name not in CONDITIONINGS:
            raise UserError(f"unknown conditioning {name!r}; expected {', '.join(CONDITIONINGS)}")
    for name in predictions:
        if name not in PREDICTIONS:
            raise UserError(f"unknown prediction {name!r}; expected {', '.join(PREDICTIONS)}")
    # one receiver per (conditioning, prediction); ε-prediction keeps the plain name (and run folder)
    receivers = {(c if p == "epsilon" else f"{c}, {p}"): (c, p) for c in conditionings for p in predictions}
    train_dir, test_dir = prepare_cifar(args.archive, args.data_root)
    scored_dir = spread_subset(test_dir, test_count, args.work / f"test_{test_count}")
    validation_count = args.validation_images or budget["validation_images"]
    validation_dir = spread_subset(test_dir, validation_count, args.work / f"validation_{validation_count}",
                                   exclude=scored_dir)
    common = [f"data_dir={train_dir}", f"snr_db={args.snr}", "snr_range=[]", "channel=awgn", f"device={args.device}"]
    batch = [f"batch_size={args.batch_size}"] if args.batch_size else []
    runs = args.work / f"images_{images}"
    jscc_run = args.work / f"jscc_{jscc_images}"
    trained = {"jscc": _train(args.config, jscc_run, common + JSCC_RECIPE + batch + ["mode=jscc", *args.overrides],
                              jscc_images, checkpoints=CHECKPOINTS_KEPT)}
    for name, (conditioning, prediction) in receivers.items():
        extra = [f"conditioning={conditioning}", f"prediction={prediction}"]
        folder = f"frozen_{conditioning}" + ("" if prediction == "epsilon" else f"_{prediction}")
        trained[name] = _train(args.config, runs / folder,
                               common + batch + ["mode=frozen", f"jscc_encoder_path={trained['jscc']['checkpoint']}",
                                                 *extra, *args.overrides], images)

    if args.train_only:
        return 0
    convergence = _convergence(jscc_run, validation_dir, args.snr)
    print(f"Deep JSCC convergence ({convergence['criterion']}): "
          + ", ".join(f"step {p['step']} {p['psnr']:.2f} dB" for p in convergence["curve"][-3:])
          + f" -> {'converged' if convergence['converged'] else 'NOT converged'}", flush=True)
    models = load_models([Path(trained[name]["checkpoint"]) for name in receivers], device=args.device)
    protocol = Protocol(snrs=[args.snr], starts=starts, steps=args.sampling_steps, controls=True,
                        samples_per_image=args.samples_per_image if "mean" in starts else None)
    document = run_protocol(models, scored_dir, protocol, fid_info={"skipped": "FID not computed in this benchmark"},
                            realism=RealismScorer(load_classifier(device=args.device)),
                            progress=False, echo=lambda *a, **k: None)
    label_to_receiver = {model.label: name for model, name in zip(models, receivers)}
    flops = {name: _receiver_flops_per_image(model.system, args.sampling_steps, protocol.samples)
             for model, name in zip(models, receivers)}

    results = document["results"]
    deep = next(r for r in results if r["receiver"] == "deep_jscc")
    source = next(r for r in results if r["receiver"] == "source")
    rows = [_summary_row("Deep JSCC", "-", "-", deep, deep, trained["jscc"], next(iter(flops.values()))["deep_jscc"]),
            _summary_row(source["system"], "-", "-", source, deep, None, 0.0)]
    for result in results:
        if result["receiver"] not in ("diffusion", "control_noise"):
            continue
        name = label_to_receiver[result["model"]]
        control = result["receiver"] == "control_noise"
        rows.append(_summary_row(result["system"], name, "control" if control else result["start"], result, deep,
                                 None if control else trained[name], 0.0 if control else flops[name][result["start"]]))
    table = _markdown(rows)
    state = "converged" if convergence["converged"] else "NOT converged"
    heading = (f"Quality per compute: {args.config}, CIFAR-10 subset, AWGN {args.snr:g} dB, k/n = "
               f"{deep['k_over_n']:.4f} real ({deep['k_over_n_complex']:.4f} complex), Deep JSCC {state} "
               f"({jscc_images} training images), {images} training images per diffusion receiver, "
               f"{deep['n']} test images, DDIM {args.sampling_steps} steps, mean of {protocol.samples}")
    print("\n" + heading)
    print(table)
    notes = ["ORACLE: x_T by DDIM inversion of the source image, which a real receiver does not have: an upper "
             "bound, not a result.",
             f"targets: one sample within {TARGETS_DB['gaussian']:g} dB of Deep JSCC PSNR, the mean within "
             f"{TARGETS_DB['mean']:g} dB; control_noise meets the first by construction, so a receiver counts "
             "only where its fd_cls is also below Deep JSCC's and control_noise's (verdicts below).",
             f"Deep JSCC convergence: {convergence['criterion']}; last gain {convergence['last_gain_db']:+.3f} dB: "
             f"{state}.",
             document["metrics"]["realism"]["note"] + ".",
             "train TFLOP: forward + backward FLOPs of the whole training (train img x per-image FLOPs); "
             "train min: wall time on this machine; rx GFLOP/img: the receiver per transmitted image (encoder "
             "and channel excluded). The models are not trained at equal compute.",
             *[n for n in document["notes"] if n.startswith("verdict")]]
    for note in notes:
        print(note)
    write_json(args.results / "quality.json", {
        "benchmark": "quality", "config": args.config, "snr_db": args.snr, "channel": "awgn",
        "k_over_n": deep["k_over_n"], "k_over_n_complex": deep["k_over_n_complex"], "images_per_model": images,
        "jscc_images": jscc_images, "quick": args.quick, "test_images": deep["n"],
        "sampling_steps": args.sampling_steps, "samples_per_image": protocol.samples, "starts": list(starts),
        "targets_db": TARGETS_DB, "training": trained, "jscc_convergence": convergence, "summary": rows,
        "notes": notes, "machine": machine_info(), "threads": torch.get_num_threads(), "evaluation": document})
    (args.results / "quality.md").write_text(f"{heading}\n\n{table}\n" + "".join(f"\n{n}" for n in notes) + "\n")
    return 0


def _summary_row(system: str, conditioning: str, start: str, result: dict, deep: dict, training: dict | None,
                 receiver_flops: float) -> dict:
    gap = result["psnr"] - deep["psnr"]
    allowed = TARGETS_DB.get(start)
    return {"system": system, "conditioning": conditioning, "start": start,
            "oracle": start == "inversion", "control": bool(result.get("control")),
            "psnr": result["psnr"], "ssim": result["ssim"], "psnr_minus_deep_jscc": gap,
            "ssim_minus_deep_jscc": result["ssim"] - deep["ssim"],
            "fd_cls": result.get("fd_cls"), "kid_cls": result.get("kid_cls"), "acc_cls": result.get("acc_cls"),
            "target_db": allowed, "target_met": None if allowed is None else gap >= -allowed,
            "train_images": None if training is None else training["images"],
            "train_minutes": None if training is None or training["seconds"] is None else training["seconds"] / 60,
            "train_gflop_per_image": None if training is None else training["train_flops_per_image"] / 1e9,
            "train_tflop": None if training is None else training["train_flops"] / 1e12,
            "receiver_gflop_per_image": receiver_flops / 1e9}


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _markdown(rows: list[dict]) -> str:
    header = ["receiver", "conditioning", "PSNR dB", "SSIM", "fd_cls", "kid_cls", "acc_cls", "Δ PSNR vs Deep JSCC",
              "target", "met", "train img", "train TFLOP", "train min", "rx GFLOP/img"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        target = "-" if row["target_db"] is None else f"≥ −{row['target_db']:g} dB"
        met = {None: "-", True: "yes", False: "NO"}[row["target_met"]]
        lines.append(f"| {row['system']} | {row['conditioning']} | {row['psnr']:.2f} | {row['ssim']:.4f} | "
                     f"{_number(row['fd_cls'], '.3f')} | {_number(row['kid_cls'], '.4f')} | "
                     f"{_number(row['acc_cls'], '.3f')} | {row['psnr_minus_deep_jscc']:+.2f} | {target} | {met} | "
                     f"{_number(row['train_images'], 'd')} | {_number(row['train_tflop'], '.1f')} | "
                     f"{_minutes(row['train_minutes'])} | {row['receiver_gflop_per_image']:.3f} |")
    return "\n".join(lines)


def _minutes(minutes: float | None) -> str:
    return "-" if minutes is None else f"{minutes:.1f}"
