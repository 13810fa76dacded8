"""Which device a run uses, and the numerics a GPU user expects there.

On CUDA, diffjscc turns on TF32 for float32 matrix products and convolutions (Ampere and newer:
about 10-bit mantissa products with fp32 accumulation, several times faster than full fp32 and
what PyTorch's own guidance recommends for training) and ``cudnn.benchmark`` (the fastest
convolution algorithms for the fixed image size, picked once per input shape). Set
``DIFFJSCC_TF32=0`` for full fp32 products. bf16 autocast is the config key ``bf16``: training,
sampling and evaluation all use it when it is on.
"""

from __future__ import annotations

import functools
import os

import torch

from diffjscc.errors import UserError

__all__ = ["TF32_ENV", "numerics_id", "resolve_device"]

TF32_ENV = "DIFFJSCC_TF32"


def _tf32_wanted() -> bool:
    return os.environ.get(TF32_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _configure_cuda() -> None:
    tf32 = _tf32_wanted()
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; asking for a missing GPU is a UserError. Choosing
    CUDA also sets its numerics (see the module docstring)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was requested but no CUDA GPU is available (use --set device=cpu)")
    device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else
                          "cpu" if name == "auto" else name)
    if device.type == "cuda":
        _configure_cuda()
    return device


def numerics_id(device: torch.device | str) -> str:
    """What, besides the weights, changes a network's float32 outputs on ``device``: for keys of
    cached results (FID reference statistics computed with TF32 on a GPU differ from the CPU's)."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    return "cuda-tf32" if torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32 else "cuda-fp32"


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether bf16 runs natively (AVX512-BF16 or AMX on CPU; the GPU's own check on CUDA), and
    how that was decided. Without it, CPU autocast to bf16 emulates the type and is many times
    slower than fp32, so ``bf16: auto`` leaves it off."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported()), "torch.cuda.is_bf16_supported()"
    checks = {"AVX512-BF16": getattr(torch.cpu, "_is_avx512_bf16_supported", None),
              "AMX": getattr(torch.cpu, "_is_amx_tile_supported", None)}
    found = {name: bool(check()) for name, check in checks.items() if check is not None}
    described = ", ".join(f"{name} {'yes' if ok else 'no'}" for name, ok in found.items())
    return any(found.values()), f"CPU capability {torch.backends.cpu.get_cpu_capability()}; {described}"


@functools.lru_cache(maxsize=None)
def _native(device_type: str) -> bool:
    return native_bf16(torch.device(device_type))[0]


def bf16_enabled(setting: str, device: torch.device | str) -> bool:
    """Whether the ``bf16`` config setting (false | true | auto) autocasts to bf16 on ``device``."""
    if setting == "auto":
        return _native(torch.device(device).type)
    return setting == "true"
