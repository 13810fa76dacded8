"""Random crops of photos of any size: the photo models' training data (diffjscc.data.crops)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffjscc.config import load_config
from diffjscc.data import RandomCropDataset
from diffjscc.errors import UserError
from diffjscc.training.trainer import Trainer

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"


@pytest.fixture(scope="module")
def two_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with two of the shared training photos (landscape and another size)."""
    if not PHOTOS.is_dir():
        if os.environ.get("DIFFJSCC_REQUIRE_SHARED_DATA"):
            pytest.fail(f"shared photos not found at {PHOTOS}")
        pytest.skip(f"shared photos not found at {PHOTOS}")
    folder = tmp_path_factory.mktemp("photos")
    for name in ("001.png", "002.png"):
        shutil.copyfile(PHOTOS / name, folder / name)
    return folder


def _position_image(path: Path, height: int, width: int) -> np.ndarray:
    """An RGB image whose pixels name their position: R = row, G = column, B = row + column."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    array = np.stack([rows, cols, (rows + cols) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(array).save(path)
    return array


def test_crops_cover_the_whole_image_and_never_padding(tmp_path: Path) -> None:
    height, width, crop = 23, 30, 8
    array = _position_image(tmp_path / "a.png", height, width)
    data = RandomCropDataset(tmp_path, crop, seed=3, crops_per_photo=4000)
    covered = np.zeros((height, width), dtype=bool)
    tops, lefts, flips = set(), set(), 0
    for index in range(len(data)):
        image, label = data[index]
        _, top, left, flipped = data.corner(index)
        pixels = ((image + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
        expected = array[top:top + crop, left:left + crop]
        np.testing.assert_array_equal(pixels, expected[:, ::-1] if flipped else expected)  # an exact slice: no padding
        covered[top:top + crop, left:left + crop] = True
        tops.add(top), lefts.add(left)
        flips += flipped
        assert label == -1
    assert covered.all()  # every pixel, edges and corners included
    assert tops == set(range(height - crop + 1)) and lefts == set(range(width - crop + 1))
    assert 0.4 < flips / len(data) < 0.6


def test_crops_are_a_function_of_seed_and_index(tmp_path: Path) -> None:
    _position_image(tmp_path / "a.png", 40, 50)
    _position_image(tmp_path / "b.png", 50, 40)
    first, again = RandomCropDataset(tmp_path, 16, seed=1), RandomCropDataset(tmp_path, 16, seed=1)
    other = RandomCropDataset(tmp_path, 16, seed=2)
    assert len(first) == 2 * first.crops_per_photo
    assert [first.corner(i) for i in range(50)] == [again.corner(i) for i in range(50)]
    assert [first.corner(i) for i in range(50)] != [other.corner(i) for i in range(50)]
    assert [first.corner(i)[0] for i in range(4)] == [0, 1, 0, 1]  # every photo in turn
    assert torch.equal(first[7][0], again[7][0])


def test_a_photo_smaller_than_the_crop_is_named(tmp_path: Path) -> None:
    _position_image(tmp_path / "big.png", 64, 64)
    _position_image(tmp_path / "small.png", 64, 20)
    with pytest.raises(UserError, match=r"small\.png is 20x64, smaller than the 32x32 training crops"):
        RandomCropDataset(tmp_path, 32)


@pytest.mark.parametrize("overrides, message", [
    (["crop_size=30"], "multiple of 4"),
    (["crop_size=-4"], "multiple of 4"),
    (["crop_size=16"], "at least image_size"),
    (["crop_size=64", "mode=joint"], "must equal image_size"),
])
def test_crop_size_is_validated(overrides: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_config("tiny", ["mode=jscc", *overrides])
    assert load_config("tiny", ["mode=joint", "crop_size=32"]).crop_size == 32  # a UNet's own size


def test_deep_jscc_trains_on_crops_of_real_photos(two_photos: Path, tmp_path: Path) -> None:
    cfg = load_config("tiny", ["mode=jscc", f"data_dir={two_photos}", "crop_size=64", f"log_dir={tmp_path / 'run'}",
                               "batch_size=4", "total_steps=3", "log_interval=1", "save_interval=3", "device=cpu"])
    trainer = Trainer(cfg, progress=False)
    assert "random 64x64 crops of 2 images" in trainer.describe()
    result = trainer.train()
    assert result.step == 3 and np.isfinite(result.final_loss)
    assert (tmp_path / "run" / "ckpt_0000003.pt").is_file()
    # 64x64 crops: 4 blocks of 32x32, each 512 real symbols, so the k/n of the CIFAR model
    latent = trainer.system.encoder(torch.zeros(1, 3, 64, 64))
    assert latent.numel() == 4 * cfg.latent_dim
