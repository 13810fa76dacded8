"""``diffjscc`` command line: data, train, sample, evaluate, plot, transmit, classifier, demo.

Every user mistake ends as one line ``diffjscc: error: …`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import fnmatch
import re
import sys
from pathlib import Path

from diffjscc import __version__
from diffjscc.config import CHANNELS, EQUALIZERS, FEW_STEPS, SAMPLERS, SPACINGS, SPREAD_SCALE
from diffjscc.data.folder import SUBSETS
from diffjscc.errors import EXIT_USAGE, UserError
from diffjscc.evaluation.perceptual import ALEXNET_WEIGHTS, PERCEPTUAL_METRICS, VGG16_WEIGHTS
from diffjscc.runtime.pretrained import checkpoint_for, verified_path

EXIT_PEER_LOST = 1  # distributed training: another process died or stopped answering


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (not usage + message) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        command = self.prog.removeprefix("diffjscc").strip()  # "train", "data", … or "" at the top
        raise UserError(f"{command}: {message}" if command else message)


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="prepare datasets (CIFAR-10 → PNG folders)",
                       description="Write DIR/cifar_train/ and DIR/cifar_test/ as PNGs named {class}_{index:05d}.png.")
    p.add_argument("dataset", choices=["cifar10"], help="dataset to prepare")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--archive", type=Path,
                     help="local cifar-10-python.tar.gz or an extracted cifar-10-batches-py/ folder")
    src.add_argument("--download", action="store_true", help="fetch the official archive (MD5-checked)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--limit", type=int, default=None, help="at most N images per split")
    p.set_defaults(func=_cmd_data)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model from a YAML config (all modes)",
                       description="Train in the config's mode (jscc | joint | frozen | unconditional); "
                                   "checkpoints ckpt_*.pt are written under log_dir, which belongs to one run "
                                   "at a time: a second run into it is refused while the first runs, and a fresh "
                                   "run over another run's files needs --resume auto or --overwrite.")
    p.add_argument("config", type=Path,
                   help="YAML config, e.g. configs/tiny.yaml, or the name of a shipped one: tiny, cifar10")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable), e.g. --set log_dir=runs/a")
    p.add_argument("--resume", default=None, metavar="auto|CKPT",
                   help="continue from a checkpoint, or 'auto' for the newest valid one in log_dir")
    p.add_argument("--overwrite", action="store_true",
                   help="a fresh run into a log_dir that holds another run's files moves them into a dated "
                        "subfolder previous_<time>/ first (default: refuse; nothing is ever deleted)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still written)")
    p.add_argument("--strict", action="store_true",
                   help="a corrupt image in data_dir is an error (default: skipped with a warning)")
    p.add_argument("--dist-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="under torchrun/mpiexec/srun: how long a process waits for the others before it "
                        "fails instead of hanging on a dead rank (default 600)")
    p.set_defaults(func=_cmd_train)


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=None,
                   help="sampling steps = network evaluations per image of the diffusion receiver (default: the "
                        "model's own sample_steps, what it was trained and scored at: 8 for the shipped receivers)")
    p.add_argument("--sampler", default="auto", choices=list(SAMPLERS),
                   help=f"auto (default): DPM-Solver++(2M) at <= {FEW_STEPS} steps, DDIM above (and whenever "
                        f"--eta > 0); or one of them; or ddpm: ancestral sampling with the model's learned variance")
    p.add_argument("--guidance", type=float, default=1.0, metavar="W",
                   help="classifier-free guidance scale on the received symbols (default 1: none; > 1: sharper, "
                        "further from the MMSE estimate; 2 network evaluations per step); needs a receiver "
                        "trained with condition_dropout")
    p.add_argument("--eta", type=float, default=0.0,
                   help="DDIM stochasticity in [0, 1] (default 0: deterministic; 1: DDPM-like noise at every step)")
    p.add_argument("--spacing", default=None, choices=list(SPACINGS),
                   help="sampling timesteps (default: the model's sample_spacing): leading (never t = T-1), "
                        "trailing (from t = T-1 down in equal strides) or quadratic (T-1 to 0, dense near 0: "
                        "the few-step solver nearest the converged ODE)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, default=None, help="checkpoint (.pt) of a training run")
    p.add_argument("--model", default=None, metavar="NAME",
                   help="a model shipped with diffjscc instead of --checkpoint (list: diffjscc models)")


def _add_receiver_args(p: argparse.ArgumentParser, default_limit: int | None) -> None:
    _add_model_args(p)
    p.add_argument("--data", type=Path, required=True,
                   help="folder of images (e.g. cifar_test/); images of other sizes than the model's are sent whole, "
                        "as transmit sends them, one grid each")
    p.add_argument("--snr", type=float, default=None, help="channel SNR in dB (default: the config's snr_db)")
    _add_sampling_args(p)
    p.add_argument("--start", choices=["gaussian", "inversion"], default="gaussian",
                   help="x_T from N(0, I) (a real receiver) or from DDIM inversion of the source "
                        "(oracle: needs the source at the receiver)")
    _add_subset_args(p, default_limit)
    p.add_argument("--seed", type=int, default=0, help="seed of channel noise and sampling")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=64, help="images in the model at once (default 64)")


def _add_no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true",
                   help="do not show the sampler's steps (a bar on a terminal, a line every 30 s in a log)")


def _add_subset_args(p: argparse.ArgumentParser, default_limit: int | None) -> None:
    default = f"default {default_limit}" if default_limit is not None else "default: all"
    p.add_argument("--limit", type=int, default=default_limit,
                   help=f"at most N images ({default}), chosen by --subset; the files used are recorded")
    p.add_argument("--subset", default="spread", choices=list(SUBSETS),
                   help="which N files --limit takes: spread (default: evenly spaced over the sorted names, every "
                        "k-th file, so a folder sorted by class is sampled across its classes) or first")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave unreadable or corrupt images out and go on, listing them (default: refuse, naming "
                        "the file, so that N never changes silently)")


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="transmit images and save reconstructions and a comparison grid")
    _add_receiver_args(p, default_limit=8)
    p.add_argument("--out", type=Path, required=True,
                   help="output folder: grid.png, received_*.png and sources.txt (which file each one is)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the outputs of an earlier sample run in --out (default: refuse)")
    _add_no_progress(p)
    p.set_defaults(func=_cmd_sample)


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="SNR sweep of every receiver of one or more checkpoints, with baselines: "
                         "PSNR, SSIM, MS-SSIM, fd_cls, kid_cls, acc_cls, FID, LPIPS",
        description="Transmit the images of --data at each SNR and score every receiver of every checkpoint "
                    "(Deep JSCC decoder; diffusion from each --start mode) and optional digital baselines "
                    "(codec + ideal channel code). Writes results.json, results.csv and results.md under --out "
                    "and prints a Markdown table. 'inversion' needs the source image at the receiver: it is "
                    "an ORACLE upper bound and is labelled so everywhere.")
    p.add_argument("--checkpoint", type=Path, action="append", default=[],
                   help="checkpoint (.pt) of a training run; repeat to put several models in one table "
                        "(a 'frozen' checkpoint also carries its Deep JSCC encoder and decoder)")
    p.add_argument("--model", action="append", default=[], metavar="NAME",
                   help="a model shipped with diffjscc (list: diffjscc models); repeatable, beside --checkpoint")
    p.add_argument("--data", type=Path, required=True,
                   help="folder of images at the models' size (e.g. cifar_test/), or of any sizes (e.g. Kodak): "
                        "each then sent whole as transmit sends it, scored at its own size")
    p.add_argument("--snr", default="0,5,10,15,20", help="comma-separated channel SNRs in dB (default 0,5,10,15,20)")
    p.add_argument("--start", "--starts", dest="start", default="gaussian",
                   help="comma-separated diffusion start modes: gaussian (x_T ~ N(0, I), a real receiver), "
                        "mean (average of K posterior samples, an MMSE estimate), inversion (x_T by DDIM "
                        "inversion of the source: ORACLE). Default gaussian. Under torchrun spell it "
                        "--starts: torchrun's own parser rejects --start as an abbreviation of --start-method")
    _add_sampling_args(p)
    p.add_argument("--samples-per-image", type=int, default=None, metavar="K",
                   help="posterior samples per image for gaussian/mean (default 1, or 4 with --start mean)")
    _add_subset_args(p, None)
    p.add_argument("--seed", type=int, default=0, help="seed of channel noise and sampling (default 0)")
    p.add_argument("--channel", default=None, choices=list(CHANNELS),
                   help="channel for every model (default: each checkpoint's own)")
    p.add_argument("--equalizer", default=None, choices=list(EQUALIZERS),
                   help="fading with CSI: mmse (conj(h) y / (|h|^2 + sigma^2), bounded) or zf (y / h) for every "
                        "model (default: each checkpoint's own, mmse unless trained otherwise)")
    p.add_argument("--digital", default="none", metavar="CODECS",
                   help="digital baselines: 'all' (webp,jpeg,jpeg2000,avif,heif), a comma-separated subset, or "
                        "'none' (default): the largest quality that fits the channel's bytes over the model's "
                        "n real channel uses (heif: HEVC intra, BPG-like, needs pillow-heif)")
    p.add_argument("--channel-code", default="ideal", metavar="CODES",
                   help="channel codes of the digital rows, comma-separated: ideal (capacity-achieving, "
                        "floor(n*C/8) bytes; the default) and/or ldpc (5G NR LDPC + QAM, Sionna)")
    p.add_argument("--mcs", default="all", metavar="NAMES",
                   help="LDPC rows: comma-separated MCS names (qpsk-1/4 ... 256qam-9/10, see docs/evaluation.md), "
                        "'adaptive' (per SNR the most efficient MCS with <= 10%% predicted frame loss), or 'all' "
                        "(every MCS and adaptive; the default)")
    p.add_argument("--header", default="file", metavar="ACCOUNTING",
                   help="header accounting of the digital rows, comma-separated: file (whole files sent; the "
                        "default) and/or payload (headers known to the receiver, only the coded data sent)")
    p.add_argument("--fid-weights", type=Path, default=None, metavar="PATH",
                   help="FID Inception-v3 weights (pt_inception-2015-12-05-6726825d.pth or torch-fidelity's "
                        "weights-inception-2015-12-05-6726825d.pth); default: looked up in the torch hub "
                        "cache. Never downloaded: without the file FID is skipped, with a notice")
    p.add_argument("--lpips-weights", type=Path, default=None, metavar="PATH",
                   help=f"LPIPS-Alex's backbone: torchvision's ImageNet AlexNet ({ALEXNET_WEIGHTS}); default: looked "
                        "up in the torch hub cache. Never downloaded: without it LPIPS is null, with the reason")
    p.add_argument("--vgg16-weights", type=Path, default=None, metavar="PATH",
                   help=f"DISTS' backbone: torchvision's ImageNet VGG16 ({VGG16_WEIGHTS}); default: the torch hub cache")
    p.add_argument("--dists-weights", type=Path, default=None, metavar="PATH",
                   help="DISTS' alpha/beta: the authors' weights.pt (DISTS_pytorch). With --vgg16-weights it adds "
                        "DISTS; without them DISTS is null, with the reason")
    p.add_argument("--fid-ref", type=Path, default=None, metavar="DIR",
                   help="reference folder for FID statistics (default: the evaluated source images); "
                        "statistics are cached in it as .fid_stats_<hash>.npz")
    p.add_argument("--no-fid", action="store_true", help="skip FID")
    p.add_argument("--controls", action="store_true",
                   help="add the control rows 'source' (the real images) and 'control_noise' (Deep JSCC's output "
                        "plus Gaussian noise at the PSNR of each one-sample diffusion output) and a realism "
                        "verdict per SNR")
    p.add_argument("--classifier", type=Path, default=None, metavar="PATH",
                   help="classifier weights of fd_cls/kid_cls/acc_cls (from 'diffjscc classifier'; default: the "
                        "shipped CIFAR-10 one). Its features are not Inception's: not comparable with published "
                        "FID/KID")
    p.add_argument("--patch-net", type=Path, default=None, metavar="PATH",
                   help="patch network of patch_fd/patch_kid on whole photos (default: the shipped one, trained "
                        "on photos by scripts/train_patch_net.py): 32x32 patches against the sources' patches")
    p.add_argument("--no-realism", action="store_true", help="skip fd_cls, kid_cls, acc_cls, patch_fd and patch_kid")
    p.add_argument("--out", type=Path, default=None, help="write results.json, results.csv, results.md here")
    p.add_argument("--json", type=Path, default=None, help="also write the results JSON to this file")
    p.add_argument("--overwrite", action="store_true",
                   help="replace results already in --out / --json (default: refuse before evaluating)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--dist-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="under torchrun/mpiexec/srun (the images are sharded across the processes, the "
                        "scores combined exactly, rank 0 writes): how long a process waits for the others "
                        "before it fails instead of hanging on a dead rank (default 600)")
    p.set_defaults(func=_cmd_evaluate)


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="plot evaluation results: quality against SNR (and k/n)",
                       description="PSNR, SSIM, MS-SSIM (and fd_cls, FID, LPIPS where present) against channel SNR, "
                                   "one line per system; with several bandwidth ratios also against k/n. Oracle "
                                   "curves are dashed, controls dash-dotted, digital baselines dotted. "
                                   "--perception-distortion draws PSNR against fd_cls instead.")
    p.add_argument("results", type=Path, nargs="+", metavar="RESULTS",
                   help="results.json / results.csv of 'diffjscc evaluate', or folders holding results.json")
    p.add_argument("--out", type=Path, required=True, help="output PNG")
    p.add_argument("--metrics", default=None,
                   help="comma-separated subset of psnr,ssim,ms_ssim,fd_cls,kid_cls,acc_cls,fid,lpips,dists")
    p.add_argument("--perception-distortion", action="store_true",
                   help="instead: PSNR (x) against fd_cls (y) for each receiver and control, points labelled by SNR")
    p.add_argument("--ratio-snr", type=float, default=None,
                   help="SNR (dB) of the quality-vs-k/n panels (default: the median SNR evaluated at every ratio)")
    p.add_argument("--systems", default=None, metavar="PATTERNS",
                   help="only the rows whose system matches one of these comma-separated shell patterns "
                        "(fnmatch, case-sensitive), e.g. 'deep_jscc,*adaptive,*ideal code' to keep a digital "
                        "figure readable")
    p.add_argument("--title", default=None)
    p.set_defaults(func=_cmd_plot)


def _add_transmit(sub) -> None:
    p = sub.add_parser("transmit", help="send one of your own images through a trained system",
                       description="Transmit IN (any size; grayscale is converted) through the channel as one image "
                                   "and write the reconstruction OUT at the input's size. The Deep JSCC encoder and "
                                   "decoder are fully convolutional: an HxW image (edges repeated up to S plus a "
                                   "multiple of 3S/4 for the model's size S) costs c_out*(H/4)*(W/4) real channel "
                                   "symbols, the model's own k/n: with 512 symbols per 32x32 image, 1/6 real "
                                   "symbols (1/12 complex channel uses) per RGB value, e.g. 131,072 real symbols "
                                   "for 512x512. The diffusion receiver samples the whole image, its network "
                                   "seeing overlapping SxS windows blended at every step (no seams). Prints PSNR "
                                   "and SSIM of the 8-bit output against the 8-bit input, and the symbols used.")
    _add_model_args(p)
    p.add_argument("--snr", type=float, required=True, help="channel SNR in dB")
    p.add_argument("input", type=Path, metavar="IN", help="input image (PNG, JPEG, ...)")
    p.add_argument("output", type=Path, metavar="OUT", help="output image; format from the extension (PNG is lossless)")
    p.add_argument("--channel", default=None, choices=["rayleigh", *[k for k in CHANNELS if k != "none"]],
                   help="default: the checkpoint's; rayleigh = rayleigh_block (one fading gain per image)")
    p.add_argument("--receiver", default="auto", choices=["auto", "diffusion", "deep_jscc"],
                   help="auto: diffusion (Gaussian start) when the checkpoint has one, else Deep JSCC")
    _add_sampling_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=64, help="windows of the diffusion receiver per network call")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing OUT (default: refuse; OUT may never be IN itself)")
    _add_no_progress(p)
    p.add_argument("--samples", type=int, default=1, metavar="K",
                   help="K >= 2 posterior samples of the diffusion receiver: OUT is the first; also writes their "
                        "mean as OUT_mean and the per-pixel standard deviation map OUT_spread.png (where the "
                        f"receiver guessed: PNG level = {SPREAD_SCALE} x std in 8-bit levels, white at "
                        f"{255 / SPREAD_SCALE:g} or more)")
    p.set_defaults(func=_cmd_transmit)


def _add_classifier(sub) -> None:
    p = sub.add_parser("classifier", help="train the feature network of fd_cls/kid_cls/acc_cls on labelled images",
                       description="Train diffjscc's compact classifier on a folder of labelled images "
                                   "({class}_{index}.png) and write its weights with the reference statistics "
                                   "of its training images. evaluate --classifier FILE then measures realism "
                                   "(fd_cls, kid_cls) and semantic fidelity (acc_cls) in its features: not "
                                   "Inception FID/KID, and comparable only with numbers from the same file.")
    p.add_argument("--train", type=Path, required=True, help="folder of labelled training images")
    p.add_argument("--test", type=Path, default=None, help="folder of labelled test images (accuracy per epoch)")
    p.add_argument("--out", type=Path, required=True, help="weights file to write (.pt)")
    # Defaults (None here) are ClassifierTrainingSettings', which docs/evaluation.md lists.
    p.add_argument("--epochs", type=int, default=None, help="passes over the training images")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="peak SGD learning rate (linear warm-up, then linear decay)")
    p.add_argument("--widths", default=None,
                   help="channels of the stem and of each down-sampling block (comma-separated)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=_cmd_classifier)


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the pretrained models shipped with diffjscc and their measured scores",
                       description="One model per line: name, what it is, its bandwidth, channel and training, and "
                                   "its PSNR and fd_cls at 0/10/20 dB on the shared CIFAR-10 test images (from the "
                                   "manifest that scripts/train_models.sh writes). Use a name with --model in "
                                   "transmit, sample and evaluate, or as jscc_encoder_path of a 'frozen' config.")
    p.add_argument("--path", default=None, metavar="NAME", help="print the checkpoint file of NAME (after "
                                                                 "checking its SHA-256) and nothing else")
    p.set_defaults(func=_cmd_models)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="compare Deep JSCC and a diffusion receiver on the embedded CIFAR-10 sample",
                       description="Runs the main job on the CIFAR-10 test images shipped with the package: the "
                                   "pretrained models (diffjscc models) transmit 200 of them at several SNRs, and the "
                                   "demo writes a grid (one image per class), the results tables, PSNR/SSIM-vs-SNR "
                                   "and perception-distortion plots, in under 2 minutes on 2 CPU cores. With "
                                   "--train it trains its own Deep JSCC and diffusion receiver on 256 of the "
                                   "images first (about 8 minutes) and scores the other 64.")
    p.add_argument("--out", type=Path, default=Path("diffjscc_demo"), help="output folder (default diffjscc_demo)")
    p.add_argument("--train", action="store_true", help="train the demo's own models instead of the shipped ones")
    p.add_argument("--minutes", type=float, default=None,
                   help="with --train: the training budget as a scale, 8 is the default (the whole demo then "
                        "takes about 8 minutes on 2 CPU cores), 4 halves the training steps")
    p.add_argument("--snr", default=None,
                   help="comma-separated SNRs in dB to evaluate (default 0,10,20; with --train 0,5,10,15,20)")
    p.add_argument("--photos", nargs="?", const="", default=None, metavar="DIR",
                   help="send photos instead, through the shipped photo models: four crops of Kodak photos shipped "
                        "with the package, or the photos of DIR (each sent whole; default SNRs 0,10)")
    p.add_argument("--steps", type=int, default=None,
                   help="sampling steps of the diffusion receivers (default: the shipped models' own 8; 20 with "
                        "--train)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="diffjscc", description="Wireless image transmission with diffusion models and "
                                                  "joint source-channel coding (JSCC).")
    parser.add_argument("--version", action="version", version=f"diffjscc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (_add_data, _add_train, _add_sample, _add_evaluate, _add_plot, _add_transmit, _add_classifier,
                _add_models, _add_demo):
        add(sub)
    return parser


# ---- commands ---------------------------------------------------------------------------------
def _cmd_data(args) -> int:
    from diffjscc.data.cifar10 import download_cifar10, extract_cifar10

    if args.limit is not None and args.limit <= 0:
        raise UserError("--limit must be positive")
    source = download_cifar10(args.out) if args.download else args.archive
    counts = extract_cifar10(source, args.out, limit_per_split=args.limit)
    for split, count in counts.items():
        print(f"{split}: {count} images → {args.out / split}")
    return 0


def _peer_lost(err: Exception) -> int:
    """Another rank died or hung: one line, then leave at once (a normal interpreter exit can
    abort while tearing down a broken process group)."""
    from diffjscc.runtime.distributed import is_initialized, leave_now

    print(f"diffjscc: error: {err}", file=sys.stderr)
    if is_initialized():
        leave_now(EXIT_PEER_LOST)
    return EXIT_PEER_LOST


def _cmd_train(args) -> int:
    from diffjscc.config import load_config
    from diffjscc.diffusion.unet import import_diffusers
    from diffjscc.evaluation.grids import write_training_grid
    from diffjscc.runtime.distributed import DistributedError, process_group
    from diffjscc.training.trainer import Trainer

    cfg = load_config(args.config, args.overrides + (["strict_data=true"] if args.strict else []))
    import_diffusers()  # before the process group starts (see its docstring), after the config is checked
    try:  # one process, or one of the N that torchrun / mpiexec / srun started
        with process_group(args.dist_timeout, cfg.device) as context:
            result = Trainer(cfg, resume=args.resume, progress=not args.no_progress, dist=context,
                             sample_grid=write_training_grid, overwrite=args.overwrite).train()
    except DistributedError as err:  # a peer died or hung: not a usage error
        return _peer_lost(err)
    if context.is_main and result.images_per_second > 0:
        print(f"step {result.step}: checkpoint {result.last_checkpoint} "
              f"(loss {result.final_loss:.4f}, {result.images_per_second:.1f} img/s)")
    elif context.is_main:  # resumed at total_steps
        print(f"step {result.step}: the run had already reached total_steps; checkpoint {result.last_checkpoint}")
    return 0


SAMPLE_OUTPUTS = ("grid.png", "grid_*.png", "received_*.png", "sources.txt")
"""What ``sample`` writes into --out: a folder holding any of these holds an earlier run's outputs."""


