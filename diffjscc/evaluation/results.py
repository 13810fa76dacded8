"""The results of ``diffjscc evaluate``: one typed row per system x SNR, the document that holds
them with what produced them, and its files — results.json (everything), results.csv (the rows)
and results.md (the table) — written here and read back here (``diffjscc plot``).

The document's format is ``diffjscc-evaluation/7``: keys ``format, versions, seed, data,
n_images, images, checkpoints, settings, numerics, metrics, notes, results`` (and ``per_image``,
each image's scores, when whole images of mixed sizes were evaluated); every row has exactly the keys of
:data:`ROW_FIELDS`, in that order (also the CSV's columns).
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch

from diffjscc import __version__
from diffjscc.errors import UserError
from diffjscc.runtime.rundir import write_text_atomic
from diffjscc.evaluation.metrics import (
    MS_SSIM_BETAS,
    MS_SSIM_KERNEL_SIZE,
    MS_SSIM_SIGMA,
    SSIM_KERNEL_SIZE,
    SSIM_SIGMA,
)
from diffjscc.evaluation.perceptual import PERCEPTUAL_METRICS

__all__ = ["FORMAT", "ROW_FIELDS", "ResultRow", "finish_rows", "read_results", "results_document",
           "results_table", "write_results"]

FORMAT = "diffjscc-evaluation/7"  # 2: k_over_n_complex, control, fd_cls, kid_cls(_std), acc_cls; 3: sampler;
# 4: guidance, eta; 5: spacing; 6: images (the files scored and those skipped), numerics, per_image (whole images),
# patch_fd, patch_kid, spread, equalizer, and the digital rows' codec, channel_code, mcs, modulation, code_rate,
# header, bits_sent; 7: dists, dists_note (and LPIPS without torchvision, from a weights path)


class ResultRow(TypedDict):
    """One system at one SNR. Digital rows fill the byte columns; model rows leave them None."""

    system: str  # display label, e.g. "Deep JSCC", "diffusion, ORACLE inversion", "WebP + ideal code"
    receiver: str  # deep_jscc | diffusion | digital | a control
    model: str  # checkpoint label ("" for digital rows)
    mode: str  # the checkpoint's mode, or "digital"
    channel: str
    equalizer: str | None  # fading with CSI: mmse | zf (the received symbols' equaliser); None otherwise
    snr_db: float
    k_over_n: float  # real channel symbols per source dimension (RGB value)
    k_over_n_complex: float  # complex channel uses per source dimension (the Deep JSCC literature's): k_over_n / 2
    n_symbols: int  # real channel uses the row's system uses (digital: <= those of its JSCC comparison)
    steps: int  # sampling steps = network evaluations per image (0: no diffusion)
    sampler: str  # ddim | dpm++2m (DDIM for inversion), "-" without diffusion
    guidance: float | None  # classifier-free guidance scale (1: none; 2 network evaluations per step otherwise)
    eta: float | None  # DDIM's stochasticity (0: deterministic); None without diffusion
    spacing: str | None  # the sampling timesteps: leading | trailing | quadratic; None without diffusion
    start: str  # diffusion start mode, "-" for the others
    oracle: bool  # reads the source image: an upper bound, not a result
    control: bool  # a control row (source, control_noise): a reference, not a receiver
    samples_per_image: int
    psnr: float  # dB, mean over images x samples
    ssim: float
    ms_ssim: float
    spread: float | None  # K >= 2 outputs per image: mean over pixels and images of their per-pixel std, 8-bit levels
    fid: float | None
    fid_note: str | None
    lpips: float | None  # LPIPS-Alex v0.1 (lower is more similar), null with lpips_note without its weights
    lpips_note: str | None
    dists: float | None  # DISTS (lower is more similar), null with dists_note without its weights
    dists_note: str | None
    fd_cls: float | None  # Fréchet distance in the diffjscc classifier's features (NOT Inception FID)
    kid_cls: float | None  # unbiased polynomial-kernel MMD^2 there (NOT Inception KID): subset mean
    kid_cls_std: float | None  # its standard deviation over the subsets
    acc_cls: float | None  # the classifier's top-1 accuracy on the outputs against the source labels
    patch_fd: float | None  # whole images: Fréchet distance of 32x32 patches in the photo patch network's features
    patch_kid: float | None  # whole images: KID of those patches (subset mean)
    n: int  # images
    seed: int
    budget_bytes: int | None  # digital: floor(n_symbols * C / 8)
    mean_bytes: float | None
    lost_fraction: float | None
    capacity_bits_per_use: float | None
    capacity: str | None
    codec: str | None  # digital: webp | jpeg | jpeg2000 | avif | heif
    channel_code: str | None  # digital: ideal | ldpc
    mcs: str | None  # ldpc: a name of the MCS table, or "adaptive" (then modulation/code_rate: the one chosen)
    modulation: str | None  # ldpc: QPSK | 16-QAM | 64-QAM | 256-QAM
    code_rate: float | None  # ldpc: k / n_cw of the codewords
    header: str | None  # digital: file (whole files sent) | payload (headers known to the receiver)
    bits_sent: float | None  # digital: mean over images of the file/payload bits sent (0 when nothing fits)
    checkpoint: str


ROW_FIELDS: list[str] = list(ResultRow.__annotations__)
"""Columns of results.csv, in order; every row of results.json has exactly these keys."""


def finish_rows(rows: list[dict], fid_note: str | None, perceptual_notes: dict[str, str]) -> list[ResultRow]:
    """Rows with every field, in :data:`ROW_FIELDS` order, and the reason beside a missing FID,
    LPIPS or DISTS (an infinite FID — fewer than 2 images — is recorded as missing)."""
    finished = []
    for row in rows:
        row = dict(row)
        if row["fid"] is None:
            row["fid_note"] = fid_note
        elif not math.isfinite(row["fid"]):
            row["fid"], row["fid_note"] = None, "FID needs at least 2 images"
        else:
            row["fid_note"] = None
        for name in PERCEPTUAL_METRICS:
            row[f"{name}_note"] = perceptual_notes.get(name) if row.get(name) is None else None
        row["k_over_n_complex"] = row["k_over_n"] / 2  # two real symbols make one complex channel use
        for key in ("fd_cls", "kid_cls", "kid_cls_std", "acc_cls"):
            if row.get(key) is not None and not math.isfinite(row[key]):
                row[key] = None
        finished.append(ResultRow(**{key: row.get(key) for key in ROW_FIELDS}))
    return finished


def _metric_definitions() -> dict:
    """How the per-image metrics are computed, as the document records it."""
    return {
        "psnr": "10 log10(1 / MSE) dB per image on 8-bit outputs, mean over images (x samples)",
        "averaging": "every per-image metric (PSNR too) is the mean of per-image values, not the value of the pooled "
                     "MSE: the convention of the Kodak results in the literature",
        "spread": "with K >= 2 outputs per image: the per-pixel standard deviation over the K outputs (unbiased, "
                  "root-mean-square over RGB) in 8-bit levels, mean over pixels, then over images",
        "ssim": f"Wang et al. 2004, Gaussian window {SSIM_KERNEL_SIZE} taps sigma {SSIM_SIGMA}, valid region "
                "(= scikit-image)",
        "ms_ssim": {"scales": len(MS_SSIM_BETAS), "betas": list(MS_SSIM_BETAS),
                    "kernel_size": MS_SSIM_KERNEL_SIZE, "sigma": MS_SSIM_SIGMA, "normalize": "relu"},
    }


def _versions() -> dict:
    import PIL
    import torchmetrics

    return {"diffjscc": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "torchmetrics": torchmetrics.__version__, "pillow": PIL.__version__, "numpy": np.__version__}


def results_document(*, seed: int, data: Path, n_images: int, checkpoints: list[dict], settings: dict,
                     fid_info: dict, perceptual_notes: dict[str, str], notes: list[str], rows: list[ResultRow],
                     realism_info: dict | None = None, images: dict | None = None,
                     numerics: dict | None = None, per_image: list[dict] | None = None,
                     patch_info: dict | None = None) -> dict:
    """The results document: the rows and everything needed to reproduce and read them;
    ``per_image``: each image's scores row by row (whole images of mixed sizes)."""
    document = {
        "format": FORMAT,
        "versions": _versions(),
        "seed": seed,
        "data": str(data),
        "n_images": n_images,
        "images": images,  # which files were scored, how they were chosen, which were skipped
        "checkpoints": checkpoints,
        "settings": settings,
        "numerics": numerics,  # what the receivers ran under (TF32, bf16 autocast); the metrics: full fp32
        "metrics": {**_metric_definitions(), "fid": fid_info, "lpips": perceptual_notes.get("lpips"),
                    "dists": perceptual_notes.get("dists"),
                    "realism": realism_info or {"note": "fd_cls/kid_cls/acc_cls not computed"}},
        "notes": notes,
        "results": rows,
    }
    if patch_info is not None:
        document["metrics"]["patch_realism"] = patch_info
    if per_image is not None:
        document["per_image"] = per_image
    return document


