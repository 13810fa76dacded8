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
                  "lpips": "LPIPS (lower is better)", "dists": "DISTS (lower is better)", "fd_cls": "fd_cls (not Inception FID; lower is better)",
                  "kid_cls": "kid_cls (not Inception KID; lower is better)", "acc_cls": "acc_cls (classifier top-1)"}
_LEGEND_BELOW_MAX = 10
"""Legends with more entries go to the right of the panels, one entry a line: below them, a long
one (many digital rows) would be taller than the panels."""
_POINT_LABEL_PT = 7.0


def _is_digital(row: Mapping[str, object]) -> bool:
    return row.get("mode") == "digital" or row.get("receiver") == "digital"


def _line_style(row: Mapping[str, object]) -> dict:
    """Controls dash-dotted, oracle rows dashed, digital baselines dotted, so a reader never
    mistakes them for results."""
    if row.get("control"):
        return {"linestyle": "-."}
    if row.get("oracle"):
        return {"linestyle": "--"}
    if _is_digital(row):  # LDPC at a fixed MCS thin (the staircase), adaptive LDPC thick
        if row.get("channel_code") == "ldpc":
            return {"linestyle": ":", "linewidth": 2.4} if row.get("mcs") == "adaptive" else \
                {"linestyle": ":", "linewidth": 1.0, "alpha": 0.75}
        return {"linestyle": ":"}
    return {"linestyle": "-"}


def _system_order(row: Mapping[str, object]) -> tuple:
    """JSCC systems first, oracle next, digital baselines last; then by name."""
    return (_is_digital(row), bool(row.get("oracle")), str(row.get("system")))


def _colour_key(row: Mapping[str, object]) -> str:
    """What a colour stands for: a JSCC system, or a digital baseline's codec (its channel codes
    and MCS share the codec's colour and differ by marker and line width)."""
    return f"codec {row.get('codec') or row['system']}" if _is_digital(row) else f"system {row['system']}"


def _colours(rows: Sequence[Mapping[str, object]]) -> dict[str, object]:
    """A distinct colour per :func:`_colour_key`, JSCC systems first (matplotlib's C0-C9), then
    the codecs; past ten, Dark2 and tab20b's colours."""
    from matplotlib import colormaps

    palette = [f"C{i}" for i in range(10)] + list(colormaps["Dark2"].colors) + list(colormaps["tab20b"].colors)
    keys = list(dict.fromkeys(_colour_key(r) for r in sorted(rows, key=_system_order)))
    return {key: palette[i % len(palette)] for i, key in enumerate(keys)}


def _series_labels(firsts: Mapping[tuple, Mapping[str, object]], shown: Sequence[str] = ()) -> dict[tuple, str]:
    """Legend labels, one per series (given by its first row), naming a series by what tells it
    apart from the other series of its system: symbols per image, channel, model (less those
    fields in ``shown``, which the caller writes into every label). The ``model`` of a Deep JSCC
    row is the checkpoint its decoder came in, often a diffusion model's: Deep JSCC curves are
    told apart by "decoder of MODEL" only where nothing else differs."""
    labels: dict[tuple, str] = {}
    for key, row in firsts.items():
        rivals = [r for k, r in firsts.items() if k != key and r["system"] == row["system"]]
        text = str(row["system"])
        group = [row, *rivals]
        decoder_only = row.get("receiver") == "deep_jscc" and row.get("mode") not in (None, "jscc")
        if "n_symbols" not in shown and len({r.get("n_symbols") for r in group}) > 1 and row.get("n_symbols"):
            text += f", {int(row['n_symbols'])} symbols"
        if "channel" not in shown and len({str(r.get("channel")) for r in group}) > 1:
            text += f", {row['channel']}"
        if len({str(r.get("model") or "") for r in group}) > 1 and row.get("model") and not decoder_only:
            text += f" [{row['model']}]"
        labels[key] = text
    for key, text in labels.items():  # the same text for two series: only the checkpoint differs
        row = firsts[key]
        if list(labels.values()).count(text) > 1 and row.get("model"):
            labels[key] = f"{text} (decoder of {row['model']})" if row.get("receiver") == "deep_jscc" \
                else f"{text} [{row['model']}]"
    return labels


