"""A compact image classifier that measures realism and semantics offline: ``fd_cls``, ``kid_cls``
and ``acc_cls`` (see :mod:`diffjscc.evaluation.realism`).

Inception-v3 FID needs a weights file that users on clusters often cannot download. This network
is trained by diffjscc itself (``diffjscc classifier``) on any folder of labelled images
(``{class}_{index}.png``), and its CIFAR-10 weights ship in the package. Its penultimate features
(after global average pooling) are the feature space of ``fd_cls``/``kid_cls``; its predictions
give ``acc_cls``. Numbers from it are **not Inception FID/KID** and are comparable only with other
numbers from the same weights, never with published figures.

A weights file is a plain ``torch.save`` dict read with ``weights_only=True``: the state dict,
the architecture (widths), the class names, the reference statistics of its training images
(mean and covariance of the features of all of them, float64; the features of a fixed random
subset, for KID), and the test accuracy it was measured at.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffjscc.errors import UserError
from diffjscc.runtime.checkpoint import load_weights_file, save_checkpoint
from diffjscc.runtime.pretrained import sha256_of_file
from diffjscc.runtime.seeding import Stream, stream_generator, stream_seed

__all__ = ["CLASSIFIER_NOTE", "ClassifierTrainingSettings", "ImageClassifier", "LoadedClassifier",
           "accuracy", "classifier_features", "load_classifier", "save_classifier", "shipped_classifier_path",
           "train_classifier"]

CLASSIFIER_NOTE = ("fd_cls/kid_cls/acc_cls are measured in the features of a classifier diffjscc trains itself: "
                   "not Inception FID/KID, not comparable with published figures")
SHIPPED_NAME = "classifier_cifar10.pt"
KID_REFERENCE_IMAGES = 2000  # training images whose features are kept for KID


def shipped_classifier_path() -> Path:
    """The CIFAR-10 classifier weights shipped in the package."""
    return Path(str(resources.files("diffjscc") / "assets" / SHIPPED_NAME))


class _ConvBlock(nn.Sequential):
    """conv 3×3 → 2×2 max-pool → BN → GELU → conv 3×3 → BN → GELU: halves the resolution."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(c_out), nn.GELU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.GELU())


class ImageClassifier(nn.Module):
    """Stem + three down-sampling conv blocks + global average pooling + a linear layer.

    Takes images in the models' [-1, 1] convention. ``features`` is the pooled last block
    (``widths[-1]`` numbers per image), the space in which realism is measured.
    """

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        self.widths = tuple(int(w) for w in widths)
        stem, *rest = self.widths
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem), nn.GELU())
        self.blocks = nn.Sequential(*(_ConvBlock(a, b) for a, b in zip(self.widths[:-1], rest)))
        self.head = nn.Linear(self.widths[-1], num_classes)

    @property
    def feature_dim(self) -> int:
        return self.widths[-1]

    def features(self, images: Tensor) -> Tensor:
        return self.blocks(self.stem(images)).mean(dim=(2, 3))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


@dataclass
class LoadedClassifier:
    """A classifier with what its file records about it."""

    network: ImageClassifier
    class_names: list[str]
    reference_mean: Tensor  # (D,) float64, all training images
    reference_cov: Tensor  # (D, D) float64, unbiased
    reference_features: Tensor  # (M, D) float32, a fixed random subset of the training images
    test_accuracy: float | None
    identity: str  # file name and SHA-256 prefix, for result files
    reference_count: int  # training images behind reference_mean / reference_cov
    image_size: int  # the training images' size: its features mean little at another one

    @property
    def feature_dim(self) -> int:
        return self.network.feature_dim


def load_classifier(path: str | Path | None = None, device: torch.device | str = "cpu") -> LoadedClassifier:
    """Read a classifier file (default: the shipped CIFAR-10 one) with ``weights_only=True``."""
    path = Path(path) if path is not None else shipped_classifier_path()
    if not path.is_file():
        raise UserError(f"classifier weights not found: {path}")
    payload = load_weights_file(path)
    try:
        network = ImageClassifier(len(payload["class_names"]), tuple(payload["widths"]))
        network.load_state_dict(payload["model"])
        reference = (payload["reference_mean"].double(), payload["reference_cov"].double(),
                     payload["reference_features"].float())
    except (KeyError, RuntimeError, TypeError) as err:
        raise UserError(f"{path} is not a diffjscc classifier file ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''})") from None
    # channels_last: oneDNN's convolutions run 1.8x faster on CPU in that layout (500 images on one
    # thread, 2026-12-04: 1.11 -> 0.63 s), with the same features to float precision
    network.eval().requires_grad_(False).to(device, memory_format=torch.channels_last)
    digest = sha256_of_file(path)[:12]
    accuracy_value = payload.get("test_accuracy")
    return LoadedClassifier(network, list(payload["class_names"]), *reference,
                            None if accuracy_value is None else float(accuracy_value), f"{path.name}@{digest}",
                            int(payload.get("reference_images", 0)), int(payload.get("image_size", 32)))


