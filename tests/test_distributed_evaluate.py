"""`diffjscc evaluate` sharded across 2 CPU processes (gloo) gives the numbers of one process.

A tiny frozen-mode checkpoint (a 2-step Deep JSCC, then a 2-step diffusion receiver on it) is
evaluated on 13 real CIFAR-10 test images — an odd count in batches of 5 (5, 5, 3), so rank 0
takes 10 images and rank 1 takes 3 — at 2 SNRs, with the Deep JSCC decoder, the diffusion
receiver (gaussian and mean of 2 samples) and the WebP baseline:

* once in this process, once under ``torchrun --nproc_per_node 2`` and once under
  ``mpiexec -n 2``: every PSNR / SSIM / MS-SSIM / lost fraction / mean bytes agrees to 1e-5
  (measured: at most 3e-10, float rounding: the ranks sum in another order) and ``n`` is the same; rank 0
  alone prints and writes the result files;
* FID, with a small fixed conv net as the feature network (the real Inception weights are not
  needed): ``run_protocol`` on 2 processes started with torchrun's variables gives the FID of
  one process to 1e-6 (measured 4e-10) — feature sums combined over ranks, not FIDs averaged — both for
  reference statistics computed sharded and for ones rank 0 reads from the cache and shares.
"""

from __future__ import annotations

import json
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffjscc.cli import main
from diffjscc.runtime.checkpoint import list_checkpoints

from launch_helpers import LAUNCH_TIMEOUT_S
from launch_helpers import find_mpiexec as _mpiexec
from launch_helpers import free_port as _free_port
from launch_helpers import launch_env as _env
from launch_helpers import run_launch as _run
from launch_helpers import train_argv

MICRO = ["num_channels=16", "channel_mult=[1,2]", "attention_resolutions=[16]", "num_res_blocks=1",
         "jscc_num_filters=16", "diffusion_steps=100", "sample_steps=2", "batch_size=8",
         "log_interval=1", "device=cpu", "dropout=0"]
N_IMAGES = 13  # odd: uneven shards
# --starts, not --start: torchrun's parser takes --start for an abbreviation of its --start-method
EVAL_ARGS = ["--snr", "0,10", "--starts", "gaussian,mean", "--samples-per-image", "2", "--steps", "2",
             "--limit", str(N_IMAGES), "--batch-size", "5", "--digital", "webp", "--seed", "3", "--no-progress",
             "--device", "cpu", "--controls"]
COMPARED = ("psnr", "ssim", "ms_ssim", "lost_fraction", "mean_bytes", "fid", "fd_cls", "kid_cls", "kid_cls_std",
            "acc_cls")
ROW_KEY = ("system", "receiver", "model", "snr_db", "start")


def _train(data: Path, log_dir: Path, *extra: str) -> Path:
    assert main(train_argv(data, log_dir, 2, 2, [*MICRO, *extra])) == 0
    return list_checkpoints(log_dir)[-1]


