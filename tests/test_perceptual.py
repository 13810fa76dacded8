"""LPIPS and DISTS without torchvision, on real photos: LPIPS against torchmetrics' implementation
on the same weights, torchvision-layout weight files loaded strictly, DISTS' closed forms, and
``diffjscc evaluate --lpips-weights`` end to end (a null with its reason without the file)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from diffjscc.cli import main
from diffjscc.data import load_image_tensor
from diffjscc.errors import UserError
from diffjscc.evaluation.perceptual import (DISTS, LPIPS, L2Pooling, PerceptualScorer, alexnet_features, load_dists,
                                            load_lpips, make_perceptual)

# torchvision's AlexNet and VGG16 ``features`` parameters, written out from torchvision's model
# definitions (index: (out, in, kernel)): the layout of its ImageNet files.
ALEXNET_CONVS = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}
VGG16_CONVS = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256),
               14: (256, 256), 17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512),
               28: (512, 512)}


def _torchvision_file(path: Path, convs: dict, seed: int) -> Path:
    """A state dict in torchvision's layout, random He-scaled weights, with a head (never loaded)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for index, shape in convs.items():
        out, inp, kernel = (*shape, 3)[:3]
        fan_in = inp * kernel * kernel
        state[f"features.{index}.weight"] = torch.randn(out, inp, kernel, kernel, generator=generator) * (2 / fan_in) ** 0.5
        state[f"features.{index}.bias"] = torch.randn(out, generator=generator) * 0.01
    state["classifier.6.bias"] = torch.zeros(1000)
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory) -> Path:
    return _torchvision_file(tmp_path_factory.mktemp("alexnet") / "alexnet-owt-7be5be79.pth", ALEXNET_CONVS, 0)


@pytest.fixture(scope="module")
def photo_pair(kodak: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 128x160 crops of Kodak photos, and each with JPEG-like noise: (2, 3, 128, 160) twice."""
    crops = torch.stack([load_image_tensor(kodak / name)[:, 100:228, 200:360] for name in ("kodim04.png", "kodim13.png")])
    crops = (crops + 1) / 2  # load_image_tensor gives [-1, 1]
    noisy = (crops + 0.08 * torch.randn(crops.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    return crops, noisy


def test_lpips_equals_torchmetrics_on_the_same_weights(alexnet_file, photo_pair, monkeypatch) -> None:
    """torchmetrics' LPIPS (the authors' port) with its AlexNet taken from the same file: the values agree."""
    import torchmetrics.functional.image.lpips as tm_lpips

    ours = load_lpips(alexnet_file)
    monkeypatch.setattr(tm_lpips, "_get_tv_model_features", lambda net, pretrained=False: copy.deepcopy(ours.features))
    reference = tm_lpips._LPIPS(pretrained=True, net="alex").eval()
    source, noisy = photo_pair
    with torch.no_grad():
        expected = reference(noisy, source, normalize=True).flatten()
        got = ours(noisy, source)
    assert got.shape == (2,) and (got > 0).all()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    assert torch.equal(ours(source, source), torch.zeros(2))


def test_torchvision_layout_files_load_strictly_and_wrong_files_are_one_line_errors(alexnet_file, tmp_path) -> None:
    net = load_lpips(alexnet_file)
    state = torch.load(alexnet_file, weights_only=True)
    assert torch.equal(net.features[3].weight, state["features.3.weight"])
    assert isinstance(alexnet_features()[12], torch.nn.MaxPool2d) and len(alexnet_features()) == 13
    wrong = dict(state, **{"features.3.weight": torch.zeros(192, 64, 3, 3)})
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(UserError, match="does not fit"):
        load_lpips(tmp_path / "wrong.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read AlexNet weights"):
        load_lpips(tmp_path / "garbage.pth")
    with pytest.raises(UserError, match="--lpips-weights: file not found"):
        make_perceptual(alexnet=tmp_path / "missing.pth")


def test_l2_pooling_keeps_a_constant_and_halves_the_size() -> None:
    """DISTS' Hanning window sums to 1, so the L2 pool of a constant c is c away from the border."""
    pooled = L2Pooling(2)(torch.full((1, 2, 16, 12), 3.0))
    assert pooled.shape == (1, 2, 8, 6)
    torch.testing.assert_close(pooled[..., 1:, 1:], torch.full((1, 2, 7, 5), 3.0))


