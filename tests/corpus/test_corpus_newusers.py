"""Issue 17, corpus side: one list of image types, the tRNS rule for 16-bit images, clear reasons."""

from __future__ import annotations

import io
import struct
import zlib
from collections import Counter

import numpy as np
from PIL import Image

from corpus.helpers import decode_ok, decode_skip
from mmrag.corpus import IMAGE_EXTENSIONS, IMAGE_SUFFIXES, iter_corpus, scan_folder
from mmrag.corpus.decode import SAFE_FORMATS, load_rgb
from mmrag.corpus.formats import EXTENSION_FORMATS, format_counts
from mmrag.retrieval.queries import is_image_query

WHITE = (255, 255, 255)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png16_rgb_with_trns(pixels: list[tuple[int, int, int]], key: tuple[int, int, int]) -> bytes:
    raw = b"\x00" + b"".join(struct.pack(">3H", *p) for p in pixels)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", len(pixels), 1, 16, 2, 0, 0, 0))
        + _chunk(b"tRNS", struct.pack(">3H", *key))
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


def test_scanner_decoder_and_query_detector_share_one_list():
    for ext in ("ico", "ppm", "pgm", "pbm", "dib", "avif"):
        assert ext in IMAGE_EXTENSIONS and f".{ext}" in IMAGE_SUFFIXES
    # every extension maps to a format the decoder tries, and every such format has an extension
    assert set(EXTENSION_FORMATS.values()) == set(SAFE_FORMATS)


def test_scanner_picks_up_every_type_the_decoder_reads(tmp_path):
    img = Image.new("RGB", (8, 8), (10, 200, 30))
    img.save(tmp_path / "a.ico", format="ICO")
    img.save(tmp_path / "b.ppm", format="PPM")
    img.convert("L").save(tmp_path / "c.pgm", format="PPM")
    img.convert("1").save(tmp_path / "d.pbm", format="PPM")
    img.save(tmp_path / "e.dib", format="DIB")
    found = sorted(x.rel_path for x in scan_folder(tmp_path))
    assert found == ["a.ico", "b.ppm", "c.pgm", "d.pbm", "e.dib"]
    for name in found:  # and the decoder reads each one
        assert decode_ok(tmp_path / name).width == 8


def test_avif_path_is_an_image_query(tmp_path):
    path = tmp_path / "q.avif"
    path.write_bytes(b"\x00\x00\x00\x1cftypavif")
    assert is_image_query(str(path)) is True
    assert is_image_query(str(tmp_path / "q.txt")) is False


def test_ignored_files_are_counted_by_extension(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    (tmp_path / "x.txt").write_text("a caption", encoding="utf-8")  # a sidecar: not "ignored"
    for i in range(3):
        (tmp_path / f"t{i}.tga").write_bytes(b"\x00" * 20)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "y.dds").write_bytes(b"DDS \x00")
    (tmp_path / ".hidden.tga").write_bytes(b"\x00")  # hidden files are not counted
    ignored: Counter[str] = Counter()
    found = [x.rel_path for x in iter_corpus(tmp_path, ignored=ignored)]
    assert found == ["x.png"]
    assert ignored == Counter({".tga": 3, ".dds": 1})
    assert format_counts(ignored) == "3 .tga, 1 .dds"


def test_16bit_grey_png_with_trns_composites_on_white(tmp_path):
    arr = np.array([[0, 1000, 65535]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(arr).save(path, format="PNG", transparency=1000)
    assert Image.open(path).mode == "I;16"
    pixels = decode_ok(path).pixels
    assert [tuple(p) for p in pixels[0]] == [(0, 0, 0), WHITE, WHITE]  # the middle one is transparent
    pixels_16_black = Image.fromarray(np.array([[0, 1000]], dtype=np.uint16))
    buf = io.BytesIO()
    pixels_16_black.save(buf, format="PNG", transparency=0)
    assert [tuple(p) for p in np.asarray(load_rgb(buf.getvalue()))[0]] == [WHITE, (4, 4, 4)]


def test_16bit_rgb_png_with_trns_composites_on_white():
    data = _png16_rgb_with_trns([(1000, 2000, 3000), (65535, 0, 0)], key=(1000, 2000, 3000))
    assert [tuple(p) for p in np.asarray(load_rgb(data))[0]] == [WHITE, (255, 0, 0)]


def test_tiff_that_pillow_cannot_open_is_unsupported_not_not_an_image(tmp_path):
    path = tmp_path / "scan.tif"
    # a TIFF header whose first IFD lies past the end of the file: Pillow gives up on it
    path.write_bytes(b"II*\x00" + struct.pack("<I", 10_000) + b"\x00" * 64)
    reason = decode_skip(path).reason
    assert reason.startswith("unsupported or corrupt image (Pillow: "), reason
    assert "cannot identify image file" in reason
