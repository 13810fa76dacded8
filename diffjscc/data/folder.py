"""Image-folder dataset and single-image helpers, all in the models' [-1, 1] CHW convention.

Files are checked once when the dataset is built, so a bad file is reported (or skipped) up
front, by name, instead of crashing a DataLoader worker halfway through an epoch.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from diffjscc.errors import UserError

NO_LABEL = -1  # the label of every item of a dataset that reads no labels
SUBSETS = ("spread", "first")
"""How ``--limit N`` picks N of a folder's files: evenly spaced over the sorted names, or the first N."""
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# Images up to this many pixels are fully decoded at construction (cheap, catches truncation
# that ``verify`` misses); larger ones only get the header/``verify`` check.
_FULL_DECODE_PIXELS = 256 * 256


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """Decode any PIL mode to uint8 HWC RGB (16-bit grey is scaled, not clipped)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.int64)
        arr = (arr >> 8) if img.mode.startswith("I;16") else np.clip(arr, 0, 255)
        arr = arr.astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def rgb_array_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 HWC RGB → float (3, H, W) in [-1, 1] (copies a read-only or strided view)."""
    if not arr.flags.writeable or not arr.flags.c_contiguous:  # PIL buffers are read-only
        arr = np.array(arr, order="C")
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def read_rgb_array(path: Path) -> np.ndarray:
    """Decode one image file to uint8 HWC RGB, or raise a one-line UserError naming it."""
    try:
        with Image.open(path) as img:
            img.load()
            arr = _to_rgb_array(img)
    except FileNotFoundError:
        raise UserError(f"image file not found: {path}") from None
    except UnidentifiedImageError:
        raise UserError(f"not a readable image file: {path}") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # PIL reports truncation/corruption this way
        raise UserError(f"corrupt or unreadable image file {path}: {exc}") from None
    return arr


def _read_image(path: Path) -> torch.Tensor:
    return rgb_array_to_tensor(read_rgb_array(path))