@pytest.fixture(scope="module")
def setup(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A frozen checkpoint (Deep JSCC decoder + diffusion receiver) and a folder of 13 test images."""
    root = tmp_path_factory.mktemp("dist_eval")
    jscc = _train(cifar_root / "cifar_train", root / "jscc", "mode=jscc")
    frozen = _train(cifar_root / "cifar_train", root / "frozen", "mode=frozen", f"jscc_encoder_path={jscc}")
    data = root / "images"
    data.mkdir()
    for path in sorted((cifar_root / "cifar_test").glob("*.png"))[:N_IMAGES]:
        shutil.copy(path, data / path.name)
    return {"checkpoint": frozen, "data": data, "root": root, "torch_home": root / "empty_torch_home"}


def _evaluate_args(setup: dict, out: Path) -> list[str]:
    return ["evaluate", "--checkpoint", str(setup["checkpoint"]), "--data", str(setup["data"]), *EVAL_ARGS,
            "--out", str(out)]


@pytest.fixture(scope="module")
def single(setup: dict) -> list[dict]:
    out = setup["root"] / "single"
    mp = pytest.MonkeyPatch()
    mp.setenv("TORCH_HOME", str(setup["torch_home"]))  # no Inception/AlexNet weights: FID/LPIPS skipped
    try:
        assert main(_evaluate_args(setup, out)) == 0
    finally:
        mp.undo()
    return json.loads((out / "results.json").read_text())["results"]


def _assert_same_rows(single: list[dict], sharded: list[dict], tolerance: float) -> float:
    """Same rows (in the same order), same n, the compared numbers within ``tolerance``; the largest difference."""
    assert [tuple(r[k] for k in ROW_KEY) for r in sharded] == [tuple(r[k] for k in ROW_KEY) for r in single]
    worst = 0.0
    for one, many in zip(single, sharded):
        assert one["n"] == many["n"] == N_IMAGES
        for name in COMPARED:
            if one[name] is None:
                assert many[name] is None, (name, one, many)
                continue
            difference = abs(one[name] - many[name])
            assert difference <= tolerance * max(1.0, abs(one[name])), (name, one, many)
            worst = max(worst, difference)
    return worst


@pytest.mark.parametrize("launcher", ["torchrun", "mpiexec"])
def test_sharded_evaluate_gives_the_single_process_numbers(launcher: str, setup: dict, single: list[dict]) -> None:
    out = setup["root"] / f"sharded_{launcher}"
    argv = _evaluate_args(setup, out)
    env = _env(TORCH_HOME=str(setup["torch_home"]))
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   "-m", "diffjscc", *argv]
    else:
        command = [_mpiexec(), "-n", "2", sys.executable, "-m", "diffjscc", *argv]
        env["MASTER_PORT"] = str(_free_port())
    done = _run(command, env)
    assert "evaluate: 2 processes" in done.stdout
    # rank 0 alone prints the table and writes the files
    assert done.stdout.count("wrote ") == 1 and done.stdout.count("| system") == 1, done.stdout
    assert done.stderr.count("FID skipped") == 1, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "results.json", "results.md"]
    sharded = json.loads((out / "results.json").read_text())["results"]
    receivers = {(r["receiver"], r["start"]) for r in single}
    assert receivers == {("deep_jscc", "-"), ("diffusion", "gaussian"), ("diffusion", "mean"), ("digital", "-"),
                         ("source", "-"), ("control_noise", "-")}
    assert all(r["fd_cls"] is not None and r["kid_cls"] is not None and r["acc_cls"] is not None for r in single)
    worst = _assert_same_rows(single, sharded, 1e-5)
    print(f"{launcher}: {len(single)} rows, largest difference from one process {worst:.3g}")


FID_DRIVER = r'''
"""run_protocol with FID of a small fixed conv net, in one process or sharded; rank 0 writes JSON."""
import json
import sys
from pathlib import Path

import torch
from torch import nn

from diffjscc.evaluation.fid import FIDScorer
from diffjscc.evaluation.sweep import Protocol, load_models, run_protocol
from diffjscc.runtime.distributed import all_gather_tensors, is_main_process, process_group


class Features(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 6, 3, stride=2),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.requires_grad_(False)

    def forward(self, x):
        return self.net(x.float() / 255.0)


def evaluate(checkpoint, data, out, network_id):
    protocol = Protocol(snrs=[10.0], starts=("gaussian",), steps=2, samples_per_image=2, batch_size=5,
                        seed=3, digital=("webp",))
    fid = FIDScorer(Features(), network_id=network_id or None, batch_size=4)
    document = run_protocol(load_models([Path(checkpoint)]), Path(data), protocol, fid=fid, fid_info={},
                            progress=False, echo=lambda *_: None)
    stats = fid.reference_stats()
    again = FIDScorer(Features(), network_id=network_id or None, batch_size=4)  # the cache, if there is one
    from diffjscc.data import ImageFolderDataset
    note = again.reference_from_files(ImageFolderDataset(Path(data)).files, lambda paths: 1 / 0,
                                      sharded=True) if network_id else ""
    same = all(torch.equal(part, stats.cov_sum) for part in all_gather_tensors(stats.cov_sum))
    cached = again.reference_stats().cov_sum if network_id else stats.cov_sum
    if is_main_process():
        Path(out).write_text(json.dumps({
            "results": document["results"], "note": note, "ranks_hold_the_same_reference": same,
            "count": stats.count, "cache_difference": float((cached - stats.cov_sum).abs().max())}))


if __name__ == "__main__":
    with process_group(120.0, "cpu"):
        evaluate(*sys.argv[1:5])
'''


def test_sharded_fid_combines_feature_statistics(setup: dict, tmp_path: Path) -> None:
    """FID of the union, from summed feature statistics; the reference sharded or from rank 0's cache."""
    script = tmp_path / "fid_driver.py"
    script.write_text(FID_DRIVER)
    one = tmp_path / "one.json"
    runpy.run_path(str(script))["evaluate"](setup["checkpoint"], setup["data"], one, "")  # no cache
    many = tmp_path / "many.json"
    base = _env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2")
    network_id = "tiny-conv-test"  # cached: rank 0 writes the sharded statistics, then reads them back
    command = [sys.executable, str(script), str(setup["checkpoint"]), str(setup["data"]), str(many), network_id]
    ranks = [subprocess.Popen(command, env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in (0, 1)]
    try:
        outputs = [process.communicate(timeout=LAUNCH_TIMEOUT_S) for process in ranks]
    finally:
        for process in ranks:
            if process.poll() is None:
                process.kill()
    for process, (_, err) in zip(ranks, outputs):
        assert process.returncode == 0, err[-3000:]
    single, sharded = json.loads(one.read_text()), json.loads(many.read_text())
    assert sharded["ranks_hold_the_same_reference"] and sharded["count"] == single["count"] == N_IMAGES
    assert "from cache" in sharded["note"] and sharded["cache_difference"] == 0.0
    assert len(list(setup["data"].glob(".fid_stats_*.npz"))) == 1
    assert all(r["fid"] is not None and r["fid"] > 0 for r in single["results"])
    worst = _assert_same_rows(single["results"], sharded["results"], 1e-6)
    print(f"FID rows: largest difference from one process {worst:.3g}")


LPIPS_DRIVER = """
import json, sys, torch
from diffjscc.evaluation.perceptual import PerceptualScorer
from diffjscc.evaluation.scoring import score_outputs
from diffjscc.runtime.distributed import process_group

with process_group(60.0, "cpu") as ctx:
    # stand-ins for LPIPS and DISTS (their ImageNet weights are not here): per-pair mean absolute errors
    mae = lambda x, y: (x - y).abs().mean(dim=(1, 2, 3))
    scorer = PerceptualScorer({"lpips": mae, "dists": lambda x, y: 2 * mae(x, y)}, batch_size=2)
    images = torch.arange(3 * 3 * 32 * 32, dtype=torch.int64).remainder(251).to(torch.uint8).view(3, 3, 32, 32)
    mine = images if ctx.rank == 0 else images[:0]  # rank 1 has nothing to score
    scores = score_outputs(mine, (mine.int() + 10).clamp(max=255).to(torch.uint8), perceptual=scorer,
                           sharded=True, samples=1)
    print(json.dumps({"rank": ctx.rank, "lpips": scores["lpips"], "dists": scores["dists"]}), flush=True)
"""


def test_lpips_and_dists_in_sharded_evaluation_with_an_empty_rank(tmp_path: Path) -> None:
    """A rank with no images must not hang the other or skew the mean: both ranks get the mean of
    LPIPS and DISTS over all images (each rank's mean weighted by its count)."""
    script = tmp_path / "lpips_driver.py"
    script.write_text(LPIPS_DRIVER)
    base = _env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2")
    ranks = [subprocess.Popen([sys.executable, str(script)], env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in (0, 1)]
    try:
        outputs = [process.communicate(timeout=120) for process in ranks]
    finally:
        for process in ranks:
            if process.poll() is None:
                process.kill()
    results = []
    for process, (out, err) in zip(ranks, outputs):
        assert process.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    images = torch.arange(3 * 3 * 32 * 32).remainder(251).float()
    expected = ((images + 10).clamp(max=255) - images).mean().item() / 255
    assert [r["lpips"] for r in results] == pytest.approx([expected, expected], rel=1e-6)
    assert [r["dists"] for r in results] == pytest.approx([2 * expected, 2 * expected], rel=1e-6)
