"""Distributed training: torchrun and mpiexec on 2 CPU processes (gloo) train as one process does.

The maths of the equivalence is pinned in-process (the batch slices and their random draws
recombine into the single-process batch; half-batch gradients average to the full-batch one).
Then real launches on real CIFAR-10 images, a few steps of a tiny model each:

* a run started by hand with torchrun's variables loses rank 1 to SIGKILL: rank 0 exits with
  a one-line error at once; ``torchrun`` then resumes that run's checkpoint on 2 processes and
  ends where one uninterrupted process ends;
* ``mpiexec -n 2`` (the ``mpich`` wheel's Hydra) trains the frozen mode, whose encoder has no
  gradients, as one process does;
* a rank that hangs (SIGSTOP) makes the other fail after ``--dist-timeout``; the gather/reduce
  helpers for sharded evaluation are exact across processes.

Tolerance. The processes sum gradients in another order than one process does, so gradients
differ by float32 rounding (measured ~1e-6 of their scale). AdamW divides each gradient element
by its own running RMS, which turns rounding noise into a full ±lr step where the true gradient
is zero (attention key biases; conv biases whose channel is a GroupNorm group of its own) —
two single-process runs with 1 and 2 threads differ the same way (measured: up to 5e-4 at
lr 5e-4, against 2.3e-4 between 2 processes and one). Hence: AdamW's running gradient mean
agrees to 1e-5 of its scale, 99.9% of weights (and EMA weights) to 1e-6 (measured ~1.4e-7), and
every weight within the 2·lr per step that such a zero-gradient element can drift.
Dropout is 0 in these runs: its masks come from each process's own RNG.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diffjscc.channel import Channel
from diffjscc.runtime.seeding import BatchGenerator, step_generator
from diffjscc.cli import main
from diffjscc.config import load_config
from diffjscc.errors import UserError
from diffjscc.system import TransmissionSystem
from diffjscc.runtime import distributed
from diffjscc.runtime.checkpoint import list_checkpoints, load_checkpoint
from diffjscc.runtime.distributed import DistContext, detect_launch, first_slurm_host
from diffjscc.training.trainer import EpochBatchSampler, training_loss

from launch_helpers import LAUNCH_TIMEOUT_S
from launch_helpers import find_mpiexec as _mpiexec
from launch_helpers import free_port as _free_port
from launch_helpers import launch_env as _env
from launch_helpers import run_launch as _run
from launch_helpers import TINY, train_argv

MICRO = ["num_channels=16", "channel_mult=[1,2]", "attention_resolutions=[16]", "num_res_blocks=1",
         "jscc_num_filters=16", "diffusion_steps=100", "sample_steps=2", "batch_size=8",
         "log_interval=1", "device=cpu", "dropout=0", "lr_anneal=false"]
LR = 5e-4  # tiny.yaml


# ---- launchers' variables ----------------------------------------------------------------------
@pytest.mark.parametrize("env, expected", [
    ({}, DistContext()),
    ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}, DistContext(3, 8, 1, "torchrun/env")),
    ({"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "6", "OMPI_COMM_WORLD_LOCAL_RANK": "2"},
     DistContext(5, 6, 2, "Open MPI")),
    ({"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1"}, DistContext(1, 2, 1, "MPICH")),
    ({"SLURM_PROCID": "7", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "3", "SLURM_NTASKS": "8"},
     DistContext(7, 8, 3, "SLURM")),
    # an sbatch script (no srun step) is one process, whatever --ntasks says
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0"}, DistContext()),
    # mpiexec inside a SLURM allocation: MPI's variables win; torchrun's win over both
    ({"PMI_RANK": "1", "PMI_SIZE": "2", "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}, DistContext(1, 2, 0, "MPICH")),
    ({"RANK": "0", "WORLD_SIZE": "2", "PMI_RANK": "1", "PMI_SIZE": "4"}, DistContext(0, 2, 0, "torchrun/env")),
], ids=["none", "torchrun", "openmpi", "mpich", "srun", "sbatch", "mpich-in-slurm", "torchrun-in-mpi"])
def test_launch_is_read_from_each_launcher(env, expected) -> None:
    assert detect_launch(env) == expected


@pytest.mark.parametrize("env", [{"RANK": "two", "WORLD_SIZE": "4"}, {"RANK": "4", "WORLD_SIZE": "4"},
                                 {"PMI_RANK": "0", "PMI_SIZE": "0"}])
def test_bad_launch_variables_are_one_line_errors(env) -> None:
    with pytest.raises(UserError, match="RANK|rank"):
        detect_launch(env)


@pytest.mark.parametrize("nodelist, host", [("node07", "node07"), ("gpu[03-05,09],cpu1", "gpu03"),
                                            ("a1,a2", "a1"), ("x-[10,12]", "x-10")])
def test_first_slurm_host(nodelist: str, host: str) -> None:
    assert first_slurm_host(nodelist) == host


@pytest.mark.parametrize("visible, local_rank, expected", [(4, 3, 3), (1, 3, 0), (2, 3, 1)])
def test_each_process_takes_a_visible_gpu(monkeypatch, visible: int, local_rank: int, expected: int) -> None:
    """All GPUs visible: local rank i takes GPU i. Per-task binding (one visible GPU per process,
    as SLURM --gpus-per-task=1 sets it) was refused before ("local rank 3 has no GPU")."""
    chosen = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    context = DistContext(rank=local_rank, world_size=8, local_rank=local_rank)
    assert context.place(torch.device("cuda")) == torch.device("cuda", expected) and chosen == [expected]
    assert context.place(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(UserError, match="rank 3 sees no GPU"):
        DistContext(rank=3, world_size=8, local_rank=3).place(torch.device("cuda"))


def test_two_processes_on_one_gpu_are_found() -> None:
    owners = [("n1", "gpu-a"), ("n1", "gpu-b"), ("n2", "gpu-a"), ("n1", "gpu-a")]
    assert distributed.shared_gpus(owners) == [[0, 3]]  # the same UUID on another host is another GPU
    assert distributed.shared_gpus(owners[:3]) == []


def test_the_config_batch_is_global_and_must_divide() -> None:
    assert DistContext(rank=1, world_size=2).rows(8) == (4, 8)
    assert DistContext().rows(8) == (0, 8)
    with pytest.raises(UserError, match="batch_size=8 .* not divisible by the 3 processes"):
        DistContext(rank=0, world_size=3).local_batch(8)


# ---- the maths of the equivalence, in one process ----------------------------------------------
@pytest.mark.parametrize("world, start_step", [(2, 0), (4, 7)])
def test_rank_slices_of_each_step_are_the_single_process_batch(world: int, start_step: int) -> None:
    """Sharding keeps the global batch: concatenated in rank order, the ranks' batches are one
    process's batches, also across epochs and after a resume mid-epoch."""
    single = iter(EpochBatchSampler(50, 8, seed=3, start_step=start_step))
    context = [DistContext(rank=r, world_size=world) for r in range(world)]
    shards = [iter(EpochBatchSampler(50, 8, seed=3, start_step=start_step, rows=c.rows(8))) for c in context]
    for _ in range(15):  # 6 batches per epoch: crosses two epoch boundaries
        assert sum((next(s) for s in shards), []) == next(single)


