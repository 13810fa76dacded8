"""The evaluation protocol: SNR sweeps of every receiver of one or more checkpoints and of the
digital baselines, scored the same way, in one table.

For each checkpoint, each SNR (dB) and each receiver, one row:

* ``deep_jscc``  — the Deep JSCC decoder (modes ``jscc``, ``frozen``): the JSCC baseline;
* ``diffusion``, by start mode —
  ``gaussian``: x_T ~ N(0, I), K posterior samples per image, each scored (a real receiver);
  ``mean``: the pixel average of those K samples, a Monte-Carlo MMSE estimate E[x | y]
  (higher PSNR, blurrier: for the PSNR-oriented user);
  ``inversion``: x_T from DDIM inversion of the **source** image — the receiver does not have
  it, so this is an ORACLE upper bound, flagged ``oracle: true`` in every row;
* a digital codec + ideal channel code (:mod:`diffjscc.evaluation.digital`) per codec asked for.

Every receiver of one checkpoint at one SNR sees the same received latent y (same channel
noise), and every checkpoint sees the same noise realisation (seeded by ``seed``), so rows are
paired comparisons. Scores: PSNR, SSIM and MS-SSIM per image on 8-bit outputs (means over
images x samples), FID of the whole set of outputs against the reference statistics, LPIPS
where its networks are available; FID/LPIPS are null with a recorded reason otherwise.

Noise. Batch ``b`` (of ``batch_size`` images, in file order) draws its channel noise and its
sampling noise from generators seeded by (``seed``, ``b``) alone — batch 0 from ``seed`` and
``seed + 1`` — the same for every checkpoint and SNR. An image's noise thus depends on the
seed and the batch size, never on how many processes run the evaluation.

Sharded (under ``torchrun`` / ``mpiexec`` / ``srun``, once the process group is up): each rank
takes a contiguous block of the batches (and of the images, for the digital baselines), and the
scores are combined exactly — sums of per-image PSNR/SSIM/MS-SSIM and counts, FID's feature
sums (:class:`~diffjscc.evaluation.fid.FIDScorer` with ``sharded=True``), LPIPS weighted by
count, the digital baselines' byte sums and lost counts — so every number is the one a single
process computes, up to float summation order. Rank 0 alone prints; every rank returns the same
document, and callers write it on rank 0 only.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from diffjscc import __version__
from diffjscc.channel import bandwidth_ratio
from diffjscc.config import CHANNELS, START_MODES
from diffjscc.errors import UserError
from diffjscc.evaluation.digital import CODECS, DigitalLink, byte_budget, capacity_bits_per_use, codec_available
from diffjscc.evaluation.fid import FIDScorer
from diffjscc.evaluation.lpips import LPIPSScorer
from diffjscc.evaluation.metrics import (
    MS_SSIM_BETAS,
    MS_SSIM_KERNEL_SIZE,
    MS_SSIM_SIGMA,
    SSIM_KERNEL_SIZE,
    SSIM_SIGMA,
    ms_ssim_per_image,
    psnr_per_image,
    ssim_per_image,
    to_uint8,
)
from diffjscc.system import TransmissionSystem, build_channel, load_system
from diffjscc.runtime.distributed import all_reduce_sum, get_world_size, is_main_process, shard_range
from diffjscc.runtime.seeding import batch_seeds

__all__ = ["ROW_FIELDS", "EvalModel", "Protocol", "load_models", "run_protocol",
           "score_outputs", "write_results", "results_table"]

DEFAULT_MEAN_SAMPLES = 4

ROW_FIELDS = [
    "system", "receiver", "model", "mode", "channel", "snr_db", "k_over_n", "n_symbols", "steps", "start",
    "oracle", "samples_per_image", "psnr", "ssim", "ms_ssim", "fid", "fid_note", "lpips", "lpips_note",
    "n", "seed", "budget_bytes", "mean_bytes", "lost_fraction", "capacity_bits_per_use", "capacity",
    "checkpoint",
]
"""Columns of results.csv, in order; every row of results.json has exactly these keys."""


@dataclass
class EvalModel:
    """One checkpoint to evaluate; ``label`` names it in tables (its run folder by default)."""

    label: str
    checkpoint: Path
    system: TransmissionSystem


def load_models(paths: Sequence[Path], device: torch.device | str = "cpu") -> list[EvalModel]:
    """Load checkpoints (EMA weights, eval mode) and give each a unique short label."""
    if not paths:
        raise UserError("give at least one --checkpoint")
    labels = [Path(p).parent.name or Path(p).stem for p in paths]
    if len(set(labels)) < len(labels):
        labels = [f"{Path(p).parent.name}/{Path(p).stem}" if Path(p).parent.name else Path(p).stem for p in paths]
    if len(set(labels)) < len(labels):
        raise UserError("the same --checkpoint is given twice")
    models = []
    for label, path in zip(labels, paths):
        system = load_system(str(path), device=device)
        if system.encoder is None:
            raise UserError(f"{path} is an unconditional model: it has no transmitter to evaluate over a channel")
        models.append(EvalModel(label, Path(path), system))
    sizes = {m.system.cfg.image_size for m in models}
    if len(sizes) > 1:
        raise UserError(f"the checkpoints have different image sizes {sorted(sizes)}; evaluate them separately")
    return models


@dataclass
class Protocol:
    """What to run. ``samples_per_image`` (K) defaults to 4 when ``mean`` is asked for, else 1."""

    snrs: list[float]
    starts: tuple[str, ...] = ("gaussian",)
    steps: int = 20
    samples_per_image: int | None = None
    limit: int | None = None
    seed: int = 0
    batch_size: int = 64
    channel: str | None = None
    digital: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.snrs:
            raise UserError("give at least one SNR")
        for start in self.starts:
            if start not in START_MODES:
                raise UserError(f"unknown start mode {start!r}; expected {', '.join(START_MODES)}")
        if not self.starts:
            raise UserError("give at least one start mode")
        for name, value in (("steps", self.steps), ("batch-size", self.batch_size),
                            ("limit", self.limit if self.limit is not None else 1),
                            ("samples-per-image", self.samples_per_image if self.samples_per_image is not None else 1)):
            if value <= 0:
                raise UserError(f"--{name} must be positive")
        if "mean" in self.starts and self.samples_per_image == 1:
            raise UserError("--start mean averages K posterior samples: give --samples-per-image K >= 2")
        if self.channel is not None and self.channel not in CHANNELS:
            raise UserError(f"unknown channel {self.channel!r}; expected {', '.join(CHANNELS)}")
        for codec in self.digital:
            if codec not in CODECS:
                raise UserError(f"unknown codec {codec!r}; expected {', '.join(CODECS)}")

    @property
    def samples(self) -> int:
        if self.samples_per_image is not None:
            return self.samples_per_image
        return DEFAULT_MEAN_SAMPLES if "mean" in self.starts else 1


def _images_float(u8: torch.Tensor) -> torch.Tensor:
    return u8.float() / 255.0


def score_outputs(source: torch.Tensor, outputs: torch.Tensor, fid: FIDScorer | None = None,
                  lpips: LPIPSScorer | None = None, batch: int = 256, sharded: bool = False) -> dict:
    """PSNR, SSIM, MS-SSIM (per-image means), FID and LPIPS of uint8 outputs against uint8 sources.

    ``outputs`` may hold K samples per source, ordered sample-major (row ``k * N + i`` is sample
    ``k`` of image ``i``); per-image metrics then average over all N * K pairs, FID takes the
    N * K outputs as the generated set.

    ``sharded``: ``source``/``outputs`` are this rank's share (possibly empty); every rank calls
    this and gets the scores of the union (sums and counts combined over ranks).
    """
    if source.dtype != torch.uint8 or outputs.dtype != torch.uint8:
        raise ValueError("score_outputs takes uint8 images")
    repeats = outputs.shape[0] // source.shape[0] if source.shape[0] else 0
    if repeats * source.shape[0] != outputs.shape[0]:
        raise ValueError(f"{outputs.shape[0]} outputs for {source.shape[0]} sources")
    target = source.repeat(repeats, 1, 1, 1)
    sums = torch.zeros(4, dtype=torch.float64)  # psnr, ssim, ms_ssim sums; number of pairs
    for start in range(0, outputs.shape[0], batch):
        x, y = _images_float(target[start:start + batch]), _images_float(outputs[start:start + batch])
        sums[0] += psnr_per_image(x, y).double().sum()
        sums[1] += ssim_per_image(x, y).double().sum()
        sums[2] += ms_ssim_per_image(x, y).double().sum()
    sums[3] = outputs.shape[0]
    local_lpips = 0.0
    if lpips is not None and outputs.shape[0]:
        local_lpips = lpips.score(_images_float(target), _images_float(outputs))
    if sharded:
        sums = all_reduce_sum(sums)
        if lpips is not None:  # a mean per rank: weight it by the rank's count
            weighted = torch.tensor([local_lpips * outputs.shape[0]], dtype=torch.float64)
            local_lpips = float(all_reduce_sum(weighted)[0]) / float(sums[3])
    count = float(sums[3])
    scores = {name: float(sums[i]) / count for i, name in enumerate(("psnr", "ssim", "ms_ssim"))}
    scores["fid"] = fid.score(outputs, sharded=sharded) if fid is not None else None
    scores["lpips"] = float(local_lpips) if lpips is not None else None
    return scores


def _fingerprint(*modules: torch.nn.Module) -> str:
    """Hash of the weights of ``modules``: the same Deep JSCC in two checkpoints is scored once."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _batches(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def _my_batches(n: int, size: int) -> tuple[list[tuple[int, slice]], slice]:
    """This rank's contiguous block of (index, batch) and the slice of images they cover."""
    batches = list(enumerate(_batches(n, size)))
    share = shard_range(len(batches))
    mine = batches[share.start:share.stop]
    covered = slice(mine[0][1].start, mine[-1][1].stop) if mine else slice(0, 0)
    return mine, covered


