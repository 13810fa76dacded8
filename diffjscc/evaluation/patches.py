"""Realism of photos patch by patch: ``patch_fd`` and ``patch_kid`` in the features of a small
network that knows photos.

The CIFAR-10 classifier of ``fd_cls`` knows 32×32 objects: on the windows of a photo it scores
invented, painterly texture as realistic. Here the features are those of :class:`PatchNet`,
trained (``scripts/train_patch_net.py``) to tell which of the 49 training photos
(``../shared/data/photos``) a 32×32 patch was cut from: to do so it must tell their textures,
edges and noise apart, not CIFAR's objects. In the spirit of CDM-JSCC's FID on crops:

* every image (source or output) is cut into 32×32 patches with stride 16
  (:func:`image_patches`);
* ``patch_fd``: the Fréchet distance between Gaussians fitted to the outputs' patch features and
  to those of the source images' patches, ``|mu_g - mu_r|^2 + Tr(S_g + S_r - 2 (S_g S_r)^(1/2))``
  (0 for the sources themselves);
* ``patch_kid``: the unbiased polynomial-kernel MMD² between the two sets (subset mean), of the
  outputs' odd patches against the sources' even ones (the two sets are paired patch for patch),
  both scaled by the sources' RMS feature (the kernel expects features of order 1).

Not Inception FID/KID: comparable only with numbers from the same weights file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from diffjscc.errors import UserError
from diffjscc.evaluation.realism import frechet_distance, kernel_distance
from diffjscc.runtime.seeding import Stream, stream_generator, stream_seed

__all__ = ["PATCH_NOTE", "PATCH_SIZE", "PATCH_STRIDE", "PatchNet", "PatchRealism", "image_patches",
           "load_patch_net", "patch_features", "shipped_patch_net_path"]

PATCH_SIZE = 32
PATCH_STRIDE = 16
PATCH_NOTE = ("patch_fd/patch_kid: Frechet distance and KID of 32x32 patches (stride 16) in the features of "
              "diffjscc's patch network trained on photos (which photo is a patch from), against the source "
              "images' patches; NOT Inception FID/KID")


class PatchNet(nn.Module):
    """A small CNN on 32×32 patches: four 3×3 convolutions (three of stride 2) and global average
    pooling give the features (``widths[-1]``); a linear head names the photo."""

    def __init__(self, classes: int, widths: tuple[int, ...] = (32, 64, 96, 128)) -> None:
        super().__init__()
        layers, previous = [], 3
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(previous, width, 3, stride=1 if i == 0 else 2, padding=1), nn.ReLU(inplace=True)]
            previous = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(previous, classes)
        self.widths = tuple(widths)

    def features(self, x: Tensor) -> Tensor:
        """Patches (N, 3, 32, 32) in [−1, 1] → features (N, widths[-1])."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def image_patches(image_u8: Tensor, size: int = PATCH_SIZE, stride: int = PATCH_STRIDE) -> Tensor:
    """The (P, 3, size, size) patches of a uint8 image (3, H, W), ``stride`` apart from the top
    left corner (a remainder at the right and bottom edges is left out)."""
    if min(image_u8.shape[-2:]) < size:
        return image_u8.new_zeros((0, 3, size, size))
    patches = image_u8.unfold(1, size, stride).unfold(2, size, stride)  # (3, rows, cols, size, size)
    return patches.permute(1, 2, 0, 3, 4).reshape(-1, 3, size, size)


@dataclass
class LoadedPatchNet:
    network: PatchNet
    identity: str  # file name and SHA-256: which weights the numbers came from
    provenance: dict


def shipped_patch_net_path() -> Path:
    return Path(__file__).resolve().parents[1] / "assets" / "patch_net_photos.pt"


