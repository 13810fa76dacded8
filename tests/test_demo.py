"""`diffjscc demo` end to end on the embedded sample: with the shipped models (the default) and
with a tiny training budget (``--train``)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffjscc.cli import main
from diffjscc.demo import embedded_sample_dir
from diffjscc.runtime.checkpoint import load_checkpoint
from diffjscc.runtime.pretrained import model_names
from diffjscc.system import load_system


def _pixels(folder: Path) -> dict[str, str]:
    """File name → digest of its decoded RGB pixels."""
    return {p.name: hashlib.sha256(np.asarray(Image.open(p).convert("RGB")).tobytes()).hexdigest()
            for p in sorted(folder.glob("*.png"))}


def test_embedded_sample_is_shipped() -> None:
    files = sorted(embedded_sample_dir().glob("*.png"))
    assert len(files) == 320
    assert {f.name.split("_")[0] for f in files} == {
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"}


def test_demo_writes_grid_table_and_plot(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--train", "--out", str(out), "--minutes", "0.05", "--snr", "10", "--steps", "2"]) == 0
    results = json.loads((out / "results.json").read_text())
    rows = results["results"]
    assert {r["codec"] or r["receiver"] for r in rows} == {"deep_jscc", "diffusion", "webp", "jpeg", "jpeg2000",
                                                           "avif", "source", "control_noise"}
    for row in rows:
        assert math.isfinite(row["psnr"]) and math.isfinite(row["ssim"]) and row["n"] == 64
        assert row["snr_db"] == 10.0 and row["oracle"] is row["control"]  # only the controls read the source
        assert row["fid"] is None and "Inception" in row["fid_note"]  # skipped, and says why
        assert row["fd_cls"] is not None and row["acc_cls"] is not None  # realism offline, with the shipped weights
    by = {r["receiver"]: r for r in rows}
    assert by["control_noise"]["psnr"] == pytest.approx(by["diffusion"]["psnr"], abs=0.05)
    assert by["source"]["fd_cls"] < min(r["fd_cls"] for r in rows if r["receiver"] != "source")
    assert results["demo"]["train_images"] == 256 and results["demo"]["held_back_images"] == 64
    assert results["demo"]["sampling_steps"] == 2 and by["diffusion"]["steps"] == 2  # --steps 2

    # training and held-back images: disjoint by name and by pixels, together the embedded sample
    train, held = _pixels(out / "data" / "train"), _pixels(out / "data" / "held_back")
    sample = _pixels(embedded_sample_dir())
    assert len(train) == 256 and len(held) == 64 and len(set(sample.values())) == len(sample) == 320
    assert not set(train) & set(held) and not set(train.values()) & set(held.values())
    assert {**train, **held} == sample
    # the models learnt from the training images only, for the recorded budgets; scored on the held-back ones
    assert results["data"] == str(out / "data" / "held_back") and results["n_images"] == 64
    jscc, diffusion = (load_checkpoint(results["demo"][f"{name}_checkpoint"]) for name in ("jscc", "diffusion"))
    assert jscc["step"] == jscc["config"]["total_steps"] == results["demo"]["jscc_train_steps"]
    assert diffusion["step"] == diffusion["config"]["total_steps"] == results["demo"]["diffusion_train_steps"]
    assert diffusion["config"]["jscc_encoder_path"] == results["demo"]["jscc_checkpoint"]
    for payload in (jscc, diffusion):
        assert payload["config"]["data_dir"] == str(out / "data" / "train")
        assert payload["config"]["test_dir"] == str(out / "data" / "held_back")
    receiver = load_system(results["demo"]["diffusion_checkpoint"]).cfg
    assert (receiver.mode, receiver.conditioning, receiver.prediction) == ("frozen", "residual", "v")
    assert results["seed"] == 0 and results["versions"]["torch"]
    grid = Image.open(out / "grid.png")
    assert grid.width > 8 * 32 and grid.height > 7 * 32  # source + 2 receivers at 3 SNRs
    assert Image.open(out / "psnr_ssim_vs_snr.png").width > 500
    assert Image.open(out / "perception_distortion.png").width > 500
    assert (out / "results.csv").read_text().count("\n") == len(rows) + 1
    table = (out / "results.md").read_text()
    assert "| Deep JSCC |" in table and "| diffusion |" in table and "WebP + ideal code" in table
    assert "not Inception FID/KID" in table and "verdict at 10 dB" in table and "k_over_n_complex" in table
    assert "| Deep JSCC |" in capsys.readouterr().out


@pytest.mark.skipif(not {"diffusion_512", "diffusion_128"} <= set(model_names()), reason="no shipped receivers")
def test_default_demo_transmits_with_the_shipped_models(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--snr", "10"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["demo"]["models"]) == {"diffusion_512", "diffusion_128"}
    assert results["n_images"] == 200 and "runs" not in {p.name for p in out.iterdir()}  # nothing trained
    rows = {(r["model"], r["receiver"]): r for r in results["results"]}
    for model, symbols in (("diffusion_512", 512), ("diffusion_128", 128)):
        for receiver in ("deep_jscc", "diffusion", "source", "control_noise"):
            row = rows[model, receiver]
            assert row["n_symbols"] == symbols and row["snr_db"] == 10.0 and row["fd_cls"] is not None
        assert rows[model, "diffusion"]["sampler"] == "dpm++2m" and rows[model, "diffusion"]["steps"] == 8
    assert rows["diffusion_512", "deep_jscc"]["psnr"] > rows["diffusion_128", "deep_jscc"]["psnr"]
    grid = Image.open(out / "grid.png")
    assert grid.width > 10 * 32 and grid.height > 7 * 32  # one image per class; source + 2 receivers at 3 SNRs
    for name in ("psnr_ssim_vs_snr.png", "perception_distortion.png", "results.md", "results.csv"):
        assert (out / name).is_file()
    assert main(["demo", "--out", str(out), "--minutes", "1"]) == 2
    assert "--minutes sets the training budget of 'demo --train'" in capsys.readouterr().err



@pytest.mark.skipif("deep_jscc_photo_512" not in model_names(), reason="the package ships no photo models")
def test_photo_demo_sends_the_embedded_kodak_crops_through_the_photo_models(tmp_path: Path, capsys) -> None:
    from diffjscc.demo import PHOTO_BASES, PHOTO_RECEIVERS, embedded_photos_dir

    out = tmp_path / "photos"
    assert main(["demo", "--photos", "--out", str(out), "--steps", "0"]) == 2
    assert "--steps must be positive" in capsys.readouterr().err
    # 2 sampling steps instead of the models' 8: the same files, rows and sheet in a quarter of the time
    assert main(["demo", "--photos", "--out", str(out), "--snr", "10", "--steps", "2"]) == 0
    results = json.loads((out / "results.json").read_text())
    shipped = [name for name in PHOTO_RECEIVERS if name in model_names()] or list(PHOTO_BASES)
    assert list(results["demo"]["models"]) == shipped
    assert results["n_images"] == 4 and {r["file"] for r in results["per_image"]} == {
        p.name for p in embedded_photos_dir().glob("*.png")}
    rows = {(r["model"], r["receiver"]): r for r in results["results"]}
    for model in shipped:
        deep_jscc = rows[model, "deep_jscc"]
        assert deep_jscc["patch_fd"] is not None and deep_jscc["patch_fd"] > rows[model, "source"]["patch_fd"]
        assert (model, "diffusion") in rows or model in PHOTO_BASES
        assert rows.get((model, "diffusion"), {"steps": 2})["steps"] == 2
    assert rows[shipped[0], "deep_jscc"]["psnr"] > rows[shipped[1], "deep_jscc"]["psnr"] > 20
    sheet = Image.open(out / "sheet.png")  # the sources and, per model, each receiver: 256-pixel crops
    assert sheet.width > 4 * 256 and sheet.height >= (1 + len(shipped)) * 256
    assert main(["demo", "--photos", "--train", "--out", str(out)]) == 2
    assert "--photos runs the shipped photo models" in capsys.readouterr().err
