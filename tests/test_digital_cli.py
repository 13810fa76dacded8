"""``diffjscc evaluate --digital … --channel-code ldpc,ideal`` end to end on real CIFAR-10 images
with the shipped Deep JSCC: the digital rows' fields, their channel uses against the JSCC row's,
header accounting, the cliff, the plot, and the up-front refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import pytest
from PIL import Image

pytest.importorskip("sionna")

from diffjscc.cli import main  # noqa: E402
from diffjscc.evaluation.codecs import CODECS, QualitySearch  # noqa: E402
from diffjscc.evaluation.results import ROW_FIELDS  # noqa: E402


@pytest.fixture(autouse=True)
def _bler_cache(tmp_path_factory, monkeypatch) -> None:
    monkeypatch.setenv("DIFFJSCC_BLER_CACHE", str(tmp_path_factory.getbasetemp() / "bler_cli"))


def _evaluate(cifar_root: Path, out: Path, *extra: str) -> list[dict]:
    code = main(["evaluate", "--model", "deep_jscc_512", "--data", str(cifar_root / "cifar_test"), "--limit", "6",
                 "--snr", "0,20", "--no-fid", "--no-realism", "--no-progress", "--out", str(out), *extra])
    assert code == 0
    return json.loads((out / "results.json").read_text())["results"]


def test_ldpc_and_ideal_rows(cifar_root: Path, tmp_path: Path) -> None:
    rows = _evaluate(cifar_root, tmp_path / "res", "--digital", "webp", "--channel-code", "ldpc,ideal",
                     "--mcs", "qpsk-1/2,16qam-1/2", "--header", "payload,file")
    jscc = [r for r in rows if r["receiver"] == "deep_jscc"]
    digital = [r for r in rows if r["mode"] == "digital"]
    assert len(jscc) == 2 and len(digital) == 2 * 2 * 3  # SNRs x headers x (ideal + 2 MCS)
    for row in rows:
        assert list(row) == ROW_FIELDS
    for row in digital:
        assert row["receiver"] == "digital" and row["codec"] == "webp" and row["header"] in ("file", "payload")
        assert row["n_symbols"] <= jscc[0]["n_symbols"] == 512  # never more channel uses than the JSCC system
        assert row["k_over_n"] == jscc[0]["k_over_n"]
        assert 0 <= row["lost_fraction"] <= 1 and row["bits_sent"] <= 8 * row["budget_bytes"]
        if row["channel_code"] == "ldpc":
            assert row["mcs"] in ("qpsk-1/2", "16qam-1/2") and row["modulation"] in ("QPSK", "16-QAM")
            assert abs(row["code_rate"] - 0.5) < 1e-9
        else:
            assert row["mcs"] is None and row["modulation"] is None and row["capacity"] == "awgn"
    by = {(r["channel_code"], r["mcs"], r["header"], r["snr_db"]): r for r in digital}
    # the cliff: 16-QAM 1/2 needs ~7 dB; at 20 dB it loses only the images whose payload does not fit
    # its 62 bytes, at 0 dB every one
    files = sorted((cifar_root / "cifar_test").glob("*.png"))[:6]
    search = QualitySearch(CODECS["webp"], np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))
    too_big = sum(search.fit(i, 62, "payload") is None for i in range(6)) / 6
    assert by[("ldpc", "16qam-1/2", "payload", 0.0)]["lost_fraction"] == 1.0
    assert by[("ldpc", "16qam-1/2", "payload", 20.0)]["lost_fraction"] == too_big < 1
    assert by[("ldpc", "16qam-1/2", "payload", 20.0)]["psnr"] > by[("ldpc", "16qam-1/2", "payload", 0.0)]["psnr"]
    # a whole WebP file needs more bytes than the same quality's payload: never better under 'file'
    for key, row in by.items():
        if key[2] == "payload":
            assert by[(key[0], key[1], "file", key[3])]["psnr"] <= row["psnr"] + 0.05  # PSNR vs quality: ~monotone
    # the ideal code carries more than either LDPC frame at 20 dB
    assert by[("ideal", None, "payload", 20.0)]["budget_bytes"] > by[("ldpc", "16qam-1/2", "payload", 20.0)]["budget_bytes"]

    figure = tmp_path / "snr.png"
    assert main(["plot", str(tmp_path / "res"), "--out", str(figure), "--metrics", "psnr"]) == 0
    assert Image.open(figure).width > 500


@pytest.mark.parametrize("argv, needle", [
    (["--digital", "webp", "--channel", "sionna_tdl"], "cannot model channel 'sionna_tdl'"),
    (["--digital", "webp", "--channel-code", "turbo"], "--channel-code: unknown 'turbo'"),
    (["--digital", "webp", "--channel-code", "ldpc", "--mcs", "qpsk-7/8"], "--mcs: unknown 'qpsk-7/8'"),
    (["--digital", "webp", "--header", "none"], "--header: unknown 'none'"),
])
def test_digital_mistakes_are_refused_up_front_in_one_line(argv, needle, cifar_root: Path, tmp_path: Path,
                                                           capsys) -> None:
    code = main(["evaluate", "--model", "deep_jscc_512", "--data", str(cifar_root / "cifar_test"), "--limit", "2",
                 "--no-fid", "--no-realism", "--no-progress", "--out", str(tmp_path / "res"), *argv])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2 and err[-1].startswith("diffjscc: error:") and needle in err[-1]
    assert "PSNR" not in captured.out  # refused before any row was computed
    assert not (tmp_path / "res").exists()


def test_heif_asked_for_without_pillow_heif_is_one_line(cifar_root: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # as if the optional package were not installed
    code = main(["evaluate", "--model", "deep_jscc_512", "--data", str(cifar_root / "cifar_test"), "--limit", "2",
                 "--no-fid", "--no-realism", "--no-progress", "--digital", "heif,webp"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "pip install 'diffjscc[heif]'" in err[-1]


# two crops of Kodak photos of different sizes and so different JSCC channel uses (landscape 80x32:
# 1280 real uses with deep_jscc_512, portrait 32x56: 896), small enough for BLER tables measured in seconds
KODAK_CROPS = {"a_parrots.png": ("kodim23.png", (300, 100, 380, 132)), "b_face.png": ("kodim04.png", (150, 150, 182, 206))}


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def test_digital_rows_of_whole_images_of_mixed_sizes(kodak: Path, tmp_path: Path) -> None:
    from diffjscc.evaluation.digital import byte_budget
    from diffjscc.evaluation.link import frame_for

    folder = tmp_path / "mixed"
    folder.mkdir()
    for name, (photo, box) in KODAK_CROPS.items():
        Image.open(kodak / photo).convert("RGB").crop(box).save(folder / name)
    out = tmp_path / "res"
    assert main(["evaluate", "--model", "deep_jscc_512", "--data", str(folder), "--snr", "0,20", "--no-fid",
                 "--no-realism", "--no-progress", "--out", str(out), "--digital", "webp,jpeg",
                 "--channel-code", "ldpc,ideal", "--mcs", "qpsk-3/4", "--header", "payload,file"]) == 0
    document = json.loads((out / "results.json").read_text())
    rows, records = document["results"], document["per_image"]
    files = sorted(KODAK_CROPS)
    sources = [np.asarray(Image.open(folder / f).convert("RGB")) for f in files]
    jscc = next(r for r in rows if r["receiver"] == "deep_jscc")
    jscc_uses = {r["file"]: r["n_symbols"] for r in records if r["system"] == jscc["system"] and r["snr_db"] == 0}
    assert [jscc_uses[f] for f in files] == [1280, 896]
    digital = [r for r in rows if r["receiver"] == "digital"]
    assert len(digital) == 2 * 2 * 2 * 2  # codecs x SNRs x headers x (ideal + qpsk-3/4)
    # a lost image is the mean colour of both images, pixel-weighted
    mean_colour = np.round(np.concatenate([s.reshape(-1, 3) for s in sources]).astype(np.float64).mean(0))
    for row in digital:
        assert list(row) == ROW_FIELDS and row["mode"] == "digital" and row["model"] == ""
        assert row["codec"] in ("webp", "jpeg") and row["header"] in ("file", "payload") and row["n"] == 2
        assert row["k_over_n"] == jscc["k_over_n"] and row["n_symbols"] <= jscc["n_symbols"]
        mine = [r for r in records if r["system"] == row["system"] and r["snr_db"] == row["snr_db"]]
        assert [r["file"] for r in mine] == files
        assert [(r["width"], r["height"]) for r in mine] == [(80, 32), (32, 56)]
        assert all(r["n_symbols"] <= jscc_uses[r["file"]] == r["jscc_n_symbols"] for r in mine)
        assert row["psnr"] == pytest.approx(np.mean([r["psnr"] for r in mine]), abs=1e-9)
        assert row["ms_ssim"] == pytest.approx(np.mean([r["ms_ssim"] for r in mine]), abs=1e-9)
        assert row["lost_fraction"] == sum(r["lost"] for r in mine) / 2
        assert row["bits_sent"] == pytest.approx(8 * sum(r["bytes_sent"] for r in mine) / 2)
        if row["channel_code"] == "ldpc":
            assert row["mcs"] == "qpsk-3/4" and row["modulation"] == "QPSK" and abs(row["code_rate"] - 0.75) < 2e-3
        else:
            assert row["mcs"] is None and row["capacity"] == "awgn"
        for r, source, name in zip(mine, sources, files):
            n = jscc_uses[name]
            budget = (frame_for("qpsk-3/4", n).budget_bytes if row["channel_code"] == "ldpc"
                      else byte_budget(n, row["snr_db"]))
            assert r["budget_bytes"] == budget
            step = QualitySearch(CODECS[row["codec"]], source[None]).fit(0, budget, row["header"])
            if row["snr_db"] == 20 and step is not None:  # far above qpsk-3/4's threshold: the codec's own output
                codec_output = QualitySearch(CODECS[row["codec"]], source[None]).decoded(0, step)
                assert not r["lost"] and r["psnr"] == pytest.approx(_psnr(source, codec_output), abs=1e-4)
            if row["channel_code"] == "ldpc" and row["snr_db"] == 0 or step is None:  # the cliff, or nothing fits
                lost_image = np.broadcast_to(mean_colour, source.shape)
                assert r["lost"] and r["psnr"] == pytest.approx(_psnr(source, lost_image), abs=1e-4)
    by = {(r["codec"], r["channel_code"], r["header"], r["snr_db"]): r for r in digital}
    assert by[("webp", "ldpc", "payload", 20.0)]["lost_fraction"] == 0  # both WebP payloads fit qpsk-3/4's frames
    assert by[("jpeg", "ldpc", "file", 20.0)]["lost_fraction"] == 1  # a whole JPEG file (~300 B) does not
    assert by[("jpeg", "ideal", "file", 20.0)]["lost_fraction"] == 0  # the ideal code's 373+ B carry it
    assert not any("no digital baselines" in note for note in document["notes"])


def test_whole_image_digital_rows_score_each_distinct_output_once(kodak: Path, tmp_path: Path, monkeypatch) -> None:
    """Every SNR and MCS row delivers one of a few outputs per image (the codec's output at a
    budget, or the lost image): the sweep scores each once. The memoised scores equal a fresh
    scoring of each row's outputs, and rows of the same outputs (LDPC at 15 and 20 dB) are not
    scored twice."""
    from diffjscc.evaluation import sweep
    from diffjscc.evaluation.patches import PatchRealism, load_patch_net

    folder = tmp_path / "mixed"
    folder.mkdir()
    for name, (photo, box) in KODAK_CROPS.items():
        Image.open(kodak / photo).convert("RGB").crop(box).save(folder / name)
    calls = {"image": 0, "row": 0}
    image_scores, row_scores = sweep._image_scores, sweep._row_patch_scores

    def counted(kind, function):
        def wrapper(*args, **kwargs):
            calls[kind] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(sweep, "_image_scores", counted("image", image_scores))
    monkeypatch.setattr(sweep, "_row_patch_scores", counted("row", row_scores))
    out = tmp_path / "res"
    assert main(["evaluate", "--model", "deep_jscc_512", "--data", str(folder), "--snr", "0,15,20", "--no-fid",
                 "--no-progress", "--out", str(out), "--digital", "webp", "--channel-code", "ldpc,ideal",
                 "--mcs", "qpsk-3/4", "--header", "payload"]) == 0
    document = json.loads((out / "results.json").read_text())
    digital = [r for r in document["results"] if r["receiver"] == "digital"]
    assert len(digital) == 6 and all(r["patch_fd"] is not None for r in digital)
    by = {(r["channel_code"], r["snr_db"]): r for r in digital}
    assert by[("ldpc", 0.0)]["lost_fraction"] == 1 and by[("ldpc", 15.0)]["lost_fraction"] == 0
    jscc_rows = len(document["results"]) - len(digital)
    assert calls["row"] - jscc_rows < len(digital)  # ldpc at 15 and 20 dB: one scoring
    assert calls["image"] - 2 * jscc_rows < 2 * len(digital)  # per image, likewise
    sources = {f: np.asarray(Image.open(folder / f).convert("RGB")) for f in sorted(KODAK_CROPS)}
    mean_colour = np.round(np.concatenate([s.reshape(-1, 3) for s in sources.values()]).astype(np.float64).mean(0))
    realism = PatchRealism(load_patch_net(None), seed=0)
    as_tensor = lambda a: torch.from_numpy(np.array(a)).permute(2, 0, 1)  # noqa: E731
    reference = torch.cat([realism.features(as_tensor(s)) for s in sources.values()])
    for row in digital:
        mine = {r["file"]: r for r in document["per_image"]
                if r["system"] == row["system"] and r["snr_db"] == row["snr_db"]}
        outputs = []
        for name, source in sources.items():
            search = QualitySearch(CODECS["webp"], source[None])
            step = search.fit(0, mine[name]["budget_bytes"], "payload")
            output = (np.broadcast_to(mean_colour, source.shape).astype(np.uint8) if mine[name]["lost"]
                      else search.decoded(0, step))
            assert mine[name]["psnr"] == pytest.approx(_psnr(source, output), abs=1e-4)
            outputs.append(realism.features(as_tensor(output)))
        fresh = realism.score(torch.cat(outputs), reference)
        assert row["patch_fd"] == pytest.approx(fresh["patch_fd"], rel=1e-6)
        assert row["patch_kid"] == pytest.approx(fresh["patch_kid"], rel=1e-6, abs=1e-9)
