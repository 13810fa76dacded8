"""Process-wide float32 settings: resolving a device changes none; a job sets them where it
starts; the metrics always run in full fp32; the results record what the receivers ran under."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffjscc.runtime import device as device_module

FLAGS = ("cuda.matmul.allow_tf32", "cudnn.allow_tf32", "cudnn.benchmark")


def _get(flag: str) -> bool:
    owner, name = flag.rsplit(".", 1)
    obj = torch.backends
    for part in owner.split("."):
        obj = getattr(obj, part)
    return bool(getattr(obj, name))


@pytest.fixture
def flags():
    """The three process-wide flags, set to False for the test and restored afterwards."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved


def test_resolving_a_device_changes_no_global_setting(flags, monkeypatch) -> None:
    """A library call (resolve_device, here on a pretended GPU) leaves TF32 and cudnn.benchmark alone."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in ("auto", "cuda", "cpu"):
        device_module.resolve_device(name)
    assert [_get(f) for f in FLAGS] == [False, False, False]


def test_a_job_sets_its_numerics_where_it_starts(flags, monkeypatch) -> None:
    cpu = device_module.configure_job_numerics(torch.device("cpu"))
    assert [_get(f) for f in FLAGS] == [False, False, False]  # nothing to set on a CPU
    assert cpu["device"] == "cpu" and cpu["tf32_matmul"] is False and cpu["id"] == "cpu"
    record = device_module.configure_job_numerics(torch.device("cuda"))
    assert [_get(f) for f in FLAGS] == [True, True, True]
    assert record["tf32_matmul"] and record["tf32_conv"] and record["cudnn_benchmark"] and record["id"] == "cuda-tf32"
    monkeypatch.setenv(device_module.TF32_ENV, "0")
    assert device_module.configure_job_numerics("cuda")["id"] == "cuda-fp32"
    assert [_get(f) for f in FLAGS] == [False, False, True]


def test_metrics_run_in_full_fp32(flags, monkeypatch) -> None:
    """Under a job's TF32 every scorer sees TF32 off, and the job's setting is back afterwards."""
    import diffjscc.evaluation.scoring as scoring

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    seen: list[tuple[bool, bool]] = []
    original = scoring.psnr_per_image
    monkeypatch.setattr(scoring, "psnr_per_image", lambda x, y: (
        seen.append((_get(FLAGS[0]), _get(FLAGS[1]))), original(x, y))[1])
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    scoring.score_outputs(images, images.flip(0))
    assert seen == [(False, False)]
    assert _get(FLAGS[0]) and _get(FLAGS[1])


def test_results_record_the_receivers_numerics(tmp_path: Path, monkeypatch) -> None:
    """evaluate sets the job's numerics once, on the device it runs on, and writes them to results.json."""
    from diffjscc.cli import main

    calls: list[torch.device] = []
    original = device_module.configure_job_numerics
    monkeypatch.setattr(device_module, "configure_job_numerics", lambda d: (calls.append(d), original(d))[1])
    demo = Path(__file__).resolve().parents[1] / "diffjscc" / "assets" / "cifar10_demo"
    assert main(["evaluate", "--model", "deep_jscc_512", "--data", str(demo), "--snr", "10", "--limit", "2",
                 "--no-fid", "--no-realism", "--no-progress", "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert calls == [torch.device("cpu")]
    recorded = json.loads((tmp_path / "results.json").read_text())["numerics"]
    assert recorded["receivers"]["device"] == "cpu" and recorded["receivers"]["tf32_matmul"] is False
    from diffjscc.runtime.pretrained import verified_path
    from diffjscc.system import load_system

    bf16 = device_module.bf16_enabled(load_system(str(verified_path("deep_jscc_512"))).cfg.bf16, "cpu")
    assert recorded["receivers"]["bf16_autocast"] == {"deep_jscc_512": bf16}
    assert "full fp32" in recorded["metrics"]
