"""fd_cls, kid_cls, acc_cls and the control_noise row: the maths against independent
implementations, the shipped classifier on real CIFAR-10 test images, and the metrics'
ordering on degraded copies of them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from diffjscc.cli import main
from diffjscc.evaluation.classifier import (classifier_features, load_classifier, shipped_classifier_path)
from diffjscc.evaluation.realism import RealismScorer, frechet_distance, kernel_distance
from diffjscc.receivers import matched_noise

SET_SIZE = 500  # each of the two disjoint sets of real test images


# ---- the maths ------------------------------------------------------------------------------
def _random_covariance(generator: np.random.Generator, dim: int) -> np.ndarray:
    a = generator.normal(size=(dim, 2 * dim))
    return a @ a.T / (2 * dim)


def test_frechet_distance_matches_scipy_sqrtm() -> None:
    """Against the textbook formula with SciPy's matrix square root, and 0 for equal Gaussians."""
    rng = np.random.default_rng(0)
    mean_a, mean_b = rng.normal(size=64), rng.normal(size=64)
    cov_a, cov_b = _random_covariance(rng, 64), _random_covariance(rng, 64)
    expected = (np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b)
                - 2 * np.trace(scipy.linalg.sqrtm(cov_a @ cov_b).real))
    ours = frechet_distance(*(torch.from_numpy(t) for t in (mean_a, cov_a, mean_b, cov_b)))
    assert ours == pytest.approx(expected, rel=1e-9)
    same = frechet_distance(*(torch.from_numpy(t) for t in (mean_a, cov_a, mean_a, cov_a)))
    assert abs(same) < 1e-8


def _unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Bińkowski et al. (2018) eq. 4 with k(a, b) = (a.b / d + 1)^3, written out with loops over pairs."""
    d = x.shape[1]
    kernel = lambda a, b: (a @ b.T / d + 1.0) ** 3  # noqa: E731
    m = x.shape[0]
    k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
    off = ~np.eye(m, dtype=bool)
    return float(k_xx[off].sum() / (m * (m - 1)) + k_yy[off].sum() / (m * (m - 1)) - 2 * k_xy.mean())


def test_kernel_distance_matches_the_unbiased_estimator() -> None:
    """One subset holding every row (MMD² does not depend on the order): the textbook value."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 8)), rng.normal(loc=0.3, size=(40, 8))
    mean, std = kernel_distance(torch.from_numpy(x), torch.from_numpy(y), subsets=1, subset_size=40)
    assert mean == pytest.approx(_unbiased_mmd2(y, x), rel=1e-9) and std == 0.0
    mean, std = kernel_distance(torch.from_numpy(x), torch.from_numpy(y), subsets=20, subset_size=30)
    assert mean > 3 * std > 0  # shifted sets: clearly apart


def test_matched_noise_gives_each_image_its_target_psnr() -> None:
    """The control's bisection: each image's 8-bit MSE lands on its target (PSNR within 0.01 dB);
    an image already past its target is left as it is."""
    generator = torch.Generator().manual_seed(0)
    source = torch.rand(6, 3, 32, 32, generator=generator) * 2 - 1
    estimate = (source + 0.05 * torch.randn(source.shape, generator=generator)).clamp(-1, 1)
    noise = torch.randn(source.shape, generator=generator)
    levels = lambda x: ((x.clamp(-1, 1) + 1) * 127.5).round()  # noqa: E731
    base_mse = (levels(estimate) - levels(source)).square().flatten(1).mean(1)
    target = base_mse * torch.tensor([1.5, 2, 4, 8, 16, 0.5])
    out = matched_noise(estimate, noise, source, target)
    mse = (levels(out) - levels(source)).square().flatten(1).mean(1)
    psnr = lambda e: 10 * torch.log10(255.0 ** 2 / e)  # noqa: E731
    assert torch.allclose(psnr(mse[:5]), psnr(target[:5]), atol=0.01), (psnr(mse), psnr(target))
    assert torch.equal(out[5], estimate[5])


