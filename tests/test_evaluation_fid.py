"""FID, its Inception network and MS-SSIM at 32x32, offline, on real images.

FID with a small fixed random conv net passed in code: 0 for identical sets, growing with
noise; the reference-statistics cache; the TF1 resize against its closed form; the Inception
port against torch-fidelity's own network on the same (random) weights where torch-fidelity's
files are installed; the real weights where a local file exists (skipped otherwise).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from diffjscc.errors import UserError
from diffjscc.evaluation.fid import FIDScorer, ReferenceStats, reference_cache_path, reference_key
from diffjscc.evaluation.inception import (
    FIDInceptionV3,
    find_inception_weights,
    load_fid_inception,
    resize_bilinear_tf1,
)
from diffjscc.evaluation.metrics import ms_ssim_per_image


class TinyFeatures(nn.Module):
    """A fixed random conv net: uint8 (B, 3, H, W) -> (B, 32) features."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float() / 255.0)


def _u8(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def _noisy(images: torch.Tensor, sigma: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return (images.float() + sigma * 255 * torch.randn(images.shape, generator=g)).round().clamp(0, 255).to(torch.uint8)


def test_fid_is_zero_for_identical_sets_and_grows_with_noise(cifar_images) -> None:
    images = _u8(cifar_images)
    scorer = FIDScorer(TinyFeatures())
    scorer.set_reference_images(images)
    same = scorer.score(images)
    assert abs(same) < 1e-4
    scores = [scorer.score(_noisy(images, s)) for s in (0.02, 0.1, 0.3)]
    assert 0 < scores[0] < scores[1] < scores[2]
    assert scorer.score(images) == pytest.approx(same, abs=1e-6)  # each score starts from a fresh generated set


def test_fid_uses_the_whole_set_not_per_batch(cifar_images) -> None:
    images = _u8(cifar_images)
    noisy = _noisy(images, 0.1)
    whole, batched = FIDScorer(TinyFeatures(), batch_size=64), FIDScorer(TinyFeatures(), batch_size=7)
    for scorer in (whole, batched):
        scorer.set_reference_images(images)
    assert batched.score(noisy) == pytest.approx(whole.score(noisy), rel=1e-6)


def test_reference_statistics_are_cached_safely(cifar_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ref"
    folder.mkdir()
    files = sorted((cifar_root / "cifar_test").glob("*.png"))[:12]
    for f in files:
        (folder / f.name).write_bytes(f.read_bytes())
    files = sorted(folder.glob("*.png"))
    loads = []

    def load(paths):
        loads.append(len(paths))
        return torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1)
                            for p in paths])

    first = FIDScorer(TinyFeatures(), network_id="tiny")
    assert "cached in" in first.reference_from_files(files, load)
    assert first.network_id == "tiny|cpu"  # the numerics are part of the key (GPU TF32 features differ)
    cache = reference_cache_path(files, reference_key(files, first.network_id))
    assert cache.is_file() and cache.name.startswith(".fid_stats_")
    with np.load(cache, allow_pickle=False) as data:
        assert int(data["count"]) == 12
    second = FIDScorer(TinyFeatures(), network_id="tiny")
    assert "from cache" in second.reference_from_files(files, load)
    assert loads == [12]  # the second scorer never decoded an image
    probe = load(files[:6])
    assert second.score(probe) == pytest.approx(first.score(probe), rel=1e-9)

    # another network, or a changed file, gets another key; a corrupt cache is recomputed
    assert reference_key(files, "other") != reference_key(files, "tiny")
    cache.write_bytes(b"not an npz")
    third = FIDScorer(TinyFeatures(), network_id="tiny")
    assert "cached in" in third.reference_from_files(files, load)
    assert ReferenceStats.load(cache, reference_key(files, first.network_id), 32) is not None
    assert ReferenceStats.load(cache, "wrong key", 32) is None


