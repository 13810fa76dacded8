"""Scores of one set of outputs against its sources: per-image PSNR, SSIM and MS-SSIM (means over
images x samples), the spread of K samples per image, LPIPS and DISTS, and the distribution metrics
FID and ``fd_cls``/``kid_cls`` (with the classifier's ``acc_cls``), combinable exactly across ranks.

With K samples per image the distribution metrics score each of the K sets of N outputs and
average the K scores, so every row is scored on N outputs (their bias depends on the count).

Per-image metrics run on 8-bit outputs (the pixels a saved PNG holds), so a score never depends
on float values a file could not keep. Sharded (``sharded=True``), each rank passes its share of
the images and gets the scores of the union: sums of per-image PSNR/SSIM/MS-SSIM and the pair
count are summed over ranks, FID's feature statistics likewise
(:class:`~diffjscc.evaluation.fid.FIDScorer`), LPIPS and DISTS (means per rank) are weighted by count.

Every score is computed in full fp32 (TF32 off, :func:`~diffjscc.runtime.device.full_fp32`),
even where the receivers ran with TF32 on a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from diffjscc.errors import UserError
from diffjscc.evaluation.fid import FIDScorer
from diffjscc.evaluation.metrics import ms_ssim_per_image, psnr_per_image, ssim_per_image, to_uint8
from diffjscc.evaluation.perceptual import PERCEPTUAL_METRICS, PerceptualScorer
from diffjscc.evaluation.realism import RealismScorer
from diffjscc.runtime.device import full_fp32
from diffjscc.runtime.distributed import all_reduce_sum
from diffjscc.whole_image import pixel_spread

__all__ = ["prepare_fid_reference", "score_outputs"]


def _images_float(u8: torch.Tensor) -> torch.Tensor:
    return u8.float() / 255.0


@full_fp32()  # every score in full fp32, whatever the receiver ran under
def score_outputs(source: torch.Tensor, outputs: torch.Tensor, fid: FIDScorer | None = None,
                  perceptual: PerceptualScorer | None = None, batch: int = 256, sharded: bool = False,
                  realism: RealismScorer | None = None, labels: torch.Tensor | None = None,
                  samples: int | None = None) -> dict:
    """PSNR, SSIM, MS-SSIM (per-image means), LPIPS, DISTS, FID and the classifier's ``fd_cls``,
    ``kid_cls`` (± ``kid_cls_std``) and ``acc_cls`` of uint8 outputs against uint8 sources.

    ``outputs`` may hold K samples per source, ordered sample-major (row ``k * N + i`` is sample
    ``k`` of image ``i``); per-image metrics then average over all N * K pairs, distribution
    metrics over the K sets of N. ``labels``: the sources' classes in the classifier's order
    (None: no ``acc_cls``). ``samples`` (K) must be given when sharded, since a rank may hold no
    images; otherwise it is read off the shapes.

    ``sharded``: ``source``/``outputs`` are this rank's share (possibly empty); every rank calls
    this and gets the scores of the union (sums and counts combined over ranks).
    """
    if source.dtype != torch.uint8 or outputs.dtype != torch.uint8:
        raise ValueError("score_outputs takes uint8 images")
    if samples is None and sharded:
        raise ValueError("sharded scoring needs samples=K")
    repeats = samples if samples is not None else (outputs.shape[0] // source.shape[0] if source.shape[0] else 1)
    if repeats * source.shape[0] != outputs.shape[0]:
        raise ValueError(f"{outputs.shape[0]} outputs for {source.shape[0]} sources")
    target = source.repeat(repeats, 1, 1, 1)
    sums = torch.zeros(5, dtype=torch.float64)  # psnr, ssim, ms_ssim sums; number of pairs; spread sum
    for start in range(0, outputs.shape[0], batch):
        x, y = _images_float(target[start:start + batch]), _images_float(outputs[start:start + batch])
        sums[0] += psnr_per_image(x, y).double().sum()
        sums[1] += ssim_per_image(x, y).double().sum()
        sums[2] += ms_ssim_per_image(x, y).double().sum()
    sums[3] = outputs.shape[0]
    if repeats > 1:  # each image's K outputs: rows i, N + i, 2N + i, ...
        per_set = outputs.reshape(repeats, source.shape[0], *outputs.shape[1:])
        sums[4] = sum(float(pixel_spread(per_set[:, i]).mean()) for i in range(source.shape[0]))
    held = [] if perceptual is None else [name for name in PERCEPTUAL_METRICS if name in perceptual.metrics]
    distances = dict.fromkeys(held, 0.0)
    if held and outputs.shape[0]:
        distances.update({name: value for name, value in
                          perceptual.score(_images_float(target), _images_float(outputs)).items() if name in held})
    if sharded:
        sums = all_reduce_sum(sums)
        if held:  # means per rank: weight them by the rank's count
            weighted = torch.tensor([distances[name] * outputs.shape[0] for name in held], dtype=torch.float64)
            distances = dict(zip(held, (all_reduce_sum(weighted) / float(sums[3])).tolist()))
    count = float(sums[3])
    scores = {name: float(sums[i]) / count for i, name in enumerate(("psnr", "ssim", "ms_ssim"))}
    scores["spread"] = float(sums[4]) * repeats / count if repeats > 1 and count else None
    sets = [outputs[k * source.shape[0]:(k + 1) * source.shape[0]] for k in range(repeats)]
    scores["fid"] = sum(fid.score(part, sharded=sharded) for part in sets) / repeats if fid is not None else None
    scores.update({name: distances.get(name) for name in PERCEPTUAL_METRICS})
    if realism is not None:
        scores.update(realism.score(outputs, labels, repeats=repeats, sharded=sharded))
    return scores


@full_fp32()
def prepare_fid_reference(fid: FIDScorer, files: Sequence[Path], source_u8: torch.Tensor, data_dir: Path,
                  reference: Sequence[Path] | None = None, sharded: bool = False) -> dict:
    """Give ``fid`` its reference statistics; returns what the results document records about them.

    ``reference``: files whose statistics FID compares against (cached beside them); None means
    the evaluated source images themselves (``files``, already loaded as ``source_u8``).
    """
    from diffjscc.data import load_image_tensor

    if reference is None:
        info = {"reference": f"the {len(files)} evaluated source images of {data_dir}"}
        index = {path: i for i, path in enumerate(files)}
        note = fid.reference_from_files(files, lambda paths: source_u8[[index[p] for p in paths]], sharded=sharded)
    else:
        info = {"reference": f"{len(reference)} images of {Path(reference[0]).parent}"}

        def load(paths: Sequence[Path]) -> torch.Tensor:
            tensors = [load_image_tensor(p) for p in paths]
            if len({t.shape for t in tensors}) > 1:
                raise UserError("--fid-ref images must all have the same size")
            return to_uint8(torch.stack(tensors))

        note = fid.reference_from_files(reference, load, sharded=sharded)
    info["reference_note"] = note
    return info
