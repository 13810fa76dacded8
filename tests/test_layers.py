"""The package's layers import only downward, with no cycles: the import-linter contracts in
pyproject.toml (``[tool.importlinter]``), checked on the package's real import graph."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports() -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports (import-linter, a test dependency) is not installed")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # bench/ is a root package, importable from the checkout
    return subprocess.run([exe, "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_layers_point_down_and_no_cycles() -> None:
    result = _lint_imports()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_the_contract_catches_an_upward_import(tmp_path: Path) -> None:
    """The check can fail: the same contract on a copy whose channel imports the trainer."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "diffjscc", copy / "diffjscc", ignore=shutil.ignore_patterns("assets", "__pycache__"))
    shutil.copytree(ROOT / "bench", copy / "bench", ignore=shutil.ignore_patterns("results", "work", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    channel = copy / "diffjscc" / "channel.py"
    channel.write_text(channel.read_text() + "\nfrom diffjscc.training import trainer  # noqa: E402,F401\n")
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    result = subprocess.run([exe, "--no-cache"], cwd=copy, env={**os.environ, "PYTHONPATH": str(copy)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "diffjscc.channel -> diffjscc.training" in result.stdout
