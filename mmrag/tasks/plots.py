"""PNG figures: search results grid, classification bars, confusion matrix.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global
backend switch, safe in threads and on headless machines). Figure sizes are
fixed by the layout (never `bbox_inches="tight"`), so the pixel size of a PNG
is predictable: see `search_grid_shape` and the `*_size` helpers.
"""

from __future__ import annotations

import math
import os
import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmrag.errors import UsageError

__all__ = [
    "classification_figure_size",
    "confusion_figure_size",
    "plot_classification",
    "plot_confusion_matrix",
    "plot_search_results",
    "search_figure_size",
    "search_grid_shape",
]

CELL_INCHES = 2.5  # one panel of the search grid, square
THUMBNAIL = 512  # images are shrunk before drawing: a grid never needs full resolution


class PlottingUnavailable(UsageError):
    """matplotlib is an optional extra: `pip install 'mmrag[plot]'`."""


def _figure(width_in: float, height_in: float, dpi: int):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlottingUnavailable(
            "plots need matplotlib, an optional extra: pip install 'mmrag[plot]' (or matplotlib>=3.8)"
        ) from exc

    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, out_png: str | os.PathLike[str]) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # DejaVu has no CJK glyphs: Chinese captions draw as boxes, which is no reason to warn per glyph.
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        warnings.filterwarnings("ignore", message=".*missing from font")
        fig.savefig(out, format="png", dpi=fig.dpi)
    return out


def _thumbnail(source: str | os.PathLike[str] | Image.Image | None) -> Image.Image | None:
    """RGB thumbnail of a path or PIL image; None when there is none or it cannot be read."""
    if source is None:
        return None
    from mmrag.corpus import ImageDecodeError, image_to_rgb, load_rgb

    try:
        img = image_to_rgb(source) if isinstance(source, Image.Image) else load_rgb(Path(source))
    except (ImageDecodeError, OSError, ValueError):
        return None
    img = img.copy()
    img.thumbnail((THUMBNAIL, THUMBNAIL))
    return img


def _is_image_query(query: Any) -> bool:
    if isinstance(query, Image.Image):
        return True
    if isinstance(query, os.PathLike):
        return True
    return isinstance(query, str) and len(query) < 4096 and os.path.isfile(query)


def _text_panel(ax: Any, text: str, *, width: int = 28, fontsize: float = 10) -> None:
    ax.text(0.5, 0.5, textwrap.fill(text, width), ha="center", va="center", fontsize=fontsize, wrap=True,
            transform=ax.transAxes)
    ax.set_facecolor("#f2f2f2")


