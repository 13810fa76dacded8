"""Training-step throughput (images/s): eager fp32 against the trainer's fast path and its parts.

The step timed is the trainer's own: :class:`~diffjscc.training.trainer.TrainStep`, set up as
the Trainer sets it up and called as its loop calls it (LR for the step, draws seeded by
(seed, step), autocast, ``training_loss`` forward, the non-finite guard, backward, grad-norm
clipping, AdamW, EMA update), on a synthetic batch or, with ``--data``, the first images of a
folder. Variants are the config's fast-path keys (``channels_last``, ``fused_adamw``, ``bf16``,
``compile``); the two without a key, foreach AdamW and diffusers' classic attention, are applied
to the TrainStep's objects after its set-up (:func:`apply_unconfigured`). Variants run
interleaved (round-robin, each step timed, fastest step kept) so that they see the same load on
a shared machine; the figure that matters is the ratio to eager fp32 in the same run, printed
last as ``speedup X.XX`` (the trainer's default path for the config over eager fp32; the
smallest one over several configs).

Achieved FLOP/s: the FLOPs of one step are counted once with ``FlopCounterMode`` (matmuls,
convolutions, attention; forward and backward) and divided by the step time, as a fraction of
the dense fp32 matmul FLOP/s (n x n matmuls) measured in the same rounds: the machine's
practical limit.
"""

from __future__ import annotations

import argparse
import inspect
import math
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor
from torch.utils.flop_counter import FlopCounterMode

from bench.common import config_stem, load_warning, machine_info, write_json
from diffjscc.config import Config, config_from_dict, load_config
from diffjscc.data import ImageFolderDataset
from diffjscc.errors import UserError
from diffjscc.runtime.device import bf16_enabled, configure_job_numerics, native_bf16, resolve_device
from diffjscc.training.trainer import StepResult, TrainStep

ADAMW = ("default", "foreach", "fused")
"""AdamW implementations; ``default`` is torch's choice (a per-parameter loop on CPU, foreach on CUDA)."""


@dataclass(frozen=True)
class Variant:
    """How a step runs. The default is eager fp32: contiguous tensors, torch's default AdamW,
    no autocast, no compilation."""

    channels_last: bool = False
    adamw: str = "default"
    bf16: bool = False
    compile: bool = False
    classic_attention: bool = False  # diffusers' AttnProcessor instead of SDPA (AttnProcessor2_0)

    @classmethod
    def trainer_default(cls, cfg: Config, device: torch.device) -> "Variant":
        """What the Trainer runs for this config on ``device`` (its fast-path keys; ``bf16: auto``
        resolved as the trainer resolves it)."""
        return cls(channels_last=cfg.channels_last, adamw="fused" if cfg.fused_adamw else "default",
                   bf16=bf16_enabled(cfg.bf16, device), compile=cfg.compile)

    def config(self, cfg: Config) -> Config:
        """``cfg`` with this variant's fast-path keys: what the TrainStep is built from."""
        return replace(cfg, channels_last=self.channels_last, fused_adamw=self.adamw == "fused",
                       bf16="true" if self.bf16 else "false", compile=self.compile)


VARIANTS = {
    "eager fp32": Variant(),
    "channels_last": Variant(channels_last=True),
    "foreach AdamW": Variant(adamw="foreach"),
    "fused AdamW": Variant(adamw="fused"),
    "channels_last + fused AdamW": Variant(channels_last=True, adamw="fused"),
    "bf16 autocast": Variant(bf16=True),
    "classic attention": Variant(classic_attention=True),
}
DEFAULT_VARIANTS = ("eager fp32", "channels_last", "fused AdamW", "channels_last + fused AdamW", "bf16 autocast")
FAST_PATH = "fast path (trainer default)"
# Per-config run sizes: the 53M-parameter cifar10 UNet takes ~10 s per image-8 batch step on 2 CPU cores.
RUN_SIZES = {"cifar10": {"batch_size": 8, "steps": 1, "rounds": 3}}
DEFAULT_RUN_SIZE = {"batch_size": None, "steps": 4, "rounds": 3}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", default=None,
                        help="config(s) to measure, repeatable (default: configs/tiny.yaml and configs/cifar10.yaml)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: the config's batch_size; 8 for cifar10 (to finish in a few minutes)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per variant and round (default 4; cifar10: 1)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help="comma-separated subset of: " + ", ".join(VARIANTS) + ". bf16 autocast is skipped "
                             "unless the processor has native bf16 (or --force-bf16)")
    parser.add_argument("--force-bf16", action="store_true", help="measure bf16 autocast even without native bf16")
    parser.add_argument("--compile", action="store_true",
                        help="also measure the fast path + torch.compile (reports its compile time)")
    parser.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n fp32 matmul peak reference")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op CPU threads (default: torch's); 1 is far steadier on a machine shared "
                             "with other jobs")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every variant")
    parser.add_argument("--data", type=Path, default=None, metavar="DIR",
                        help="train on the first batch_size images of this folder (default: a synthetic batch "
                             "of uniform noise; the step's cost does not depend on the pixels)")
    parser.add_argument("--results", type=Path, default=Path("bench/results"),
                        help="folder for train_step_<config>.json")
    parser.set_defaults(run=run)


