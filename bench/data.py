"""Data: how fast training images are read, photo crops against CIFAR-10 PNG files.

Reads ``--items`` items of each dataset the way the trainer's DataLoader does (one ``[i]`` at a
time, in the shuffled order of an epoch) and reports items/s and megapixels/s: random
``--crop``×``--crop`` crops of the photos (decoded once, cropped from memory) and the 32×32
CIFAR-10 test PNGs (decoded at every read). Compare with the training step's own img/s
(``metrics.jsonl``): the data must not starve it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.common import add_data_arguments, machine_info, prepare_cifar, write_json
from diffjscc.data import ImageFolderDataset, RandomCropDataset

DEFAULT_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="folder of training photos")
    add_data_arguments(parser)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=None, help="intra-op CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=Path("bench/results/data.json"))
    parser.set_defaults(run=run)


def _rate(dataset, items: int) -> tuple[float, float]:
    """(items/s, megapixels/s) reading ``items`` items in a shuffled order."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:items].tolist()
    start = time.perf_counter()
    pixels = sum(dataset[i][0][0].numel() for i in order)
    seconds = time.perf_counter() - start
    return len(order) / seconds, pixels / seconds / 1e6


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    crops = RandomCropDataset(args.photos, args.crop)
    decode_seconds = time.perf_counter() - start
    _, test_dir = prepare_cifar(args.archive, args.data_root)
    rows = []
    for name, dataset in ((f"photo crops {args.crop}x{args.crop} ({len(crops.files)} photos in memory)", crops),
                          ("CIFAR-10 PNG 32x32", ImageFolderDataset(test_dir))):
        items_per_s, megapixels_per_s = _rate(dataset, args.items)
        rows.append({"data": name, "items_per_s": items_per_s, "megapixels_per_s": megapixels_per_s})
        print(f"{name}: {items_per_s:,.0f} items/s, {megapixels_per_s:.1f} Mpixel/s", flush=True)
    print(f"decoding the {len(crops.files)} photos once: {decode_seconds:.1f} s")
    write_json(args.json, {"benchmark": "data", "items": args.items, "photo_decode_seconds": decode_seconds,
                           "machine": machine_info(), "rows": rows})
    return 0
