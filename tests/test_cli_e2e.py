"""End to end through the CLI on real CIFAR-10 images: extract, train every mode a few steps,
write a checkpoint, resume from it at the right step, then sample and evaluate.

The model is the tiny config shrunk further (so each run takes seconds on 2 CPU cores); the
code paths are the ones the real configs take.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from diffjscc.cli import main
from diffjscc.runtime.checkpoint import list_checkpoints, load_checkpoint
from launch_helpers import train_argv

MICRO = ["num_channels=16", "channel_mult=[1,2]", "attention_resolutions=[16]", "num_res_blocks=1",
         "jscc_num_filters=16", "diffusion_steps=100", "sample_steps=2", "batch_size=8",
         "log_interval=1", "device=cpu"]


def _train(data: Path, log_dir: Path, steps: int, *extra: str, resume: str | None = None) -> int:
    return main(train_argv(data, log_dir, steps, 2, [*MICRO, *extra], *(["--resume", resume] if resume else [])))


@pytest.fixture(scope="module")
def data_root(shared_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli_data")
    assert main(["data", "cifar10", "--archive", str(shared_archive), "--out", str(root), "--limit", "48"]) == 0
    assert len(list((root / "cifar_train").glob("*.png"))) == 48
    assert len(list((root / "cifar_test").glob("*.png"))) == 48
    return root


@pytest.fixture(scope="module")
def jscc_checkpoint(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    log_dir = tmp_path_factory.mktemp("jscc")
    assert _train(data_root / "cifar_train", log_dir, 3, "mode=jscc") == 0
    return list_checkpoints(log_dir)[-1]


def _steps_logged(log_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (log_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("extra", [
    ("mode=jscc",),
    ("mode=joint", "encoder=jscc"),
    ("mode=joint", "encoder=half_unet"),
    ("mode=frozen",),
    ("mode=unconditional",),
    ("mode=joint", "class_cond=true", "channel=rayleigh_block", "snr_range=[0,20]"),
], ids=["jscc", "joint-jscc", "joint-half_unet", "frozen", "unconditional", "joint-class-rayleigh"])
def test_train_resume_each_mode(extra, data_root: Path, jscc_checkpoint: Path, tmp_path: Path, capsys) -> None:
    """Every mode trains on real images, checkpoints, and a resumed run continues at the right step."""
    if "mode=frozen" in extra:
        extra = (*extra, f"jscc_encoder_path={jscc_checkpoint}")
    log_dir = tmp_path / "run"
    assert _train(data_root / "cifar_train", log_dir, 3, *extra) == 0
    first = load_checkpoint(list_checkpoints(log_dir)[-1])
    assert first["step"] == 3 and first["config"]["mode"] in extra[0]
    assert math.isfinite(json.loads((log_dir / "metrics.jsonl").read_text().splitlines()[-1])["loss"])

    assert _train(data_root / "cifar_train", log_dir, 5, *extra, resume="auto") == 0
    out = capsys.readouterr()
    assert "resumed from" in out.err + out.out and "at step 3" in out.err + out.out
    assert load_checkpoint(list_checkpoints(log_dir)[-1])["step"] == 5
    assert _steps_logged(log_dir) == [1, 2, 3, 4, 5]
    assert (log_dir / "config.yaml").exists() and (log_dir / "metrics.csv").exists()
    assert list(log_dir.glob("samples_*.png"))


def test_frozen_mode_keeps_the_encoder(data_root: Path, jscc_checkpoint: Path, tmp_path: Path) -> None:
    """Condiffusion: the pre-trained encoder's weights are loaded and not updated by training."""
    log_dir = tmp_path / "frozen"
    assert _train(data_root / "cifar_train", log_dir, 3, "mode=frozen", f"jscc_encoder_path={jscc_checkpoint}") == 0
    source = load_checkpoint(jscc_checkpoint)["ema"]
    trained = load_checkpoint(list_checkpoints(log_dir)[-1])["model"]
    for key, value in source.items():
        if key.startswith("encoder."):
            assert (trained[key] == value).all(), key


def test_resume_with_another_architecture_is_refused(data_root: Path, jscc_checkpoint: Path, capsys) -> None:
    log_dir = jscc_checkpoint.parent
    code = _train(data_root / "cifar_train", log_dir, 6, "mode=jscc", "c_out=4", "latent_dim=256", resume="auto")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "c_out" in err[0]