def _load_for_receiving(args):
    from diffjscc.evaluation.sweep import select_images
    from diffjscc.system import load_system
    from diffjscc.runtime.device import configure_job_numerics, resolve_device

    for name in ("batch_size",) + tuple(name for name in ("steps", "limit") if getattr(args, name) is not None):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    earlier = sorted({p for pattern in SAMPLE_OUTPUTS for p in args.out.glob(pattern)}) if args.out.is_dir() else []
    if earlier and not args.overwrite:
        raise UserError(f"{earlier[0]} holds the outputs of another sample run; choose another --out or pass "
                        f"--overwrite to replace them")
    device = resolve_device(args.device)
    configure_job_numerics(device)
    system = load_system(str(checkpoint_for(args.checkpoint, args.model)), device=device)
    selection = select_images(args.data, system.cfg.image_size, system.cfg.class_cond, args.limit, args.subset,
                              args.skip_bad, device=next(system.parameters()).device)
    for path, reason in selection.skipped:
        print(f"diffjscc: skipped unreadable image {path}: {reason}", file=sys.stderr)
    snr = system.cfg.snr_db if args.snr is None else args.snr
    return system, selection, snr, earlier


def _cmd_sample(args) -> int:
    import torch

    from diffjscc.data import save_image_tensor
    from diffjscc.evaluation.figures import save_image_grid
    from diffjscc.evaluation.grids import COMPARISON, reconstruct_rows
    from diffjscc.receivers import by_start, require
    from diffjscc.runtime.seeding import Stream, stream_generator

    system, selection, snr, earlier = _load_for_receiving(args)
    steps = system.cfg.sample_steps if args.steps is None else args.steps
    receivers = COMPARISON
    if args.start != "gaussian":  # that receiver alone (inversion: its grid row says ORACLE)
        hint = f"--start {args.start} needs a diffusion checkpoint"
        receivers = (require(system, by_start(args.start).name, hint=hint).name,)
    device = next(system.parameters()).device
    if isinstance(selection.images, list):  # not all of the model's size: photos, each sent whole
        return _sample_whole(system, selection, receivers, snr, steps, args)
    images, labels = selection.images, selection.labels
    count = images.shape[0]
    generator = stream_generator(args.seed, Stream.GRID, device=device)  # one stream, batch after batch
    chunks = []
    for start in range(0, count, args.batch_size):  # at most --batch-size images in the model at once
        part = slice(start, start + args.batch_size)
        chunks.append(reconstruct_rows(system, images[part], None if labels is None else labels[part],
                                       steps=steps, sampler=args.sampler, guidance=args.guidance, eta=args.eta,
                                       spacing=args.spacing, generator=generator, snr_db=snr,
                                       receivers=receivers, progress=not args.no_progress))
    names = chunks[0][1]
    rows = [torch.cat([chunk_rows[r] for chunk_rows, _ in chunks]) for r in range(len(names))]
    args.out.mkdir(parents=True, exist_ok=True)
    grid = args.out / "grid.png"
    save_image_grid(rows, grid, row_labels=names)
    written = [args.out / f"received_{i:04d}.png" for i in range(count)]
    for i, path in enumerate(written):
        save_image_tensor(rows[-1][i].cpu(), path)
    (args.out / "sources.txt").write_text("".join(f"{out.name}\t{source.name}\n"
                                                  for out, source in zip(written, selection.files)))
    for stale in set(earlier) - set(written):  # --overwrite: an earlier run's extra outputs, no mix of two runs
        if re.fullmatch(r"received_\d{4,}\.png", stale.name):
            stale.unlink(missing_ok=True)
    print(f"{count} images at {snr:g} dB: grid {grid}, reconstructions received_*.png in {args.out} "
          f"(their sources: sources.txt)")
    return 0