@dataclass
class StepSetup:
    """One variant's TrainStep and the batch its timed steps train on."""

    variant: Variant
    train_step: TrainStep
    images: torch.Tensor
    labels: torch.Tensor | None


def apply_unconfigured(train_step: TrainStep, variant: Variant) -> None:
    """The variant's options that have no config key, applied to the set-up TrainStep's objects.

    foreach AdamW: the optimizer is rebuilt with the trainer's options and ``foreach=True`` (it
    has not stepped yet, so there is no state to carry). Classic attention: diffusers'
    AttnProcessor replaces SDPA in the trained system (the EMA copy only averages weights).
    """
    if variant.adamw not in ADAMW:
        raise UserError(f"unknown AdamW implementation {variant.adamw!r}; choose from {ADAMW}")
    if variant.adamw == "foreach":
        optimizer = train_step.optimizer
        accepted = inspect.signature(type(optimizer)).parameters  # defaults also holds derived entries
        options = {key: value for key, value in optimizer.defaults.items() if key in accepted}
        train_step.optimizer = type(optimizer)([{"params": group["params"]} for group in optimizer.param_groups],
                                               **{**options, "foreach": True, "fused": None})
    if variant.classic_attention:
        for module in train_step.system.modules():
            if isinstance(module, Attention):
                module.set_processor(AttnProcessor())


