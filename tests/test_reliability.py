"""Reliability: a killed run loses nothing, untrusted files execute nothing, bad input gets one
clear line and exit status 2, a non-finite loss never reaches the weights, same seed → same run.

Process-level tests launch ``python -m diffjscc train`` as a subprocess on real CIFAR-10 images
and kill it (SIGKILL/SIGTERM) at chosen moments.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffjscc.cli import main
from diffjscc.config import load_config
from diffjscc.errors import UserError
from diffjscc.training import trainer as trainer_module
from diffjscc.runtime.checkpoint import list_checkpoints, load_checkpoint
from launch_helpers import train_argv

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# The tiny config at batch 4: a checkpoint (model, EMA, AdamW state) is ~20 MB, so writing one
# takes long enough to be caught in the act.
TINY_SMALL_BATCH = ["batch_size=4", "log_interval=1", "sample_steps=1", "device=cpu", "sample_interval=0"]
MICRO = ["num_channels=16", "channel_mult=[1,2]", "attention_resolutions=[16]", "num_res_blocks=1",
         "jscc_num_filters=16", "diffusion_steps=100", "sample_steps=1", "batch_size=4",
         "log_interval=1", "device=cpu"]
PROCESS_TIMEOUT = 240


def _train_argv(data: Path, log_dir: Path, total: int, save_interval: int, extra: list[str]) -> list[str]:
    return train_argv(data, log_dir, total, save_interval, extra, "--resume", "auto")


def _launch(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "diffjscc", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def _wait_until(proc: subprocess.Popen, condition, what: str) -> None:
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before {what}: {proc.stdout.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.0005)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _logged_steps(log_dir: Path) -> list[int]:
    path = log_dir / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def _newest_step(log_dir: Path) -> int:
    found = list_checkpoints(log_dir)
    return load_checkpoint(found[-1])["step"] if found else 0


def test_sigkill_at_three_moments_then_resume_reaches_the_end(cifar_root: Path, tmp_path: Path) -> None:
    """Killed (1) before its first checkpoint, (2) in the middle of writing one, (3) between two:
    each relaunch with --resume auto continues, and the last one reaches total_steps."""
    data, log_dir, total = cifar_root / "cifar_train", tmp_path / "run", 14
    argv = _train_argv(data, log_dir, total, save_interval=1, extra=TINY_SMALL_BATCH)

    # (1) during start-up / the first step: nothing saved yet
    proc = _launch(argv)
    _wait_until(proc, lambda: (log_dir / "config.yaml").exists(), "the run started")
    _kill(proc)
    assert list_checkpoints(log_dir) == []

    # (2) while a checkpoint is being written (its temporary file exists)
    proc = _launch(argv)
    _wait_until(proc, lambda: any(log_dir.glob(".ckpt_*.tmp")) and _newest_step(log_dir) >= 2,
                "a checkpoint write in progress")
    _kill(proc)
    resumed_from = _newest_step(log_dir)  # every complete file loads; the half-written one is ignored
    assert resumed_from >= 2

    # (3) between checkpoints, after progress past the resume point
    proc = _launch(argv)
    _wait_until(proc, lambda: _newest_step(log_dir) >= resumed_from + 2, "progress after resuming")
    _kill(proc)

    proc = _launch(argv)
    output, _ = proc.communicate(timeout=PROCESS_TIMEOUT)
    assert proc.returncode == 0, output[-2000:]
    assert "resumed from" in output
    final = load_checkpoint(list_checkpoints(log_dir)[-1])
    assert final["step"] == total
    for path in list_checkpoints(log_dir):
        load_checkpoint(path)  # every kept checkpoint is loadable
    assert not list(log_dir.glob(".ckpt_*.tmp"))  # leftovers of the killed write were cleaned
    steps = _logged_steps(log_dir)
    assert steps[-1] == total and set(range(1, total + 1)) <= set(steps)


def test_sigterm_saves_a_checkpoint_before_exiting(cifar_root: Path, tmp_path: Path) -> None:
    log_dir = tmp_path / "run"
    argv = _train_argv(cifar_root / "cifar_train", log_dir, 10_000, save_interval=10_000, extra=MICRO)
    proc = _launch(argv)
    _wait_until(proc, lambda: len(_logged_steps(log_dir)) >= 2, "two logged steps")
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, output[-2000:]
    assert "received signal" in output
    step = _newest_step(log_dir)
    assert step >= 2 and step == _logged_steps(log_dir)[-1]


def test_truncated_newest_checkpoint_is_skipped_on_resume(cifar_root: Path, tmp_path: Path) -> None:
    log_dir = tmp_path / "run"
    argv = _train_argv(cifar_root / "cifar_train", log_dir, 2, save_interval=1, extra=MICRO)
    assert main(argv) == 0
    newest = list_checkpoints(log_dir)[-1]
    newest.write_bytes(newest.read_bytes()[:1000])  # as a crash on a non-atomic filesystem would
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint"):
        assert main(_train_argv(cifar_root / "cifar_train", log_dir, 3, save_interval=1, extra=MICRO)) == 0
    assert _newest_step(log_dir) == 3


# ---- untrusted files ----------------------------------------------------------------------------
class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_a_pickled_callable_is_refused(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "step": 1, "x": _Payload(marker)}, evil)
    with pytest.raises(UserError, match="refused"):
        load_checkpoint(evil)
    assert main(["evaluate", "--checkpoint", str(evil), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused" in err[0] and "nothing was executed" in err[0]
    assert not marker.exists()


# ---- numerical guard ----------------------------------------------------------------------------
def _micro_trainer(data: Path, log_dir: Path, total: int, save_interval: int = 100, resume: str | None = None):
    cfg = load_config(CONFIGS / "tiny.yaml", [f"data_dir={data}", f"log_dir={log_dir}", f"total_steps={total}",
                                              f"save_interval={save_interval}", "mode=joint", *MICRO])
    return trainer_module.Trainer(cfg, progress=False, resume=resume)


def _patch_loss(monkeypatch, poison) -> list[int]:
    calls: list[int] = []
    original = trainer_module.training_loss

    def patched(system, *args, **kwargs):
        terms = original(system, *args, **kwargs)
        calls.append(len(calls))
        return poison(system, terms, len(calls) - 1)

    monkeypatch.setattr(trainer_module, "training_loss", patched)
    return calls


def test_a_nan_loss_is_skipped_and_never_reaches_weights(cifar_root: Path, tmp_path: Path, monkeypatch) -> None:
    def nan_on_second_call(system, terms, call):
        if call == 1:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    _patch_loss(monkeypatch, nan_on_second_call)
    trainer = _micro_trainer(cifar_root / "cifar_train", tmp_path / "run", 3)
    trainer.train()
    assert trainer.step == 3
    for module in (trainer.system, trainer.ema.module):
        assert all(torch.isfinite(t).all() for t in module.state_dict().values() if t.is_floating_point())
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["skipped_nonfinite"] == 1


def test_a_nan_gradient_with_finite_loss_is_skipped(cifar_root: Path, tmp_path: Path, monkeypatch) -> None:
    def nan_gradient(system, terms, call):
        first = next(system.unet.parameters())
        # sqrt at 0 has an infinite derivative: loss unchanged, gradient NaN.
        terms["loss"] = terms["loss"] + 0.0 * torch.sqrt(first - first.detach()).sum()
        return terms

    _patch_loss(monkeypatch, nan_gradient)
    trainer = _micro_trainer(cifar_root / "cifar_train", tmp_path / "run", 12)
    before = {k: v.clone() for k, v in trainer.system.state_dict().items()}
    with pytest.raises(UserError, match="not finite for 10 steps in a row"):
        trainer.train()
    after = trainer.system.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing was applied


def _poison_steps(monkeypatch, poisoned) -> None:
    """A NaN loss at every training step in ``poisoned`` (a set, or a predicate on the step),
    in a fresh run and in a resumed one alike: the step is read from the step's generator."""
    current = {"step": -1}
    original = trainer_module.step_generator

    def recording(seed, step, device):
        current["step"] = step
        return original(seed, step, device)

    def nan_at_poisoned_steps(system, terms, call):
        hit = poisoned(current["step"]) if callable(poisoned) else current["step"] in poisoned
        if hit:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(trainer_module, "step_generator", recording)
    _patch_loss(monkeypatch, nan_at_poisoned_steps)


