"""Report figures: image grids (PIL), metric-vs-SNR curves (matplotlib), markdown tables.

Plots are drawn on a bare ``matplotlib.figure.Figure`` with the Agg canvas, never through
``pyplot``: that needs no display, keeps no global figure state between calls, and does
not change the backend of a notebook or program that imports this module.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from diffjscc.evaluation.metrics import quantize_8bit, to_unit_range

__all__ = ["save_image_grid", "plot_results", "markdown_table"]

GAP_PX = 2
"""Gap between grid cells, in output pixels."""
_LABEL_PAD_PX = 4
_BACKGROUND = (255, 255, 255)
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def _to_uint8_hwc(images: Tensor) -> Tensor:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, 3) uint8 on the CPU, as a PNG would store it."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected (B, 3, H, W) or (B, 1, H, W) images, got shape {tuple(images.shape)}")
    x = images.detach().to("cpu", torch.float32)
    x = torch.round(quantize_8bit(to_unit_range(x)) * 255.0).to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).contiguous()


def save_image_grid(
    rows: list[Tensor],
    path: str | os.PathLike[str],
    row_labels: list[str] | None = None,
    scale: int = 2,
) -> Path:
    """Write one PNG with each (B, 3, H, W) tensor in [-1, 1] as a row, images as columns.

    Typical rows: source | received-decoded | diffusion output, so a reader compares one
    image down a column. Cells are nearest-neighbour upscaled by ``scale`` (small CIFAR
    images stay crisp), separated by ``GAP_PX`` white pixels; ``row_labels`` are written
    in a left margin with PIL's default font. Rows may hold different numbers of images
    (short rows are left blank) but all images must share H and W.

    Size: width = margin + B_max*W*scale + (B_max-1)*GAP_PX,
    height = R*H*scale + (R-1)*GAP_PX, margin = 0 without labels. Returns the path.
    """
    if not rows:
        raise ValueError("save_image_grid needs at least one row")
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"got {len(row_labels)} row labels for {len(rows)} rows")
    arrays = [_to_uint8_hwc(r) for r in rows]
    h, w = arrays[0].shape[1:3]
    for a in arrays:
        if a.shape[1:3] != (h, w):
            raise ValueError(f"all images must share H and W, got {(h, w)} and {tuple(a.shape[1:3])}")
    n_cols = max(a.shape[0] for a in arrays)
    cell_h, cell_w = h * scale, w * scale

    font = ImageFont.load_default()
    margin = 0
    if row_labels is not None:
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        widest = max(probe.textbbox((0, 0), str(t), font=font)[2] for t in row_labels)
        margin = widest + 2 * _LABEL_PAD_PX

    width = margin + n_cols * cell_w + (n_cols - 1) * GAP_PX
    height = len(arrays) * cell_h + (len(arrays) - 1) * GAP_PX
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for r, batch in enumerate(arrays):
        top = r * (cell_h + GAP_PX)
        for c in range(batch.shape[0]):
            tile = Image.fromarray(batch[c].numpy())
            if scale != 1:
                tile = tile.resize((cell_w, cell_h), Image.Resampling.NEAREST)
            canvas.paste(tile, (margin + c * (cell_w + GAP_PX), top))
        if row_labels is not None:
            text = str(row_labels[r])
            x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
            y = top + (cell_h - (y1 - y0)) // 2 - y0
            draw.text((_LABEL_PAD_PX - x0, y), text, fill=(0, 0, 0), font=font)

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG")
    return out



def save_contact_sheet(sources: dict[str, Tensor], rows: list[tuple[str, dict[str, Tensor]]],
                       path: str | os.PathLike[str]) -> Path:
    """A by-eye sheet: the sources ((3, H, W) uint8 images of one size, by name) in the top row,
    then one row per ``(label, outputs by name)``, columns in the sources' order, at full size (no
    upscaling). A row that lacks one of the sources' names is left out."""
    names = list(sources)
    grid = [torch.stack([sources[n] for n in names]).float() / 127.5 - 1]
    labels = ["source (" + ", ".join(names) + ")"]
    for label, outputs in rows:
        if all(n in outputs for n in names):
            grid.append(torch.stack([outputs[n] for n in names]).float() / 127.5 - 1)
            labels.append(label)
    return save_image_grid(grid, path, row_labels=labels, scale=1)

