"""``diffjscc evaluate --digital … --channel-code ldpc,ideal`` end to end on real CIFAR-10 images
with the shipped Deep JSCC: the digital rows' fields, their channel uses against the JSCC row's,
header accounting, the cliff, the plot, and the up-front refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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
