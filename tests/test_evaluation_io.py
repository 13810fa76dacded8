"""What evaluate, sample and transmit read and write: the files a user made are never written
over, skipped inputs are never silent, subsets are spread over the folder, and result files are
readable by whoever the umask lets read them."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from diffjscc.evaluation.results import write_results
from diffjscc.runtime.checkpoint import save_checkpoint
from diffjscc.runtime.rundir import write_text_atomic


@pytest.fixture
def umask_027():
    """Run under umask 027 (group may read, others nothing), restored afterwards."""
    previous = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_written_files_honour_the_umask(umask_027, tmp_path: Path) -> None:
    """Atomic writes (temporary file + rename) give the mode a plain open gives: 0o666 & ~umask,
    not mkstemp's 0o600; a data split folder gets mkdir's 0o777 & ~umask, not mkdtemp's 0o700."""
    from diffjscc.data.cifar10 import _write_split
    from diffjscc.evaluation.fid import ReferenceStats

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert _mode(plain) == 0o640  # what the umask gives a plain open: the reference
    row = {"system": "Deep JSCC", "model": "m", "snr_db": 0.0, "k_over_n": 0.5, "psnr": 20.0}
    document = {"results": [row], "metrics": {"fid": {}, "lpips": None}, "notes": []}
    written = write_results(document, tmp_path / "res", tmp_path / "extra.json")
    write_text_atomic(tmp_path / "note.txt", "x")
    save_checkpoint({"model": {}, "config": {}}, tmp_path / "ckpt_0000001.pt")
    ReferenceStats(torch.zeros(2), torch.zeros(2, 2), 1).save(tmp_path / ".fid_stats_x.npz", "key")
    for path in [*written, tmp_path / "note.txt", tmp_path / "ckpt_0000001.pt", tmp_path / ".fid_stats_x.npz"]:
        assert _mode(path) == 0o640, (path, oct(_mode(path)))
    split = tmp_path / "cifar_test"
    assert _write_split(np.zeros((2, 4, 4, 3), np.uint8), [0, 1], ["a", "b"], split) == 2
    assert _mode(split) == 0o750, oct(_mode(split))
    assert {_mode(p) for p in split.iterdir()} == {0o640}


# ---- evaluate / sample / transmit end to end, with the shipped models on the packaged CIFAR-10 images
DEMO = Path(__file__).resolve().parents[1] / "diffjscc" / "assets" / "cifar10_demo"  # 32 per class, sorted by class


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("diffjscc: error:"), err
    return err[0]


def _evaluate(data: Path, out: Path, *extra: str, model: str = "deep_jscc_512") -> int:
    from diffjscc.cli import main

    return main(["evaluate", "--model", model, "--data", str(data), "--snr", "10", "--no-fid", "--no-realism",
                 "--no-progress", "--device", "cpu", "--out", str(out), *extra])


def test_limit_takes_an_evenly_spaced_subset_and_records_it(tmp_path: Path) -> None:
    """--limit 10 of the 320 class-sorted images takes every 32nd: one per class, not ten airplanes;
    results.json names the files. --subset first keeps the old choice."""
    assert _evaluate(DEMO, tmp_path / "spread", "--limit", "10") == 0
    images = json.loads((tmp_path / "spread" / "results.json").read_text())["images"]
    names = sorted(p.name for p in DEMO.glob("*.png"))
    assert images["files"] == [names[32 * i] for i in range(10)]
    assert len({name.split("_")[0] for name in images["files"]}) == 10
    assert images["readable"] == 320 and images["subset"] == "spread" and images["skipped"] == []
    assert _evaluate(DEMO, tmp_path / "first", "--limit", "3", "--subset", "first") == 0
    assert json.loads((tmp_path / "first" / "results.json").read_text())["images"]["files"] == names[:3]


def test_steps_default_to_the_models_own(tmp_path: Path, monkeypatch) -> None:
    """Without --steps, evaluate, sample and transmit sample at the model's sample_steps (8 for the
    shipped receivers: what they were trained and scored at), not a fixed 20."""
    import diffjscc.evaluation.grids as grids
    from diffjscc.cli import main
    from diffjscc.runtime.pretrained import verified_path
    from diffjscc.system import load_system

    own = load_system(str(verified_path("diffusion_512"))).cfg.sample_steps
    assert own == 8
    assert _evaluate(DEMO, tmp_path / "eval", "--limit", "1", model="diffusion_512") == 0
    rows = json.loads((tmp_path / "eval" / "results.json").read_text())["results"]
    assert {r["steps"] for r in rows if r["receiver"] == "diffusion"} == {own}
    seen: list[int] = []
    original = grids.receive
    monkeypatch.setattr(grids, "receive", lambda system, receiver, received, context: (
        seen.append(context.steps), original(system, receiver, received, context))[1])
    assert main(["sample", "--model", "diffusion_512", "--data", str(DEMO), "--limit", "1", "--device", "cpu",
                 "--out", str(tmp_path / "sample")]) == 0
    assert seen and set(seen) == {own}