def _fit_title(fig, title: str, fontsize: float = 11.0, right: float = 0.0) -> None:
    """``title`` as the figure's suptitle, broken at spaces into as few lines as keep every line
    within 96 % of the figure's width less ``right`` pixels (a legend to the right of the panels,
    which the title is centred beside: measured, in the font it is drawn in)."""
    words = title.split()
    free = 1 - right / fig.bbox.width
    limit = 0.96 * free * fig.bbox.width
    text = fig.suptitle(title, fontsize=fontsize, x=free / 2)
    renderer = fig.canvas.get_renderer()
    lines: list[str] = []
    for word in words:
        trial = f"{lines[-1]} {word}" if lines else word
        text.set_text(trial)
        if lines and text.get_window_extent(renderer).width > limit:
            lines.append(word)
        elif lines:
            lines[-1] = trial
        else:
            lines.append(word)
    text.set_text("\n".join(lines))


def _legend(fig, handles: list, labels: list[str], width: float, wide_entries: bool) -> float:
    """One legend for the figure: below the panels when short, else to their right (one entry a
    line; the figure made wider by the legend's width, so the panels keep theirs, and tall
    enough to hold it). Returns the pixels the legend takes at the right (0 when below)."""
    if len(labels) <= _LEGEND_BELOW_MAX:
        columns = max(1, min(len(labels), int(width // (3.4 if wide_entries else 2.6))))
        fig.legend(handles, labels, loc="outside lower center", ncols=columns, fontsize="small")
        return 0.0
    fig.legend(handles, labels, loc="outside right upper", ncols=1, fontsize="small")
    fig.canvas.draw()
    extent = fig.legends[0].get_window_extent()
    fig.set_figwidth(width + extent.width / fig.dpi)
    needed = extent.height / fig.dpi + 0.3
    if needed > fig.get_figheight():
        fig.set_figheight(needed)
    return extent.width + 0.1 * fig.dpi


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
    (default: the median SNR present at every ratio). A JSCC system keeps its colour everywhere,
    solid (oracle dashed, controls dash-dotted); digital baselines are dotted, one colour per
    codec, a marker per channel code and MCS (adaptive LDPC thick), listed after the JSCC
    systems under "digital baselines". One legend: under the panels, or to their right when it
    has more than ``_LEGEND_BELOW_MAX`` entries; the title wraps to the width; 150-dpi PNG.
    """
    rows = [r for r in rows if r.get("psnr") is not None and r.get("receiver") != "source"]  # PSNR 100: not a curve
    if not rows:
        raise ValueError("no result rows to plot")
    if metrics is None:
        metrics = ["psnr", "ssim", "ms_ssim"] + [m for m in ("fid", "lpips", "dists") if any(r.get(m) is not None for r in rows)]
    metrics = [m for m in metrics if any(r.get(m) is not None for r in rows)]
    if not metrics:
        raise ValueError("none of the requested metrics has values in these results")
    colour = _colours(rows)
    ratios = sorted({float(r["k_over_n"]) for r in rows})
    channels = sorted({str(r.get("channel")) for r in rows})
    jscc_names = list(dict.fromkeys(str(r["system"]) for r in sorted(rows, key=_system_order) if not _is_digital(r)))
    schemes = list(dict.fromkeys((str(r.get("channel_code")), str(r.get("mcs")), str(r.get("header")))
                                 for r in rows if _is_digital(r)))

    def curve_key(row: Mapping[str, object]) -> tuple:
        return (_system_order(row), str(row.get("model") or ""), float(row["k_over_n"]), str(row.get("channel")))

    def suffix(row: Mapping[str, object]) -> str:
        text = ""
        if len(ratios) > 1:
            text += f", k/n={float(row['k_over_n']):.3f} real ({float(row['k_over_n']) / 2:.3f} complex)"
        if len(channels) > 1:
            text += f", {row['channel']}"
        return text

    def style(row: Mapping[str, object]) -> dict:
        if len(ratios) > 1:
            marker = ratios.index(float(row["k_over_n"]))
        elif _is_digital(row):
            marker = schemes.index((str(row.get("channel_code")), str(row.get("mcs")), str(row.get("header"))))
        else:
            marker = jscc_names.index(str(row["system"]))
        return {"color": colour[_colour_key(row)], "marker": _MARKERS[marker % len(_MARKERS)],
                "linewidth": 1.5, "markersize": 5, **_line_style(row)}

    curves: dict[tuple, list] = {}
    for row in rows:
        curves.setdefault(curve_key(row), []).append(row)
    keys = sorted(curves)
    names = _series_labels({key: curves[key][0] for key in keys},  # k/n and channel: in every label (suffix)
                           shown=(["n_symbols"] if len(ratios) > 1 else []) + (["channel"] if len(channels) > 1 else []))
    by_ratio = len(ratios) > 1
    width = max(4.2 * len(metrics), 9.0)
    fig = _new_figure((width, 3.6 * (2 if by_ratio else 1) + 1.2))
    axes = fig.subplots(2 if by_ratio else 1, len(metrics), squeeze=False)
    digital_in_legend: list[bool] = []  # the first panel's lines, in legend order: digital or not
    for col, metric in enumerate(metrics):
        ax = axes[0][col]
        for key in keys:
            group = curves[key]
            points = sorted((float(r["snr_db"]), float(r[metric])) for r in group if r.get(metric) is not None)
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, label=names[key] + suffix(group[0]), **style(group[0]))
                if col == 0:
                    digital_in_legend.append(_is_digital(group[0]))
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
                    ax.plot(xs, ys, color=colour[_colour_key(group[0])], marker="o", linewidth=1.5,
                            markersize=5, **_line_style(group[0]))
            ax.set_xlabel(f"k/n, real symbols per dimension; complex uses: half (at {ratio_snr:g} dB)")
            ax.set_ylabel(_METRIC_LABELS.get(metric, metric))
            ax.grid(True, linestyle=":", linewidth=0.8, alpha=0.8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if True in digital_in_legend and len(labels) > _LEGEND_BELOW_MAX:  # a heading above the baselines
        from matplotlib.lines import Line2D

        first = digital_in_legend.index(True)
        handles.insert(first, Line2D([], [], linestyle="none"))
        labels.insert(first, "digital baselines:")
    right = _legend(fig, handles, labels, width, wide_entries=by_ratio or len(set(names.values())) < len(names))
    if title:
        _fit_title(fig, title, right=right)
    return _save(fig, path)


def plot_perception_distortion(rows: Sequence[Mapping[str, object]], path: str | os.PathLike[str],
                               title: str | None = None) -> Path:
    """PSNR (x) against ``fd_cls`` (y, lower is more realistic), one series per system and model,
    each point labelled with its SNR; the ``source`` control (the real images, the realism floor)
    is a horizontal line, since its PSNR is not a distortion. Styles and colours as in
    :func:`plot_results`, series named as there (:func:`_series_labels`).

    Readable by construction: the title wraps to the figure's width; points of one series that
    (nearly) coincide share one label ("0, 5 dB"), and each label takes the first position around
    its point that overlaps no other label or marker and stays inside the axes
    (:func:`_place_point_labels`).
    """
    rows = [r for r in rows if r.get("fd_cls") is not None and r.get("psnr") is not None]
    if not rows:
        raise ValueError("no result rows with fd_cls to plot (evaluate without --no-realism)")
    floor = [r for r in rows if r.get("receiver") == "source"]
    rows = [r for r in rows if r.get("receiver") != "source"]
    width = 8.0
    fig = _new_figure((width, 6.0))
    fig.set_dpi(150)  # the saved resolution: label extents are measured as they will be drawn
    ax = fig.subplots()
    series: dict[tuple, list] = {}
    for row in rows:
        key = (_system_order(row), str(row.get("model") or ""), float(row["k_over_n"]), str(row.get("channel")))
        series.setdefault(key, []).append(row)
    keys = sorted(series)
    names = _series_labels({key: series[key][0] for key in keys})
    colour = _colours(rows)
    points = []
    for index, key in enumerate(keys):
        group = sorted(series[key], key=lambda r: float(r["snr_db"]))
        xs, ys = [float(r["psnr"]) for r in group], [float(r["fd_cls"]) for r in group]
        ax.plot(xs, ys, marker=_MARKERS[index % len(_MARKERS)], color=colour[_colour_key(group[0])], linewidth=1.2,
                markersize=5, label=names[key], **_line_style(group[0]))
        points += [(index, x, y, float(r["snr_db"])) for r, x, y in zip(group, xs, ys)]
    if floor:
        level = sum(float(r["fd_cls"]) for r in floor) / len(floor)
        ax.axhline(level, color="0.3", linestyle="-.", linewidth=1.0, label="control: source images (floor)")
    ax.set_xlabel("PSNR (dB): higher is less distortion")
    ax.set_ylabel("fd_cls (not Inception FID): lower is more realistic")
    ax.grid(True, linestyle=":", linewidth=0.8, alpha=0.8)
    ax.margins(x=0.1, y=0.1)  # room for the labels of the outermost points
    handles, labels = ax.get_legend_handles_labels()
    right = _legend(fig, handles, labels, width, wide_entries=True)
    if title:
        _fit_title(fig, title, right=right)
    fig.canvas.draw()  # the final layout; frozen, so the labels are placed in the pixels it is saved in
    fig.set_layout_engine("none")
    _place_point_labels(fig, ax, points)
    return _save(fig, path)


def _place_point_labels(fig, ax, points: list[tuple[int, float, float, float]]) -> None:
    """Label data points ``(series, x, y, snr_db)`` with their SNR, no label over another.

    Points of one series closer than two markers share a label ("10, 15, 20 dB"), as do points of
    several series that coincide. Each label tries positions on rings around its point, nearest
    first, and takes the first that overlaps no label and no marker, crosses no line and stays
    inside the axes (outer rings get a leader line); where none is free, the one that overlaps
    least, other labels and the axes' edge weighing most. Call once the layout is final.
    """
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    scale = fig.dpi / 72.0  # points to pixels
    radius = 3.5 * scale  # about half a marker, in pixels
    groups: list[tuple[int, list[tuple[float, float]], list[float]]] = []  # series, pixel positions, SNRs
    for series, x, y, snr in points:
        px, py = ax.transData.transform((x, y))
        for s, where, snrs in groups:
            near = 4 * radius if s == series else 1.0
            if any(abs(gx - px) < near and abs(gy - py) < near for gx, gy in where):
                where.append((px, py))
                snrs.append(snr)
                break
        else:
            groups.append((series, [(px, py)], [snr]))
    markers = [Bbox.from_bounds(px - radius, py - radius, 2 * radius, 2 * radius)
               for px, py in (ax.transData.transform((x, y)) for _, x, y, _ in points)]
    paths = [line.get_transform().transform_path(line.get_path()) for line in ax.get_lines()]
    frame = ax.get_window_extent(renderer)
    directions = [(1, 0.4), (1, -1.4), (-1, 0.4), (-1, -1.4), (0, 1), (0, -2)]
    candidates = [(5 * r * dx, 5 * r * dy, r > 1) for r in (1, 2, 3, 4) for dx, dy in directions]
    placed: list = []
    for _, where, snrs in groups:
        text = ", ".join(f"{v:g}" for v in sorted(set(snrs))) + " dB"
        best = None
        for dx, dy, leader in candidates:  # from the group's point furthest in that direction
            px, py = max(where, key=lambda p: dx * p[0] + dy * p[1])
            note = _point_label(ax, text, (px, py), dx, dy, leader=False)
            box = note.get_window_extent(renderer)
            note.remove()
            hard = sum(_overlap(box, other) for other in placed)
            outside = box.width * box.height - _overlap(box, frame)
            soft = sum(_overlap(box, other) for other in markers) + 20 * sum(p.intersects_bbox(box, filled=False) for p in paths)
            cost = 1e6 * (hard + outside) + soft
            if best is None or cost < best[0]:
                best = (cost, dx, dy, leader, (px, py), box)
            if cost == 0:
                break
        _, dx, dy, leader, anchor, box = best
        _point_label(ax, text, anchor, dx, dy, leader)
        placed.append(box)


def _point_label(ax, text: str, pixel: tuple[float, float], dx: float, dy: float, leader: bool):
    """An SNR label ``(dx, dy)`` points from the data point at display ``pixel``, aligned away from
    it; a grey leader line back to the point when ``leader``."""
    return ax.annotate(text, ax.transData.inverted().transform(pixel), textcoords="offset points", xytext=(dx, dy),
                       fontsize=_POINT_LABEL_PT, ha="left" if dx > 0 else "right" if dx < 0 else "center",
                       va="bottom" if dy >= 0 else "top",
                       arrowprops={"arrowstyle": "-", "color": "0.5", "linewidth": 0.6, "shrinkA": 0, "shrinkB": 3}
                       if leader else None)


def _overlap(a, b) -> float:
    """Area of the intersection of two boxes (0 when they do not meet)."""
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return width * height if width > 0 and height > 0 else 0.0
