"""Photos of any size through `evaluate` and `sample`: each image sent whole, as `transmit` sends it,
and scored at its own size; on crops of real Kodak photos (never committed: read from ../shared)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from diffjscc.cli import main
from diffjscc.runtime.pretrained import manifest, models_dir, verified_path

SHIPPED_NAMES = list(manifest(models_dir())["models"])
needs_models = pytest.mark.skipif(not {"deep_jscc_512", "diffusion_512"} <= set(SHIPPED_NAMES),
                                  reason="the package ships no deep_jscc_512 / diffusion_512")

# (photo, box left, top, right, bottom): a landscape, a portrait and a square crop, of three photos
CROPS = {"a_parrots.png": ("kodim23.png", (300, 100, 396, 164)), "b_face.png": ("kodim04.png", (150, 150, 214, 246)),
         "c_sails.png": ("kodim09.png", (200, 300, 280, 380))}


@pytest.fixture(scope="module")
def mixed_folder(kodak: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three crops of Kodak photos, 96x64, 64x96 and 80x80."""
    folder = tmp_path_factory.mktemp("mixed")
    for name, (photo, box) in CROPS.items():
        Image.open(kodak / photo).convert("RGB").crop(box).save(folder / name)
    return folder


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / mse))


@needs_models
def test_a_mixed_size_folder_evaluates_each_image_at_its_own_size(mixed_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "res"
    assert main(["evaluate", "--model", "deep_jscc_512", "--model", "diffusion_512", "--data", str(mixed_folder),
                 "--snr", "10", "--steps", "2", "--samples-per-image", "2", "--controls", "--no-fid",
                 "--out", str(out), "--no-progress"]) == 0
    document = json.loads((out / "results.json").read_text())
    assert "mean of per-image values" in document["metrics"]["averaging"]
    rows = {row["system"]: row for row in document["results"]}
    records = document["per_image"]
    files = sorted(CROPS)
    for system, row in rows.items():
        mine = [r for r in records if r["system"] == system]
        assert [r["file"] for r in mine] == files
        assert [(r["width"], r["height"]) for r in mine] == [Image.open(mixed_folder / f).size for f in files]
        assert row["psnr"] == pytest.approx(np.mean([r["psnr"] for r in mine]), abs=1e-9)
        sent = sum(r["n_symbols"] for r in mine)
        assert row["k_over_n"] == pytest.approx(sent / sum(3 * r["width"] * r["height"] for r in mine))
        assert row["k_over_n_complex"] == pytest.approx(row["k_over_n"] / 2)
    assert rows["diffusion"]["spread"] > 0 and rows["Deep JSCC"]["spread"] is None
    assert all(r["spread"] > 0 for r in records if r["system"] == "diffusion")
    assert any("fd_cls/kid_cls/acc_cls not computed" in note for note in document["notes"])

    # the Deep JSCC rows again, independently: image i padded (edges repeated) to 32 + 24k per side,
    # its channel noise from batch_seeds(0, i), decoded whole and cropped back to its own size
    from diffjscc.data import load_image_tensor
    from diffjscc.runtime.seeding import batch_seeds
    from diffjscc.system import load_system

    system = load_system(str(verified_path("deep_jscc_512")))
    for i, name in enumerate(files):
        source = np.asarray(Image.open(mixed_folder / name).convert("RGB"))
        height, width = source.shape[:2]
        sides = [32 + -(-(side - 32) // 24) * 24 for side in (height, width)]
        image = F.pad(load_image_tensor(mixed_folder / name)[None], (0, sides[1] - width, 0, sides[0] - height),
                      mode="replicate")
        with torch.no_grad():
            received = system.transmit(image, snr_db=10.0, generator=torch.Generator().manual_seed(batch_seeds(0, i)[0]))
            decoded = system.decode(received, 10.0).clamp(-1, 1)[0, :, :height, :width]
        output = ((decoded + 1) * 127.5).round().permute(1, 2, 0).numpy().astype(np.uint8)
        record = next(r for r in records if r["system"] == "Deep JSCC" and r["file"] == name)
        assert record["psnr"] == pytest.approx(_psnr(source, output), abs=1e-3)
        assert record["n_symbols"] == received[0].numel()


@needs_models
def test_sample_sends_each_image_of_a_mixed_folder_whole(mixed_folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sample"
    assert main(["sample", "--model", "diffusion_512", "--data", str(mixed_folder), "--snr", "10", "--steps", "2",
                 "--out", str(out)]) == 0
    assert "each sent whole" in capsys.readouterr().out
    for i, name in enumerate(sorted(CROPS)):
        assert Image.open(out / f"received_{i:04d}.png").size == Image.open(mixed_folder / name).size
        assert (out / f"grid_{i:04d}.png").is_file()


@pytest.fixture(scope="module")
def x0_receiver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny diffusion receiver predicting the residual x0 around Deep JSCC's estimate."""
    from diffjscc.config import Config
    from diffjscc.runtime.checkpoint import save_checkpoint
    from diffjscc.system import TransmissionSystem

    cfg = Config(mode="joint", conditioning="residual", prediction="x0", learn_sigma=False, c_out=2, latent_dim=128,
                 jscc_num_filters=8, num_channels=16, channel_mult=[1, 2], attention_resolutions=[16],
                 num_res_blocks=1, diffusion_steps=100, device="cpu")
    torch.manual_seed(0)
    return save_checkpoint({"config": cfg.to_dict(), "model": TransmissionSystem(cfg).state_dict(), "step": 0},
                           tmp_path_factory.mktemp("x0") / "receiver.pt")


@pytest.mark.parametrize("network", ["zero", "identity"])
def test_the_spread_map_is_zero_where_the_samples_agree(network: str, mixed_folder: Path, x0_receiver: Path,
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys) -> None:
    """A network that predicts a zero residual makes every sample Deep JSCC's estimate: K equal
    samples, a spread map of zeros and a mean equal to the sample. One that predicts x_t itself
    keeps each sample's own starting noise: the samples disagree and the map shows it."""
    from diffjscc.config import SPREAD_SCALE
    from diffjscc.diffusion.unet import ConditionalUNet

    monkeypatch.setattr(ConditionalUNet, "forward", lambda self, x, t, **_: torch.zeros_like(x) if network == "zero"
                        else x.clone())
    out = tmp_path / "out.png"
    assert main(["transmit", "--checkpoint", str(x0_receiver), "--snr", "10", str(mixed_folder / "a_parrots.png"),
                 str(out), "--steps", "3", "--samples", "3"]) == 0
    printed = capsys.readouterr().out
    sample = np.asarray(Image.open(out), dtype=np.int64)
    mean = np.asarray(Image.open(tmp_path / "out_mean.png"), dtype=np.int64)
    spread = np.asarray(Image.open(tmp_path / "out_spread.png"))
    assert spread.shape == sample.shape[:2] == (64, 96) and spread.dtype == np.uint8
    assert f"PNG level = {SPREAD_SCALE} x std" in printed and "mean of 3 samples: PSNR" in printed
    if network == "zero":
        assert spread.max() == 0 and np.array_equal(mean, sample)
    else:  # the standard deviation of 3 N(0, 1)-driven samples is tens of levels: most of the map is bright
        assert np.median(spread) > 10 * SPREAD_SCALE and np.abs(mean - sample).mean() > 5


def test_the_spread_is_the_standard_deviation_of_the_samples() -> None:
    """pixel_spread against numpy's sample standard deviation, root-mean-square over channels."""
    from diffjscc.whole_image import pixel_spread, spread_image

    samples = torch.randint(0, 256, (5, 3, 7, 9), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    expected = np.sqrt(np.var(samples.numpy().astype(np.float64), axis=0, ddof=1).mean(axis=0))
    np.testing.assert_allclose(pixel_spread(samples).numpy(), expected, rtol=1e-12)
    assert pixel_spread(samples[:1].expand(4, -1, -1, -1)).abs().max() == 0
    assert spread_image(torch.tensor([[0.0, 1.0, 63.75, 100.0]])).tolist() == [[0, 4, 255, 255]]
