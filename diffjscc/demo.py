"""``diffjscc demo``: the main job, end to end, on the CIFAR-10 sample shipped in the package.

By default (:func:`run_shipped_demo`, under 2 minutes on 2 CPU cores) the pretrained models
shipped in the package (``diffjscc models``: Deep JSCC and a diffusion receiver at 512 and 128
real symbols per image) transmit 200 of the embedded test images (the first 20 of each class),
none of which they were trained on, at 0, 10 and 20 dB, and the demo writes the grid (one image
per class), the tables and the plots.

``diffjscc demo --train`` (:func:`run_demo`) trains its own models from scratch instead:

1. Split the 320 embedded test images into 256 for training and 64 held back.
2. Train a Deep JSCC encoder/decoder (``mode: jscc``) through an AWGN channel whose SNR is drawn
   per image from [0, 20] dB.
3. Train a conditional diffusion receiver on that frozen encoder (``mode: frozen``, the
   original's "Condiffusion"), same channel: the ``residual`` receiver with v-prediction, the
   best of those measured by ``python -m bench quality`` (the original ``embed``/ε receiver
   stays 10 dB below Deep JSCC at this budget).
4. Transmit the held-back images at several SNRs and score, with the evaluation protocol, Deep
   JSCC, the diffusion receiver (Gaussian start: a real receiver), the control rows (the source
   images; Deep JSCC plus noise at the diffusion receiver's PSNR) and the digital baselines
   (image codec + ideal channel code at the channel's capacity), with the shipped classifier's
   realism scores (``fd_cls``, ``kid_cls``, ``acc_cls``) beside PSNR/SSIM.
5. Write ``grid.png``, ``results.json/.csv/.md``, ``psnr_ssim_vs_snr.png`` and
   ``perception_distortion.png``.

``diffjscc demo --photos [DIR]`` (:func:`run_photo_demo`) sends photos instead: the shipped
photo models (trained on crops of photos) transmit four crops of Kodak photos shipped in the
package (or the photos of DIR, each sent whole at its own size) at 0 and 10 dB through Deep JSCC
and the diffusion receiver, and write the results, a plot and a contact sheet.

A few CPU minutes on 256 images is far from a trained model: the numbers show the pipeline
works and how the receivers compare at this budget, not the method's potential.
"""

from __future__ import annotations

import shutil
import time
from importlib import resources
from pathlib import Path

import torch

from diffjscc.channel import parse_snr_list
from diffjscc.config import load_config
from diffjscc.data import ImageFolderDataset, label_prefix
from diffjscc.errors import UserError
from diffjscc.evaluation.grids import write_training_grid
from diffjscc.runtime.seeding import Stream, stream_generator
from diffjscc.training.runs import train_or_reuse

HELD_BACK_EVERY = 5  # every 5th embedded image is held back: 64 of 320
GRID_SNRS = (0.0, 10.0, 20.0)
# Training budget at minutes=None (measured on 2 CPU cores: about 1 + 6 minutes).
JSCC_STEPS = 1500
DIFFUSION_STEPS = 700
SAMPLING_STEPS = 20
DIFFUSION_RECEIVER = ["conditioning=residual", "prediction=v"]
DIGITAL_CODECS = ("webp", "jpeg", "jpeg2000", "avif")  # separate source/channel coding baselines
SHIPPED_RECEIVERS = ("diffusion_512", "diffusion_128")  # each holds its Deep JSCC base too
SHIPPED_SAMPLING_STEPS = 8  # DPM-Solver++(2M)
SHIPPED_IMAGES_PER_CLASS = 20  # 200 images: the default demo in under 2 minutes on 2 CPU cores
PHOTO_RECEIVERS = ("diffusion_photo_512", "diffusion_photo_128")  # each holds its photo Deep JSCC base
PHOTO_BASES = ("deep_jscc_photo_512", "deep_jscc_photo_128")  # shown alone where no photo receiver is shipped
PHOTO_SHEET_SIDE = 256  # the contact sheet shows a centre crop of each photo, at most this side


def embedded_sample_dir() -> Path:
    """The folder of CIFAR-10 test PNGs shipped inside the package."""
    return Path(str(resources.files("diffjscc") / "assets" / "cifar10_demo"))


