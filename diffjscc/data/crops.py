"""Random crops of photographs of any size: the training data of the photo models.

Photos are decoded once, when the dataset is built, and kept in memory as uint8 arrays (49
photos of about a megapixel are ~150 MB); a crop is an array slice, so reading it costs far less
than the training step it feeds (``python -m bench data``). Crops never leave the photo: the
top-left corner is uniform over every position where the crop fits, so every pixel can be
covered and none comes from padding. A photo smaller than the crop is an error naming it.

The dataset is deterministic, so that a resumed or data-parallel run sees exactly the crops one
uninterrupted process does: item ``i`` is a crop of photo ``i mod N`` whose corner and
horizontal flip come from the generator of (``seed``, ``i``) of the stream
:attr:`~diffjscc.runtime.seeding.Stream.CROP`. One epoch holds ``crops_per_photo`` crops of
every photo; the trainer's sampler shuffles them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from diffjscc.data.folder import NO_LABEL, image_files, read_rgb_array, rgb_array_to_tensor
from diffjscc.errors import UserError
from diffjscc.runtime.seeding import Stream, stream_sequence

CROPS_PER_PHOTO = 2048  # crops of each photo in one epoch of the dataset (its length / N)


class RandomCropDataset(Dataset):
    """``crop_size`` × ``crop_size`` crops (with random horizontal flips) of the images of one
    folder, as ``(image in [-1, 1] CHW, NO_LABEL)``."""

    def __init__(self, root: str | os.PathLike, crop_size: int, seed: int = 0,
                 crops_per_photo: int = CROPS_PER_PHOTO, flip: bool = True) -> None:
        if isinstance(crop_size, bool) or not isinstance(crop_size, int) or crop_size < 1:
            raise UserError(f"crop_size must be a positive integer, got {crop_size!r}")
        self.root = Path(root)
        self.files = image_files(self.root)
        self.crop_size, self.seed, self.flip = crop_size, seed, flip
        self.crops_per_photo = crops_per_photo
        self.photos: list[np.ndarray] = []
        for path in self.files:
            array = read_rgb_array(path)
            height, width = array.shape[:2]
            if height < crop_size or width < crop_size:
                raise UserError(f"{path} is {width}x{height}, smaller than the {crop_size}x{crop_size} "
                                f"training crops (crop_size)")
            self.photos.append(array)
        self.skipped: list[Path] = []

    def __len__(self) -> int:
        return len(self.photos) * self.crops_per_photo

    def corner(self, index: int) -> tuple[int, int, int, bool]:
        """(photo, top, left, flipped) of item ``index``: a pure function of (seed, index)."""
        photo = index % len(self.photos)
        height, width = self.photos[photo].shape[:2]
        draws = np.random.default_rng(stream_sequence(self.seed, Stream.CROP, index))
        top = int(draws.integers(0, height - self.crop_size + 1))
        left = int(draws.integers(0, width - self.crop_size + 1))
        flipped = bool(self.flip and draws.random() < 0.5)
        return photo, top, left, flipped

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        photo, top, left, flipped = self.corner(index)
        crop = self.photos[photo][top:top + self.crop_size, left:left + self.crop_size]
        if flipped:
            crop = crop[:, ::-1]
        return rgb_array_to_tensor(crop), NO_LABEL

    def first(self, count: int | None = None,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, None]:
        """The first ``count`` crops (one of each photo first) as one batch; no labels."""
        count = len(self) if count is None else min(count, len(self))
        return torch.stack([self[i][0] for i in range(count)]).to(device), None
