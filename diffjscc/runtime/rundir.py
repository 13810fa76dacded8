"""A run directory belongs to one run at a time.

* **Lock.** A run holds an exclusive OS lock (``flock``) on its ``log_dir`` for its whole life
  (its PID in ``log_dir/.diffjscc.lock``); the kernel releases it when the process ends in any
  way, a SIGKILL included, so a lock is never stale. A second run into a locked folder stops before it writes anything, with
  one line naming the folder and the holder's PID.
* **File systems without flock** (Lustre, NFS mounted without it: ``flock`` fails with ENOLCK,
  ENOSYS, EOPNOTSUPP, or EBADF where NFS emulates it by a write lock a read-only descriptor cannot
  take) get a lock file instead, created exclusively (``O_EXCL``) with the holder's host, PID and
  start time, and a one-line notice. Released by removing it; one a killed run left behind is
  stale when it names this host and a PID that is gone, and is taken over.
* **Fresh runs never write over another run.** Without ``--resume``, a folder that holds a run's
  files (checkpoints, logs, config, grids) is refused; ``--overwrite`` moves those files into a
  dated subfolder ``previous_<UTC time>/`` — nothing is deleted.
* **Run id.** Every run has an id, kept in its checkpoints and in ``checkpoints.json`` (which
  checkpoint files each run wrote); pruning deletes only files the pruning run wrote.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import uuid
from pathlib import Path

from diffjscc.errors import UserError
from diffjscc.runtime.atomic import temp_file_beside

__all__ = ["FALLBACK_LOCK_NAME", "LOCK_NAME", "MANIFEST_NAME", "RESUMES_NAME", "RunLock", "new_run_id",
           "prepare_fresh_run", "read_manifest", "run_files", "write_manifest", "write_text_atomic"]

LOCK_NAME = ".diffjscc.lock"
FALLBACK_LOCK_NAME = ".diffjscc.lock.exclusive"
NO_FLOCK_ERRNOS = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EBADF})
"""What ``flock`` on a file system without it fails with (not a lock held by another process)."""
MANIFEST_NAME = "checkpoints.json"
RESUMES_NAME = "resumes.yaml"
RUN_FILE_PATTERNS = ("ckpt_*.pt", ".ckpt_*.tmp", "metrics.jsonl", "metrics.csv", "config.yaml", RESUMES_NAME,
                     "samples_*.png", "tensorboard", MANIFEST_NAME)
"""What a training run writes into its log_dir: a folder holding any of these holds a run."""


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


class RunLock:
    """Exclusive lock on a run directory, held until :meth:`release` or the process ends.

    The lock is a ``flock`` on the directory itself, so taking it (and failing to) writes
    nothing; the holder's PID goes into ``.diffjscc.lock`` only once the run is sure to start
    (:meth:`mark_holder`), so that a refused run leaves the folder exactly as it was. Where the
    file system has no ``flock``, the lock is the file ``.diffjscc.lock.exclusive`` (see the
    module docstring).
    """

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self.pid_file = self.log_dir / LOCK_NAME
        self.lock_file = self.log_dir / FALLBACK_LOCK_NAME
        self._fd: int | None = None
        self._lock_text: str | None = None  # what this process wrote into lock_file, while it holds it

    def acquire(self) -> "RunLock":
        """Take the lock or raise a one-line UserError naming the folder and the holder's PID."""
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.log_dir, os.O_RDONLY)
        except OSError as err:
            raise UserError(f"cannot use log_dir {self.log_dir}: {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in NO_FLOCK_ERRNOS:
                self._create_lock_file(errno.errorcode.get(err.errno, str(err.errno)))
                return self
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise UserError(f"cannot lock log_dir {self.log_dir}: {err.strerror}") from None
            try:
                holder = self.pid_file.read_text().strip() or "unknown"
            except OSError:
                holder = "unknown"
            raise UserError(f"log_dir {self.log_dir} is in use by another run (PID {holder}); wait for it to "
                            f"end or choose another log_dir") from None
        self._fd = fd
        return self

    def _create_lock_file(self, reason: str) -> None:
        """The lock without flock: create ``lock_file`` exclusively, taking over a stale one once."""
        started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        text = f"host={socket.gethostname()} pid={os.getpid()} started={started}\n"
        took_over = ""
        while True:  # at most twice: a stale lock file is taken over once
            try:
                fd = os.open(self.lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                seen = _read_or_empty(self.lock_file)
                holder = dict(item.split("=", 1) for item in seen.split() if "=" in item)
                if not took_over and _is_stale(holder) and _remove_if_unchanged(self.lock_file, seen):
                    took_over = f", taking over the stale lock of ended PID {holder['pid']}"
                    continue
                raise UserError(f"log_dir {self.log_dir} is in use by another run (PID {holder.get('pid', 'unknown')} "
                                f"on host {holder.get('host', 'unknown')} since {holder.get('started', 'unknown')}, "
                                f"from the lock file {self.lock_file}); wait for it to end, or delete that file "
                                f"if the run has ended (killed on another host)") from None
            except OSError as err:
                raise UserError(f"cannot create the lock file {self.lock_file}: {err.strerror}") from None
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            self._lock_text = text
            print(f"diffjscc: note: the file system of {self.log_dir} does not support flock ({reason}); "
                  f"locking it by the file {self.lock_file.name} instead{took_over}", file=sys.stderr, flush=True)
            return

    def mark_holder(self) -> None:
        """Record this process as the holder (what a refused second run names)."""
        tmp = self.pid_file.with_name(f"{LOCK_NAME}.tmp")
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, self.pid_file)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
        if self._lock_text is not None:
            if _read_or_empty(self.lock_file) == self._lock_text:  # ours still: never another run's
                self.lock_file.unlink(missing_ok=True)
            self._lock_text = None

    def __del__(self) -> None:  # a Trainer dropped without train() gives the folder back
        self.release()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *_exc) -> None:
        self.release()


