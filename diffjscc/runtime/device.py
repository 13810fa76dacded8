"""Which device a run uses."""

from __future__ import annotations

import torch

from diffjscc.errors import UserError

__all__ = ["resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; asking for a missing GPU is a UserError."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was requested but no CUDA GPU is available (use --set device=cpu)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
