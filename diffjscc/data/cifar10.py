"""CIFAR-10 python-format reader and PNG extractor.

The official archive stores pickled batches. Unpickling untrusted files runs code, so every
batch goes through a restricted unpickler that only builds plain data and numpy arrays, and
the archive is read in memory (never extracted) after refusing any unsafe tar member.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import os
import pickle
import re
import shutil
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np
from PIL import Image

from diffjscc.errors import UserError
from diffjscc.runtime.atomic import temp_dir_beside, temp_file_beside

CLASS_NAMES: list[str] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCH_DIR = "cifar-10-batches-py"
META_NAME = "batches.meta"
TEST_BATCH = "test_batch"
SPLIT_DIRS = {"train": "cifar_train", "test": "cifar_test"}

_TRAIN_RE = re.compile(r"^data_batch_(\d+)$")
_OUTPUT_RE = re.compile(r"^[A-Za-z0-9-]+_\d{5,}\.png$")
_CLASS_NAME_RE = re.compile(r"^[A-Za-z0-9-]+$")
_IMAGE_SIZE = 32
_PIXELS = 3 * _IMAGE_SIZE * _IMAGE_SIZE


def _is_batch_name(name: str) -> bool:
    return name in (META_NAME, TEST_BATCH) or _TRAIN_RE.match(name) is not None


# --------------------------------------------------------------------------- unpickling


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode`` that protocol-2 pickles use to rebuild bytes.

    Only text codecs are allowed so a hostile pickle cannot reach zlib/bz2 bombs or other
    binary transforms through the codec registry.
    """
    if not isinstance(obj, str) or not isinstance(encoding, str):
        raise pickle.UnpicklingError("codecs.encode called with non-text arguments")
    if codecs.lookup(encoding).name not in ("iso8859-1", "latin-1", "utf-8", "ascii"):
        raise pickle.UnpicklingError(f"codecs.encode with encoding {encoding!r} is not allowed")
    return codecs.encode(obj, encoding, errors)


def _numpy_global(name: str) -> Any:
    """Resolve numpy's array-reconstruction helpers on both numpy 1.x and 2.x."""
    if name in ("ndarray", "dtype"):
        return getattr(np, name)
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    if name == "_frombuffer":
        return numeric._frombuffer
    return getattr(multiarray, name)


_SAFE_BUILTINS = {
    "dict": dict,
    "list": list,
    "tuple": tuple,
    "set": set,
    "frozenset": frozenset,
    "bytes": bytes,
    "bytearray": bytearray,
    "str": str,
    "int": int,
    "float": float,
    "complex": complex,
    "bool": bool,
}

