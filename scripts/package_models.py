"""Turn finished training runs into the models shipped in the package (called by train_models.sh).

    python scripts/package_models.py add NAME --run RUN_DIR --step N --description TEXT [--base NAME]
    python scripts/package_models.py scores NAME RESULTS_JSON --receiver deep_jscc|diffusion [--how TEXT]
    python scripts/package_models.py kodak-scores NAME KODAK_JSON --command TEXT

``add`` writes ``diffjscc/assets/models/NAME.pt`` (an ordinary diffjscc checkpoint holding the EMA
weights of RUN_DIR/ckpt_N.pt, fp32, with the run's config and its provenance: seed, steps, data,
training time and FLOPs, summed over the stages of a run that started ``init_from`` another) and
its manifest entry (SHA-256, size, what it is); ``scores`` copies the rows of an ``evaluate
--model NAME`` results file into that entry, so that ``diffjscc models`` prints numbers measured
on the shipped file; ``kodak-scores`` copies a ``python -m bench kodak`` file's rows of NAME (mean
of per-image PSNR over the 24 Kodak photos) into the entry's ``kodak`` scores. The manifest is
rewritten under a lock: two training scripts side by side (one model each) may call this script at
the same time.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import sys
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` beside `diffjscc`

from bench.train_step import train_flops_per_image  # noqa: E402
from diffjscc.channel import bandwidth_ratio  # noqa: E402
from diffjscc.config import config_from_dict  # noqa: E402
from diffjscc.runtime.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint  # noqa: E402
from diffjscc.runtime.pretrained import MANIFEST_FORMAT, model_entry, models_dir, path_or_model, sha256_of_file  # noqa: E402

SCORE_KEYS = ("psnr", "ssim", "ms_ssim", "fd_cls", "kid_cls", "kid_cls_std", "acc_cls")


@contextmanager
def _manifest(folder: Path):
    """The manifest document, written back (atomically) when the block ends, under an exclusive lock."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.json"
    with open(folder / ".manifest.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        document = json.loads(path.read_text()) if path.is_file() else {
            "format": MANIFEST_FORMAT, "regenerate": "bash scripts/train_models.sh", "models": {}}
        yield document
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(document, indent=1) + "\n")
        tmp.replace(path)


def _training_minutes(run: Path, step: int, batch_size: int) -> float:
    """Training time from the run log: each logged interval's images over its measured img/s."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    seconds, previous = 0.0, 0
    for record in records:
        if record["step"] > step or not record.get("img_per_s"):
            continue
        seconds += (record["step"] - previous) * batch_size / record["img_per_s"]
        previous = record["step"]
    return seconds / 60


STAGE_KEYS = ("seed", "steps", "batch_size", "images_seen", "lr", "bf16", "condition_dropout", "train_minutes",
              "train_tflop")


def _stage(run: Path, step: int, cfg) -> dict:
    """One stage of training: a run folder's first ``step`` steps under ``cfg``."""
    images = step * cfg.batch_size
    return {"seed": cfg.seed, "steps": step, "batch_size": cfg.batch_size, "images_seen": images, "lr": cfg.lr,
            "bf16": cfg.bf16, "condition_dropout": cfg.condition_dropout,
            "train_minutes": round(_training_minutes(run, step, cfg.batch_size), 1),
            "train_tflop": round(train_flops_per_image(cfg) * images / 1e12, 1)}


def _earlier_stages(init_from: str) -> list[dict]:
    """The training an ``init_from`` checkpoint already holds: a shipped model's recorded stages,
    or a run checkpoint's own stage (from its run folder's log) after those it started from."""
    if not init_from:
        return []
    path = path_or_model(init_from)
    payload = load_checkpoint(path)
    if "provenance" in payload:  # a shipped model
        provenance = payload["provenance"]
        return provenance.get("stages") or [{k: provenance[k] for k in STAGE_KEYS if k in provenance}]
    cfg = config_from_dict(payload["config"])
    return _earlier_stages(cfg.init_from) + [_stage(path.parent, int(payload["step"]), cfg)]


