"""Tests for CIFAR-10 extraction (exactness and safety) and the image-folder dataset."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffjscc.data import (
    CLASS_NAMES,
    NO_LABEL,
    ImageFolderDataset,
    download_cifar10,
    extract_cifar10,
    load_batch,
    load_image_tensor,
    save_image_tensor,
)
from diffjscc.data import cifar10 as cifar10_module
from diffjscc.errors import UserError

BATCH_DIR = "cifar-10-batches-py"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def trusted(shared_archive: Path) -> dict[str, dict]:
    """The shared archive decoded independently with plain pickle (it is a trusted file)."""
    out = {}
    with tarfile.open(shared_archive, "r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile():
                out[Path(member.name).name] = pickle.load(tar.extractfile(member), encoding="bytes")
    return out


def trusted_image(batch: dict, i: int) -> np.ndarray:
    return batch[b"data"][i].reshape(3, 32, 32).transpose(1, 2, 0)


def small_batch(batch: dict, n: int) -> bytes:
    """A protocol-2 pickle of the first n images, in the official dict layout."""
    sub = {
        b"batch_label": batch[b"batch_label"],
        b"labels": list(batch[b"labels"][:n]),
        b"data": np.ascontiguousarray(batch[b"data"][:n]),
        b"filenames": list(batch[b"filenames"][:n]),
    }
    return pickle.dumps(sub, protocol=2)


def make_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def png_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png"))


def write_png(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr).save(path)
    return path


# --------------------------------------------------------------------------- extraction


def test_extracted_pngs_equal_archive_pixels(cifar_root: Path, trusted: dict) -> None:
    for split, batch_name in (("cifar_train", "data_batch_1"), ("cifar_test", "test_batch")):
        batch = trusted[batch_name]
        expected = [f"{CLASS_NAMES[batch[b'labels'][i]]}_{i:05d}.png" for i in range(256)]
        assert png_names(cifar_root / split) == sorted(expected)
        for i, name in enumerate(expected):
            png = np.asarray(Image.open(cifar_root / split / name))
            assert png.dtype == np.uint8 and png.shape == (32, 32, 3)
            assert np.array_equal(png, trusted_image(batch, i)), name


def test_meta_class_names_match(trusted: dict) -> None:
    assert [n.decode() for n in trusted["batches.meta"][b"label_names"]] == CLASS_NAMES


def test_cifar_images_fixture(cifar_root: Path, cifar_images: np.ndarray) -> None:
    assert cifar_images.shape == (64, 32, 32, 3) and cifar_images.dtype == np.uint8
    first = sorted((cifar_root / "cifar_test").glob("*.png"))[0]
    assert np.array_equal(cifar_images[0], np.asarray(Image.open(first)))


def test_demo_asset_is_first_32_test_images_per_class(trusted: dict) -> None:
    import diffjscc

    demo = Path(diffjscc.__file__).parent / "assets" / "cifar10_demo"
    batch = trusted["test_batch"]
    labels = batch[b"labels"]
    expected = [i for i in range(len(labels)) if sum(1 for j in labels[: i + 1] if j == labels[i]) <= 32][:320]
    assert png_names(demo) == sorted(f"{CLASS_NAMES[labels[i]]}_{i:05d}.png" for i in expected)
    for i in expected[::16]:
        png = np.asarray(Image.open(demo / f"{CLASS_NAMES[labels[i]]}_{i:05d}.png"))
        assert np.array_equal(png, trusted_image(batch, i))
    assert sum(p.stat().st_size for p in demo.iterdir()) < 1_000_000


def test_load_batch_matches_trusted(shared_archive: Path, trusted: dict, tmp_path: Path) -> None:
    path = tmp_path / "test_batch"
    path.write_bytes(small_batch(trusted["test_batch"], 20))
    images, labels = load_batch(path)
    assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8
    assert labels == list(trusted["test_batch"][b"labels"][:20])
    assert all(np.array_equal(images[i], trusted_image(trusted["test_batch"], i)) for i in range(20))
    with open(path, "rb") as f:  # file objects work too
        assert load_batch(f)[1] == labels


@pytest.mark.parametrize("use_parent", [False, True])
def test_extract_from_folder(trusted: dict, tmp_path: Path, use_parent: bool) -> None:
    batches = tmp_path / "src" / BATCH_DIR
    batches.mkdir(parents=True)
    (batches / "batches.meta").write_bytes(pickle.dumps(trusted["batches.meta"], protocol=2))
    (batches / "data_batch_1").write_bytes(small_batch(trusted["data_batch_1"], 12))
    (batches / "test_batch").write_bytes(small_batch(trusted["test_batch"], 9))
    (batches / "readme.html").write_text("ignored")
    counts = extract_cifar10(batches.parent if use_parent else batches, tmp_path / "out")
    assert counts == {"cifar_train": 12, "cifar_test": 9}
    for split, name, n in (("cifar_train", "data_batch_1", 12), ("cifar_test", "test_batch", 9)):
        batch = trusted[name]
        for i in range(n):
            png = tmp_path / "out" / split / f"{CLASS_NAMES[batch[b'labels'][i]]}_{i:05d}.png"
            assert np.array_equal(np.asarray(Image.open(png)), trusted_image(batch, i))


def test_train_batches_concatenate_in_numeric_order(trusted: dict, tmp_path: Path) -> None:
    # Archive order is deliberately scrambled; the running index must follow data_batch_1, 2.
    b1 = {**trusted["data_batch_1"], b"data": trusted["data_batch_1"][b"data"][:3], b"labels": [0, 1, 2]}
    b2 = {**trusted["data_batch_1"], b"data": trusted["data_batch_1"][b"data"][3:5], b"labels": [3, 4]}
    archive = make_tar(
        tmp_path / "a.tar.gz",
        {f"{BATCH_DIR}/data_batch_2": pickle.dumps(b2, protocol=2), f"{BATCH_DIR}/data_batch_1": pickle.dumps(b1, protocol=2)},
    )
    assert extract_cifar10(archive, tmp_path / "out") == {"cifar_train": 5, "cifar_test": 0}
    names = png_names(tmp_path / "out" / "cifar_train")
    assert names == sorted(f"{CLASS_NAMES[i]}_{i:05d}.png" for i in range(5))
    assert not (tmp_path / "out" / "cifar_test").exists()


def test_only_test_batch_present(trusted: dict, tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "only_test.tar.gz", {f"{BATCH_DIR}/test_batch": small_batch(trusted["test_batch"], 7)})
    counts = extract_cifar10(archive, tmp_path / "out")
    assert counts == {"cifar_train": 0, "cifar_test": 7}
    assert not (tmp_path / "out" / "cifar_train").exists()
    assert len(png_names(tmp_path / "out" / "cifar_test")) == 7


def test_limit_and_rerun_replace_split(trusted: dict, tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "t.tar.gz", {f"{BATCH_DIR}/test_batch": small_batch(trusted["test_batch"], 10)})
    assert extract_cifar10(archive, tmp_path / "out")["cifar_test"] == 10
    assert extract_cifar10(archive, tmp_path / "out", limit_per_split=4)["cifar_test"] == 4
    assert len(png_names(tmp_path / "out" / "cifar_test")) == 4  # stale files are gone
    (tmp_path / "out" / "cifar_test" / "mine.txt").write_text("user file")
    with pytest.raises(UserError, match="refusing to overwrite"):
        extract_cifar10(archive, tmp_path / "out")
    with pytest.raises(UserError, match="limit_per_split"):
        extract_cifar10(archive, tmp_path / "out2", limit_per_split=0)


def test_no_batch_file_is_user_error(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "empty.tar.gz", {f"{BATCH_DIR}/readme.html": b"hello", "test_batch": b"wrong dir"})
    with pytest.raises(UserError, match="no CIFAR-10 batch file"):
        extract_cifar10(archive, tmp_path / "out")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(UserError, match="no CIFAR-10 batch file"):
        extract_cifar10(tmp_path / "emptydir", tmp_path / "out")
    with pytest.raises(UserError, match="not found"):
        extract_cifar10(tmp_path / "missing.tar.gz", tmp_path / "out")
    (tmp_path / "junk.tar.gz").write_bytes(b"not an archive at all")
    with pytest.raises(UserError, match="junk.tar.gz"):
        extract_cifar10(tmp_path / "junk.tar.gz", tmp_path / "out")


@pytest.mark.parametrize(
    "payload",
    [
        {b"data": np.zeros((1, 3072), np.uint8)},  # no labels
        {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]},  # wrong width
        {b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]},  # wrong dtype
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]},  # count mismatch
        {b"data": np.zeros((1, 3072), np.uint8), b"labels": [-1]},  # negative label
        [1, 2, 3],  # not a dict
    ],
)
def test_malformed_batch_is_user_error(payload: object, tmp_path: Path) -> None:
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(UserError, match="test_batch"):
        load_batch(path)


def test_garbage_and_truncated_pickles_are_user_errors(trusted: dict, tmp_path: Path) -> None:
    path = tmp_path / "test_batch"
    path.write_bytes(b"\x00garbage")
    with pytest.raises(UserError):
        load_batch(path)
    path.write_bytes(small_batch(trusted["test_batch"], 3)[:-500])
    with pytest.raises(UserError):
        load_batch(path)


# --------------------------------------------------------------------------- safety


class _SystemPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _ExecPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("payload_cls,refused", [(_SystemPayload, "system"), (_ExecPayload, r"builtin__\.exec'")])
def test_code_execution_payload_is_refused(payload_cls: type, refused: str, tmp_path: Path) -> None:
    # Sanity: the payload really runs under a plain unpickler.
    live_marker = tmp_path / "live"
    pickle.loads(pickle.dumps({b"labels": payload_cls(live_marker)}, protocol=2))
    assert live_marker.exists()

    marker = tmp_path / "pwned"
    evil = pickle.dumps(
        {b"data": np.zeros((1, 3072), np.uint8), b"labels": payload_cls(marker)}, protocol=2
    )
    (tmp_path / "test_batch").write_bytes(evil)
    with pytest.raises(UserError, match=refused):
        load_batch(tmp_path / "test_batch")
    assert not marker.exists()

    archive = make_tar(tmp_path / "evil.tar.gz", {f"{BATCH_DIR}/test_batch": evil})
    with pytest.raises(UserError, match="refused to unpickle"):
        extract_cifar10(archive, tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out" / "cifar_test").exists()


def test_codecs_encode_only_text_codecs(tmp_path: Path) -> None:
    # Protocol-2 bytes go through _codecs.encode(str, 'latin1'); other codecs are refused.
    evil = b"\x80\x02c_codecs\nencode\nq\x00X\x03\x00\x00\x00abcq\x01X\x04\x00\x00\x00zlibq\x02\x86q\x03Rq\x04."
    (tmp_path / "test_batch").write_bytes(evil)
    with pytest.raises(UserError, match="zlib"):
        load_batch(tmp_path / "test_batch")


@pytest.mark.parametrize("member", ["../evil_member", f"{BATCH_DIR}/../../evil_member", "/tmp/evil_member_abs"])
def test_unsafe_tar_member_paths_are_refused(trusted: dict, member: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    archive = make_tar(
        work / "bad.tar.gz",
        {f"{BATCH_DIR}/test_batch": small_batch(trusted["test_batch"], 2), member: b"payload"},
    )
    with pytest.raises(UserError, match="refusing archive member"):
        extract_cifar10(archive, work / "out")
    assert not (tmp_path / "evil_member").exists()
    assert not (work / "out" / "cifar_test").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE])
def test_link_and_device_members_are_refused(kind: bytes, tmp_path: Path) -> None:
    archive = tmp_path / "links.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(f"{BATCH_DIR}/test_batch")
        info.type = kind
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(UserError, match="refusing"):
        extract_cifar10(archive, tmp_path / "out")


# --------------------------------------------------------------------------- dataset


def test_dataset_yields_scaled_chw_tensors_with_labels(cifar_root: Path, trusted: dict) -> None:
    ds = ImageFolderDataset(cifar_root / "cifar_test", image_size=32, with_labels=True, class_names=CLASS_NAMES)
    assert len(ds) == 256 and ds.skipped == []
    labels = trusted["test_batch"][b"labels"]
    for idx in (0, 17, 255):
        x, y = ds[idx]
        assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
        assert -1.0 <= x.min().item() and x.max().item() <= 1.0
        i = int(ds.files[idx].stem.split("_")[1])
        assert y == labels[i] and CLASS_NAMES[y] == ds.files[idx].name.split("_")[0]
        back = ((x + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
        assert np.array_equal(back, trusted_image(trusted["test_batch"], i))
    assert ds.files == sorted(ds.files)
    plain = ImageFolderDataset(cifar_root / "cifar_test")
    assert torch.equal(plain[0][0], ds[0][0]) and plain[0][1] == NO_LABEL  # always (image, label)
    images, labels = plain.first(3)
    assert labels is None and torch.equal(images, torch.stack([plain[i][0] for i in range(3)]))
    images, labels = ds.first(3)
    assert labels.tolist() == [ds[i][1] for i in range(3)]


def test_labels_from_sorted_prefixes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("zebra_00000.png", "apple_00001.png", "mango_00002.jpg", "apple_00003.bmp"):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(tmp_path, with_labels=True)
    assert ds.class_names == ["apple", "mango", "zebra"]
    assert [p.name for p in ds.files] == ["apple_00001.png", "apple_00003.bmp", "mango_00002.jpg", "zebra_00000.png"]
    assert [ds[i][1] for i in range(len(ds))] == [0, 0, 1, 2]
    with pytest.raises(UserError, match="zebra"):
        ImageFolderDataset(tmp_path, with_labels=True, class_names=["apple", "mango"])
    write_png(tmp_path / "nolabel.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(UserError, match="nolabel.png"):
        ImageFolderDataset(tmp_path, with_labels=True)


def test_grayscale_and_other_modes_become_rgb(tmp_path: Path) -> None:
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    Image.fromarray(gray).save(tmp_path / "a_gray.png")
    Image.fromarray(np.dstack([gray] * 3 + [np.full_like(gray, 7)])).save(tmp_path / "b_rgba.png")
    Image.fromarray(gray).convert("P").save(tmp_path / "c_palette.png")
    ds = ImageFolderDataset(tmp_path, image_size=8)
    for i in range(3):
        x, _ = ds[i]
        assert x.shape == (3, 8, 8)
        expected = torch.from_numpy(gray).float() / 127.5 - 1
        for c in range(3):
            assert torch.allclose(x[c], expected, atol=1e-6)


def test_corrupt_files_skipped_with_warning_or_strict_error(tmp_path: Path) -> None:
    good = write_png(tmp_path / "cat_00000.png", np.full((32, 32, 3), 200, np.uint8))
    data = good.read_bytes()
    (tmp_path / "cat_00001.png").write_bytes(data[: len(data) // 2])  # truncated
    (tmp_path / "dog_00002.jpg").write_bytes(b"this is not a jpeg")
    with pytest.warns(UserWarning, match="skipped 2"):
        ds = ImageFolderDataset(tmp_path, image_size=32, with_labels=True)
    assert len(ds) == 1 and [p.name for p in ds.skipped] == ["cat_00001.png", "dog_00002.jpg"]
    assert ds.class_names == ["cat", "dog"]
    with pytest.raises(UserError, match="cat_00001.png"):
        ImageFolderDataset(tmp_path, strict=True)


def test_only_corrupt_files_is_user_error(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning), pytest.raises(UserError, match="no readable images"):
        ImageFolderDataset(tmp_path)


def test_empty_or_missing_folder_is_user_error(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(UserError, match=str(tmp_path)):
        ImageFolderDataset(tmp_path)
    with pytest.raises(UserError, match="not found"):
        ImageFolderDataset(tmp_path / "missing")


def test_wrong_image_size_is_user_error(tmp_path: Path) -> None:
    write_png(tmp_path / "a_00000.png", np.zeros((32, 32, 3), np.uint8))
    write_png(tmp_path / "b_00001.png", np.zeros((20, 24, 3), np.uint8))
    with pytest.raises(UserError, match=r"b_00001\.png is 24x20"):
        ImageFolderDataset(tmp_path, image_size=32)
    assert len(ImageFolderDataset(tmp_path)) == 2  # no size requested: any size


def test_single_image_helpers_round_trip(tmp_path: Path) -> None:
    arr = np.random.default_rng(1).integers(0, 256, (16, 12, 3), dtype=np.uint8)
    x = load_image_tensor(write_png(tmp_path / "img.png", arr))
    assert x.shape == (3, 16, 12) and x.min() >= -1 and x.max() <= 1
    save_image_tensor(x, tmp_path / "sub" / "copy.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "sub" / "copy.png")), arr)
    # out-of-range and NaN values are clamped, not wrapped
    wild = torch.tensor([[[-5.0, 5.0], [float("nan"), 0.0]]]).expand(3, 2, 2)
    save_image_tensor(wild, tmp_path / "wild.png")
    out = np.asarray(Image.open(tmp_path / "wild.png"))
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 255 and out[1, 1, 0] == 128
    (tmp_path / "fake.png").write_text("not an image")
    with pytest.raises(UserError, match="fake.png"):
        load_image_tensor(tmp_path / "fake.png")
    with pytest.raises(UserError, match="not found"):
        load_image_tensor(tmp_path / "missing.png")


# --------------------------------------------------------------------------- download


def test_download_without_network_is_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(UserError, match="--archive"):
        download_cifar10(tmp_path)
    assert list(tmp_path.iterdir()) == []  # no partial file left


def test_download_md5_mismatch_and_success(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = b"pretend archive bytes"
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: io.BytesIO(body))
    with pytest.raises(UserError, match="MD5"):
        download_cifar10(tmp_path)
    assert list(tmp_path.iterdir()) == []
    import hashlib

    monkeypatch.setattr(cifar10_module, "CIFAR10_MD5", hashlib.md5(body).hexdigest())
    path = download_cifar10(tmp_path)
    assert path == tmp_path / "cifar-10-python.tar.gz" and path.read_bytes() == body
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("re-downloaded"))
    assert download_cifar10(tmp_path) == path  # verified copy is reused
