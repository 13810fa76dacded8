"""Patch realism for photos (patch_fd, patch_kid): the shipped patch network on a real Kodak photo."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffjscc.evaluation.patches import (PatchRealism, image_patches, load_patch_net, patch_features,
                                         shipped_patch_net_path)



@pytest.fixture(scope="module")
def photo(kodak: Path) -> torch.Tensor:
    """kodim23 (the parrots), 768x512, in [-1, 1]."""
    from diffjscc.data import load_image_tensor

    return load_image_tensor(kodak / "kodim23.png")


@pytest.fixture(scope="module")
def scorer() -> PatchRealism:
    return PatchRealism(load_patch_net(), kid_subsets=20)


def test_patches_tile_the_image_with_stride_16() -> None:
    image = torch.arange(3 * 48 * 64, dtype=torch.int64).reshape(3, 48, 64).to(torch.uint8)
    patches = image_patches(image)
    assert patches.shape == (2 * 3, 3, 32, 32)  # rows at 0, 16; columns at 0, 16, 32
    assert torch.equal(patches[4], image[:, 16:48, 16:48])


def test_the_shipped_patch_network_names_its_training_photos() -> None:
    payload = torch.load(shipped_patch_net_path(), weights_only=True)
    provenance = payload["provenance"]
    assert len(payload["photos"]) == 49 and "README" in provenance["photos"]
    assert provenance["accuracy_fresh_crops"] > 5 * provenance["chance"]  # it tells the photos apart
    assert shipped_patch_net_path().stat().st_size < 1_000_000


def test_patch_fd_of_the_sources_is_zero_and_the_noise_control_is_above_deep_jscc(photo: torch.Tensor,
                                                                                  scorer: PatchRealism) -> None:
    from diffjscc.evaluation.metrics import to_uint8
    from diffjscc.evaluation.transmit import transmit_image
    from diffjscc.receivers import matched_noise
    from diffjscc.runtime.pretrained import manifest, models_dir, verified_path
    from diffjscc.system import load_system

    source_u8 = to_uint8(photo)
    reference = scorer.features(source_u8)
    assert reference.shape[0] == 47 * 31  # 768x512 in 32x32 patches 16 apart
    itself = scorer.score(reference, reference)
    assert itself["patch_fd"] == pytest.approx(0, abs=1e-6)
    assert abs(itself["patch_kid"]) < 0.1  # unscaled features (RMS ~3.5) gave about -10
    if "deep_jscc_512" not in manifest(models_dir())["models"]:
        pytest.skip("the package ships no deep_jscc_512")
    system = load_system(str(verified_path("deep_jscc_512")))
    sent = transmit_image(system, photo, snr_db=10.0, channel="awgn", receiver="deep_jscc")
    deep_jscc = torch.from_numpy(sent.output).permute(2, 0, 1).contiguous()
    estimate = deep_jscc.float().div(127.5).sub(1)[None]
    noise = torch.randn(estimate.shape, generator=torch.Generator().manual_seed(0))
    target_mse = torch.tensor([255.0 ** 2 / 10 ** ((sent.psnr - 1.0) / 10)])  # the PSNR 1 dB below Deep JSCC's
    control = to_uint8(matched_noise(estimate, noise, photo[None], target_mse)[0])
    of_deep_jscc = scorer.score(scorer.features(deep_jscc), reference)
    of_control = scorer.score(scorer.features(control), reference)
    assert 0 < of_deep_jscc["patch_fd"] < of_control["patch_fd"]
    assert of_deep_jscc["patch_kid"] < of_control["patch_kid"]


def test_patch_features_are_those_of_each_patch_in_batches(scorer: PatchRealism) -> None:
    image = torch.randint(0, 256, (3, 40, 72), generator=torch.Generator().manual_seed(1), dtype=torch.int64)
    image = image.to(torch.uint8)
    network = scorer.loaded.network
    batched = patch_features(network, image, batch=2)
    with torch.no_grad():
        one_by_one = torch.cat([network.features(p[None].float().div(127.5).sub(1)) for p in image_patches(image)])
    torch.testing.assert_close(batched, one_by_one.double(), rtol=1e-5, atol=1e-6)
