"""Checkpoints that survive a kill and never execute code when loaded.

* Written to a temporary file in the same folder, flushed and fsynced, then atomically
  renamed (``os.replace``): a reader sees the old file or the new one, never half of one.
* Loaded with ``torch.load(weights_only=True)``: tensors and plain containers only; the
  config is stored as a plain dict. A file that needs more (a pickled callable) is refused.
* ``ckpt_{step:07d}.pt`` under ``log_dir``; the newest ``keep`` of the run that wrote them are
  kept (``checkpoints.json`` says which run wrote which file; see :mod:`.rundir`).
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from diffjscc.errors import UserError
from diffjscc.runtime.atomic import temp_file_beside
from diffjscc.runtime.rundir import read_manifest, write_manifest

FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt_(\d{7,})\.pt$")


def checkpoint_path(log_dir: str | Path, step: int) -> Path:
    return Path(log_dir) / f"ckpt_{step:07d}.pt"


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Atomically write ``payload`` (plain data and tensors) to ``path``.

    A failed write (a full disk, ``ENOSPC``) removes its temporary file, leaves every existing
    checkpoint as it was, and is a one-line UserError.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_file_beside(path)  # the umask's mode, not mkstemp's 0600
    except OSError as err:
        raise UserError(f"cannot write checkpoint {path}: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save({**payload, "format_version": FORMAT_VERSION}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as a RuntimeError
        Path(tmp).unlink(missing_ok=True)
        reason = err.strerror if isinstance(err, OSError) and err.strerror else _short(str(err))
        raise UserError(f"cannot write checkpoint {path}: {reason}; the previous checkpoints are intact") from None
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
    payload = load_weights_file(path, map_location)
    if "config" not in payload or "model" not in payload:
        raise UserError(f"checkpoint {path} is not a diffjscc checkpoint (no model/config)")
    return payload


def load_weights_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Any dict diffjscc wrote with ``torch.save`` (checkpoints, classifier weights), read with
    ``weights_only=True``; UserError (one line) for a missing, corrupt or unsafe file."""
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
    if not isinstance(payload, dict):
        raise UserError(f"checkpoint {path} is not a diffjscc checkpoint (not a dict)")
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


def record_checkpoint(log_dir: str | Path, run_id: str, path: str | Path) -> None:
    """Note in ``checkpoints.json`` that run ``run_id`` wrote ``path`` (what pruning may delete)."""
    runs = read_manifest(log_dir)
    names = runs.setdefault(run_id, [])
    if Path(path).name not in names:
        names.append(Path(path).name)
    write_manifest(log_dir, runs)


def prune_checkpoints(log_dir: str | Path, keep: int, run_id: str) -> None:
    """Delete all but the newest ``keep`` checkpoints that run ``run_id`` wrote (never another
    run's file), and temporary files a run killed mid-write left behind (called right after a
    completed write by the run that holds the folder's lock, when none is in progress)."""
    runs = read_manifest(log_dir)
    mine = set(runs.get(run_id, []))
    written = [p for p in list_checkpoints(log_dir) if p.name in mine]
    for path in written[:-keep]:
        path.unlink(missing_ok=True)
    runs[run_id] = [name for name in runs.get(run_id, []) if (Path(log_dir) / name).exists()]
    write_manifest(log_dir, runs)
    for stale in Path(log_dir).glob(".ckpt_*.tmp"):
        stale.unlink(missing_ok=True)
