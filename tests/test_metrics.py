"""Metrics pinned to scikit-image on real CIFAR-10 images, and the report writers' outputs."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.filters import gaussian
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from diffjscc.evaluation.figures import (
    GAP_PX,
    markdown_table,
    plot_results,
    save_image_grid,
)
from diffjscc.evaluation.metrics import (
    MS_SSIM_BETAS,
    MS_SSIM_SIGMA,
    SSIM_KERNEL_SIZE,
    ms_ssim_per_image,
    psnr_per_image,
    quantize_8bit,
    ssim_per_image,
    to_unit_range,
)
from diffjscc.evaluation.scoring import score_outputs

TOL = 1e-3


# ---------------------------------------------------------------- distortions of real images
def _noise(x: np.ndarray, sigma: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.clip(np.round(x + rng.normal(0.0, sigma * 255.0, x.shape)), 0, 255).astype(np.uint8)


def _blur(x: np.ndarray) -> np.ndarray:
    out = [gaussian(im.astype(np.float64) / 255.0, sigma=1.0, channel_axis=-1) for im in x]
    return np.clip(np.round(np.stack(out) * 255.0), 0, 255).astype(np.uint8)


def _jpeg(x: np.ndarray, quality: int = 10) -> np.ndarray:
    out = []
    for im in x:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=quality)
        out.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    return np.stack(out)


def _posterise(x: np.ndarray, levels: int = 8) -> np.ndarray:
    step = 256 // levels
    return ((x // step) * step + step // 2).astype(np.uint8)


DISTORTIONS = {
    "noise_0.05": lambda x: _noise(x, 0.05),
    "noise_0.2": lambda x: _noise(x, 0.2),
    "blur": _blur,
    "jpeg_q10": _jpeg,
    "posterise_8": _posterise,
}


def _unit_tensor(x_uint8: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(x_uint8).permute(0, 3, 1, 2).float() / 255.0


def _skimage_refs(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xf, yf = x.astype(np.float64) / 255.0, y.astype(np.float64) / 255.0
    psnr = [peak_signal_noise_ratio(a, b, data_range=1) for a, b in zip(xf, yf)]
    ssim = [
        structural_similarity(
            a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1
        )
        for a, b in zip(xf, yf)
    ]
    return np.array(psnr), np.array(ssim)


@pytest.fixture(scope="module", params=sorted(DISTORTIONS))
def distorted_pair(request, cifar_images):
    x = np.asarray(cifar_images)
    assert x.dtype == np.uint8 and x.shape[1:] == (32, 32, 3)
    y = DISTORTIONS[request.param](x)
    assert not np.array_equal(x, y)
    return x, y, _skimage_refs(x, y)


# ---------------------------------------------------------------- agreement with scikit-image
def test_psnr_matches_skimage(distorted_pair):
    x, y, (ref_psnr, _) = distorted_pair
    ours = psnr_per_image(_unit_tensor(x), _unit_tensor(y))
    assert ours.shape == (x.shape[0],)
    np.testing.assert_allclose(ours.double().numpy(), ref_psnr, rtol=0, atol=TOL)


def test_ssim_matches_skimage(distorted_pair):
    x, y, (_, ref_ssim) = distorted_pair
    ours = ssim_per_image(_unit_tensor(x), _unit_tensor(y))
    assert ours.shape == (x.shape[0],)
    np.testing.assert_allclose(ours.double().numpy(), ref_ssim, rtol=0, atol=TOL)


def _ms_ssim_reference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """3-scale MS-SSIM written from Wang et al. (2003) with SciPy's Gaussian filter, float64,
    (B, H, W, 3) uint8 → (B,): σ = 1 window truncated at 4σ (9 taps); cs_j averaged over the
    valid region of all channels for the two finer scales; l·cs of the coarsest scale averaged
    over the whole image with mirrored borders; exponents :data:`MS_SSIM_BETAS`; 2×2 mean pooling."""
    from scipy.ndimage import gaussian_filter

    c1, c2, radius = 0.01**2, 0.03**2, 4

    def blur(z: np.ndarray) -> np.ndarray:
        return np.stack([gaussian_filter(z[..., c], MS_SSIM_SIGMA, mode="mirror", truncate=4.0) for c in range(3)])

    def pool(z: np.ndarray) -> np.ndarray:
        h, w = z.shape[0] // 2, z.shape[1] // 2
        return z[: 2 * h, : 2 * w].reshape(h, 2, w, 2, 3).mean(axis=(1, 3))

    values = []
    for a, b in zip(x.astype(np.float64) / 255.0, y.astype(np.float64) / 255.0):
        value = 1.0
        for scale, beta in enumerate(MS_SSIM_BETAS):
            mu_a, mu_b = blur(a), blur(b)
            var_a = np.maximum(blur(a * a) - mu_a**2, 0)
            var_b = np.maximum(blur(b * b) - mu_b**2, 0)
            cs = (2 * (blur(a * b) - mu_a * mu_b) + c2) / (var_a + var_b + c2)
            if scale < len(MS_SSIM_BETAS) - 1:
                value *= max(cs[:, radius:-radius, radius:-radius].mean(), 0.0) ** beta
                a, b = pool(a), pool(b)
            else:
                luminance = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
                value *= max((luminance * cs).mean(), 0.0) ** beta
        values.append(value)
    return np.array(values)


def test_ms_ssim_matches_an_independent_implementation(distorted_pair):
    """MS-SSIM (torchmetrics with our settings) equals the SciPy reference on real images to 1e-4
    (measured ≤ 3e-5); in the reference, a 7-tap window moves it by 4e-4 to 2e-3 on these images
    and Wang et al.'s un-normalised exponents by 0.02 to 0.13, so either would fail here."""
    x, y, _ = distorted_pair
    ours = ms_ssim_per_image(_unit_tensor(x), _unit_tensor(y))
    reference = _ms_ssim_reference(x, y)
    assert ours.shape == (x.shape[0],) and reference.min() < 0.99
    np.testing.assert_allclose(ours.double().numpy(), reference, rtol=0, atol=1e-4)


