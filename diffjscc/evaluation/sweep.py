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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffjscc.channel import bandwidth_ratio
from diffjscc.config import CHANNELS, START_MODES
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
from diffjscc.evaluation.codecs import HEIF_MISSING
from diffjscc.evaluation.link import MCS_TABLE, check_digital_channel
from diffjscc.evaluation.fid import FIDScorer
from diffjscc.evaluation.lpips import LPIPSScorer
from diffjscc.evaluation.metrics import to_uint8
from diffjscc.evaluation.realism import RealismScorer, labels_from_file_names
from diffjscc.evaluation.report import SweepConsole, realism_verdicts
from diffjscc.evaluation.results import finish_rows, results_document
from diffjscc.evaluation.scoring import prepare_fid_reference, score_outputs
from diffjscc.receivers import Receiver, ReceiveContext, available, receive
from diffjscc.runtime.distributed import all_reduce_sum, get_world_size, shard_range
from diffjscc.runtime.seeding import batch_seeds
from diffjscc.system import TransmissionSystem, build_channel, load_system

__all__ = ["EvalModel", "Protocol", "load_models", "run_protocol"]

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


def _sampler_column(receiver: Receiver, protocol: "Protocol") -> str:
    """The sampler a row's outputs came from; "-" without diffusion."""
    if not receiver.uses_unet:
        return "-"
    return resolve_sampler(protocol.sampler, protocol.steps, receiver.start, protocol.eta)


@dataclass
class Protocol:
    """What to run. ``samples_per_image`` (K) defaults to 4 when ``mean`` is asked for, else 1."""

    snrs: list[float]
    starts: tuple[str, ...] = ("gaussian",)
    steps: int = 20
    sampler: str = "auto"
    guidance: float = 1.0
    eta: float = 0.0
    spacing: str | None = None  # the sampling timesteps; None: each model's sample_spacing
    samples_per_image: int | None = None
    limit: int | None = None
    seed: int = 0
    batch_size: int = 64
    channel: str | None = None
    digital: tuple[str, ...] = ()
    channel_codes: tuple[str, ...] = ("ideal",)  # of the digital rows: ideal and/or ldpc
    mcs: tuple[str, ...] = ()  # LDPC rows: MCS names and/or "adaptive" (empty: every MCS and adaptive)
    headers: tuple[str, ...] = ("file",)  # header accounting of the digital rows
    controls: bool = False
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.snrs:
            raise UserError("give at least one SNR")
        for start in self.starts:
            if start not in START_MODES:
                raise UserError(f"unknown start mode {start!r}; expected {', '.join(START_MODES)}")
        if not self.starts:
            raise UserError("give at least one start mode")
        for name, value in (("steps", self.steps), ("batch-size", self.batch_size),
                            ("limit", self.limit if self.limit is not None else 1),
                            ("samples-per-image", self.samples_per_image if self.samples_per_image is not None else 1)):
            if value <= 0:
                raise UserError(f"--{name} must be positive")
        if "mean" in self.starts and self.samples_per_image == 1:
            raise UserError("--start mean averages K posterior samples: give --samples-per-image K >= 2")
        resolve_sampler(self.sampler, self.steps, eta=self.eta)  # a one-line error for a bad sampler or eta
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


