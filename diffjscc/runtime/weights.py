"""Weights files of the third-party evaluation networks (Inception-v3 for FID, AlexNet and VGG16
for LPIPS and DISTS): given by a path or found in the torch hub cache, never downloaded, and read
with ``weights_only=True`` so that a tampered file cannot run code."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from diffjscc.errors import UserError

__all__ = ["find_weights", "load_state_dict_file"]


def find_weights(explicit: str | os.PathLike | None, names: Sequence[str], flag: str) -> Path | None:
    """A weights file: ``explicit`` (must exist; ``flag`` names it in the error), else the first of
    ``names`` in the torch hub cache (``$TORCH_HOME/hub/checkpoints``, where torchvision,
    torchmetrics and pytorch-fid keep what they download), else None."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise UserError(f"{flag}: file not found: {path}")
        return path
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return next((cache / name for name in names if (cache / name).is_file()), None)


def load_state_dict_file(path: str | os.PathLike, what: str) -> dict[str, Tensor]:
    """The state dict in ``path``, read safely (``weights_only``); a one-line error otherwise."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle/zip errors of a wrong or truncated file
        raise UserError(f"cannot read {what} {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"{what} {path} is not a state dict of tensors")
    return state
