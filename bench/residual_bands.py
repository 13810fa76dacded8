"""Residual bands: where in frequency a diffusion receiver's sample departs from its Deep JSCC.

For one diffusion receiver (``--model``, shipped, or a checkpoint path) at one AWGN SNR, each photo
of the contact sheet (kodim01, 04, 09, 10, 13, 15; ``--photos`` for others) is sent whole as
``diffjscc transmit`` sends it, once through Deep JSCC and once through the diffusion receiver with
the same channel noise. The sample's residual r = sample − Deep JSCC is then cut at Gaussian
low-pass scales σ (``--sigmas``, pixels): the row for σ is Deep JSCC + (r − blur_σ(r)), the
sample with the coarse part of its residual taken away (σ = 0: the sample itself). Per row: mean
per-image PSNR, the largest per-channel colour error, and patch FD in the photo patch network.

A diagnosis, not a receiver: it tells whether the sample's harm (PSNR below Deep JSCC − 3 dB,
colour error, blotches) sits in the low frequencies Deep JSCC already has right, or in the fine
texture a receiver is for. Writes ``residual_bands_<model>_<snr>dB.json``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import machine_info, write_json
from bench.kodak import DEFAULT_KODAK, SHEET_CROPS, channel_mean_error
from diffjscc.data import load_image_tensor
from diffjscc.errors import UserError
from diffjscc.evaluation.metrics import _blur_valid, _gaussian_window, psnr_per_image, to_uint8
from diffjscc.evaluation.patches import PatchRealism, load_patch_net
from diffjscc.evaluation.transmit import transmit_image
from diffjscc.runtime.pretrained import path_or_model
from diffjscc.system import load_system


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="diffusion_photo_128", help="a diffusion receiver: shipped name or path")
    parser.add_argument("--snr", type=float, default=10.0, help="AWGN SNR in dB")
    parser.add_argument("--sigmas", default="1,2,4,8", help="comma-separated low-pass scales in pixels")
    parser.add_argument("--kodak", type=Path, default=DEFAULT_KODAK, help="folder of the Kodak photos")
    parser.add_argument("--photos", default=",".join(SHEET_CROPS), help="comma-separated photo names")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="intra-op CPU threads (default: torch's)")
    parser.add_argument("--results", type=Path, default=Path("bench/results"), help="folder for the JSON")
    parser.set_defaults(run=run)


def low_pass(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A Gaussian blur (σ pixels, edges repeated) of a (3, H, W) float image."""
    window = _gaussian_window(sigma, x.dtype, x.device)
    half = window.numel() // 2
    return _blur_valid(F.pad(x[None], (half, half, half, half), mode="replicate"), window)[0]


def run(args: argparse.Namespace) -> int:
    try:
        sigmas = [float(v) for v in args.sigmas.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--sigmas: expected comma-separated numbers, got {args.sigmas!r}") from None
    if not sigmas or min(sigmas) <= 0 or len(set(sigmas)) < len(sigmas):
        raise UserError(f"--sigmas: expected distinct positive scales, got {args.sigmas!r}")
    names = [n.strip() for n in args.photos.split(",") if n.strip()]
    system = load_system(str(path_or_model(args.model)))
    if system.unet is None:
        raise UserError(f"{args.model} has no diffusion receiver")
    patches = PatchRealism(load_patch_net(), seed=args.seed)
    settings = ["deep_jscc", 0.0, *sigmas]  # 0: the sample
    outputs: dict = {key: [] for key in settings}
    sources = []
    for name in names:
        image = load_image_tensor(args.kodak / f"{name}.png")
        sources.append(to_uint8(image))
        base, sample = (torch.from_numpy(transmit_image(system, image, args.snr, "awgn", receiver=receiver,
                                                        seed=args.seed).output).permute(2, 0, 1).double()
                        for receiver in ("deep_jscc", "diffusion"))
        residual = sample - base
        for key in settings:
            if key == "deep_jscc":
                out = base
            else:
                out = sample if key == 0 else base + residual - low_pass(residual, key)
            outputs[key].append(out.round().clamp(0, 255).to(torch.uint8))
        print(f"{name}: sent", flush=True)
    reference = torch.cat([patches.features(s) for s in sources])
    rows = []
    for key in settings:
        psnrs = [float(psnr_per_image(s[None].double() / 255, o[None].double() / 255)[0])
                 for s, o in zip(sources, outputs[key])]
        features = torch.cat([patches.features(o) for o in outputs[key]])
        row = {"output": "Deep JSCC" if key == "deep_jscc" else "sample" if key == 0 else
               f"sample, residual low-pass (sigma {key:g} px) removed", "sigma": None if key == "deep_jscc" else key,
               "psnr": statistics.fmean(psnrs), "colour_error_max": max(channel_mean_error(s, o) for s, o in
                                                                        zip(sources, outputs[key])),
               "patch_fd": patches.score(features, reference)["patch_fd"], "per_image_psnr": psnrs}
        rows.append(row)
        print(f"{row['output']:>48}: PSNR {row['psnr']:.2f}  colour max {row['colour_error_max']:.1f}  "
              f"patch FD {row['patch_fd']:.3f}", flush=True)
    label = Path(args.model).stem
    write_json(args.results / f"residual_bands_{label}_{args.snr:g}dB.json",
               {"benchmark": "residual-bands", "model": args.model, "snr_db": args.snr, "photos": names,
                "seed": args.seed, "machine": machine_info(), "rows": rows})
    return 0
