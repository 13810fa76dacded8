"""A run directory belongs to one run: the lock, refusing a fresh run over another run,
``--overwrite`` moving files aside, pruning only one's own checkpoints, a full disk during a
checkpoint write. The scenarios run through the CLI on real CIFAR-10 images."""

from __future__ import annotations

import csv
import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
import yaml

from diffjscc.cli import main
from diffjscc.errors import UserError
from diffjscc.runtime import checkpoint as checkpoint_module
from diffjscc.runtime import rundir
from diffjscc.runtime.checkpoint import (checkpoint_path, list_checkpoints, load_checkpoint, prune_checkpoints,
                                         record_checkpoint, save_checkpoint)
from diffjscc.runtime.rundir import FALLBACK_LOCK_NAME, LOCK_NAME, RunLock, prepare_fresh_run, read_manifest
from diffjscc.training.run_log import RunLog
from launch_helpers import LAUNCH_TIMEOUT_S, launch_env, train_argv

MICRO = ["mode=jscc", "jscc_num_filters=16", "batch_size=8", "log_interval=10", "device=cpu"]


@pytest.fixture(scope="module")
def train_data(cifar_root: Path) -> Path:
    return cifar_root / "cifar_train"


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "diffjscc", *argv], env=launch_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for(condition, process: subprocess.Popen, what: str, timeout: float = LAUNCH_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the first run ended (status {process.returncode}) before {what}: {process.stdout.read()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_second_run_into_a_busy_folder_is_refused(train_data: Path, tmp_path: Path, capsys) -> None:
    """Two trainings into one log_dir at once: the second stops with one line naming the folder
    and the holder's PID (exit 2); the first run's log holds only its own lines."""
    log_dir = tmp_path / "run"
    first = _start(train_argv(train_data, log_dir, 100000, 50, MICRO))
    _wait_for(lambda: (log_dir / "metrics.jsonl").is_file(), first, "its first log line")
    code = main(train_argv(train_data, log_dir, 30, 10, MICRO))
    still_running = first.poll() is None
    first.send_signal(signal.SIGTERM)  # it saves and exits 128 + 15
    first.wait(timeout=LAUNCH_TIMEOUT_S)
    line = _one_line_error(capsys)
    assert still_running and code == 2
    assert str(log_dir) in line and f"PID {first.pid}" in line and "in use" in line
    steps = [json.loads(s)["step"] for s in (log_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(10, 10 * len(steps) + 1, 10))  # one run's lines, in order, none twice


def test_new_run_over_a_finished_run_is_refused_then_moved_aside(train_data: Path, tmp_path: Path, capsys) -> None:
    """A finished 30-step run, then a new run with another config and no --resume: refused
    without changing a byte; with --overwrite the old files move into previous_*/ intact."""
    log_dir = tmp_path / "run"
    assert main(train_argv(train_data, log_dir, 30, 10, MICRO)) == 0
    capsys.readouterr()
    before = _hashes(log_dir)
    other = [*MICRO, "c_out=4", "latent_dim=256"]
    assert main(train_argv(train_data, log_dir, 20, 10, other)) == 2
    line = _one_line_error(capsys)
    assert "--resume auto" in line and "--overwrite" in line and str(log_dir) in line
    assert _hashes(log_dir) == before

    assert main(train_argv(train_data, log_dir, 20, 10, other, "--overwrite")) == 0
    aside = [p for p in log_dir.iterdir() if p.name.startswith("previous_")]
    assert len(aside) == 1
    moved = _hashes(aside[0])
    assert all(moved[name] == digest for name, digest in before.items() if name != LOCK_NAME)
    new = load_checkpoint(list_checkpoints(log_dir)[-1])
    assert new["step"] == 20 and new["config"]["c_out"] == 4
    assert [json.loads(s)["step"] for s in (log_dir / "metrics.jsonl").read_text().splitlines()] == [10, 20]
    old = load_checkpoint(list_checkpoints(aside[0])[-1])
    assert old["step"] == 30 and old["run_id"] != new["run_id"]


def test_killed_lock_holder_leaves_no_stale_lock(train_data: Path, tmp_path: Path) -> None:
    """SIGKILL of the run holding the lock, then `--resume auto` takes the folder and continues."""
    log_dir = tmp_path / "run"
    first = _start(train_argv(train_data, log_dir, 100000, 20, MICRO))
    _wait_for(lambda: bool(list_checkpoints(log_dir)), first, "its first checkpoint")
    first.kill()
    first.wait(timeout=LAUNCH_TIMEOUT_S)
    saved = load_checkpoint(list_checkpoints(log_dir)[-1])
    total = saved["step"] + 10
    assert main(train_argv(train_data, log_dir, total, 10, MICRO, "--resume", "auto")) == 0
    resumed = load_checkpoint(list_checkpoints(log_dir)[-1])
    assert resumed["step"] == total and resumed["run_id"] == saved["run_id"]


def test_resume_refuses_a_folder_whose_config_disagrees(train_data: Path, tmp_path: Path, capsys) -> None:
    """The folder's config.yaml must agree with the checkpoint a run resumes."""
    log_dir = tmp_path / "run"
    assert main(train_argv(train_data, log_dir, 10, 10, MICRO)) == 0
    config = log_dir / "config.yaml"
    config.write_text(config.read_text().replace("c_out: 8", "c_out: 4"))
    capsys.readouterr()
    assert main(train_argv(train_data, log_dir, 20, 10, MICRO, "--resume", "auto")) == 2
    line = _one_line_error(capsys)
    assert "config.yaml" in line and "c_out" in line


def test_resume_keeps_config_yaml_records_each_resume_and_logs_each_step_once(train_data: Path,
                                                                             tmp_path: Path) -> None:
    """A 40-step run "killed" after its step-20 checkpoint (the step-40 one removed, its log rows
    up to 40 left, as a kill leaves them), resumed twice with other log intervals: config.yaml
    stays the first start's, byte for byte; resumes.yaml records each resume's step and what it
    changed; metrics.jsonl and .csv hold every step once, in order."""
    log_dir = tmp_path / "run"
    assert main(train_argv(train_data, log_dir, 40, 20, MICRO)) == 0
    original = (log_dir / "config.yaml").read_bytes()
    (log_dir / "ckpt_0000040.pt").unlink()
    assert main(train_argv(train_data, log_dir, 40, 20, [*MICRO, "log_interval=5"], "--resume", "auto")) == 0
    (log_dir / "ckpt_0000040.pt").unlink()
    assert main(train_argv(train_data, log_dir, 40, 20, [*MICRO, "log_interval=20"], "--resume", "auto")) == 0
    assert (log_dir / "config.yaml").read_bytes() == original
    resumes = yaml.safe_load((log_dir / "resumes.yaml").read_text())
    assert [(r["step"], r["checkpoint"], r["changed"]) for r in resumes] == [
        (20, "ckpt_0000020.pt", {"log_interval": 5}), (20, "ckpt_0000020.pt", {"log_interval": 20})]
    steps = [json.loads(s)["step"] for s in (log_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 40]
    with (log_dir / "metrics.csv").open(newline="") as handle:
        assert [int(row["step"]) for row in csv.DictReader(handle)] == steps


def test_csv_log_keeps_columns_that_first_appear_later(tmp_path: Path) -> None:
    """A column that first appears in a later record widens metrics.csv (earlier rows empty
    there) instead of being dropped; a resumed log keeps the wider header."""
    log = RunLog(tmp_path, use_tensorboard=False)
    log.write({"step": 1, "loss": 0.5})
    log.write({"step": 2, "loss": 0.25, "jscc_mse": 0.125})
    log.write({"step": 3, "loss": 0.125})
    log.close()
    written = [["step", "loss", "jscc_mse"], ["1", "0.5", ""], ["2", "0.25", "0.125"], ["3", "0.125", ""]]
    assert _csv_rows(tmp_path / "metrics.csv") == written
    resumed = RunLog(tmp_path, start_step=3, use_tensorboard=False)
    resumed.write({"step": 4, "loss": 0.0625, "jscc_mse": 0.03125})
    resumed.close()
    assert _csv_rows(tmp_path / "metrics.csv") == [*written, ["4", "0.0625", "0.03125"]]


def _csv_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def test_a_log_line_cut_by_a_kill_is_dropped_on_resume(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.25}\n{"step": 3, "lo')
    RunLog(tmp_path, start_step=2, use_tensorboard=False).close()
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.25}\n'
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["step,loss", "1,0.5", "2,0.25"]


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    with RunLock(tmp_path / "run") as lock:
        lock.mark_holder()
        with pytest.raises(UserError, match=f"in use by another run \\(PID {os.getpid()}\\)"):
            RunLock(tmp_path / "run").acquire()
    RunLock(tmp_path / "run").acquire().release()  # free again once released


def _flock_failing_with(monkeypatch, code: int) -> None:
    """The run lock's flock fails with ``code`` (other users of fcntl, which retry on errors, keep theirs)."""
    def flock(_fd, _operation):
        raise OSError(code, os.strerror(code))

    fake = types.SimpleNamespace(flock=flock, LOCK_EX=fcntl.LOCK_EX, LOCK_NB=fcntl.LOCK_NB)
    monkeypatch.setattr(rundir, "fcntl", fake)


def test_a_held_flock_is_in_use_and_leaves_no_lock_file(tmp_path: Path, monkeypatch) -> None:
    _flock_failing_with(monkeypatch, errno.EWOULDBLOCK)
    with pytest.raises(UserError, match="in use by another run"):
        RunLock(tmp_path / "run").acquire()
    assert not (tmp_path / "run" / FALLBACK_LOCK_NAME).exists()


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP])
def test_a_file_system_without_flock_gets_a_lock_file(code: int, tmp_path: Path, monkeypatch, capsys) -> None:
    """Lustre or NFS without flock: not "in use", but an exclusive-create lock file naming the
    host, PID and start time, a one-line notice, the same refusal of a second run, and the file
    removed on release."""
    _flock_failing_with(monkeypatch, code)
    lock = RunLock(tmp_path / "run").acquire()
    notice = capsys.readouterr().err.strip().splitlines()
    assert len(notice) == 1 and "flock" in notice[0] and errno.errorcode[code] in notice[0], notice
    lock_file = tmp_path / "run" / FALLBACK_LOCK_NAME
    fields = dict(item.split("=", 1) for item in lock_file.read_text().split())
    assert fields["host"] == socket.gethostname() and fields["pid"] == str(os.getpid()) and fields["started"]
    with pytest.raises(UserError, match="in use by another run") as refused:
        RunLock(tmp_path / "run").acquire()
    assert f"PID {os.getpid()}" in str(refused.value) and socket.gethostname() in str(refused.value)
    lock.release()
    assert not lock_file.exists()
    RunLock(tmp_path / "run").acquire().release()  # free again once released


def test_a_lock_file_whose_process_is_gone_is_taken_over(tmp_path: Path, monkeypatch, capsys) -> None:
    """Stale on this host when its PID is gone (a SIGKILLed run); another host's PID cannot be
    checked from here, so its lock file is refused with a line naming the file to delete."""
    _flock_failing_with(monkeypatch, errno.ENOLCK)
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    lock_file = tmp_path / FALLBACK_LOCK_NAME
    lock_file.write_text(f"host={socket.gethostname()} pid={ended.pid} started=2026-01-01T00:00:00Z\n")
    lock = RunLock(tmp_path).acquire()
    assert f"pid={os.getpid()} " in lock_file.read_text() and "stale" in capsys.readouterr().err
    lock.release()
    lock_file.write_text(f"host=another-node pid={ended.pid} started=2026-01-01T00:00:00Z\n")
    with pytest.raises(UserError, match="another-node") as refused:
        RunLock(tmp_path).acquire()
    assert str(lock_file) in str(refused.value) and "\n" not in str(refused.value)
    assert lock_file.read_text().startswith("host=another-node")


def test_training_on_a_file_system_without_flock(train_data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    _flock_failing_with(monkeypatch, errno.ENOLCK)
    assert main(train_argv(train_data, tmp_path / "run", 10, 10, MICRO)) == 0
    assert "does not support flock" in capsys.readouterr().err
    assert list_checkpoints(tmp_path / "run") and not (tmp_path / "run" / FALLBACK_LOCK_NAME).exists()


def test_prepare_fresh_run(tmp_path: Path) -> None:
    assert prepare_fresh_run(tmp_path / "missing", overwrite=False) is None
    (tmp_path / "notes.txt").write_text("the user's own file")
    assert prepare_fresh_run(tmp_path, overwrite=False) is None  # not a run's file
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(UserError, match="--overwrite"):
        prepare_fresh_run(tmp_path, overwrite=False)
    aside = prepare_fresh_run(tmp_path, overwrite=True)
    assert (aside / "metrics.jsonl").read_text() == "{}\n" and (tmp_path / "notes.txt").exists()


def test_pruning_deletes_only_this_runs_checkpoints(tmp_path: Path) -> None:
    """Files another run wrote (higher steps, or unrecorded) survive this run's pruning."""
    payload = {"model": {"w": torch.zeros(2)}, "config": {}}
    foreign = [save_checkpoint(payload, checkpoint_path(tmp_path, step)) for step in (200, 300)]
    for path in foreign:
        record_checkpoint(tmp_path, "other", path)
    unrecorded = save_checkpoint(payload, checkpoint_path(tmp_path, 250))
    mine = []
    for step in (10, 20, 30):
        mine.append(save_checkpoint(payload, checkpoint_path(tmp_path, step)))
        record_checkpoint(tmp_path, "mine", mine[-1])
        prune_checkpoints(tmp_path, keep=2, run_id="mine")
    assert [p.exists() for p in mine] == [False, True, True]
    assert all(p.exists() for p in [*foreign, unrecorded])
    assert read_manifest(tmp_path) == {"other": ["ckpt_0000200.pt", "ckpt_0000300.pt"],
                                       "mine": ["ckpt_0000020.pt", "ckpt_0000030.pt"]}


def _small_filesystem(path: Path) -> bool:
    """Mount a 1 MiB tmpfs at ``path`` (needs root and mount permission); False where impossible."""
    path.mkdir()
    if shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def test_full_disk_keeps_previous_checkpoints(tmp_path: Path, monkeypatch) -> None:
    """ENOSPC during a checkpoint write: one-line error, earlier checkpoints intact, no temp file.

    On a real 1 MiB tmpfs where the test may mount one, else with a writer that fills the disk."""
    folder = tmp_path / "small"
    mounted = _small_filesystem(folder)
    try:
        small = {"model": {"w": torch.zeros(1000)}, "config": {}}
        first = save_checkpoint(small, checkpoint_path(folder, 1))
        before = _hashes(folder)
        if not mounted:
            real_save = torch.save

            def fill_then_fail(obj, handle, *args, **kwargs):
                real_save(obj, handle, *args, **kwargs)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(checkpoint_module.torch, "save", fill_then_fail)
        big = {"model": {"w": torch.zeros(2_000_000)}, "config": {}}  # 8 MB: more than the disk holds
        with pytest.raises(UserError) as info:
            save_checkpoint(big, checkpoint_path(folder, 2))
        message = str(info.value)
        assert "\n" not in message and "previous checkpoints are intact" in message
        assert "space" in message.lower() or "write" in message.lower()
        assert _hashes(folder) == before and list_checkpoints(folder) == [first]
        assert not list(folder.glob(".ckpt_*.tmp"))
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], capture_output=True)


def test_evaluate_refuses_to_write_over_results(train_data: Path, cifar_root: Path, tmp_path: Path, capsys,
                                                monkeypatch) -> None:
    """`evaluate --out` into a folder with results is refused before evaluating (exit 2, nothing
    changed); --overwrite replaces them, and a write that fails midway leaves the old files whole."""
    log_dir = tmp_path / "run"
    assert main(train_argv(train_data, log_dir, 10, 10, MICRO)) == 0
    out = tmp_path / "eval"
    argv = ["evaluate", "--checkpoint", str(list_checkpoints(log_dir)[-1]), "--data", str(cifar_root / "cifar_test"),
            "--snr", "10", "--limit", "8", "--no-fid", "--no-progress", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    before = _hashes(out)
    assert sorted(before) == ["results.csv", "results.json", "results.md"]
    capsys.readouterr()
    assert main([*argv, "--snr", "0"]) == 2
    line = _one_line_error(capsys)
    assert "--overwrite" in line and str(out) in line
    assert _hashes(out) == before

    real_replace = os.replace

    def fail_on_csv(src, dst, *args, **kwargs):
        if str(dst).endswith("results.csv"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", fail_on_csv)
    assert main([*argv, "--snr", "0", "--overwrite"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("diffjscc: error:")]
    assert len(errors) == 1 and "No space left" in errors[0]  # besides the FID/LPIPS notices
    after = _hashes(out)
    assert after["results.csv"] == before["results.csv"] and sorted(after) == sorted(before)  # no temp files
    assert json.loads((out / "results.json").read_text())["results"][0]["snr_db"] == 0.0  # written before the failure
    monkeypatch.setattr(os, "replace", real_replace)
    assert main([*argv, "--snr", "0", "--overwrite"]) == 0
    assert json.loads((out / "results.json").read_text())["settings"]["snr_db"] == [0.0]