def _load_images(data_dir: Path, image_size: int, with_labels: bool, limit: int | None):
    from diffjscc.data import ImageFolderDataset

    dataset = ImageFolderDataset(data_dir, image_size=image_size, with_labels=with_labels)
    images, labels = dataset.first(limit)
    return images, labels, dataset.files[:images.shape[0]]


@torch.no_grad()
def _model_rows(model: EvalModel, images: torch.Tensor, labels: torch.Tensor | None, source_u8: torch.Tensor,
                protocol: Protocol, fid: FIDScorer | None, lpips: LPIPSScorer | None, skip_deep: bool,
                bar, echo) -> list[dict]:
    system, cfg = model.system, model.system.cfg
    device = next(system.parameters()).device
    kind = protocol.channel or cfg.channel
    channel = build_channel(cfg, kind).eval()
    ratio = bandwidth_ratio(cfg.latent_dim, (3, cfg.image_size, cfg.image_size))
    K = protocol.samples
    starts = [s for s in protocol.starts] if system.unet is not None else []
    use_labels = labels is not None and cfg.class_cond
    sharded = get_world_size() > 1
    mine, covered = _my_batches(images.shape[0], protocol.batch_size)
    my_source = source_u8[covered]
    keys = ((["deep_jscc"] if system.decoder is not None and not skip_deep else [])
            + [k for k in ("gaussian", "mean", "inversion") if k in starts])
    rows = []
    for snr in protocol.snrs:
        outs: dict[str, list[torch.Tensor]] = {}
        for index, part in mine:
            channel_seed, sample_seed = batch_seeds(protocol.seed, index)
            g_channel = torch.Generator(device=device).manual_seed(channel_seed)
            g_sample = torch.Generator(device=device).manual_seed(sample_seed)
            x = images[part].to(device)
            lab = labels[part].to(device) if use_labels else None
            received = system.transmit(x, snr_db=snr, generator=g_channel, channel=channel)
            if system.decoder is not None and not skip_deep:
                outs.setdefault("deep_jscc", []).append(to_uint8(system.decode(received, snr)).cpu())
            if "gaussian" in starts or "mean" in starts:
                samples = [system.receive(received, steps=protocol.steps, start="gaussian", class_labels=lab,
                                          generator=g_sample, snr_db=snr) for _ in range(K)]
                if "gaussian" in starts:
                    outs.setdefault("gaussian", []).append(torch.stack([to_uint8(s).cpu() for s in samples]))
                if "mean" in starts:
                    outs.setdefault("mean", []).append(to_uint8(torch.stack(samples).mean(0)).cpu())
            if "inversion" in starts:
                out = system.receive(received, steps=protocol.steps, start="inversion", source=x, class_labels=lab,
                                     generator=g_sample, snr_db=snr)
                outs.setdefault("inversion", []).append(to_uint8(out).cpu())
            bar.update(x.shape[0])
        base = {"model": model.label, "checkpoint": str(model.checkpoint), "mode": cfg.mode, "channel": kind,
                "snr_db": float(snr), "k_over_n": ratio, "n_symbols": cfg.latent_dim, "seed": protocol.seed,
                "n": int(images.shape[0])}
        for key in keys:  # the same on every rank, whether it had batches or not
            chunks = outs.get(key)
            if not chunks:
                outputs = my_source[:0]
            elif key == "gaussian":
                stacked = torch.cat(chunks, dim=1)  # (K, N, 3, H, W)
                outputs = stacked.reshape(-1, *stacked.shape[2:])
            else:
                outputs = torch.cat(chunks)
            row = dict(base)
            if key == "deep_jscc":
                row.update(system="Deep JSCC", receiver="deep_jscc", steps=0, start="-", oracle=False,
                           samples_per_image=1)
            else:
                name = {"gaussian": "diffusion", "mean": f"diffusion, mean of {K}",
                        "inversion": "diffusion, ORACLE inversion"}[key]
                row.update(system=name, receiver="diffusion", steps=protocol.steps, start=key,
                           oracle=key == "inversion", samples_per_image=1 if key == "inversion" else K)
            row.update(score_outputs(my_source, outputs, fid, lpips, sharded=sharded))
            rows.append(row)
            echo(_row_line(row))
    return rows