def _new_figure(figsize: tuple[float, float]):
    """A pyplot-free Figure on an Agg canvas (no display, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150, format="png")
    return out


def _format_cell(value: object, spec: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        v = float(value)
        return str(v) if math.isinf(v) or math.isnan(v) else format(v, spec)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(
    rows: Sequence[Mapping[str, object]],
    columns: list[str],
    formats: dict[str, str] | None = None,
) -> str:
    """Render ``rows`` as a GitHub-markdown table with the given column order.

    Floats use ``format(value, formats.get(column, ".2f"))`` (pass e.g. ``{"ssim": ".4f"}``
    for SSIM-like columns); ints are printed as is, missing keys and None as empty cells.
    Columns whose values are all numbers are right-aligned. Ends with a newline.
    """
    formats = formats or {}
    body = [[_format_cell(row.get(col), formats.get(col, ".2f")) for col in columns] for row in rows]

    def numeric(col: str) -> bool:
        vals = [row.get(col) for row in rows if row.get(col) is not None]
        return bool(vals) and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in vals)

    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---:" if numeric(c) else "---" for c in columns) + "|",
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


# ---- evaluation results (``diffjscc plot``) ----------------------------------------------------
_METRIC_LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "ms_ssim": "MS-SSIM", "fid": "FID (lower is better)",
                  "lpips": "LPIPS (lower is better)", "fd_cls": "fd_cls (not Inception FID; lower is better)",
                  "kid_cls": "kid_cls (not Inception KID; lower is better)", "acc_cls": "acc_cls (classifier top-1)"}


def _line_style(row: Mapping[str, object]) -> dict:
    """Controls dash-dotted, oracle rows dashed, digital baselines dotted, so a reader never
    mistakes them for results."""
    if row.get("control"):
        return {"linestyle": "-."}
    if row.get("oracle"):
        return {"linestyle": "--"}
    if row.get("mode") == "digital":  # LDPC at a fixed MCS thin (the staircase), adaptive LDPC thick
        if row.get("channel_code") == "ldpc":
            return {"linestyle": ":", "linewidth": 2.4} if row.get("mcs") == "adaptive" else \
                {"linestyle": ":", "linewidth": 1.0, "alpha": 0.75}
        return {"linestyle": ":"}
    return {"linestyle": "-"}


def _system_order(row: Mapping[str, object]) -> tuple:
    """JSCC systems first, oracle next, digital baselines last; then by name."""
    return (row.get("mode") == "digital", bool(row.get("oracle")), str(row.get("system")))


def plot_results(
    rows: Sequence[Mapping[str, object]],
    path: str | os.PathLike[str],
    metrics: Sequence[str] | None = None,
    ratio_snr: float | None = None,
    title: str | None = None,
) -> Path:
    """Quality against channel SNR, one line per system; and against k/n when several are given.

    ``rows`` are result rows of ``diffjscc evaluate`` (results.json ``results``). Top row of
    panels: each metric (default PSNR, SSIM, MS-SSIM, and FID/LPIPS where any row has them)
    against SNR, one line per system x model x k/n x channel. When the rows hold several
    bandwidth ratios, a second row plots the same metrics against k/n at ``ratio_snr``
    (default: the median SNR present at every ratio). A system keeps its colour everywhere;
    markers tell bandwidth ratios apart; oracle curves are dashed and digital baselines
    dotted. One legend under the panels; 150-dpi PNG.
    """
    rows = [r for r in rows if r.get("psnr") is not None and r.get("receiver") != "source"]  # PSNR 100: not a curve
    if not rows:
        raise ValueError("no result rows to plot")
    if metrics is None:
        metrics = ["psnr", "ssim", "ms_ssim"] + [m for m in ("fid", "lpips") if any(r.get(m) is not None for r in rows)]
    metrics = [m for m in metrics if any(r.get(m) is not None for r in rows)]
    if not metrics:
        raise ValueError("none of the requested metrics has values in these results")
    systems = sorted({str(r["system"]): r for r in rows}.values(), key=_system_order)
    colour = {str(r["system"]): f"C{i % 10}" for i, r in enumerate(systems)}
    ratios = sorted({float(r["k_over_n"]) for r in rows})
    models = sorted({str(r.get("model") or "") for r in rows} - {""})
    channels = sorted({str(r.get("channel")) for r in rows})

    def curve_key(row: Mapping[str, object]) -> tuple:
        return (_system_order(row), str(row.get("model") or ""), float(row["k_over_n"]), str(row.get("channel")))

    def label(row: Mapping[str, object]) -> str:
        text = str(row["system"])
        if len(models) > 1 and row.get("model"):
            text += f" [{row['model']}]"
        if len(ratios) > 1:
            text += f", k/n={float(row['k_over_n']):.3f} real ({float(row['k_over_n']) / 2:.3f} complex)"
        if len(channels) > 1:
            text += f", {row['channel']}"
        return text

    def style(row: Mapping[str, object], index: int) -> dict:
        marker = ratios.index(float(row["k_over_n"])) if len(ratios) > 1 else index
        return {"color": colour[str(row["system"])], "marker": _MARKERS[marker % len(_MARKERS)],
                "linewidth": 1.5, "markersize": 5, **_line_style(row)}

    curves: dict[tuple, list] = {}
    for row in rows:
        curves.setdefault(curve_key(row), []).append(row)
    by_ratio = len(ratios) > 1
    width = max(4.2 * len(metrics), 9.0)
    fig = _new_figure((width, 3.6 * (2 if by_ratio else 1) + 1.2))
    axes = fig.subplots(2 if by_ratio else 1, len(metrics), squeeze=False)
    system_index = {str(r["system"]): i for i, r in enumerate(systems)}
    for col, metric in enumerate(metrics):
        ax = axes[0][col]
        for key in sorted(curves):
            group = curves[key]
            points = sorted((float(r["snr_db"]), float(r[metric])) for r in group if r.get(metric) is not None)
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, label=label(group[0]), **style(group[0], system_index[str(group[0]["system"])]))
        ax.set_xlabel("Channel SNR (dB)")
        ax.set_ylabel(_METRIC_LABELS.get(metric, metric))
        ax.grid(True, linestyle=":", linewidth=0.8, alpha=0.8)

    if by_ratio:
        common = set.intersection(*({float(r["snr_db"]) for r in rows if float(r["k_over_n"]) == k} for k in ratios))
        if ratio_snr is None:
            if not common:
                raise ValueError("no SNR is evaluated at every bandwidth ratio; pass one explicitly")
            ratio_snr = sorted(common)[len(common) // 2]
        lines: dict[tuple, list] = {}
        for row in rows:
            if abs(float(row["snr_db"]) - ratio_snr) < 1e-9:
                lines.setdefault((_system_order(row), str(row.get("channel"))), []).append(row)
        if not lines:
            raise ValueError(f"no results at {ratio_snr:g} dB for the quality-vs-k/n panels")
        for col, metric in enumerate(metrics):
            ax = axes[1][col]
            for key in sorted(lines):
                group = lines[key]
                points = sorted((float(r["k_over_n"]), float(r[metric])) for r in group if r.get(metric) is not None)
                if points:
                    xs, ys = zip(*points)
                    ax.plot(xs, ys, color=colour[str(group[0]["system"])], marker="o", linewidth=1.5,
                            markersize=5, **_line_style(group[0]))
            ax.set_xlabel(f"k/n, real symbols per dimension; complex uses: half (at {ratio_snr:g} dB)")
            ax.set_ylabel(_METRIC_LABELS.get(metric, metric))
            ax.grid(True, linestyle=":", linewidth=0.8, alpha=0.8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    columns = max(1, min(len(labels), int(width // (3.4 if by_ratio or len(models) > 1 else 2.6))))
    fig.legend(handles, labels, loc="outside lower center", ncols=columns, fontsize="small")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_perception_distortion(rows: Sequence[Mapping[str, object]], path: str | os.PathLike[str],
                               title: str | None = None) -> Path:
    """PSNR (x) against ``fd_cls`` (y, lower is more realistic), one series per system and model,
    each point labelled with its SNR; the ``source`` control (the real images, the realism floor)
    is a horizontal line, since its PSNR is not a distortion. Styles as in :func:`plot_results`.
    """
    rows = [r for r in rows if r.get("fd_cls") is not None and r.get("psnr") is not None]
    if not rows:
        raise ValueError("no result rows with fd_cls to plot (evaluate without --no-realism)")
    floor = [r for r in rows if r.get("receiver") == "source"]
    rows = [r for r in rows if r.get("receiver") != "source"]
    fig = _new_figure((7.5, 5.6))
    ax = fig.subplots()
    series: dict[tuple, list] = {}
    for row in rows:
        key = (_system_order(row), str(row.get("model") or ""), float(row["k_over_n"]), str(row.get("channel")))
        series.setdefault(key, []).append(row)
    for index, key in enumerate(sorted(series)):
        group = sorted(series[key], key=lambda r: float(r["snr_db"]))
        first = group[0]
        label = str(first["system"]) + (f" [{first['model']}]" if first.get("model") else "")
        xs, ys = [float(r["psnr"]) for r in group], [float(r["fd_cls"]) for r in group]
        ax.plot(xs, ys, marker=_MARKERS[index % len(_MARKERS)], color=f"C{index % 10}", linewidth=1.2,
                markersize=5, label=label, **_line_style(first))
        for r, x, y in zip(group, xs, ys):
            ax.annotate(f"{float(r['snr_db']):g} dB", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    if floor:
        level = sum(float(r["fd_cls"]) for r in floor) / len(floor)
        ax.axhline(level, color="0.3", linestyle="-.", linewidth=1.0, label="control: source images (floor)")
    ax.set_xlabel("PSNR (dB): higher is less distortion")
    ax.set_ylabel("fd_cls (not Inception FID): lower is more realistic")
    ax.grid(True, linestyle=":", linewidth=0.8, alpha=0.8)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize="small")
    if title:
        fig.suptitle(title)
    return _save(fig, path)