@pytest.mark.parametrize("kind", ["awgn", "rayleigh_block", "rayleigh_fast"])
def test_channel_draws_do_not_depend_on_the_batch_split(kind: str) -> None:
    """A sample's SNR, fading and noise are the same whether its batch is whole or in slices,
    and a whole-batch BatchGenerator draws what the plain generator draws."""
    channel = Channel(kind, snr_range=(0.0, 20.0)).train()
    z = torch.randn(8, 8, 4, 4)
    whole = channel(z, generator=torch.Generator().manual_seed(1))
    assert torch.equal(channel(z, generator=BatchGenerator(torch.Generator().manual_seed(1), 8)), whole)
    parts = [channel(z[a:b], generator=BatchGenerator(torch.Generator().manual_seed(1), 8, a, b))
             for a, b in ((0, 2), (2, 5), (5, 8))]
    assert torch.equal(torch.cat(parts), whole)


@pytest.mark.parametrize("mode", ["jscc", "joint", "unconditional"])
def test_half_batch_gradients_average_to_the_full_batch_gradient(mode: str) -> None:
    """What DDP computes (the mean of the ranks' gradients) is the one-process gradient."""
    cfg = load_config(TINY, MICRO + [f"mode={mode}", "channel=rayleigh_fast", "snr_range=[0,20]"])
    torch.manual_seed(0)
    system = TransmissionSystem(cfg)
    images = torch.rand(8, 3, 32, 32) * 2 - 1

    def gradients(start: int, stop: int) -> list[torch.Tensor]:
        system.zero_grad()
        draws = BatchGenerator(step_generator(cfg.seed, 5), 8, start, stop)
        training_loss(system, images[start:stop], None, draws)["loss"].backward()
        return [p.grad.clone() for p in system.trainable_parameters()]

    full, first, second = gradients(0, 8), gradients(0, 4), gradients(4, 8)
    scale = max(g.abs().max() for g in full)
    for f, a, b in zip(full, first, second):
        torch.testing.assert_close((a + b) / 2, f, rtol=1e-4, atol=1e-6 * scale)