def _sample_whole(system, selection, receivers, snr: float, steps: int, args) -> int:
    """``sample`` on images not all of the model's size: each sent whole, one grid per image."""
    from diffjscc.data import save_image_tensor
    from diffjscc.evaluation.figures import save_image_grid
    from diffjscc.evaluation.grids import reconstruct_whole
    from diffjscc.runtime.seeding import Stream, stream_generator

    device = next(system.parameters()).device
    generator = stream_generator(args.seed, Stream.GRID, device=device)  # one stream, image after image
    args.out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(selection.images):
        rows, names = reconstruct_whole(system, image.to(device), steps=steps, sampler=args.sampler,
                                        guidance=args.guidance, eta=args.eta, spacing=args.spacing,
                                        generator=generator, snr_db=snr, receivers=receivers,
                                        progress=not args.no_progress)
        save_image_grid(rows, args.out / f"grid_{i:04d}.png", row_labels=names, scale=1)
        save_image_tensor(rows[-1][0].cpu(), args.out / f"received_{i:04d}.png")
    (args.out / "sources.txt").write_text("".join(f"received_{i:04d}.png\t{source.name}\n"
                                                  for i, source in enumerate(selection.files)))
    print(f"{len(selection.images)} images at {snr:g} dB, each sent whole at its own size: grids grid_*.png, "
          f"reconstructions received_*.png in {args.out} (their sources: sources.txt)")
    return 0