def test_tf1_resize_matches_its_closed_form() -> None:
    x = torch.tensor([[[[10.0, 30.0]]]])  # (1, 1, 1, 2)
    out = resize_bilinear_tf1(x, 4)  # s = i * 2 / 4 = 0, 0.5, 1, 1.5 (clamped to the last pixel)
    assert out.shape == (1, 1, 4, 4)
    assert torch.allclose(out[0, 0, 0], torch.tensor([10.0, 20.0, 30.0, 30.0]))
    ramp = torch.arange(32.0).view(1, 1, 1, 32).expand(1, 1, 32, 32)
    up = resize_bilinear_tf1(ramp, 299)[0, 0, 0]
    src = torch.arange(299.0) * 32 / 299
    assert torch.allclose(up, src.clamp(max=31.0), atol=1e-4)


def _torch_fidelity_inception():
    """torch-fidelity's Inception module, loaded without its package __init__ (which imports torchvision)."""
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None or not spec.submodule_search_locations:
        # Installing torch-fidelity without torchvision breaks `import torchmetrics`; to run this
        # check, put its package folder (without the .dist-info) on PYTHONPATH.
        pytest.skip("torch-fidelity's files are not importable")
    saved = {k: v for k, v in sys.modules.items() if k == "torch_fidelity" or k.startswith("torch_fidelity.")}
    stub = types.ModuleType("torch_fidelity")
    stub.__path__ = list(spec.submodule_search_locations)
    sys.modules["torch_fidelity"] = stub
    try:
        return importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")
    finally:
        for key in [k for k in sys.modules if k == "torch_fidelity" or k.startswith("torch_fidelity.")]:
            del sys.modules[key]
        sys.modules.update(saved)


def test_inception_port_equals_torch_fidelity(tmp_path: Path, cifar_images) -> None:
    module = _torch_fidelity_inception()
    torch.manual_seed(0)
    net = FIDInceptionV3()
    for m in net.modules():  # non-trivial BatchNorm statistics, so eval-mode BN is exercised
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    weights = tmp_path / "random_inception.pth"
    torch.save(net.state_dict(), weights)
    theirs = module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                feature_extractor_weights_path=str(weights))
    ours = load_fid_inception(weights)
    images = _u8(cifar_images[:3])
    assert torch.allclose(ours(images), theirs(images)[0], atol=1e-5, rtol=1e-4)


def test_inception_weights_are_checked(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(UserError, match="not the Inception-v3 FID network"):
        load_fid_inception(bad)
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(UserError, match="cannot read FID weights"):
        load_fid_inception(tmp_path / "junk.pth")
    with pytest.raises(UserError, match="not found"):
        find_inception_weights(tmp_path / "missing.pth")


def test_real_inception_weights_where_present(cifar_images) -> None:
    """With the real FID weights (DIFFJSCC_FID_WEIGHTS or the torch hub cache): same set -> 0."""
    path = os.environ.get("DIFFJSCC_FID_WEIGHTS")
    weights = find_inception_weights(path) if path else find_inception_weights()
    if weights is None:
        pytest.skip("no FID Inception weights file (set DIFFJSCC_FID_WEIGHTS or fill the torch hub cache)")
    scorer = FIDScorer(load_fid_inception(weights))
    images = _u8(cifar_images[:16])
    scorer.set_reference_images(images)
    assert abs(scorer.score(images)) < 1e-2
    assert scorer.score(_noisy(images, 0.2)) > 1.0


def test_ms_ssim_is_valid_at_32px(cifar_images) -> None:
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    x = _u8(cifar_images[:16]).float() / 255
    with pytest.raises(ValueError):  # torchmetrics' default settings reject 32x32 images
        multiscale_structural_similarity_index_measure(x, x, data_range=1.0)
    assert torch.allclose(ms_ssim_per_image(x, x), torch.ones(16))
    scores = [float(ms_ssim_per_image(x, _noisy(_u8(cifar_images[:16]), s).float() / 255).mean())
              for s in (0.02, 0.1, 0.3)]
    assert 1 > scores[0] > scores[1] > scores[2] > 0


def test_numerics_id_names_what_changes_features() -> None:
    from diffjscc.runtime.device import numerics_id

    assert numerics_id("cpu") == "cpu"
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        assert numerics_id("cuda") == "cuda-tf32"
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        assert numerics_id(torch.device("cuda", 0)) == "cuda-fp32"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