def test_sample_records_its_sources_and_refuses_to_mix_runs(tmp_path: Path, capsys) -> None:
    from diffjscc.cli import main

    argv = ["sample", "--model", "deep_jscc_512", "--data", str(DEMO), "--device", "cpu", "--out", str(tmp_path)]
    assert main([*argv, "--limit", "4"]) == 0
    names = sorted(p.name for p in DEMO.glob("*.png"))
    lines = (tmp_path / "sources.txt").read_text().splitlines()
    assert lines == [f"received_{i:04d}.png\t{names[80 * i]}" for i in range(4)]
    before = (tmp_path / "grid.png").read_bytes()
    capsys.readouterr()
    assert main([*argv, "--limit", "2"]) == 2  # the folder holds the outputs of the first run
    assert "grid.png" in _one_line_error(capsys) and (tmp_path / "grid.png").read_bytes() == before
    assert main([*argv, "--limit", "2", "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.glob("received_*.png")) == ["received_0000.png", "received_0001.png"]


def _demo_image(tmp_path: Path) -> Path:
    source = tmp_path / "photo.png"
    source.write_bytes(next(iter(sorted(DEMO.glob("*.png")))).read_bytes())
    return source


def test_transmit_never_writes_over_its_input(tmp_path: Path, capsys) -> None:
    """OUT = IN is refused by name, by another spelling and through a hard link (same inode), with
    or without --overwrite; the input stays byte for byte."""
    from diffjscc.cli import main

    source = _demo_image(tmp_path)
    original = source.read_bytes()
    link = tmp_path / "link.png"
    os.link(source, link)
    base = ["transmit", "--model", "deep_jscc_512", "--snr", "10", "--device", "cpu"]
    for target in (source, tmp_path / "." / "photo.png", link):
        for extra in ([], ["--overwrite"]):
            assert main([*base, *extra, str(source), str(target)]) == 2
            assert "is the input image itself" in _one_line_error(capsys)
    assert source.read_bytes() == original


def test_transmit_refuses_an_existing_output_unless_overwrite(tmp_path: Path, capsys) -> None:
    from diffjscc.cli import main

    source = _demo_image(tmp_path)
    target = tmp_path / "mine.png"
    target.write_bytes(b"the user's file")
    base = ["transmit", "--model", "deep_jscc_512", "--snr", "10", "--device", "cpu", str(source), str(target)]
    assert main(base) == 2
    assert "--overwrite" in _one_line_error(capsys) and target.read_bytes() == b"the user's file"
    assert main([*base, "--overwrite"]) == 0
    assert target.read_bytes() != b"the user's file" and target.read_bytes()[:4] == b"\x89PNG"


def test_an_unreadable_image_is_refused_by_name_unless_skip_bad(tmp_path: Path, capsys) -> None:
    """A corrupt file is one line naming it (N never changes silently); --skip-bad leaves it out
    and records it in results.json (images.skipped) and its notes."""
    data = tmp_path / "data"
    data.mkdir()
    for path in sorted(DEMO.glob("*.png"))[::80]:
        (data / path.name).write_bytes(path.read_bytes())
    (data / "cat_99999.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    capsys.readouterr()
    assert _evaluate(data, tmp_path / "refused") == 2
    line = _one_line_error(capsys)
    assert "cat_99999.png" in line and "--skip-bad" in line and not (tmp_path / "refused").exists()
    assert _evaluate(data, tmp_path / "res", "--skip-bad") == 0
    document = json.loads((tmp_path / "res" / "results.json").read_text())
    assert document["n_images"] == 4 and {r["n"] for r in document["results"]} == {4}
    assert [s["file"] for s in document["images"]["skipped"]] == ["cat_99999.png"]
    assert "cat_99999.png" not in document["images"]["files"]
    assert any("cat_99999.png" in note and "--skip-bad" in note for note in document["notes"])