def _load_images(data_dir: Path, image_size: int, with_labels: bool, limit: int | None):
    from diffjscc.data import ImageFolderDataset

    dataset = ImageFolderDataset(data_dir, image_size=image_size, with_labels=with_labels)
    images, labels = dataset.first(limit)
    return images, labels, dataset.files[:images.shape[0]]


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
                source_u8: torch.Tensor, protocol: Protocol, fid: FIDScorer | None, lpips: LPIPSScorer | None,
                console: SweepConsole, realism: RealismScorer | None = None,
                realism_labels: torch.Tensor | None = None) -> list[dict]:
    system, cfg = model.system, model.system.cfg
    device = next(system.parameters()).device
    kind = protocol.channel or cfg.channel
    channel = build_channel(cfg, kind).eval()
    K = protocol.samples
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
            received = system.transmit(x, snr_db=snr, generator=g_channel, channel=channel)
            context = ReceiveContext(snr_db=snr, steps=protocol.steps, sampler=protocol.sampler, samples=K, source=x,
                                     guidance=protocol.guidance, eta=protocol.eta, spacing=protocol.spacing,
                                     generator=torch.Generator(device=device).manual_seed(sample_seed),
                                     class_labels=labels[part].to(device) if use_labels else None)
            for receiver in receivers:  # table order: the order they draw sampling noise in
                outputs[receiver.name].append(to_uint8(receive(system, receiver, received, context)).cpu())
            console.advance(x.shape[0])
        base = {"model": model.label, "checkpoint": str(model.checkpoint), "mode": cfg.mode, "channel": kind,
                "snr_db": float(snr), "k_over_n": bandwidth_ratio(cfg.latent_dim, (3, cfg.image_size, cfg.image_size)),
                "n_symbols": cfg.latent_dim, "seed": protocol.seed, "n": int(images.shape[0])}
        for receiver in receivers:  # the same on every rank, whether it had batches or not
            chunks = outputs[receiver.name]
            scored = torch.cat(chunks, dim=1).flatten(0, 1) if chunks else my_source[:0]  # sample-major
            row = dict(base, system=receiver.describe(receiver.label, samples=K), receiver=receiver.family,
                       steps=protocol.steps if receiver.uses_unet else 0, start=receiver.start or "-",
                       sampler=_sampler_column(receiver, protocol),
                       guidance=protocol.guidance if receiver.uses_unet else None,
                       eta=sampling_eta(protocol.eta, receiver.start) if receiver.uses_unet else None,
                       spacing=(protocol.spacing or cfg.sample_spacing) if receiver.uses_unet else None,
                       oracle=receiver.oracle, control=receiver.control,
                       samples_per_image=K if receiver.per_sample else 1)
            row.update(score_outputs(my_source, scored, fid, lpips, sharded=sharded, realism=realism,
                                     labels=my_labels, samples=_output_sets(chunks, sharded)))
            rows.append(row)
            console.row(row, receiver.describe(receiver.note, samples=K))
    return rows


def _digital_system(label: str, channel_code: str, mcs: str, header: str) -> str:
    """A digital row's display label; the ideal code with whole files keeps today's ("WebP + ideal code")."""
    code = "ideal code" if channel_code == "ideal" else f"LDPC {mcs}"
    return f"{label}{' payload' if header == 'payload' else ''} + {code}"


