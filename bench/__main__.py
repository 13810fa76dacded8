"""``python -m bench SUB``: run a benchmark from the repository root."""

from __future__ import annotations

import argparse
import sys

from bench import train_step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="name", required=True)
    train_step.add_arguments(sub.add_parser("train-step", help=train_step.__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
