"""Where training numbers go: a JSONL file, a CSV file and TensorBoard when it is installed.

``metrics.jsonl`` is the record of the run: one JSON object per logged step, appended.
``metrics.csv`` is the same records as a table, built from them:

* its columns are the union of every record's keys, in the order they first appear; a key that
  first appears in a later record widens the table (the CSV is rewritten atomically with the
  wider header, earlier rows empty in that column) instead of being dropped;
* a resumed run first drops the rows past the step it resumes from (a killed run logged them
  after its last checkpoint, and the resumed run logs those steps again), and a last line a kill
  cut in half; then the CSV is rebuilt from what is kept, so each step appears once in both.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterable

from diffjscc.runtime.rundir import write_text_atomic


class RunLog:
    """Appends one record per logged step; a resumed run continues the files (see the module
    docstring): ``start_step`` is the step it resumes from (0 for a fresh run)."""

    def __init__(self, log_dir: str | Path, start_step: int = 0, use_tensorboard: bool = True) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.log_dir / "metrics.jsonl"
        self.csv_path = self.log_dir / "metrics.csv"
        self._csv_columns: list[str] = []
        self._continue_from(start_step)
        self.tensorboard = None
        if use_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step hides the events a killed run wrote past the resumed step.
                self.tensorboard = SummaryWriter(str(self.log_dir / "tensorboard"), purge_step=start_step + 1)
            except Exception:  # tensorboard not installed: files only
                self.tensorboard = None

    def _continue_from(self, start_step: int) -> None:
        """Keep the records up to ``start_step`` and rebuild the CSV from them."""
        if not self.jsonl_path.exists():
            return
        lines = self.jsonl_path.read_text().splitlines(keepends=True)
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:  # a line a kill cut in half
                continue
            if line.endswith("\n") and isinstance(record, dict) and int(record.get("step", 0)) <= start_step:
                kept.append((line, record))
        if len(kept) != len(lines):
            write_text_atomic(self.jsonl_path, "".join(line for line, _ in kept))
        records = [record for _, record in kept]
        self._csv_columns = _columns(records)
        self._rewrite_csv(records)

    def _rewrite_csv(self, records: list[dict[str, Any]]) -> None:
        text = io.StringIO(newline="")
        if self._csv_columns:
            writer = csv.writer(text)
            writer.writerow(self._csv_columns)
            writer.writerows([record.get(c, "") for c in self._csv_columns] for record in records)
        write_text_atomic(self.csv_path, text.getvalue())

    def write(self, record: dict[str, Any]) -> None:
        with self.jsonl_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        new_columns = [key for key in record if key not in self._csv_columns]
        if new_columns:  # rare (the first record, a part first logged later): rebuild with the wider header
            self._csv_columns += new_columns
            self._rewrite_csv([json.loads(line) for line in self.jsonl_path.read_text().splitlines()])
        else:
            with self.csv_path.open("a", newline="") as handle:
                csv.writer(handle).writerow([record.get(c, "") for c in self._csv_columns])
        if self.tensorboard is not None:
            step = int(record.get("step", 0))
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _columns(records: Iterable[dict[str, Any]]) -> list[str]:
    """Every key of the records, in the order keys first appear."""
    return list(dict.fromkeys(key for record in records for key in record))
