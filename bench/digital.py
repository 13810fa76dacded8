"""The digital chain (5G NR LDPC + QAM, Sionna): BP decoding speed, the BLER tables, and the
table checked against full simulation on real images.

1. Speed: ms per codeword of Sionna's BP decoder (20 iterations, flooding) at QPSK rate 1/2 for
   codeword lengths 512, 2048 and 8192 bits, in batches of ``--batch`` codewords.
2. BLER tables: the curve of every MCS of the table at the CIFAR 1/12 frame (n = 512 real channel
   uses), measured on random codewords (or read from the cache), with each MCS's threshold
   (lowest SNR from which BLER <= 10 %) and the qpsk-1/2 waterfall.
3. Table against full simulation: ``--check-images`` CIFAR test images (HEIF payload, else WebP)
   sent ``--repeats`` times through the whole chain at SNRs in the waterfall of ``--check-mcs``;
   the lost fraction of the full simulation beside the table's prediction 1 - (1 - BLER)^codewords.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import add_data_arguments, machine_info, prepare_cifar, write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("--batch", type=int, default=16, help="codewords decoded at once (default 16)")
    parser.add_argument("--speed-codewords", type=int, default=32, help="codewords timed per length")
    parser.add_argument("--n-real", type=int, default=512, help="real channel uses of the frame (CIFAR 1/12: 512)")
    parser.add_argument("--check-mcs", default="16qam-1/2")
    parser.add_argument("--check-images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=Path("bench/results/digital.json"))
    parser.set_defaults(run=run)


def _speed(lengths: tuple[int, ...], count: int, batch: int) -> dict:
    from diffjscc.evaluation.link import LdpcChain

    out = {}
    for n in lengths:
        chain = LdpcChain("qpsk-1/2", n, n // 2)
        generator = torch.Generator().manual_seed(0)
        chain.block_errors(batch, "awgn", 3.0, generator)  # warm-up
        start = time.perf_counter()
        done = 0
        while done < count:
            chain.block_errors(batch, "awgn", 3.0, generator)
            done += batch
        out[str(n)] = 1000 * (time.perf_counter() - start) / done
        print(f"BP decoding, QPSK 1/2, n = {n}: {out[str(n)]:.1f} ms per codeword (batches of {batch})")
    return out


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def run(args) -> int:
    from diffjscc.evaluation.codecs import CODECS, QualitySearch, codec_available
    from diffjscc.evaluation.digital import LdpcLink, simulate_image
    from diffjscc.evaluation.link import MCS_TABLE, LdpcChain

    document: dict = {"benchmark": "digital", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                      "machine": machine_info(), "bp_iterations": 20}
    document["ms_per_codeword"] = _speed((512, 2048, 8192), args.speed_codewords, args.batch)

    _, test_dir = prepare_cifar(args.archive, args.data_root)
    from PIL import Image

    files = sorted(test_dir.glob("*.png"))[::997][:args.check_images]  # spread over the classes
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    codec = "heif" if codec_available("heif") else "webp"
    search = QualitySearch(CODECS[codec], images)
    link = LdpcLink(search, "awgn", args.n_real)
    tables = {}
    start = time.perf_counter()
    for name in MCS_TABLE:
        curve = link.curve(name)
        frame = link.frame(name)
        tables[name] = {"codewords": frame.codewords, "codeword_bits": frame.codeword_bits,
                        "info_bits": frame.info_bits, "budget_bytes": frame.budget_bytes,
                        "threshold_db_bler_0.1": _finite(curve.threshold_db(0.1)), "points": curve.points}
        print(f"{name}: {frame.codewords} x {frame.codeword_bits} bits, {frame.budget_bytes} B, "
              f"BLER <= 0.1 from {curve.threshold_db(0.1):g} dB; points {curve.points}")
    document["tables_seconds"] = time.perf_counter() - start
    document["tables"] = tables

    frame = link.frame(args.check_mcs)
    curve = link.curve(args.check_mcs)
    chain = LdpcChain(args.check_mcs, frame.codeword_bits, frame.info_bits)
    generator = torch.Generator().manual_seed(1)
    threshold = curve.threshold_db(0.1)
    if not math.isfinite(threshold):
        raise SystemExit(f"{args.check_mcs} never reaches BLER 0.1 on the grid")
    checks = []
    for snr in (threshold - 1.0, threshold - 0.5, threshold):
        lost = trials = 0
        predicted = []
        for i in range(len(images)):
            step = search.fit(i, frame.budget_bytes, "payload")
            if step is None:
                continue
            used = frame.codewords_for(search.encoded(i, step).size("payload"))
            predicted.append(1 - (1 - float(curve.bler(snr))) ** used)
            for _ in range(args.repeats):
                lost += simulate_image(search, i, step, frame, "awgn", snr, "payload", generator, chain) is None
                trials += 1
        checks.append({"snr_db": snr, "full_simulation_lost": lost / max(trials, 1), "trials": trials,
                       "table_predicted_lost": float(np.mean(predicted)) if predicted else None})
        print(f"{args.check_mcs} at {snr:g} dB ({codec} payload, {trials} image transmissions): full simulation "
              f"loses {checks[-1]['full_simulation_lost']:.3f}, the table predicts {checks[-1]['table_predicted_lost']:.3f}")
    document["table_vs_full_simulation"] = {"mcs": args.check_mcs, "codec": codec, "points": checks}
    print(f"wrote {write_json(args.json, document)}")
    return 0