def _torchmetrics_ssim_and_ms_ssim(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torchmetrics' SSIM (its full map, cropped to the valid region) and MS-SSIM with our
    settings, in float64: the library the metrics module replaced, as the reference."""
    from torchmetrics.functional.image import (
        multiscale_structural_similarity_index_measure,
        structural_similarity_index_measure,
    )

    a, b, pad = a.double(), b.double(), (SSIM_KERNEL_SIZE - 1) // 2
    _, full = structural_similarity_index_measure(a, b, gaussian_kernel=True, sigma=1.5, kernel_size=11,
                                                  data_range=1.0, reduction="none", return_full_image=True)
    ms_ssim = multiscale_structural_similarity_index_measure(
        a, b, gaussian_kernel=True, sigma=MS_SSIM_SIGMA, kernel_size=7, data_range=1.0, betas=MS_SSIM_BETAS,
        normalize="relu", reduction="none")
    return full[..., pad:-pad, pad:-pad].mean(dim=(1, 2, 3)), ms_ssim


@pytest.mark.parametrize("distorted_pair", ["blur", "jpeg_q10"], indirect=True)  # where float32 errs most
def test_ssim_and_ms_ssim_equal_torchmetrics_which_they_replace(distorted_pair):
    """The separable filters give torchmetrics' values to float32 precision (3e-5). torchmetrics in
    float32 is itself up to 2.4e-5 off its float64 values on the blurred images, where E[x²] − μ²
    cancels; these filters 0.7e-5."""
    x, y, _ = distorted_pair
    a, b = _unit_tensor(x), _unit_tensor(y)
    ssim, ms_ssim = _torchmetrics_ssim_and_ms_ssim(a, b)
    np.testing.assert_allclose(ssim_per_image(a, b).numpy(), ssim.numpy(), rtol=0, atol=3e-5)
    np.testing.assert_allclose(ms_ssim_per_image(a, b).numpy(), ms_ssim.numpy(), rtol=0, atol=3e-5)


def test_ssim_and_ms_ssim_equal_torchmetrics_on_a_photo(kodak):
    """The same on a 192x256 crop of a Kodak photo with noise: not square, larger than CIFAR."""
    photo = _unit_tensor(np.asarray(Image.open(kodak / "kodim04.png").convert("RGB"))[None, 200:392, 100:356])
    noisy = (photo + 0.1 * torch.randn(photo.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    ssim, ms_ssim = _torchmetrics_ssim_and_ms_ssim(photo, noisy)
    assert ssim.item() < 0.9
    np.testing.assert_allclose(ssim_per_image(photo, noisy).numpy(), ssim.numpy(), rtol=0, atol=3e-5)
    np.testing.assert_allclose(ms_ssim_per_image(photo, noisy).numpy(), ms_ssim.numpy(), rtol=0, atol=3e-5)


@pytest.mark.parametrize("distorted_pair", ["jpeg_q10"], indirect=True)
def test_protocol_means_match_skimage_means(distorted_pair):
    """The evaluation protocol's reported PSNR/SSIM are the means of scikit-image's per-image values."""
    x, y, (ref_psnr, ref_ssim) = distorted_pair
    out = score_outputs(_uint8_nchw(x), _uint8_nchw(y))
    assert out["psnr"] == pytest.approx(ref_psnr.mean(), abs=TOL)
    assert out["ssim"] == pytest.approx(ref_ssim.mean(), abs=TOL)


def _uint8_nchw(images_hwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images_hwc)).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------- known values
def test_psnr_constant_offset_is_20_db():
    # torchmetrics evaluates 10 / ln(10) in float32, so "exactly" means to ~1e-6 dB.
    x = torch.full((2, 3, 16, 16), 0.2, dtype=torch.float64)
    assert psnr_per_image(x, x + 0.1).tolist() == pytest.approx([20.0, 20.0], abs=1e-5)
    x32 = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.8
    assert psnr_per_image(x32, x32 + 0.1).tolist() == pytest.approx([20.0, 20.0], abs=1e-4)
    # The same offset relative to a [0, 2] range is 0.05 of it: 26.02 dB.
    assert psnr_per_image(x, x + 0.1, data_range=2.0).tolist() == pytest.approx(
        [20 * math.log10(20)] * 2, abs=1e-5
    )


def test_identical_images_give_100_db_and_ssim_1(cifar_images):
    x = _unit_tensor(np.asarray(cifar_images[:4]))
    assert psnr_per_image(x, x).tolist() == [100.0] * 4
    assert ssim_per_image(x, x).tolist() == pytest.approx([1.0] * 4, abs=1e-6)


def test_ssim_symmetric_and_rejects_tiny_images(cifar_images):
    x = _unit_tensor(np.asarray(cifar_images[:8]))
    y = _unit_tensor(_jpeg(np.asarray(cifar_images[:8])))
    torch.testing.assert_close(ssim_per_image(x, y), ssim_per_image(y, x))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim_per_image(x[..., :10, :10], y[..., :10, :10])
    with pytest.raises(ValueError, match="same shape"):
        psnr_per_image(x, y[:4])


def test_unit_range_and_8bit_quantisation():
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0])
    assert to_unit_range(x).tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    u = torch.rand(10_000, generator=torch.Generator().manual_seed(0))
    q = quantize_8bit(u)
    k = q * 255
    assert torch.equal(k, torch.round(k))  # exactly on the 8-bit levels
    assert (q - u).abs().max() <= 0.5 / 255 + 1e-7
    levels = torch.arange(256) / 255.0
    assert torch.equal(quantize_8bit(levels), levels)  # idempotent on k/255


def test_protocol_psnr_is_mean_of_per_image_psnrs(cifar_images):
    """Mean of per-image PSNRs (the field's convention), not the PSNR of the pooled MSE."""
    x = _uint8_nchw(np.asarray(cifar_images))
    y = _uint8_nchw(_noise(np.asarray(cifar_images), 0.1))
    out = score_outputs(x, y)
    per_image = psnr_per_image(x.float() / 255, y.float() / 255)
    assert out["psnr"] == pytest.approx(per_image.double().mean().item(), abs=1e-5)
    pooled = 10 * math.log10(1 / float(((x.float() - y.float()) / 255).pow(2).mean()))
    assert abs(out["psnr"] - pooled) > 0.01


# ---------------------------------------------------------------- figures and tables
def test_image_grid_size_and_content(tmp_path, cifar_images):
    src = _unit_tensor(np.asarray(cifar_images[:5])) * 2 - 1
    rows = [src, -src, src.flip(-1)]
    scale = 2
    out = save_image_grid(rows, tmp_path / "grid.png", scale=scale)
    im = np.asarray(Image.open(out).convert("RGB"))
    cell = 32 * scale
    assert im.shape == (3 * cell + 2 * GAP_PX, 5 * cell + 4 * GAP_PX, 3)
    # Nearest-neighbour upscaling: each source pixel becomes a scale x scale block.
    expected = np.repeat(np.repeat(np.asarray(cifar_images[0]), scale, 0), scale, 1)
    np.testing.assert_array_equal(im[:cell, :cell], expected)
    assert (im[:, cell : cell + GAP_PX] == 255).all()  # white gap between columns

    labelled = save_image_grid(rows, tmp_path / "sub" / "grid_l.png", ["source", "decoded", "diffusion"], scale)
    iml = np.asarray(Image.open(labelled).convert("RGB"))
    margin = iml.shape[1] - im.shape[1]
    assert iml.shape[0] == im.shape[0] and margin > 20
    np.testing.assert_array_equal(iml[:, margin:], im)
    assert (iml[:, :margin] < 128).any()  # label text was drawn
    with pytest.raises(ValueError):
        save_image_grid(rows, tmp_path / "bad.png", ["only one"])


def test_results_plot_writes_a_png(tmp_path):
    rows = [{"system": system, "model": "", "channel": "awgn", "k_over_n": 1 / 6, "oracle": False, "snr_db": snr,
             "receiver": system.lower(), "psnr": value, "ssim": value / 30, "ms_ssim": value / 30, "fid": None,
             "lpips": None} for system, curve in (("Deep JSCC", {0.0: 20.1, 5.0: 24.0, 10.0: 27.3}),
                                                   ("diffusion", {0.0: 21.0, 5.0: 24.9, 10.0: 27.9}))
            for snr, value in curve.items()]
    path = plot_results(rows, tmp_path / "curves.png", metrics=["psnr", "ssim"], title="CIFAR-10, AWGN")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000
    with Image.open(path) as im:
        assert im.size[0] > 800  # two panels at 150 dpi


def _captured_figure(monkeypatch, draw):
    """The matplotlib Figure a plot function builds (its ``_save`` intercepted), drawn."""
    from diffjscc.evaluation import figures

    kept = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: kept.append(fig) or Path(path))
    draw()
    fig = kept[0]
    fig.canvas.draw()
    return fig


def _jscc_row(model: str, symbols: int, system: str, receiver: str, snr: float, psnr: float, fd: float) -> dict:
    return {"system": system, "receiver": receiver, "model": model, "mode": "frozen", "channel": "awgn",
            "k_over_n": symbols / 3072, "n_symbols": symbols, "snr_db": snr, "psnr": psnr, "fd_cls": fd,
            "oracle": False, "control": receiver == "source", "ssim": psnr / 30}


def _digital_row(codec: str, code: str, mcs, snr: float, psnr: float, fd: float = 90.0) -> dict:
    label = {"webp": "WebP", "jpeg": "JPEG", "avif": "AVIF"}[codec]
    return {"system": f"{label} + {'ideal code' if code == 'ideal' else 'LDPC ' + mcs}", "receiver": "digital",
            "mode": "digital", "model": "", "codec": codec, "channel_code": code, "mcs": mcs, "header": "file",
            "channel": "awgn", "k_over_n": 512 / 3072, "n_symbols": 512, "snr_db": snr, "psnr": psnr, "fd_cls": fd,
            "oracle": False, "control": False, "ssim": psnr / 30}


def test_perception_distortion_plot_is_readable(tmp_path, monkeypatch):
    """Issue 28 item 15: the title fits the figure, a Deep JSCC curve is not named by the diffusion
    checkpoint its decoder came in, and no two SNR labels overlap (points 0 dB and 20 dB nearly
    coincide here, and the lost digital points all coincide)."""
    from diffjscc.evaluation.figures import plot_perception_distortion

    rows = []
    for model, symbols, shift in (("diffusion_128", 128, 0.0), ("diffusion_512", 512, 3.0)):
        for snr, psnr, fd in ((0.0, 21.50, 27.7), (5.0, 21.52, 27.72), (10.0, 21.55, 27.69), (15.0, 21.58, 27.75),
                              (20.0, 21.51, 27.71)):
            rows.append(_jscc_row(model, symbols, "Deep JSCC", "deep_jscc", snr, psnr + shift, fd))
            rows.append(_jscc_row(model, symbols, "diffusion", "diffusion", snr, psnr + shift - 2, fd / 2))
        rows.append(_jscc_row(model, symbols, "control: source images", "source", 0.0, 100.0, 5.0))
    rows += [_digital_row(codec, "ideal", None, snr, 12.9) for codec in ("webp", "jpeg") for snr in (0.0, 5.0)]
    title = ("diffjscc demo: 64 held-back CIFAR-10 images, AWGN, k/n = 1/6 real (1/12 complex), two diffusion "
             "receivers against their Deep JSCC decoders and the digital baselines, one sample per image")
    fig = _captured_figure(monkeypatch, lambda: plot_perception_distortion(rows, tmp_path / "pd.png", title=title))
    renderer = fig.canvas.get_renderer()

    extent = fig._suptitle.get_window_extent(renderer)
    assert fig.bbox.x0 <= extent.x0 and extent.x1 <= fig.bbox.x1 and extent.y1 <= fig.bbox.y1, (extent, fig.bbox)

    names = [text.get_text() for text in fig.legends[0].get_texts()]
    deep = [name for name in names if name.startswith("Deep JSCC")]
    assert len(deep) == 2 and len(set(deep)) == 2, names
    assert not any("[diffusion" in name for name in deep), names
    assert {"Deep JSCC, 128 symbols", "Deep JSCC, 512 symbols"} == set(deep)

    (ax,) = fig.axes
    labels = [(note.get_text(), note.get_window_extent(renderer)) for note in ax.texts]
    frame = ax.get_window_extent(renderer)
    for i, (text, box) in enumerate(labels):
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, text
        for other, other_box in labels[i + 1:]:
            assert not box.overlaps(other_box), f"{text!r} overlaps {other!r}"
    shown = {value for text, _ in labels for value in text.removesuffix(" dB").split(", ")}
    assert shown == {"0", "5", "10", "15", "20"}  # every SNR still named


def test_snr_plot_tells_digital_baselines_from_jscc_curves(tmp_path, monkeypatch):
    """Many digital rows (codec x channel code x MCS): dotted, one colour per codec, labelled by codec,
    channel code and MCS, in a legend beside the panels that the figure holds whole."""
    rows = [_jscc_row("deep_jscc_512", 512, "Deep JSCC", "deep_jscc", snr, 20 + snr / 5, 20.0) for snr in (0, 10, 20)]
    rows += [_jscc_row("deep_jscc_512", 512, "diffusion", "diffusion", snr, 18 + snr / 5, 10.0) for snr in (0, 10, 20)]
    schemes = [("ideal", None)] + [("ldpc", mcs) for mcs in ("qpsk-1/2", "qpsk-3/4", "16qam-1/2", "16qam-3/4",
                                                            "64qam-2/3", "adaptive")]
    rows += [_digital_row(codec, code, mcs, snr, 12 + snr / (2 + i)) for codec in ("webp", "jpeg", "avif")
             for i, (code, mcs) in enumerate(schemes) for snr in (0, 10, 20)]
    title = "Kodak (24 photos), AWGN, 1/12: deep_jscc_photo_512 against codec + 5G LDPC + QAM (payload)"
    fig = _captured_figure(monkeypatch, lambda: plot_results(rows, tmp_path / "snr.png", metrics=["psnr", "ssim"],
                                                             title=title))
    renderer = fig.canvas.get_renderer()
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert len(lines) == 2 + 3 * len(schemes)
    digital = {name: line for name, line in lines.items() if not name.startswith(("Deep JSCC", "diffusion"))}
    assert "WebP + LDPC 16qam-3/4" in digital and "AVIF + ideal code" in digital
    assert all(line.get_linestyle() == ":" for line in digital.values())
    assert all(lines[name].get_linestyle() == "-" for name in ("Deep JSCC", "diffusion"))
    by_codec: dict[str, set] = {}
    for name, line in digital.items():
        by_codec.setdefault(name.split(" + ")[0], set()).add(line.get_color())
    assert all(len(colours) == 1 for colours in by_codec.values()) and len({c for s in by_codec.values() for c in s}) == 3
    assert not {lines["Deep JSCC"].get_color(), lines["diffusion"].get_color()} & {c for s in by_codec.values() for c in s}
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    assert box.x0 >= max(ax.get_window_extent(renderer).x1 for ax in fig.axes)  # beside the panels
    assert fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1 and box.x1 <= fig.bbox.x1  # and whole
    heading = fig._suptitle.get_window_extent(renderer)
    assert fig.bbox.x0 <= heading.x0 and heading.x1 <= box.x0 and not heading.overlaps(box)  # the title beside it
    assert all(ax.get_window_extent(renderer).width > 0.3 * fig.bbox.width / 2 for ax in fig.axes)  # panels not squeezed
    entries = [text.get_text() for text in legend.get_texts()]
    assert entries.index("digital baselines:") == 2  # after the JSCC systems


def test_markdown_table_formatting():
    rows = [
        {"system": "DeepJSCC", "snr_db": 0, "psnr": 20.123, "ssim": 0.81234},
        {"system": "a|b", "snr_db": 10, "psnr": float("inf"), "ssim": None},
    ]
    table = markdown_table(rows, ["system", "snr_db", "psnr", "ssim"], formats={"ssim": ".4f"})
    assert table == (
        "| system | snr_db | psnr | ssim |\n"
        "|---|---:|---:|---:|\n"
        "| DeepJSCC | 0 | 20.12 | 0.8123 |\n"
        "| a\\|b | 10 | inf |  |\n"
    )
    assert markdown_table([], ["a"]) == "| a |\n|---|\n"