_SAFE_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    **{(mod, n): (lambda v=v: v) for mod in ("builtins", "__builtin__") for n, v in _SAFE_BUILTINS.items()},
    **{(mod, "encode"): (lambda: _latin1_encode) for mod in ("_codecs", "codecs")},
    ("numpy", "ndarray"): lambda: _numpy_global("ndarray"),
    ("numpy", "dtype"): lambda: _numpy_global("dtype"),
    **{
        (mod, n): (lambda n=n: _numpy_global(n))
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
        for n in ("_reconstruct", "scalar")
    },
    **{(mod, "_frombuffer"): (lambda: _numpy_global("_frombuffer")) for mod in ("numpy.core.numeric", "numpy._core.numeric")},
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a CIFAR batch needs, refusing all others.

    A refused global is never imported or called: the load stops with a UserError naming it.
    """

    def __init__(self, file: IO[bytes], source_name: str = "<stream>") -> None:
        super().__init__(file, encoding="bytes")
        self.source_name = source_name

    def find_class(self, module: str, name: str) -> Any:
        factory = _SAFE_GLOBALS.get((module, name))
        if factory is None:
            raise UserError(
                f"{self.source_name}: refused to unpickle global '{module}.{name}' "
                "(a CIFAR-10 batch may only contain plain data and numpy arrays)"
            )
        return factory()

    def persistent_load(self, pid: Any) -> Any:
        raise UserError(f"{self.source_name}: refused persistent id in pickle (not a CIFAR-10 batch)")


def _safe_unpickle(fileobj: IO[bytes], source_name: str) -> Any:
    try:
        return RestrictedUnpickler(fileobj, source_name).load()
    except UserError:
        raise
    except Exception as exc:  # any parse failure of hostile/garbled input is a data problem
        raise UserError(f"{source_name}: not a readable CIFAR-10 pickle ({type(exc).__name__}: {exc})") from None


def _get(d: dict, key: str) -> Any:
    """Look a key up as bytes (python-2 pickles) or str (python-3 pickles)."""
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


def _open_source(fileobj_or_path: str | os.PathLike | IO[bytes], name: str | None) -> tuple[IO[bytes], str, bool]:
    if isinstance(fileobj_or_path, (str, os.PathLike)):
        path = Path(fileobj_or_path)
        if not path.is_file():
            raise UserError(f"CIFAR-10 batch file not found: {path}")
        try:
            return open(path, "rb"), name or str(path), True
        except OSError as exc:
            raise UserError(f"cannot read CIFAR-10 batch file {path}: {exc.strerror}") from None
    return fileobj_or_path, name or str(getattr(fileobj_or_path, "name", "<stream>")), False


def _load_dict(fileobj_or_path: str | os.PathLike | IO[bytes], name: str | None, what: str) -> tuple[dict, str]:
    """Safely unpickle a file that must hold a dict; returns it with the name for messages."""
    fileobj, source_name, close = _open_source(fileobj_or_path, name)
    try:
        obj = _safe_unpickle(fileobj, source_name)
    finally:
        if close:
            fileobj.close()
    if not isinstance(obj, dict):
        raise UserError(f"{source_name}: {what} must be a dict, got {type(obj).__name__}")
    return obj, source_name


def load_batch(fileobj_or_path: str | os.PathLike | IO[bytes], *, name: str | None = None) -> tuple[np.ndarray, list[int]]:
    """Read one CIFAR-10 batch safely as (uint8 images (N,32,32,3) HWC, labels).

    ``name`` only labels error messages (e.g. ``archive.tar.gz:cifar-10-batches-py/test_batch``).
    """
    obj, source_name = _load_dict(fileobj_or_path, name, "a CIFAR-10 batch")
    data = _get(obj, "data")
    labels = _get(obj, "labels")
    if data is None or labels is None:
        raise UserError(f"{source_name}: CIFAR-10 batch lacks the 'data' or 'labels' key")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise UserError(f"{source_name}: 'data' must be a uint8 array of shape (N, {_PIXELS}), got {dtype} {shape}")
    if isinstance(labels, np.ndarray):
        labels = labels.tolist()
    if not isinstance(labels, list) or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in labels
    ):
        raise UserError(f"{source_name}: 'labels' must be a list of non-negative integers")
    if len(labels) != data.shape[0]:
        raise UserError(f"{source_name}: {data.shape[0]} images but {len(labels)} labels")
    images = np.ascontiguousarray(data.reshape(-1, 3, _IMAGE_SIZE, _IMAGE_SIZE).transpose(0, 2, 3, 1))
    return images, [int(v) for v in labels]


def load_meta(fileobj_or_path: str | os.PathLike | IO[bytes], *, name: str | None = None) -> list[str]:
    """Read ``batches.meta`` safely and return its class names (validated for file naming)."""
    obj, source_name = _load_dict(fileobj_or_path, name, "batches.meta")
    names = _get(obj, "label_names")
    if names is None:
        return list(CLASS_NAMES)
    if not isinstance(names, list) or not names:
        raise UserError(f"{source_name}: 'label_names' must be a non-empty list")
    out = []
    for n in names:
        if isinstance(n, bytes):
            n = n.decode("latin-1")
        if not isinstance(n, str) or not _CLASS_NAME_RE.match(n):
            raise UserError(f"{source_name}: invalid class name {n!r} in label_names (letters, digits, '-' only)")
        out.append(n)
    return out


# --------------------------------------------------------------------------- sources


def check_tar_member(member: tarfile.TarInfo, archive: str = "<archive>") -> None:
    """Refuse tar members that could escape a directory or are not plain files/folders."""
    name = member.name
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise UserError(f"{archive}: refusing archive member with absolute path {name!r}")
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise UserError(f"{archive}: refusing archive member with '..' in its path {name!r}")
    if member.issym() or member.islnk():
        raise UserError(f"{archive}: refusing link member {name!r}")
    if not (member.isreg() or member.isdir()):
        raise UserError(f"{archive}: refusing special (device/fifo) member {name!r}")


def _member_batch_name(member: tarfile.TarInfo) -> str | None:
    """Return the batch name when ``member`` is a regular file ``cifar-10-batches-py/<batch>``."""
    if not member.isreg():
        return None
    parts = [p for p in PurePosixPath(member.name).parts if p != "."]
    if len(parts) == 2 and parts[0] == BATCH_DIR and _is_batch_name(parts[1]):
        return parts[1]
    return None


def _iter_tar_batches(archive: Path) -> Iterator[tuple[str, IO[bytes], str]]:
    """Yield (batch name, file object, display name) for each batch, streaming the archive once."""
    try:
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                check_tar_member(member, str(archive))
                batch = _member_batch_name(member)
                if batch is None:
                    continue
                fileobj = tar.extractfile(member)
                if fileobj is None:  # pragma: no cover - isreg() guarantees a file object
                    continue
                yield batch, io.BytesIO(fileobj.read()), f"{archive}:{member.name}"
    except UserError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise UserError(f"{archive}: not a readable CIFAR-10 tar archive ({exc})") from None


def _iter_dir_batches(folder: Path) -> Iterator[tuple[str, IO[bytes], str]]:
    for path in sorted(folder.iterdir()):
        if _is_batch_name(path.name) and path.is_file():
            try:
                fileobj = open(path, "rb")
            except OSError as exc:
                raise UserError(f"cannot read {path}: {exc.strerror}") from None
            with fileobj:
                yield path.name, fileobj, str(path)


def _batch_folder(source: Path) -> Path:
    """Accept the ``cifar-10-batches-py`` folder itself or its parent."""
    inner = source / BATCH_DIR
    if inner.is_dir():
        return inner
    return source


def read_cifar10(source: str | os.PathLike) -> tuple[list[str], dict[str, tuple[np.ndarray, list[int]]]]:
    """Read every batch present in an archive or folder: (class names, {split: (images, labels)}).

    Training batches are concatenated in numeric order (data_batch_1, 2, ...), whatever order
    the archive stores them in; a split without a batch file is absent from the result.
    """
    source = Path(source)
    if source.is_dir():
        batches = _iter_dir_batches(_batch_folder(source))
    elif source.is_file():
        batches = _iter_tar_batches(source)
    else:
        raise UserError(f"CIFAR-10 source not found: {source}")
    class_names: list[str] | None = None
    train: dict[int, tuple[np.ndarray, list[int]]] = {}
    test: tuple[np.ndarray, list[int]] | None = None
    for batch, fileobj, display in batches:
        if batch == META_NAME:
            class_names = load_meta(fileobj, name=display)
        elif batch == TEST_BATCH:
            test = load_batch(fileobj, name=display)
        else:
            match = _TRAIN_RE.match(batch)
            assert match is not None
            train[int(match.group(1))] = load_batch(fileobj, name=display)
    if not train and test is None:
        raise UserError(
            f"no CIFAR-10 batch file (data_batch_N or test_batch) found in {source} "
            f"(expected {BATCH_DIR}/<batch> as in {ARCHIVE_NAME})"
        )
    names = class_names or list(CLASS_NAMES)
    splits: dict[str, tuple[np.ndarray, list[int]]] = {}
    if train:
        order = sorted(train)
        images = np.concatenate([train[k][0] for k in order]) if len(order) > 1 else train[order[0]][0]
        splits["train"] = (images, [lab for k in order for lab in train[k][1]])
    if test is not None:
        splits["test"] = test
    for split, (_, labels) in splits.items():
        bad = [v for v in labels if v >= len(names)]
        if bad:
            raise UserError(f"{source}: {split} label {bad[0]} out of range for {len(names)} classes")
    return names, splits


# --------------------------------------------------------------------------- extraction


def _replace_dir(tmp: Path, target: Path) -> None:
    """Swap a freshly written split folder in, refusing to delete anything we did not write."""
    if target.exists():
        if not target.is_dir():
            raise UserError(f"{target} exists and is not a folder")
        foreign = [p.name for p in target.iterdir() if not (p.is_file() and _OUTPUT_RE.match(p.name))]
        if foreign:
            raise UserError(f"refusing to overwrite {target}: it holds files the extractor did not write ({foreign[0]})")
        shutil.rmtree(target)
    os.replace(tmp, target)


def _write_split(images: np.ndarray, labels: list[int], names: list[str], target: Path) -> int:
    tmp = temp_dir_beside(target)  # the umask's mode, not mkdtemp's 0700
    try:
        for index, (image, label) in enumerate(zip(images, labels)):
            Image.fromarray(image).save(tmp / f"{names[label]}_{index:05d}.png", compress_level=1)
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return len(labels)


def extract_cifar10(source: Path, out_dir: Path, limit_per_split: int | None = None) -> dict[str, int]:
    """Write CIFAR-10 as lossless PNGs ``out_dir/cifar_{train,test}/{class}_{index:05d}.png``.

    ``source`` is the .tar.gz, the extracted ``cifar-10-batches-py`` folder or its parent.
    ``limit_per_split`` keeps the first N images of each split (fast fixtures and demos).
    Returns ``{"cifar_train": n, "cifar_test": m}`` (keyed by folder name); a split whose batch
    files are absent gets 0 and no folder.
    """
    if limit_per_split is not None and (
        isinstance(limit_per_split, bool) or not isinstance(limit_per_split, int) or limit_per_split < 1
    ):
        raise UserError(f"limit_per_split must be a positive integer, got {limit_per_split!r}")
    names, splits = read_cifar10(source)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {out_dir}: {exc.strerror}") from None
    counts = {SPLIT_DIRS["train"]: 0, SPLIT_DIRS["test"]: 0}
    for split, (images, labels) in splits.items():
        if limit_per_split is not None:
            images, labels = images[:limit_per_split], labels[:limit_per_split]
        try:
            counts[SPLIT_DIRS[split]] = _write_split(images, labels, names, out_dir / SPLIT_DIRS[split])
        except OSError as exc:
            raise UserError(f"cannot write PNGs under {out_dir}: {exc}") from None
    return counts


# --------------------------------------------------------------------------- download


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_cifar10(dest_dir: Path) -> Path:
    """Download the official archive into ``dest_dir`` (MD5-checked, atomic) and return its path.

    An archive already there with the right MD5 is reused without network access.
    """
    dest_dir = Path(dest_dir)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create download folder {dest_dir}: {exc.strerror}") from None
    dest = dest_dir / ARCHIVE_NAME
    if dest.is_file() and _md5(dest) == CIFAR10_MD5:
        return dest
    fd, tmp_name = temp_file_beside(dest_dir / ARCHIVE_NAME, suffix=".part")
    tmp = Path(tmp_name)
    digest = hashlib.md5()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(CIFAR10_URL, timeout=60) as response:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        digest.update(chunk)
                        out.write(chunk)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", None) or exc
                raise UserError(
                    f"could not download CIFAR-10 ({reason}); pass --archive PATH to a local {ARCHIVE_NAME}"
                ) from None
        if digest.hexdigest() != CIFAR10_MD5:
            raise UserError(
                f"downloaded CIFAR-10 archive has MD5 {digest.hexdigest()}, expected {CIFAR10_MD5}; "
                f"pass --archive PATH to a local {ARCHIVE_NAME}"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