def add(args: argparse.Namespace) -> None:
    payload = load_checkpoint(checkpoint_path(args.run, args.step))
    cfg = config_from_dict(payload["config"])
    config = cfg.to_dict()
    if args.base:
        config["jscc_encoder_path"] = args.base  # a shipped name, not this machine's path
    config["log_dir"] = config["init_from"] = ""  # this machine's paths; the stages below say what it holds
    if cfg.bf16 != "false":  # trained in bf16: the shipped file uses it only where it is native (fast)
        config["bf16"] = "auto"
    state = payload.get("ema", payload["model"])
    stages = _earlier_stages(cfg.init_from) + [_stage(args.run, args.step, cfg)]
    provenance = {**stages[-1], "data": args.data, "machine": args.machine, "command": args.command}
    if args.sources:
        provenance["sources"] = args.sources
    for key in ("steps", "images_seen", "train_minutes", "train_tflop"):  # the totals over every stage
        provenance[key] = round(sum(stage[key] for stage in stages), 1)
    if len(stages) > 1:
        provenance["stages"] = stages
    folder = models_dir()
    target = folder / f"{args.name}.pt"
    save_checkpoint({"config": config, "model": {k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                     "step": args.step, "provenance": provenance}, target)
    symbols = cfg.latent_dim
    k_over_n = bandwidth_ratio(symbols, (3, cfg.image_size, cfg.image_size))
    with _manifest(folder) as document:
        document["models"][args.name] = {
            "file": target.name, "sha256": sha256_of_file(target), "bytes": target.stat().st_size,
            "receiver": args.description,
            "encoder": f"Deep JSCC encoder (GDN, {cfg.jscc_num_filters} filters, SNR-adaptive)"
                       + (f" of {args.base}" if args.base else ""),
            "base": args.base or None, "symbols": symbols, "k_over_n": k_over_n, "k_over_n_complex": k_over_n / 2,
            "channel": cfg.channel, "snr_range": list(cfg.snr_range) or [cfg.snr_db, cfg.snr_db],
            "training": provenance, "scores": {"n_images": 0, "by_snr": {}},
            "photo": bool(cfg.crop_size),  # trained on crops of photos, not on CIFAR-10's 32x32 images
        }
    print(f"{target}: {target.stat().st_size / 1e6:.2f} MB, {provenance['train_minutes']} min, "
          f"{provenance['train_tflop']} TFLOP")


def scores(args: argparse.Namespace) -> None:
    document = json.loads(Path(args.results).read_text())
    rows = [r for r in document["results"] if r["receiver"] == args.receiver and not r["control"]
            and r["start"] in ("gaussian", "-")]
    if not rows:
        raise SystemExit(f"no {args.receiver} rows in {args.results}")
    with _manifest(models_dir()) as manifest:
        entry = manifest["models"][args.name]
        entry["scores"] = {
            "n_images": document["n_images"], "data": args.data, "how": args.how,
            "steps": rows[0]["steps"], "sampler": rows[0]["sampler"], "samples_per_image": rows[0]["samples_per_image"],
            "seed": document["seed"], "command": args.command,
            "by_snr": {f"{r['snr_db']:g}": {key: r.get(key) for key in SCORE_KEYS} for r in rows},
        }
    print(f"{args.name}: scores at {', '.join(entry['scores']['by_snr'])} dB on {document['n_images']} images")


KODAK_KEYS = ("psnr", "ms_ssim", "patch_fd", "patch_kid", "colour_error_max", "colour_error_median", "seconds_per_image")


def kodak_scores(args: argparse.Namespace) -> None:
    document = json.loads(Path(args.results).read_text())
    receiver = "diffusion" if model_entry(args.name)["base"] else "deep_jscc"
    rows = [r for r in document["rows"] if r["model"] == args.name and r["receiver"] == receiver]
    if not rows:
        raise SystemExit(f"no {receiver} rows of {args.name} in {args.results}")
    with _manifest(models_dir()) as manifest:
        entry = manifest["models"][args.name]
        entry["kodak"] = {
            "n_images": rows[0]["n_images"], "psnr_is": document["psnr_is"], "receiver": rows[0]["receiver"],
            "command": args.command, "by_snr": {f"{r['snr_db']:g}": {key: r[key] for key in KODAK_KEYS} for r in rows}}
    print(f"{args.name}: Kodak scores at {', '.join(entry['kodak']['by_snr'])} dB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("add")
    p.add_argument("name")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--step", type=int, required=True)
    p.add_argument("--description", required=True)
    p.add_argument("--base", default="")
    p.add_argument("--data", default="CIFAR-10 data_batch_1 (10,000 training images)")
    p.add_argument("--machine", default="2-core CPU, no GPU")
    p.add_argument("--command", default="bash scripts/train_models.sh", help="the command that trained it")
    p.add_argument("--sources", default="", help="where the training data's sources are credited")
    p.set_defaults(func=add)
    p = sub.add_parser("scores")
    p.add_argument("name")
    p.add_argument("results", type=Path)
    p.add_argument("--receiver", required=True, choices=["deep_jscc", "diffusion"])
    p.add_argument("--data", required=True)
    p.add_argument("--how", default="")
    p.add_argument("--command", required=True)
    p.set_defaults(func=scores)
    p = sub.add_parser("kodak-scores")
    p.add_argument("name")
    p.add_argument("results", type=Path)
    p.add_argument("--command", required=True)
    p.set_defaults(func=kodak_scores)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