# ---- the shipped classifier on real images ----------------------------------------------------
@pytest.fixture(scope="module")
def test_split(cifar_test_split: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """All test images of the shared archive as uint8 (N, 3, 32, 32) and their labels in the
    classifier's class order."""
    from diffjscc.data import ImageFolderDataset
    from diffjscc.data.folder import read_rgb_array

    root = cifar_test_split
    classifier = load_classifier()
    dataset = ImageFolderDataset(root / "cifar_test", with_labels=True, class_names=classifier.class_names)
    images = torch.stack([torch.from_numpy(read_rgb_array(path)).permute(2, 0, 1) for path in dataset.files])
    return images.contiguous(), torch.tensor(dataset.labels)


def test_shipped_classifier_is_small_and_has_its_stated_accuracy(test_split) -> None:
    images, labels = test_split
    path = shipped_classifier_path()
    assert path.stat().st_size <= 10 * 2**20
    classifier = load_classifier()
    _, predicted = classifier_features(classifier.network, images)
    measured = float((predicted == labels).double().mean())
    assert classifier.test_accuracy >= 0.75
    assert measured == pytest.approx(classifier.test_accuracy, abs=0.005)
    docs = (Path(__file__).resolve().parents[1] / "docs" / "evaluation.md").read_text()
    assert f"{100 * classifier.test_accuracy:.2f} %" in docs  # the figure stated beside it


def _degrade(images: torch.Tensor, how: str, strength: float) -> torch.Tensor:
    """uint8 (N, 3, H, W) images blurred (σ px), JPEG-compressed (quality) or with noise at a PSNR (dB)."""
    rng = np.random.default_rng(0)
    hwc = images.permute(0, 2, 3, 1).numpy()
    out = []
    for image in hwc:
        if how == "blur":
            result = gaussian_filter(image.astype(np.float64), sigma=(strength, strength, 0), mode="reflect")
        elif how == "jpeg":
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=int(strength))
            result = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float64)
        else:
            sigma = 255.0 / 10 ** (strength / 20)
            result = image + rng.normal(scale=sigma, size=image.shape)
        out.append(np.clip(np.round(result), 0, 255).astype(np.uint8))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def test_realism_metrics_tell_real_images_from_degraded_ones(test_split) -> None:
    """Two disjoint sets of real test images: KID within 3 standard deviations of 0 and a small
    FD; blurred (σ = 1 px), JPEG (quality 10) and 20 dB-noise copies of the first set are far
    away, and farther the stronger the degradation."""
    images, labels = test_split
    classifier = load_classifier()
    step = images.shape[0] // SET_SIZE  # file-name order is class by class: take every step-th image
    first, second = images[0::step][:SET_SIZE], images[step // 2::step][:SET_SIZE]
    first_labels = labels[0::step][:SET_SIZE]
    features = lambda x: classifier_features(classifier.network, x)[0]  # noqa: E731
    real_a, real_b = features(first), features(second)
    kid, kid_std = kernel_distance(real_a, real_b, subsets=100, subset_size=SET_SIZE // 2)
    assert abs(kid) <= 3 * kid_std, (kid, kid_std)

    scorer = RealismScorer(classifier)
    real = scorer.score(first, first_labels)
    degraded = {(how, strength): scorer.score(_degrade(first, how, strength), first_labels)
                for how, strength in (("blur", 1.0), ("blur", 2.0), ("jpeg", 30), ("jpeg", 10),
                                      ("noise", 30.0), ("noise", 20.0))}
    report = {key: round(value["fd_cls"], 3) for key, value in degraded.items()} | {"real": round(real["fd_cls"], 3)}
    for key in (("blur", 1.0), ("jpeg", 10), ("noise", 20.0)):  # the three, far from real images
        assert degraded[key]["fd_cls"] > 4 * real["fd_cls"], report  # measured 5.6x (JPEG) to 22x (blur)
        assert degraded[key]["kid_cls"] > real["kid_cls"] + 3 * degraded[key]["kid_cls_std"], report
        assert degraded[key]["acc_cls"] < real["acc_cls"], report
    for mild, strong in ((("blur", 1.0), ("blur", 2.0)), (("jpeg", 30), ("jpeg", 10)),
                         (("noise", 30.0), ("noise", 20.0))):
        assert degraded[mild]["fd_cls"] < degraded[strong]["fd_cls"], report


# ---- control rows through the CLI --------------------------------------------------------------
def test_control_rows_through_evaluate(cifar_root: Path, tmp_path: Path) -> None:
    """`evaluate --controls`: the source row (the real images: best realism, PSNR floored at 100
    dB) and control_noise with the one-sample diffusion row's PSNR within 0.05 dB, per SNR."""
    from launch_helpers import train_argv

    from diffjscc.runtime.checkpoint import list_checkpoints

    micro = ["num_channels=16", "channel_mult=[1,2]", "attention_resolutions=[16]", "num_res_blocks=1",
             "jscc_num_filters=16", "diffusion_steps=100", "sample_steps=2", "batch_size=8", "device=cpu"]
    data = cifar_root / "cifar_train"
    assert main(train_argv(data, tmp_path / "jscc", 20, 20, [*micro, "mode=jscc"])) == 0
    jscc = list_checkpoints(tmp_path / "jscc")[-1]
    assert main(train_argv(data, tmp_path / "frozen", 2, 2, [*micro, "mode=frozen", f"jscc_encoder_path={jscc}"])) == 0
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(list_checkpoints(tmp_path / "frozen")[-1]),
                 "--data", str(cifar_root / "cifar_test"), "--limit", "48", "--subset", "first", "--snr", "0,10", "--steps", "3",
                 "--samples-per-image", "2", "--controls", "--no-fid", "--no-progress", "--device", "cpu",
                 "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["results"]
    by = {(r["receiver"], r["snr_db"]): r for r in rows}
    for snr in (0.0, 10.0):
        diffusion, control, source = by[("diffusion", snr)], by[("control_noise", snr)], by[("source", snr)]
        assert control["psnr"] == pytest.approx(diffusion["psnr"], abs=0.05)
        assert control["samples_per_image"] == diffusion["samples_per_image"] == 2
        assert control["control"] and source["control"] and not diffusion["control"]
        assert source["psnr"] == pytest.approx(100.0) and source["fd_cls"] < min(r["fd_cls"] for r in rows
                                                                                    if r["receiver"] != "source")
        assert source["acc_cls"] >= diffusion["acc_cls"]
        assert {r["k_over_n_complex"] for r in rows} == {r["k_over_n"] / 2 for r in rows}
    text = (out / "results.md").read_text()
    assert "not Inception FID/KID" in text and "verdict at 0 dB" in text and "k_over_n_complex" in text
    assert "are inflated" in text  # --limit 48 in name order: the first classes only, and the table says so


def test_classifier_command_trains_on_a_labelled_folder(cifar_root: Path, tmp_path: Path, capsys) -> None:
    """`diffjscc classifier` writes a weights file that evaluate can use (with its reference
    statistics and accuracy), refuses to overwrite it, and refuses a folder of one class."""
    out = tmp_path / "cls.pt"
    argv = ["classifier", "--train", str(cifar_root / "cifar_train"), "--test", str(cifar_root / "cifar_test"),
            "--out", str(out), "--epochs", "1", "--batch-size", "64", "--widths", "8,16"]
    assert main(argv) == 0
    assert "top-1 accuracy" in capsys.readouterr().out
    loaded = load_classifier(out)
    assert loaded.feature_dim == 16 and loaded.reference_count == 256 and 0 <= loaded.test_accuracy <= 1
    assert loaded.reference_cov.shape == (16, 16) and loaded.reference_features.shape == (256, 16)
    assert torch.allclose(loaded.reference_cov, loaded.reference_cov.T)
    before = out.read_bytes()
    assert main(argv) == 2 and out.read_bytes() == before
    assert "--overwrite" in capsys.readouterr().err
    one_class = tmp_path / "cats"
    one_class.mkdir()
    for path in sorted((cifar_root / "cifar_train").glob("cat_*.png"))[:8]:
        (one_class / path.name).write_bytes(path.read_bytes())
    assert main(["classifier", "--train", str(one_class), "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "one class" in err