def synthetic_batch(cfg: Config, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``cfg.batch_size`` uniform images in [-1, 1] (and class labels when class-conditional),
    seeded by ``cfg.seed``, of the size training sees (``crop_size`` where set): the step's cost
    does not depend on the pixels."""
    generator = torch.Generator().manual_seed(cfg.seed)
    side = cfg.crop_size or cfg.image_size
    images = torch.rand(cfg.batch_size, 3, side, side, generator=generator).mul(2).sub(1)
    labels = torch.randint(0, cfg.num_classes, (cfg.batch_size,), generator=generator) if cfg.class_cond else None
    return images.to(device), labels.to(device) if labels is not None else None


def folder_batch(cfg: Config, folder: Path, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first ``cfg.batch_size`` images of ``folder`` (name order), as the trainer reads them."""
    dataset = ImageFolderDataset(folder, image_size=cfg.image_size, with_labels=cfg.class_cond)
    if len(dataset) < cfg.batch_size:
        raise UserError(f"{folder} has {len(dataset)} images, fewer than batch_size={cfg.batch_size}")
    return dataset.first(cfg.batch_size, device)


def build_setup(cfg: Config, variant: Variant, device: torch.device,
                batch: tuple[torch.Tensor, torch.Tensor | None] | None = None) -> StepSetup:
    """The Trainer's TrainStep for ``cfg`` with ``variant``'s options, and the batch to train on
    (``batch``, else :func:`synthetic_batch`)."""
    variant_cfg = variant.config(cfg)
    train_step = TrainStep(variant_cfg, device)
    apply_unconfigured(train_step, variant)
    train_step.system.train()
    images, labels = batch if batch is not None else synthetic_batch(variant_cfg, device)
    return StepSetup(variant, train_step, images.to(device), labels.to(device) if labels is not None else None)


def run_step(setup: StepSetup, step: int = 0) -> StepResult:
    """One training step: the trainer's own step function on the set-up's batch, as global step ``step``."""
    return setup.train_step(setup.images, setup.labels, step)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_step(setup: StepSetup, step: int) -> tuple[float, bool]:
    """Seconds of one step, and whether the trainer's non-finite guard skipped it."""
    device = setup.images.device
    _sync(device)
    start = time.perf_counter()
    skipped = run_step(setup, step).skipped
    _sync(device)
    return time.perf_counter() - start, skipped


def train_flops_per_image(cfg: Config) -> float:
    """Forward + backward FLOPs of one training image of ``cfg`` (counted on a 2-image batch)."""
    small = config_from_dict(cfg.to_dict(), ["batch_size=2", "device=cpu"])
    return count_step_flops(build_setup(small, Variant(), torch.device("cpu"))) / 2


def count_step_flops(setup: StepSetup) -> int:
    """FLOPs of one step's forward and backward (matmul, conv, attention), counted once."""
    with FlopCounterMode(display=False) as counter:
        run_step(setup)
    return int(counter.get_total_flops())


def matmul_seconds(size: int, device: torch.device, repeats: int = 3) -> float:
    """Fastest of ``repeats`` dense fp32 ``size x size`` matmuls (2 size^3 FLOPs each)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.mm(a, b)  # warm-up
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _run_size(config: str, args) -> dict:
    size = dict(RUN_SIZES.get(config_stem(config), DEFAULT_RUN_SIZE))
    for key in ("batch_size", "steps", "rounds"):
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    return size


def _variants_for(cfg: Config, device: torch.device, names: list[str], bf16_ok: bool, force_bf16: bool,
                  with_compile: bool, notes: list[str]) -> dict[str, Variant]:
    """The named variants (bf16 dropped without native support), plus the trainer's default path."""
    chosen: dict[str, Variant] = {}
    for name in names:
        if VARIANTS[name].bf16 and not (bf16_ok or force_bf16):
            notes.append(f"{name}: skipped, no native bf16 on this processor (emulated bf16 is slower "
                         f"than fp32; --force-bf16 measures it)")
            continue
        chosen[name] = VARIANTS[name]
    fast = Variant.trainer_default(cfg, device)
    twin = next((name for name, v in chosen.items() if v == fast), None)
    if twin is None:
        chosen[FAST_PATH] = fast
    if with_compile:
        chosen["fast path + torch.compile"] = replace(fast, compile=True)
    return chosen


def measure_config(config: str, args) -> dict:
    """Time every variant on one config; returns its result record."""
    size = _run_size(config, args)
    overrides = ["device=cpu"] if args.device == "cpu" else []
    overrides += [f"batch_size={size['batch_size']}"] if size["batch_size"] else []
    cfg = load_config(config, overrides + list(args.overrides))
    device = resolve_device(args.device if args.device != "auto" else cfg.device)
    configure_job_numerics(device)  # what a training job runs under
    bf16_ok, bf16_how = native_bf16(device)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise UserError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    if "eager fp32" not in names:
        names.insert(0, "eager fp32")
    config_notes: list[str] = []
    variants = _variants_for(cfg, device, names, bf16_ok, args.force_bf16, args.compile, config_notes)
    fast = Variant.trainer_default(cfg, device)
    fast_name = next(name for name, v in variants.items() if v == fast)

    images = folder_batch(cfg, args.data, device) if args.data else synthetic_batch(cfg, device)
    setups = {name: build_setup(cfg, variant, device, images) for name, variant in variants.items()}
    for name, setup in setups.items():
        if setup.variant.adamw == "fused" and not setup.train_step.optimizer.defaults["fused"]:
            config_notes.append(f"{name}: no fused AdamW on {device} in this torch; timed the trainer's "
                                f"fallback, torch's default AdamW")
    batch = cfg.batch_size
    flops = count_step_flops(setups["eager fp32"])  # also eager's warm-up step
    warmup_s = {}
    for name, setup in setups.items():
        if name != "eager fp32":
            warmup_s[name] = _timed_step(setup, 0)[0]
            if setup.variant.compile:
                warmup_s[name] += _timed_step(setup, 0)[0]  # a possible recompilation for the second call
    times: dict[str, list[float]] = {name: [] for name in setups}
    skipped: dict[str, int] = {name: 0 for name in setups}
    matmul_best = math.inf
    order = list(setups)
    for round_index in range(size["rounds"]):
        matmul_best = min(matmul_best, matmul_seconds(args.matmul_size, device))
        shift = round_index % len(order)  # each round starts with another variant: no order bias
        for name in order[shift:] + order[:shift]:
            setup = setups[name]
            for step in range(size["steps"]):
                seconds, was_skipped = _timed_step(setup, 1 + round_index * size["steps"] + step)
                times[name].append(seconds)
                skipped[name] += was_skipped
    for name, count in skipped.items():
        if count:
            config_notes.append(f"{name}: {count} of {len(times[name])} timed steps were skipped by the "
                                f"trainer's non-finite guard (no backward or update): its time is not a full step's")
    peak = 2 * args.matmul_size**3 / matmul_best
    best = {name: min(t) for name, t in times.items()}
    base = best["eager fp32"]
    rows = {}
    for name, variant in variants.items():
        row = {"variant": asdict(variant), "images_per_s": batch / best[name],
               "images_per_s_median": batch / statistics.median(times[name]),
               "ratio_to_eager_fp32": base / best[name], "step_s_best": best[name],
               "achieved_flops_per_s": flops / best[name], "fraction_of_matmul_peak": flops / best[name] / peak}
        if variant.compile:
            row["compile_s"] = max(warmup_s[name] - 2 * best[name], 0.0)
        rows[name] = row
    fastest = max(rows, key=lambda n: rows[n]["images_per_s"])
    processors = sorted({type(m.processor).__name__ for m in setups["eager fp32"].train_step.system.modules()
                         if isinstance(m, Attention)})
    return {
        "config": config, "device": str(device), "batch_size": batch, "data": str(args.data or "synthetic"),
        "steps_per_round": size["steps"],
        "rounds": size["rounds"], "timing": "fastest single step over all rounds (median also recorded)",
        "flops_per_step": flops, "flops_per_image": flops / batch,
        "matmul_reference": {"size": args.matmul_size, "seconds": matmul_best, "flops_per_s": peak},
        "native_bf16": bf16_ok, "native_bf16_check": bf16_how,
        "attention_processors": processors,
        "fast_path": {"name": fast_name, "variant": asdict(fast)},
        "fastest_variant": fastest,
        "speedup": rows[fast_name]["ratio_to_eager_fp32"],
        "variants": rows, "notes": config_notes,
    }


def print_config(result: dict) -> None:
    peak = result["matmul_reference"]["flops_per_s"]
    print(f"\n{result['config']} on {result['device']}: batch {result['batch_size']}, "
          f"{result['steps_per_round']} step(s) x {result['rounds']} rounds, fastest step; "
          f"{result['flops_per_image'] / 1e9:.2f} GFLOP/image per step; "
          f"fp32 matmul {result['matmul_reference']['size']}^2: {peak / 1e9:.1f} GFLOP/s")
    print(f"{'variant':<30}{'img/s':>9}{'ratio':>8}{'GFLOP/s':>10}{'% peak':>8}")
    for name, row in result["variants"].items():
        mark = "  <- trainer default" if name == result["fast_path"]["name"] else ""
        compiled = f"  (compile {row['compile_s']:.0f} s)" if "compile_s" in row else ""
        print(f"{name:<30}{row['images_per_s']:>9.2f}{row['ratio_to_eager_fp32']:>8.2f}"
              f"{row['achieved_flops_per_s'] / 1e9:>10.1f}{100 * row['fraction_of_matmul_peak']:>7.1f}%"
              f"{mark}{compiled}")
    print(f"attention: {', '.join(result['attention_processors']) or 'none'}"
          f"{' (torch scaled_dot_product_attention)' if 'AttnProcessor2_0' in result['attention_processors'] else ''}; "
          f"native bf16: {'yes' if result['native_bf16'] else 'no'} ({result['native_bf16_check']})")
    for note in result["notes"]:
        print(f"note: {note}")
    if result["fastest_variant"] != result["fast_path"]["name"]:
        print(f"fastest measured: {result['fastest_variant']} (not the trainer default; "
              f"within noise unless the gap is large and repeatable)")


def run(args) -> int:
    configs = args.config or ["configs/tiny.yaml", "configs/cifar10.yaml"]
    warning = load_warning()
    if warning:
        print(warning)
    results = []
    for config in configs:
        result = measure_config(config, args)
        result["machine"] = machine_info()
        print_config(result)
        write_json(args.results / f"train_step_{config_stem(config)}.json", result)
        results.append(result)
    print()
    for result in results:
        fast = result["variants"][result["fast_path"]["name"]]
        name = result["fast_path"]["name"]
        label = "fast path" if name == FAST_PATH else f"fast path ({name})"
        print(f"{result['config']}: {label} {result['speedup']:.2f}x eager fp32, "
              f"{100 * fast['fraction_of_matmul_peak']:.1f}% of the fp32 matmul peak")
    if len(results) > 1:
        print("speedup below: the smallest over the configs (the target holds for all of them or not)")
    print(f"speedup {min(r['speedup'] for r in results):.2f}")
    return 0
