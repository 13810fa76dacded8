"""What a sweep prints while it runs: one line per result row and a progress bar over the
images, on rank 0 only (the other ranks of a sharded evaluation stay silent)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm

from diffjscc.runtime.distributed import is_main_process

__all__ = ["SweepConsole", "row_line"]


def row_line(row: dict, note: str = "") -> str:
    """One result row as a console line; ``note`` (e.g. "mean of 4", an ORACLE warning) follows
    the receiver's name in brackets."""
    suffix = f" ({note})" if note else ""
    extra = ""
    if row.get("budget_bytes") is not None:
        extra = f", budget {row['budget_bytes']} B, lost {row['lost_fraction']:.0%}"
    fid = f"  FID {row['fid']:.2f}" if row.get("fid") is not None else ""
    model = f" [{row['model']}]" if row.get("model") else ""
    return (f"{row['receiver']}{suffix}: PSNR {row['psnr']:.2f} dB  SSIM {row['ssim']:.4f}  "
            f"MS-SSIM {row['ms_ssim']:.4f}{fid}  at {row['snr_db']:g} dB, k/n {row['k_over_n']:.4f}, "
            f"n={row['n']}{model}{extra}")


def _silent(*_args, **_kwargs) -> None:
    return None


class SweepConsole:
    """Lines through ``echo`` (through the progress bar while one is shown, so they do not tear
    it); everything is silent on ranks other than 0."""

    def __init__(self, progress: bool = True, echo: Callable[..., None] = print) -> None:
        main = is_main_process()
        self.progress = progress and main
        self.echo = echo if main else _silent
        self._bar: tqdm | None = None

    def say(self, text: str) -> None:
        if self._bar is not None and self.progress:
            self._bar.write(text)
        else:
            self.echo(text)

    def row(self, row: dict, note: str = "") -> None:
        self.say(row_line(row, note))

    @contextmanager
    def bar(self, total: int) -> Iterator[None]:
        """Show a progress bar over ``total`` images (this rank's share) while the block runs."""
        with tqdm(total=total, desc="evaluate", unit="img", disable=not self.progress, leave=False) as bar:
            self._bar = bar
            try:
                yield
            finally:
                self._bar = None

    def advance(self, images: int) -> None:
        if self._bar is not None:
            self._bar.update(images)
