"""LPIPS (Zhang et al., 2018) where its networks are available offline, else a stated reason.

LPIPS-Alex = sum over 5 AlexNet layers l of mean_{h,w} || w_l * (f_l(x) - f_l(y)) ||^2 on
unit-normalised channel vectors; lower is more similar. torchmetrics implements it and ships
the linear weights ``w_l``, but takes the AlexNet backbone (ImageNet weights) from torchvision.
We use it only when torchvision imports *and* the backbone file is already in the torch hub
cache (``alexnet-owt-7be5be79.pth``): no download is ever attempted, and otherwise LPIPS is
reported as null with the reason, never replaced by something else.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["ALEXNET_WEIGHTS", "LPIPSScorer", "make_lpips"]

ALEXNET_WEIGHTS = "alexnet-owt-7be5be79.pth"


class LPIPSScorer:
    """Mean LPIPS-Alex over image pairs in [0, 1], (N, 3, H, W), in batches."""

    def __init__(self, metric, batch_size: int = 64, device: torch.device | str = "cpu") -> None:
        if getattr(metric, "sync_on_compute", False):
            # Sharded evaluation combines the ranks' means itself (scoring.score_outputs); a metric
            # that also syncs in compute() waits forever for a rank that had no images to score.
            raise ValueError("the LPIPS metric must be built with sync_on_compute=False")
        self.metric = metric.to(device)
        self.batch_size = batch_size
        self.device = torch.device(device)

    @torch.no_grad()
    def score(self, source: Tensor, reconstruction: Tensor) -> float:
        self.metric.reset()
        for start in range(0, source.shape[0], self.batch_size):
            stop = start + self.batch_size
            self.metric.update(reconstruction[start:stop].to(self.device).float(),
                               source[start:stop].to(self.device).float())
        return float(self.metric.compute())


def make_lpips(device: torch.device | str = "cpu", batch_size: int = 64) -> tuple[LPIPSScorer | None, str]:
    """An LPIPS scorer and a note, or (None, the reason it is unavailable)."""
    try:
        importlib.import_module("torchvision")
    except Exception as err:  # not installed, or a build that does not load beside this torch
        return None, f"LPIPS skipped: its AlexNet backbone comes from torchvision, which does not import here ({type(err).__name__})"
    weights = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_WEIGHTS
    if not weights.is_file():
        return None, f"LPIPS skipped: AlexNet weights {weights} not found (never downloaded by diffjscc)"
    try:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True, reduction="mean",
                                                       sync_on_compute=False)
    except Exception as err:
        return None, f"LPIPS skipped: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return LPIPSScorer(metric, batch_size=batch_size, device=device), f"LPIPS-Alex (torchmetrics), backbone {weights}"