def _clear(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def search_grid_shape(n_hits: int, columns: int = 4) -> tuple[int, int]:
    """(rows, columns) of the grid for a query panel plus `n_hits` hit panels."""
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    panels = n_hits + 1
    cols = min(columns, panels)
    return math.ceil(panels / cols), cols


def search_figure_size(n_hits: int, columns: int = 4, dpi: int = 100) -> tuple[int, int]:
    """(width, height) in pixels of `plot_search_results`' PNG."""
    rows, cols = search_grid_shape(n_hits, columns)
    return round(cols * CELL_INCHES * dpi), round(rows * CELL_INCHES * dpi)


def plot_search_results(
    query: str | os.PathLike[str] | Image.Image,
    hits: Sequence[Sequence[Any]],
    out_png: str | os.PathLike[str],
    *,
    columns: int = 4,
    dpi: int = 100,
) -> Path:
    """The query (text, or an image path / PIL image) and its hits as one PNG grid.

    `hits`: (image path, score) or (image path, score, caption) tuples, best
    first. An image path that is None or cannot be read is drawn as a labelled
    blank panel.
    """
    rows, cols = search_grid_shape(len(hits), columns)
    fig = _figure(cols * CELL_INCHES, rows * CELL_INCHES, dpi)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        _clear(ax)
        ax.set_axis_off()

    q_ax = axes[0][0]
    q_ax.set_axis_on()
    if _is_image_query(query):
        img = _thumbnail(query)  # type: ignore[arg-type]
        if img is None:
            _text_panel(q_ax, f"(unreadable query image)\n{query}", fontsize=8)
        else:
            q_ax.imshow(np.asarray(img))
        q_ax.set_title("query image", fontsize=9, fontweight="bold")
    else:
        _text_panel(q_ax, str(query), fontsize=11)
        q_ax.set_title("query", fontsize=9, fontweight="bold")

    for n, hit in enumerate(hits, 1):
        path, score = hit[0], float(hit[1])
        caption = hit[2] if len(hit) > 2 else None
        ax = axes[n // cols][n % cols]
        ax.set_axis_on()
        img = _thumbnail(path)
        name = Path(str(path)).name if path is not None else "(no file)"
        if img is None:
            _text_panel(ax, f"(missing)\n{name}", fontsize=8)
        else:
            ax.imshow(np.asarray(img))
        ax.set_title(f"#{n}  {score:.3f}", fontsize=9)
        label = caption if caption else name
        ax.set_xlabel(textwrap.shorten(str(label), 60, placeholder="…"), fontsize=7, wrap=True)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.93, bottom=0.07, wspace=0.08, hspace=0.3)
    return _save(fig, out_png)


CLASSIFICATION_INCHES = (8.0, 3.5)


def classification_figure_size(dpi: int = 100) -> tuple[int, int]:
    return round(CLASSIFICATION_INCHES[0] * dpi), round(CLASSIFICATION_INCHES[1] * dpi)


def plot_classification(
    image: str | os.PathLike[str] | Image.Image,
    predictions: Any,
    out_png: str | os.PathLike[str],
    *,
    dpi: int = 100,
) -> Path:
    """The image beside a horizontal bar chart of its top labels.

    `predictions`: a `Prediction` (its `top`) or a list of (label, probability), best first.
    """
    top = list(getattr(predictions, "top", predictions))
    fig = _figure(*CLASSIFICATION_INCHES, dpi)
    img_ax, bar_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.4]})
    _clear(img_ax)
    img = _thumbnail(image)
    if img is None:
        _text_panel(img_ax, f"(unreadable)\n{image}", fontsize=8)
    else:
        img_ax.imshow(np.asarray(img))
    if top:
        labels = [str(lab) for lab, _ in top][::-1]  # best on top
        probs = [float(p) for _, p in top][::-1]
        bars = bar_ax.barh(range(len(top)), probs, color="#4c72b0")
        bar_ax.set_yticks(range(len(top)), labels=[textwrap.shorten(lab, 28, placeholder="…") for lab in labels], fontsize=8)
        for bar, p in zip(bars, probs):
            bar_ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {p:.3f}", va="center", fontsize=8)
    bar_ax.set_xlim(0, 1.15)
    bar_ax.set_xlabel("probability", fontsize=8)
    fig.subplots_adjust(left=0.02, right=0.97, top=0.92, bottom=0.14, wspace=0.45)
    return _save(fig, out_png)


def confusion_figure_size(n_classes: int, dpi: int = 100) -> tuple[int, int]:
    side = _confusion_inches(n_classes)
    return round(side * dpi), round(side * dpi)


def _confusion_inches(n_classes: int) -> float:
    return float(min(20.0, max(4.0, 2.0 + 0.4 * n_classes)))


def plot_confusion_matrix(
    confusion: Sequence[Sequence[int]],
    classes: Sequence[str],
    out_png: str | os.PathLike[str],
    *,
    normalize: bool = False,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Heat map of a confusion matrix (rows: true class, columns: predicted); counts written in cells up to 30 classes."""
    mat = np.asarray(confusion, dtype=np.float64)
    n = len(classes)
    if mat.shape != (n, n):
        raise ValueError(f"confusion matrix has shape {mat.shape}, expected ({n}, {n})")
    shown = mat / np.maximum(mat.sum(axis=1, keepdims=True), 1) if normalize else mat
    side = _confusion_inches(n)
    fig = _figure(side, side, dpi)
    ax = fig.subplots()
    im = ax.imshow(shown, cmap="Blues", vmin=0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ticks = range(n)
    fontsize = 8 if n <= 30 else 5
    ax.set_xticks(ticks, labels=list(classes), rotation=90, fontsize=fontsize)
    ax.set_yticks(ticks, labels=list(classes), fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=9)
    if n <= 30:
        peak = shown.max() if shown.size else 0
        for i in range(n):
            for j in range(n):
                value = f"{shown[i, j]:.2f}" if normalize else str(int(mat[i, j]))
                ax.text(j, i, value, ha="center", va="center", fontsize=7,
                        color="white" if peak and shown[i, j] > peak / 2 else "black")
    fig.subplots_adjust(left=0.2, right=0.95, top=0.92, bottom=0.2)
    return _save(fig, out_png)
