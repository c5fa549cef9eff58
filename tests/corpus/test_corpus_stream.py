from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmrag.corpus.decode import decode_stream
from mmrag.corpus.types import CorpusItem, DecodedImage, SkippedFile

from .helpers import LIMIT_BYTES, LIMIT_PIXELS, item_for


def _grey_images(folder: Path, count: int) -> list[CorpusItem]:
    items = []
    for i in range(count):
        path = folder / f"img{i:03d}.png"
        Image.new("L", (8 + i % 5, 6), i).save(path)
        items.append(item_for(path))
    return items


def _mean_grey(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)[..., 0]


def _stream(items, **kwargs):
    kwargs.setdefault("workers", 2)
    return decode_stream(
        items, max_file_bytes=LIMIT_BYTES, max_image_pixels=LIMIT_PIXELS, preprocess=_mean_grey, **kwargs
    )


def test_order_is_preserved_and_skips_do_not_stop_the_stream(tmp_path):
    good = _grey_images(tmp_path, 12)
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    (tmp_path / "empty.png").write_bytes(b"")
    upstream_skip = SkippedFile("scan/unreadable.png", "unreadable: Permission denied")
    items = good[:3] + [item_for(tmp_path / "bad.jpg")] + good[3:7] + [upstream_skip]
    items += [item_for(tmp_path / "empty.png"), item_for(tmp_path / "gone.png")] + good[7:]

    results = list(_stream(items, max_in_flight=3))

    assert [r.rel_path if isinstance(r, SkippedFile) else r.item.rel_path for r in results] == [
        x.rel_path for x in items
    ]
    skips = [(r.rel_path, r.reason) for r in results if isinstance(r, SkippedFile)]
    assert skips == [
        ("bad.jpg", "not an image (cannot identify image file)"),
        ("scan/unreadable.png", "unreadable: Permission denied"),
        ("empty.png", "empty file"),
        ("gone.png", "file not found"),
    ]
    decoded = [r for r in results if isinstance(r, DecodedImage)]
    # each image's grey level is its index: proves every result belongs to its own input
    assert [int(r.pixels[0, 0]) for r in decoded] == list(range(12))
    assert [(r.width, r.height) for r in decoded] == [(8 + i % 5, 6) for i in range(12)]


def test_workers_zero_uses_all_cores_and_runs_on_pool_threads(tmp_path):
    items = _grey_images(tmp_path, 6)
    thread_names = set()

    def record(image):
        thread_names.add(threading.current_thread().name)
        return _mean_grey(image)

    results = list(
        decode_stream(
            items, workers=0, max_file_bytes=LIMIT_BYTES, max_image_pixels=LIMIT_PIXELS, preprocess=record
        )
    )
    assert [int(r.pixels[0, 0]) for r in results] == list(range(6))
    assert thread_names and all(name.startswith("mmrag-decode") for name in thread_names)


@pytest.mark.parametrize("window", [1, 4])
def test_in_flight_work_is_bounded(tmp_path, window):
    items = _grey_images(tmp_path, 20)
    pulled = 0

    def source():
        nonlocal pulled
        for item in items:
            pulled += 1
            yield item

    for index, result in enumerate(_stream(source(), max_in_flight=window)):
        assert int(result.pixels[0, 0]) == index
        # never more than `window` items taken from upstream ahead of the consumer
        assert pulled <= index + window
        if window == 1:
            assert pulled == index + 1
    assert pulled == 20


def test_closing_early_stops_pulling_items(tmp_path):
    items = _grey_images(tmp_path, 3)
    pulled = 0

    def endless():
        nonlocal pulled
        while True:
            for item in items:
                pulled += 1
                yield item

    stream = _stream(endless(), max_in_flight=4)
    first = [next(stream) for _ in range(5)]
    stream.close()
    assert [int(r.pixels[0, 0]) for r in first] == [0, 1, 2, 0, 1]
    assert pulled <= 5 + 4


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="workers must be >= 0"):
        list(_stream([], workers=-1))
    with pytest.raises(TypeError, match="expects CorpusItem or SkippedFile, got str"):
        list(_stream(["not-an-item"]))
