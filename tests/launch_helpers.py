"""Running the CLI in tests: `train` argument lists, and launching several processes
(a free port, a clean environment, torchrun/mpiexec runs)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

LAUNCH_TIMEOUT_S = 240  # per launch, generous for 2 busy cores; a launch takes ~20 s there
TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def train_argv(data: Path, log_dir: Path, total_steps: int, save_interval: int, overrides: list[str],
               *flags: str) -> list[str]:
    """`diffjscc train` on configs/tiny.yaml with data, log_dir, step counts and ``--set`` overrides."""
    argv = ["train", str(TINY), "--no-progress", *flags,
            "--set", f"data_dir={data}", "--set", f"log_dir={log_dir}",
            "--set", f"total_steps={total_steps}", "--set", f"save_interval={save_interval}"]
    for item in overrides:
        argv += ["--set", item]
    return argv


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_env(**extra: str) -> dict[str, str]:
    """This environment without any launcher's variables, one thread per process."""
    prefixes = ("OMPI_", "PMI_", "PMIX_", "SLURM_", "MPI_LOCAL")
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
           and not k.startswith(prefixes)}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def run_launch(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert done.returncode == 0, f"{command[:6]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def find_mpiexec() -> str:
    found = Path(sys.executable).parent / "mpiexec"  # the mpich wheel's, in the venv
    path = str(found) if found.exists() else shutil.which("mpiexec")
    if path is None:
        message = "no mpiexec (pip install mpich, or the test extra, provides one)"
        if os.environ.get("DIFFJSCC_REQUIRE_SHARED_DATA"):  # CI installs the test extra: must run
            pytest.fail(message)
        pytest.skip(message)
    return path