def _read_or_empty(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _is_stale(holder: dict[str, str]) -> bool:
    """A lock file is stale when it names this host and a PID that no longer runs (another
    host's PIDs cannot be checked from here)."""
    if holder.get("host") != socket.gethostname() or not holder.get("pid", "").isdigit():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: it runs, as another user
        return False
    return False


def _remove_if_unchanged(path: Path, seen: str) -> bool:
    """Remove the stale lock file ``path`` if it still holds ``seen``. Moved aside first, so that
    of two runs taking it over at once only one removes it, and a fresh lock another run created
    in between is put back rather than deleted."""
    aside = path.with_name(f"{path.name}.stale.{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return True  # another run removed it first: try to create ours
    except OSError:
        return False
    if _read_or_empty(aside) == seen:
        aside.unlink(missing_ok=True)
        return True
    try:
        os.link(aside, path)  # a live lock: put it back (unless yet another run created one)
    except OSError:
        pass
    aside.unlink(missing_ok=True)
    return False


def run_files(log_dir: str | Path) -> list[Path]:
    """The files and folders of a run in ``log_dir`` (sorted; empty for a new or empty folder)."""
    folder = Path(log_dir)
    if not folder.is_dir():
        return []
    return sorted({p for pattern in RUN_FILE_PATTERNS for p in folder.glob(pattern)})


def prepare_fresh_run(log_dir: str | Path, overwrite: bool) -> Path | None:
    """Make ``log_dir`` ready for a new run (the caller holds its lock).

    A folder with another run's files is refused, or with ``overwrite`` those files are moved
    into ``previous_<UTC time>/`` inside it; returns that folder (None when nothing was moved).
    """
    found = run_files(log_dir)
    if not found:
        return None
    if not overwrite:
        raise UserError(f"log_dir {log_dir} holds another run ({len(found)} files: checkpoints, logs); continue it "
                        f"with --resume auto, choose another log_dir, or pass --overwrite to move its files into "
                        f"a dated subfolder")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    aside = Path(log_dir) / f"previous_{stamp}"
    aside.mkdir()
    for path in found:
        path.rename(aside / path.name)
    return aside


def read_manifest(log_dir: str | Path) -> dict[str, list[str]]:
    """Run id → checkpoint file names that run wrote, from ``checkpoints.json`` (empty if absent)."""
    path = Path(log_dir) / MANIFEST_NAME
    try:
        runs = json.loads(path.read_text())["runs"]
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path} is not a diffjscc checkpoint manifest ({type(err).__name__})") from None
    if not isinstance(runs, dict):
        raise UserError(f"{path} is not a diffjscc checkpoint manifest")
    return {str(k): [str(n) for n in v] for k, v in runs.items()}


def write_manifest(log_dir: str | Path, runs: dict[str, list[str]]) -> None:
    """Write ``checkpoints.json`` atomically."""
    write_text_atomic(Path(log_dir) / MANIFEST_NAME, json.dumps({"runs": runs}, indent=1) + "\n")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``path`` through a temporary file in its folder and a rename: a reader (or a killed
    writer) leaves the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = temp_file_beside(path)  # readable as a plain open would leave it, not mkstemp's 0600
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