def _digital_rows(source_u8: torch.Tensor, codecs: list[str], kinds_and_n: list[tuple[str, int, int]],
                  protocol: Protocol, fid: FIDScorer | None, lpips: LPIPSScorer | None, bar, echo) -> list[dict]:
    images = source_u8.permute(0, 2, 3, 1).contiguous().numpy()
    sharded = get_world_size() > 1
    share = shard_range(images.shape[0])  # this rank's images: codecs work per image
    mine, my_source = images[share.start:share.stop], source_u8[share.start:share.stop]
    rows = []
    for name in codecs:
        link = DigitalLink(CODECS[name], mine)
        if sharded:  # a lost image is shown as the mean colour of the whole set, not of a share
            link.mean_colour = DigitalLink(CODECS[name], images).mean_colour
        for kind, n_symbols, size in kinds_and_n:
            for snr in protocol.snrs:
                capacity, capacity_name = capacity_bits_per_use(kind, snr)
                budget = byte_budget(n_symbols, snr, kind)
                if len(mine):
                    received, stats = link.transmit(budget)
                else:
                    received, stats = mine, {"mean_bytes": 0.0, "lost_fraction": 0.0}
                if sharded:  # byte sum, fitted and lost counts (exact integers) over ranks
                    lost = round(stats["lost_fraction"] * len(mine))
                    fitted = len(mine) - lost
                    total = all_reduce_sum(torch.tensor([round(stats["mean_bytes"] * fitted), fitted, lost],
                                                        dtype=torch.long)).tolist()
                    stats = {"mean_bytes": total[0] / total[1] if total[1] else 0.0,
                             "lost_fraction": total[2] / images.shape[0]}
                outputs = torch.from_numpy(received).permute(0, 3, 1, 2).contiguous()
                row = {"system": f"{CODECS[name].label} + ideal code", "receiver": name, "model": "", "mode": "digital",
                       "channel": kind, "snr_db": float(snr), "k_over_n": bandwidth_ratio(n_symbols, (3, size, size)),
                       "n_symbols": n_symbols, "steps": 0, "start": "-", "oracle": False, "samples_per_image": 1,
                       "n": int(images.shape[0]), "seed": protocol.seed, "budget_bytes": budget,
                       "mean_bytes": stats["mean_bytes"], "lost_fraction": stats["lost_fraction"],
                       "capacity_bits_per_use": capacity, "capacity": capacity_name, "checkpoint": ""}
                row.update(score_outputs(my_source, outputs, fid, lpips, sharded=sharded))
                rows.append(row)
                echo(_row_line(row))
                bar.update(len(mine))
    return rows


