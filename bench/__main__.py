"""``python -m bench SUB``: run a benchmark from the repository root.

Sub-benchmarks: ``train-step`` (images/s, fast path over eager fp32, FLOP/s against the matmul
peak), ``sample`` (DDIM steps against PSNR), ``quality`` (Deep JSCC against the diffusion
receivers at the same training budget), ``memory`` (peak memory of a training step),
``snr-adaptive`` (SNR-adaptive Deep JSCC against single-SNR models), ``knobs`` (guidance scale
and η against PSNR and realism), ``kodak`` (the 24 Kodak photos sent whole: the field's table),
``data`` (photo crops against CIFAR-10 PNG files, items/s), ``digital`` (5G LDPC decoding speed,
BLER tables, the table against full simulation), ``residual-bands`` (where in frequency a diffusion
sample departs from its Deep JSCC). Each prints a table and writes JSON under
``bench/results/``.
"""

from __future__ import annotations

import argparse
import sys

import torch

from bench import data, digital, knobs, kodak, memory, quality, residual_bands, sample, snr_adaptive, train_step
from diffjscc.errors import EXIT_USAGE, UserError

SUBCOMMANDS = {"train-step": train_step, "sample": sample, "quality": quality, "memory": memory,
               "snr-adaptive": snr_adaptive, "knobs": knobs, "kodak": kodak, "data": data, "digital": digital,
               "residual-bands": residual_bands}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="name", required=True)
    for name, module in SUBCOMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=module.__doc__.splitlines()[0], description=module.__doc__,
                                            formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    if getattr(args, "threads", None) and args.name != "memory":  # memory sets them in its subprocess
        torch.set_num_threads(args.threads)
    try:
        return args.run(args)
    except UserError as err:  # bad input or a stale run folder: one line, as the diffjscc command
        print(f"python -m bench {args.name}: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
