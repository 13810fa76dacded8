"""FID over a whole evaluated set against a reference set, with cached reference statistics.

    FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))

with (mu, S) the mean and covariance of feature vectors over *all* images of a set (never per
batch): the reference (r) and the reconstructions (g). The Fréchet distance is torchmetrics'
``FrechetInceptionDistance`` (float64 sums); the features are the 2048-d pool_3 features of the
FID Inception-v3 (:mod:`diffjscc.evaluation.inception`), or any ``nn.Module`` passed in code
(tests use a small fixed random conv net).

FID of a few hundred images is biased upwards (it shrinks as N grows); compare FIDs only at the
same N, which the result rows record.

Reference statistics (feature sum, sum of outer products, count) of a list of files are
cached as ``<folder>/.fid_stats_<key>.npz``; ``key`` hashes the feature network's identity and
every file's name and bytes, so a changed file or other weights never reuse stale numbers. The
cache is read with ``np.load(allow_pickle=False)`` and checked; a bad one is recomputed.

Sharded across ranks (``sharded=True``, under torchrun/mpiexec): each rank feeds its share of
the images and the *sufficient statistics* (sums, sums of outer products, counts) are summed
over ranks before the Fréchet distance is computed, so the FID is the one of the whole set —
never an average of per-rank FIDs. torchmetrics' own sync-on-compute is switched off: it would
also sum the reference statistics that every rank holds in full (N·ranks samples, a wrong
covariance normalisation); here the reference is fed sharded and summed once, or read from the
cache by rank 0 and shared.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from diffjscc.errors import UserError
from diffjscc.runtime.atomic import temp_file_beside
from diffjscc.runtime.device import full_fp32, numerics_id
from diffjscc.runtime.distributed import all_reduce_sum, is_main_process, shard_range

__all__ = ["FIDScorer", "ReferenceStats", "reference_cache_path", "reference_key"]


class ReferenceStats:
    """Sufficient statistics of a feature set: ``sum f`` (D,), ``sum f f^T`` (D, D), count N (float64)."""

    def __init__(self, features_sum: Tensor, cov_sum: Tensor, count: int) -> None:
        self.features_sum = features_sum.double()
        self.cov_sum = cov_sum.double()
        self.count = int(count)

    def save(self, path: Path, key: str) -> None:
        """Write atomically (temp file + rename), so a crash never leaves half a cache."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_file_beside(path, prefix=".fid_stats_tmp_", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, features_sum=self.features_sum.numpy(), cov_sum=self.cov_sum.numpy(),
                         count=np.int64(self.count), key=np.str_(key))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: Path, key: str, dim: int) -> "ReferenceStats | None":
        """The cached statistics if ``path`` holds a valid file for ``key`` and ``dim``, else None."""
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["key"]) != key:
                    return None
                features_sum, cov_sum, count = data["features_sum"], data["cov_sum"], int(data["count"])
        except (OSError, KeyError, ValueError, EOFError):
            return None
        if (features_sum.shape != (dim,) or cov_sum.shape != (dim, dim) or count < 2
                or not np.isfinite(features_sum).all() or not np.isfinite(cov_sum).all()):
            return None
        return cls(torch.from_numpy(features_sum.astype(np.float64)),
                   torch.from_numpy(cov_sum.astype(np.float64)), count)


def reference_key(files: Sequence[Path], network_id: str) -> str:
    """SHA-256 over the network identity and every file's name and content (first 16 hex digits)."""
    digest = hashlib.sha256(network_id.encode())
    for path in files:
        digest.update(b"\0" + Path(path).name.encode() + b"\0")
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


def reference_cache_path(files: Sequence[Path], key: str) -> Path:
    """``<folder of the first file>/.fid_stats_<key>.npz``."""
    return Path(files[0]).parent / f".fid_stats_{key}.npz"


