from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from corpus.helpers import LIMIT_BYTES, LIMIT_PIXELS, item_for
from mmrag.corpus.decode import DECODER_DIED, decode_stream
from mmrag.corpus.types import CorpusItem, DecodedImage, SkippedFile


def _grey_images(folder: Path, count: int) -> list[CorpusItem]:
    items = []
    for i in range(count):
        path = folder / f"img{i:03d}.png"
        Image.new("L", (8 + i % 5, 6), i).save(path)
        items.append(item_for(path))
    return items


def _mean_grey(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)[..., 0]


def _grey_or_die(image: Image.Image) -> np.ndarray:
    """Kills its worker process on grey levels 5 and 9, as a crashing decoder would."""
    level = int(np.asarray(image)[0, 0, 0])
    if level in (5, 9):
        os._exit(3)
    return _mean_grey(image)


def _pid_of_worker(image: Image.Image) -> np.ndarray:
    return np.array([os.getpid(), int(np.asarray(image)[0, 0, 0])])


@pytest.fixture(params=["thread", "process"])
def executor(request) -> str:
    return request.param


def _stream(items, **kwargs):
    kwargs.setdefault("workers", 2)
    kwargs.setdefault("preprocess", _mean_grey)
    return decode_stream(items, max_file_bytes=LIMIT_BYTES, max_image_pixels=LIMIT_PIXELS, **kwargs)


def test_order_is_preserved_and_skips_do_not_stop_the_stream(tmp_path, executor):
    good = _grey_images(tmp_path, 12)
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    (tmp_path / "empty.png").write_bytes(b"")
    upstream_skip = SkippedFile("scan/unreadable.png", "unreadable: Permission denied")
    items = good[:3] + [item_for(tmp_path / "bad.jpg")] + good[3:7] + [upstream_skip]
    items += [item_for(tmp_path / "empty.png"), item_for(tmp_path / "gone.png")] + good[7:]

    results = list(_stream(items, max_in_flight=3, executor=executor))

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
def test_in_flight_work_is_bounded(tmp_path, window, executor):
    items = _grey_images(tmp_path, 20)
    pulled = 0

    def source():
        nonlocal pulled
        for item in items:
            pulled += 1
            yield item

    for index, result in enumerate(_stream(source(), max_in_flight=window, executor=executor)):
        assert int(result.pixels[0, 0]) == index
        # never more than `window` items taken from upstream ahead of the consumer
        assert pulled <= index + window
        if window == 1:
            assert pulled == index + 1
    assert pulled == 20


def test_closing_early_stops_pulling_items(tmp_path, executor):
    items = _grey_images(tmp_path, 3)
    pulled = 0

    def endless():
        nonlocal pulled
        while True:
            for item in items:
                pulled += 1
                yield item

    stream = _stream(endless(), max_in_flight=4, executor=executor)
    first = [next(stream) for _ in range(5)]
    stream.close()
    assert [int(r.pixels[0, 0]) for r in first] == [0, 1, 2, 0, 1]
    assert pulled <= 5 + 4


def test_bad_arguments(tmp_path, executor):
    with pytest.raises(ValueError, match="workers must be >= 0"):
        list(_stream([], workers=-1, executor=executor))
    with pytest.raises(TypeError, match="expects CorpusItem or SkippedFile, got str"):
        list(_stream(["not-an-item"], executor=executor))


def test_unknown_executor_and_unpicklable_preprocess_are_refused(tmp_path):
    with pytest.raises(ValueError, match="executor must be one of thread, process, got 'fork'"):
        list(_stream([], executor="fork"))
    with pytest.raises(ValueError, match=r"executor='process' needs a preprocess that pickles.*portable_preprocess"):
        list(_stream([], executor="process", preprocess=lambda image: _mean_grey(image)))


def test_process_workers_decode_in_other_processes(tmp_path):
    items = _grey_images(tmp_path, 8)
    results = list(_stream(items, executor="process", preprocess=_pid_of_worker))
    pids = {int(r.pixels[0]) for r in results}
    assert [int(r.pixels[1]) for r in results] == list(range(8))
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


@pytest.mark.parametrize("window", [1, 6])
def test_a_dying_worker_costs_only_its_own_file(tmp_path, window):
    items = _grey_images(tmp_path, 14)  # grey levels 5 and 9 kill their worker
    results = list(_stream(items, executor="process", max_in_flight=window, preprocess=_grey_or_die))
    assert [r.rel_path if isinstance(r, SkippedFile) else r.item.rel_path for r in results] == [
        i.rel_path for i in items
    ]
    skipped = [(r.rel_path, r.reason) for r in results if isinstance(r, SkippedFile)]
    assert skipped == [("img005.png", DECODER_DIED), ("img009.png", DECODER_DIED)]
    assert [int(r.pixels[0, 0]) for r in results if isinstance(r, DecodedImage)] == [
        level for level in range(14) if level not in (5, 9)
    ]