def _fid_scorer(args, device):
    """(scorer or None, info dict): FID only with a local Inception file, never a silent substitute."""
    from diffjscc.evaluation.inception import FID_WEIGHT_NAMES, find_inception_weights, load_fid_inception
    from diffjscc.runtime.pretrained import sha256_of_file

    if args.no_fid:
        return None, {"skipped": "FID skipped: --no-fid"}
    weights = find_inception_weights(args.fid_weights)
    if weights is None:
        import torch

        cache = Path(torch.hub.get_dir()) / "checkpoints"
        return None, {"skipped": f"FID skipped: no Inception-v3 FID weights (pass --fid-weights PATH, or put "
                                 f"{FID_WEIGHT_NAMES[0]} in {cache})"}
    from diffjscc.evaluation.fid import FIDScorer

    sha = sha256_of_file(weights)
    network = load_fid_inception(weights, device=device)
    try:
        scorer = FIDScorer(network, network_id=f"fid-inception-v3:{sha}", batch_size=args.batch_size, device=device)
    except RuntimeError as err:
        return None, {"skipped": f"FID skipped: {err}"}
    return scorer, {"network": "Inception-v3 (TF 2015-12-05) pool_3, 2048-d; TF1 bilinear resize to 299",
                    "weights": str(weights), "sha256": sha}