def embedded_photos_dir() -> Path:
    """The folder of the four 256x256 crops of Kodak photos shipped inside the package (a face,
    sails' numbers, a brick wall, a parrot; assets/SOURCE.md)."""
    return Path(str(resources.files("diffjscc") / "assets" / "photos_demo"))


def packaged_config(name: str) -> Path:
    return Path(str(resources.files("diffjscc") / "configs" / f"{name}.yaml"))


def _split_sample(out: Path) -> tuple[Path, Path]:
    files = sorted(embedded_sample_dir().glob("*.png"))
    if not files:
        raise UserError(f"the embedded demo images are missing from {embedded_sample_dir()}")
    train_dir, held_dir = out / "data" / "train", out / "data" / "held_back"
    for folder in (train_dir, held_dir):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    for i, path in enumerate(files):
        shutil.copyfile(path, (held_dir if i % HELD_BACK_EVERY == 0 else train_dir) / path.name)
    return train_dir, held_dir


def _train(mode: str, steps: int, train_dir: Path, held_dir: Path, log_dir: Path, seed: int,
           extra: list[str]) -> Path:
    """Train one model of the demo (or reuse it from an earlier demo into the same --out)."""
    overrides = [f"mode={mode}", f"data_dir={train_dir}", f"test_dir={held_dir}", f"log_dir={log_dir}",
                 f"total_steps={steps}", f"save_interval={max(steps // 4, 1)}", f"seed={seed}",
                 "snr_range=[0,20]", "device=cpu", *extra]
    cfg = load_config(packaged_config("tiny"), overrides)
    print(f"\n== training mode={mode} for {steps} steps (batch {cfg.batch_size}) → {log_dir}")
    return train_or_reuse(cfg, progress=True, sample_grid=write_training_grid).checkpoint


def run_shipped_demo(out: Path, snr_text: str = "0,10,20", seed: int = 0,
                     models: tuple[str, ...] = SHIPPED_RECEIVERS, steps: int = SHIPPED_SAMPLING_STEPS) -> dict:
    """Transmit the embedded images with the shipped ``models`` into ``out``; returns the results
    document also written to results.json (with a ``demo`` section naming the models)."""
    from diffjscc.evaluation.sweep import load_models
    from diffjscc.runtime.pretrained import model_entry, model_names, verified_path

    snrs = parse_snr_list(snr_text)
    missing = [name for name in models if name not in model_names()]
    if missing:
        raise UserError(f"the shipped model {missing[0]!r} is not installed; run 'diffjscc demo --train' to train "
                        f"the demo's own models, or regenerate them with bash scripts/train_models.sh")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    loaded = load_models([verified_path(name) for name in models], device="cpu", names=list(models))
    held_dir = _per_class_sample(out / "images", SHIPPED_IMAGES_PER_CLASS)
    document = _score(loaded, held_dir, snrs, seed, digital=(), steps=steps)
    document["demo"] = {"models": {name: model_entry(name)["receiver"] for name in models},
                        "held_back_images": document["n_images"], "sampling_steps": steps,
                        "note": "the shipped models were trained on CIFAR-10 training images; these are test images"}
    grid_rows, grid_names = _class_grid(loaded[0].system, held_dir, steps, seed)
    symbols = " and ".join(f"{m.system.cfg.latent_dim}" for m in loaded)
    return _finish(document, out, grid_rows, grid_names, started,
                   title=f"diffjscc demo (shipped models): {document['n_images']} CIFAR-10 test images, AWGN, "
                         f"{symbols} real symbols per image")


