"""One image-decoding rule: ingestion, classification, fine-tuning and transforms give the same pixels.

`mmrag.corpus.decode` is the rule (EXIF rotation, alpha on white, 16-bit scaled,
palette transparency, CMYK). If any other path grows its own conversion again
(a bare `convert("RGB")`, say), one of these files comes out different.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmrag.corpus.types import SkippedFile
from mmrag.embedders.transform import ensure_rgb
from mmrag.retrieval.queries import load_query_image
from mmrag.tasks.classify import load_image
from mmrag.training.finetune import load_rgb_images
from tests.corpus.helpers import decode_ok


def _awkward_files(root: Path) -> dict[str, Path]:
    files = {}
    rgba = Image.new("RGBA", (12, 8), (255, 0, 0, 0))  # fully transparent red: white by the rule
    rgba.paste((0, 0, 255, 128), (6, 0, 12, 8))  # half-transparent blue
    files["alpha"] = root / "alpha.png"
    rgba.save(files["alpha"])

    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90°
    body = Image.new("RGB", (16, 8), (200, 30, 30))
    body.paste((30, 30, 200), (0, 0, 8, 8))
    files["exif"] = root / "rotated.jpg"
    body.save(files["exif"], quality=95, exif=exif.tobytes())

    files["deep16"] = root / "deep16.png"
    Image.fromarray(np.array([[0, 257, 1000, 32768, 40000, 65535]] * 3, dtype=np.uint16)).save(files["deep16"])

    palette = Image.new("P", (6, 4), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.paste(1, (3, 0, 6, 4))
    files["palette_trns"] = root / "palette.png"
    palette.save(files["palette_trns"], transparency=0)  # index 0 (red) transparent

    files["cmyk"] = root / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (255, 0, 0, 0)).save(files["cmyk"], quality=95)

    files["la"] = root / "la.png"
    Image.new("LA", (4, 4), (90, 0)).save(files["la"])
    return files


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return _awkward_files(tmp_path_factory.mktemp("awkward"))


@pytest.mark.parametrize("case", ["alpha", "exif", "deep16", "palette_trns", "cmyk", "la"])
def test_ingest_classify_finetune_and_queries_decode_identically(files, case: str) -> None:
    path = files[case]
    ingest = decode_ok(path).pixels  # what ingestion embeds
    paths = {
        "classify(path)": np.asarray(load_image(path)),
        "classify(PIL)": np.asarray(load_image(Image.open(path))),
        "finetune": np.asarray(load_rgb_images([path], workers=1)[0]),
        "query(path)": np.asarray(load_query_image(path)),
        "query(PIL)": np.asarray(load_query_image(Image.open(path))),
    }
    for name, pixels in paths.items():
        assert pixels.dtype == np.uint8 and pixels.shape == ingest.shape, (name, pixels.shape, ingest.shape)
        np.testing.assert_array_equal(pixels, ingest, err_msg=name)


def test_the_rule_itself_on_the_awkward_files(files) -> None:
    """Reference values, so that all paths agreeing on a wrong rule fails too."""
    alpha = decode_ok(files["alpha"]).pixels
    assert tuple(alpha[0, 0]) == (255, 255, 255)  # transparent red -> white
    assert tuple(alpha[0, 11]) == (127, 127, 255)  # half blue over white
    assert decode_ok(files["exif"]).pixels.shape == (16, 8, 3)  # rotated as displayed
    assert decode_ok(files["deep16"]).pixels[0, :, 0].tolist() == [0, 1, 4, 128, 156, 255]
    palette = decode_ok(files["palette_trns"]).pixels
    assert tuple(palette[0, 0]) == (255, 255, 255) and tuple(palette[0, 5]) == (0, 255, 0)
    assert tuple(decode_ok(files["la"]).pixels[0, 0]) == (255, 255, 255)


def test_in_memory_transparent_red_is_white_everywhere() -> None:
    red = Image.new("RGBA", (2, 2), (255, 0, 0, 0))
    assert load_image(red).getpixel((0, 0)) == (255, 255, 255)
    assert ensure_rgb(red).getpixel((0, 0)) == (255, 255, 255)
    assert load_query_image(red).getpixel((0, 0)) == (255, 255, 255)
    deep = Image.fromarray(np.array([[65535, 32768]], dtype=np.uint16))
    assert [p[0] for p in ensure_rgb(deep).getdata()] == [255, 128]  # scaled, not clipped to 255


def test_finetune_skips_a_bad_file_instead_of_aborting(files, tmp_path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    results = load_rgb_images([files["alpha"], bad, tmp_path / "missing.png"], workers=2)
    assert isinstance(results[0], Image.Image)
    assert isinstance(results[1], SkippedFile) and results[1].reason.startswith("truncated or corrupt image")
    assert isinstance(results[2], SkippedFile) and results[2].reason == "file not found"