def test_a_resumed_run_with_skipped_steps_equals_an_uninterrupted_one(cifar_root: Path, tmp_path: Path,
                                                                     monkeypatch) -> None:
    """A skipped step is a step: it uses up its batch and its draws, so the batches and draws
    of later steps, and a resume from a checkpoint after the skip, are those of a run without
    the kill. Skips at step 1 (before the step-3 checkpoint) and 4 (after the resume)."""
    _poison_steps(monkeypatch, {1, 4})
    data, whole, resumed = cifar_root / "cifar_train", tmp_path / "whole", tmp_path / "resumed"
    _micro_trainer(data, whole, 6, save_interval=3).train()
    shutil.copytree(whole, resumed)
    (resumed / "ckpt_0000006.pt").unlink()  # as if killed after the step-3 checkpoint
    trainer = _micro_trainer(data, resumed, 6, save_interval=3, resume="auto")
    assert trainer.step == 3
    trainer.train()
    ours, theirs = load_checkpoint(resumed / "ckpt_0000006.pt"), load_checkpoint(whole / "ckpt_0000006.pt")
    assert ours["step"] == theirs["step"] == 6 and ours["skipped_nonfinite"] == theirs["skipped_nonfinite"] == 2
    for part in ("model", "ema"):
        for name, tensor in theirs[part].items():
            assert torch.equal(ours[part][name], tensor), f"{part}.{name}"
    assert _logged_steps(whole) == [1, 2, 3, 4, 5, 6]
    assert json.loads((whole / "metrics.jsonl").read_text().splitlines()[-1])["skipped_nonfinite"] == 2


