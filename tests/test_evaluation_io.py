"""What evaluate, sample and transmit read and write: the files a user made are never written
over, skipped inputs are never silent, subsets are spread over the folder, and result files are
readable by whoever the umask lets read them."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from diffjscc.evaluation.results import write_results
from diffjscc.runtime.checkpoint import save_checkpoint
from diffjscc.runtime.rundir import write_text_atomic


@pytest.fixture
def umask_027():
    """Run under umask 027 (group may read, others nothing), restored afterwards."""
    previous = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_written_files_honour_the_umask(umask_027, tmp_path: Path) -> None:
    """Atomic writes (temporary file + rename) give the mode a plain open gives: 0o666 & ~umask,
    not mkstemp's 0o600; a data split folder gets mkdir's 0o777 & ~umask, not mkdtemp's 0o700."""
    from diffjscc.data.cifar10 import _write_split
    from diffjscc.evaluation.fid import ReferenceStats

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert _mode(plain) == 0o640  # what the umask gives a plain open: the reference
    row = {"system": "Deep JSCC", "model": "m", "snr_db": 0.0, "k_over_n": 0.5, "psnr": 20.0}
    document = {"results": [row], "metrics": {"fid": {}, "lpips": None}, "notes": []}
    written = write_results(document, tmp_path / "res", tmp_path / "extra.json")
    write_text_atomic(tmp_path / "note.txt", "x")
    save_checkpoint({"model": {}, "config": {}}, tmp_path / "ckpt_0000001.pt")
    ReferenceStats(torch.zeros(2), torch.zeros(2, 2), 1).save(tmp_path / ".fid_stats_x.npz", "key")
    for path in [*written, tmp_path / "note.txt", tmp_path / "ckpt_0000001.pt", tmp_path / ".fid_stats_x.npz"]:
        assert _mode(path) == 0o640, (path, oct(_mode(path)))
    split = tmp_path / "cifar_test"
    assert _write_split(np.zeros((2, 4, 4, 3), np.uint8), [0, 1], ["a", "b"], split) == 2
    assert _mode(split) == 0o750, oct(_mode(split))
    assert {_mode(p) for p in split.iterdir()} == {0o640}