def _cmd_evaluate(args) -> int:
    from diffjscc.channel import parse_snr_list
    from diffjscc.diffusion.unet import import_diffusers
    from diffjscc.evaluation.digital import CODECS
    from diffjscc.evaluation.perceptual import make_perceptual
    from diffjscc.evaluation.results import check_results_targets, results_table, write_results
    from diffjscc.evaluation.sweep import (Protocol, check_digital, check_receivers, load_models, protocol_images,
                                           run_protocol)
    from diffjscc.runtime.distributed import DistributedError, barrier, process_group
    from diffjscc.runtime.device import configure_job_numerics, resolve_device

    try:
        snrs = parse_snr_list(args.snr)
    except UserError as err:
        raise UserError(f"--snr: {err}") from None
    starts = tuple(dict.fromkeys(s.strip() for s in args.start.split(",") if s.strip()))
    digital_text = args.digital.strip().lower()
    digital = (tuple(CODECS) if digital_text == "all" else () if digital_text in ("", "none")
               else tuple(dict.fromkeys(c.strip() for c in digital_text.split(",") if c.strip())))
    listed = lambda text: tuple(dict.fromkeys(v.strip() for v in text.strip().lower().split(",") if v.strip()))  # noqa: E731
    mcs_text = args.mcs.strip().lower()
    mcs = () if mcs_text == "all" else listed(args.mcs)
    if "heif" in digital and digital_text != "all":  # asked for by name: say how to get it ('all' skips it)
        from diffjscc.evaluation.codecs import require_codec

        require_codec("heif")
    if not args.checkpoint and not args.model:
        raise UserError("give at least one --checkpoint or --model (see 'diffjscc models')")
    checkpoints = list(args.checkpoint) + [verified_path(name) for name in args.model]
    names = [None] * len(args.checkpoint) + list(args.model)
    protocol = Protocol(snrs=snrs, starts=starts, steps=args.steps, sampler=args.sampler, guidance=args.guidance,
                        eta=args.eta, spacing=args.spacing, samples_per_image=args.samples_per_image,
                        limit=args.limit, subset=args.subset, skip_bad=args.skip_bad, seed=args.seed,
                        batch_size=args.batch_size, channel=args.channel, equalizer=args.equalizer,
                        digital=digital, channel_codes=listed(args.channel_code), mcs=mcs,
                        headers=listed(args.header), controls=args.controls)
    if not args.data.is_dir():
        raise UserError(f"image folder not found: {args.data}")
    check_results_targets(args.out, args.json, args.overwrite)
    fid_reference = None
    if args.fid_ref is not None:
        from diffjscc.data import ImageFolderDataset

        fid_reference = ImageFolderDataset(args.fid_ref).files
    device = resolve_device(args.device)
    configure_job_numerics(device)  # the receivers' speed settings; the metrics run in full fp32
    import_diffusers()  # before the process group starts (see its docstring), after the arguments are checked
    try:  # one process, or one of the N that torchrun / mpiexec / srun started: sharded, rank 0 writes
        with process_group(args.dist_timeout, args.device) as context:
            device = context.place(device)
            say = print if context.is_main else (lambda *_args, **_kwargs: None)
            if context.enabled:
                say(f"evaluate: {context.describe()}")
            models = load_models(checkpoints, device=device, names=names)
            check_receivers(models, protocol)  # before the FID and LPIPS notes
            check_digital(models, protocol)
            selection = protocol_images(models, args.data, protocol)  # a bad image too
            fid, fid_info = _fid_scorer(args, device)
            if fid is None:
                say(f"diffjscc: {fid_info['skipped']}", file=sys.stderr)
            perceptual, perceptual_notes = make_perceptual(args.lpips_weights, args.vgg16_weights,
                                                           args.dists_weights, device=device)
            for name, note in perceptual_notes.items():
                if perceptual is None or name not in perceptual.metrics:
                    say(f"diffjscc: {note}", file=sys.stderr)
            realism = None
            if not args.no_realism:
                from diffjscc.evaluation.classifier import load_classifier
                from diffjscc.evaluation.realism import RealismScorer

                realism = RealismScorer(load_classifier(args.classifier, device=device), seed=args.seed)
            patches = None
            if not args.no_realism:
                from diffjscc.evaluation.patches import PatchRealism, load_patch_net, shipped_patch_net_path

                if args.patch_net is not None or shipped_patch_net_path().is_file():
                    patches = PatchRealism(load_patch_net(args.patch_net, device=device), seed=args.seed)
            document = run_protocol(models, args.data, protocol, fid=fid, fid_info=fid_info,
                                    fid_reference=fid_reference, perceptual=perceptual,
                                    perceptual_notes=perceptual_notes,
                                    realism=realism, patches=patches, progress=not args.no_progress,
                                    selection=selection)
            written = write_results(document, args.out, args.json, args.overwrite) if context.is_main else []
            barrier()  # the files exist when any rank returns
    except DistributedError as err:  # a peer died or hung: not a usage error
        return _peer_lost(err)
    if context.is_main:
        print()
        print(results_table(document), end="")
        if written:
            print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _cmd_plot(args) -> int:
    from diffjscc.evaluation.figures import plot_perception_distortion, plot_results
    from diffjscc.evaluation.results import read_results

    rows = read_results(args.results)
    if args.systems:
        patterns = [p.strip() for p in args.systems.split(",") if p.strip()]
        rows = [r for r in rows if any(fnmatch.fnmatchcase(str(r.get("system")), p) for p in patterns)]
        if not rows:
            raise UserError(f"--systems {args.systems}: no result rows match")
    metrics = None
    if args.metrics:
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
        unknown = set(metrics) - {"psnr", "ssim", "ms_ssim", "fd_cls", "kid_cls", "acc_cls", "fid", *PERCEPTUAL_METRICS}
        if unknown:
            raise UserError(f"--metrics: unknown metric(s) {', '.join(sorted(unknown))}")
    try:
        if args.perception_distortion:
            path = plot_perception_distortion(rows, args.out, title=args.title)
        else:
            path = plot_results(rows, args.out, metrics=metrics, ratio_snr=args.ratio_snr, title=args.title)
    except ValueError as err:
        raise UserError(str(err)) from None
    except OSError as err:
        raise UserError(f"cannot write {args.out}: {err.strerror}") from None
    print(f"wrote {path}")
    return 0


