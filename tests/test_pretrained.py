"""Models by name: the registry, verified loading, `--model` in every command, and the models
shipped in the package against their manifest's measured figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffjscc.cli import main
from diffjscc.config import Config
from diffjscc.runtime.checkpoint import save_checkpoint
from diffjscc.runtime.pretrained import MANIFEST_FORMAT, manifest, models_dir, sha256_of_file
from diffjscc.system import TransmissionSystem
from launch_helpers import train_argv

REPO = Path(__file__).resolve().parents[1]
SHIPPED = models_dir()
SHIPPED_NAMES = list(manifest(SHIPPED)["models"])
MICRO = {"c_out": 2, "latent_dim": 128, "jscc_num_filters": 8, "snr_adaptive": True, "snr_range": [0, 20]}


@pytest.fixture()
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A registry in a temporary folder holding one untrained SNR-adaptive Deep JSCC, 'tiny_jscc'."""
    folder = tmp_path / "models"
    cfg = Config(mode="jscc", **MICRO)
    torch.manual_seed(0)
    path = save_checkpoint({"config": cfg.to_dict(), "model": TransmissionSystem(cfg).state_dict(), "step": 0},
                           folder / "tiny_jscc.pt")
    entry = {"file": path.name, "sha256": sha256_of_file(path), "bytes": path.stat().st_size,
             "receiver": "Deep JSCC decoder", "encoder": "Deep JSCC encoder (GDN, 8 filters, SNR-adaptive)",
             "symbols": 128, "k_over_n": 1 / 24, "k_over_n_complex": 1 / 48, "channel": "awgn", "snr_range": [0, 20],
             "training": {"data": "nothing (untrained)", "steps": 0},
             "scores": {"n_images": 0, "by_snr": {"0": {"psnr": 11.5, "fd_cls": 9.25}, "10": {"psnr": 12.0}}}}
    (folder / "manifest.json").write_text(json.dumps({"format": MANIFEST_FORMAT, "models": {"tiny_jscc": entry}}))
    monkeypatch.setenv("DIFFJSCC_MODELS_DIR", str(folder))
    return folder


def _error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_models_lists_name_first_with_bandwidth_and_scores(registry: Path, capsys) -> None:
    assert main(["models"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("tiny_jscc  Deep JSCC decoder;")
    assert "128 real symbols (k/n 1/24 real, 1/48 complex)" in line
    assert "at 0/10 dB: PSNR 11.50/12.00 dB, fd_cls 9.25/-" in line
    assert main(["models", "--path", "tiny_jscc"]) == 0
    assert capsys.readouterr().out.strip() == str(registry / "tiny_jscc.pt")


def test_a_changed_byte_or_a_missing_file_is_refused_by_name(registry: Path, tmp_path: Path, capsys) -> None:
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((40, 40, 3), 120, np.uint8)).save(photo)
    path = registry / "tiny_jscc.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    for argv in (["models", "--path", "tiny_jscc"],
                 ["transmit", "--model", "tiny_jscc", "--snr", "10", str(photo), str(tmp_path / "out.png")]):
        assert main(argv) == 2
        err = _error_line(capsys)
        assert "model 'tiny_jscc'" in err and "SHA-256" in err and "refusing" in err
    assert not (tmp_path / "out.png").exists()
    path.unlink()
    assert main(["models", "--path", "tiny_jscc"]) == 2
    assert "model 'tiny_jscc'" in _error_line(capsys) and not path.exists()
    assert main(["models", "--path", "nonexistent"]) == 2
    assert "unknown model 'nonexistent'; shipped models: tiny_jscc" in _error_line(capsys)