def load_image_tensor(path: str | os.PathLike) -> torch.Tensor:
    """Load one image file as a float RGB tensor (3, H, W) in [-1, 1]."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image file not found: {path}")
    return _read_image(path)


def save_image_tensor(x: torch.Tensor, path: str | os.PathLike) -> None:
    """Write a (C, H, W) tensor in [-1, 1] (C = 1 or 3) as an 8-bit PNG, rounding and clamping.

    Inverse of :func:`load_image_tensor`, so an 8-bit image survives a load/save round trip.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[0] not in (1, 3):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"save_image_tensor expects a (1|3, H, W) tensor, got {shape}")
    pixels = torch.nan_to_num(x.detach().float().cpu(), nan=0.0)
    pixels = ((pixels + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
    arr = pixels.permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, format="PNG")
    except OSError as exc:
        raise UserError(f"cannot write image {path}: {exc}") from None


def image_files(root: Path) -> list[Path]:
    """The image files of one folder (not recursive, no hidden files) in sorted name order;
    a missing or image-less folder is a UserError."""
    if not root.is_dir():
        raise UserError(f"image folder not found: {root}")
    files = sorted(p for p in root.iterdir()
                   if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file())
    if not files:
        raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {root}")
    return files


class _CorruptImage(UserError):
    """A file that cannot be decoded: skippable, unlike a wrong image size."""


def _check_file(path: Path, image_size: int | None) -> None:
    """Raise UserError if ``path`` has the wrong size, _CorruptImage if it cannot be decoded."""
    try:
        with Image.open(path) as img:
            size = img.size
            if image_size is not None and size != (image_size, image_size):
                raise UserError(
                    f"{path} is {size[0]}x{size[1]} but the model needs {image_size}x{image_size} images"
                )
            if size[0] * size[1] <= _FULL_DECODE_PIXELS:
                img.load()
            else:
                img.verify()
    except UserError:
        raise
    except UnidentifiedImageError:
        raise _CorruptImage(f"not a readable image file: {path}") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise _CorruptImage(f"corrupt or unreadable image file {path}: {exc}") from None


def subset_indices(total: int, limit: int | None, how: str = "spread") -> list[int]:
    """Which ``limit`` of ``total`` files (in sorted name order) to use: ``spread`` takes file
    ``i * total // limit`` for i = 0 … limit−1 (every k-th file when limit divides total), so a
    folder sorted by class (``cifar_test``: {class}_{index}.png) is sampled across its classes;
    ``first`` takes files 0 … limit−1. All files when ``limit`` is None or not below ``total``."""
    if how not in SUBSETS:
        raise UserError(f"unknown subset {how!r}; expected {', '.join(SUBSETS)}")
    if limit is None or limit >= total:
        return list(range(total))
    return [i * total // limit for i in range(limit)] if how == "spread" else list(range(limit))


def label_prefix(path: Path) -> str | None:
    """The class prefix of ``{class}_{index}.png``: the file name before its first underscore."""
    stem = path.stem
    return stem.split("_", 1)[0] if "_" in stem and stem.split("_", 1)[0] else None


class ImageFolderDataset(Dataset):
    """Images of one folder (not recursive), in sorted file-name order, as [-1, 1] CHW tensors.

    Each item is ``(image, label)``. With ``with_labels`` the label comes from the file-name
    prefix (``cat_00012.png`` -> ``cat``) looked up in ``class_names`` or, when not given, in
    the sorted set of prefixes; without, it is :data:`NO_LABEL`. Corrupt files are skipped with a warning (listed in
    ``skipped``) unless ``strict``, which raises instead. Images are never resized: a wrong
    size under ``image_size`` is an error, because the models are fixed-size.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int | None = None,
        with_labels: bool = False,
        class_names: list[str] | None = None,
        strict: bool = False,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"image folder not found: {self.root}")
        if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
            raise UserError(f"image_size must be a positive integer, got {image_size!r}")
        candidates = image_files(self.root)
        self.image_size = image_size
        self.with_labels = with_labels
        self.strict = strict

        self.class_names: list[str] | None = None
        prefixes: dict[Path, str] = {}
        if with_labels:
            for p in candidates:
                prefix = label_prefix(p)
                if prefix is None:
                    raise UserError(f"cannot read a class from file name {p.name} (expected <class>_<index>.png)")
                prefixes[p] = prefix
            if class_names is not None:
                if not class_names:
                    raise UserError("class_names must not be empty")
                known = set(class_names)
                for p, prefix in prefixes.items():
                    if prefix not in known:
                        raise UserError(f"{p}: class '{prefix}' is not one of the configured class names")
                self.class_names = list(class_names)
            else:
                self.class_names = sorted(set(prefixes.values()))
        elif class_names is not None:
            self.class_names = list(class_names)
        class_index = {name: i for i, name in enumerate(self.class_names or [])}

        self.files: list[Path] = []
        self.labels: list[int] = []
        self.skipped: list[Path] = []
        for p in candidates:
            try:
                _check_file(p, image_size)
            except _CorruptImage:
                if strict:
                    raise
                self.skipped.append(p)
                continue
            self.files.append(p)
            if with_labels:
                self.labels.append(class_index[prefixes[p]])
        if self.skipped:
            warnings.warn(
                f"skipped {len(self.skipped)} unreadable image file(s) in {self.root} "
                f"(first: {self.skipped[0].name})",
                stacklevel=2,
            )
        if not self.files:
            raise UserError(f"no readable images in folder {self.root} ({len(self.skipped)} corrupt)")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return _read_image(self.files[index]), self.labels[index] if self.with_labels else NO_LABEL

    def first(self, count: int | None = None,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
        """The first ``count`` images (all when None) as one (N, 3, H, W) batch, and their labels
        as a tensor when the dataset reads labels (else None)."""
        return self.take(range(len(self) if count is None else min(count, len(self))), device)

    def take(self, indices, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
        """The images at ``indices`` (e.g. :func:`subset_indices`) as one batch, as :meth:`first`."""
        items = [self[i] for i in indices]
        images = torch.stack([image for image, _ in items]).to(device)
        labels = torch.tensor([label for _, label in items], device=device) if self.with_labels else None
        return images, labels
