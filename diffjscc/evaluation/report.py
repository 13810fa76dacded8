"""What a sweep prints while it runs: one line per result row and a progress bar over the
images, on rank 0 only (the other ranks of a sharded evaluation stay silent); and the verdict,
per SNR, on whether the diffusion receiver is more realistic than Deep JSCC and the noise control."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm

from diffjscc.runtime.distributed import is_main_process
from diffjscc.runtime.progress import ProgressLines, progress_bar

__all__ = ["SweepConsole", "realism_verdicts", "row_line"]


def row_line(row: dict, note: str = "") -> str:
    """One result row as a console line; ``note`` (e.g. "mean of 4", an ORACLE warning) follows
    the receiver's name in brackets."""
    suffix = f" ({note})" if note else ""
    extra = ""
    if row.get("budget_bytes") is not None:
        extra = f", budget {row['budget_bytes']} B, lost {row['lost_fraction']:.0%}"
    fid = f"  FID {row['fid']:.2f}" if row.get("fid") is not None else ""
    if row.get("fd_cls") is not None:
        fid += f"  fd_cls {row['fd_cls']:.3f}  kid_cls {row['kid_cls']:.4f}"
    if row.get("acc_cls") is not None:
        fid += f"  acc_cls {row['acc_cls']:.3f}"
    model = f" [{row['model']}]" if row.get("model") else ""
    name = row["system"] if row.get("mode") == "digital" else row["receiver"]
    return (f"{name}{suffix}: PSNR {row['psnr']:.2f} dB  SSIM {row['ssim']:.4f}  "
            f"MS-SSIM {row['ms_ssim']:.4f}{fid}  at {row['snr_db']:g} dB, k/n {row['k_over_n']:.4f} real "
            f"({row['k_over_n'] / 2:.4f} complex), n={row['n']}{model}{extra}")


def realism_verdicts(rows: list[dict]) -> list[str]:
    """One sentence per model and SNR that has a one-sample diffusion row, a Deep JSCC row and a
    ``control_noise`` row with ``fd_cls``: is the diffusion receiver more realistic (lower
    ``fd_cls``) than both, and at what PSNR cost against Deep JSCC."""
    found: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        one_sample = row["receiver"] == "diffusion" and row["start"] == "gaussian"
        kind = ("diffusion" if one_sample else
                row["receiver"] if row["receiver"] in ("deep_jscc", "control_noise") else None)
        if kind is not None and row.get("fd_cls") is not None:
            found.setdefault((row["snr_db"], row["channel"], row["k_over_n"], row["model"]), {}).setdefault(kind, row)
    lines = []
    for (snr, channel, ratio, model), group in sorted(found.items()):
        if len(group) < 3:
            continue
        diffusion, deep, control = group["diffusion"], group["deep_jscc"], group["control_noise"]
        beats = [name for name, other in (("Deep JSCC", deep), ("control_noise", control))
                 if diffusion["fd_cls"] < other["fd_cls"]]
        verdict = ("more realistic than both" if len(beats) == 2 else
                   f"more realistic than {beats[0]} only" if beats else "more realistic than neither")
        where = f"{channel}, k/n {ratio:.4f} real" + (f", {model}" if model else "")
        lines.append(f"verdict at {snr:g} dB ({where}): the diffusion receiver (one sample) is "
                     f"{verdict} (fd_cls {diffusion['fd_cls']:.3f} vs Deep JSCC {deep['fd_cls']:.3f}, control_noise "
                     f"{control['fd_cls']:.3f}) at {deep['psnr'] - diffusion['psnr']:+.2f} dB PSNR cost against Deep "
                     f"JSCC ({diffusion['psnr']:.2f} vs {deep['psnr']:.2f} dB)")
    return lines


def _silent(*_args, **_kwargs) -> None:
    return None


class SweepConsole:
    """Lines through ``echo`` (through the progress bar while one is shown, so they do not tear
    it); everything is silent on ranks other than 0."""

    def __init__(self, progress: bool = True, echo: Callable[..., None] = print) -> None:
        main = is_main_process()
        self.progress = progress and main
        self.echo = echo if main else _silent
        self._bar: tqdm | ProgressLines | None = None

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
        with progress_bar(total, "evaluate", enabled=self.progress, unit="img", leave=False) as bar:
            self._bar = bar
            try:
                yield
            finally:
                self._bar = None

    def advance(self, images: int) -> None:
        if self._bar is not None:
            self._bar.update(images)
