"""What the benchmark tests hold a bench's numbers against: an evaluation of the same
checkpoints by ``diffjscc evaluate``, and the PSNR of the best constant image (a receiver that
ignores the channel), computed here from the PNG files without the package."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from diffjscc.cli import main as diffjscc_main


def evaluate_rows(checkpoints: list[Path], data: Path, out: Path, *args: str) -> list[dict]:
    """The result rows of ``diffjscc evaluate`` on ``checkpoints`` (in that order) over ``data``."""
    argv = ["evaluate", "--data", str(data), "--no-fid", "--no-progress", "--device", "cpu", "--json", str(out), *args]
    for checkpoint in checkpoints:
        argv += ["--checkpoint", str(checkpoint)]
    assert diffjscc_main(argv) == 0
    return json.loads(out.read_text())["results"]


def mean_colour_psnr(files: list[Path]) -> float:
    """Mean PSNR (dB, peak 255) over ``files`` of their set's per-channel mean colour, rounded to
    uint8: the best constant image in MSE, which any receiver that uses the channel must beat."""
    images = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) for p in files])
    constant = np.round(images.reshape(-1, 3).mean(axis=0))
    mse = ((images - constant) ** 2).mean(axis=(1, 2, 3))
    return float(np.mean(10 * np.log10(255.0**2 / mse)))