def _dists_by_the_paper(net: DISTS, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """DISTS from the equations of Ding et al. (2020), in float64, on the network's own features:
    1 - sum over stages j and channels i of alpha_ij l(x, y) + beta_ij s(x, y), the weights
    normalised to sum to 1; texture l compares the channel means, structure s the covariance."""
    weights = torch.cat([net.alpha, net.beta], dim=1).double()
    alpha, beta = (w.flatten() / weights.sum() for w in (net.alpha.double(), net.beta.double()))
    score, offset, c = torch.zeros(x.shape[0], dtype=torch.float64), 0, 1e-6
    for f, g in zip(net._stages(x), net._stages(y)):
        f, g = f.double().flatten(2), g.double().flatten(2)
        mf, mg = f.mean(-1), g.mean(-1)
        cov = ((f - mf[..., None]) * (g - mg[..., None])).mean(-1)
        texture = (2 * mf * mg + c) / (mf ** 2 + mg ** 2 + c)
        structure = (2 * cov + c) / (f.var(-1, unbiased=False) + g.var(-1, unbiased=False) + c)
        channels = f.shape[1]
        score += (alpha[offset:offset + channels] * texture + beta[offset:offset + channels] * structure).sum(-1)
        offset += channels
    assert offset == weights.shape[1] // 2
    return 1 - score


def test_dists_on_photos_against_its_equations_and_closed_forms(tmp_path, photo_pair) -> None:
    vgg = _torchvision_file(tmp_path / "vgg16-397923af.pth", VGG16_CONVS, 2)
    torch.save({"alpha": torch.rand(1, 1475, 1, 1, generator=torch.Generator().manual_seed(3)),
                "beta": torch.rand(1, 1475, 1, 1, generator=torch.Generator().manual_seed(4))}, tmp_path / "weights.pt")
    net = load_dists(vgg, tmp_path / "weights.pt")
    source, noisy = photo_pair
    with torch.no_grad():
        same = net(source, source)
        distances = [net(source, (source + s * (noisy - source)).clamp(0, 1)) for s in (0.25, 1.0, 3.0)]
    torch.testing.assert_close(same, torch.zeros(2), atol=1e-6, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(net(source, noisy).double(), _dists_by_the_paper(net, source, noisy),
                                   rtol=1e-4, atol=1e-6)
        stages = net._stages(source)
    assert [tuple(f.shape[1:]) for f in stages] == [(3, 128, 160), (64, 128, 160), (128, 64, 80), (256, 32, 40),
                                                    (512, 16, 20), (512, 8, 10)]  # L2 pooling halves each stage
    assert (0 < distances[0]).all() and (distances[0] < distances[1]).all() and (distances[1] < distances[2]).all()
    torch.save({"alpha": torch.rand(1, 1475, 1, 1)}, tmp_path / "half.pt")  # no beta
    with pytest.raises(UserError, match="DISTS weights .* does not fit"):
        load_dists(vgg, tmp_path / "half.pt")
    scorer, notes = make_perceptual(vgg16=vgg, dists=tmp_path / "weights.pt")
    assert set(scorer.metrics) == {"dists"} and notes["lpips"].startswith("LPIPS skipped:")
    scores = scorer.score(source, noisy)
    assert scores["lpips"] is None and scores["dists"] == pytest.approx(float(distances[1].mean()), rel=1e-5)


def test_scorer_names_only_known_metrics() -> None:
    with pytest.raises(ValueError, match="perceptual metrics"):
        PerceptualScorer({"psnr": lambda x, y: x})
    assert isinstance(LPIPS(), torch.nn.Module) and isinstance(DISTS(), torch.nn.Module)


def test_evaluate_scores_lpips_from_a_given_file(cifar_root: Path, alexnet_file: Path, tmp_path: Path,
                                                 monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # an empty hub cache
    common = ["evaluate", "--model", "deep_jscc_512", "--data", str(cifar_root / "cifar_test"), "--limit", "4",
              "--snr", "0,20", "--no-fid", "--no-realism", "--no-progress", "--controls"]
    assert main([*common, "--out", str(tmp_path / "with"), "--lpips-weights", str(alexnet_file)]) == 0
    rows = json.loads((tmp_path / "with" / "results.json").read_text())["results"]
    by = {(r["receiver"], r["snr_db"]): r for r in rows}
    assert by[("source", 0.0)]["lpips"] == 0.0
    assert by[("deep_jscc", 0.0)]["lpips"] > by[("deep_jscc", 20.0)]["lpips"] > 0  # more noise, further away
    assert all(r["lpips_note"] is None and r["dists"] is None and "DISTS skipped" in r["dists_note"] for r in rows)
    assert main([*common, "--out", str(tmp_path / "without")]) == 0
    document = json.loads((tmp_path / "without" / "results.json").read_text())
    assert all(r["lpips"] is None and "--lpips-weights" in r["lpips_note"] for r in document["results"])
    assert "--lpips-weights" in document["metrics"]["lpips"]