def _cmd_models(args) -> int:
    from diffjscc.runtime.pretrained import manifest

    if args.path is not None:
        print(verified_path(args.path))
        return 0
    models = manifest()["models"]
    if not models:
        print("no pretrained models are installed (regenerate them with: bash scripts/train_models.sh)")
    for name, entry in models.items():
        print(_model_line(name, entry))
    return 0


def _model_line(name: str, entry: dict) -> str:
    """One line of ``diffjscc models``: name first, then what it is and its measured scores."""
    from fractions import Fraction

    def ratio(value: float) -> str:
        return str(Fraction(value).limit_denominator(1000))

    training, scores = entry["training"], entry["scores"]
    snrs = [s for s in ("0", "10", "20") if s in scores["by_snr"]]
    columns = {key: "/".join(f"{scores['by_snr'][s][key]:.2f}" if scores["by_snr"][s].get(key) is not None
                             else "-" for s in snrs) for key in ("psnr", "fd_cls")}
    low, high = entry["snr_range"]
    line = (f"{name}  {'[photo model] ' if entry.get('photo') else ''}{entry['receiver']}; {entry['encoder']}; "
            f"{entry['symbols']} real symbols (k/n {ratio(entry['k_over_n'])} real, "
            f"{ratio(entry['k_over_n_complex'])} complex); {entry['channel']}, "
            f"trained at {low:g}-{high:g} dB on {training['data']}, {training['steps']} steps")
    if scores["by_snr"]:
        line += (f"; at {'/'.join(snrs)} dB: PSNR {columns['psnr']} dB, fd_cls {columns['fd_cls']} "
                 f"({scores['n_images']} test images{', ' + scores['how'] if scores.get('how') else ''})")
    kodak = entry.get("kodak")
    if kodak:
        kodak_snrs = [s for s in ("0", "10", "20") if s in kodak["by_snr"]]
        kodak_psnr = "/".join(f"{kodak['by_snr'][s]['psnr']:.2f}" for s in kodak_snrs)
        line += (f"; Kodak at {'/'.join(kodak_snrs)} dB: PSNR {kodak_psnr} dB "
                 f"(mean of {kodak['n_images']} photos sent whole)")
    return line


