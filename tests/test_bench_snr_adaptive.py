"""`python -m bench snr-adaptive` end to end at a micro size (the figures need the full run)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench import snr_adaptive


def test_snr_adaptive_bench_writes_the_comparison(shared_archive: Path, tmp_path: Path, capsys) -> None:
    parser = argparse.ArgumentParser()
    snr_adaptive.add_arguments(parser)
    args = parser.parse_args([
        "--archive", str(shared_archive), "--work", str(tmp_path / "work"), "--data-limit", "32",
        "--train-snrs", "0,10", "--eval-snrs=-3,0,10", "--steps", "2", "--batch-size", "8",
        "--test-images", "8", "--json", str(tmp_path / "snr.json"),
        "--set", "jscc_num_filters=16", "--set", "device=cpu", "--set", "log_interval=1"])
    assert args.run(args) == 0
    result = json.loads((tmp_path / "snr.json").read_text())
    by_snr = {row["snr_db"]: row for row in result["summary"]}
    assert set(by_snr) == {-3.0, 0.0, 10.0}
    assert by_snr[-3.0]["matched_single"] is None  # below the training range: no single-SNR twin
    for snr in (0.0, 10.0):
        row = by_snr[snr]
        assert row["adaptive_minus_matched"] == row["adaptive"] - row["matched_single"]
        assert row["best_single"] >= row["matched_single"]
    assert "adaptive 0..10" in capsys.readouterr().out
    assert (tmp_path / "snr.md").read_text().startswith("| eval SNR dB")