def test_model_names_work_wherever_checkpoints_do(registry: Path, cifar_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", "tiny_jscc", "--data", str(cifar_root / "cifar_test"), "--snr", "10",
                 "--limit", "4", "--no-fid", "--no-realism", "--no-progress", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["results"]
    assert {row["model"] for row in rows} == {"tiny_jscc"} and rows[0]["sampler"] == "-"
    capsys.readouterr()
    assert main(["evaluate", "--data", str(cifar_root / "cifar_test"), "--out", str(tmp_path / "none")]) == 2
    assert "--checkpoint or --model" in _error_line(capsys)
    # a receiver trained on a shipped encoder, named as jscc_encoder_path
    run = tmp_path / "frozen"
    overrides = ["mode=frozen", "jscc_encoder_path=tiny_jscc", "conditioning=residual", "prediction=v",
                 "num_channels=8", "channel_mult=[1]", "attention_resolutions=[]", "batch_size=4", "device=cpu",
                 *[f"{key}={json.dumps(value)}" for key, value in MICRO.items()]]
    assert main(train_argv(cifar_root / "cifar_train", run, 1, 1, overrides)) == 0
    trained = torch.load(run / "ckpt_0000001.pt", weights_only=True)["model"]
    shipped = torch.load(registry / "tiny_jscc.pt", weights_only=True)["model"]
    assert all(torch.equal(trained[key], value) for key, value in shipped.items() if key.startswith("encoder."))


def test_packaging_a_further_stage_sums_the_training_of_every_stage(registry: Path, cifar_root: Path,
                                                                     tmp_path: Path) -> None:
    """scripts/package_models.py on a run that started ``init_from`` another run's checkpoint, and
    again on one that started from that shipped model by name: the provenance lists each stage
    and its totals (steps, images, minutes, FLOPs) are their sums; no machine path is shipped."""
    overrides = ["mode=frozen", "jscc_encoder_path=tiny_jscc", "conditioning=residual", "prediction=v",
                 "num_channels=8", "channel_mult=[1]", "attention_resolutions=[]", "batch_size=4", "device=cpu",
                 "log_interval=1", "sample_steps=1", *[f"{key}={json.dumps(value)}" for key, value in MICRO.items()]]
    first, second, third = tmp_path / "first", tmp_path / "second", tmp_path / "third"
    assert main(train_argv(cifar_root / "cifar_train", first, 3, 3, overrides)) == 0
    assert main(train_argv(cifar_root / "cifar_train", second, 2, 2,
                           [*overrides, "seed=1", f"init_from={first / 'ckpt_0000003.pt'}"])) == 0

    def package(run: Path, step: int) -> dict:
        subprocess.run([sys.executable, str(REPO / "scripts" / "package_models.py"), "add", "rx", "--run", str(run),
                        "--step", str(step), "--base", "tiny_jscc", "--description", "test receiver"],
                       check=True, capture_output=True, env={**os.environ, "DIFFJSCC_MODELS_DIR": str(registry)})
        return torch.load(registry / "rx.pt", weights_only=True)

    shipped = package(second, 2)
    provenance = shipped["provenance"]
    assert [(stage["steps"], stage["seed"]) for stage in provenance["stages"]] == [(3, 0), (2, 1)]
    assert provenance["steps"] == 5 and provenance["images_seen"] == 20
    for key in ("train_minutes", "train_tflop"):
        assert provenance[key] == pytest.approx(sum(stage[key] for stage in provenance["stages"]), abs=0.051)
    assert shipped["config"]["init_from"] == "" and shipped["config"]["jscc_encoder_path"] == "tiny_jscc"
    assert manifest(registry)["models"]["rx"]["training"] == provenance

    assert main(train_argv(cifar_root / "cifar_train", third, 1, 1, [*overrides, "seed=2", "init_from=rx"])) == 0
    provenance = package(third, 1)["provenance"]
    assert [stage["steps"] for stage in provenance["stages"]] == [3, 2, 1] and provenance["steps"] == 6


@pytest.mark.skipif(not SHIPPED_NAMES, reason="the package ships no models")
def test_shipped_models_match_their_manifest() -> None:
    entries = manifest(SHIPPED)["models"]
    sizes = []
    for name, entry in entries.items():
        path = SHIPPED / entry["file"]
        assert path.stat().st_size == entry["bytes"] <= 10_000_000, name
        assert sha256_of_file(path) == entry["sha256"], name
        payload = torch.load(path, weights_only=True)
        assert set(payload) == {"config", "model", "step", "provenance", "format_version"}, name  # EMA weights only
        assert payload["provenance"] == entry["training"], name
        stages = entry["training"].get("stages", [entry["training"]])  # a model trained in several stages
        assert payload["step"] == stages[-1]["steps"] and stages[0]["seed"] == 0, name
        assert sum(stage["steps"] for stage in stages) == entry["training"]["steps"], name
        assert payload["config"]["bf16"] != "true", name  # bf16 only where native: never emulated (slow)
        if entry["base"]:  # the diffusion receivers can be guided (--guidance)
            assert payload["config"]["condition_dropout"] > 0, name
        sizes.append(entry["bytes"])
    assert sum(sizes) <= 40_000_000


def _photo(cifar_root: Path, size: int, path: Path) -> np.ndarray:
    """A test photo: a mosaic of CIFAR-10 test images enlarged (bicubic) to 100-pixel tiles, whose
    edges do not fall on the 32-pixel grid."""
    files = sorted((cifar_root / "cifar_test").glob("*.png"))
    count = -(-size // 100)
    canvas = Image.new("RGB", (100 * count, 100 * count))
    for k in range(count * count):
        tile = Image.open(files[(k * 37) % len(files)]).convert("RGB").resize((100, 100), Image.BICUBIC)
        canvas.paste(tile, ((k % count) * 100, (k // count) * 100))
    canvas = canvas.crop((0, 0, size, size))
    canvas.save(path)
    return np.asarray(canvas)


def _seam_ratios(output: np.ndarray, source: np.ndarray, grid: int = 32) -> tuple[float, float]:
    """Seams: the mean |difference| of neighbouring pixels of the receiver's error (output − source)
    across the 32-pixel grid lines, over that across the other lines at multiples of 4 (the same
    phase of the networks' 4-pixel stride, so that their own periodic texture cancels), for
    columns and rows. Above 1: more change where tiles would meet."""
    error = output.astype(np.float64) - source.astype(np.float64)
    ratios = []
    for axis in (1, 0):
        steps = np.abs(np.diff(error, axis=axis)).mean(axis=tuple(a for a in range(error.ndim) if a != axis))
        index = np.arange(1, error.shape[axis])
        on_line = index % grid == 0
        ratios.append(steps[on_line].mean() / steps[(index % 4 == 0) & ~on_line].mean())
    return ratios[0], ratios[1]


@pytest.mark.skipif("deep_jscc_512" not in SHIPPED_NAMES, reason="the package ships no deep_jscc_512")
def test_transmit_a_photo_whole_without_seams(cifar_root: Path, tmp_path: Path, capsys) -> None:
    from skimage.metrics import peak_signal_noise_ratio

    photo = _photo(cifar_root, 512, tmp_path / "photo.png")
    out = tmp_path / "out.png"
    assert main(["transmit", "--model", "deep_jscc_512", "--snr", "10", str(tmp_path / "photo.png"), str(out)]) == 0
    printed = capsys.readouterr().out
    received = np.asarray(Image.open(out))
    assert received.shape == photo.shape
    psnr = float(printed.split("PSNR ")[1].split(" dB")[0])
    assert psnr == pytest.approx(peak_signal_noise_ratio(photo, received, data_range=255), abs=0.01)
    assert "channel symbols 131072 real" in printed and "k/n 0.1667 real symbols, 0.0833 complex" in printed
    assert max(_seam_ratios(received, photo)) <= 1.10
    if "deep_jscc_photo_512" in SHIPPED_NAMES:  # a CIFAR model on a photo says which model to use
        assert "trained on whole 32x32 images" in printed and "--model deep_jscc_photo_512" in printed
    # the control: the same photo sent tile by tile (each 32x32 tile encoded and decoded alone) shows its grid
    from diffjscc.data import load_image_tensor
    from diffjscc.evaluation.metrics import to_uint8
    from diffjscc.runtime.pretrained import verified_path
    from diffjscc.system import load_system

    system = load_system(str(verified_path("deep_jscc_512")))
    tiles = load_image_tensor(tmp_path / "photo.png").unfold(1, 32, 32).unfold(2, 32, 32)
    with torch.no_grad():
        received_tiles = system.transmit(tiles.permute(1, 2, 0, 3, 4).reshape(-1, 3, 32, 32), snr_db=10.0,
                                         generator=torch.Generator().manual_seed(0))
        decoded = system.decode(received_tiles, 10.0).clamp(-1, 1)
    stitched = decoded.reshape(16, 16, 3, 32, 32).permute(2, 0, 3, 1, 4).reshape(3, 512, 512)
    assert min(_seam_ratios(to_uint8(stitched).permute(1, 2, 0).numpy(), photo)) > 1.5


@pytest.mark.skipif("deep_jscc_512" not in SHIPPED_NAMES, reason="the package ships no deep_jscc_512")
def test_a_deep_jscc_transmit_never_imports_diffusers(cifar_root: Path, tmp_path: Path) -> None:
    """Deep JSCC needs no UNet, so its process never pays the ~3 s import of diffusers; a
    diffusion model's process does import it (the check sees the import)."""
    _photo(cifar_root, 128, tmp_path / "photo.png")
    script = ("import sys\nfrom diffjscc.cli import main\n"
              "code = main(['transmit', '--model', sys.argv[1], '--snr', '10', '--steps', '1', sys.argv[2], sys.argv[3]])\n"
              "print('diffusers imported:', 'diffusers' in sys.modules, 'exit', code)\n")
    for name, imported in (("deep_jscc_512", False), ("diffusion_512", True)):
        if name not in SHIPPED_NAMES:
            continue
        done = subprocess.run([sys.executable, "-c", script, name, str(tmp_path / "photo.png"),
                               str(tmp_path / f"{name}.png")], capture_output=True, text=True, timeout=300)
        assert f"diffusers imported: {imported} exit 0" in done.stdout, done.stdout + done.stderr


@pytest.mark.skipif("deep_jscc_photo_512" not in SHIPPED_NAMES, reason="the package ships no photo model")
def test_a_photo_model_sends_a_kodak_photo_without_seams_or_notes(kodak: Path, tmp_path: Path, capsys) -> None:
    """The photo model on kodim15 (a face, 768x512) at 10 dB: no seams on the 32-pixel grid, no
    note that the model was trained on thumbnails, and better than the CIFAR model on it."""
    source = kodak / "kodim15.png"
    photo = np.asarray(Image.open(source).convert("RGB"))
    psnrs = {}
    for name in ("deep_jscc_photo_512", "deep_jscc_512"):
        out = tmp_path / f"{name}.png"
        assert main(["transmit", "--model", name, "--snr", "10", str(source), str(out)]) == 0
        printed = capsys.readouterr().out
        psnrs[name] = float(printed.split("PSNR ")[1].split(" dB")[0])
        assert ("trained on whole 32x32 images" in printed) == (name == "deep_jscc_512")
        if name == "deep_jscc_photo_512":
            assert max(_seam_ratios(np.asarray(Image.open(out)), photo)) <= 1.10
    assert psnrs["deep_jscc_photo_512"] > psnrs["deep_jscc_512"] + 1.0


@pytest.mark.skipif("diffusion_512" not in SHIPPED_NAMES, reason="the package ships no diffusion_512")
def test_diffusion_receiver_blends_windows_without_seams(cifar_root: Path, tmp_path: Path, capsys) -> None:
    photo = _photo(cifar_root, 256, tmp_path / "photo.png")
    out = tmp_path / "out.png"
    assert main(["transmit", "--model", "diffusion_512", "--snr", "10", str(tmp_path / "photo.png"), str(out)]) == 0
    assert "8 steps of dpm++2m" in capsys.readouterr().out
    received = np.asarray(Image.open(out))
    assert received.shape == (256, 256, 3)
    assert max(_seam_ratios(received, photo)) <= 1.10


@pytest.fixture(scope="module")
def full_test_split(cifar_test_split: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All 10,000 CIFAR-10 test images, and every 10th of them (the receivers' scoring set)."""
    root = tmp_path_factory.mktemp("cifar_full")
    (root / "cifar_test").symlink_to(cifar_test_split / "cifar_test", target_is_directory=True)
    every10 = root / "cifar_test_every10"
    every10.mkdir()
    for path in sorted((root / "cifar_test").glob("*.png"))[::10]:
        (every10 / path.name).write_bytes(path.read_bytes())
    return root


@pytest.mark.skipif(not SHIPPED_NAMES, reason="the package ships no models")
@pytest.mark.parametrize("name", ["deep_jscc_512", "diffusion_512"])
def test_evaluate_by_name_reproduces_the_registry(name: str, full_test_split: Path, tmp_path: Path) -> None:
    entry = manifest(SHIPPED)["models"][name]
    scores = entry["scores"]
    data = full_test_split / ("cifar_test" if scores["n_images"] == 10_000 else "cifar_test_every10")
    assert len(list(data.glob("*.png"))) == scores["n_images"]
    receiver = "diffusion" if entry["base"] else "deep_jscc"
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", name, "--data", str(data), "--snr", "10", "--no-fid", "--no-realism",
                 "--no-progress", "--out", str(out), *(["--steps", str(scores["steps"])] if entry["base"] else [])]) == 0
    row = next(r for r in json.loads((out / "results.json").read_text())["results"] if r["receiver"] == receiver)
    assert row["psnr"] == pytest.approx(scores["by_snr"]["10"]["psnr"], abs=0.1)
