"""Regenerate the patch network shipped in the package (diffjscc/assets/patch_net_photos.pt), the
feature network of patch_fd / patch_kid: trained to tell which of the training photos a 32x32
crop comes from. Seeded; one CPU thread, a few minutes.

    python scripts/train_patch_net.py [--photos ../shared/data/photos] [--steps 600] [--out PATH]

The photos are never copied into the package: the file records their names, their SHA-256 and
the README that lists their sources.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from diffjscc.data import ImageFolderDataset  # noqa: E402
from diffjscc.evaluation.metrics import to_uint8  # noqa: E402
from diffjscc.evaluation.patches import shipped_patch_net_path, train_patch_net  # noqa: E402
from diffjscc.runtime.checkpoint import save_checkpoint  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=REPO.parent / "shared/data/photos")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=shipped_patch_net_path())
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = ImageFolderDataset(args.photos)
    photos = [to_uint8(dataset[i][0]) for i in range(len(dataset))]
    network, measured = train_patch_net(photos, steps=args.steps, seed=args.seed)
    provenance = {
        "trained_by": "scripts/train_patch_net.py", "objective": f"which of the {len(photos)} photos a 32x32 "
        "random crop (random left-right flip) comes from", **measured,
        "photos": "the 49 Wikimedia Commons photos of ../shared/data/photos (sources: its README.md, "
                  "https://commons.wikimedia.org pages listed there)",
        "photo_sha256": {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in dataset.files}}
    save_checkpoint({"state_dict": network.state_dict(), "widths": list(network.widths),
                     "photos": [p.name for p in dataset.files], "provenance": provenance}, args.out)
    print(f"wrote {args.out}: {measured['steps']} steps in {measured['train_seconds']:.0f} s on "
          f"{measured['threads']} thread(s); accuracy {100 * measured['accuracy_fresh_crops']:.1f} % on fresh "
          f"crops (chance {100 * measured['chance']:.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
