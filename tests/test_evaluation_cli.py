"""`diffjscc evaluate`, `plot` and `transmit` end to end on real CIFAR-10 images, with tiny models
trained for a few seconds (the MICRO settings of test_cli_e2e.py)."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffjscc.cli import main
from diffjscc.evaluation.metrics import psnr_per_image
from diffjscc.evaluation.results import ROW_FIELDS
from diffjscc.runtime.checkpoint import list_checkpoints, load_checkpoint
from launch_helpers import train_argv

MICRO = ["num_channels=16", "channel_mult=[1,2]", "attention_resolutions=[16]", "num_res_blocks=1",
         "jscc_num_filters=16", "diffusion_steps=100", "sample_steps=2", "batch_size=16",
         "log_interval=10", "device=cpu", "snr_range=[0,20]", "lr=2e-3", "ema_rate=0.9"]


def _train(data: Path, log_dir: Path, steps: int, *extra: str) -> Path:
    assert main(train_argv(data, log_dir, steps, steps, [*MICRO, *extra])) == 0
    return list_checkpoints(log_dir)[-1]


@pytest.fixture(scope="module")
def data_root(shared_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval_data")
    assert main(["data", "cifar10", "--archive", str(shared_archive), "--out", str(root), "--limit", "64"]) == 0
    return root


@pytest.fixture(scope="module")
def checkpoints(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A Deep JSCC trained 300 steps (enough to order SNRs) and a diffusion receiver on it, 3 steps.

    At 150 steps the 0 → 20 dB gain on the first 12 test images was 0.43-0.52 dB over training
    seeds 0-5, at the 0.5 dB margin below; at 300 steps 0.67-1.05 dB (2026-12-03)."""
    jscc = _train(data_root / "cifar_train", tmp_path_factory.mktemp("jscc"), 300, "mode=jscc")
    frozen = _train(data_root / "cifar_train", tmp_path_factory.mktemp("frozen"), 3, "mode=frozen",
                    f"jscc_encoder_path={jscc}")
    return {"jscc": jscc, "frozen": frozen}


