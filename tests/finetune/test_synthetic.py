from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmrag.training import synthetic
from mmrag.training.synthetic import Scene, ShapeObject, generate, render, write_corpus


def _png(sample) -> bytes:
    return synthetic.png_bytes(sample.image)


def test_same_seed_gives_identical_bytes_and_other_seed_differs():
    a = generate(12, seed=3)
    b = generate(12, seed=3)
    c = generate(12, seed=4)
    assert [_png(s) for s in a] == [_png(s) for s in b]
    assert [s.caption_en for s in a] == [s.caption_en for s in b]
    assert [_png(s) for s in a] != [_png(s) for s in c]
    assert sum(x.caption_en != y.caption_en for x, y in zip(a, c)) >= 6


def test_worker_processes_do_not_change_the_samples():
    serial = generate(260, seed=9, workers=1)
    parallel = generate(260, seed=9, workers=2)
    assert [s.caption_en for s in serial] == [s.caption_en for s in parallel]
    assert _png(serial[-1]) == _png(parallel[-1]) and _png(serial[100]) == _png(parallel[100])


def test_render_reproduces_a_sample_and_other_seed_makes_a_variant():
    sample = generate(5, seed=1)[4]
    again = render(sample.attributes, seed=sample.render_seed, image_size=64)
    assert again.tobytes() == sample.image.tobytes()
    variant = render(sample.attributes.to_dict(), seed=sample.render_seed + 1, image_size=64)
    assert variant.size == (64, 64) and variant.tobytes() != sample.image.tobytes()


def test_exact_captions_single_and_two_objects():
    one = Scene((ShapeObject("circle", "red", "small", "top left"),), "gray")
    assert synthetic.caption_en(one) == "a small red circle at the top left on a gray background"
    assert synthetic.caption_zh(one) == "左上角的一个红色小圆形，灰色背景"
    # objects are put in reading order whatever order they are given in
    two = Scene(
        (ShapeObject("square", "blue", "large", "bottom right"), ShapeObject("heart", "black", "small", "center")),
        "teal",
    )
    assert [o.position for o in two.objects] == ["center", "bottom right"]
    assert synthetic.caption_en(two) == (
        "a small black heart in the center and a large blue square at the bottom right on a teal background"
    )
    assert synthetic.caption_zh(two) == "中间的一个黑色小心形和右下角的一个蓝色大正方形，青色背景"
    assert synthetic.class_prompt("purple", "star") == "a photo of a purple star."
    assert synthetic.class_prompt("purple", "star", "zh") == "一张紫色星形的照片。"


def test_generated_captions_follow_the_attributes():
    for s in generate(40, seed=5):
        assert s.caption_en == synthetic.caption_en(s.attributes)
        assert s.caption_zh == synthetic.caption_zh(s.attributes)
        for obj in s.attributes.objects:
            assert f"{obj.size} {obj.color} {obj.shape}" in s.caption_en
            assert synthetic.COLORS_ZH[obj.color] + synthetic.SIZES_ZH[obj.size] + synthetic.SHAPES_ZH[obj.shape] in s.caption_zh
        assert s.caption_en.endswith(f"on a {s.attributes.background} background")
        assert Scene.from_dict(json.loads(json.dumps(s.attributes.to_dict()))) == s.attributes


@pytest.mark.parametrize("n, ratio, expected", [(50, 0.2, 10), (37, 0.5, 18), (20, 0.0, 0), (8, 1.0, 8)])
def test_two_object_ratio_is_exact(n, ratio, expected):
    samples = generate(n, seed=2, two_object_ratio=ratio)
    assert sum(s.attributes.num_objects == 2 for s in samples) == expected
    assert all(" and " in s.caption_en for s in samples if s.attributes.num_objects == 2)


def test_pixels_show_the_named_colour_in_the_named_cell():
    for position, (row, col) in [("top left", (0, 0)), ("center", (1, 1)), ("bottom right", (2, 2))]:
        scene = Scene((ShapeObject("circle", "red", "large", position),), "gray")
        pixels = np.asarray(render(scene, seed=11, image_size=64)).astype(int)
        redness = pixels[..., 0] - pixels[..., 1:].max(axis=-1)
        ys, xs = np.nonzero(redness > 100)
        assert len(ys) > 100  # a large circle covers ~290 of 4096 pixels
        assert int(ys.mean() // (64 / 3)) == row and int(xs.mean() // (64 / 3)) == col
        corner = pixels[32, 32] if position != "center" else pixels[2, 2]
        assert abs(int(corner[0]) - int(corner[1])) < 40  # gray background, not red


def test_invalid_attributes_are_rejected():
    with pytest.raises(ValueError, match="unknown shape 'blob'"):
        ShapeObject("blob", "red", "small", "center")
    with pytest.raises(ValueError, match="share a grid cell"):
        Scene((ShapeObject("star", "red", "small", "top"), ShapeObject("heart", "blue", "large", "top")), "gray")
    with pytest.raises(ValueError, match="two_object_ratio"):
        generate(3, seed=0, two_object_ratio=1.5)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_write_corpus_manifest_and_sidecars(tmp_path, fmt):
    out = write_corpus(tmp_path / "c", 10, seed=7, lang="zh", manifest=fmt, two_object_ratio=0.3)
    samples = generate(10, seed=7, two_object_ratio=0.3)
    manifest = out / f"manifest.{fmt}"
    if fmt == "jsonl":
        rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    elif fmt == "csv":
        rows = list(csv.DictReader(open(manifest, encoding="utf-8")))
    else:
        rows = pq.read_table(manifest).to_pylist()
    assert [r["path"] for r in rows] == [f"img_{i:05d}.png" for i in range(10)]
    for row, s in zip(rows, samples):
        assert row["caption"] == s.caption_zh and row["caption_en"] == s.caption_en
        first = s.attributes.objects[0]
        assert (row["shape"], row["color"], row["size"], row["position"]) == (first.shape, first.color, first.size, first.position)
        assert int(row["num_objects"]) == s.attributes.num_objects
        assert (row["shape2"] != "") == (s.attributes.num_objects == 2)
        assert (out / row["path"]).read_bytes() == _png(s)
        assert (out / row["path"]).with_suffix(".txt").read_text(encoding="utf-8") == s.caption_zh + "\n"


def test_write_corpus_without_sidecars_or_manifest(tmp_path):
    out = write_corpus(tmp_path / "c", 3, seed=1, sidecars=False, manifest=None)
    assert sorted(p.name for p in out.iterdir()) == ["img_00000.png", "img_00001.png", "img_00002.png"]
