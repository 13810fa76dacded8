"""Generalized Divisive Normalization (Ballé et al., 2016) and its inverse.

GDN:   ``y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2)``
IGDN:  ``y_i = x_i * sqrt(beta_i + sum_j gamma_ij x_j^2)``

``beta`` and ``gamma`` are kept non-negative with the reparametrisation used by CompressAI:
the stored parameter ``p`` maps to ``max(p, sqrt(minimum + pedestal))**2 - pedestal`` with
``pedestal = reparam_offset**2``, where the ``max`` is a lower bound whose gradient still
flows when it would push ``p`` back above the bound.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GDN", "IGDN", "LowerBound", "NonNegativeParametrizer", "lower_bound"]


class _LowerBoundFunction(torch.autograd.Function):
    """``max(x, bound)`` whose backward passes gradients that would increase ``x``."""

    @staticmethod
    def forward(ctx, x: Tensor, bound: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, bound)
        return torch.max(x, bound)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        x, bound = ctx.saved_tensors
        pass_through = (x >= bound) | (grad_output < 0)
        return pass_through.to(grad_output.dtype) * grad_output, None


def lower_bound(x: Tensor, bound: Tensor) -> Tensor:
    """Differentiable lower bound ``max(x, bound)`` (gradient not cut below the bound if it points up)."""
    return _LowerBoundFunction.apply(x, bound)


class LowerBound(nn.Module):
    """Module form of :func:`lower_bound` with a fixed scalar bound (stored as a buffer)."""

    bound: Tensor

    def __init__(self, bound: float) -> None:
        super().__init__()
        self.register_buffer("bound", torch.tensor([float(bound)]))

    def forward(self, x: Tensor) -> Tensor:
        return lower_bound(x, self.bound.to(x.dtype))


class NonNegativeParametrizer(nn.Module):
    """Reparametrise a value ``v >= minimum`` as ``v = max(p, sqrt(minimum + ped))^2 - ped``."""

    pedestal: Tensor

    def __init__(self, minimum: float = 0.0, reparam_offset: float = 2.0**-18) -> None:
        super().__init__()
        self.minimum = float(minimum)
        self.reparam_offset = float(reparam_offset)
        pedestal = self.reparam_offset**2
        self.register_buffer("pedestal", torch.tensor([pedestal]))
        self.lower_bound = LowerBound((self.minimum + pedestal) ** 0.5)

    def init(self, x: Tensor) -> Tensor:
        """Stored parameter value that maps to ``x``: ``sqrt(max(x + ped, ped))``."""
        return torch.sqrt(torch.clamp(x + self.pedestal, min=self.pedestal))

    def forward(self, x: Tensor) -> Tensor:
        out = self.lower_bound(x)
        return out * out - self.pedestal.to(out.dtype)


class GDN(nn.Module):
    """GDN layer over the channel dim of (B, C, H, W) tensors; ``inverse=True`` gives IGDN.

    ``y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2)`` (IGDN multiplies instead), with
    ``beta >= beta_min`` and ``gamma >= 0``; initialised ``beta = 1``, ``gamma = gamma_init * I``.
    """

    def __init__(
        self,
        in_channels: int,
        inverse: bool = False,
        beta_min: float = 1e-6,
        gamma_init: float = 0.1,
    ) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.inverse = bool(inverse)
        self.beta_reparam = NonNegativeParametrizer(minimum=beta_min)
        self.gamma_reparam = NonNegativeParametrizer()
        beta = torch.ones(self.in_channels)
        gamma = gamma_init * torch.eye(self.in_channels)
        self.beta = nn.Parameter(self.beta_reparam.init(beta))
        self.gamma = nn.Parameter(self.gamma_reparam.init(gamma))

    def effective_params(self) -> tuple[Tensor, Tensor]:
        """The non-negative ``(beta (C,), gamma (C, C))`` actually used in the formula."""
        return self.beta_reparam(self.beta), self.gamma_reparam(self.gamma)

    def forward(self, x: Tensor) -> Tensor:
        beta, gamma = self.effective_params()
        c = self.in_channels
        norm = F.conv2d(x * x, gamma.to(x.dtype).view(c, c, 1, 1), beta.to(x.dtype))
        norm = torch.sqrt(norm) if self.inverse else torch.rsqrt(norm)
        return x * norm

    def extra_repr(self) -> str:
        return f"{self.in_channels}, inverse={self.inverse}"


class IGDN(GDN):
    """Inverse GDN: ``y_i = x_i * sqrt(beta_i + sum_j gamma_ij x_j^2)`` (decoder side)."""

    def __init__(self, in_channels: int, beta_min: float = 1e-6, gamma_init: float = 0.1) -> None:
        super().__init__(in_channels, inverse=True, beta_min=beta_min, gamma_init=gamma_init)
