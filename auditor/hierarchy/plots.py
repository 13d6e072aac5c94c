"""Static pictures of the hierarchy views for reports and the review page, as PNG or SVG.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas, never through pyplot: pyplot
keeps global state that is not safe in a worker thread or an API request. The confusion heatmap
uses a log colour scale on row-normalised rates because a block's few-percent confusions would
vanish next to the diagonal on a linear scale.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Literal

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from auditor.hierarchy.tree import Tree, TreeIndex

ImageFormat = Literal["png", "svg"]
MAX_LABELED_CLASSES = 80  # beyond this, class names overlap into an unreadable band
SMALLEST_SHOWN_RATE = 1e-3


def render(figure: Figure, image_format: ImageFormat, path: str | Path | None) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format=image_format, bbox_inches="tight", dpi=120)
    data = buffer.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def draw_dendrogram(axes: Axes, tree: Tree) -> None:
    """The tree with leaves at rows 0..c-1 (top to bottom) and the root on the left.

    Learned trees carry merge heights; a given tree has none, so its nodes sit by depth.
    """
    index = TreeIndex(tree)
    internal = [node for node, kids in enumerate(index.children) if kids]
    use_heights = all(index.heights[node] is not None for node in internal)
    x = np.zeros(len(index.names))
    y = np.zeros(len(index.names))
    for node in reversed(range(len(index.names))):
        kids = index.children[node]
        if kids:
            x[node] = index.heights[node] if use_heights else index.max_depth - index.depths[node]
            y[node] = np.mean([y[kid] for kid in kids])
        else:
            y[node] = index.leaf_start[node]
    for node in internal:
        kids = index.children[node]
        axes.plot(
            [x[node], x[node]], [min(y[k] for k in kids), max(y[k] for k in kids)], "k-", lw=0.8
        )
        for kid in kids:
            axes.plot([x[kid], x[node]], [y[kid], y[kid]], "k-", lw=0.8)
    axes.set_ylim(len(index.order) - 0.5, -0.5)
    axes.set_xlim(max(x.max(), 1e-9) * 1.05, 0.0)
    axes.axis("off")


def plot_confusion(
    payload: dict[str, Any],
    tree: Tree | None = None,
    image_format: ImageFormat = "png",
    path: str | Path | None = None,
    log_scale: bool = True,
) -> bytes:
    """Heatmap of a `confusion_payload` in hierarchy order, blocks outlined, tree alongside."""
    order = payload["order"]
    rates = np.asarray(payload["normalised"], dtype=np.float64)
    size = min(max(6.0, 0.28 * len(order) + 3.0), 30.0)
    figure = Figure(figsize=(size * (1.3 if tree else 1.0), size))
    # Colour bar above the heatmap: the right side holds the row names when the tree is on the left.
    widths = [1.0, 4.0] if tree else [4.0]
    grid = figure.add_gridspec(
        2, len(widths), width_ratios=widths, height_ratios=[0.04, 1.0], wspace=0.02, hspace=0.04
    )
    if tree:
        draw_dendrogram(figure.add_subplot(grid[1, 0]), tree)
    heatmap = figure.add_subplot(grid[1, -1])
    norm = LogNorm(SMALLEST_SHOWN_RATE, 1.0, clip=True) if log_scale else Normalize(0.0, 1.0)
    colours = heatmap.imshow(
        np.where(rates > 0, rates, np.nan) if log_scale else rates,
        cmap="viridis",
        norm=norm,
        interpolation="nearest",
        aspect="auto",
    )
    heatmap.set_facecolor("#f4f4f4")
    position = {name: i for i, name in enumerate(order)}
    for block in payload.get("blocks", []):
        start = min(position[name] for name in block)
        heatmap.add_patch(
            Rectangle(
                (start - 0.5, start - 0.5), len(block), len(block), fill=False, ec="red", lw=1.6
            )
        )
    if len(order) <= MAX_LABELED_CLASSES:
        font = max(4.0, min(9.0, 400.0 / max(len(order), 1)))
        heatmap.set_xticks(range(len(order)), order, rotation=90, fontsize=font)
        heatmap.set_yticks(range(len(order)), order, fontsize=font)
        if tree:
            heatmap.yaxis.tick_right()
            heatmap.yaxis.set_label_position("right")
    else:
        heatmap.set_xticks([])
        heatmap.set_yticks([])
    heatmap.set_xlabel("predicted class")
    heatmap.set_ylabel("given label")
    scale = figure.colorbar(colours, cax=figure.add_subplot(grid[0, -1]), orientation="horizontal")
    scale.set_label("share of given label", fontsize=8)
    scale.ax.xaxis.set_ticks_position("top")
    scale.ax.xaxis.set_label_position("top")
    return render(figure, image_format, path)


def plot_layer_separability(
    payload: dict[str, Any], image_format: ImageFormat = "png", path: str | Path | None = None
) -> bytes:
    """One line per hierarchy level across the layers (input to output) of a layers payload."""
    layers, levels = payload["layers"], payload["levels"]
    table = np.asarray(payload["separability"], dtype=np.float64).reshape(len(layers), len(levels))
    group_counts = payload.get("groups_per_level") or [None] * len(levels)
    figure = Figure(figsize=(max(6.0, 0.9 * len(layers) + 3.0), 4.5))
    axes = figure.add_subplot()
    for column, (level, groups) in enumerate(zip(levels, group_counts, strict=True)):
        colour = colormaps["viridis"](0.9 * column / max(len(levels) - 1, 1))
        label = f"{level} ({groups} groups)" if groups else level
        axes.plot(range(len(layers)), table[:, column], marker="o", color=colour, label=label)
    axes.set_xticks(range(len(layers)), layers, rotation=30, ha="right")
    axes.set_ylim(min(0.0, float(np.nanmin(table)) - 0.05) if table.size else 0.0, 1.05)
    axes.set_xlabel("layer (input to output)")
    axes.set_ylabel(f"separability ({payload.get('method', 'centroid')}, 0 = chance)")
    axes.grid(alpha=0.3)
    if len(levels) <= 12:
        axes.legend(fontsize=8, title="hierarchy level (coarse to fine)", title_fontsize=8)
    return render(figure, image_format, path)
