"""LPIPS and DISTS, the full-reference perceptual distances the field reports, offline.

* **LPIPS-Alex** (Zhang et al., 2018): for AlexNet's five ReLU layers l, the channel vectors of
  both images are unit-normalised, their squared difference is weighted per channel by the
  learned ``w_l`` and averaged over positions; the five layers are summed. 0: identical.
* **DISTS** (Ding et al., 2020): for the image and VGG16's five stages (max-pools replaced by
  Hanning-window L2 pooling), per channel a texture term (the feature maps' means, SSIM-like) and
  a structure term (their correlation), weighted by the learned ``alpha``, ``beta``; ``1 - sum``.
  0: identical.

Both take images in [0, 1] at their own size (no resizing, unlike DISTS' demo script, which first
shrinks the shorter side to 256). The backbones are torchvision's AlexNet and VGG16 ``features``,
rebuilt here with the same layer indices, since torchvision's PyPI build does not import beside a
CPU-only torch: torchvision's ImageNet files (``alexnet-owt-7be5be79.pth``,
``vgg16-397923af.pth``) load with ``strict=True``. LPIPS' linear weights are the authors' v0.1,
as torchmetrics ships them; DISTS' ``alpha``/``beta`` are the authors' ``weights.pt``
(DISTS_pytorch). Nothing is downloaded: each file is given by a path or found in the torch hub
cache, and read with ``weights_only=True``; without it the metric is null with the reason.
``tests/test_perceptual.py`` checks LPIPS against torchmetrics' implementation on the same weights.
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffjscc.errors import UserError
from diffjscc.runtime.weights import find_weights, load_state_dict_file

__all__ = ["ALEXNET_WEIGHTS", "DISTS", "LPIPS", "PERCEPTUAL_METRICS", "PerceptualScorer", "VGG16_WEIGHTS",
           "alexnet_features", "load_dists", "load_lpips", "make_perceptual", "vgg16_features"]

ALEXNET_WEIGHTS = "alexnet-owt-7be5be79.pth"  # torchvision's ImageNet AlexNet (LPIPS' backbone)
VGG16_WEIGHTS = "vgg16-397923af.pth"  # torchvision's ImageNet VGG16 (DISTS' backbone)
PERCEPTUAL_METRICS = ("lpips", "dists")
"""The per-image perceptual distances a result row can hold (null with a note when unavailable)."""


def _load_into(module: nn.Module, state: dict[str, Tensor], path: str | os.PathLike, what: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:  # missing, unexpected or wrongly shaped tensors
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:3])
        raise UserError(f"{what} {path} does not fit: {detail[:200]}") from None


def alexnet_features() -> nn.Sequential:
    """torchvision's ``alexnet().features``, layer for layer (indices 0-12)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))


VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16_features() -> nn.Sequential:
    """torchvision's ``vgg16().features`` (configuration D), layer for layer (indices 0-30)."""
    layers: list[nn.Module] = []
    channels = 3
    for entry in VGG16_LAYOUT:
        if entry == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, entry, 3, padding=1), nn.ReLU()]
            channels = entry
    return nn.Sequential(*layers)


def _features_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The ``features.*`` tensors of a torchvision classifier's state dict (the head is unused)."""
    return {key[len("features."):]: value for key, value in state.items() if key.startswith("features.")}


class LPIPS(nn.Module):
    """LPIPS-Alex per image pair: ``forward(x, y)`` of (N, 3, H, W) in [0, 1] -> (N,)."""

    TAPS = (1, 4, 7, 9, 11)  # AlexNet's ReLU layers whose outputs are compared
    CHANNELS = (64, 192, 384, 256, 256)

    def __init__(self) -> None:
        super().__init__()
        self.features = alexnet_features()[:self.TAPS[-1] + 1]
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in self.CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    def _taps(self, x: Tensor) -> list[Tensor]:
        h, outputs = (2 * x - 1 - self.shift) / self.scale, []
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index in self.TAPS:
                outputs.append(h / torch.sqrt(1e-8 + h.pow(2).sum(dim=1, keepdim=True)))
        return outputs

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return sum(lin((a - b).pow(2)).mean(dim=(1, 2, 3)) for lin, a, b in zip(self.lins, self._taps(x), self._taps(y)))


