from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classify.conftest import COLOURS, make_image
from mmrag.tasks.classify import Prediction
from mmrag.tasks.plots import (
    classification_figure_size,
    confusion_figure_size,
    plot_classification,
    plot_confusion_matrix,
    plot_search_results,
    search_figure_size,
    search_grid_shape,
)


def test_grid_shape() -> None:
    assert search_grid_shape(0) == (1, 1)
    assert search_grid_shape(3, columns=4) == (1, 4)
    assert search_grid_shape(4, columns=4) == (2, 4)
    assert search_grid_shape(8, columns=3) == (3, 3)
    assert search_figure_size(5, columns=3, dpi=100) == (750, 500)
    with pytest.raises(ValueError, match="columns must be >= 1"):
        search_grid_shape(3, columns=0)


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_search_results_text_and_image_query(tmp_path: Path) -> None:
    hits = [
        (make_image(tmp_path / f"{name}.png", colour, seed=i), 0.9 - 0.1 * i, f"a {name} picture")
        for i, (name, colour) in enumerate(COLOURS.items())
    ]
    hits.append((tmp_path / "gone.png", 0.1))  # missing file, no caption: a labelled blank panel
    hits.append((None, 0.05, "no corpus root known"))  # no file at all
    out = plot_search_results("something red", hits, tmp_path / "plots" / "text.png", columns=3)
    assert _size(out) == search_figure_size(5, columns=3) == (750, 500)
    out = plot_search_results(str(hits[0][0]), hits[:2], tmp_path / "img.png", columns=4)
    assert _size(out) == (750, 250)  # 3 panels: the row is only as wide as it needs to be
    # the query image is really drawn: its panel holds red-dominant pixels
    arr = np.asarray(Image.open(out).convert("RGB"), dtype=int)
    first = arr[:, :250]
    assert ((first[..., 0] > 150) & (first[..., 1] < 100)).sum() > 1000


def test_classification_plot(tmp_path: Path) -> None:
    img = make_image(tmp_path / "x.png", COLOURS["green"])
    pred = Prediction(source=str(img), top=[("green", 0.7), ("blue", 0.2), ("red", 0.1)])
    out = plot_classification(img, pred, tmp_path / "cls.png")
    assert _size(out) == classification_figure_size() == (800, 350)
    out = plot_classification(Image.new("RGB", (5, 5)), [("a", 1.0)], tmp_path / "cls2.png", dpi=50)
    assert _size(out) == (400, 175)


def test_confusion_plot(tmp_path: Path) -> None:
    out = plot_confusion_matrix([[3, 1], [0, 4]], ["a", "b"], tmp_path / "cm.png", normalize=True)
    assert _size(out) == confusion_figure_size(2) == (400, 400)
    assert confusion_figure_size(40) == (1800, 1800)
    with pytest.raises(ValueError, match=r"shape \(2, 2\), expected \(3, 3\)"):
        plot_confusion_matrix([[1, 0], [0, 1]], ["a", "b", "c"], tmp_path / "bad.png")