@pytest.fixture(scope="module")
def sweep(data_root: Path, checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """One evaluate run: two checkpoints, 3 SNRs, every start mode, every digital baseline."""
    out = tmp_path_factory.mktemp("sweep")
    mp = pytest.MonkeyPatch()
    mp.setenv("TORCH_HOME", str(out / "empty_torch_home"))  # no FID weights: the skip path, deterministically
    try:
        code = main(["evaluate", "--checkpoint", str(checkpoints["frozen"]), "--checkpoint", str(checkpoints["jscc"]),
                     "--data", str(data_root / "cifar_test"), "--snr", "0,10,20",
                     "--start", "gaussian,mean,inversion", "--samples-per-image", "2", "--steps", "2",
                     "--limit", "12", "--subset", "first", "--digital", "all", "--out", str(out / "res"),
                     "--no-progress"])  # the first 12 files: the SNR-ordering margins below were set on them
    finally:
        mp.undo()
    assert code == 0
    return out / "res"


def test_sweep_writes_json_csv_and_markdown(sweep: Path, capsys) -> None:
    document = json.loads((sweep / "results.json").read_text())
    rows = document["results"]
    assert set(document["versions"]) >= {"diffjscc", "torch", "python"} and document["seed"] == 0
    assert document["n_images"] == 12 and document["settings"]["snr_db"] == [0.0, 10.0, 20.0]
    for row in rows:
        assert list(row) == ROW_FIELDS
        assert math.isfinite(row["psnr"]) and 0 < row["psnr"] < 60
        assert -1 <= row["ssim"] <= 1 and 0 <= row["ms_ssim"] <= 1
        assert row["fid"] is None and "FID skipped" in row["fid_note"]  # never silently replaced
        assert abs(row["k_over_n"] - 1 / 6) < 1e-9 and row["n"] == 12 and row["seed"] == 0
    systems = {(r["codec"] or r["receiver"], r["start"]) for r in rows}
    assert systems >= {("deep_jscc", "-"), ("diffusion", "gaussian"), ("diffusion", "mean"),
                       ("diffusion", "inversion"), ("webp", "-"), ("jpeg", "-")}
    assert all(r["receiver"] == "digital" for r in rows if r["mode"] == "digital")
    # the frozen checkpoint carries the jscc checkpoint's encoder+decoder: scored once per SNR
    assert sum(r["receiver"] == "deep_jscc" for r in rows) == 3
    assert any("scored once" in note for note in document["notes"])
    for row in rows:
        assert row["oracle"] == (row["start"] == "inversion")
        if row["start"] in ("gaussian", "mean"):
            assert row["samples_per_image"] == 2 and row["steps"] == 2
    inversion = [r for r in rows if r["oracle"]]
    assert inversion and all("ORACLE" in r["system"] for r in inversion)

    with open(sweep / "results.csv", newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ROW_FIELDS and len(table) == len(rows) + 1
    markdown = (sweep / "results.md").read_text()
    assert "| system |" in markdown and "ORACLE" in markdown and "FID skipped" in markdown


def test_sweep_numbers_are_ordered_sensibly(sweep: Path) -> None:
    rows = json.loads((sweep / "results.json").read_text())["results"]
    deep = {r["snr_db"]: r["psnr"] for r in rows if r["receiver"] == "deep_jscc"}
    print("deep_jscc PSNR by SNR:", deep)
    # More SNR, not less quality: each step up in SNR may lose at most 0.2 dB (the channel noise of
    # 12 images at 10 and 20 dB is nearly the same, so their PSNRs can tie), and 0 → 20 dB must gain.
    assert deep[10.0] >= deep[0.0] - 0.2 and deep[20.0] >= deep[10.0] - 0.2, deep
    assert deep[20.0] >= deep[0.0] + 0.5, deep
    # digital: 32 bytes at 0 dB fit no codec (all lost, the mean-colour image); at 20 dB WebP fits
    for row in (r for r in rows if r["mode"] == "digital"):
        assert row["budget_bytes"] == math.floor(512 * 0.5 * math.log2(1 + 10 ** (row["snr_db"] / 10)) / 8)
        assert row["mean_bytes"] <= row["budget_bytes"]
        if row["snr_db"] == 0.0:
            assert row["lost_fraction"] == 1.0
    webp = {r["snr_db"]: r for r in rows if r["codec"] == "webp"}
    assert webp[20.0]["lost_fraction"] < 1.0 and webp[20.0]["psnr"] > webp[0.0]["psnr"]
    # the MMSE-style mean of K samples never scores a lower PSNR than single samples by much
    gauss = {r["snr_db"]: r["psnr"] for r in rows if r["start"] == "gaussian"}
    mean = {r["snr_db"]: r["psnr"] for r in rows if r["start"] == "mean"}
    assert all(mean[s] >= gauss[s] - 0.5 for s in gauss)


def test_plot_draws_snr_and_ratio_curves(sweep: Path, tmp_path: Path, capsys) -> None:
    figure = tmp_path / "fig.png"
    assert main(["plot", str(sweep / "results.json"), "--out", str(figure)]) == 0
    assert Image.open(figure).width > 1000 and "wrote" in capsys.readouterr().out
    # a second set at another bandwidth ratio adds the quality-vs-k/n panels (CSV input also works)
    rows = json.loads((sweep / "results.json").read_text())["results"]
    other = tmp_path / "half.json"
    other.write_text(json.dumps({"results": [dict(r, k_over_n=r["k_over_n"] / 2, psnr=r["psnr"] - 2) for r in rows]}))
    both = tmp_path / "both.png"
    assert main(["plot", str(sweep / "results.csv"), str(other), "--out", str(both), "--metrics", "psnr,ssim"]) == 0
    single, double = Image.open(figure), Image.open(both)
    assert double.height > single.height * 1.5


def test_plot_systems_keeps_only_the_matching_rows(sweep: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    from diffjscc.evaluation import figures

    drawn = []
    monkeypatch.setattr(figures, "plot_results", lambda rows, path, **_: drawn.append(rows) or Path(path))
    rows = json.loads((sweep / "results.json").read_text())["results"]
    systems = sorted({r["system"] for r in rows})
    assert len(systems) >= 2
    keep = systems[0]
    assert main(["plot", str(sweep / "results.json"), "--out", str(tmp_path / "f.png"),
                 "--systems", f"{keep[:2]}*{keep[2:]}, nothing-else"]) == 0
    assert {r["system"] for r in drawn[0]} == {keep}
    assert len(drawn[0]) == sum(r["system"] == keep for r in rows)
    capsys.readouterr()
    assert main(["plot", str(sweep / "results.json"), "--out", str(tmp_path / "g.png"), "--systems", "zzz*"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no result rows match" in err[0]


def test_evaluate_with_fid_weights_where_present(data_root: Path, checkpoints: dict[str, Path], tmp_path: Path) -> None:
    import os

    from diffjscc.evaluation.inception import find_inception_weights

    path = os.environ.get("DIFFJSCC_FID_WEIGHTS")
    weights = find_inception_weights(path) if path else find_inception_weights()
    if weights is None:
        pytest.skip("no FID Inception weights file (set DIFFJSCC_FID_WEIGHTS or fill the torch hub cache)")
    out = tmp_path / "fid"
    assert main(["evaluate", "--checkpoint", str(checkpoints["jscc"]), "--data", str(data_root / "cifar_test"),
                 "--snr", "10", "--limit", "8", "--fid-weights", str(weights), "--out", str(out),
                 "--no-progress"]) == 0
    document = json.loads((out / "results.json").read_text())
    assert all(r["fid"] is not None and math.isfinite(r["fid"]) for r in document["results"])
    assert document["metrics"]["fid"]["sha256"]


@pytest.mark.parametrize("argv, needle", [
    (["--start", "gaussian,sideways"], "unknown start mode"),
    (["--start", "mean", "--samples-per-image", "1"], "K >= 2"),
    (["--digital", "png"], "unknown codec"),
    (["--snr", "0,loud"], "bad SNR value"),
    (["--fid-weights", "no_such.pth"], "--fid-weights"),
])
def test_evaluate_mistakes_are_one_line(argv, needle, data_root: Path, checkpoints: dict[str, Path], capsys) -> None:
    code = main(["evaluate", "--checkpoint", str(checkpoints["jscc"]), "--data", str(data_root / "cifar_test"),
                 "--limit", "2", "--no-progress", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("diffjscc: error:") and needle in err[-1]


def _printed_psnr(text: str) -> float:
    match = re.search(r"^PSNR (\d+\.\d\d) dB$", text, flags=re.M)
    assert match, text
    return float(match.group(1))


def test_transmit_any_size_and_grayscale(data_root: Path, checkpoints: dict[str, Path], tmp_path: Path,
                                         capsys) -> None:
    files = sorted((data_root / "cifar_test").glob("*.png"))
    big = Image.new("RGB", (77, 45))
    for i, f in enumerate(files[:6]):
        big.paste(Image.open(f), ((i % 3) * 32, (i // 3) * 32))
    source = tmp_path / "photo.png"
    big.save(source)
    out = tmp_path / "out.png"
    assert main(["transmit", "--checkpoint", str(checkpoints["frozen"]), "--snr", "10", str(source), str(out),
                 "--steps", "2", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    result = Image.open(out)
    assert result.size == (77, 45) and result.mode == "RGB"
    c_out = load_checkpoint(checkpoints["frozen"])["config"]["c_out"]
    symbols = c_out * (80 // 4) * (56 // 4)  # sent whole, edges repeated to 32 + 24k per side: 80 x 56
    assert f"channel symbols {symbols} real for the 80x56 image sent" in printed
    assert f"k/n {symbols / (3 * 77 * 45):.4f} real symbols" in printed and re.search(r"^SSIM -?\d\.\d{4}$", printed, re.M)
    a = torch.from_numpy(np.array(big, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255
    b = torch.from_numpy(np.array(result, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255
    assert _printed_psnr(printed) == pytest.approx(float(psnr_per_image(a, b)[0]), abs=0.006)

    gray = tmp_path / "gray.png"
    Image.open(files[7]).convert("L").save(gray)
    assert main(["transmit", "--checkpoint", str(checkpoints["jscc"]), "--snr", "20", "--channel", "rayleigh",
                 str(gray), str(tmp_path / "gray_out.png")]) == 0
    printed = capsys.readouterr().out
    result = Image.open(tmp_path / "gray_out.png")
    assert result.mode == "L" and result.size == (32, 32) and "Deep JSCC decoder over rayleigh_block" in printed
    assert 5 < _printed_psnr(printed) < 60


def test_transmit_refuses_a_non_image(checkpoints: dict[str, Path], tmp_path: Path, capsys) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    assert main(["transmit", "--checkpoint", str(checkpoints["jscc"]), "--snr", "10", str(text),
                 str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a readable image file" in err[0]


def test_evaluate_equalizer_is_chosen_recorded_and_changes_the_received_symbols(
        data_root: Path, checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """--equalizer zf|mmse on a fading channel with CSI: recorded per row, and the two give other
    outputs from the same channel draws (ZF is unbounded in deep fades); AWGN rows record none."""
    rows = {}
    for equalizer in ("zf", "mmse"):
        out = tmp_path / equalizer
        assert main(["evaluate", "--checkpoint", str(checkpoints["jscc"]), "--data", str(data_root / "cifar_test"),
                     "--snr", "0", "--channel", "rayleigh_fast", "--equalizer", equalizer, "--limit", "8",
                     "--no-fid", "--no-realism", "--no-progress", "--out", str(out)]) == 0
        document = json.loads((out / "results.json").read_text())
        rows[equalizer] = next(r for r in document["results"] if r["receiver"] == "deep_jscc")
        assert rows[equalizer]["equalizer"] == document["settings"]["equalizer"] == equalizer
        assert "| equalizer |" in (out / "results.md").read_text()
    assert rows["zf"]["psnr"] != pytest.approx(rows["mmse"]["psnr"], abs=1e-3)
    out = tmp_path / "awgn"
    assert main(["evaluate", "--checkpoint", str(checkpoints["jscc"]), "--data", str(data_root / "cifar_test"),
                 "--snr", "0", "--limit", "4", "--no-fid", "--no-realism", "--no-progress", "--out", str(out)]) == 0
    assert all(r["equalizer"] is None for r in json.loads((out / "results.json").read_text())["results"])
