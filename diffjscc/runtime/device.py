"""Which device a run uses, and the numerics a GPU user expects there.

:func:`resolve_device` only picks the device: it changes no process-wide setting, so a program
that imports diffjscc keeps its own numerics. A diffjscc job (``train``, ``evaluate``,
``sample``, ``transmit``, the benchmarks) calls :func:`configure_job_numerics` where it starts:
on CUDA that turns on TF32 for float32 matrix products and convolutions (Ampere and newer:
about 10-bit mantissa products with fp32 accumulation, several times faster than full fp32 and
what PyTorch's own guidance recommends for training) and ``cudnn.benchmark`` (the fastest
convolution algorithms for the fixed image size, picked once per input shape). Set
``DIFFJSCC_TF32=0`` for full fp32 products. bf16 autocast is the config key ``bf16``: training,
sampling and evaluation all use it when it is on.

Metrics never run under TF32: the scorers run inside :func:`full_fp32`, and the results record
what the receiver ran under (:func:`numerics`).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

import torch

from diffjscc.errors import UserError

__all__ = ["TF32_ENV", "configure_job_numerics", "full_fp32", "numerics", "numerics_id", "resolve_device"]

TF32_ENV = "DIFFJSCC_TF32"


def _tf32_wanted() -> bool:
    return os.environ.get(TF32_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; asking for a missing GPU is a UserError. Changes
    no global setting (a job sets its numerics with :func:`configure_job_numerics`)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was requested but no CUDA GPU is available (use --set device=cpu)")
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else
                        "cpu" if name == "auto" else name)


def configure_job_numerics(device: torch.device | str) -> dict:
    """Set the process-wide numerics of a diffjscc job on ``device`` (CUDA: TF32 unless
    ``DIFFJSCC_TF32=0``, and ``cudnn.benchmark``; CPU: nothing) and return :func:`numerics`.
    For entry points only (the CLI's commands, the benchmarks), never for library code."""
    if torch.device(device).type == "cuda":
        tf32 = _tf32_wanted()
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True
    return numerics(device)


@contextlib.contextmanager
def full_fp32() -> Iterator[None]:
    """TF32 off for the block (float32 products in full fp32), as it was afterwards: what the
    metrics run under, so a score never depends on the job's speed settings. Also a decorator."""
    matmul, conv = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, conv


def numerics(device: torch.device | str) -> dict:
    """What float32 network outputs on ``device`` are computed with now: for the results' record.
    TF32 applies on CUDA only; ``float32_matmul_precision`` is PyTorch's global setting."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    return {"device": str(device), "id": numerics_id(device),
            "tf32_matmul": cuda and bool(torch.backends.cuda.matmul.allow_tf32),
            "tf32_conv": cuda and bool(torch.backends.cudnn.allow_tf32),
            "cudnn_benchmark": cuda and bool(torch.backends.cudnn.benchmark),
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


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