TABLE_COLUMNS = ["system", "model", "channel", "equalizer", "snr_db", "k_over_n", "k_over_n_complex", "steps",
                 "samples_per_image", "psnr", "ssim", "ms_ssim", "spread", "fd_cls", "kid_cls", "acc_cls", "patch_fd", "patch_kid", "fid",
                 "lpips", "dists", "lost_fraction", "modulation", "code_rate", "n"]
TABLE_FORMATS = {"spread": ".2f", "patch_fd": ".3f", "patch_kid": ".4f",
                 "k_over_n": ".4f", "k_over_n_complex": ".4f", "ssim": ".4f", "ms_ssim": ".4f", "lpips": ".4f", "dists": ".4f",
                 "lost_fraction": ".2f", "snr_db": "g", "code_rate": ".3f", "fd_cls": ".3f", "kid_cls": ".4f",
                 "acc_cls": ".3f"}


def results_table(document: dict) -> str:
    """Markdown table of the rows (columns that are empty everywhere are left out) and the notes."""
    from diffjscc.evaluation.figures import markdown_table

    rows = document["results"]
    columns = [c for c in TABLE_COLUMNS if any(r.get(c) not in (None, "") for r in rows) or c in ("fid",)]
    if len({r["model"] for r in rows if r["model"]}) <= 1:
        columns.remove("model")
    table = markdown_table(rows, columns, formats=TABLE_FORMATS)
    lines = [table]
    fid = document["metrics"]["fid"]
    if fid.get("skipped"):
        lines.append(fid["skipped"])
    elif fid.get("reference"):
        lines.append(f"FID: Inception-v3 pool features vs {fid['reference']}")
    for name in PERCEPTUAL_METRICS:
        if document["metrics"].get(name) and not any(r.get(name) is not None for r in rows):
            lines.append(document["metrics"][name])
    realism = document["metrics"].get("realism") or {}
    if any(r.get("fd_cls") is not None for r in rows):
        accuracy = realism.get("classifier_test_accuracy")
        lines.append(f"{realism.get('note')} ({realism.get('classifier')}"
                     + (f", {100 * accuracy:.1f} % top-1 on its test split" if accuracy is not None else "")
                     + f"; reference: {realism.get('reference')}; {realism.get('samples')})")
        if realism.get("acc_cls_sources") is not None:
            lines.append(f"acc_cls of the source images themselves (its ceiling): {realism['acc_cls_sources']:.3f}")
    if any(r.get("patch_fd") is not None for r in rows):
        lines.append(document["metrics"].get("patch_realism", {}).get("note", ""))
    lines.append("k_over_n: real channel symbols per source dimension; k_over_n_complex: complex channel uses "
                 "per source dimension (the Deep JSCC literature's convention)")
    lines += document["notes"]
    return "\n".join(lines) + "\n"


