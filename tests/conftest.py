"""Session fixtures on real CIFAR-10 data, shared by every test module.

The archive lives beside the repository (``X/shared`` next to the clone ``X/main``) and is
never committed; tests that need it are skipped where it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ARCHIVE_NAME = "cifar-10-python.tar.gz"

# The tests' models are tiny: one thread is as fast as two for them, and it keeps the suite's
# time stable on a shared 2-core machine (oversubscribed intra-op threads slow down ~50x).
torch.set_num_threads(1)

# The suite means CPU: with --device auto (the CLI's default) a GPU would change numbers and, in
# the sharded tests, refuse a second process on a 1-GPU machine. Hide GPUs from this process and
# the processes it launches, before CUDA initialises; DIFFJSCC_TEST_GPU=1 leaves them visible.
if not os.environ.get("DIFFJSCC_TEST_GPU"):
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

LONGEST_FIRST = (
    "test_pretrained.py", "test_demo.py", "test_distributed.py", "test_realism.py", "test_bench.py",
    "test_reliability.py", "test_distributed_evaluate.py", "test_conditioning.py", "test_digital_link.py",
    "test_digital_cli.py", "test_run_directory.py", "test_cli_e2e.py", "test_evaluation_cli.py",
)
"""Test files by their measured time, longest first (``--durations=0``, 2026-12-04: 73 s down to 10 s
of a 477 s suite). The README's command hands whole files to two workers in collection order
(``--dist loadfile --no-loadscope-reorder``): longest first, the short files fill in at the end and
the two workers finish together. xdist's own order (most tests first) left the long end-to-end
files for last and one worker idle (same code: 273.6 s -> 257.6 s). A stale list costs balance
only, never a test."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept


@pytest.fixture(scope="session")
def kodak() -> Path:
    """The folder of the 24 Kodak photos (DIFFJSCC_KODAK, default ../shared/data/kodak)."""
    path = Path(os.environ.get("DIFFJSCC_KODAK", Path(__file__).resolve().parents[2] / "shared/data/kodak"))
    if not (path / "kodim23.png").is_file():
        if os.environ.get("DIFFJSCC_REQUIRE_SHARED_DATA"):
            pytest.fail(f"the Kodak photos are not in {path}")
        pytest.skip(f"the Kodak photos are not in {path}")
    return path


@pytest.fixture(scope="session")
def shared_archive() -> Path:
    """Path to the shared real CIFAR-10 archive (DIFFJSCC_SHARED_DATA: the file or its folder)."""
    override = os.environ.get("DIFFJSCC_SHARED_DATA")
    if override:
        path = Path(override)
        if path.is_dir():
            path = path / ARCHIVE_NAME
    else:
        path = Path(__file__).resolve().parents[2] / "shared/data" / ARCHIVE_NAME
    if not path.is_file():
        if os.environ.get("DIFFJSCC_REQUIRE_SHARED_DATA"):  # set by .ci/run: CI must not skip
            pytest.fail(f"shared CIFAR-10 archive not found at {path}")
        pytest.skip(f"shared CIFAR-10 archive not found at {path}")
    return path


@pytest.fixture(scope="session")
def cifar_root(shared_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with cifar_train/ and cifar_test/ (first 256 images of each split, as PNGs)."""
    from diffjscc.data import extract_cifar10

    root = tmp_path_factory.mktemp("cifar")
    extract_cifar10(shared_archive, root, limit_per_split=256)
    return root


@pytest.fixture(scope="session")
def cifar_test_split(shared_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding cifar_test/: all 10,000 CIFAR-10 test images as PNGs, written once per run.

    Only the test batch (and the class names) is taken from the archive, so the 50,000 training
    images are not written: extract_cifar10 writes the splits whose batch files it finds. The
    xdist workers of one run share the copy (the first to get the lock writes it, ~4 s).
    """
    import shutil
    import tarfile

    from filelock import FileLock

    from diffjscc.data import extract_cifar10

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # this run's folder, above each worker's own
    root, done = base / "cifar_full_test", base / "cifar_full_test.done"
    with FileLock(str(base / "cifar_full_test.lock")):
        if not done.is_file():
            shutil.rmtree(root, ignore_errors=True)  # a worker killed while writing leaves part of it
            batches = root / "cifar-10-batches-py"
            batches.mkdir(parents=True)
            wanted = {"batches.meta", "test_batch"}
            with tarfile.open(shared_archive, "r:gz") as archive:
                for member in archive:
                    name = Path(member.name).name
                    if member.isfile() and name in wanted:
                        (batches / name).write_bytes(archive.extractfile(member).read())
            assert extract_cifar10(batches, root) == {"cifar_train": 0, "cifar_test": 10_000}
            done.touch()
    return root


@pytest.fixture(scope="session")
def cifar_images(cifar_root: Path) -> np.ndarray:
    """uint8 (64, 32, 32, 3) array of the first 64 PNGs of cifar_root/cifar_test in sorted file-name order."""
    files = sorted((cifar_root / "cifar_test").glob("*.png"))[:64]
    return np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8) for p in files])