def _check_transmit_output(source: Path, target: Path, overwrite: bool) -> None:
    """Refuse, before any work, an OUT that is IN (by inode: a link or another spelling of the
    same path too), and an OUT that exists unless ``overwrite``."""
    import os

    if target.exists():
        if os.path.samefile(source, target):
            raise UserError(f"the output {target} is the input image itself; choose another OUT (the input is "
                            f"never overwritten)")
        if not overwrite:
            raise UserError(f"{target} exists; choose another OUT or pass --overwrite to replace it")


def _photo_hint(cfg, height: int, width: int) -> None:
    """One line when a model trained on whole small images (CIFAR-10) is given a larger one: its
    prior is 32x32 thumbnails, and the shipped photo models are the ones to use for photos."""
    from diffjscc.runtime.pretrained import photo_models

    if cfg.crop_size or max(height, width) <= cfg.image_size:
        return
    better = photo_models(cfg.latent_dim)
    use = f"; for photos use {' or '.join(f'--model {name}' for name in better)}" if better else ""
    print(f"note: this model was trained on whole {cfg.image_size}x{cfg.image_size} images ({Path(cfg.data_dir).name}), "
          f"not on photos: it sends this {width}x{height} image in {cfg.image_size}x{cfg.image_size} blocks{use}")


