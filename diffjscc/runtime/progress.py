"""Progress for a person at a terminal, or for a log file.

On a terminal, a tqdm bar. Where the bar's stream (stderr) is not a terminal — a SLURM or nohup
log, CI — tqdm would write a ``\\r`` frame per update into the file, thousands of them; there
:class:`ProgressLines` writes a plain line instead, at most every :data:`LINE_INTERVAL_S`
seconds and once at the end: ``train[jscc]: step 120/1000 (12 %) loss=0.0123 img_s=45.2 ETA 0:03:12``.
"""

from __future__ import annotations

import datetime
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

from tqdm.auto import tqdm

__all__ = ["LINE_INTERVAL_S", "ProgressLines", "is_terminal", "progress_bar", "progress_steps"]

LINE_INTERVAL_S = 30.0

T = TypeVar("T")


def is_terminal(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default: stderr, where progress goes) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


class ProgressLines:
    """tqdm's interface the callers use (``update``, ``set_postfix``, ``write``, ``close``, a
    context manager) as plain lines: the first update, then at most one line every
    ``interval_s`` seconds, and the last count at :meth:`close`. The ETA is the remaining count
    at the rate since this object was made."""

    def __init__(self, total: int, desc: str = "", initial: int = 0, unit: str = "it",
                 interval_s: float = LINE_INTERVAL_S, stream: IO[str] | None = None) -> None:
        self.total, self.desc, self.n, self.unit = total, desc, initial, unit
        self.interval_s = interval_s
        self.stream = stream
        self._initial, self._started = initial, time.monotonic()
        self._postfix: dict[str, Any] = {}
        self._written_at: float | None = None
        self._written_n: int | None = None

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self._written_at is None or now - self._written_at >= self.interval_s:
            self._line(now)

    def set_postfix(self, **values: Any) -> None:
        self._postfix = values

    def write(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def close(self) -> None:
        if self._written_n != self.n and self.n > self._initial:
            self._line(time.monotonic())

    def __enter__(self) -> "ProgressLines":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def _line(self, now: float) -> None:
        parts = [f"{self.desc}: {self.unit} {self.n}/{self.total}"]
        if self.total:
            parts.append(f"({100 * self.n / self.total:.0f} %)")
        parts += [f"{key}={value}" for key, value in self._postfix.items()]
        rate = (self.n - self._initial) / max(now - self._started, 1e-9)
        if self.total and rate > 0:
            remaining = max(self.total - self.n, 0) / rate
            parts.append(f"ETA {datetime.timedelta(seconds=round(remaining))}")
        print(" ".join(parts), file=self.stream or sys.stderr, flush=True)
        self._written_at, self._written_n = now, self.n


def progress_bar(total: int, desc: str, enabled: bool = True, initial: int = 0, unit: str = "it",
                 **tqdm_options: Any) -> tqdm | ProgressLines:
    """A tqdm bar on a terminal; plain periodic lines where stderr is a file (see the module
    docstring); a disabled tqdm bar (nothing shown) when not ``enabled``."""
    if enabled and not is_terminal():
        return ProgressLines(total, desc, initial=initial, unit=unit)
    return tqdm(total=total, desc=desc, initial=initial, unit=unit, disable=not enabled, **tqdm_options)


def progress_steps(items: Iterable[T], desc: str, enabled: bool = True, unit: str = "step") -> Iterator[T]:
    """``items``, one by one, with the progress of :func:`progress_bar` over them (a loop's
    steps, e.g. a sampler's): a transient tqdm bar on a terminal, plain lines in a log file,
    nothing when not ``enabled``. A loop that leaves early (a sampler returns from its last
    step) has finished the item in hand: it is counted."""
    items = list(items)
    if not enabled:
        yield from items
        return
    with progress_bar(len(items), desc, unit=unit, leave=False) as bar:
        for item in items:
            try:
                yield item
            except GeneratorExit:
                bar.update(1)
                raise
            bar.update(1)
