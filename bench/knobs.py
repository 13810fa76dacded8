"""Perception–distortion knobs: PSNR, fd_cls and acc_cls against the guidance scale and DDIM's η.

For one diffusion receiver (``--model`` shipped, or ``--checkpoint``) at one AWGN SNR, runs the
evaluation protocol (one sample per image, Gaussian start, with the noise control) for each
``--guidance`` scale (with the default sampler at ``--steps``) and each ``--eta`` (DDIM at
``--steps``), on test images spread over every class, and writes ``knobs.json`` and
``knobs.png`` (PSNR against ``fd_cls``, one point per setting, Deep JSCC and the source images for
reference). Guidance needs a receiver trained with ``condition_dropout``; its rows cost two network
evaluations per step. ``fd_cls`` is the shipped classifier's Fréchet distance, not Inception FID.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench.common import add_data_arguments, machine_info, prepare_cifar, spread_subset, write_json
from diffjscc.diffusion.samplers import network_evaluations
from diffjscc.errors import UserError
from diffjscc.evaluation.classifier import load_classifier
from diffjscc.evaluation.figures import _new_figure, _save
from diffjscc.evaluation.realism import RealismScorer
from diffjscc.evaluation.sweep import Protocol, load_models, run_protocol
from diffjscc.runtime.pretrained import checkpoint_for


def _numbers(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"expected comma-separated numbers, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="diffusion_512", help="a shipped diffusion receiver (diffjscc models)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a diffusion checkpoint instead of --model")
    parser.add_argument("--label", default=None, help="name of the receiver in the results (default: the model's)")
    parser.add_argument("--snr", type=float, default=0.0, help="AWGN SNR in dB")
    parser.add_argument("--steps", type=int, default=8, help="sampling steps per image")
    parser.add_argument("--guidance", default="1", help="comma-separated guidance scales (1: none)")
    parser.add_argument("--eta", default="", help="comma-separated DDIM η values (run without guidance)")
    parser.add_argument("--test-images", type=int, default=1000, help="test images, spread over the classes")
    add_data_arguments(parser)
    parser.add_argument("--work", type=Path, default=Path("bench/work/knobs"), help="the test subset")
    parser.add_argument("--threads", type=int, default=None, help="intra-op CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--results", type=Path, default=Path("bench/results"), help="folder for knobs_*.json/png")
    parser.set_defaults(run=run)


def run(args) -> int:
    settings = [{"guidance": w, "eta": 0.0, "sampler": "auto"} for w in _numbers(args.guidance)]
    settings += [{"guidance": 1.0, "eta": e, "sampler": "ddim"} for e in _numbers(args.eta)]
    if not settings:
        raise UserError("give at least one --guidance or --eta value")
    name = None if args.checkpoint else args.model
    checkpoint = checkpoint_for(args.checkpoint, name)
    label = args.label or name or checkpoint.parent.name
    _, test_dir = prepare_cifar(args.archive, args.data_root)
    scored = spread_subset(test_dir, args.test_images, args.work / f"test_{args.test_images}")
    models = load_models([checkpoint], device=args.device, names=[label])
    realism = RealismScorer(load_classifier(device=args.device), seed=0)
    rows, reference = [], {}
    for setting in settings:
        protocol = Protocol(snrs=[args.snr], steps=args.steps, controls=True, **setting)
        document = run_protocol(models, scored, protocol, fid_info={"skipped": "FID not computed in this benchmark"},
                                realism=realism, progress=False, echo=lambda *a, **k: None)
        by = {r["receiver"]: r for r in document["results"]}
        reference = {"deep_jscc": by["deep_jscc"], "source": by["source"]}
        one, control = by["diffusion"], by["control_noise"]
        nfe = network_evaluations(args.steps, setting["guidance"])
        rows.append({**setting, "sampler": one["sampler"], "network_evaluations": nfe,
                     **{key: one[key] for key in ("psnr", "ssim", "fd_cls", "kid_cls", "acc_cls")},
                     "control_fd_cls": control["fd_cls"]})
        print(f"guidance {setting['guidance']:g}, eta {setting['eta']:g} ({one['sampler']}, {nfe} NFE): "
              f"PSNR {one['psnr']:.2f} dB, fd_cls {one['fd_cls']:.2f} (control {control['fd_cls']:.2f}), "
              f"kid_cls {one['kid_cls']:.4f}, acc_cls {one['acc_cls']:.3f}", flush=True)
    deep = reference["deep_jscc"]
    print(f"Deep JSCC: PSNR {deep['psnr']:.2f} dB, fd_cls {deep['fd_cls']:.2f}, kid_cls {deep['kid_cls']:.4f}, "
          f"acc_cls {deep['acc_cls']:.3f}; source images fd_cls {reference['source']['fd_cls']:.2f}")
    stem = f"knobs_{label}_{args.snr:g}dB"
    write_json(args.results / f"{stem}.json", {
        "benchmark": "knobs", "receiver": label, "checkpoint": str(checkpoint), "snr_db": args.snr,
        "steps": args.steps, "test_images": deep["n"], "rows": rows,
        "deep_jscc": {k: deep[k] for k in ("psnr", "ssim", "fd_cls", "kid_cls", "acc_cls")},
        "source_fd_cls": reference["source"]["fd_cls"], "machine": machine_info(),
        "threads": torch.get_num_threads()})
    _plot(rows, deep, reference["source"]["fd_cls"], args.results / f"{stem}.png",
          f"{label}, AWGN {args.snr:g} dB, {deep['n']} test images, {args.steps} steps")
    return 0


def _plot(rows: list[dict], deep: dict, floor: float, path: Path, title: str) -> None:
    fig = _new_figure((6.5, 4.8))
    ax = fig.subplots()
    for kind, marker in (("guidance", "o"), ("eta", "s")):
        group = [r for r in rows if (r["eta"] == 0.0) == (kind == "guidance")]
        if not group:
            continue
        ax.plot([r["psnr"] for r in group], [r["fd_cls"] for r in group], marker=marker, label=f"diffusion, {kind}")
        for r in group:
            ax.annotate(f"{'w' if kind == 'guidance' else 'η'}={r[kind]:g}", (r["psnr"], r["fd_cls"]),
                        textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.plot([deep["psnr"]], [deep["fd_cls"]], marker="*", markersize=10, linestyle="none", label="Deep JSCC")
    ax.axhline(floor, color="0.3", linestyle="-.", linewidth=1.0, label="source images (floor)")
    ax.set_xlabel("PSNR (dB): higher is less distortion")
    ax.set_ylabel("fd_cls (not Inception FID): lower is more realistic")
    ax.grid(True, linestyle=":", linewidth=0.8, alpha=0.8)
    ax.legend(fontsize="small")
    fig.suptitle(title)
    _save(fig, path)