def _cmd_transmit(args) -> int:
    from diffjscc.diffusion.samplers import resolve_sampler
    from diffjscc.evaluation.transmit import LOSSY_SUFFIXES, samples_targets, transmit_file
    from diffjscc.system import load_system
    from diffjscc.runtime.device import configure_job_numerics, resolve_device

    for name in ("steps", "batch_size", "samples"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    if not args.input.is_file():
        raise UserError(f"image file not found: {args.input}")
    _check_transmit_output(args.input, args.output, args.overwrite)
    device = resolve_device(args.device)
    configure_job_numerics(device)
    system = load_system(str(checkpoint_for(args.checkpoint, args.model)), device=device)
    steps = system.cfg.sample_steps if args.steps is None else args.steps
    channel = {"rayleigh": "rayleigh_block"}.get(args.channel, args.channel) or system.cfg.channel
    result = transmit_file(system, args.input, args.output, snr_db=args.snr, channel=channel,
                           receiver=args.receiver, steps=steps, sampler=args.sampler, guidance=args.guidance,
                           eta=args.eta, spacing=args.spacing, seed=args.seed,
                           batch_size=args.batch_size, samples=args.samples,
                           overwrite=getattr(args, "overwrite", False), progress=not args.no_progress)
    guided = f", guidance {args.guidance:g}" if args.guidance != 1 else ""
    stochastic = f", eta {args.eta:g}" if args.eta else ""
    spacing = f", {args.spacing} spacing" if args.spacing else ""
    how = (f"diffusion receiver ({steps} steps of {resolve_sampler(args.sampler, steps, eta=args.eta)}"
           f"{guided}{stochastic}{spacing}, Gaussian start)"
           if result.receiver == "diffusion" else "Deep JSCC decoder")
    height, width = result.output.shape[:2]
    print(f"wrote {args.output} ({width}x{height}) via the {how} over {channel} at {args.snr:g} dB")
    _photo_hint(system.cfg, height, width)
    print(f"PSNR {result.psnr:.2f} dB")
    print(f"SSIM {result.ssim:.4f}" if result.ssim is not None else "SSIM n/a (image smaller than 11 px)")
    sent = "x".join(map(str, reversed(result.padded)))
    print(f"channel symbols {result.symbols} real for the {sent} image sent (edges repeated): k/n "
          f"{result.k_over_n:.4f} real symbols, {result.k_over_n_complex:.4f} complex channel uses per RGB value")
    if result.spread is not None:
        mean_path, spread_path = samples_targets(args.output)
        print(f"mean of {result.samples} samples: PSNR {result.mean_psnr:.2f} dB, wrote {mean_path}")
        print(f"spread of the {result.samples} samples (per-pixel standard deviation, 8-bit levels): mean "
              f"{result.spread.mean():.2f}, max {result.spread.max():.2f}; map {spread_path} (PNG level = "
              f"{SPREAD_SCALE} x std, white at {255 / SPREAD_SCALE:g} levels or more)")
    if args.output.suffix.lower() in LOSSY_SUFFIXES:
        print(f"note: {args.output.suffix} is a lossy format; PSNR/SSIM are of the reconstruction before saving")
    return 0


def _labelled_images(folder: Path, class_names: list[str] | None = None):
    """uint8 images, labels and class names of a labelled folder, read one image at a time."""
    import torch

    from diffjscc.data import ImageFolderDataset
    from diffjscc.evaluation.metrics import to_uint8

    dataset = ImageFolderDataset(folder, with_labels=True, class_names=class_names)
    images = [to_uint8(dataset[i][0]) for i in range(len(dataset))]
    if len({image.shape for image in images}) > 1:
        raise UserError(f"images in {folder} differ in size; a classifier needs one size")
    return torch.stack(images), torch.tensor(dataset.labels), dataset.class_names


def _cmd_classifier(args) -> int:
    import torch

    from diffjscc.evaluation.classifier import ClassifierTrainingSettings, save_classifier, train_classifier

    if args.out.exists() and not args.overwrite:
        raise UserError(f"{args.out} exists: choose another --out or pass --overwrite")
    given = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}
    if args.widths is not None:
        try:
            given["widths"] = tuple(int(w) for w in args.widths.split(","))
        except ValueError:
            raise UserError(f"--widths must be comma-separated integers, got {args.widths!r}") from None
    settings = ClassifierTrainingSettings(**{key: value for key, value in given.items() if value is not None})
    if (len(settings.widths) < 2 or min(settings.widths) < 1 or settings.epochs < 1 or settings.batch_size < 1
            or not settings.lr > 0):
        raise UserError("--widths needs 2 or more positive numbers; --epochs, --batch-size and --lr must be positive")
    images, labels, classes = _labelled_images(args.train)
    if len(classes) < 2:
        raise UserError(f"{args.train} holds one class ({classes[0]}); a classifier needs two or more")
    if images.shape[0] < settings.batch_size:
        raise UserError(f"--batch-size {settings.batch_size} is more than the {images.shape[0]} training images")
    test = _labelled_images(args.test, classes)[:2] if args.test is not None else (None, None)
    print(f"training a {len(classes)}-class classifier on {images.shape[0]} images of {args.train}, "
          f"{torch.get_num_threads()} threads")
    payload = train_classifier(images, labels, classes, settings, *test)
    save_classifier(payload, args.out)
    summary = (f"top-1 accuracy {100 * payload['test_accuracy']:.2f} % on {payload['test_images']} images of {args.test}"
               if args.test is not None else "no test folder given: accuracy not measured")
    print(f"wrote {args.out}: {summary}; {payload['train_seconds'] / 60:.1f} min, "
          f"{payload['train_flops'] / 1e12:.2f} TFLOP of training")
    return 0


def _cmd_demo(args) -> int:
    from diffjscc.demo import run_demo, run_photo_demo, run_shipped_demo

    if args.steps is not None and args.steps <= 0:
        raise UserError(f"--steps must be positive, got {args.steps}")
    steps = {} if args.steps is None else {"steps": args.steps}
    if args.photos is not None:
        if args.train or args.minutes is not None:
            raise UserError("--photos runs the shipped photo models; it does not train (--train, --minutes)")
        run_photo_demo(args.out, Path(args.photos) if args.photos else None, snr_text=args.snr or "0,10",
                       seed=args.seed, **steps)
    elif args.train:
        run_demo(args.out, minutes=args.minutes, snr_text=args.snr or "0,5,10,15,20", seed=args.seed, **steps)
    elif args.minutes is not None:
        raise UserError("--minutes sets the training budget of 'demo --train'; the default demo trains nothing")
    else:
        run_shipped_demo(args.out, snr_text=args.snr or "0,10,20", seed=args.seed, **steps)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``diffjscc`` console script."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"diffjscc: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("diffjscc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