def _row_line(row: dict) -> str:
    suffix = {"mean": f" (mean of {row['samples_per_image']})",
              "inversion": " (ORACLE: x_T from the source image)"}.get(row["start"], "")
    extra = ""
    if row.get("budget_bytes") is not None:
        extra = f", budget {row['budget_bytes']} B, lost {row['lost_fraction']:.0%}"
    fid = f"  FID {row['fid']:.2f}" if row.get("fid") is not None else ""
    model = f" [{row['model']}]" if row.get("model") else ""
    return (f"{row['receiver']}{suffix}: PSNR {row['psnr']:.2f} dB  SSIM {row['ssim']:.4f}  "
            f"MS-SSIM {row['ms_ssim']:.4f}{fid}  at {row['snr_db']:g} dB, k/n {row['k_over_n']:.4f}, "
            f"n={row['n']}{model}{extra}")


def run_protocol(models: Sequence[EvalModel], data_dir: Path, protocol: Protocol,
                 fid: FIDScorer | None = None, fid_info: dict | None = None,
                 fid_reference: Sequence[Path] | None = None,
                 lpips: LPIPSScorer | None = None, lpips_note: str = "",
                 progress: bool = True, echo=print) -> dict:
    """Run the whole protocol; returns the results document (see :func:`write_results`).

    ``fid_reference``: files whose statistics FID compares against (cached); None means the
    evaluated source images themselves.

    Inside a process group of several ranks (every rank calls this with the same arguments) the
    work is sharded and the scores combined exactly; only rank 0 echoes and shows progress.
    """
    sharded = get_world_size() > 1
    if not is_main_process():
        progress, echo = False, (lambda *_args, **_kwargs: None)
    cfg0 = models[0].system.cfg
    with_labels = any(m.system.cfg.class_cond for m in models)
    images, labels, files = _load_images(Path(data_dir), cfg0.image_size, with_labels, protocol.limit)
    source_u8 = to_uint8(images)
    fid_info = dict(fid_info or {})
    if fid is not None:
        from diffjscc.data import load_image_tensor

        if fid_reference is None:
            fid_info["reference"] = f"the {len(files)} evaluated source images of {data_dir}"
            index = {path: i for i, path in enumerate(files)}
            note = fid.reference_from_files(files, lambda paths: source_u8[[index[p] for p in paths]],
                                            sharded=sharded)
        else:
            fid_info["reference"] = f"{len(fid_reference)} images of {Path(fid_reference[0]).parent}"

            def load(paths):
                tensors = [load_image_tensor(p) for p in paths]
                if len({t.shape for t in tensors}) > 1:
                    raise UserError("--fid-ref images must all have the same size")
                return to_uint8(torch.stack(tensors))

            note = fid.reference_from_files(fid_reference, load, sharded=sharded)
        fid_info["reference_note"] = note
        echo(f"FID: {note}")
    fid_note = None if fid is not None else fid_info.get("skipped", "FID not computed")
    lpips_row_note = None if lpips is not None else lpips_note

    K = protocol.samples
    _, covered = _my_batches(images.shape[0], protocol.batch_size)  # this rank's share, for the progress bar
    per_model = sum(len(protocol.snrs) for _ in models) * (covered.stop - covered.start)
    kinds_and_n = sorted({(protocol.channel or m.system.cfg.channel, m.system.cfg.latent_dim, m.system.cfg.image_size)
                          for m in models})
    notes = list(protocol.notes)
    if any(kind == "none" for kind, _, _ in kinds_and_n) and protocol.digital:
        notes.append("no digital baseline over channel 'none' (no capacity limit)")
        kinds_and_n = [k for k in kinds_and_n if k[0] != "none"]
    digital = [c for c in protocol.digital if codec_available(c)]
    for codec in protocol.digital:
        if codec not in digital:
            notes.append(f"codec {codec} skipped: this Pillow build cannot write it")
    work = per_model + len(digital) * len(kinds_and_n) * len(protocol.snrs) * len(shard_range(images.shape[0]))
    rows: list[dict] = []
    seen_deep: dict[str, str] = {}
    with tqdm(total=work, desc="evaluate", unit="img", disable=not progress, leave=False) as bar:
        write = (lambda line: bar.write(line)) if progress else echo
        for model in models:
            system = model.system
            if system.unet is None and set(protocol.starts) - {"gaussian"}:
                notes.append(f"{model.label} ({system.cfg.mode}) has no diffusion receiver: start modes do not apply")
            skip_deep = False
            if system.decoder is not None:
                key = _fingerprint(system.encoder, system.decoder) + (protocol.channel or system.cfg.channel)
                if key in seen_deep:
                    skip_deep = True
                    notes.append(f"Deep JSCC of {model.label} has the same weights as that of {seen_deep[key]}: "
                                 f"scored once")
                seen_deep.setdefault(key, model.label)
            rows += _model_rows(model, images, labels, source_u8, protocol, fid, lpips, skip_deep, bar, write)
        if digital and kinds_and_n:
            rows += _digital_rows(source_u8, digital, kinds_and_n, protocol, fid, lpips, bar, write)
    for row in rows:
        if row["fid"] is None:
            row["fid_note"] = fid_note
        elif not math.isfinite(row["fid"]):
            row["fid"], row["fid_note"] = None, "FID needs at least 2 images"
        else:
            row["fid_note"] = None
        row["lpips_note"] = lpips_row_note if row["lpips"] is None else None
        for key in ROW_FIELDS:
            row.setdefault(key, None)
    rows = [{key: row[key] for key in ROW_FIELDS} for row in rows]
    if any(row["oracle"] for row in rows):
        notes.append("ORACLE rows (start 'inversion') obtain x_T by DDIM-inverting the source image, which a "
                     "real receiver does not have: an upper bound, not a result.")
    if digital:
        notes.append("digital rows: largest-quality file with at most floor(n * C / 8) bytes, C = capacity per real "
                     "channel use (AWGN: 1/2 log2(1+SNR); Rayleigh: ergodic); images that do not fit are lost and "
                     "shown as the mean-colour image of the set (lost_fraction)")
    return {
        "format": "diffjscc-evaluation/1",
        "versions": _versions(),
        "seed": protocol.seed,
        "data": str(data_dir),
        "n_images": int(images.shape[0]),
        "checkpoints": [{"label": m.label, "path": str(m.checkpoint), "mode": m.system.cfg.mode,
                         "channel": m.system.cfg.channel, "latent_dim": m.system.cfg.latent_dim}
                        for m in models],
        "settings": {"snr_db": [float(s) for s in protocol.snrs], "starts": list(protocol.starts),
                     "steps": protocol.steps, "samples_per_image": K, "batch_size": protocol.batch_size,
                     "channel": protocol.channel, "digital": list(digital), "limit": protocol.limit},
        "metrics": {
            "psnr": "10 log10(1 / MSE) dB per image on 8-bit outputs, mean over images (x samples)",
            "ssim": f"Wang et al. 2004, Gaussian window {SSIM_KERNEL_SIZE} taps sigma {SSIM_SIGMA}, valid region "
                    "(= scikit-image)",
            "ms_ssim": {"scales": len(MS_SSIM_BETAS), "betas": list(MS_SSIM_BETAS),
                        "kernel_size": MS_SSIM_KERNEL_SIZE, "sigma": MS_SSIM_SIGMA, "normalize": "relu"},
            "fid": fid_info,
            "lpips": lpips_note,
        },
        "notes": notes,
        "results": rows,
    }


