"""``diffjscc`` command line: data, train, sample, evaluate, demo.

Every user mistake ends as one line ``diffjscc: error: …`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from diffjscc import __version__
from diffjscc.errors import UserError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (not usage + message) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        command = self.prog.removeprefix("diffjscc").strip()  # "train", "data", … or "" at the top
        raise UserError(f"{command}: {message}" if command else message)


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="prepare datasets (CIFAR-10 → PNG folders)",
                       description="Write DIR/cifar_train/ and DIR/cifar_test/ as PNGs named {class}_{index:05d}.png.")
    p.add_argument("dataset", choices=["cifar10"], help="dataset to prepare")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--archive", type=Path,
                     help="local cifar-10-python.tar.gz or an extracted cifar-10-batches-py/ folder")
    src.add_argument("--download", action="store_true", help="fetch the official archive (MD5-checked)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--limit", type=int, default=None, help="at most N images per split")
    p.set_defaults(func=_cmd_data)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model from a YAML config (all modes)",
                       description="Train in the config's mode (jscc | joint | frozen | unconditional); "
                                   "checkpoints ckpt_*.pt are written under log_dir.")
    p.add_argument("config", type=Path,
                   help="YAML config, e.g. configs/tiny.yaml, or the name of a shipped one: tiny, cifar10")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable), e.g. --set log_dir=runs/a")
    p.add_argument("--resume", default=None, metavar="auto|CKPT",
                   help="continue from a checkpoint, or 'auto' for the newest valid one in log_dir")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still written)")
    p.set_defaults(func=_cmd_train)


def _add_receiver_args(p: argparse.ArgumentParser, default_limit: int | None) -> None:
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint (.pt) of a training run")
    p.add_argument("--data", type=Path, required=True, help="folder of images (e.g. cifar_test/)")
    p.add_argument("--snr", type=float, default=None, help="channel SNR in dB (default: the config's snr_db)")
    p.add_argument("--steps", type=int, default=20, help="DDIM sampling steps (default 20)")
    p.add_argument("--start", choices=["gaussian", "inversion"], default="gaussian",
                   help="x_T from N(0, I) (a real receiver) or from DDIM inversion of the source "
                        "(oracle: needs the source at the receiver)")
    p.add_argument("--limit", type=int, default=default_limit, help="at most N images")
    p.add_argument("--seed", type=int, default=0, help="seed of channel noise and sampling")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=64)


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="transmit images and save reconstructions and a comparison grid")
    _add_receiver_args(p, default_limit=8)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=_cmd_sample)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="PSNR and SSIM of a checkpoint on a folder at one SNR")
    _add_receiver_args(p, default_limit=None)
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    p.set_defaults(func=_cmd_evaluate)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="train and compare Deep JSCC and a diffusion receiver on the embedded sample",
                       description="Runs the main job on a few hundred CIFAR-10 test images shipped with the "
                                   "package: trains a Deep JSCC baseline and a conditional diffusion model for a "
                                   "few minutes on the CPU, transmits held-back images at several SNRs, and "
                                   "writes a comparison grid, a PSNR/SSIM table and a PSNR-vs-SNR plot.")
    p.add_argument("--out", type=Path, default=Path("diffjscc_demo"), help="output folder (default diffjscc_demo)")
    p.add_argument("--minutes", type=float, default=None,
                   help="scale the training budget (default about 8 minutes on 2 CPU cores)")
    p.add_argument("--snr", default="0,5,10,15,20", help="comma-separated SNRs in dB to evaluate")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="diffjscc", description="Wireless image transmission with diffusion models and "
                                                  "joint source-channel coding (JSCC).")
    parser.add_argument("--version", action="version", version=f"diffjscc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (_add_data, _add_train, _add_sample, _add_evaluate, _add_demo):
        add(sub)
    return parser


# ---- commands ---------------------------------------------------------------------------------
def _cmd_data(args) -> int:
    from diffjscc.data.cifar10 import download_cifar10, extract_cifar10

    if args.limit is not None and args.limit <= 0:
        raise UserError("--limit must be positive")
    source = download_cifar10(args.out) if args.download else args.archive
    counts = extract_cifar10(source, args.out, limit_per_split=args.limit)
    for split, count in counts.items():
        print(f"{split}: {count} images → {args.out / split}")
    return 0


def _cmd_train(args) -> int:
    from diffjscc.config import load_config
    from diffjscc.training.trainer import Trainer

    cfg = load_config(args.config, args.overrides)
    result = Trainer(cfg, resume=args.resume, progress=not args.no_progress).train()
    print(f"step {result.step}: checkpoint {result.last_checkpoint} "
          f"(loss {result.final_loss:.4f}, {result.images_per_second:.1f} img/s)")
    return 0


def _load_for_receiving(args):
    from diffjscc.data import ImageFolderDataset
    from diffjscc.system import load_system
    from diffjscc.training.trainer import resolve_device

    for name in ("steps", "batch_size") + (("limit",) if args.limit is not None else ()):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    system = load_system(str(args.checkpoint), device=resolve_device(args.device))
    dataset = ImageFolderDataset(args.data, image_size=system.cfg.image_size, with_labels=system.cfg.class_cond)
    snr = system.cfg.snr_db if args.snr is None else args.snr
    return system, dataset, snr


def _cmd_sample(args) -> int:
    import torch

    from diffjscc.data import save_image_tensor
    from diffjscc.evaluation.figures import save_image_grid
    from diffjscc.evaluation.receivers import reconstruct_rows

    system, dataset, snr = _load_for_receiving(args)
    count = min(args.limit, len(dataset))
    items = [dataset[i] for i in range(count)]
    device = next(system.parameters()).device
    images = torch.stack([it[0] if isinstance(it, tuple) else it for it in items]).to(device)
    labels = torch.tensor([it[1] for it in items], device=device) if system.cfg.class_cond else None
    generator = torch.Generator(device=device).manual_seed(args.seed)
    if args.start == "inversion":
        if system.unet is None:
            raise UserError("--start inversion needs a diffusion checkpoint")
        received = system.transmit(images, snr_db=snr, generator=generator)
        rows = [images, system.receive(received, steps=args.steps, start="inversion", source=images,
                                       class_labels=labels, generator=generator)]
        names = ["source", f"ORACLE inversion {args.steps}"]
    else:
        rows, names = reconstruct_rows(system, images, labels, steps=args.steps, generator=generator, snr_db=snr)
    args.out.mkdir(parents=True, exist_ok=True)
    grid = args.out / "grid.png"
    save_image_grid(rows, grid, row_labels=names)
    for i in range(count):
        save_image_tensor(rows[-1][i].cpu(), args.out / f"received_{i:04d}.png")
    print(f"{count} images at {snr:g} dB: grid {grid}, reconstructions received_*.png in {args.out}")
    return 0


def _cmd_evaluate(args) -> int:
    from diffjscc.evaluation.figures import markdown_table
    from diffjscc.evaluation.receivers import evaluate_system

    system, dataset, snr = _load_for_receiving(args)
    rows = evaluate_system(system, dataset, snr_db=snr, steps=args.steps, start=args.start, limit=args.limit,
                           batch_size=args.batch_size, seed=args.seed)
    for row in rows:
        label = " (ORACLE: x_T from the source image)" if row["oracle"] else ""
        print(f"{row['receiver']}{label}: PSNR {row['psnr']:.2f} dB  SSIM {row['ssim']:.4f}  "
              f"at {row['snr_db']:g} dB, k/n {row['k_over_n']:.4f}, n={row['n']}")
    print(markdown_table(rows, ["receiver", "start", "snr_db", "k_over_n", "steps", "psnr", "ssim", "n"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"checkpoint": str(args.checkpoint), "results": rows}, indent=2))
    return 0


def _cmd_demo(args) -> int:
    from diffjscc.demo import run_demo

    run_demo(args.out, minutes=args.minutes, snr_text=args.snr, seed=args.seed)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``diffjscc`` console script."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"diffjscc: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("diffjscc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