def load_patch_net(path: str | Path | None = None, device: torch.device | str = "cpu") -> LoadedPatchNet:
    """Read a patch network file (default: the shipped one) with ``weights_only=True``."""
    from diffjscc.runtime.pretrained import sha256_of_file

    path = Path(path) if path is not None else shipped_patch_net_path()
    if not path.is_file():
        raise UserError(f"patch network weights not found: {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    network = PatchNet(classes=len(payload["photos"]), widths=tuple(payload["widths"]))
    network.load_state_dict(payload["state_dict"])
    return LoadedPatchNet(network.to(device, memory_format=torch.channels_last).eval(),  # see load_classifier
                          f"{path.name} sha256:{sha256_of_file(path)[:16]}",
                          payload["provenance"])


@torch.no_grad()
def patch_features(network: PatchNet, image_u8: Tensor, batch: int = 512) -> Tensor:
    """Features (P, D) float64 of the patches of one uint8 image (3, H, W)."""
    device = next(network.parameters()).device
    patches = image_patches(image_u8)
    parts = [network.features(patches[i:i + batch].to(device).float().div(127.5).sub(1)
                              .contiguous(memory_format=torch.channels_last)).double().cpu()
             for i in range(0, patches.shape[0], batch)]
    return torch.cat(parts) if parts else torch.zeros(0, network.widths[-1], dtype=torch.float64)


class PatchRealism:
    """``patch_fd`` and ``patch_kid`` of output patches against the source images' patches."""

    def __init__(self, loaded: LoadedPatchNet, kid_subsets: int = 50, kid_subset_size: int = 1000,
                 seed: int = 0) -> None:
        self.loaded = loaded
        self.kid_subsets = kid_subsets
        self.kid_subset_size = kid_subset_size
        self.seed = seed

    def features(self, image_u8: Tensor) -> Tensor:
        return patch_features(self.loaded.network, image_u8)

    def score(self, features: Tensor, reference: Tensor) -> dict:
        """``patch_fd``, ``patch_kid`` of output patch features against reference (source) ones;
        None where there are fewer than 2 patches."""
        if features.shape[0] < 2 or reference.shape[0] < 2:
            return {"patch_fd": None, "patch_kid": None}
        fd = frechet_distance(features.mean(0), torch.cov(features.T), reference.mean(0), torch.cov(reference.T))
        # The polynomial kernel assumes features of order 1 (Inception's): these are ~3.5 in RMS, which makes
        # k(x, y) ~ 1e3 and KID's noise ~10, so both sets are scaled by the sources' RMS feature. KID's estimator
        # assumes independent sets, and outputs are paired with their sources patch for patch (a pair's own
        # kernel term biases it down): it takes the outputs' odd and the sources' even patches.
        scale = reference.square().mean().rsqrt()
        kid, _ = kernel_distance(features[1::2] * scale, reference[0::2] * scale, self.kid_subsets,
                                 self.kid_subset_size, seed=stream_seed(self.seed, Stream.PATCH_KID_SUBSETS))
        return {"patch_fd": max(fd, 0.0), "patch_kid": None if math.isnan(kid) else kid}

    def describe(self) -> dict:
        return {"note": PATCH_NOTE, "network": self.loaded.identity, "provenance": self.loaded.provenance,
                "patches": {"size": PATCH_SIZE, "stride": PATCH_STRIDE},
                "reference": "the patches of the evaluated source images",
                "kid": {"kernel": "(x.y / D + 1)^3", "subsets": self.kid_subsets,
                        "subset_size": self.kid_subset_size}}


def _random_crops(photos: list[Tensor], count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``count`` random 32×32 crops (uint8) of random photos, flipped left-right at random, and
    the index of the photo each came from."""
    labels = torch.randint(len(photos), (count,), generator=generator)
    crops = []
    for label in labels.tolist():
        photo = photos[label]
        top = int(torch.randint(photo.shape[1] - PATCH_SIZE + 1, (1,), generator=generator))
        left = int(torch.randint(photo.shape[2] - PATCH_SIZE + 1, (1,), generator=generator))
        crop = photo[:, top:top + PATCH_SIZE, left:left + PATCH_SIZE]
        crops.append(crop.flip(-1) if bool(torch.rand(1, generator=generator) < 0.5) else crop)
    return torch.stack(crops), labels


def train_patch_net(photos: list[Tensor], steps: int = 600, batch: int = 64, lr: float = 3e-3,
                    widths: tuple[int, ...] = (16, 32, 48, 64), seed: int = 0) -> tuple[PatchNet, dict]:
    """Train a :class:`PatchNet` to tell which of ``photos`` (uint8 (3, H, W) each) a random 32×32
    crop comes from (Adam, cosine learning rate); returns it and what was measured: the top-1
    accuracy on 2,048 fresh random crops of the same photos (chance: 1 / len(photos))."""
    import time

    torch.manual_seed(stream_seed(seed, Stream.MODEL_INIT))
    generator = stream_generator(seed, Stream.PATCH_CROPS, 0)
    network = PatchNet(classes=len(photos), widths=widths)
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    started = time.perf_counter()
    for _ in range(steps):
        crops, labels = _random_crops(photos, batch, generator)
        loss = nn.functional.cross_entropy(network(crops.float().div(127.5).sub(1)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    seconds = time.perf_counter() - started
    network.eval()
    crops, labels = _random_crops(photos, 2048, stream_generator(seed, Stream.PATCH_CROPS, 1))
    with torch.no_grad():
        accuracy = float((network(crops.float().div(127.5).sub(1)).argmax(1) == labels).float().mean())
    return network, {"steps": steps, "batch": batch, "lr": lr, "seed": seed, "train_seconds": round(seconds, 1),
                     "final_loss": float(loss.detach()), "accuracy_fresh_crops": accuracy,
                     "chance": 1 / len(photos), "threads": torch.get_num_threads()}
