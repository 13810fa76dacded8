"""Training-step throughput (images/s) of a config's model, eager fp32 against the variants.

Variants run interleaved (round-robin, several rounds, best round kept) so that they see the
same machine load; the figure that matters is the ratio to eager fp32 in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from diffjscc.config import load_config
from diffjscc.system import TransmissionSystem
from diffjscc.training.trainer import training_loss

VARIANTS = {
    "eager fp32": {"bf16": False, "channels_last": False},
    "channels_last fp32": {"bf16": False, "channels_last": True},
    "bf16 autocast": {"bf16": True, "channels_last": False},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", default=None,
                        help="config(s) to measure (default: configs/tiny.yaml and configs/cifar10.yaml)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's batch_size")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of: " + ", ".join(VARIANTS))
    parser.add_argument("--json", type=Path, default=Path("bench/results/train_step.json"))
    parser.set_defaults(run=run)


def _setup(config: str, batch: int | None, channels_last: bool):
    cfg = load_config(config, ["device=cpu"] + ([f"batch_size={batch}"] if batch else []))
    torch.manual_seed(0)
    system = TransmissionSystem(cfg)
    if channels_last:
        system = system.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(system.trainable_parameters(), lr=1e-4)
    images = torch.rand(cfg.batch_size, 3, cfg.image_size, cfg.image_size) * 2 - 1
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return cfg, system, optimizer, images


def _time_steps(system, optimizer, images, bf16: bool, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = training_loss(system, images, None)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def run(args) -> int:
    configs = args.config or ["configs/tiny.yaml", "configs/cifar10.yaml"]
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    results = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                           "torch": str(torch.__version__),
                           "cpu_capability": torch.backends.cpu.get_cpu_capability()}, "configs": {}}
    for config in configs:
        setups = {name: _setup(config, args.batch_size, VARIANTS[name]["channels_last"]) for name in names}
        batch = next(iter(setups.values()))[0].batch_size
        for name, (_, system, optimizer, images) in setups.items():  # warm-up step each
            _time_steps(system, optimizer, images, VARIANTS[name]["bf16"], 1)
        best = {name: float("inf") for name in names}
        for _ in range(args.rounds):
            for name, (_, system, optimizer, images) in setups.items():
                best[name] = min(best[name], _time_steps(system, optimizer, images, VARIANTS[name]["bf16"], args.steps))
        rates = {name: batch * args.steps / best[name] for name in names}
        base = rates.get("eager fp32", next(iter(rates.values())))
        results["configs"][config] = {"batch_size": batch,
                                      "images_per_s": rates, "ratio_to_eager_fp32": {n: r / base for n, r in rates.items()}}
        print(f"\n{config} (batch {batch}, {args.steps} steps x {args.rounds} rounds, best round)")
        print(f"{'variant':<22}{'img/s':>10}{'ratio':>8}")
        for name in names:
            print(f"{name:<22}{rates[name]:>10.2f}{rates[name] / base:>8.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    fastest = max(((n, r) for n, r in results["configs"][configs[0]]["ratio_to_eager_fp32"].items()), key=lambda x: x[1])
    print(f"\nfastest on {configs[0]}: {fastest[0]}")
    print(f"speedup {fastest[1]:.2f}")
    return 0