def _versions() -> dict:
    import PIL
    import torchmetrics

    return {"diffjscc": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "torchmetrics": torchmetrics.__version__, "pillow": PIL.__version__, "numpy": np.__version__}


TABLE_COLUMNS = ["system", "model", "channel", "snr_db", "k_over_n", "steps", "samples_per_image", "psnr", "ssim",
                 "ms_ssim", "fid", "lpips", "lost_fraction", "n"]
TABLE_FORMATS = {"k_over_n": ".4f", "ssim": ".4f", "ms_ssim": ".4f", "lpips": ".4f", "lost_fraction": ".2f",
                 "snr_db": "g"}


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
    if document["metrics"]["lpips"] and not any(r["lpips"] is not None for r in rows):
        lines.append(document["metrics"]["lpips"])
    lines += document["notes"]
    return "\n".join(lines) + "\n"


def write_results(document: dict, out_dir: Path | None = None, json_path: Path | None = None) -> list[Path]:
    """results.json (everything), results.csv (header + one row per model x SNR x start mode) and
    results.md (the table) under ``out_dir``; optionally also the JSON at ``json_path``."""
    written = []
    text = json.dumps(document, indent=2, allow_nan=False)
    if out_dir is not None:
        out_dir = Path(out_dir)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "results.json").write_text(text)
            with open(out_dir / "results.csv", "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=ROW_FIELDS)
                writer.writeheader()
                for row in document["results"]:
                    writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
            (out_dir / "results.md").write_text(results_table(document))
        except OSError as err:
            raise UserError(f"cannot write results under {out_dir}: {err.strerror}") from None
        written += [out_dir / "results.json", out_dir / "results.csv", out_dir / "results.md"]
    if json_path is not None:
        try:
            Path(json_path).parent.mkdir(parents=True, exist_ok=True)
            Path(json_path).write_text(text)
        except OSError as err:
            raise UserError(f"cannot write {json_path}: {err.strerror}") from None
        written.append(Path(json_path))
    return written
