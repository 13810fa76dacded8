"""Realism and semantic fidelity in a classifier's feature space: ``fd_cls``, ``kid_cls``, ``acc_cls``.

* ``fd_cls``: the Fréchet distance between Gaussians fitted to the outputs' penultimate features
  and to those of the classifier's reference images (its training split; mean and covariance
  stored with its weights): ``|mu_g - mu_r|^2 + Tr(S_g + S_r - 2 (S_g S_r)^(1/2))``.
* ``kid_cls``: the unbiased squared MMD with the polynomial kernel ``(x.y / D + 1)^3``
  (Bińkowski et al. 2018, "Demystifying MMD GANs"), as mean ± std over random subsets of the
  outputs and of the stored reference features; unbiased, so usable at a few hundred images and
  ≈ 0 for real images.
* ``acc_cls``: the classifier's top-1 accuracy on the outputs against the sources' labels.

These are **not** Inception FID/KID (:data:`~diffjscc.evaluation.classifier.CLASSIFIER_NOTE`).
Both distribution metrics are biased by the number of outputs (FD strongly, KID only in its
variance), so every row scores the same number: with K samples per image, each of the K sets
of N outputs is scored and the K scores are averaged. Sharded, the ranks' features are gathered
before scoring, so the numbers are those of the whole set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from diffjscc.data.folder import label_prefix
from diffjscc.evaluation.classifier import CLASSIFIER_NOTE, LoadedClassifier, classifier_features
from diffjscc.runtime.device import full_fp32
from diffjscc.runtime.distributed import all_gather_cat, all_reduce_sum
from diffjscc.runtime.seeding import Stream, stream_seed

__all__ = ["KID_SUBSETS", "KID_SUBSET_SIZE", "RealismScorer", "frechet_distance", "kernel_distance",
           "labels_from_file_names"]

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000  # capped at the number of outputs


def frechet_distance(mean_a: Tensor, cov_a: Tensor, mean_b: Tensor, cov_b: Tensor) -> float:
    """Fréchet distance between N(mean_a, cov_a) and N(mean_b, cov_b), in float64.

    ``Tr((S_a S_b)^(1/2))`` is the sum of the square roots of the eigenvalues of ``S_a S_b``
    (real and non-negative for covariance matrices; rounding makes them slightly complex or
    negative, hence the real part clamped at 0).
    """
    mean_a, cov_a, mean_b, cov_b = (t.double() for t in (mean_a, cov_a, mean_b, cov_b))
    eigenvalues = torch.linalg.eigvals(cov_a @ cov_b).real.clamp(min=0)
    value = (mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * eigenvalues.sqrt().sum()
    return float(value)


def kernel_distance(features: Tensor, reference: Tensor, subsets: int = KID_SUBSETS,
                    subset_size: int = KID_SUBSET_SIZE, seed: int = 0) -> tuple[float, float]:
    """KID (mean, std over ``subsets`` random subsets of ``min(subset_size, N, M)`` rows of each set)."""
    from torchmetrics.image.kid import poly_mmd

    size = min(subset_size, features.shape[0], reference.shape[0])
    if size < 2:
        return math.nan, math.nan
    generator = torch.Generator().manual_seed(seed)
    values = torch.stack([
        poly_mmd(reference[torch.randperm(reference.shape[0], generator=generator)[:size]].double(),
                 features[torch.randperm(features.shape[0], generator=generator)[:size]].double())
        for _ in range(subsets)])
    return float(values.mean()), float(values.std(unbiased=False))


def labels_from_file_names(files: Sequence[Path], class_names: list[str]) -> tuple[Tensor | None, str | None]:
    """The files' classes (``{class}_{index}.png``) in the classifier's order, or None and why not."""
    index = {name: i for i, name in enumerate(class_names)}
    prefixes = [label_prefix(Path(f)) for f in files]
    if any(p not in index for p in prefixes):
        return None, "acc_cls not computed: the file names do not all name a class of the classifier"
    return torch.tensor([index[p] for p in prefixes]), None


class RealismScorer:
    """``fd_cls``, ``kid_cls`` (± std) and ``acc_cls`` of output sets, against a classifier's reference."""

    def __init__(self, classifier: LoadedClassifier, kid_subsets: int = KID_SUBSETS,
                 kid_subset_size: int = KID_SUBSET_SIZE, seed: int = 0) -> None:
        self.classifier = classifier
        self.kid_subsets = kid_subsets
        self.kid_subset_size = kid_subset_size
        self.seed = seed

    def describe(self, accuracy: bool = True) -> dict:
        """What the results document records about these scores."""
        classifier = self.classifier
        return {"note": CLASSIFIER_NOTE, "classifier": classifier.identity,
                "classifier_test_accuracy": classifier.test_accuracy,
                "reference": f"features of the classifier's {classifier.reference_count} training images "
                             f"(KID: a fixed subset of {classifier.reference_features.shape[0]})",
                "features": classifier.feature_dim, "kid": {"kernel": "(x.y / D + 1)^3", "subsets": self.kid_subsets,
                                                             "subset_size": self.kid_subset_size},
                "samples": "with K samples per image: each of the K sets of N outputs scored, the K scores averaged",
                "acc_cls": "top-1 accuracy against the source labels" if accuracy else None}

    def score(self, outputs: Tensor, labels: Tensor | None, repeats: int = 1, sharded: bool = False) -> dict:
        """Scores of uint8 ``outputs``: ``repeats`` sets of this rank's N images, sample-major (row
        ``k * N + i`` is sample k of image i); ``labels`` (N,) or None (no ``acc_cls``).

        ``sharded``: every rank passes its share and gets the scores of the union.
        """
        features, predicted = classifier_features(self.classifier.network, outputs)
        per_image = outputs.shape[0] // repeats if repeats else 0
        per_set = []  # (fd, kid, kid std) of each of the K sets
        for k in range(repeats):
            chosen = features[k * per_image:(k + 1) * per_image]
            if sharded:
                chosen = all_gather_cat(chosen)
            if chosen.shape[0] < 2:
                per_set.append((math.nan, math.nan, math.nan))
                continue
            fd = frechet_distance(chosen.mean(dim=0), torch.cov(chosen.T), self.classifier.reference_mean,
                                  self.classifier.reference_cov)
            per_set.append((fd, *kernel_distance(chosen, self.classifier.reference_features, self.kid_subsets,
                                                 self.kid_subset_size,
                                                 seed=stream_seed(self.seed, Stream.KID_SUBSETS, k))))
        means = [sum(values) / len(values) for values in zip(*per_set)] if per_set else [math.nan] * 3
        scores = {"fd_cls": means[0], "kid_cls": means[1], "kid_cls_std": means[2], "acc_cls": None}
        if labels is not None:
            scores["acc_cls"] = self._accuracy(predicted, labels.cpu().repeat(repeats), sharded)
        return scores

    @full_fp32()
    def accuracy(self, images: Tensor, labels: Tensor, sharded: bool = False) -> float:
        """``acc_cls`` alone, e.g. of the source images themselves (its ceiling)."""
        return self._accuracy(classifier_features(self.classifier.network, images)[1], labels.cpu(), sharded)

    @staticmethod
    def _accuracy(predicted: Tensor, labels: Tensor, sharded: bool) -> float:
        counts = torch.tensor([float((predicted == labels).sum()), float(labels.shape[0])], dtype=torch.float64)
        if sharded:
            counts = all_reduce_sum(counts)
        return float(counts[0] / counts[1]) if counts[1] else math.nan
