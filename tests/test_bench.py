"""``python -m bench SUB`` end to end at a micro size: every sub-benchmark runs and writes its
result file with the expected fields. No timing is asserted (the figures need the full runs);
the quality figures are: the ``sample`` and ``quality`` rows must be those of ``diffjscc evaluate``
on the same checkpoints, test images, step counts and seed, and the recorded training budgets
those the checkpoints were trained for."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from bench.__main__ import main
from bench_checks import evaluate_rows
from diffjscc.runtime.checkpoint import load_checkpoint


def test_train_step_prints_the_table_and_a_speedup_line(tmp_path: Path, capsys) -> None:
    assert main(["train-step", "--config", "tiny", "--batch-size", "2", "--steps", "1", "--rounds", "1",
                 "--matmul-size", "64", "--variants", "eager fp32,channels_last,fused AdamW",
                 "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert re.fullmatch(r"speedup \d+\.\d\d", lines[-1])
    assert re.match(r"tiny: fast path \(fused AdamW\) \d+\.\d\dx eager fp32, \d+\.\d% of the fp32 matmul peak",
                    lines[-2])
    result = json.loads((tmp_path / "train_step_tiny.json").read_text())
    assert result["batch_size"] == 2 and result["flops_per_step"] > 0
    assert result["fast_path"]["name"] == "fused AdamW"  # the trainer's default for tiny
    assert result["fast_path"]["variant"]["adamw"] == "fused"
    assert set(result["variants"]) == {"eager fp32", "channels_last", "fused AdamW"}
    for row in result["variants"].values():
        assert row["images_per_s"] > 0 and 0 < row["fraction_of_matmul_peak"]
        assert {"ratio_to_eager_fp32", "achieved_flops_per_s", "step_s_best", "images_per_s_median"} <= set(row)
    assert result["variants"]["eager fp32"]["ratio_to_eager_fp32"] == 1.0
    assert result["speedup"] == result["variants"]["fused AdamW"]["ratio_to_eager_fp32"]
    assert result["matmul_reference"]["size"] == 64 and result["matmul_reference"]["flops_per_s"] > 0
    assert "AttnProcessor2_0" in result["attention_processors"]  # SDPA attention
    assert isinstance(result["native_bf16"], bool) and result["machine"]["cpu"]
    if not result["native_bf16"]:
        assert any("bf16" in note for note in result["notes"]) or "bf16 autocast" not in result["variants"]
    assert result["data"] == "synthetic"


def test_train_step_trains_on_the_first_images_of_data(cifar_root: Path, tmp_path: Path, capsys) -> None:
    assert main(["train-step", "--config", "tiny", "--batch-size", "2", "--steps", "1", "--rounds", "1",
                 "--matmul-size", "64", "--variants", "eager fp32", "--data", str(cifar_root / "cifar_test"),
                 "--set", "class_cond=true", "--results", str(tmp_path)]) == 0
    assert re.fullmatch(r"speedup \d+\.\d\d", capsys.readouterr().out.strip().splitlines()[-1])
    result = json.loads((tmp_path / "train_step_tiny.json").read_text())
    assert result["data"] == str(cifar_root / "cifar_test") and result["batch_size"] == 2
    assert set(result["variants"]) == {"eager fp32", "fast path (trainer default)"}  # fused AdamW, added

def test_memory_measures_each_config_in_a_fresh_process(tmp_path: Path, capsys) -> None:
    assert main(["memory", "--config", "tiny", "--batch-size", "2", "--device", "cpu", "--threads", "1",
                 "--results", str(tmp_path)]) == 0
    assert "step peak" in capsys.readouterr().out
    result = json.loads((tmp_path / "memory.json").read_text())
    (row,) = result["rows"]
    assert row["batch_size"] == 2 and row["path"] == "fast" and row["variant"]["adamw"] == "fused"
    assert row["rss_peak_bytes"] >= row["rss_after_build_bytes"] >= row["rss_baseline_bytes"] > 0
    assert row["step_peak_rss_bytes"] == row["rss_peak_bytes"] - row["rss_baseline_bytes"] > 0


def test_sample_trains_a_checkpoint_and_scores_each_step_count(cifar_root: Path, tmp_path: Path, capsys) -> None:
    work = tmp_path / "work"
    argv = ["sample", "--data-root", str(cifar_root), "--work", str(work), "--set", "batch_size=4", "--set",
            "log_interval=1", "--test-images", "4", "--timing-images", "2", "--rounds", "1", "--steps", "2,3",
            "--samplers", "ddim,dpm++2m", "--spacings", "leading,quadratic", "--threads", "1", "--results", str(tmp_path)]
    threads = torch.get_num_threads()

    def run(train_steps: int) -> int:
        try:
            return main([*argv, "--train-steps", str(train_steps)])
        finally:
            torch.set_num_threads(threads)

    assert run(2) == 0
    out = capsys.readouterr().out
    assert "Δ vs ddim 3 leading" in out
    assert "target: <= 8 evaluations within 0.3 dB PSNR and 10% fd_cls of ddim 3 leading" in out
    result = json.loads((tmp_path / "sample.json").read_text())
    assert result["trained_here"] and result["train_steps"] == 2 and result["snr_db"] == 10.0
    assert result["threads"] == 1  # --threads, applied by `python -m bench` for every sub-benchmark
    assert [(row["spacing"], row["sampler"], row["steps"]) for row in result["rows"]] == [
        (spacing, sampler, steps) for spacing in ("leading", "quadratic") for sampler in ("ddim", "dpm++2m")
        for steps in (2, 3)]
    assert result["target"]["reference"] == ["ddim", "leading", 3]
    for row in result["rows"]:
        assert row["n"] == 4 and row["images_per_s"] > 0 and row["fd_cls"] > 0
        assert row["meets_target"] == (abs(row["psnr_minus_reference"]) <= 0.3 and row["fd_cls_ratio"] <= 1.1)
    assert result["rows"][1]["psnr_minus_reference"] == 0.0 and result["rows"][1]["fd_cls_ratio"] == 1.0
    assert result["target"]["met"] == any(row["meets_target"] for row in result["rows"])

    # the checkpoint is the receiver it says, trained for the recorded budget
    checkpoint = Path(result["checkpoint"])
    payload = load_checkpoint(checkpoint)
    cfg = payload["config"]
    assert payload["step"] == result["train_steps"] == cfg["total_steps"] and cfg["batch_size"] == 4
    assert (cfg["mode"], cfg["conditioning"], cfg["prediction"]) == (result["mode"], "residual", "v")
    assert cfg["data_dir"] == str(cifar_root / "cifar_train")

    # each row is what `diffjscc evaluate` gives for that checkpoint, sampler, spacing, step count and seed
    for row in result["rows"]:
        name = f"eval_{row['sampler']}_{row['spacing']}{row['steps']}.json"
        expected = evaluate_rows([checkpoint], work / "test_4", tmp_path / name,
                                 "--snr", "10", "--start", "gaussian", "--steps", str(row["steps"]), "--seed", "0",
                                 "--sampler", row["sampler"], "--spacing", row["spacing"])
        diffusion = next(r for r in expected if r["receiver"] == "diffusion")
        assert (diffusion["sampler"], diffusion["spacing"]) == (row["sampler"], row["spacing"])
        assert (row["psnr"], row["ssim"]) == pytest.approx((diffusion["psnr"], diffusion["ssim"]), abs=1e-9)
    deep = next(r for r in expected if r["receiver"] == "deep_jscc")
    assert result["deep_jscc"]["psnr"] == pytest.approx(deep["psnr"], abs=1e-9)
    assert result["rows"][0]["psnr"] != result["rows"][1]["psnr"]  # the step count reached the sampler
    assert result["rows"][1]["psnr"] != result["rows"][5]["psnr"]  # and the spacing

    # a rerun reuses the checkpoint: nothing retrained, the same rows
    trained_at = checkpoint.stat().st_mtime_ns
    assert run(2) == 0
    assert "reusing the finished run" in capsys.readouterr().out
    rerun = json.loads((tmp_path / "sample.json").read_text())
    assert checkpoint.stat().st_mtime_ns == trained_at
    assert [(r["psnr"], r["ssim"]) for r in rerun["rows"]] == [(r["psnr"], r["ssim"]) for r in result["rows"]]
    # another budget in the same --work is refused, not reported under the old checkpoint
    assert run(3) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "total_steps=2" in err and checkpoint.stat().st_mtime_ns == trained_at


def test_quality_trains_the_receivers_and_compares_them_to_deep_jscc(cifar_root: Path, tmp_path: Path,
                                                                      capsys) -> None:
    work = tmp_path / "work"
    argv = ["quality", "--data-root", str(cifar_root), "--work", str(work), "--images", "8", "--jscc-images", "8",
            "--validation-images", "4", "--batch-size", "4", "--conditioning", "embed", "--test-images", "4",
            "--sampling-steps", "2",
            "--samples-per-image", "2", "--set", "log_interval=1", "--results", str(tmp_path)]
    # --train-only trains (here the v-prediction receiver) and stops; the full run reuses it
    assert main([*argv, "--prediction", "v", "--train-only"]) == 0
    assert not (tmp_path / "quality.json").exists()
    trained_v = json.loads((work / "images_8" / "frozen_embed_v" / "bench_training.json").read_text())
    assert trained_v["prediction"] == "v"
    v_trained_at = Path(trained_v["checkpoint"]).stat().st_mtime_ns
    assert main([*argv, "--prediction", "epsilon,v"]) == 0
    out = capsys.readouterr().out
    assert "reusing" in out
    assert "ORACLE" in out and "Δ PSNR vs Deep JSCC" in out and "Deep JSCC convergence" in out
    assert "not Inception FID/KID" in out and "verdict at 10 dB" in out
    result = json.loads((tmp_path / "quality.json").read_text())
    assert result["images_per_model"] == 8 and result["test_images"] == 4 and result["snr_db"] == 10.0
    assert result["k_over_n"] == pytest.approx(1 / 6)
    assert {row["conditioning"] for row in result["summary"]} == {"-", "embed", "embed, v"}
    assert result["training"]["embed, v"]["seconds"] == trained_v["seconds"]  # reused, not retrained
    assert Path(trained_v["checkpoint"]).stat().st_mtime_ns == v_trained_at
    rows = {(row["system"].split(",")[0], row["start"]): row for row in result["summary"]
            if row["conditioning"] in ("-", "embed")}
    assert set(rows) == {("Deep JSCC", "-"), ("control: source images", "-"), ("diffusion", "gaussian"),
                         ("diffusion", "mean"), ("diffusion", "inversion"), ("control: Deep JSCC + noise at the diffusion PSNR", "control")}
    curve = result["jscc_convergence"]["curve"]
    assert [point["step"] for point in curve] == [1, 2] and "held-out validation" in result["jscc_convergence"]["criterion"]
    assert result["jscc_convergence"]["converged"] == (curve[1]["psnr"] - curve[0]["psnr"] < 0.1)
    assert rows[("Deep JSCC", "-")]["psnr_minus_deep_jscc"] == 0.0
    assert rows[("diffusion", "gaussian")]["target_db"] == 3.0 and rows[("diffusion", "mean")]["target_db"] == 1.0
    assert rows[("diffusion", "inversion")]["oracle"] and rows[("diffusion", "inversion")]["target_met"] is None
    for row in result["summary"]:
        if row["control"]:
            assert row["train_images"] is None and row["fd_cls"] is not None
            continue
        assert row["train_images"] == 8 and row["receiver_gflop_per_image"] > 0 and row["train_gflop_per_image"] > 0
        assert row["train_tflop"] == pytest.approx(8 * row["train_gflop_per_image"] / 1e3)
    assert (tmp_path / "quality.md").read_text().startswith("Quality per compute")

    # every recorded budget is what its checkpoint was trained for; the receivers sit on that Deep JSCC
    training = result["training"]
    assert set(training) == {"jscc", "embed", "embed, v"}
    for name, record in training.items():
        payload = load_checkpoint(record["checkpoint"])
        cfg = payload["config"]
        assert payload["step"] == record["steps"] == 2 and cfg["batch_size"] == record["batch_size"] == 4
        assert record["images"] == payload["step"] * cfg["batch_size"] == 8
        assert cfg["mode"] == record["mode"] == ("jscc" if name == "jscc" else "frozen")
        if name != "jscc":
            assert cfg["jscc_encoder_path"] == training["jscc"]["checkpoint"]
            assert (cfg["conditioning"], cfg["prediction"]) == (record["conditioning"], record["prediction"]) == (
                "embed", "v" if name == "embed, v" else "epsilon")

    # the summary rows are those of `diffjscc evaluate` on the same checkpoints, test images and seed
    receivers = ["embed", "embed, v"]
    expected = evaluate_rows([Path(training[name]["checkpoint"]) for name in receivers], work / "test_4",
                             tmp_path / "eval.json", "--snr", "10", "--start", "gaussian,mean,inversion",
                             "--steps", "2", "--samples-per-image", "2", "--seed", "0", "--controls")
    deep = next(r for r in expected if r["receiver"] == "deep_jscc")
    source = next(r for r in expected if r["receiver"] == "source")
    by_checkpoint = {(r["checkpoint"], "control" if r["receiver"] == "control_noise" else r["start"]): r
                     for r in expected if r["receiver"] in ("diffusion", "control_noise")}
    assert len(result["summary"]) == 2 + len(by_checkpoint) == 10
    for row in result["summary"]:
        if row["system"] in ("Deep JSCC", source["system"]):
            want = deep if row["system"] == "Deep JSCC" else source
        else:
            want = by_checkpoint[(training[row["conditioning"]]["checkpoint"], row["start"])]
            assert row["system"] == want["system"]
        assert (row["fd_cls"], row["acc_cls"]) == pytest.approx((want["fd_cls"], want["acc_cls"]), abs=1e-9)
        assert (row["psnr"], row["ssim"]) == pytest.approx((want["psnr"], want["ssim"]), abs=1e-9)
        assert row["psnr_minus_deep_jscc"] == pytest.approx(want["psnr"] - deep["psnr"], abs=1e-9)

    # a run folder trained otherwise is not reused: one line, exit status 2
    capsys.readouterr()
    assert main([*argv[:-2], "--set", "lr=1e-3", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "lr=" in err and err.count("\n") == 1


def test_quality_targets_preset_scores_the_shipped_receivers(cifar_root: Path, tmp_path: Path, capsys) -> None:
    """The preset's rows are the evaluation protocol's on the shipped files, every target gets a
    verdict line, and the training figures are the manifest's."""
    from diffjscc.runtime.pretrained import model_entry, verified_path

    assert main(["quality", "--preset", "targets", "--test-images", "4", "--data-root", str(cifar_root),
                 "--work", str(tmp_path / "work"), "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "quality_targets.json").read_text())
    assert (tmp_path / "quality_targets.md").read_text().count("\n| ") == len(result["summary"]) + 1  # + header
    assert [v["name"] for v in result["variants"]] == ["shipped", "guided"]
    by = {(r["setting"], r["variant"].split(" ")[0], r["receiver"]): r for r in result["summary"]}
    assert len(by) == len(result["summary"]) == 3 * 7  # Deep JSCC, source; shipped 1 + mean + control; guided 1 + control
    # 22 targets: shipped 5 and guided 4 (no mean) in each starved setting, 2 each at 512 @ 10 dB
    assert len(result["verdicts"]) == 22 and out.count("met: ") == 22
    deep = by["512 @ 0 dB", "-", "Deep JSCC"]
    base = model_entry("deep_jscc_512")["training"]
    assert (deep["train_tflop"], deep["train_minutes"]) == (base["train_tflop"], base["train_minutes"])
    one = by["512 @ 0 dB", "shipped", "diffusion, one sample"]
    assert one["train_tflop"] == model_entry("diffusion_512")["training"]["train_tflop"]
    assert by["512 @ 0 dB", "guided", "diffusion, one sample"]["network_evaluations"] == 16
    rows = evaluate_rows([verified_path("diffusion_512")], tmp_path / "work" / "test_4", tmp_path / "eval.json",
                         "--snr", "0", "--steps", "8", "--start", "gaussian,mean", "--samples-per-image", "8")
    diffusion = next(r for r in rows if r["receiver"] == "diffusion" and r["start"] == "gaussian")
    mean = next(r for r in rows if r["start"] == "mean")
    assert one["psnr"] == pytest.approx(diffusion["psnr"], abs=1e-9)
    assert by["512 @ 0 dB", "shipped", "diffusion, mean of 8"]["psnr"] == pytest.approx(mean["psnr"], abs=1e-9)


def test_kodak_scores_photos_whole_with_controls_patch_realism_and_verdicts(kodak: Path, tmp_path: Path,
                                                                            capsys) -> None:
    from diffjscc.runtime.pretrained import model_names

    if not {"deep_jscc_photo_512", "deep_jscc_512"} <= set(model_names()):
        pytest.skip("the package ships no deep_jscc_photo_512 / deep_jscc_512")
    out = tmp_path / "kodak.json"
    assert main(["kodak", "--kodak", str(kodak), "--models", "deep_jscc_photo_512,deep_jscc_512", "--snr", "10",
                 "--limit", "2", "--json", str(out), "--sheet", str(tmp_path / "sheet")]) == 0
    document = json.loads(out.read_text())
    rows = {(r["model"], r["receiver"]): r for r in document["rows"]}
    photo, cifar = rows["deep_jscc_photo_512", "deep_jscc"], rows["deep_jscc_512", "deep_jscc"]
    assert photo["n_images"] == 2 and [p["file"] for p in photo["per_image"]] == ["kodim01.png", "kodim02.png"]
    assert photo["psnr"] == pytest.approx(sum(p["psnr"] for p in photo["per_image"]) / 2)  # mean of per-image PSNR
    assert photo["k_over_n_complex"] == pytest.approx(photo["k_over_n"] / 2)
    assert rows["deep_jscc_photo_512", "source"]["patch_fd"] == pytest.approx(0, abs=1e-6)
    assert 0 < photo["patch_fd"] < cifar["patch_fd"] and photo["colour_error_max"] < cifar["colour_error_max"]
    assert photo["trained_on"] == "photo crops" and cifar["trained_on"] == "CIFAR-10 32x32"
    assert photo["train_minutes"] > 0 and photo["train_tflop"] > 0
    assert any(line.startswith(("MET", "MISSED")) and "deep_jscc_photo_512" in line for line in document["verdicts"])
    text = out.with_suffix(".md").read_text()
    assert "SwinJSCC" in text and "reported" in text and "published" in text  # anchors, labelled
    assert (tmp_path / "sheet" / "kodak_sheet_10dB.png").is_file()  # kodim01's bricks


def test_residual_bands_low_pass_against_closed_forms() -> None:
    """The low-pass of ``python -m bench residual-bands`` keeps a constant (edges repeated), keeps
    an impulse's sum, and takes a pixel-scale checkerboard almost to its mean."""
    from bench.residual_bands import low_pass

    constant = torch.full((3, 20, 24), 7.0, dtype=torch.float64)
    torch.testing.assert_close(low_pass(constant, 2.0), constant)
    impulse = torch.zeros(3, 41, 41, dtype=torch.float64)
    impulse[:, 20, 20] = 1.0
    blurred = low_pass(impulse, 2.0)
    assert blurred.shape == impulse.shape and float(blurred[0].sum()) == pytest.approx(1.0, abs=1e-12)
    assert float(blurred[0, 20, 20]) == pytest.approx(1 / (2 * torch.pi * 4), rel=0.02)  # the 2-D Gaussian's peak
    board = (torch.arange(32)[:, None] + torch.arange(32)[None, :]).remainder(2).double().expand(3, 32, 32)
    assert float((low_pass(board, 2.0)[:, 8:-8, 8:-8] - 0.5).abs().max()) < 1e-3
