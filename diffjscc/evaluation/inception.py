"""The FID network: Inception-v3 as in TensorFlow's 2015-12-05 graph, 2048-d pool features.

FID (Heusel et al., 2017) is only comparable between papers when it uses *this* network: the
TensorFlow Inception-v3 of 2015-12-05 whose weights pytorch-fid and torch-fidelity converted to
PyTorch (``pt_inception-2015-12-05-6726825d.pth`` / ``weights-inception-2015-12-05-6726825d.pth``).
torchmetrics' default FID network is torch-fidelity's copy of it, but torch-fidelity imports
torchvision when it is imported, and torchvision's PyPI build does not load beside a CPU-only
torch; so the same architecture is kept here (module and parameter names identical, so those
weight files load with ``strict=True``), ported from torch-fidelity's
``feature_extractor_inceptionv3.py`` (Apache-2.0; itself adapted from pytorch-fid, Apache-2.0).
``tests/test_evaluation_fid.py`` checks it equals torch-fidelity's network on the same weights.

What differs from torchvision's Inception-v3 (the "FID patches" of the TF graph):

* input: uint8 RGB, resized to 299x299 with TensorFlow 1.x bilinear resizing (no half-pixel
  offset, :func:`resize_bilinear_tf1`), then ``x = (x - 128) / 128``;
* average pools inside Inception-A/C/E1 exclude the zero padding (``count_include_pad=False``);
* the last block (Mixed_7c) max-pools its pool branch;
* ``fc`` has 1008 classes (loaded so the file matches, unused for FID).

The weights are never downloaded: they load from a local file with
``torch.load(weights_only=True)``, so a tampered file cannot run code.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffjscc.errors import UserError
from diffjscc.runtime.weights import find_weights, load_state_dict_file

__all__ = [
    "FID_INPUT_SIZE",
    "FID_WEIGHT_NAMES",
    "FIDInceptionV3",
    "find_inception_weights",
    "load_fid_inception",
    "resize_bilinear_tf1",
]

FID_INPUT_SIZE = 299
FID_WEIGHT_NAMES = (
    "weights-inception-2015-12-05-6726825d.pth",  # torch-fidelity (torchmetrics' default) in the hub cache
    "pt_inception-2015-12-05-6726825d.pth",       # pytorch-fid's file of the same network
)
"""File names the torch hub cache (``torch.hub.get_dir()/checkpoints``) is searched for."""


def resize_bilinear_tf1(x: Tensor, size: int) -> Tensor:
    """Bilinear resize as TensorFlow 1.x ``resize_bilinear(align_corners=False)`` does.

    Output pixel ``i`` samples the input at ``s = i * in / out`` (no half-pixel offset, unlike
    ``F.interpolate(align_corners=False)``), ``lo = floor(s)``, ``hi = min(lo + 1, in - 1)``,
    ``v = x[lo] + (s - lo) * (x[hi] - x[lo])``; separable over H then W. The reference FID
    statistics were computed with this resize, so it is part of the metric.
    """

    def axis(length: int) -> tuple[Tensor, Tensor, Tensor]:
        src = torch.arange(size, dtype=torch.float32, device=x.device) * (length / size)
        lo = src.floor().long().clamp_(max=length - 1)
        hi = (lo + 1).clamp_(max=length - 1)
        return lo, hi, (src - lo.float()).to(x.dtype)

    lo, hi, frac = axis(x.shape[-2])
    x = x[..., lo, :] + (x[..., hi, :] - x[..., lo, :]) * frac.view(-1, 1)
    lo, hi, frac = axis(x.shape[-1])
    return x[..., lo] + (x[..., hi] - x[..., lo]) * frac


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (eps 1e-3, as TF) -> ReLU."""

    def __init__(self, cin: int, cout: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_tf(x: Tensor) -> Tensor:
    """3x3/1 average pool that ignores the zero padding, as TensorFlow's does."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool_tf(x)),
        ], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        dbl = x
        for i in range(1, 6):
            dbl = getattr(self, f"branch7x7dbl_{i}")(dbl)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            dbl,
            self.branch_pool(_avg_pool_tf(x)),
        ], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """Mixed_7b (``max_pool=False``: padding-excluding average pool) and Mixed_7c (max pool)."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool_tf(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl),
            self.branch_pool(pooled),
        ], 1)


class FIDInceptionV3(nn.Module):
    """uint8 (B, 3, H, W) images -> (B, 2048) float32 pool_3 features, the FID feature space.

    Build it with :func:`load_fid_inception` (weights from a local file); a bare instance has
    random weights and is only useful for tests.
    """

    num_features = 2048  # read by torchmetrics' FrechetInceptionDistance

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.MaxPool_1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.MaxPool_2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.AvgPool = nn.AdaptiveAvgPool2d(output_size=(1, 1))
        self.fc = nn.Linear(2048, 1008)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FIDInceptionV3":
        """Always in eval mode: BatchNorm must use the TF running statistics."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"FID Inception expects uint8 (B, 3, H, W) images, got {images.dtype} "
                             f"{tuple(images.shape)}")
        x = resize_bilinear_tf1(images.float(), FID_INPUT_SIZE)
        x = (x - 128.0) / 128.0
        x = self.MaxPool_1(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))))
        x = self.MaxPool_2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                     "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        return torch.flatten(self.AvgPool(x), 1).float()


def find_inception_weights(explicit: str | os.PathLike | None = None) -> Path | None:
    """The FID weights file: ``explicit`` (must exist), else the torch hub cache (where
    torchmetrics/torch-fidelity and pytorch-fid store it when they download it), else None."""
    return find_weights(explicit, FID_WEIGHT_NAMES, "--fid-weights")


def load_fid_inception(path: str | os.PathLike, device: torch.device | str = "cpu") -> FIDInceptionV3:
    """Build :class:`FIDInceptionV3` with the weights of ``path`` (a state dict), safely loaded."""
    state = load_state_dict_file(path, "FID weights")
    net = FIDInceptionV3()
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a tensor of the wrong shape
        raise UserError(f"FID weights {path} are not the Inception-v3 FID network: "
                        f"{str(err).splitlines()[-1].strip()}") from None
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise UserError(f"FID weights {path} are not the Inception-v3 FID network ({what})")
    return net.to(device).eval()