def test_helpers_are_no_ops_in_one_process() -> None:
    x = torch.arange(5.0)
    assert distributed.all_reduce_sum(x) is x and distributed.all_gather_cat(x) is x
    assert distributed.all_gather_tensors(x) == [x] and distributed.shard_range(5) == range(5)
    assert distributed.get_rank() == 0 and distributed.get_world_size() == 1 and distributed.is_main_process()


def test_no_rank_0_to_meet_is_a_clear_error(monkeypatch) -> None:
    """Rank 1 whose rank 0 never comes fails after the timeout with a message, not a hang."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    start = time.monotonic()
    with pytest.raises(distributed.DistributedError, match="rank 1: could not join the 2 processes"):
        distributed.init_distributed(timeout_s=1, device_name="cpu")
    assert time.monotonic() - start < 30


# ---- real launches -------------------------------------------------------------------------------
def _train_args(data: Path, log_dir: Path, steps: int, *extra: str) -> list[str]:
    return train_argv(data, log_dir, steps, 2, [*MICRO, *extra])


def _assert_trains_as_one_process(single: dict, parallel: dict, steps: int) -> None:
    """See the module docstring for why these tolerances."""
    assert single["step"] == parallel["step"] == steps
    moments = [(single["optimizer"]["state"][i]["exp_avg"], parallel["optimizer"]["state"][i]["exp_avg"])
               for i in single["optimizer"]["state"]]
    scale = max(a.abs().max() for a, _ in moments)
    assert max((a - b).abs().max() for a, b in moments) <= 1e-5 * scale
    for part in ("model", "ema"):
        diff = torch.cat([(single[part][k].double() - parallel[part][k].double()).abs().flatten()
                          for k in single[part] if single[part][k].is_floating_point()])
        assert (diff > 1e-6).double().mean() < 1e-3, f"{part}: {(diff > 1e-6).sum()} weights differ by > 1e-6"
        assert diff.max() <= 2 * LR * steps, f"{part}: max difference {diff.max():.3g}"


def _logged(log_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]


def test_killed_rank_then_torchrun_resume_ends_where_one_process_ends(cifar_root: Path, tmp_path: Path) -> None:
    """A rank is SIGKILLed: the other exits at once with a one-line error (status 1). torchrun
    then resumes that run's step-2 checkpoint on 2 processes; step 3 equals one process's."""
    data = cifar_root / "cifar_train"
    extra = ("mode=joint", "channel=rayleigh_block", "snr_range=[0,20]")
    assert main(_train_args(data, tmp_path / "single", 3, *extra)) == 0
    single = load_checkpoint(list_checkpoints(tmp_path / "single")[-1])

    # two processes started by hand with torchrun's variables, rank 1 killed after step 2
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "diffjscc", *_train_args(data, killed, 1000, *extra), "--dist-timeout", "60"]
    base = _env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2")
    ranks = [subprocess.Popen(command, env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in (0, 1)]
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while not (killed / "ckpt_0000002.pt").exists():
            assert ranks[0].poll() is None and time.monotonic() < deadline, ranks[0].communicate()
            time.sleep(0.05)
        ranks[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        _, err = ranks[0].communicate(timeout=90)
        elapsed = time.monotonic() - killed_at
    finally:
        for process in ranks:
            if process.poll() is None:
                process.kill()
            process.communicate()
    print(f"rank 0 exited {elapsed:.1f} s after rank 1 was killed: {err.strip().splitlines()[-1]}")
    assert ranks[0].returncode == 1 and elapsed < 60, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("diffjscc: error: rank 0 of 2: lost contact with the other processes"), err[-2000:]

    resumed = tmp_path / "resumed"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "diffjscc", *_train_args(data, resumed, 3, *extra),
                "--resume", str(killed / "ckpt_0000002.pt")]
    done = _run(torchrun, _env())
    assert done.stdout.count("resumed from") == 1 and "2 processes (torchrun/env, gloo)" in done.stdout
    assert [r["step"] for r in _logged(resumed)] == [3]  # rank 0 alone logs and saves
    assert [p.name for p in list_checkpoints(resumed)] == ["ckpt_0000003.pt"]
    _assert_trains_as_one_process(single, load_checkpoint(resumed / "ckpt_0000003.pt"), 3)
    assert abs(_logged(resumed)[0]["loss"] - _logged(tmp_path / "single")[-1]["loss"]) < 1e-5


def test_sigterm_to_one_rank_stops_both_after_the_checkpoint(cifar_root: Path, tmp_path: Path) -> None:
    """SIGTERM to rank 1 alone: the ranks agree to stop at the same step, rank 0 writes that step's
    checkpoint, and both exit 128 + SIGTERM only once it is on disk, leaving the group cleanly."""
    log_dir = tmp_path / "term"
    command = [sys.executable, "-m", "diffjscc", *_train_args(cifar_root / "cifar_train", log_dir, 1000,
                                                              "mode=jscc"), "--dist-timeout", "60"]
    base = _env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2")
    ranks = [subprocess.Popen(command, env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in (0, 1)]
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while not (log_dir / "ckpt_0000002.pt").exists():
            assert ranks[0].poll() is None and time.monotonic() < deadline, ranks[0].communicate()
            time.sleep(0.05)
        ranks[1].send_signal(signal.SIGTERM)
        outputs = [process.communicate(timeout=120) for process in ranks]
    finally:
        for process in ranks:
            if process.poll() is None:
                process.kill()
    assert [process.returncode for process in ranks] == [128 + signal.SIGTERM] * 2, outputs[1][1][-2000:]
    saved = list_checkpoints(log_dir)[-1]
    assert f"saved {saved}" in outputs[0][0] and load_checkpoint(saved)["step"] > 2


def test_mpiexec_trains_the_frozen_mode_as_one_process(cifar_root: Path, tmp_path: Path) -> None:
    """``mpiexec -n 2`` with MPICH's variables; the frozen encoder has no gradients (DDP leaves
    it out) and stays the pre-trained one; the EMA is checked identical on both ranks before
    each checkpoint (the run would fail otherwise)."""
    mpiexec = _mpiexec()
    data = cifar_root / "cifar_train"
    assert main(_train_args(data, tmp_path / "jscc", 2, "mode=jscc")) == 0
    extra = ("mode=frozen", f"jscc_encoder_path={list_checkpoints(tmp_path / 'jscc')[-1]}", "snr_range=[0,20]")
    assert main(_train_args(data, tmp_path / "single", 3, *extra)) == 0
    single = load_checkpoint(list_checkpoints(tmp_path / "single")[-1])

    log_dir = tmp_path / "mpi"
    done = _run([mpiexec, "-n", "2", sys.executable, "-m", "diffjscc", *_train_args(data, log_dir, 3, *extra)],
                _env(MASTER_PORT=str(_free_port())))
    assert "2 processes (MPICH, gloo)" in done.stdout and done.stdout.count("step 3: checkpoint") == 1
    assert [r["step"] for r in _logged(log_dir)] == [1, 2, 3] and len(list(log_dir.glob("samples_*.png"))) == 1
    parallel = load_checkpoint(log_dir / "ckpt_0000003.pt")
    _assert_trains_as_one_process(single, parallel, 3)
    for key, value in single["model"].items():
        if key.startswith("encoder."):
            assert torch.equal(parallel["model"][key], value), key


def test_batchnorm_deep_jscc_trains_on_two_processes_and_its_checkpoint_loads(cifar_root: Path,
                                                                              tmp_path: Path) -> None:
    """``jscc_norm: batchnorm`` under torchrun: each rank's running statistics come from its own
    rows, so before the cross-rank check and every save rank 0's are broadcast; the run passes
    its checkpoints (it stopped at the first one before) and the file loads as a working model."""
    from diffjscc.system import load_system

    log_dir = tmp_path / "bn"
    argv = train_argv(cifar_root / "cifar_train", log_dir, 4, 2, [*MICRO, "mode=jscc", "jscc_norm=batchnorm"])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "diffjscc", *argv]
    done = _run(torchrun, _env())
    assert "2 processes (torchrun/env, gloo)" in done.stdout and done.stdout.count("step 4: checkpoint") == 1
    payload = load_checkpoint(log_dir / "ckpt_0000004.pt")
    means = [v for k, v in payload["model"].items() if k.endswith("running_mean")]
    assert means and all(torch.isfinite(m).all() for m in means) and any(m.abs().sum() > 0 for m in means)
    system = load_system(str(log_dir / "ckpt_0000004.pt"))
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    out = system.decode(system.transmit(images, snr_db=10.0, generator=torch.Generator().manual_seed(0)))
    assert out.shape == images.shape and torch.isfinite(out).all()


HELPERS_AND_HANG = """
import sys, time, torch
from diffjscc.runtime.distributed import (DistributedError, all_gather_cat, all_gather_tensors,
                                           all_reduce_sum, leave_now, process_group, shard_range)