def test_sample_and_evaluate(data_root: Path, jscc_checkpoint: Path, tmp_path: Path, capsys,
                             monkeypatch) -> None:
    """`sample` writes a grid and reconstructions; `evaluate` prints and saves finite PSNR/SSIM."""
    log_dir = tmp_path / "frozen"
    assert _train(data_root / "cifar_train", log_dir, 2, "mode=frozen", f"jscc_encoder_path={jscc_checkpoint}") == 0
    ckpt = list_checkpoints(log_dir)[-1]
    test_dir = data_root / "cifar_test"

    assert main(["sample", "--checkpoint", str(ckpt), "--data", str(test_dir), "--out", str(tmp_path / "s"),
                 "--limit", "4", "--steps", "2", "--snr", "5"]) == 0
    assert (tmp_path / "s" / "grid.png").exists() and len(list((tmp_path / "s").glob("received_*.png"))) == 4

    # --batch-size bounds what goes through the model at once; the batches share one seeded stream
    import diffjscc.evaluation.grids as grids

    seen: list[int] = []
    original = grids.receive
    monkeypatch.setattr(grids, "receive", lambda system, receiver, received, context: (
        seen.append(received.shape[0]), original(system, receiver, received, context))[1])
    assert main(["sample", "--checkpoint", str(ckpt), "--data", str(test_dir), "--out", str(tmp_path / "b"),
                 "--limit", "5", "--subset", "first", "--steps", "2", "--snr", "5", "--batch-size", "2"]) == 0
    assert seen and max(seen) == 2 and len(list((tmp_path / "b").glob("received_*.png"))) == 5
    assert main(["sample", "--checkpoint", str(ckpt), "--data", str(test_dir), "--out", str(tmp_path / "b2"),
                 "--limit", "2", "--subset", "first", "--steps", "2", "--snr", "5", "--batch-size", "2"]) == 0
    for name in ("received_0000.png", "received_0001.png"):
        assert (tmp_path / "b" / name).read_bytes() == (tmp_path / "b2" / name).read_bytes()

    result = tmp_path / "eval.json"
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(test_dir), "--limit", "6", "--steps", "2",
                 "--snr", "10", "--json", str(result)]) == 0
    printed = capsys.readouterr().out
    assert "deep_jscc: PSNR" in printed and "diffusion: PSNR" in printed
    rows = json.loads(result.read_text())["results"]
    assert {r["receiver"] for r in rows} == {"deep_jscc", "diffusion"}
    for row in rows:
        assert math.isfinite(row["psnr"]) and 0 < row["psnr"] < 60 and -1 <= row["ssim"] <= 1
        assert row["n"] == 6 and row["snr_db"] == 10 and abs(row["k_over_n"] - 1 / 6) < 1e-9

    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(test_dir), "--limit", "2", "--steps", "2",
                 "--start", "inversion"]) == 0
    assert "ORACLE" in capsys.readouterr().out


def test_evaluate_is_deterministic_for_a_seed(data_root: Path, jscc_checkpoint: Path, tmp_path: Path) -> None:
    outputs = []
    for name in ("a.json", "b.json"):
        assert main(["evaluate", "--checkpoint", str(jscc_checkpoint), "--data", str(data_root / "cifar_test"),
                     "--limit", "8", "--seed", "3", "--json", str(tmp_path / name)]) == 0
        outputs.append(json.loads((tmp_path / name).read_text())["results"])
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("argv, needle", [
    (["evaluate", "--checkpoint", "missing.pt", "--data", "."], "checkpoint not found"),
    (["train", "no_such.yaml"], "config file not found"),
    (["data", "cifar10", "--archive", "no_such.tar.gz", "--out", "x"], "no_such.tar.gz"),
    (["evaluate", "--checkpoint", "x.pt", "--data", ".", "--snr", "ten"], "--snr"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("diffjscc: error:") and needle in err[0]


def test_training_on_an_empty_folder_is_refused(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert _train(tmp_path / "empty", tmp_path / "log", 2) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "empty" in err[0]


def test_resumed_run_equals_uninterrupted_run(data_root: Path, tmp_path: Path) -> None:
    """Data order, noise and channel draws continue exactly after a resume (CPU, same seed)."""
    extra = ("mode=joint", "lr_anneal=false", "dropout=0.1")
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _train(data_root / "cifar_train", straight, 4, *extra) == 0
    assert _train(data_root / "cifar_train", split, 2, *extra) == 0
    assert _train(data_root / "cifar_train", split, 4, *extra, resume="auto") == 0
    a = load_checkpoint(list_checkpoints(straight)[-1])
    b = load_checkpoint(list_checkpoints(split)[-1])
    assert a["step"] == b["step"] == 4
    for key in a["model"]:
        assert (a["model"][key] == b["model"][key]).all(), key
        assert (a["ema"][key] == b["ema"][key]).all(), key