RESULT_FILES = ("results.json", "results.csv", "results.md")


def check_results_targets(out_dir: Path | None, json_path: Path | None, overwrite: bool) -> None:
    """Refuse (one line) to write over results that are already there unless ``overwrite``:
    checked before an evaluation starts, so that nothing is computed only to be refused."""
    if overwrite:
        return
    existing = [out_dir / name for name in RESULT_FILES if out_dir is not None and (out_dir / name).exists()]
    existing += [json_path] if json_path is not None and Path(json_path).exists() else []
    if existing:
        raise UserError(f"{existing[0]} holds the results of another evaluation; choose another --out/--json or "
                        f"pass --overwrite to replace them")


def write_results(document: dict, out_dir: Path | None = None, json_path: Path | None = None,
                  overwrite: bool = False) -> list[Path]:
    """results.json (everything), results.csv (header + one row per model x SNR x receiver) and
    results.md (the table) under ``out_dir``; optionally also the JSON at ``json_path``. Each file
    is written atomically; existing results are replaced only with ``overwrite``."""
    check_results_targets(out_dir, json_path, overwrite)
    text = json.dumps(document, indent=2, allow_nan=False)
    contents: list[tuple[Path, str]] = []
    if out_dir is not None:
        out_dir = Path(out_dir)
        contents += [(out_dir / "results.json", text), (out_dir / "results.csv", _csv_text(document)),
                     (out_dir / "results.md", results_table(document))]
    if json_path is not None:
        contents.append((Path(json_path), text))
    for path, content in contents:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, content)
        except OSError as err:
            raise UserError(f"cannot write {path}: {err.strerror}") from None
    return [path for path, _ in contents]


def _csv_text(document: dict) -> str:
    handle = io.StringIO(newline="")
    writer = csv.DictWriter(handle, fieldnames=ROW_FIELDS)
    writer.writeheader()
    for row in document["results"]:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return handle.getvalue()


def _csv_value(value: str | None) -> str | float | bool | None:
    """A CSV cell back as JSON would hold it: empty is None, True/False booleans, numbers floats."""
    if value in ("", None):
        return None
    if value in ("True", "False"):
        return value == "True"
    try:
        return float(value)
    except ValueError:
        return value


def read_results(paths: list[Path]) -> list[dict]:
    """The rows of results.json / results.csv files (a folder means its results.json), for plotting."""
    rows: list[dict] = []
    for path in paths:
        if path.is_dir():
            path = path / "results.json"
        if not path.is_file():
            raise UserError(f"results file not found: {path}")
        try:
            if path.suffix.lower() == ".csv":
                with open(path, newline="") as handle:
                    rows += [{key: _csv_value(value) for key, value in raw.items()} for raw in csv.DictReader(handle)]
            else:
                rows += json.loads(path.read_text())["results"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"{path} is not a results file of 'diffjscc evaluate' ({type(err).__name__})") from None
    needed = {"system", "snr_db", "k_over_n", "psnr"}
    if not rows or any(not needed <= set(r) for r in rows):
        raise UserError(f"no result rows with {', '.join(sorted(needed))} in {', '.join(map(str, paths))}")
    return rows