def _digital_rows(source_u8: torch.Tensor, codecs: list[str], kinds_and_n: list[tuple[str, int, int]],
                  protocol: Protocol, fid: FIDScorer | None, lpips: LPIPSScorer | None,
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
                    schemes: list[tuple[str, str]] = [("ideal", "-")] if "ideal" in protocol.channel_codes else []
                    schemes += [("ldpc", mcs) for mcs in protocol.mcs_rows]
                    for channel_code, mcs in schemes:
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
                        row.update(score_outputs(my_source, outputs, fid, lpips, sharded=sharded, realism=realism,
                                                 labels=my_labels, samples=1))
                        rows.append(row)
                        console.row(row, f"MCS {chosen_note}" if mcs == ADAPTIVE else "")
                        console.advance(len(mine))
    return rows


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
    training) is refused in one line."""
    for model in models:
        if model.system.unet is not None:
            model.system.check_guidance(protocol.guidance)


def run_protocol(models: Sequence[EvalModel], data_dir: Path, protocol: Protocol,
                 fid: FIDScorer | None = None, fid_info: dict | None = None,
                 fid_reference: Sequence[Path] | None = None,
                 lpips: LPIPSScorer | None = None, lpips_note: str = "",
                 realism: RealismScorer | None = None,
                 progress: bool = True, echo: Callable[..., None] = print) -> dict:
    """Run the whole protocol; returns the results document (:mod:`~diffjscc.evaluation.results`).

    ``fid_reference``: files whose statistics FID compares against (cached); None means the
    evaluated source images themselves. ``realism``: the classifier scores (``fd_cls``,
    ``kid_cls``, ``acc_cls``) of every row; None leaves them empty.

    Inside a process group of several ranks (every rank calls this with the same arguments) the
    work is sharded and the scores combined exactly; only rank 0 echoes and shows progress.
    """
    check_receivers(models, protocol)
    check_digital(models, protocol)
    console = SweepConsole(progress, echo)
    with_labels = any(m.system.cfg.class_cond for m in models)
    images, labels, files = _load_images(Path(data_dir), models[0].system.cfg.image_size, with_labels, protocol.limit)
    source_u8 = to_uint8(images)
    fid_info = dict(fid_info or {})
    if fid is not None:
        fid_info.update(prepare_fid_reference(fid, files, source_u8, data_dir, fid_reference,
                                              sharded=get_world_size() > 1))
        console.say(f"FID: {fid_info['reference_note']}")

    _, covered = _my_batches(images.shape[0], protocol.batch_size)  # this rank's share, for the progress bar
    kinds_and_n = sorted({(protocol.channel or m.system.cfg.channel, m.system.cfg.latent_dim, m.system.cfg.image_size)
                          for m in models})
    notes = list(protocol.notes)
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
                         f"{len(realism.classifier.class_names)} classes (--limit takes the first files in name "
                         f"order): fd_cls/kid_cls against the all-class reference are inflated")
        if realism_labels is not None:  # the ceiling of acc_cls: the classifier on the sources themselves
            share = shard_range(images.shape[0])
            mine = slice(share.start, share.stop)
            realism_info["acc_cls_sources"] = realism.accuracy(source_u8[mine], realism_labels[mine],
                                                               sharded=get_world_size() > 1)
    if any(kind == "none" for kind, _, _ in kinds_and_n) and protocol.digital:
        notes.append("no digital baseline over channel 'none' (no capacity limit)")
        kinds_and_n = [k for k in kinds_and_n if k[0] != "none"]
    digital = [c for c in protocol.digital if codec_available(c)]
    for codec in protocol.digital:
        if codec not in digital:
            notes.append(f"codec {codec} skipped: " + (HEIF_MISSING if codec == "heif" else
                                                        "this Pillow build cannot write it"))
    work = (len(models) * len(protocol.snrs) * (covered.stop - covered.start)
            + len(digital) * len(kinds_and_n) * len(protocol.snrs) * len(shard_range(images.shape[0]))
            * len(protocol.headers) * (("ideal" in protocol.channel_codes) + len(protocol.mcs_rows)))
    rows: list[dict] = []
    deep_jscc_seen: dict[str, str] = {}
    with console.bar(work):
        for model in models:
            receivers = _model_receivers(model, protocol, deep_jscc_seen, notes)
            rows += _model_rows(model, receivers, images, labels, source_u8, protocol, fid, lpips, console,
                                realism, realism_labels)
        if digital and kinds_and_n:
            rows += _digital_rows(source_u8, digital, kinds_and_n, protocol, fid, lpips, console, realism,
                                  realism_labels)
    results = finish_rows(rows, fid_note=None if fid is not None else fid_info.get("skipped", "FID not computed"),
                          lpips_note=None if lpips is not None else lpips_note)
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
    notes += verdicts
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
    return results_document(
        seed=protocol.seed, data=data_dir, n_images=int(images.shape[0]),
        checkpoints=[{"label": m.label, "path": str(m.checkpoint), "mode": m.system.cfg.mode,
                      "channel": m.system.cfg.channel, "latent_dim": m.system.cfg.latent_dim} for m in models],
        settings={"snr_db": [float(s) for s in protocol.snrs], "starts": list(protocol.starts),
                  "steps": protocol.steps, "sampler": protocol.sampler, "guidance": protocol.guidance,
                  "eta": protocol.eta, "spacing": protocol.spacing, "samples_per_image": protocol.samples,
                  "batch_size": protocol.batch_size,
                  "channel": protocol.channel, "digital": list(digital), "limit": protocol.limit,
                  "channel_code": list(protocol.channel_codes), "mcs": list(protocol.mcs_rows),
                  "header": list(protocol.headers),
                  "controls": protocol.controls},
        fid_info=fid_info, lpips_note=lpips_note, notes=notes, rows=results,
        realism_info=realism_info)
