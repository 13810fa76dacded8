"""Peak memory of one training step: RSS on CPU, allocated memory on CUDA.

The step is the trainer's own (:class:`~diffjscc.training.trainer.TrainStep`, through
:func:`bench.train_step.run_step`). Each config runs in a fresh subprocess, so that one
measurement's allocations (and the allocator's cached pages) cannot hide the next one's peak.
CPU: ``ru_maxrss`` after one full step (forward, backward, AdamW, EMA) minus the RSS once torch
and diffjscc are imported — the memory the step itself needs, model, optimizer state and EMA
included. On Linux the peak is the kernel's high-water mark VmHWM, reset after the imports
(``/proc/self/clear_refs``) so that a transient peak while importing cannot hide the step's;
elsewhere ``ru_maxrss``. CUDA: ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from bench.common import config_stem, machine_info, write_json
from diffjscc.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]
PATHS = ("fast", "eager")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", default=None,
                        help="config(s), repeatable (default: configs/tiny.yaml and configs/cifar10.yaml)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--paths", default="fast",
                        help="comma-separated: fast (the trainer's default path), eager (eager fp32)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="intra-op CPU threads in the subprocess")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--results", type=Path, default=Path("bench/results"), help="folder for memory.json")
    parser.set_defaults(run=run)


def _proc_status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _proc_status_bytes("VmHWM") is not None


def _rss_bytes() -> int:
    current = _proc_status_bytes("VmRSS")
    return current if current is not None else _max_rss_bytes()


def _peak_rss_bytes(reset: bool) -> int:
    peak = _proc_status_bytes("VmHWM") if reset else None
    return peak if peak is not None else _max_rss_bytes()


def _max_rss_bytes() -> int:
    """This process's peak resident set size (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def measure_in_this_process(config: str, batch_size: int, path: str, device_name: str,
                            overrides: list[str]) -> dict:
    """Build the step's setup, run one step, report peak memory (run in a fresh process)."""
    import torch

    from bench.train_step import Variant, build_setup, run_step
    from diffjscc.config import load_config
    from diffjscc.runtime.device import configure_job_numerics, resolve_device

    reset = _reset_peak()
    baseline = _rss_bytes()
    cfg = load_config(config, [f"batch_size={batch_size}", *(["device=cpu"] if device_name == "cpu" else []),
                               *overrides])
    device = resolve_device(device_name if device_name != "auto" else cfg.device)
    configure_job_numerics(device)  # what a training job runs under
    variant = Variant.trainer_default(cfg, device) if path == "fast" else Variant()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    setup = build_setup(cfg, variant, device)
    built = _peak_rss_bytes(reset)
    run_step(setup)
    system = setup.train_step.system
    peak = _peak_rss_bytes(reset)
    record = {"config": config, "path": path, "variant": asdict(variant), "device": str(device),
              "batch_size": cfg.batch_size,
              "parameters": sum(p.numel() for p in system.parameters()),
              "trainable_parameters": sum(p.numel() for p in system.trainable_parameters()),
              "peak_source": "VmHWM (reset after imports)" if reset else "ru_maxrss",
              "rss_baseline_bytes": baseline, "rss_after_build_bytes": built, "rss_peak_bytes": peak,
              "step_peak_rss_bytes": peak - baseline}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        record["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return record


def measure_in_subprocess(config: str, args, path: str) -> dict:
    command = [sys.executable, "-m", "bench.memory", "--child", config, "--batch-size", str(args.batch_size),
               "--path", path, "--device", args.device]
    command += [item for override in args.overrides for item in ("--set", override)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"memory measurement of {config} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _mib(value: int) -> float:
    return value / 2**20


def run(args) -> int:
    configs = args.config or ["configs/tiny.yaml", "configs/cifar10.yaml"]
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if any(p not in PATHS for p in paths):
        raise UserError(f"--paths takes {', '.join(PATHS)}")
    records = [measure_in_subprocess(config, args, path) for config in configs for path in paths]
    cuda = any("cuda_max_allocated_bytes" in r for r in records)
    print(f"\nPeak memory of one training step (fresh process each; batch {args.batch_size})")
    header = f"{'config':<22}{'path':<7}{'params':>9}{'baseline MiB':>14}{'step peak MiB':>15}{'total peak MiB':>16}"
    print(header + (f"{'CUDA alloc MiB':>16}" if cuda else ""))
    for r in records:
        line = (f"{config_stem(r['config']):<22}{r['path']:<7}{r['parameters'] / 1e6:>8.1f}M"
                f"{_mib(r['rss_baseline_bytes']):>14.0f}{_mib(r['step_peak_rss_bytes']):>15.0f}"
                f"{_mib(r['rss_peak_bytes']):>16.0f}")
        if cuda:
            line += f"{_mib(r.get('cuda_max_allocated_bytes', 0)):>16.0f}"
        print(line)
    print("step peak = peak RSS after one step minus RSS once torch/diffjscc are imported")
    write_json(args.results / "memory.json", {"benchmark": "memory", "batch_size": args.batch_size,
                                              "machine": machine_info(), "rows": records})
    return 0


def _child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--path", choices=PATHS, required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    record = measure_in_this_process(args.child, args.batch_size, args.path, args.device, args.overrides)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