def _shipped_lpips_linear() -> dict[str, Tensor]:
    """LPIPS v0.1's AlexNet linear weights as torchmetrics ships them, keyed ``{i}.weight``."""
    file = importlib.resources.files("torchmetrics") / "functional" / "image" / "lpips_models" / "alex.pth"
    with importlib.resources.as_file(file) as path:
        state = load_state_dict_file(path, "LPIPS linear weights")
    return {f"{i}.weight": state[f"lin{i}.model.1.weight"] for i in range(len(LPIPS.CHANNELS))}


def load_lpips(alexnet_path: str | os.PathLike) -> LPIPS:
    """LPIPS-Alex with torchvision's AlexNet weights from ``alexnet_path``."""
    net = LPIPS()
    _load_into(net.features, _features_state(load_state_dict_file(alexnet_path, "AlexNet weights")),
               alexnet_path, "AlexNet weights")
    net.lins.load_state_dict(_shipped_lpips_linear())
    return net.eval()


class L2Pooling(nn.Module):
    """DISTS' downsampling: sqrt of the squares blurred by a 3x3 Hanning window, stride 2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        window = torch.hann_window(5, periodic=False, dtype=torch.float64)[1:-1]
        kernel = (window[:, None] * window[None, :]) / (window.sum() ** 2)
        self.register_buffer("kernel", kernel.float().expand(channels, 1, 3, 3).contiguous(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (F.conv2d(x.pow(2), self.kernel, stride=2, padding=1, groups=x.shape[1]) + 1e-12).sqrt()


class DISTS(nn.Module):
    """DISTS per image pair: ``forward(x, y)`` of (N, 3, H, W) in [0, 1] -> (N,)."""

    CHANNELS = (3, 64, 128, 256, 512, 512)  # the image itself, then relu1_2 ... relu5_3
    STAGE_ENDS = (3, 8, 15, 22, 29)  # VGG16 feature indices of those ReLUs

    def __init__(self) -> None:
        super().__init__()
        features = vgg16_features()[:self.STAGE_ENDS[-1] + 1]
        for index, layer in enumerate(features):
            if isinstance(layer, nn.MaxPool2d):
                features[index] = L2Pooling(features[index - 2].out_channels)
        self.features = features
        self.alpha = nn.Parameter(torch.full((1, sum(self.CHANNELS), 1, 1), 0.1))
        self.beta = nn.Parameter(torch.full((1, sum(self.CHANNELS), 1, 1), 0.1))
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    def _stages(self, x: Tensor) -> list[Tensor]:
        h, outputs = (x - self.mean) / self.std, [x]
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index in self.STAGE_ENDS:
                outputs.append(h)
        return outputs

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        total = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / total, self.CHANNELS, dim=1)
        betas = torch.split(self.beta / total, self.CHANNELS, dim=1)
        similarity = torch.zeros(x.shape[0], device=x.device)
        c = 1e-6
        for a, b, alpha, beta in zip(self._stages(x), self._stages(y), alphas, betas):
            mean_a, mean_b = a.mean(dim=(2, 3), keepdim=True), b.mean(dim=(2, 3), keepdim=True)
            texture = (2 * mean_a * mean_b + c) / (mean_a.pow(2) + mean_b.pow(2) + c)  # the maps' means
            var_a = (a - mean_a).pow(2).mean(dim=(2, 3), keepdim=True)
            var_b = (b - mean_b).pow(2).mean(dim=(2, 3), keepdim=True)
            covariance = (a * b).mean(dim=(2, 3), keepdim=True) - mean_a * mean_b
            structure = (2 * covariance + c) / (var_a + var_b + c)  # their correlation
            similarity = similarity + (alpha * texture + beta * structure).sum(dim=(1, 2, 3))
        return 1 - similarity


def load_dists(vgg16_path: str | os.PathLike, dists_path: str | os.PathLike) -> DISTS:
    """DISTS with torchvision's VGG16 weights and the authors' ``alpha``/``beta`` (``weights.pt``)."""
    net = DISTS()
    _load_into(net.features, _features_state(load_state_dict_file(vgg16_path, "VGG16 weights")),
               vgg16_path, "VGG16 weights")
    _load_into(net, {**{f"features.{k}": v for k, v in net.features.state_dict().items()},
                     **load_state_dict_file(dists_path, "DISTS weights")}, dists_path, "DISTS weights")
    return net.eval()


class PerceptualScorer:
    """Mean per-pair distances (``metrics``: name -> network of (x, y) -> (N,)) over image pairs in
    [0, 1], (N, 3, H, W), in batches. Names are from :data:`PERCEPTUAL_METRICS`."""

    def __init__(self, metrics: dict[str, Callable[[Tensor, Tensor], Tensor]], batch_size: int = 8,
                 device: torch.device | str = "cpu") -> None:
        unknown = set(metrics) - set(PERCEPTUAL_METRICS)
        if unknown or not metrics:
            raise ValueError(f"perceptual metrics must be some of {PERCEPTUAL_METRICS}, got {sorted(metrics)}")
        self.device = torch.device(device)
        self.metrics = {name: net.to(self.device) if isinstance(net, nn.Module) else net
                        for name, net in metrics.items()}
        self.batch_size = batch_size

    @torch.no_grad()
    def score(self, source: Tensor, reconstruction: Tensor) -> dict[str, float | None]:
        """Every name of :data:`PERCEPTUAL_METRICS`: the mean over the pairs, or None if not held."""
        sums = dict.fromkeys(self.metrics, 0.0)
        for start in range(0, source.shape[0], self.batch_size):
            x = source[start:start + self.batch_size].to(self.device).float()
            y = reconstruction[start:start + self.batch_size].to(self.device).float()
            for name, net in self.metrics.items():
                sums[name] += float(net(x, y).double().sum())
        count = max(source.shape[0], 1)
        return {name: sums[name] / count if name in sums else None for name in PERCEPTUAL_METRICS}


def make_perceptual(alexnet: str | os.PathLike | None = None, vgg16: str | os.PathLike | None = None,
                    dists: str | os.PathLike | None = None, device: torch.device | str = "cpu",
                    batch_size: int = 8) -> tuple[PerceptualScorer | None, dict[str, str | None]]:
    """A scorer of the metrics whose weights are given (or in the hub cache), and per metric a note:
    what it uses, or why it is skipped. ``dists``: the authors' ``alpha``/``beta`` file."""
    notes: dict[str, str | None] = {}
    metrics: dict[str, nn.Module] = {}
    alexnet_file = find_weights(alexnet, [ALEXNET_WEIGHTS], "--lpips-weights")
    if alexnet_file is None:
        notes["lpips"] = (f"LPIPS skipped: no AlexNet weights (pass --lpips-weights PATH to torchvision's "
                          f"{ALEXNET_WEIGHTS}, or put it in the torch hub cache; never downloaded)")
    else:
        metrics["lpips"] = load_lpips(alexnet_file)
        notes["lpips"] = f"LPIPS-Alex v0.1 (linear weights as torchmetrics ships them), AlexNet {alexnet_file}"
    vgg16_file = find_weights(vgg16, [VGG16_WEIGHTS], "--vgg16-weights")
    dists_file = find_weights(dists, [], "--dists-weights")
    if vgg16_file is None or dists_file is None:
        missing = " and ".join(what for what, file in ((f"VGG16 weights (--vgg16-weights PATH to torchvision's "
                                                        f"{VGG16_WEIGHTS})", vgg16_file),
                                                       ("DISTS' alpha/beta (--dists-weights PATH to the authors' "
                                                        "weights.pt)", dists_file)) if file is None)
        notes["dists"] = f"DISTS skipped: no {missing}; never downloaded"
    else:
        metrics["dists"] = load_dists(vgg16_file, dists_file)
        notes["dists"] = f"DISTS, VGG16 {vgg16_file}, alpha/beta {dists_file}"
    if not metrics:
        return None, notes
    return PerceptualScorer(metrics, batch_size=batch_size, device=device), notes
