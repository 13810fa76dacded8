"""SNR adaptation: one SNR-adaptive model against models trained at a single SNR each.

Trains, with the same number of steps each, Deep JSCC models (``mode: jscc``) at every SNR of
``--train-snrs``, one model on the SNR range [lo, hi] without SNR input, and one SNR-adaptive
model (ADJSCC attention on the SNR in encoder and decoder) on the same range; then scores all
of them with the evaluation protocol on held-out CIFAR-10 images at ``--eval-snrs`` (which go
below the range, to show whether the adaptive model degrades gracefully there or falls off a
cliff). Target: the adaptive model within 1 dB PSNR of the model trained at each SNR.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.common import add_data_arguments, machine_info, prepare_cifar, write_json
from diffjscc.channel import parse_snr_list
from diffjscc.config import load_config
from diffjscc.evaluation.sweep import Protocol, load_models, run_protocol
from diffjscc.training.runs import train_or_reuse

TARGET_DB = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/tiny.yaml")
    add_data_arguments(parser, data_root=False)  # its data lives under --work (a per-split limit)
    parser.add_argument("--work", type=Path, default=Path("bench/work/snr_adaptive"),
                        help="data, checkpoints (reused when present: delete to retrain)")
    parser.add_argument("--train-snrs", default="0,5,10,15,20")
    parser.add_argument("--eval-snrs", default="-6,-3,0,5,10,15,20",
                        help="write negative values as --eval-snrs=-6,0,10")
    parser.add_argument("--steps", type=int, default=2000, help="training steps per model")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--test-images", type=int, default=1000)
    parser.add_argument("--data-limit", type=int, default=None, help="extract at most N images per split")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every model")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op CPU threads (default: torch's); 1 when other jobs share the cores")
    parser.add_argument("--json", type=Path, default=Path("bench/results/snr_adaptive.json"))
    parser.set_defaults(run=run)


def _train(args, train_dir: Path, name: str, overrides: list[str]) -> Path:
    """Train one model (or reuse a finished run of it); returns its final checkpoint."""
    log_dir = args.work / name
    cfg = load_config(args.config, [
        "mode=jscc", f"data_dir={train_dir}", f"log_dir={log_dir}", f"total_steps={args.steps}",
        f"save_interval={args.steps}", f"batch_size={args.batch_size}", "sample_interval=0",
        *args.overrides, *overrides])
    run = train_or_reuse(cfg)
    if not run.reused:
        print(f"{name}: {run.step} steps, {run.images_per_second:.0f} img/s, {run.seconds:.0f} s", flush=True)
    return run.checkpoint


def run(args: argparse.Namespace) -> int:
    train_snrs = parse_snr_list(args.train_snrs)
    eval_snrs = parse_snr_list(args.eval_snrs)
    lo, hi = min(train_snrs), max(train_snrs)
    train_dir, test_dir = prepare_cifar(args.archive, args.work / "data", args.data_limit)
    models = {f"single {snr:g} dB": [f"snr_db={snr}", "snr_range=[]"] for snr in train_snrs}
    models[f"range {lo:g}..{hi:g} dB"] = [f"snr_range=[{lo},{hi}]"]
    models[f"adaptive {lo:g}..{hi:g} dB"] = [f"snr_range=[{lo},{hi}]", "snr_adaptive=true"]
    checkpoints = {name: _train(args, train_dir, name.replace(" ", "_").replace("..", "-"), over)
                   for name, over in models.items()}

    evaluated = load_models(list(checkpoints.values()))
    document = run_protocol(evaluated, test_dir, Protocol(snrs=eval_snrs, limit=args.test_images),
                            fid_info={"skipped": "FID not computed in this benchmark"},
                            progress=False, echo=lambda *a, **k: None)
    label_of = {str(path): name for name, path in checkpoints.items()}
    psnr = {(label_of[row["checkpoint"]], row["snr_db"]): row["psnr"] for row in document["results"]}

    header = ["eval SNR dB", "trained at this SNR", "best single-SNR", f"range {lo:g}..{hi:g}",
              f"adaptive {lo:g}..{hi:g}", "adaptive − this SNR's", "within 1 dB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    summary = []
    for snr in eval_snrs:
        matched = psnr.get((f"single {snr:g} dB", snr))
        best = max(psnr[(f"single {s:g} dB", snr)] for s in train_snrs)
        adaptive = psnr[(f"adaptive {lo:g}..{hi:g} dB", snr)]
        ranged = psnr[(f"range {lo:g}..{hi:g} dB", snr)]
        gap = None if matched is None else adaptive - matched
        summary.append({"snr_db": snr, "matched_single": matched, "best_single": best, "range": ranged,
                        "adaptive": adaptive, "adaptive_minus_matched": gap,
                        "within_target": None if gap is None else gap >= -TARGET_DB})
        cell = (lambda v: "—" if v is None else f"{v:.2f}")
        lines.append(f"| {snr:g} | {cell(matched)} | {best:.2f} | {ranged:.2f} | {adaptive:.2f} | "
                     f"{'—' if gap is None else f'{gap:+.2f}'} | "
                     f"{'—' if gap is None else ('yes' if gap >= -TARGET_DB else 'NO')} |")
    table = "\n".join(lines)
    print(f"PSNR dB (Deep JSCC receivers, {args.test_images} test images, AWGN, "
          f"{args.steps} steps × batch {args.batch_size} per model)")
    print(table)
    write_json(args.json, {
        "benchmark": "snr_adaptive", "config": args.config, "steps": args.steps, "batch_size": args.batch_size,
        "test_images": args.test_images, "train_snrs": train_snrs, "eval_snrs": eval_snrs,
        "machine": machine_info(), "summary": summary, "rows": document["results"]})
    args.json.with_suffix(".md").write_text(table + "\n")
    return 0