class FIDScorer:
    """FID of image sets (uint8, (N, 3, H, W)) against one reference set.

    ``feature`` maps uint8 images to (B, D) features: :class:`FIDInceptionV3` for the real
    metric, any fixed ``nn.Module`` in tests. ``network_id`` names it in cache keys (e.g. the
    weights' SHA-256); without one the reference statistics are never cached.
    """

    def __init__(self, feature: nn.Module, network_id: str | None = None, batch_size: int = 64,
                 device: torch.device | str = "cpu") -> None:
        try:
            from torchmetrics.image.fid import FrechetInceptionDistance
        except ImportError as err:  # torch-fidelity installed without a working torchvision
            raise RuntimeError(f"torchmetrics' FID module cannot be imported ({err}); "
                               "torch-fidelity needs a working torchvision") from None
        # sync_on_compute=False: sharded statistics are combined explicitly (see the module docstring)
        self.metric = FrechetInceptionDistance(feature=feature, reset_real_features=False, normalize=False,
                                               sync_on_compute=False)
        self.metric.to(device)
        # the cache key names the numerics too: the same weights give slightly other features on a GPU
        # (the features are always computed in full fp32, see _feed)
        with full_fp32():
            self.network_id = None if network_id is None else f"{network_id}|{numerics_id(device)}"
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.has_reference = False

    @full_fp32()
    def _feed(self, images: Tensor, real: bool) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"FID takes uint8 (N, 3, H, W) images, got {images.dtype} {tuple(images.shape)}")
        for start in range(0, images.shape[0], self.batch_size):
            self.metric.update(images[start:start + self.batch_size].to(self.device), real=real)

    def set_reference_images(self, images: Tensor, sharded: bool = False) -> None:
        """Reference statistics from uint8 images (all of them, in batches); ``sharded``: the
        images are this rank's share, and the statistics are summed over ranks."""
        self.metric.real_features_sum.zero_()
        self.metric.real_features_cov_sum.zero_()
        self.metric.real_features_num_samples.zero_()
        if images.shape[0]:
            self._feed(images, real=True)
        if sharded:
            self.set_reference_stats(self._all_reduce(self.reference_stats()))
        self.has_reference = True

    @staticmethod
    def _all_reduce(stats: ReferenceStats) -> ReferenceStats:
        """Statistics summed over ranks (float64 sums, exact counts); unchanged in one process."""
        count = all_reduce_sum(torch.tensor([stats.count], dtype=torch.long))
        return ReferenceStats(all_reduce_sum(stats.features_sum), all_reduce_sum(stats.cov_sum), int(count[0]))

    def reference_stats(self) -> ReferenceStats:
        m = self.metric
        return ReferenceStats(m.real_features_sum.detach().cpu(), m.real_features_cov_sum.detach().cpu(),
                              int(m.real_features_num_samples))

    def set_reference_stats(self, stats: ReferenceStats) -> None:
        m = self.metric
        m.real_features_sum = stats.features_sum.to(self.device)
        m.real_features_cov_sum = stats.cov_sum.to(self.device)
        m.real_features_num_samples = torch.tensor(stats.count, device=self.device)
        self.has_reference = True

    def reference_from_files(self, files: Sequence[Path], load: Callable[[Sequence[Path]], Tensor],
                             cache: bool = True, sharded: bool = False) -> str:
        """Reference statistics of ``files`` (``load`` turns them into uint8 images), cached.

        ``sharded`` (every rank calls this with the same ``files``): rank 0 alone reads and
        writes the cache; on a hit it shares the statistics, else each rank loads and feeds its
        share of ``files`` and the sums are combined. Returns a one-line note saying whether the
        cache was used, written or not writable (rank 0's is the one to print).
        """
        files = list(files)
        if len(files) < 2:
            raise UserError(f"FID needs at least 2 reference images, got {len(files)}")
        dim = int(self.metric.real_features_sum.shape[0])
        main = not sharded or is_main_process()
        path = stats = None
        if cache and self.network_id is not None and main:
            key = reference_key(files, self.network_id)
            path = reference_cache_path(files, key)
            stats = ReferenceStats.load(path, key, dim) if path.is_file() else None
        hit = stats is not None
        if sharded:  # rank 0's decision, and its statistics (zeros elsewhere: the sum is rank 0's)
            hit = bool(all_reduce_sum(torch.tensor([int(hit)]))[0])
            if hit:
                stats = self._all_reduce(stats if stats is not None else ReferenceStats(
                    torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dim, dtype=torch.float64), 0))
        if hit:
            self.set_reference_stats(stats)
            return f"reference statistics of {len(files)} images from cache {path}"
        share = shard_range(len(files)) if sharded else range(len(files))
        mine = files[share.start:share.stop]
        self.set_reference_images(load(mine) if mine else torch.zeros(0, 3, 1, 1, dtype=torch.uint8), sharded=sharded)
        if path is None:
            return f"reference statistics of {len(files)} images (not cached)"
        try:
            self.reference_stats().save(path, key)
        except OSError as err:
            return f"reference statistics of {len(files)} images (cache not written: {err.strerror})"
        return f"reference statistics of {len(files)} images, cached in {path}"

    def score(self, images: Tensor, sharded: bool = False) -> float:
        """FID (float) of uint8 images ``images`` (all of them) against the reference; needs N >= 2.

        ``sharded``: ``images`` are this rank's share of the set (possibly none); every rank
        calls this and gets the FID of the union.
        """
        if not self.has_reference:
            raise RuntimeError("FIDScorer: set the reference first")
        count = images.shape[0]
        if sharded:
            count = int(all_reduce_sum(torch.tensor([count], dtype=torch.long))[0])
        if count < 2:
            return math.nan
        m = self.metric
        m.reset()  # clears the generated-set sums only (reset_real_features=False)
        if images.shape[0]:
            self._feed(images, real=False)
        if sharded:
            m.fake_features_sum = all_reduce_sum(m.fake_features_sum)
            m.fake_features_cov_sum = all_reduce_sum(m.fake_features_cov_sum)
            m.fake_features_num_samples = all_reduce_sum(m.fake_features_num_samples)
        return float(m.compute())