def run_photo_demo(out: Path, photos: Path | None = None, snr_text: str = "0,10", seed: int = 0,
                   steps: int | None = None) -> dict:
    """``demo --photos``: the shipped photo models send photos whole (the embedded Kodak crops, or
    the folder ``photos``) through Deep JSCC and the diffusion receiver (``steps`` sampling steps;
    None: each model's own), with the controls and patch realism; writes the results files, the
    plot and a contact sheet into ``out``."""
    from diffjscc.evaluation.figures import plot_results, save_contact_sheet
    from diffjscc.evaluation.patches import PatchRealism, load_patch_net
    from diffjscc.evaluation.sweep import Protocol, load_models, run_protocol
    from diffjscc.runtime.pretrained import model_entry, model_names, verified_path

    snrs = parse_snr_list(snr_text)
    installed = model_names()
    names = [n for n in PHOTO_RECEIVERS if n in installed] or [n for n in PHOTO_BASES if n in installed]
    if not names:
        raise UserError("no photo model is installed; regenerate them with bash scripts/train_photo_models.sh")
    folder = Path(photos) if photos is not None else embedded_photos_dir()
    if not folder.is_dir():
        raise UserError(f"photo folder not found: {folder}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    kept: dict[tuple[str, str, float], dict[str, torch.Tensor]] = {}

    def keep(model: str, receiver: str, snr: float, file: Path, output: torch.Tensor) -> None:
        height, width = output.shape[-2:]
        side = min(PHOTO_SHEET_SIDE, height, width)
        top, left = (height - side) // 2, (width - side) // 2
        kept.setdefault((model, receiver, snr), {})[file.stem] = output[:, top:top + side, left:left + side]

    models = load_models([verified_path(name) for name in names], device="cpu", names=names)
    protocol = Protocol(snrs=snrs, starts=("gaussian",), steps=steps, seed=seed, channel="awgn", controls=True)
    document = run_protocol(models, folder, protocol,
                            fid_info={"skipped": "FID not computed in the demo"},
                            patches=PatchRealism(load_patch_net(), seed=seed), keep_output=keep)
    document["demo"] = {"models": {name: model_entry(name)["receiver"] for name in names}, "photos": str(folder),
                        "sampling_steps": {name: steps or model.system.cfg.sample_steps
                                           for name, model in zip(names, models)},
                        "note": "photo models trained on crops of other photos (shared/data/photos); the embedded "
                                "photos are crops of Kodak images, which the models never saw"}
    sources = next((crops for (_, receiver, _), crops in kept.items() if receiver == "source"), {})
    rows = [(f"{model}: {receiver.replace('_', ' ')}, {snr:g} dB", crops)
            for (model, receiver, snr), crops in sorted(kept.items()) if receiver in ("deep_jscc", "diffusion")]
    written = [save_contact_sheet(sources, rows, out / "sheet.png"),
               plot_results(document["results"], out / "psnr_vs_snr.png", metrics=["psnr", "ms_ssim", "patch_fd"],
                            title=f"diffjscc demo --photos: {document['n_images']} photos sent whole, AWGN")]
    return _save_results(document, out, started, written)


def _per_class_sample(folder: Path, per_class: int) -> Path:
    """The first ``per_class`` embedded images of each class, copied into ``folder`` (remade)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    taken: dict[str, int] = {}
    for path in sorted(embedded_sample_dir().glob("*.png")):
        label = label_prefix(path)
        if taken.get(label, 0) < per_class:
            taken[label] = taken.get(label, 0) + 1
            shutil.copyfile(path, folder / path.name)
    return folder


def _score(models, held_dir: Path, snrs: list[float], seed: int, digital: tuple[str, ...],
           steps: int = SHIPPED_SAMPLING_STEPS) -> dict:
    """The evaluation protocol on the held-back images: every receiver, the controls, realism."""
    from diffjscc.evaluation.classifier import load_classifier
    from diffjscc.evaluation.realism import RealismScorer
    from diffjscc.evaluation.sweep import Protocol, run_protocol

    protocol = Protocol(snrs=snrs, starts=("gaussian",), steps=steps, seed=seed, digital=digital, controls=True)
    return run_protocol(models, held_dir, protocol,
                        realism=RealismScorer(load_classifier(), seed=seed),
                        fid_info={"skipped": "FID not computed in the demo: it needs the Inception-v3 weights "
                                             "file (diffjscc evaluate --fid-weights PATH)"})


def _class_grid(system, folder: Path, steps: int, seed: int) -> tuple[list[torch.Tensor], list[str]]:
    """Grid rows: the first image of each class, then Deep JSCC and the diffusion receiver at each
    of GRID_SNRS."""
    from diffjscc.evaluation.grids import reconstruct_rows

    dataset = ImageFolderDataset(folder, image_size=system.cfg.image_size)
    first_of_class: dict[str, int] = {}
    for index, path in enumerate(dataset.files):
        first_of_class.setdefault(label_prefix(path), index)
    images = torch.stack([dataset[i][0] for i in first_of_class.values()])
    rows, names = [images], ["source"]
    for snr in GRID_SNRS:
        generator = stream_generator(seed, Stream.GRID)  # the same draws at every SNR
        recon, recon_names = reconstruct_rows(system, images, None, steps=steps, generator=generator, snr_db=snr)
        rows += recon[1:]
        names += [f"{name} @{snr:g}dB" for name in recon_names[1:]]
    return rows, names


def _finish(document: dict, out: Path, grid_rows: list[torch.Tensor], grid_names: list[str], started: float,
            title: str) -> dict:
    """Write the grid, the plots and the results files; print the table."""
    from diffjscc.evaluation.figures import plot_perception_distortion, plot_results, save_image_grid

    written = [save_image_grid(grid_rows, out / "grid.png", row_labels=grid_names),
               plot_results(document["results"], out / "psnr_ssim_vs_snr.png", metrics=["psnr", "ssim", "fd_cls"],
                            title=title),
               plot_perception_distortion(document["results"], out / "perception_distortion.png", title=title)]
    return _save_results(document, out, started, written)


def _save_results(document: dict, out: Path, started: float, written: list[Path]) -> dict:
    """Write the results files beside the figures ``written``; print the table and what was written."""
    from diffjscc.evaluation.results import results_table, write_results

    document["demo"]["total_minutes"] = round((time.perf_counter() - started) / 60, 2)
    write_results(document, out, overwrite=True)  # the demo regenerates its own folder's results
    print("\n" + results_table(document))
    print(f"wrote {', '.join(str(p) for p in written)} and results.json/.csv/.md in {out} in "
          f"{document['demo']['total_minutes']:.1f} min")
    return document


def run_demo(out: Path, minutes: float | None = None, snr_text: str = "0,5,10,15,20", seed: int = 0,
             steps: int = SAMPLING_STEPS) -> dict:
    """Train the demo's own models and run the whole demo into ``out`` (``demo --train``); returns
    the results document also written to results.json (the evaluation protocol's format, plus a
    ``demo`` section with the training budget)."""
    from diffjscc.evaluation.sweep import load_models

    snrs = parse_snr_list(snr_text)
    scale = 1.0 if minutes is None else minutes / 8.0
    if scale <= 0:
        raise UserError("--minutes must be positive")
    jscc_steps, diffusion_steps = max(int(JSCC_STEPS * scale), 10), max(int(DIFFUSION_STEPS * scale), 10)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train_dir, held_dir = _split_sample(out)

    jscc_ckpt = _train("jscc", jscc_steps, train_dir, held_dir, out / "runs" / "jscc", seed, [])
    diff_ckpt = _train("frozen", diffusion_steps, train_dir, held_dir, out / "runs" / "diffusion", seed,
                       [f"jscc_encoder_path={jscc_ckpt}", *DIFFUSION_RECEIVER])
    train_minutes = (time.perf_counter() - started) / 60

    models = load_models([diff_ckpt], device="cpu")  # holds the frozen JSCC encoder and decoder too
    system = models[0].system
    document = _score(models, held_dir, snrs, seed, digital=DIGITAL_CODECS, steps=steps)
    document["demo"] = {
        "jscc_checkpoint": str(jscc_ckpt), "diffusion_checkpoint": str(diff_ckpt),
        "jscc_train_steps": jscc_steps, "diffusion_train_steps": diffusion_steps,
        "train_images": len(list(train_dir.glob("*.png"))), "held_back_images": document["n_images"],
        "train_minutes": round(train_minutes, 2), "sampling_steps": steps,
    }
    grid_rows, grid_names = _class_grid(system, held_dir, steps, seed)
    return _finish(document, out, grid_rows, grid_names, started,
                   title=f"diffjscc demo: {document['n_images']} held-back CIFAR-10 images, AWGN, "
                         "k/n = 1/6 real (1/12 complex)")
