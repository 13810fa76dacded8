"""The models shipped inside the package: a manifest, and loading by name with verified weights.

``diffjscc/assets/models/manifest.json`` lists each model: its checkpoint file (an ordinary
diffjscc checkpoint holding EMA weights only), the file's SHA-256 and size, what it is, how it was
trained and its measured scores. ``scripts/train_models.sh`` regenerates the files and the
manifest (``scripts/package_models.py`` writes them). Loading by name checks size and hash
before the file is read (with ``weights_only=True`` as every checkpoint): a changed or missing
file is a one-line error naming the model, and nothing in it is executed.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from diffjscc.errors import UserError

__all__ = ["MANIFEST_FORMAT", "checkpoint_for", "manifest", "model_entry", "model_names", "models_dir",
           "sha256_of_file", "verified_path"]

MANIFEST_FORMAT = "diffjscc-models/1"
REGENERATE = "bash scripts/train_models.sh"


def sha256_of_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def models_dir() -> Path:
    """The folder of the shipped checkpoints and their manifest: the package's, or the folder
    that ``DIFFJSCC_MODELS_DIR`` names (a regenerated set kept elsewhere, or a trial run)."""
    override = os.environ.get("DIFFJSCC_MODELS_DIR")
    if override:
        return Path(override)
    return Path(str(resources.files("diffjscc") / "assets" / "models"))


def manifest(folder: Path | None = None) -> dict[str, Any]:
    """The manifest document (``{"format", "models": {name: entry}, ...}``); an empty registry
    when the package ships no models."""
    path = (folder or models_dir()) / "manifest.json"
    if not path.is_file():
        return {"format": MANIFEST_FORMAT, "models": {}}
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"the model manifest {path} is unreadable ({type(err).__name__}); reinstall diffjscc") from None
    if document.get("format") != MANIFEST_FORMAT:
        raise UserError(f"the model manifest {path} has format {document.get('format')!r}, not {MANIFEST_FORMAT!r}")
    return document


def model_names(folder: Path | None = None) -> list[str]:
    return list(manifest(folder)["models"])


def model_entry(name: str, folder: Path | None = None) -> dict[str, Any]:
    """The manifest entry of ``name``; a one-line error listing the names for an unknown one."""
    models = manifest(folder)["models"]
    if name not in models:
        known = ", ".join(models) or "none are installed"
        raise UserError(f"unknown model {name!r}; shipped models: {known} (see 'diffjscc models')")
    return models[name]


def photo_models(symbols: int, folder: Path | None = None) -> list[str]:
    """The shipped photo models (trained on crops of photos) with ``symbols`` real symbols per
    32x32x3 block, Deep JSCC first: what to use for photos instead of a CIFAR model."""
    entries = manifest(folder).get("models", {})
    names = [name for name, entry in entries.items() if entry.get("photo") and entry.get("symbols") == symbols]
    return sorted(names, key=lambda name: (entries[name].get("base") is not None, name))


def verified_path(name: str, folder: Path | None = None) -> Path:
    """The checkpoint file of model ``name`` after checking its size and SHA-256 against the
    manifest: a missing or changed file is a one-line UserError naming the model."""
    folder = folder or models_dir()
    entry = model_entry(name, folder)
    path = folder / entry["file"]
    if not path.is_file():
        raise UserError(f"model {name!r}: its file {path} is missing; reinstall diffjscc or regenerate it "
                        f"with {REGENERATE}")
    if path.stat().st_size != entry["bytes"] or sha256_of_file(path) != entry["sha256"]:
        raise UserError(f"model {name!r}: {path} does not match the manifest (size or SHA-256 differs: corrupted "
                        f"or replaced); refusing to load it. Reinstall diffjscc or regenerate it with {REGENERATE}")
    return path


def path_or_model(value: str | os.PathLike) -> Path:
    """``value`` as a path where that file exists or it names no shipped model; else the verified
    file of the shipped model of that name (a key such as ``jscc_encoder_path`` takes either)."""
    if not Path(value).exists() and str(value) in model_names():
        return verified_path(str(value))
    return Path(value)


def checkpoint_for(checkpoint: str | os.PathLike | None, model: str | None) -> Path:
    """The checkpoint a command reads: ``--checkpoint PATH`` or ``--model NAME`` (verified), one of them."""
    if (checkpoint is None) == (model is None):
        raise UserError("give either --checkpoint PATH or --model NAME (see 'diffjscc models')")
    return verified_path(model) if model is not None else Path(checkpoint)
