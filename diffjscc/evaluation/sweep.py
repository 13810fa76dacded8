"""The evaluation protocol of ``diffjscc evaluate``: checkpoints x SNRs x receivers, and the
digital baselines, scored the same way, in one results document.

For each checkpoint, each SNR (dB) and each receiver it has (:mod:`diffjscc.receivers`), one row:
the Deep JSCC decoder, and the diffusion receivers of the ``--start`` modes asked for (a Gaussian
start, the mean of K samples, the ORACLE inversion start, flagged ``oracle: true``), and with
``controls`` the control rows ``source`` and ``control_noise`` (flagged ``control: true``); then
one row per digital codec + ideal channel code (:mod:`diffjscc.evaluation.digital`).

Every receiver of one checkpoint at one SNR sees the same received latent y (same channel
noise), and every checkpoint sees the same noise realisation (seeded by ``seed``), so rows are
paired comparisons. Scores: :mod:`~diffjscc.evaluation.scoring`.

Noise. Batch ``b`` (of ``batch_size`` images, in file order) draws its channel noise and its
sampling noise from generators seeded by (``seed``, ``b``) alone
(:func:`~diffjscc.runtime.seeding.batch_seeds`), the same for every checkpoint and SNR; the
receivers draw from the sampling generator in table order. An image's noise thus depends on
the seed and the batch size, never on how many processes run the evaluation.

Sharded (under ``torchrun`` / ``mpiexec`` / ``srun``, once the process group is up): each rank
takes a contiguous block of the batches (and of the images, for the digital baselines), and the
scores are combined exactly (the digital baselines' byte sums and lost counts too), so every
number is the one a single process computes, up to float summation order. Rank 0 alone prints;
every rank returns the same document, and callers write it on rank 0 only.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from diffjscc.channel import Channel, bandwidth_ratio
from diffjscc.config import CHANNELS, EQUALIZERS, FADING_CHANNELS, START_MODES
from diffjscc.data.folder import subset_indices
from diffjscc.diffusion.samplers import check_guidance_scale, check_spacing, resolve_sampler, sampling_eta
from diffjscc.errors import UserError
from diffjscc.evaluation.digital import (
    ADAPTIVE,
    CHANNEL_CODES,
    CODECS,
    HEADERS,
    DigitalLink,
    LdpcLink,
    LinkOutcome,
    byte_budget,
    capacity_bits_per_use,
    codec_available,
)
from diffjscc.evaluation.codecs import HEIF_MISSING, QualitySearch
from diffjscc.evaluation.link import MCS_TABLE, check_digital_channel
from diffjscc.evaluation.fid import FIDScorer
from diffjscc.evaluation.patches import PatchRealism
from diffjscc.evaluation.perceptual import PERCEPTUAL_METRICS, PerceptualScorer
from diffjscc.evaluation.metrics import SSIM_KERNEL_SIZE, ms_ssim_per_image, psnr_per_image, ssim_per_image, to_uint8
from diffjscc.evaluation.realism import RealismScorer, labels_from_file_names
from diffjscc.evaluation.report import SweepConsole, realism_verdicts
from diffjscc.evaluation.results import finish_rows, results_document
from diffjscc.evaluation.scoring import prepare_fid_reference, score_outputs
from diffjscc.receivers import Receiver, ReceiveContext, available, receive
from diffjscc.runtime.device import bf16_enabled, numerics
from diffjscc.runtime.distributed import all_gather_cat, all_reduce_sum, get_world_size, shard_range
from diffjscc.runtime.seeding import batch_seeds
from diffjscc.system import TransmissionSystem, build_channel, load_system
from diffjscc.whole_image import pad_for_windows, pixel_spread, transmitted_symbols

__all__ = ["EvalModel", "ImageSelection", "Protocol", "load_models", "run_protocol", "select_images"]

DEFAULT_MEAN_SAMPLES = 4
LDPC_NOTE = ("LDPC rows: 5G NR LDPC (Sionna, rate-matched, BP 20 iterations) + Gray QAM, Es/N0 = SNR, one QAM symbol "
             "= 2 real channel uses; codewords <= 8192 coded bits, 5G CRC bits paid; the image is lost (mean colour) "
             "if its file does not fit or any codeword carrying it fails, drawn from a BLER table measured once on "
             "random codewords (block fading: the AWGN BLER at SNR + 10 log10 |h|^2, one h per image); the "
             "adaptive row picks per SNR the most efficient MCS whose predicted frame loss on random codewords is "
             "<= 10 % (never tuned on the scored images); n_symbols: the real channel uses the frame actually uses")


@dataclass
class EvalModel:
    """One checkpoint to evaluate; ``label`` names it in tables (its run folder by default)."""

    label: str
    checkpoint: Path
    system: TransmissionSystem


def load_models(paths: Sequence[Path], device: torch.device | str = "cpu",
                names: Sequence[str | None] | None = None) -> list[EvalModel]:
    """Load checkpoints (EMA weights, eval mode) and give each a unique short label: its entry of
    ``names`` (a shipped model's name), else its run folder's name (or folder/file when those clash)."""
    if not paths:
        raise UserError("give at least one --checkpoint or --model")
    names = list(names) if names is not None else [None] * len(paths)
    labels = [name or Path(p).parent.name or Path(p).stem for p, name in zip(paths, names)]
    if len(set(labels)) < len(labels):
        labels = [name or (f"{Path(p).parent.name}/{Path(p).stem}" if Path(p).parent.name else Path(p).stem)
                  for p, name in zip(paths, names)]
    if len(set(labels)) < len(labels):
        raise UserError("the same --checkpoint or --model is given twice")
    models = []
    for label, path in zip(labels, paths):
        system = load_system(str(path), device=device)
        if system.encoder is None:
            raise UserError(f"{path} is an unconditional model: it has no transmitter to evaluate over a channel")
        models.append(EvalModel(label, Path(path), system))
    sizes = {m.system.cfg.image_size for m in models}
    if len(sizes) > 1:
        raise UserError(f"the checkpoints have different image sizes {sorted(sizes)}; evaluate them separately")
    return models


def _equalizer_column(channel: Channel) -> str | None:
    """The equaliser a row's received symbols went through: fading channels with CSI only."""
    return channel.equalizer if channel.kind in FADING_CHANNELS and channel.csi else None


def _sampler_column(receiver: Receiver, protocol: "Protocol", steps: int) -> str:
    """The sampler a row's outputs came from; "-" without diffusion."""
    if not receiver.uses_unet:
        return "-"
    return resolve_sampler(protocol.sampler, steps, receiver.start, protocol.eta)


@dataclass
class Protocol:
    """What to run. ``samples_per_image`` (K) defaults to 4 when ``mean`` is asked for, else 1."""

    snrs: list[float]
    starts: tuple[str, ...] = ("gaussian",)
    steps: int | None = None  # sampling steps; None: each model's own sample_steps
    sampler: str = "auto"
    guidance: float = 1.0
    eta: float = 0.0
    spacing: str | None = None  # the sampling timesteps; None: each model's sample_spacing
    samples_per_image: int | None = None
    limit: int | None = None
    seed: int = 0
    batch_size: int = 64
    channel: str | None = None
    equalizer: str | None = None  # fading with CSI: mmse | zf; None: each model's own (EQUALIZERS)
    digital: tuple[str, ...] = ()
    channel_codes: tuple[str, ...] = ("ideal",)  # of the digital rows: ideal and/or ldpc
    mcs: tuple[str, ...] = ()  # LDPC rows: MCS names and/or "adaptive" (empty: every MCS and adaptive)
    headers: tuple[str, ...] = ("file",)  # header accounting of the digital rows
    controls: bool = False
    subset: str = "spread"  # which ``limit`` files: evenly spaced over the folder, or the first (SUBSETS)
    skip_bad: bool = False  # leave unreadable images out (recorded) instead of refusing
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.snrs:
            raise UserError("give at least one SNR")
        for start in self.starts:
            if start not in START_MODES:
                raise UserError(f"unknown start mode {start!r}; expected {', '.join(START_MODES)}")
        if not self.starts:
            raise UserError("give at least one start mode")
        for name, value in (("steps", self.steps if self.steps is not None else 1), ("batch-size", self.batch_size),
                            ("limit", self.limit if self.limit is not None else 1),
                            ("samples-per-image", self.samples_per_image if self.samples_per_image is not None else 1)):
            if value <= 0:
                raise UserError(f"--{name} must be positive")
        if "mean" in self.starts and self.samples_per_image == 1:
            raise UserError("--start mean averages K posterior samples: give --samples-per-image K >= 2")
        resolve_sampler(self.sampler, self.steps or 1, eta=self.eta)  # a one-line error for a bad sampler or eta
        subset_indices(1, None, self.subset)  # and for an unknown subset
        if self.equalizer is not None and self.equalizer not in EQUALIZERS:
            raise UserError(f"unknown equalizer {self.equalizer!r}; expected one of {', '.join(EQUALIZERS)}")
        check_guidance_scale(self.guidance)
        if self.spacing is not None:
            check_spacing(self.spacing)
        if self.channel is not None and self.channel not in CHANNELS:
            raise UserError(f"unknown channel {self.channel!r}; expected {', '.join(CHANNELS)}")
        for codec in self.digital:
            if codec not in CODECS:
                raise UserError(f"unknown codec {codec!r}; expected {', '.join(CODECS)}")
        for values, known, option in ((self.channel_codes, CHANNEL_CODES, "--channel-code"),
                                      (self.mcs, (*MCS_TABLE, ADAPTIVE), "--mcs"),
                                      (self.headers, HEADERS, "--header")):
            for value in values:
                if value not in known:
                    raise UserError(f"{option}: unknown {value!r}; expected {', '.join(known)}")
        if not self.channel_codes or not self.headers:
            raise UserError("--channel-code and --header need at least one value")

    @property
    def mcs_rows(self) -> tuple[str, ...]:
        """The LDPC rows' MCS names (and "adaptive"), in table order; none without ldpc."""
        if "ldpc" not in self.channel_codes:
            return ()
        return self.mcs or (*MCS_TABLE, ADAPTIVE)

    def steps_for(self, model: "EvalModel") -> int:
        """The sampling steps of ``model``'s diffusion rows: ``steps``, else its own ``sample_steps``
        (what a shipped receiver was trained and scored at)."""
        return self.steps if self.steps is not None else model.system.cfg.sample_steps

    @property
    def samples(self) -> int:
        if self.samples_per_image is not None:
            return self.samples_per_image
        return DEFAULT_MEAN_SAMPLES if "mean" in self.starts else 1


def _fingerprint(*modules: torch.nn.Module) -> str:
    """Hash of the weights of ``modules``: the same Deep JSCC in two checkpoints is scored once."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _my_batches(n: int, size: int) -> tuple[list[tuple[int, slice]], slice]:
    """This rank's contiguous block of (index, batch) and the slice of images they cover."""
    batches = list(enumerate(slice(start, min(start + size, n)) for start in range(0, n, size)))
    share = shard_range(len(batches))
    mine = batches[share.start:share.stop]
    covered = slice(mine[0][1].start, mine[-1][1].stop) if mine else slice(0, 0)
    return mine, covered


@dataclass
class ImageSelection:
    """The images scored, which files they are, and the unreadable files left out (with why)."""

    images: torch.Tensor | list[torch.Tensor]  # one batch when all are the models' size, else each its own
    labels: torch.Tensor | None
    files: list[Path]
    total: int  # readable images in the folder
    skipped: list[tuple[Path, str]]

    def describe(self, subset: str, limit: int | None) -> dict:
        """The results' record of the images: how they were chosen, their names, what was skipped."""
        how = ("all" if len(self.files) == self.total else
               f"{len(self.files)} of {self.total}: " + ("evenly spaced, file i*N//n in name order" if subset == "spread"
                                                         else "the first in name order"))
        return {"chosen": how, "subset": subset, "limit": limit, "readable": self.total,
                "files": [p.name for p in self.files],
                "skipped": [{"file": p.name, "reason": reason} for p, reason in self.skipped]}


def select_images(data_dir: Path, image_size: int, with_labels: bool, limit: int | None,
                  subset: str = "spread", skip_bad: bool = False, device: torch.device | str = "cpu") -> ImageSelection:
    """The ``limit`` images of ``data_dir`` to score (:func:`~diffjscc.data.folder.subset_indices`):
    one (N, 3, S, S) batch when all are the models' size S, else the list of (3, H, W) images of
    their own sizes (whole images, photos). An unreadable image is refused in one line naming it,
    so that N never changes silently between runs that are compared; with ``skip_bad`` it is left
    out and listed."""
    from diffjscc.data import ImageFolderDataset, load_image_tensor

    with warnings.catch_warnings():  # the dataset's warning about skipped files: reported here instead
        warnings.simplefilter("ignore", UserWarning)
        dataset = ImageFolderDataset(data_dir, with_labels=with_labels)  # any size: photos are sent whole
    skipped = []
    for path in dataset.skipped:
        try:
            load_image_tensor(path)
            reason = "corrupt or truncated"  # passed a full decode, failed the folder's check
        except UserError as err:
            reason = str(err).removeprefix(f"corrupt or unreadable image file {path}: ")
        skipped.append((path, reason))
    if skipped and not skip_bad:
        path, reason = skipped[0]
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        raise UserError(f"unreadable image {path}: {reason}{more}; fix or remove it, or pass --skip-bad to go on "
                        f"without it (the skipped files are recorded in the results)")
    indices = subset_indices(len(dataset), limit, subset)
    items = [dataset[i] for i in indices]
    labels = torch.tensor([label for _, label in items], device=device) if with_labels else None
    tensors = [image.to(device) for image, _ in items]
    whole = any(tuple(t.shape[-2:]) != (image_size, image_size) for t in tensors)
    return ImageSelection(tensors if whole else torch.stack(tensors), labels, [dataset.files[i] for i in indices],
                          len(dataset), skipped)


def _model_receivers(model: EvalModel, protocol: Protocol, deep_jscc_seen: dict[str, str],
                     notes: list[str]) -> list[Receiver]:
    """The receivers to score for ``model``, in table order: diffusion receivers of the start
    modes asked for, every other receiver it has; those without a UNet depend on the encoder and
    decoder alone, so they are scored once per distinct weights and channel."""
    system = model.system
    if system.unet is None and set(protocol.starts) - {"gaussian"}:
        notes.append(f"{model.label} ({system.cfg.mode}) has no diffusion receiver: start modes do not apply")
    chosen = [r for r in available(system, controls=protocol.controls)
              if r.start is None or r.start in protocol.starts]
    if protocol.controls and not any(r.name == "control_noise" for r in chosen):
        notes.append(f"{model.label} has no control_noise row: it needs a Deep JSCC decoder and a diffusion receiver")
    if system.decoder is not None:
        key = _fingerprint(system.encoder, system.decoder) + (protocol.channel or system.cfg.channel)
        if key in deep_jscc_seen:
            chosen = [r for r in chosen if r.uses_unet]
            notes.append(f"Deep JSCC of {model.label} has the same weights as that of {deep_jscc_seen[key]}: "
                         f"scored once")
        deep_jscc_seen.setdefault(key, model.label)
    return chosen


def _output_sets(chunks: list[torch.Tensor], sharded: bool) -> int:
    """Outputs per image of a receiver (K posterior samples, or 1), known to a rank with no batches too."""
    local = torch.tensor([chunks[0].shape[0] if chunks else 0, 1 if chunks else 0], dtype=torch.long)
    total = all_reduce_sum(local) if sharded else local
    return int(total[0] // max(int(total[1]), 1)) or 1


@torch.no_grad()
def _model_rows(model: EvalModel, receivers: list[Receiver], images: torch.Tensor, labels: torch.Tensor | None,
                source_u8: torch.Tensor, protocol: Protocol, fid: FIDScorer | None,
                perceptual: PerceptualScorer | None,
                console: SweepConsole, realism: RealismScorer | None = None,
                realism_labels: torch.Tensor | None = None) -> list[dict]:
    system, cfg = model.system, model.system.cfg
    device = next(system.parameters()).device
    kind = protocol.channel or cfg.channel
    channel = build_channel(cfg, kind, protocol.equalizer).eval()
    K = protocol.samples
    steps = protocol.steps_for(model)
    use_labels = labels is not None and cfg.class_cond
    mine, covered = _my_batches(images.shape[0], protocol.batch_size)
    my_source = source_u8[covered]
    my_labels = realism_labels[covered] if realism_labels is not None else None
    sharded = get_world_size() > 1
    rows = []
    for snr in protocol.snrs:
        outputs: dict[str, list[torch.Tensor]] = {r.name: [] for r in receivers}  # (S, n, 3, H, W) per batch
        for index, part in mine:
            channel_seed, sample_seed = batch_seeds(protocol.seed, index)
            g_channel = torch.Generator(device=device).manual_seed(channel_seed)
            x = images[part].to(device)
            received, told = system.transmit(x, snr_db=snr, generator=g_channel, channel=channel,
                                             return_receiver_snr=True)
            context = ReceiveContext(snr_db=told, steps=steps, sampler=protocol.sampler, samples=K, source=x,
                                     guidance=protocol.guidance, eta=protocol.eta, spacing=protocol.spacing,
                                     generator=torch.Generator(device=device).manual_seed(sample_seed),
                                     class_labels=labels[part].to(device) if use_labels else None)
            for receiver in receivers:  # table order: the order they draw sampling noise in
                outputs[receiver.name].append(to_uint8(receive(system, receiver, received, context)).cpu())
            console.advance(x.shape[0])
        base = {"model": model.label, "checkpoint": str(model.checkpoint), "mode": cfg.mode, "channel": kind,
                "equalizer": _equalizer_column(channel), "snr_db": float(snr), "k_over_n": bandwidth_ratio(cfg.latent_dim, (3, cfg.image_size, cfg.image_size)),
                "n_symbols": cfg.latent_dim, "seed": protocol.seed, "n": int(images.shape[0])}
        for receiver in receivers:  # the same on every rank, whether it had batches or not
            chunks = outputs[receiver.name]
            scored = torch.cat(chunks, dim=1).flatten(0, 1) if chunks else my_source[:0]  # sample-major
            row = dict(base, system=receiver.describe(receiver.label, samples=K), receiver=receiver.family,
                       steps=steps if receiver.uses_unet else 0, start=receiver.start or "-",
                       sampler=_sampler_column(receiver, protocol, steps),
                       guidance=protocol.guidance if receiver.uses_unet else None,
                       eta=sampling_eta(protocol.eta, receiver.start) if receiver.uses_unet else None,
                       spacing=(protocol.spacing or cfg.sample_spacing) if receiver.uses_unet else None,
                       oracle=receiver.oracle, control=receiver.control,
                       samples_per_image=K if receiver.per_sample else 1)
            row.update(score_outputs(my_source, scored, fid, perceptual, sharded=sharded, realism=realism,
                                     labels=my_labels, samples=_output_sets(chunks, sharded)))
            rows.append(row)
            console.row(row, receiver.describe(receiver.note, samples=K))
    return rows


ROW_MEANS = ("psnr", "ssim", "ms_ssim", *PERCEPTUAL_METRICS, "spread", "patch_fd")
"""The scores of a whole-image row that are means of its per-image values."""
PER_IMAGE_SCORES = (*ROW_MEANS, "colour_error", "seconds")
"""What the per-image records of a whole-image evaluation hold for each image, row by row:
also ``colour_error``, the largest per-channel mean error in 8-bit levels (colours pulled towards
a training set's show there), and ``seconds``, the receiver's time for the image."""
OutputHook = Callable[[str, str, float, Path, torch.Tensor], None]
"""``keep_output(model label, receiver name, snr_db, file, first output (3, H, W) uint8)``."""


def _check_whole_images(models: Sequence[EvalModel]) -> None:
    """Whole images need a fully convolutional encoder, and a diffusion receiver without classes."""
    for model in models:
        cfg = model.system.cfg
        if cfg.encoder != "jscc":
            raise UserError(f"{model.label}: images not of the model's {cfg.image_size}x{cfg.image_size} are sent "
                            f"whole, which needs a fully convolutional Deep JSCC encoder; this one's is {cfg.encoder!r}")
        if cfg.class_cond and model.system.unet is not None:
            raise UserError(f"{model.label}: a class-conditional diffusion receiver cannot take whole images of "
                            f"other sizes than {cfg.image_size}x{cfg.image_size}")


def _image_scores(source_u8: torch.Tensor, outputs_u8: torch.Tensor, perceptual: PerceptualScorer | None,
                  patch_fd: float | None = None, seconds: float = math.nan) -> list[float]:
    """:data:`PER_IMAGE_SCORES` of one image's S outputs (S, 3, H, W) against its source (3, H, W):
    means over the S outputs; NaN where a score does not apply (MS-SSIM under 32 px, LPIPS or
    DISTS unavailable, the spread of one output, no patch network)."""
    x = source_u8[None].float().div(255).expand_as(outputs_u8)
    y = outputs_u8.float() / 255
    small = min(source_u8.shape[-2:]) < 32
    distances = perceptual.score(x, y) if perceptual is not None else dict.fromkeys(PERCEPTUAL_METRICS)
    return [float(psnr_per_image(x, y).double().mean()),
            float(ssim_per_image(x, y).double().mean()) if min(source_u8.shape[-2:]) >= SSIM_KERNEL_SIZE else math.nan,
            math.nan if small else float(ms_ssim_per_image(x, y).double().mean()),
            *(math.nan if value is None else value for value in distances.values()),
            float(pixel_spread(outputs_u8).mean()) if outputs_u8.shape[0] > 1 else math.nan,
            math.nan if patch_fd is None else patch_fd,
            float((outputs_u8.double().mean(dim=(2, 3)) - source_u8.double().mean(dim=(1, 2))).abs().amax(1).mean()),
            seconds]


def _patch_scores(patches: PatchRealism, outputs_u8: torch.Tensor, reference: torch.Tensor,
                  sets: list[list[torch.Tensor]]) -> float | None:
    """One image's ``patch_fd`` (mean over its S outputs) against its own source patches'
    features ``reference``; appends each output's features to ``sets[k]`` for the row's score."""
    values = []
    for k in range(outputs_u8.shape[0]):
        features = patches.features(outputs_u8[k])
        sets[k].append(features)
        values.append(patches.score(features, reference)["patch_fd"])
    return None if any(v is None for v in values) else sum(values) / len(values)


def _row_patch_scores(patches: PatchRealism, sets: list[list[torch.Tensor]], reference: torch.Tensor,
                      sharded: bool) -> dict:
    """A row's ``patch_fd``/``patch_kid``: each of its S sets of output patches (all images)
    against all the source images' patches, the S scores averaged."""
    scores = []
    for chosen in sets:
        features = torch.cat(chosen) if chosen else reference[:0]
        scores.append(patches.score(all_gather_cat(features) if sharded else features, reference))
    means = {}
    for key in ("patch_fd", "patch_kid"):
        values = [score[key] for score in scores]
        means[key] = None if any(v is None for v in values) else sum(values) / len(values)
    return means


@torch.no_grad()
def _whole_image_rows(model: EvalModel, receivers: list[Receiver], images: list[torch.Tensor], files: list[Path],
                      protocol: Protocol, perceptual: PerceptualScorer | None, console: SweepConsole,
                      patches: PatchRealism | None = None,
                      source_patches: dict[int, torch.Tensor] | None = None,
                      reference: torch.Tensor | None = None,
                      keep_output: OutputHook | None = None) -> tuple[list[dict], list[dict]]:
    """Rows of images of any size, each sent whole as ``transmit`` sends it
    (:mod:`diffjscc.whole_image`: edges repeated to the windows' grid, one received latent,
    the diffusion receiver through blended windows) and scored at its own size; and one
    record per image and row (:data:`PER_IMAGE_SCORES`). A row's PSNR (SSIM, MS-SSIM, LPIPS, DISTS,
    spread) is the mean of the per-image values, as the literature reports Kodak; its k/n is
    the symbols of all images over their RGB values. Image ``i`` draws its noise from
    :func:`~diffjscc.runtime.seeding.batch_seeds` (seed, i): a batch of one. With ``patches``,
    ``patch_fd``/``patch_kid`` against ``reference`` (all source patches' features; per image
    against ``source_patches[i]``)."""
    system, cfg = model.system, model.system.cfg
    device = next(system.parameters()).device
    kind = protocol.channel or cfg.channel
    channel = build_channel(cfg, kind, protocol.equalizer).eval()
    K = protocol.samples
    steps = protocol.steps_for(model)
    share = shard_range(len(images))
    sharded = get_world_size() > 1
    rows, records = [], []
    for snr in protocol.snrs:
        scores: dict[str, list[list[float]]] = {r.name: [] for r in receivers}  # per image of this rank
        sets: dict[str, list[list[torch.Tensor]]] = {r.name: [[] for _ in range(K if r.per_sample else 1)]
                                                     for r in receivers}  # patch features of each output set
        symbols = []
        for index in share:
            channel_seed, sample_seed = batch_seeds(protocol.seed, index)
            image = images[index]
            height, width = image.shape[-2:]
            x = pad_for_windows(image[None].to(device), cfg.image_size)
            received, told = system.transmit(x, snr_db=snr, channel=channel, return_receiver_snr=True,
                                             generator=torch.Generator(device=device).manual_seed(channel_seed))
            symbols.append(received[0].numel())
            context = ReceiveContext(snr_db=told, steps=steps, sampler=protocol.sampler, samples=K, source=x,
                                     guidance=protocol.guidance, eta=protocol.eta, spacing=protocol.spacing,
                                     generator=torch.Generator(device=device).manual_seed(sample_seed))
            source_u8 = to_uint8(image)
            for receiver in receivers:  # table order: the order they draw sampling noise in
                started = time.perf_counter()
                outputs = to_uint8(receive(system, receiver, received, context)[:, 0, :, :height, :width]).cpu()
                seconds = time.perf_counter() - started
                if keep_output is not None:
                    keep_output(model.label, receiver.name, float(snr), files[index], outputs[0])
                patch_fd = (_patch_scores(patches, outputs, source_patches[index], sets[receiver.name])
                            if patches is not None else None)
                scores[receiver.name].append([float(index), float(symbols[-1])]
                                             + _image_scores(source_u8, outputs, perceptual, patch_fd, seconds))
            console.advance(1)
        for receiver in receivers:  # the same on every rank: every image's numbers, in image order
            local = torch.tensor(scores[receiver.name], dtype=torch.float64).reshape(-1, 2 + len(PER_IMAGE_SCORES))
            table = all_gather_cat(local) if sharded else local
            table = table[table[:, 0].argsort()]
            per_image = [dict(zip(("symbols", *PER_IMAGE_SCORES), values.tolist())) for values in table[:, 1:]]
            total_symbols = sum(record["symbols"] for record in per_image)
            source_values = sum(3 * images[i].shape[-2] * images[i].shape[-1] for i in range(len(images)))
            means = {}
            for name in ROW_MEANS:
                values = [record[name] for record in per_image]
                means[name] = None if any(math.isnan(v) for v in values) else sum(values) / len(values)
            row = {"model": model.label, "checkpoint": str(model.checkpoint), "mode": cfg.mode, "channel": kind,
                   "equalizer": _equalizer_column(channel), "snr_db": float(snr), "k_over_n": total_symbols / source_values,
                   "n_symbols": round(total_symbols / len(images)), "seed": protocol.seed, "n": len(images),
                   "system": receiver.describe(receiver.label, samples=K), "receiver": receiver.family,
                   "steps": steps if receiver.uses_unet else 0, "start": receiver.start or "-",
                   "sampler": _sampler_column(receiver, protocol, steps),
                   "guidance": protocol.guidance if receiver.uses_unet else None,
                   "eta": sampling_eta(protocol.eta, receiver.start) if receiver.uses_unet else None,
                   "spacing": (protocol.spacing or cfg.sample_spacing) if receiver.uses_unet else None,
                   "oracle": receiver.oracle, "control": receiver.control,
                   "samples_per_image": K if receiver.per_sample else 1, "fid": None,
                   **means}
            if patches is not None:
                row.update(_row_patch_scores(patches, sets[receiver.name], reference, sharded))
            rows.append(row)
            for i, record in enumerate(per_image):
                height, width = images[i].shape[-2:]
                records.append({"model": model.label, "system": row["system"], "snr_db": float(snr),
                                "file": files[i].name, "width": int(width), "height": int(height),
                                "n_symbols": int(record["symbols"]),
                                "k_over_n": record["symbols"] / (3 * height * width),
                                **{name: None if math.isnan(record[name]) else record[name]
                                   for name in PER_IMAGE_SCORES}})
            console.row(row, receiver.describe(receiver.note, samples=K))
    return rows, records


DIGITAL_RECORD = ("index", "n_symbols", "budget_bytes", "bytes", "fitted", "lost", "code_rate", "mcs_index")
"""What a digital row keeps of each whole image, before its :data:`PER_IMAGE_SCORES`."""


def _digital_schemes(protocol: Protocol) -> list[tuple[str, str]]:
    """(channel_code, mcs) of the digital rows, in row order: the ideal code, then each LDPC MCS."""
    schemes: list[tuple[str, str]] = [("ideal", "-")] if "ideal" in protocol.channel_codes else []
    return schemes + [("ldpc", mcs) for mcs in protocol.mcs_rows]


@torch.no_grad()
def _whole_digital_rows(images: list[torch.Tensor], files: list[Path], codecs: list[str],
                        groups: list[tuple[str, int, int]], protocol: Protocol, perceptual: PerceptualScorer | None,
                        console: SweepConsole, patches: PatchRealism | None = None,
                        source_patches: dict[int, torch.Tensor] | None = None,
                        reference: torch.Tensor | None = None) -> tuple[list[dict], list[dict]]:
    """Digital rows of images of any size: each image coded whole by the codec to the budget of
    the channel uses its JSCC comparison spends on it (``groups``: (channel, c_out, image_size)
    of the models; :func:`~diffjscc.whole_image.transmitted_symbols` per image, as the JSCC rows
    count them), over the ideal code or LDPC + QAM (its own frame, and under ``adaptive`` its own
    MCS, per image), and scored at its own size, as :func:`_whole_image_rows` scores the JSCC
    rows: a row's PSNR (SSIM, MS-SSIM, LPIPS, DISTS) is the mean of the per-image values, its ``k_over_n``
    that of the JSCC rows, its ``n_symbols`` the mean over images of the real channel uses sent.
    A lost image is the mean colour of all the images (pixel-weighted). Image ``i`` draws its
    codeword failures (and block fade) from (seed, i), as in :class:`~.digital.LdpcLink`."""
    share = shard_range(len(images))
    sharded = get_world_size() > 1
    sources = {i: to_uint8(images[i]).cpu() for i in share}
    total = torch.zeros(3, dtype=torch.float64)  # the set's mean colour: every rank holds every image
    for image in images:
        total += to_uint8(image).double().sum(dim=(1, 2))
    mean_colour = (total / sum(im.shape[-2] * im.shape[-1] for im in images)).round().to(torch.uint8).numpy()
    source_values = sum(3 * im.shape[-2] * im.shape[-1] for im in images)
    mcs_names = list(MCS_TABLE)
    rows, records = [], []
    row_patches: dict[tuple, dict] = {}  # a row's patch_fd/patch_kid, by the outputs it holds
    for name in codecs:
        codec = CODECS[name]
        searches, scored = {}, {}  # scored: an image's distinct outputs' scores and patch features
        for i in share:
            searches[i] = QualitySearch(codec, sources[i].permute(1, 2, 0).contiguous().numpy()[None])
            searches[i].mean_colour = mean_colour
        for kind, c_out, size in groups:
            jscc = {i: transmitted_symbols(c_out, size, *images[i].shape[-2:]) for i in range(len(images))}
            curves: dict[int, dict] = {}  # one BLER memo per frame size
            links = {i: LdpcLink(searches[i], kind, jscc[i], seed=protocol.seed, offset=i,
                                 curves=curves.setdefault(jscc[i], {})) for i in share} if protocol.mcs_rows else {}
            k_over_n = sum(jscc.values()) / source_values
            for snr in protocol.snrs:
                for header in protocol.headers:
                    for channel_code, mcs in _digital_schemes(protocol):
                        label = _digital_system(codec.label, channel_code, mcs, header)
                        sets = [[]]  # patch features of the outputs
                        local, outputs = [], []
                        for i in share:
                            started = time.perf_counter()
                            if channel_code == "ideal":
                                used, budget, rate, chosen = jscc[i], byte_budget(jscc[i], snr, kind), math.nan, -1
                                step = searches[i].fit(0, budget, header)
                                outcome = (LinkOutcome(searches[i].decoded(0, step)[None],
                                                       searches[i].encoded(0, step).size(header), 1, 0)
                                           if step is not None else
                                           LinkOutcome(np.broadcast_to(mean_colour, searches[i].images.shape), 0, 0, 1))
                            else:
                                picked = links[i].adaptive_mcs(snr) if mcs == ADAPTIVE else mcs
                                frame = links[i].frame(picked)
                                used, budget, chosen = frame.used_real, frame.budget_bytes, mcs_names.index(picked)
                                rate = frame.info_bits / frame.codeword_bits
                                outcome = links[i].deliver(picked, snr, header)
                            output = torch.from_numpy(np.array(outcome.images[0])).permute(2, 0, 1)[None]
                            seconds = time.perf_counter() - started
                            # Every SNR and MCS row delivers one of a few outputs (the codec's at a
                            # budget, or the lost image): each is scored once, by its bytes.
                            key = (i, hashlib.blake2b(output.numpy().tobytes(), digest_size=16).digest())
                            if key not in scored:
                                own: list[list[torch.Tensor]] = [[]]
                                patch_fd = (_patch_scores(patches, output, source_patches[i], own)
                                            if patches is not None else None)
                                scored[key] = (_image_scores(sources[i], output, perceptual, patch_fd), own[0])
                            scores, features = scored[key]
                            sets[0].extend(features)
                            outputs.append(key)
                            local.append([float(i), float(used), float(budget), float(outcome.sent_bytes),
                                          float(outcome.fitted), float(outcome.lost), rate, float(chosen)]
                                         + scores[:-1] + [seconds])
                            console.advance(1)
                        table = torch.tensor(local, dtype=torch.float64).reshape(
                            -1, len(DIGITAL_RECORD) + len(PER_IMAGE_SCORES))
                        table = all_gather_cat(table) if sharded else table
                        table = table[table[:, 0].argsort()]
                        per_image = [dict(zip((*DIGITAL_RECORD, *PER_IMAGE_SCORES), values.tolist()))
                                     for values in table]
                        n = len(images)
                        sent = sum(r["bytes"] for r in per_image)
                        fitted = sum(r["fitted"] for r in per_image)
                        lost = sum(r["lost"] for r in per_image)
                        means = {}
                        for score in ROW_MEANS:
                            values = [r[score] for r in per_image]
                            means[score] = None if any(math.isnan(v) for v in values) else sum(values) / n
                        fields: dict = {"channel_code": channel_code, "mcs": None if channel_code == "ideal" else mcs}
                        chosen_names = sorted({mcs_names[int(r["mcs_index"])] for r in per_image
                                               if r["mcs_index"] >= 0}, key=mcs_names.index)
                        if channel_code == "ideal":
                            capacity, capacity_name = capacity_bits_per_use(kind, snr)
                            fields.update(capacity_bits_per_use=capacity, capacity=capacity_name)
                        else:  # images of other sizes may pick other MCSs under "adaptive": all are named
                            fields.update(modulation="/".join(dict.fromkeys(MCS_TABLE[c].modulation
                                                                            for c in chosen_names)),
                                          code_rate=sum(r["code_rate"] for r in per_image) / n)
                        row = {"system": label, "receiver": "digital", "model": "", "mode": "digital",
                               "channel": kind, "snr_db": float(snr), "k_over_n": k_over_n,
                               "n_symbols": round(sum(r["n_symbols"] for r in per_image) / n),
                               "steps": 0, "sampler": "-", "guidance": None, "eta": None, "spacing": None,
                               "start": "-", "oracle": False, "control": False, "samples_per_image": 1,
                               "n": n, "seed": protocol.seed, "fid": None,
                               "budget_bytes": round(sum(r["budget_bytes"] for r in per_image) / n),
                               "mean_bytes": sent / fitted if fitted else 0.0, "lost_fraction": lost / n,
                               "bits_sent": 8 * sent / n, "codec": name, "header": header, "checkpoint": "",
                               **fields, **means}
                        if patches is not None:  # rows of the same outputs (all lost; a fixed MCS
                            # at each SNR it delivers) have the same scores; sharded, every rank
                            # gathers every row (a collective), its share of the outputs unknown
                            same = tuple(outputs)
                            if sharded or same not in row_patches:
                                row_patches[same] = _row_patch_scores(patches, sets, reference, sharded)
                            row.update(row_patches[same])
                        rows.append(row)
                        for i, record in enumerate(per_image):
                            height, width = images[i].shape[-2:]
                            records.append({"model": "", "system": label, "snr_db": float(snr),
                                            "file": files[i].name, "width": int(width), "height": int(height),
                                            "n_symbols": int(record["n_symbols"]),
                                            "k_over_n": record["n_symbols"] / (3 * height * width),
                                            **{score: None if math.isnan(record[score]) else record[score]
                                               for score in PER_IMAGE_SCORES},
                                            "jscc_n_symbols": jscc[i], "budget_bytes": int(record["budget_bytes"]),
                                            "bytes_sent": int(record["bytes"]), "lost": bool(record["lost"]),
                                            "mcs": (mcs_names[int(record["mcs_index"])]
                                                    if record["mcs_index"] >= 0 else None)})
                        console.row(row, f"MCS {', '.join(chosen_names)}" if mcs == ADAPTIVE else "")
    return rows, records


def _digital_system(label: str, channel_code: str, mcs: str, header: str) -> str:
    """A digital row's display label; the ideal code with whole files keeps today's ("WebP + ideal code")."""
    code = "ideal code" if channel_code == "ideal" else f"LDPC {mcs}"
    return f"{label}{' payload' if header == 'payload' else ''} + {code}"


def _digital_rows(source_u8: torch.Tensor, codecs: list[str], kinds_and_n: list[tuple[str, int, int]],
                  protocol: Protocol, fid: FIDScorer | None, perceptual: PerceptualScorer | None,
                  console: SweepConsole, realism: RealismScorer | None = None,
                  realism_labels: torch.Tensor | None = None) -> list[dict]:
    images = source_u8.permute(0, 2, 3, 1).contiguous().numpy()
    sharded = get_world_size() > 1
    share = shard_range(images.shape[0])  # this rank's images: codecs work per image
    mine, my_source = images[share.start:share.stop], source_u8[share.start:share.stop]
    my_labels = realism_labels[share.start:share.stop] if realism_labels is not None else None
    rows = []
    for name in codecs:
        ideal = DigitalLink(CODECS[name], mine)
        if sharded:  # a lost image is shown as the mean colour of the whole set, not of a share
            ideal.mean_colour = DigitalLink(CODECS[name], images).mean_colour
        for kind, n_symbols, size in kinds_and_n:
            ldpc = LdpcLink(ideal.search, kind, n_symbols, seed=protocol.seed, offset=share.start) \
                if protocol.mcs_rows else None
            for snr in protocol.snrs:
                for header in protocol.headers:
                    for channel_code, mcs in _digital_schemes(protocol):
                        fields = {"channel_code": channel_code, "mcs": None if channel_code == "ideal" else mcs}
                        if channel_code == "ideal":
                            capacity, capacity_name = capacity_bits_per_use(kind, snr)
                            budget = byte_budget(n_symbols, snr, kind)
                            outcome = ideal.deliver(budget, header) if len(mine) else LinkOutcome(mine, 0, 0, 0)
                            fields.update(n_symbols=n_symbols, capacity_bits_per_use=capacity, capacity=capacity_name)
                        else:
                            chosen = ldpc.adaptive_mcs(snr) if mcs == ADAPTIVE else mcs
                            frame = ldpc.frame(chosen)
                            budget = frame.budget_bytes
                            outcome = ldpc.deliver(chosen, snr, header) if len(mine) else LinkOutcome(mine, 0, 0, 0)
                            fields.update(n_symbols=frame.used_real, modulation=MCS_TABLE[chosen].modulation,
                                          code_rate=frame.info_bits / frame.codeword_bits,
                                          mcs_chosen=chosen)
                        sums = [outcome.sent_bytes, outcome.fitted, outcome.lost]
                        if sharded:  # byte sum, fitted and lost counts (exact integers) over ranks
                            sums = all_reduce_sum(torch.tensor(sums, dtype=torch.long)).tolist()
                        sent, fitted, lost = sums
                        outputs = torch.from_numpy(outcome.images).permute(0, 3, 1, 2).contiguous()
                        chosen_note = fields.pop("mcs_chosen", None)
                        row = {"system": _digital_system(CODECS[name].label, channel_code, mcs, header),
                               "receiver": "digital", "model": "", "mode": "digital",
                               "channel": kind, "snr_db": float(snr), "k_over_n": bandwidth_ratio(n_symbols, (3, size, size)),
                               "steps": 0, "sampler": "-", "guidance": None, "eta": None, "spacing": None,
                               "start": "-", "oracle": False, "control": False, "samples_per_image": 1,
                               "n": int(images.shape[0]), "seed": protocol.seed, "budget_bytes": budget,
                               "mean_bytes": sent / fitted if fitted else 0.0, "lost_fraction": lost / images.shape[0],
                               "bits_sent": 8 * sent / images.shape[0], "codec": name, "header": header,
                               "checkpoint": "", **fields}
                        row.update(score_outputs(my_source, outputs, fid, perceptual, sharded=sharded, realism=realism,
                                                 labels=my_labels, samples=1))
                        rows.append(row)
                        console.row(row, f"MCS {chosen_note}" if mcs == ADAPTIVE else "")
                        console.advance(len(mine))
    return rows


def _numerics(models: Sequence[EvalModel]) -> dict:
    """What the receivers ran under (the process's float32 settings on their device, each model's
    bf16 autocast), and what the metrics ran under."""
    device = next(models[0].system.parameters()).device
    return {"receivers": {**numerics(device),
                          "bf16_autocast": {m.label: bf16_enabled(m.system.cfg.bf16, device) for m in models}},
            "metrics": "full fp32 (TF32 off, no autocast) on 8-bit outputs"}


def protocol_images(models: Sequence[EvalModel], data_dir: Path, protocol: Protocol) -> ImageSelection:
    """The images ``protocol`` scores ``models`` on (checked, chosen): callers may take them before
    loading anything else, so that a bad folder is refused first."""
    return select_images(Path(data_dir), models[0].system.cfg.image_size, any(m.system.cfg.class_cond for m in models),
                         protocol.limit, protocol.subset, protocol.skip_bad)


def _skipped_notes(selection: ImageSelection, data_dir: Path) -> list[str]:
    """The note that unreadable images were left out (--skip-bad), naming the first of them."""
    if not selection.skipped:
        return []
    names = ", ".join(p.name for p, _ in selection.skipped[:5]) + (" …" if len(selection.skipped) > 5 else "")
    return [f"{len(selection.skipped)} unreadable image(s) of {data_dir} left out (--skip-bad): {names} "
            f"(all in images.skipped)"]


def _available_codecs(protocol: Protocol, notes: list[str]) -> list[str]:
    """The ``--digital`` codecs this install can write; a note for each one skipped."""
    digital = [c for c in protocol.digital if codec_available(c)]
    for codec in protocol.digital:
        if codec not in digital:
            notes.append(f"codec {codec} skipped: " + (HEIF_MISSING if codec == "heif" else
                                                        "this Pillow build cannot write it"))
    return digital


def _digital_notes(protocol: Protocol, digital: list[str]) -> list[str]:
    """What the digital rows are: the ideal budget rule, the LDPC chain, the header accounting."""
    notes = []
    if digital and "ideal" in protocol.channel_codes:
        notes.append("digital rows: largest-quality file with at most floor(n * C / 8) bytes, C = capacity per real "
                     "channel use (AWGN: 1/2 log2(1+SNR); Rayleigh: ergodic); images that do not fit are lost and "
                     "shown as the mean-colour image of the set (lost_fraction)")
    if digital and protocol.mcs_rows:
        notes.append(LDPC_NOTE)
    if digital and "payload" in protocol.headers:
        notes.append("header 'payload': only the coded image data is sent, the receiver is assumed to know the "
                     "file's headers (containers, marker segments, JPEG tables, length fields); 'file': the whole "
                     "file as written")
    return notes


def check_digital(models: Sequence[EvalModel], protocol: Protocol) -> None:
    """Before any work, a channel the digital chain cannot model is refused in one line (channel
    'none' has no capacity limit: its digital rows are left out with a note instead)."""
    if not protocol.digital:
        return
    for kind in {protocol.channel or m.system.cfg.channel for m in models} - {"none"}:
        check_digital_channel(kind)
    if protocol.mcs_rows:
        from diffjscc.evaluation.link import require_sionna

        require_sionna()


def check_receivers(models: Sequence[EvalModel], protocol: Protocol) -> None:
    """Before any work, a receiver the protocol cannot run (guidance without ``condition_dropout``
    training, a spacing from t = T−1 for an ε model) is refused in one line."""
    for model in models:
        if model.system.unet is not None:
            model.system.check_guidance(protocol.guidance)
            check_spacing(protocol.spacing or model.system.cfg.sample_spacing, model.system.cfg.prediction)


def _row_notes(results: list[dict], console: SweepConsole) -> list[str]:
    """What the oracle and control rows are, and the realism verdicts (also said on the console)."""
    notes = []
    if any(row["oracle"] and not row["control"] for row in results):
        notes.append("ORACLE rows (start 'inversion') obtain x_T by DDIM-inverting the source image, which a "
                     "real receiver does not have: an upper bound, not a result.")
    if any(row["control"] for row in results):
        notes.append("control rows read the source by construction: 'source' is the real images (PSNR floored at "
                     "100 dB), 'control_noise' the Deep JSCC output plus Gaussian noise scaled per image to the PSNR "
                     "of each one-sample diffusion output; references, not receivers")
    verdicts = realism_verdicts(results)
    for line in verdicts:
        console.say(line)
    return notes + verdicts


def _settings(protocol: Protocol, digital: list[str]) -> dict:
    """The protocol as the results document records it."""
    return {"snr_db": [float(s) for s in protocol.snrs], "starts": list(protocol.starts),
            "steps": protocol.steps, "sampler": protocol.sampler, "guidance": protocol.guidance,
            "eta": protocol.eta, "spacing": protocol.spacing, "samples_per_image": protocol.samples,
            "batch_size": protocol.batch_size,
            "channel": protocol.channel, "equalizer": protocol.equalizer, "digital": list(digital),
            "limit": protocol.limit,
            "channel_code": list(protocol.channel_codes), "mcs": list(protocol.mcs_rows),
            "header": list(protocol.headers),
            "subset": protocol.subset, "skip_bad": protocol.skip_bad, "controls": protocol.controls}


def _checkpoints(models: Sequence[EvalModel]) -> list[dict]:
    return [{"label": m.label, "path": str(m.checkpoint), "mode": m.system.cfg.mode,
             "channel": m.system.cfg.channel, "latent_dim": m.system.cfg.latent_dim} for m in models]


def _run_whole_images(models: Sequence[EvalModel], data_dir: Path, selection: ImageSelection, protocol: Protocol,
                      fid_info: dict, perceptual: PerceptualScorer | None, perceptual_notes: dict,
                      console: SweepConsole, patches: PatchRealism | None = None,
                      keep_output: OutputHook | None = None) -> dict:
    """:func:`run_protocol` on images that are not all of the models' size: each sent whole
    (:func:`_whole_image_rows`); the document also holds the per-image records."""
    _check_whole_images(models)
    images, files = selection.images, selection.files
    notes = list(protocol.notes) + _skipped_notes(selection, data_dir)
    sizes = sorted({f"{image.shape[-1]}x{image.shape[-2]}" for image in images})
    notes.append(f"whole images of {len(sizes)} size(s) ({', '.join(sizes)}), each sent whole as 'transmit' sends "
                 f"it (edges repeated to the windows' grid); PSNR, SSIM, MS-SSIM, LPIPS, DISTS and spread are "
                 f"means of per-image values (per_image in results.json), k/n is all images' symbols over their RGB values")
    if fid_info.get("skipped") is None:
        fid_info = {**fid_info, "skipped": "FID not computed: the images have mixed sizes (sent whole)"}
    notes.append("fd_cls/kid_cls/acc_cls not computed: the classifier knows 32x32 CIFAR-10 images, not whole photos")
    groups = sorted({(protocol.channel or m.system.cfg.channel, m.system.cfg.c_out, m.system.cfg.image_size)
                     for m in models}) if protocol.digital else []
    if any(kind == "none" for kind, _, _ in groups):
        notes.append("no digital baseline over channel 'none' (no capacity limit)")
        groups = [g for g in groups if g[0] != "none"]
    digital = _available_codecs(protocol, notes) if groups else []
    if "inversion" in protocol.starts:
        notes.append("no ORACLE inversion row: whole images are sampled through windows from a Gaussian start only")
    source_patches, reference, patch_info = None, None, None
    if patches is not None:  # the sources' patch features: per image of this rank, and all of them
        source_patches = {i: patches.features(to_uint8(images[i])) for i in shard_range(len(images))}
        mine = list(source_patches.values())
        reference = torch.cat(mine) if mine else torch.zeros(0, 1, dtype=torch.float64)
        reference = all_gather_cat(reference) if get_world_size() > 1 else reference
        patch_info = patches.describe()
        console.say(f"patch realism: {reference.shape[0]} source patches of 32x32 ({patches.loaded.identity})")
    rows, records = [], []
    deep_jscc_seen: dict[str, str] = {}
    mine = len(shard_range(len(images)))
    work = (len(models) + len(digital) * len(groups) * len(protocol.headers) * len(_digital_schemes(protocol))) \
        * len(protocol.snrs) * mine
    with console.bar(work):
        for model in models:
            receivers = [r for r in _model_receivers(model, protocol, deep_jscc_seen, notes) if r.start != "inversion"]
            model_rows, model_records = _whole_image_rows(model, receivers, images, files, protocol, perceptual, console,
                                                          patches, source_patches, reference, keep_output)
            rows += model_rows
            records += model_records
        if digital:
            started = time.perf_counter()
            digital_rows, digital_records = _whole_digital_rows(images, files, digital, groups, protocol, perceptual,
                                                                console, patches, source_patches, reference)
            rows += digital_rows
            records += digital_records
            console.say(f"digital rows: {time.perf_counter() - started:.1f} s")
    results = finish_rows(rows, fid_note=fid_info["skipped"], perceptual_notes=perceptual_notes)
    notes += _row_notes(results, console)
    notes += _digital_notes(protocol, digital)
    if digital:
        notes.append("digital rows of whole images: each image coded whole to the budget of the real channel uses "
                     "its JSCC comparison spends on it (edge-padded as the JSCC rows send it), its own LDPC frame "
                     "(and adaptive MCS) per image; PSNR, SSIM, MS-SSIM, LPIPS and DISTS are means of per-image values, "
                     "n_symbols and budget_bytes means over images, a lost image the mean colour of all images")
    return results_document(seed=protocol.seed, data=data_dir, n_images=len(images), checkpoints=_checkpoints(models),
                            settings=_settings(protocol, digital), fid_info=fid_info,
                            perceptual_notes=perceptual_notes, notes=notes,
                            rows=results, images=selection.describe(protocol.subset, protocol.limit),
                            numerics=_numerics(models), per_image=records, patch_info=patch_info)


def run_protocol(models: Sequence[EvalModel], data_dir: Path, protocol: Protocol,
                 fid: FIDScorer | None = None, fid_info: dict | None = None,
                 fid_reference: Sequence[Path] | None = None,
                 perceptual: PerceptualScorer | None = None, perceptual_notes: dict | None = None,
                 realism: RealismScorer | None = None, patches: PatchRealism | None = None,
                 progress: bool = True, echo: Callable[..., None] = print,
                 selection: ImageSelection | None = None, keep_output: OutputHook | None = None) -> dict:
    """Run the whole protocol; returns the results document (:mod:`~diffjscc.evaluation.results`).

    ``fid_reference``: files whose statistics FID compares against (cached); None means the
    evaluated source images themselves. ``realism``: the classifier scores (``fd_cls``,
    ``kid_cls``, ``acc_cls``) of every row; None leaves them empty. ``patches``: ``patch_fd`` and
    ``patch_kid`` of the rows of whole images (photos; :mod:`~diffjscc.evaluation.patches`).

    ``selection``: the images from :func:`protocol_images`, when the caller took them already.
    ``keep_output`` (whole images only): called with each receiver's first output of each image
    (contact sheets).

    Inside a process group of several ranks (every rank calls this with the same arguments) the
    work is sharded and the scores combined exactly; only rank 0 echoes and shows progress.
    """
    check_receivers(models, protocol)
    check_digital(models, protocol)
    console = SweepConsole(progress, echo)
    selection = selection if selection is not None else protocol_images(models, data_dir, protocol)
    images, labels, files = selection.images, selection.labels, selection.files
    for path, reason in selection.skipped:
        console.say(f"skipped unreadable image {path}: {reason}")
    fid_info = dict(fid_info or {})
    perceptual_notes = {name: (perceptual_notes or {}).get(name) or f"{name.upper()} not computed"
                        for name in PERCEPTUAL_METRICS}
    if isinstance(images, list):
        return _run_whole_images(models, Path(data_dir), selection, protocol, fid_info, perceptual, perceptual_notes,
                                 console, patches, keep_output)
    source_u8 = to_uint8(images)
    if fid is not None:
        fid_info.update(prepare_fid_reference(fid, files, source_u8, data_dir, fid_reference,
                                              sharded=get_world_size() > 1))
        console.say(f"FID: {fid_info['reference_note']}")

    _, covered = _my_batches(images.shape[0], protocol.batch_size)  # this rank's share, for the progress bar
    kinds_and_n = sorted({(protocol.channel or m.system.cfg.channel, m.system.cfg.latent_dim, m.system.cfg.image_size)
                          for m in models})
    notes = list(protocol.notes) + _skipped_notes(selection, data_dir)
    realism_labels, realism_info = None, None
    if realism is not None and realism.classifier.image_size != images.shape[-1]:
        notes.append(f"fd_cls/kid_cls/acc_cls not computed: the classifier was trained on "
                     f"{realism.classifier.image_size}-pixel images, these have {images.shape[-1]} (--classifier)")
        realism = None
    if realism is not None:
        realism_labels, why_not = labels_from_file_names(files, realism.classifier.class_names)
        notes += [why_not] if why_not else []
        realism_info = realism.describe(accuracy=realism_labels is not None)
        classes = len(set(realism_labels.tolist())) if realism_labels is not None else None
        if classes is not None and classes < len(realism.classifier.class_names):
            notes.append(f"the evaluated images cover {classes} of the classifier's "
                         f"{len(realism.classifier.class_names)} classes: fd_cls/kid_cls against the all-class "
                         f"reference are inflated")
        if realism_labels is not None:  # the ceiling of acc_cls: the classifier on the sources themselves
            share = shard_range(images.shape[0])
            mine = slice(share.start, share.stop)
            realism_info["acc_cls_sources"] = realism.accuracy(source_u8[mine], realism_labels[mine],
                                                               sharded=get_world_size() > 1)
    if any(kind == "none" for kind, _, _ in kinds_and_n) and protocol.digital:
        notes.append("no digital baseline over channel 'none' (no capacity limit)")
        kinds_and_n = [k for k in kinds_and_n if k[0] != "none"]
    digital = _available_codecs(protocol, notes)
    work = (len(models) * len(protocol.snrs) * (covered.stop - covered.start)
            + len(digital) * len(kinds_and_n) * len(protocol.snrs) * len(shard_range(images.shape[0]))
            * len(protocol.headers) * (("ideal" in protocol.channel_codes) + len(protocol.mcs_rows)))
    rows: list[dict] = []
    deep_jscc_seen: dict[str, str] = {}
    with console.bar(work):
        for model in models:
            receivers = _model_receivers(model, protocol, deep_jscc_seen, notes)
            rows += _model_rows(model, receivers, images, labels, source_u8, protocol, fid, perceptual, console,
                                realism, realism_labels)
        if digital and kinds_and_n:
            rows += _digital_rows(source_u8, digital, kinds_and_n, protocol, fid, perceptual, console, realism,
                                  realism_labels)
    results = finish_rows(rows, fid_note=None if fid is not None else fid_info.get("skipped", "FID not computed"),
                          perceptual_notes=perceptual_notes)
    notes += _row_notes(results, console)
    notes += _digital_notes(protocol, digital)
    return results_document(
        seed=protocol.seed, data=data_dir, n_images=int(images.shape[0]),
        checkpoints=_checkpoints(models), settings=_settings(protocol, digital),
        images=selection.describe(protocol.subset, protocol.limit), numerics=_numerics(models),
        fid_info=fid_info, perceptual_notes=perceptual_notes, notes=notes, rows=results,
        realism_info=realism_info)
