"""Checkpoints that survive a kill and never execute code when loaded.

* Written to a temporary file in the same folder, flushed and fsynced, then atomically
  renamed (``os.replace``): a reader sees the old file or the new one, never half of one.
* Loaded with ``torch.load(weights_only=True)``: tensors and plain containers only; the
  config is stored as a plain dict. A file that needs more (a pickled callable) is refused.
* ``ckpt_{step:07d}.pt`` under ``log_dir``; the newest ``keep`` are kept.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from diffjscc.errors import UserError

FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt_(\d{7,})\.pt$")


def checkpoint_path(log_dir: str | Path, step: int) -> Path:
    return Path(log_dir) / f"ckpt_{step:07d}.pt"


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Atomically write ``payload`` (plain data and tensors) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save({**payload, "format_version": FORMAT_VERSION}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; UserError (one line) for a missing, corrupt or unsafe file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if unsafe or "weights_only" in text.lower() or "weights only" in text.lower():
            what = f"it needs {unsafe.group(1)}" if unsafe else "it needs more than tensors and plain data"
            raise UserError(f"checkpoint {path} was refused, {what} (nothing was executed); "
                            f"only load checkpoints written by diffjscc") from None
        raise UserError(f"checkpoint {path} is corrupt or truncated: {_short(text)}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise UserError(f"checkpoint {path} is corrupt or truncated: {_short(str(err))}") from None
    if not isinstance(payload, dict) or "config" not in payload or "model" not in payload:
        raise UserError(f"checkpoint {path} is not a diffjscc checkpoint (no model/config)")
    return payload


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text[:200] + ("…" if len(text) > 200 else "")


def list_checkpoints(log_dir: str | Path) -> list[Path]:
    """Checkpoints in ``log_dir``, oldest step first."""
    folder = Path(log_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_valid_checkpoint(log_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads; a corrupt one is skipped with a warning."""
    for path in reversed(list_checkpoints(log_dir)):
        try:
            return path, load_checkpoint(path)
        except UserError as err:
            warnings.warn(f"skipping unreadable checkpoint: {err}", stacklevel=2)
    return None


def prune_checkpoints(log_dir: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints, and temporary files that a run killed
    mid-write left behind (called right after a completed write, when none is in progress)."""
    for path in list_checkpoints(log_dir)[:-keep]:
        path.unlink(missing_ok=True)
    for stale in Path(log_dir).glob(".ckpt_*.tmp"):
        stale.unlink(missing_ok=True)
