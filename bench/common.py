"""Helpers shared by the benchmarks: machine description, bf16 check, data, result files."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch

DEFAULT_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10-python.tar.gz"
DEFAULT_DATA_ROOT = Path("bench/work/cifar")  # the archive as PNG folders, shared by the benchmarks


def add_data_arguments(parser: argparse.ArgumentParser, data_root: bool = True) -> None:
    """--archive (and --data-root): where the benchmarks find CIFAR-10 (see prepare_cifar)."""
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE, help="cifar-10-python.tar.gz")
    if data_root:
        parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT,
                            help="folder with cifar_train/ and cifar_test/; extracted from --archive when missing "
                                 "(default %(default)s)")


def config_stem(config: str | Path) -> str:
    """``configs/cifar10.yaml`` and ``cifar10`` both name the result files ``..._cifar10``."""
    return Path(str(config)).stem


def cpu_model() -> str:
    """The processor's marketing name (``platform.processor()`` is often just the architecture)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """What the figures were measured on: they are only comparable on the same machine."""
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "torch": str(torch.__version__), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def load_warning() -> str | None:
    """A warning when other jobs already load the cores: several intra-op threads then wait on
    each other (measured here: a tiny step 80x slower with 2 threads at load 3 on 2 cores)."""
    if not hasattr(os, "getloadavg"):
        return None
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if torch.get_num_threads() > 1 and load >= cores / 2:
        return (f"warning: load average {load:.1f} on {cores} cores before this run and {torch.get_num_threads()} "
                f"threads: timings may be far off; --threads 1 is steadier on a shared machine")
    return None


def prepare_cifar(archive: Path, data_root: Path, limit: int | None = None) -> tuple[Path, Path]:
    """``data_root``/cifar_train and cifar_test, extracted from ``archive`` the first time
    (at most ``limit`` images per split)."""
    from diffjscc.data.cifar10 import extract_cifar10
    from diffjscc.errors import UserError

    data_root = Path(data_root)
    if not (data_root / "cifar_test").is_dir():
        if not Path(archive).is_file():
            raise UserError(f"CIFAR-10 archive not found at {archive} (give --archive or --data-root)")
        extract_cifar10(archive, data_root, limit_per_split=limit)
    for split in ("cifar_train", "cifar_test"):
        if not (data_root / split).is_dir():
            raise UserError(f"{data_root / split} is missing: --data-root needs cifar_train/ and cifar_test/")
    return data_root / "cifar_train", data_root / "cifar_test"


def write_json(path: Path, document: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    return path


def spread_subset(folder: Path, count: int, out: Path, exclude: Path | None = None) -> Path:
    """``count`` images of ``folder`` taken evenly over its sorted file names, copied into ``out``;
    with ``exclude``, none of the file names in that folder (a validation set disjoint from a test set).

    The evaluation protocol takes the first N files in name order, which in a CIFAR folder
    (``{class}_{index}.png``) are all of one class; an even spread covers every class.
    """
    import shutil

    taken = {p.name for p in Path(exclude).iterdir()} if exclude is not None else set()
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() == ".png" and p.name not in taken)
    count = min(count, len(files))
    chosen = [files[i * len(files) // count] for i in range(count)] if count else []
    marker = out / ".source"
    wanted = f"{Path(folder).resolve()} {count}" + (f" excluding {Path(exclude).resolve()}" if exclude else "")
    if marker.is_file() and marker.read_text() == wanted:
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for path in chosen:
        shutil.copyfile(path, out / path.name)
    marker.write_text(wanted)
    return out
