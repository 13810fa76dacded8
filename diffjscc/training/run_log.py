"""Where training numbers go: a JSONL file, a CSV file and TensorBoard when it is installed."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


class RunLog:
    """Appends one record per logged step; survives resumes (files are opened in append mode)."""

    def __init__(self, log_dir: str | Path, use_tensorboard: bool = True) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.log_dir / "metrics.jsonl"
        self.csv_path = self.log_dir / "metrics.csv"
        self._csv_columns: list[str] | None = None
        if self.csv_path.exists() and self.csv_path.stat().st_size:
            with self.csv_path.open() as handle:
                self._csv_columns = next(csv.reader(handle), None)
        self.tensorboard = None
        if use_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(self.log_dir / "tensorboard"))
            except Exception:  # tensorboard not installed: files only
                self.tensorboard = None

    def write(self, record: dict[str, Any]) -> None:
        with self.jsonl_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._csv_columns is None:
            self._csv_columns = list(record)
            with self.csv_path.open("w", newline="") as handle:
                csv.writer(handle).writerow(self._csv_columns)
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
