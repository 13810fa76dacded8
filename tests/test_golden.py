"""Golden outputs, as CompressAI's ``tests/expected/``: seeded tiny runs on real CIFAR-10 images
compared with numbers stored in ``tests/expected/*.json``, so that numerical drift fails.

Two runs are compared with files, not with each other: a seeded training run's per-step loss
trace (Deep JSCC, then a frozen residual v-prediction receiver on it, then a joint ε receiver
with the learned-variance hybrid loss) and a seeded evaluation's rows (every receiver and start
mode, a digital baseline) of the first two checkpoints.

Tolerances: losses within 1e-4 relative (float32 on one CPU thread is deterministic; the
margin allows another BLAS build), PSNR within 0.01 dB, SSIM and MS-SSIM within 1e-4.

Regenerate on purpose only (and say why in the commit):
``DIFFJSCC_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py -q``
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from diffjscc.cli import main
from launch_helpers import train_argv

EXPECTED = Path(__file__).parent / "expected"
REGENERATE = bool(os.environ.get("DIFFJSCC_REGENERATE_GOLDEN"))

LOSS_RTOL = 1e-4
SCORE_ATOL = {"psnr": 0.01, "ssim": 1e-4, "ms_ssim": 1e-4}

MICRO = ["num_channels=16", "channel_mult=[1,2]", "attention_resolutions=[16]", "num_res_blocks=1",
         "jscc_num_filters=16", "diffusion_steps=100", "sample_steps=2", "batch_size=8",
         "log_interval=1", "device=cpu", "seed=7"]
RUNS = {  # name → overrides; trained in this order (frozen needs the jscc run)
    "jscc": ["mode=jscc", "lr=1e-3"],
    "frozen_residual_v": ["mode=frozen", "conditioning=residual", "prediction=v"],
    "joint_embed_eps": ["mode=joint", "conditioning=embed", "prediction=epsilon", "learn_sigma=true"],
}
TRAIN_STEPS = 6
EVAL_ARGS = ["--snr", "0,10", "--start", "gaussian,mean,inversion", "--samples-per-image", "2", "--steps", "4", "--sampler", "ddim",
             "--limit", "16", "--subset", "first", "--batch-size", "8", "--seed", "3", "--no-fid", "--no-progress", "--digital", "jpeg",
             "--device", "cpu"]
ROW_KEYS = ["system", "receiver", "model", "snr_db", "start", "oracle", "samples_per_image", "n", "psnr", "ssim",
            "ms_ssim", "budget_bytes", "lost_fraction"]


def _compare_or_write(name: str, actual: dict, check) -> None:
    path = EXPECTED / name
    if REGENERATE:
        EXPECTED.mkdir(exist_ok=True)
        path.write_text(json.dumps(actual, indent=1) + "\n")
        return
    if not path.is_file():
        pytest.fail(f"{path} missing: regenerate with DIFFJSCC_REGENERATE_GOLDEN=1")
    check(json.loads(path.read_text()), actual)


@pytest.fixture(scope="module")
def golden_runs(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each run's log folder, trained on the first 48 training images."""
    data = tmp_path_factory.mktemp("golden_data")
    train = data / "train"
    train.mkdir()
    for path in sorted((cifar_root / "cifar_train").glob("*.png"))[:48]:
        (train / path.name).write_bytes(path.read_bytes())
    folders: dict[str, Path] = {}
    for name, overrides in RUNS.items():
        folders[name] = tmp_path_factory.mktemp("golden") / name
        extra = [f"jscc_encoder_path={folders['jscc'] / f'ckpt_{TRAIN_STEPS:07d}.pt'}"] if "mode=frozen" in overrides else []
        assert main(train_argv(train, folders[name], TRAIN_STEPS, TRAIN_STEPS, [*MICRO, *overrides, *extra])) == 0
    return folders


def _loss_trace(log_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("img_per_s", "lr")} for r in records]


def test_training_loss_trace_matches_golden(golden_runs: dict[str, Path]) -> None:
    actual = {name: _loss_trace(folder) for name, folder in golden_runs.items()}

    def check(expected: dict, got: dict) -> None:
        assert list(got) == list(expected)
        for name in expected:
            assert len(got[name]) == len(expected[name]) == TRAIN_STEPS, name
            for want, have in zip(expected[name], got[name]):
                assert set(have) == set(want), (name, want["step"])
                for key, value in want.items():
                    assert have[key] == pytest.approx(value, rel=LOSS_RTOL, abs=1e-7), (name, want["step"], key)

    _compare_or_write("train_loss_trace.json", actual, check)


def test_evaluation_rows_match_golden(golden_runs: dict[str, Path], cifar_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    checkpoints = [golden_runs[name] / f"ckpt_{TRAIN_STEPS:07d}.pt" for name in ("jscc", "frozen_residual_v")]
    argv = ["evaluate", "--data", str(cifar_root / "cifar_test"), "--out", str(out), *EVAL_ARGS]
    for path in checkpoints:
        argv += ["--checkpoint", str(path)]
    assert main(argv) == 0
    rows = json.loads((out / "results.json").read_text())["results"]
    actual = {"rows": [{k: row[k] for k in ROW_KEYS} for row in rows]}

    def check(expected: dict, got: dict) -> None:
        assert len(got["rows"]) == len(expected["rows"])
        for want, have in zip(expected["rows"], got["rows"]):
            where = (want["system"], want["model"], want["snr_db"])
            for key, value in want.items():
                if key in SCORE_ATOL:
                    assert have[key] == pytest.approx(value, abs=SCORE_ATOL[key]), (*where, key)
                else:
                    assert have[key] == value, (*where, key)

    _compare_or_write("eval_rows.json", actual, check)
