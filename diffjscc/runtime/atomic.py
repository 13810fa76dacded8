"""Temporary files for atomic writes that end with the permissions a plain ``open`` gives.

``tempfile.mkstemp`` creates its file mode 0600 (``mkdtemp``: 0700) whatever the umask, so a
result, checkpoint or data folder written through a temporary name and a rename would be
private to its writer: a colleague on a shared cluster could not read ``results.json``. These
helpers create the temporary file the same way and then give it ``0o666 & ~umask`` (folders
``0o777 & ~umask``), exactly what ``open(path, "w")`` or ``mkdir`` would have made.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["current_umask", "plain_mode", "temp_dir_beside", "temp_file_beside"]


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``/proc/self/status``);
    elsewhere set and restored at once."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_mode(directory: bool = False) -> int:
    """The mode ``open`` (``0o666``) or ``mkdir`` (``0o777``) would give under the current umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


def temp_file_beside(path: str | os.PathLike, suffix: str = ".tmp", prefix: str | None = None) -> tuple[int, str]:
    """``mkstemp`` in ``path``'s folder (a rename onto ``path`` is then atomic), its mode set as a
    plain ``open`` would; returns the open descriptor and the temporary file's name."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}." if prefix is None else prefix, suffix=suffix, dir=path.parent)
    try:
        os.fchmod(fd, plain_mode())
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, tmp


def temp_dir_beside(path: str | os.PathLike, prefix: str | None = None) -> Path:
    """``mkdtemp`` in ``path``'s folder, its mode set as a plain ``mkdir`` would."""
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-" if prefix is None else prefix, dir=path.parent))
    try:
        os.chmod(tmp, plain_mode(directory=True))
    except BaseException:
        os.rmdir(tmp)
        raise
    return tmp