@torch.no_grad()
def classifier_features(network: ImageClassifier, images_u8: Tensor, batch: int = 500) -> tuple[Tensor, Tensor]:
    """Penultimate features (N, D) float64 and predicted classes (N,) of uint8 images, in batches."""
    device = next(network.parameters()).device
    features, predictions = [], []
    for start in range(0, images_u8.shape[0], batch):
        x = images_u8[start:start + batch].to(device).float().div(127.5).sub(1.0)
        x = x.contiguous(memory_format=torch.channels_last)  # see load_classifier
        f = network.features(x)
        features.append(f.double().cpu())
        predictions.append(network.head(f).argmax(dim=1).cpu())
    if not features:
        return torch.zeros(0, network.feature_dim, dtype=torch.float64), torch.zeros(0, dtype=torch.long)
    return torch.cat(features), torch.cat(predictions)


def accuracy(network: ImageClassifier, images_u8: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy (a fraction) of ``network`` on uint8 images."""
    _, predicted = classifier_features(network, images_u8)
    return float((predicted == labels.cpu()).double().mean())


# ---- training -----------------------------------------------------------------------------------
@dataclass
class ClassifierTrainingSettings:
    epochs: int = 30
    batch_size: int = 256
    lr: float = 0.1  # SGD with Nesterov momentum, linear warm-up then linear decay to 0
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    widths: tuple[int, ...] = (32, 64, 128, 256)
    seed: int = 0


def _augment(images: Tensor, generator: torch.Generator) -> Tensor:
    """Random horizontal flips and translations by up to 4 px (reflect padding), per image."""
    n, _, h, w = images.shape
    flip = torch.rand(n, generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(3), images)
    padded = F.pad(images, (4, 4, 4, 4), mode="reflect")
    dx, dy = torch.randint(0, 9, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None].expand(n, h, w)
    cols = (dx[:, None] + torch.arange(w))[:, None, :].expand(n, h, w)
    index = (rows * padded.shape[3] + cols).view(n, 1, h * w).expand(n, 3, h * w)
    return padded.flatten(2).gather(2, index).view(n, 3, h, w)


def train_classifier(train_images: Tensor, train_labels: Tensor, class_names: list[str],
                     settings: ClassifierTrainingSettings, test_images: Tensor | None = None,
                     test_labels: Tensor | None = None, log=print) -> dict:
    """Train an :class:`ImageClassifier` on uint8 images; return the weights file's payload.

    The payload records the reference statistics of all training images (their features under
    the trained network) and, with test images, the test accuracy.
    """
    torch.manual_seed(stream_seed(settings.seed, Stream.MODEL_INIT))
    generator = stream_generator(settings.seed, Stream.CLASSIFIER_BATCHES)
    network = ImageClassifier(len(class_names), settings.widths)
    decay = [p for p in network.parameters() if p.dim() > 1]
    no_decay = [p for p in network.parameters() if p.dim() <= 1]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": settings.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=settings.lr, momentum=0.9, nesterov=True)
    n = train_images.shape[0]
    steps_per_epoch = n // settings.batch_size
    total = steps_per_epoch * settings.epochs
    warmup = max(1, total // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / (total - warmup)))
    started = time.monotonic()
    for epoch in range(settings.epochs):
        network.train()
        order = torch.randperm(n, generator=generator)
        loss_sum = 0.0
        for i in range(steps_per_epoch):
            index = order[i * settings.batch_size:(i + 1) * settings.batch_size]
            x = _augment(train_images[index].float().div(127.5).sub(1.0), generator)
            loss = F.cross_entropy(network(x), train_labels[index], label_smoothing=settings.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach())
        network.eval()
        line = f"epoch {epoch + 1}/{settings.epochs}: loss {loss_sum / steps_per_epoch:.4f}"
        if test_images is not None:
            line += f", test accuracy {100 * accuracy(network, test_images, test_labels):.2f} %"
        log(f"{line} ({time.monotonic() - started:.0f} s)")
    network.eval()
    features, _ = classifier_features(network, train_images)
    mean, cov = features.mean(dim=0), torch.cov(features.T)  # unbiased, as realism's output statistics
    subset = torch.randperm(n, generator=generator)[:KID_REFERENCE_IMAGES]
    payload = {
        "model": network.state_dict(), "widths": list(settings.widths), "class_names": list(class_names),
        "reference_mean": mean, "reference_cov": cov, "reference_features": features[subset].half(),
        "reference_images": int(n), "image_size": int(train_images.shape[-1]),
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(settings).items()},
        "train_seconds": time.monotonic() - started,
        "train_flops": _training_flops(network, train_images.shape[-1], n * settings.epochs),
    }
    if test_images is not None:
        payload["test_accuracy"] = accuracy(network, test_images, test_labels)
        payload["test_images"] = int(test_images.shape[0])
    return payload


def _training_flops(network: ImageClassifier, size: int, images_seen: int) -> float:
    """Forward + backward FLOPs of the whole training (3 × the forward's, counted once)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network(torch.zeros(1, 3, size, size))
    return 3.0 * counter.get_total_flops() * images_seen


def save_classifier(payload: dict, path: str | Path) -> Path:
    """Write a classifier file atomically (fp32 weights; a few MB)."""
    return save_checkpoint(payload, Path(path))