try:
    with process_group(timeout_s=float(sys.argv[1]), device_name="cpu") as ctx:
        items = shard_range(5)  # 3 items on rank 0, 2 on rank 1
        assert all_gather_cat(torch.tensor(list(items)) * 10).tolist() == [0, 10, 20, 30, 40]
        assert all_reduce_sum(torch.tensor([float(len(items))], dtype=torch.float64)).item() == 5
        assert [int(t) for t in all_gather_tensors(torch.tensor(ctx.rank))] == [0, 1]
        print("helpers ok", flush=True)
        while True:
            all_reduce_sum(torch.ones(1))
            time.sleep(0.05)
except DistributedError as err:
    print(f"diffjscc: error: {err}", file=sys.stderr)
    leave_now(1)
"""


def test_helpers_are_exact_and_a_hung_rank_times_out(tmp_path: Path) -> None:
    """Sharded results gather back in order; when rank 1 stops answering (SIGSTOP: no closed
    socket to notice), rank 0 fails after --dist-timeout instead of waiting forever."""
    script = tmp_path / "helpers.py"
    script.write_text(HELPERS_AND_HANG)
    timeout_s = 4
    base = _env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2")
    ranks = [subprocess.Popen([sys.executable, str(script), str(timeout_s)], text=True,
                              env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in (0, 1)]
    try:
        for process in ranks:
            assert process.stdout.readline().strip() == "helpers ok", process.stderr.read()
        ranks[1].send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        _, err = ranks[0].communicate(timeout=90)
        elapsed = time.monotonic() - stopped_at
    finally:
        for process in ranks:
            if process.poll() is None:
                process.kill()
            process.communicate()
    print(f"rank 0 exited {elapsed:.1f} s after rank 1 stopped: {err.strip().splitlines()[-1]}")
    assert ranks[0].returncode == 1 and timeout_s - 1 < elapsed < timeout_s + 30, err[-3000:]
    assert "lost contact with the other processes" in err and f"--dist-timeout={timeout_s} s" in err