def test_skipping_more_than_one_percent_of_the_steps_stops_the_run(cifar_root: Path, tmp_path: Path,
                                                                   monkeypatch) -> None:
    """Every other step skipped is never 10 in a row, but is far more than 1 % of the steps:
    the 11th skip (more than 1 % of the first 1000 steps) stops the run with one line."""
    _poison_steps(monkeypatch, lambda step: step % 2 == 1)
    trainer = _micro_trainer(cifar_root / "cifar_train", tmp_path / "run", 40)
    with pytest.raises(UserError, match=r"11 of the 22 steps") as raised:
        trainer.train()
    assert "\n" not in str(raised.value) and "1 %" in str(raised.value)
    assert trainer.step == 22


# ---- bad input: one line, exit 2 ---------------------------------------------------------------
def _folder(tmp_path: Path, source: Path, count: int = 8) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted(source.glob("*.png"))[:count]:
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def _one_line_exit_2(argv: list[str], capsys, needle: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("diffjscc: error:") and needle in err[0], err[0]


def test_corrupt_image_is_skipped_with_a_warning_or_refused_with_strict(cifar_root: Path, tmp_path: Path,
                                                                        capsys) -> None:
    folder = _folder(tmp_path, cifar_root / "cifar_train")
    (folder / "cat_99999.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    argv = _train_argv(folder, tmp_path / "run", 1, save_interval=1, extra=MICRO)
    with pytest.warns(UserWarning, match="skipp"):
        assert main(argv) == 0
    _one_line_exit_2(argv + ["--strict"], capsys, "cat_99999.png")


def test_wrong_size_image_is_one_line(cifar_root: Path, tmp_path: Path, capsys) -> None:
    folder = _folder(tmp_path, cifar_root / "cifar_train")
    Image.new("RGB", (40, 30)).save(folder / "dog_99999.png")
    _one_line_exit_2(_train_argv(folder, tmp_path / "run", 1, 1, MICRO), capsys, "dog_99999.png")


def test_grayscale_image_is_converted_not_refused(cifar_root: Path, tmp_path: Path) -> None:
    folder = _folder(tmp_path, cifar_root / "cifar_train")
    Image.new("L", (32, 32), 128).save(folder / "dog_99998.png")
    assert main(_train_argv(folder, tmp_path / "run", 1, 1, MICRO)) == 0


@pytest.mark.parametrize("overrides, needle", [
    (["device=cuda"], "no CUDA GPU"),
    (["lr=nan"], "'lr'"),
    (["batchsize=4"], "did you mean 'batch_size'"),
    (["batch_size=1000"], "fewer than batch_size"),
], ids=["missing-gpu", "nan-lr", "typo", "batch-larger-than-data"])
def test_bad_training_input_is_one_line(overrides, needle, cifar_root: Path, tmp_path: Path, capsys) -> None:
    if overrides == ["device=cuda"] and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    folder = _folder(tmp_path, cifar_root / "cifar_train")
    _one_line_exit_2(_train_argv(folder, tmp_path / "run", 1, 1, MICRO + overrides), capsys, needle)


def test_truncated_checkpoint_and_missing_resume_are_one_line(cifar_root: Path, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"PK\x03\x04 not really a checkpoint")
    _one_line_exit_2(["evaluate", "--checkpoint", str(broken), "--data", str(cifar_root / "cifar_test")],
                     capsys, "corrupt or truncated")
    folder = _folder(tmp_path, cifar_root / "cifar_train")
    argv = _train_argv(folder, tmp_path / "run", 1, 1, MICRO)
    argv[argv.index("auto")] = str(tmp_path / "nope.pt")
    _one_line_exit_2(argv, capsys, "checkpoint not found")


def test_unparseable_snr_is_one_line(tmp_path: Path, capsys) -> None:
    assert main(["evaluate", "--checkpoint", "x.pt", "--data", str(tmp_path), "--snr", "ten"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "snr" in err[0].lower()


# ---- progress in a log file ----------------------------------------------------------------------
def test_a_training_log_file_gets_plain_progress_lines_not_bar_frames(cifar_root: Path, tmp_path: Path) -> None:
    """stdout and stderr to a file, as under SLURM or nohup: no tqdm \\r frames, but plain lines
    with the step, the loss, img/s and the ETA."""
    micro_jscc = ["mode=jscc", "jscc_num_filters=16", "batch_size=4", "log_interval=2", "device=cpu"]
    argv = [a for a in _train_argv(cifar_root / "cifar_train", tmp_path / "run", 6, 100, micro_jscc)
            if a != "--no-progress"]
    log = tmp_path / "train.log"
    with log.open("w") as handle:
        done = subprocess.run([sys.executable, "-m", "diffjscc", *argv], stdout=handle, stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=PROCESS_TIMEOUT)
    raw = log.read_bytes()  # bytes: read_text() would turn each \r into \n
    text = raw.decode()
    assert done.returncode == 0, text[-2000:]
    assert b"\r" not in raw
    lines = [line for line in text.splitlines() if line.startswith("train[jscc]: step ")]
    assert lines[0].startswith("train[jscc]: step 1/6 (17 %)") and len(lines) <= 3, lines
    assert lines[-1].startswith("train[jscc]: step 6/6 (100 %) loss=") and "img_s=" in lines[-1], lines
    assert lines[-1].endswith("ETA 0:00:00")


_SAMPLER_WITH_PROGRESS = """
import torch
from diffjscc.diffusion.gaussian import GaussianDiffusion
from diffjscc.diffusion.respace import parse_respacing, respace
from diffjscc.diffusion.samplers import ddim_invert, ddim_sample, ddpm_sample, dpm_solver_2m_sample
process = respace(GaussianDiffusion.from_schedule("cosine", 1000), parse_respacing("ddim5", 1000))
zero = lambda x, t: torch.zeros_like(x)
x = torch.randn(1, 3, 8, 8)
for run in (ddim_sample, ddpm_sample, dpm_solver_2m_sample, ddim_invert):
    run(process, zero, x, progress=True)
"""


def test_the_samplers_progress_in_a_log_file_is_plain_lines(tmp_path: Path) -> None:
    """The samplers' own progress (``progress=True``) goes through the one helper of
    diffjscc.runtime.progress: with stderr to a file, plain lines, never tqdm's \\r frames."""
    log = tmp_path / "sample.log"
    with log.open("w") as handle:
        done = subprocess.run([sys.executable, "-c", _SAMPLER_WITH_PROGRESS], stdout=handle, stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=PROCESS_TIMEOUT)
    raw = log.read_bytes()  # bytes: read_text() would turn each \r into \n
    text = raw.decode()
    assert done.returncode == 0, text[-2000:]
    assert b"\r" not in raw
    for name in ("DDIM", "DDPM", "DPM-Solver++(2M)", "DDIM inversion"):
        assert any(line.startswith(f"{name}: step 5/5 (100 %)") for line in text.splitlines()), text


def test_sample_and_transmit_show_the_samplers_steps_unless_no_progress(tmp_path: Path, capsys) -> None:
    """``sample`` and ``transmit`` with a diffusion receiver show its sampler's steps (plain lines
    where stderr is not a terminal, as here); ``--no-progress`` shows none."""
    demo = Path(__file__).resolve().parents[1] / "diffjscc" / "assets" / "cifar10_demo"
    source = sorted(demo.glob("*.png"))[0]
    steps_line = "DPM-Solver++(2M): step 8/8 (100 %)"
    base = ["--model", "diffusion_512", "--snr", "10", "--device", "cpu"]
    for extra, shown in (([], True), (["--no-progress"], False)):
        out = tmp_path / f"out{len(extra)}"
        assert main(["transmit", *base, *extra, str(source), str(out / "received.png")]) == 0
        assert (steps_line in capsys.readouterr().err) == shown
        assert main(["sample", *base, *extra, "--data", str(demo), "--limit", "2", "--out", str(out / "grid")]) == 0
        assert (steps_line in capsys.readouterr().err) == shown


def test_progress_lines_are_periodic(monkeypatch) -> None:
    from diffjscc.runtime import progress

    clock = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    lines = progress.ProgressLines(100, "evaluate", initial=20, unit="img", interval_s=30, stream=out)
    for _ in range(8):  # 10 images every 10 s: a line at 30, 60 and the first
        clock[0] += 10
        lines.set_postfix(batch=lines.n // 10)
        lines.update(10)
    lines.close()
    assert out.getvalue().splitlines() == [
        "evaluate: img 30/100 (30 %) batch=2 ETA 0:01:10",
        "evaluate: img 60/100 (60 %) batch=5 ETA 0:00:40",
        "evaluate: img 90/100 (90 %) batch=8 ETA 0:00:10",
        "evaluate: img 100/100 (100 %) batch=9 ETA 0:00:00"]
    monkeypatch.setattr(progress, "is_terminal", lambda stream=None: True)
    assert not isinstance(progress.progress_bar(5, "x"), progress.ProgressLines)  # a terminal: tqdm


# ---- determinism ------------------------------------------------------------------------------
def test_same_seed_gives_bit_identical_losses(cifar_root: Path, tmp_path: Path) -> None:
    losses = []
    for name in ("a", "b"):
        assert main(_train_argv(cifar_root / "cifar_train", tmp_path / name, 4, 100, MICRO + ["dropout=0.1"])) == 0
        losses.append([json.loads(line)["loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()])
    assert len(losses[0]) == 4 and losses[0] == losses[1]
    versions = load_checkpoint(list_checkpoints(tmp_path / "a")[-1])["versions"]
    assert versions["torch"] == str(torch.__version__) and "diffjscc" in versions


def test_checkpoints_carry_the_global_rng_states_dropout_draws_from(monkeypatch) -> None:
    """The CPU generator always; on CUDA also the GPU's (dropout on a GPU draws from it, so a
    resume without it would restart its sequence). CUDA is stood in for by recording calls."""
    from diffjscc.runtime.seeding import global_rng_states, restore_global_rng_states

    cpu = global_rng_states(torch.device("cpu"))
    assert set(cpu) == {"rng_state"} and torch.equal(cpu["rng_state"], torch.get_rng_state())
    gpu_state, restored = torch.tensor([7, 8, 9], dtype=torch.uint8), []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: gpu_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    device = torch.device("cuda", 1)
    saved = global_rng_states(device)
    assert set(saved) == {"rng_state", "cuda_rng_state"} and torch.equal(saved["cuda_rng_state"], gpu_state)
    torch.rand(3)  # move the CPU generator on; restoring puts it back
    restore_global_rng_states(saved, device)
    assert torch.equal(torch.get_rng_state(), cpu["rng_state"]) and restored == [(gpu_state, device)]
    restore_global_rng_states({}, device)  # a checkpoint from before: nothing to restore
    assert len(restored) == 1
