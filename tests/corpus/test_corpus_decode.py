from __future__ import annotations

import hashlib
import io
import warnings

import numpy as np
import pytest
from PIL import Image

from corpus.helpers import LIMIT_BYTES, LIMIT_PIXELS, decode_ok, decode_skip, item_for, png_with_header
from mmrag.corpus.decode import ImageDecodeError, decode_image, image_to_rgb, load_rgb
from mmrag.corpus.types import DecodedImage

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def pattern(width: int, height: int) -> np.ndarray:
    """A deterministic RGB pattern with distinct values per pixel."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x * 7) % 256, (y * 13) % 256, (x + y) % 256], axis=-1).astype(np.uint8)


# --------------------------------------------------------------------------- the happy path


def test_png_decodes_exactly_with_hash_size_and_format(tmp_path):
    arr = pattern(30, 20)
    path = tmp_path / "p.png"
    Image.fromarray(arr).save(path)

    result = decode_ok(path)

    assert (result.width, result.height, result.format) == (30, 20, "PNG")
    assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert result.item.path == path
    np.testing.assert_array_equal(result.pixels, arr)


@pytest.mark.parametrize(
    ("suffix", "fmt", "save_kwargs"),
    [
        ("png", "PNG", {}),
        ("bmp", "BMP", {}),
        ("tif", "TIFF", {}),
        ("webp", "WEBP", {"lossless": True}),
    ],
)
def test_lossless_formats_roundtrip(tmp_path, suffix, fmt, save_kwargs):
    arr = pattern(17, 9)
    path = tmp_path / f"x.{suffix}"
    Image.fromarray(arr).save(path, **save_kwargs)
    result = decode_ok(path)
    assert result.format == fmt
    assert (result.width, result.height) == (17, 9)
    np.testing.assert_array_equal(result.pixels, arr)


def test_no_preprocess_leaves_pixels_none(tmp_path):
    path = tmp_path / "p.png"
    Image.new("RGB", (4, 4), RED).save(path)
    result = decode_image(item_for(path), max_file_bytes=LIMIT_BYTES, max_image_pixels=LIMIT_PIXELS)
    assert isinstance(result, DecodedImage)
    assert result.pixels is None and (result.width, result.height) == (4, 4)


def test_preprocess_gets_rgb_pil_image_and_its_output_is_kept(tmp_path):
    path = tmp_path / "p.png"
    Image.new("LA", (6, 5), (10, 255)).save(path)
    seen = []

    def chw(image: Image.Image) -> np.ndarray:
        seen.append((image.mode, image.size))
        return np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0

    result = decode_ok(path, preprocess=chw)
    assert seen == [("RGB", (6, 5))]
    assert result.pixels.shape == (3, 5, 6) and result.pixels.dtype == np.float32
    np.testing.assert_allclose(result.pixels, 10 / 255.0)


def test_preprocess_error_becomes_skip(tmp_path):
    path = tmp_path / "p.png"
    Image.new("RGB", (4, 4)).save(path)

    def boom(image):
        raise RuntimeError("boom")

    assert decode_skip(path, preprocess=boom).reason == "preprocess failed: RuntimeError: boom"


# --------------------------------------------------------------------------- bad input


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert decode_skip(path).reason == "empty file"


def test_missing_file(tmp_path):
    assert decode_skip(tmp_path / "gone.png").reason == "file not found"


def test_file_too_large_is_refused_from_stat(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(pattern(64, 64)).save(path)
    size = path.stat().st_size
    assert decode_skip(path, max_file_bytes=100).reason == f"file too large ({size} bytes > limit 100)"
    assert isinstance(decode_image(item_for(path), max_file_bytes=size, max_image_pixels=LIMIT_PIXELS), DecodedImage)


def test_text_renamed_png_is_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("just some notes\n", encoding="utf-8")
    assert decode_skip(path).reason == "not an image (cannot identify image file)"


def test_garbage_jpg_is_not_an_image(tmp_path):
    path = tmp_path / "garbage.jpg"
    path.write_bytes(np.random.default_rng(0).integers(1, 255, 4096, dtype=np.uint8).tobytes())
    assert decode_skip(path).reason == "not an image (cannot identify image file)"


def test_png_with_damaged_data_is_corrupt(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(pattern(64, 64)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    idat = data.index(b"IDAT")
    data[idat + 40] ^= 0xFF  # breaks the chunk CRC and the zlib stream
    path = tmp_path / "damaged.png"
    path.write_bytes(bytes(data))
    assert decode_skip(path).reason.startswith("truncated or corrupt image: ")


def test_eps_is_refused_without_running_ghostscript(tmp_path):
    path = tmp_path / "vector.jpg"  # misleading extension on PostScript
    Image.new("RGB", (4, 4)).save(path, "EPS")
    assert path.read_bytes().startswith(b"%!PS")
    assert decode_skip(path).reason == "not an image (cannot identify image file)"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_detected(tmp_path, fmt):
    buf = io.BytesIO()
    Image.fromarray(pattern(128, 128)).save(buf, fmt)
    data = buf.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    reason = decode_skip(path).reason
    assert reason.startswith("truncated or corrupt image: ")


def test_bomb_by_our_pixel_limit_is_checked_from_header(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (100, 50), BLUE).save(path)
    assert decode_skip(path, max_image_pixels=4999).reason == "decompression bomb: 100×50 pixels exceeds limit 4999"
    assert decode_ok(path, max_image_pixels=5000).width == 100


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_crafted_png_header_claiming_huge_size(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_with_header(10_000, 10_000))  # 1e8 pixels in ~100 bytes
    reason = decode_skip(path, max_image_pixels=89_478_485).reason
    assert reason == "decompression bomb: 10000×10000 pixels exceeds limit 89478485"

    # So large that Pillow's own guard fires inside Image.open: still a clean skip.
    path.write_bytes(png_with_header(100_000, 100_000))
    reason = decode_skip(path, max_image_pixels=89_478_485).reason
    assert reason.startswith("decompression bomb: ") and "10000000000 pixels" in reason


def test_crafted_header_within_limit_fails_as_truncated(tmp_path):
    path = tmp_path / "liar.png"
    path.write_bytes(png_with_header(300, 300))
    assert decode_skip(path).reason.startswith("truncated or corrupt image: ")


def test_pil_bomb_warning_raised_as_error_becomes_skip(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "p.png"
    Image.new("RGB", (40, 40)).save(path)  # 1600 px: above Pillow's 1000, below 2×
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        reason = decode_skip(path, max_image_pixels=1_900).reason  # ≤ 2 × Pillow: its global stays
    assert reason.startswith("decompression bomb: Image size (1600 pixels) exceeds limit of 1000")


def test_larger_own_limit_is_not_blocked_by_pils_global(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    path = tmp_path / "p.png"
    Image.new("RGB", (30, 30), GREEN).save(path)  # 900 px > 2 × 100: Pillow alone would refuse
    result = decode_ok(path, max_image_pixels=10_000)
    assert (result.width, result.height) == (30, 30)
    assert tuple(result.pixels[0, 0]) == GREEN
    assert Image.MAX_IMAGE_PIXELS == 10_000  # raised, never lowered


# --------------------------------------------------------------------------- odd but valid


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    img = Image.new("CMYK", (32, 16), (255, 0, 0, 0))  # cyan left
    img.paste((0, 255, 0, 0), (16, 0, 32, 16))  # magenta right
    img.save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    result = decode_ok(path)
    assert result.format == "JPEG"
    np.testing.assert_allclose(result.pixels[8, 4], (0, 255, 255), atol=3)
    np.testing.assert_allclose(result.pixels[8, 28], (255, 0, 255), atol=3)


def test_16bit_grey_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 1000, 32768, 40000, 65535]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I;16")
    result = decode_ok(path)
    expected = [int(v / 257 + 0.5) for v in values[0]]  # round(v * 255 / 65535)
    assert expected == [0, 1, 4, 128, 156, 255]
    for channel in range(3):
        assert result.pixels[0, :, channel].tolist() == expected


def test_32bit_int_tiff_with_16bit_range_is_scaled(tmp_path):
    path = tmp_path / "i.tif"
    Image.fromarray(np.array([[0, 100, 40000, 70000, -5]], dtype=np.int32)).save(path)
    assert Image.open(path).mode == "I"
    result = decode_ok(path)
    assert result.pixels[0, :, 0].tolist() == [0, 0, 156, 255, 0]


def test_32bit_int_tiff_with_8bit_range_is_kept(tmp_path):
    path = tmp_path / "i8.tif"
    Image.fromarray(np.array([[0, 7, 200, 255]], dtype=np.int32)).save(path)
    assert decode_ok(path).pixels[0, :, 1].tolist() == [0, 7, 200, 255]


@pytest.mark.parametrize(
    ("values", "expected"),
    [([0.0, 0.5, 1.0, -0.2], [0, 128, 255, 0]), ([0.0, 100.4, 300.0, float("nan")], [0, 100, 255, 0])],
)
def test_float_tiff(tmp_path, values, expected):
    path = tmp_path / "f.tif"
    Image.fromarray(np.array([values], dtype=np.float32)).save(path)
    assert Image.open(path).mode == "F"
    assert decode_ok(path).pixels[0, :, 2].tolist() == expected


def _palette_image(transparency: int | None) -> Image.Image:
    img = Image.new("P", (3, 1))
    img.putpalette([255, 0, 0, 0, 255, 0, 10, 20, 30] + [0] * (256 * 3 - 9))
    img.putdata([0, 1, 2])
    if transparency is not None:
        img.info["transparency"] = transparency
    return img


def test_palette_png_colours_exact(tmp_path):
    path = tmp_path / "pal.png"
    _palette_image(None).save(path)
    assert Image.open(path).mode == "P"
    assert [tuple(p) for p in decode_ok(path).pixels[0]] == [RED, GREEN, (10, 20, 30)]


def test_palette_png_with_transparent_index_goes_white(tmp_path):
    path = tmp_path / "palt.png"
    _palette_image(None).save(path, transparency=1)
    assert Image.open(path).info.get("transparency") is not None
    assert [tuple(p) for p in decode_ok(path).pixels[0]] == [RED, WHITE, (10, 20, 30)]


def test_one_bit_image(tmp_path):
    path = tmp_path / "bw.png"
    img = Image.new("1", (4, 2), 0)
    img.putpixel((1, 0), 1)
    img.putpixel((3, 1), 1)
    img.save(path)
    pixels = decode_ok(path).pixels
    assert pixels[:, :, 0].tolist() == [[0, 255, 0, 0], [0, 0, 0, 255]]
    assert (pixels[:, :, 0] == pixels[:, :, 2]).all()


def _over_white(colour: tuple[int, ...], alpha: int) -> list[float]:
    return [c * alpha / 255 + 255 * (1 - alpha / 255) for c in colour]


def test_rgba_is_composited_on_white(tmp_path):
    path = tmp_path / "rgba.png"
    img = Image.new("RGBA", (3, 1))
    img.putdata([(255, 0, 0, 0), (0, 0, 255, 255), (0, 128, 0, 128)])
    img.save(path)
    pixels = decode_ok(path).pixels[0]
    assert tuple(pixels[0]) == WHITE  # fully transparent: white, not the hidden red
    assert tuple(pixels[1]) == BLUE
    np.testing.assert_allclose(pixels[2], _over_white((0, 128, 0), 128), atol=1)


def test_la_is_composited_on_white(tmp_path):
    path = tmp_path / "la.png"
    img = Image.new("LA", (3, 1))
    img.putdata([(0, 0), (0, 255), (100, 128)])
    img.save(path)
    pixels = decode_ok(path).pixels[0]
    assert tuple(pixels[0]) == WHITE
    assert tuple(pixels[1]) == (0, 0, 0)
    np.testing.assert_allclose(pixels[2], _over_white((100, 100, 100), 128), atol=1)


def test_rgb_png_with_transparent_colour_key(tmp_path):
    path = tmp_path / "trns.png"
    img = Image.new("RGB", (2, 1), (0, 0, 0))
    img.putpixel((1, 0), BLUE)
    img.save(path, transparency=(0, 0, 0))
    assert [tuple(p) for p in decode_ok(path).pixels[0]] == [WHITE, BLUE]


def _exif_jpeg(path, orientation: int, size=(40, 20)) -> None:
    img = Image.new("RGB", size, BLUE)
    img.paste(RED, (0, 0, 10, 10))  # red square at the STORED top-left
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, quality=95, exif=exif)


def _is_red(pixel) -> bool:
    return pixel[0] > 200 and pixel[1] < 60 and pixel[2] < 60


@pytest.mark.parametrize(
    ("orientation", "size", "red_corner"),
    [
        (1, (40, 20), "top-left"),
        (3, (40, 20), "bottom-right"),  # rotated 180°
        (6, (20, 40), "top-right"),  # displayed = stored rotated 90° clockwise
        (8, (20, 40), "bottom-left"),  # displayed = stored rotated 90° counter-clockwise
    ],
)
def test_exif_orientation_is_applied(tmp_path, orientation, size, red_corner):
    path = tmp_path / f"o{orientation}.jpg"
    _exif_jpeg(path, orientation)
    result = decode_ok(path)
    assert (result.width, result.height) == size
    assert result.pixels.shape == (size[1], size[0], 3)
    corners = {
        "top-left": result.pixels[2, 2],
        "top-right": result.pixels[2, -3],
        "bottom-left": result.pixels[-3, 2],
        "bottom-right": result.pixels[-3, -3],
    }
    assert [name for name, px in corners.items() if _is_red(px)] == [red_corner]


def test_animated_gif_first_frame(tmp_path):
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, GREEN, BLUE)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(path).n_frames == 3
    result = decode_ok(path)
    assert result.format == "GIF"
    assert {tuple(p) for p in result.pixels.reshape(-1, 3)} == {RED}


def test_apng_first_frame(tmp_path):
    path = tmp_path / "anim.png"
    frames = [Image.new("RGB", (8, 8), c) for c in (GREEN, RED)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert Image.open(path).n_frames == 2
    assert {tuple(p) for p in decode_ok(path).pixels.reshape(-1, 3)} == {GREEN}


def test_multipage_tiff_first_page(tmp_path):
    path = tmp_path / "pages.tif"
    frames = [Image.new("RGB", (8, 8), c) for c in (BLUE, RED)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert Image.open(path).n_frames == 2
    assert {tuple(p) for p in decode_ok(path).pixels.reshape(-1, 3)} == {BLUE}


def test_mpo_camera_jpeg_first_picture_and_draft(tmp_path):
    path = tmp_path / "camera.jpg"
    frames = [Image.new("RGB", (800, 600), c) for c in (RED, BLUE)]
    frames[0].save(path, "MPO", save_all=True, append_images=frames[1:], quality=95)
    full = decode_ok(path)
    assert full.format == "MPO" and full.pixels.shape == (600, 800, 3)
    assert _is_red(full.pixels[300, 400])
    drafted = decode_ok(path, draft_size=100)
    assert (drafted.width, drafted.height) == (800, 600)
    assert drafted.pixels.shape == (150, 200, 3)  # min(800 // 100, 600 // 100) = 6 → DCT scale 1/4


@pytest.mark.parametrize("suffix", ["png", "jpg", "gif"])
def test_one_pixel_image(tmp_path, suffix):
    path = tmp_path / f"dot.{suffix}"
    Image.new("RGB", (1, 1), RED).save(path)
    result = decode_ok(path)
    assert (result.width, result.height) == (1, 1)
    assert _is_red(result.pixels[0, 0])


def test_extreme_aspect_ratio(tmp_path):
    arr = pattern(2000, 3)
    path = tmp_path / "strip.png"
    Image.fromarray(arr).save(path)
    result = decode_ok(path)
    assert (result.width, result.height) == (2000, 3)
    np.testing.assert_array_equal(result.pixels, arr)


# --------------------------------------------------------------------------- draft mode


def _halves_jpeg(path, size=(1600, 1200), orientation: int | None = None) -> None:
    img = Image.new("RGB", size, BLUE)
    img.paste(RED, (0, 0, size[0] // 2, size[1]))
    kwargs = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif
    img.save(path, quality=90, **kwargs)


def test_draft_downscales_jpeg_but_reports_original_size(tmp_path):
    path = tmp_path / "photo.jpg"
    _halves_jpeg(path)
    full = decode_ok(path)
    drafted = decode_ok(path, draft_size=200)
    assert (full.width, full.height) == (drafted.width, drafted.height) == (1600, 1200)
    assert full.pixels.shape == (1200, 1600, 3)
    # min(1600 // 200, 1200 // 200) = 6 → the largest DCT scale not above it is 1/4.
    assert drafted.pixels.shape == (300, 400, 3)
    assert _is_red(drafted.pixels[150, 10]) and not _is_red(drafted.pixels[150, 390])
    assert drafted.sha256 == full.sha256


def test_draft_with_exif_rotation_reports_displayed_original_size(tmp_path):
    path = tmp_path / "rot.jpg"
    _halves_jpeg(path, orientation=6)
    drafted = decode_ok(path, draft_size=200)
    assert (drafted.width, drafted.height) == (1200, 1600)
    assert drafted.pixels.shape == (400, 300, 3)
    # Stored left half (red) is displayed as the top half after a 90° clockwise turn.
    assert _is_red(drafted.pixels[10, 150]) and not _is_red(drafted.pixels[390, 150])


def _box_mean(arr: np.ndarray, f: int) -> np.ndarray:
    """Reference f x f box average with Pillow's rounding (sum + half) // count."""
    h, w, c = arr.shape
    boxes = arr.reshape(h // f, f, w // f, f, c).astype(np.int64).sum(axis=(1, 3))
    return ((boxes + f * f // 2) // (f * f)).astype(np.uint8)


def test_draft_box_averages_other_formats_down_to_twice_the_target(tmp_path):
    rng = np.random.default_rng(7)
    arr = rng.integers(0, 256, size=(600, 800, 3), dtype=np.uint8)
    path = tmp_path / "big.png"
    Image.fromarray(arr).save(path)
    drafted = decode_ok(path, draft_size=100)
    assert (drafted.width, drafted.height) == (800, 600)  # reported as stored
    # 600 // 2 = 300 >= 2 x 100, but 600 // 4 = 150 is not: factor 2
    np.testing.assert_array_equal(drafted.pixels, _box_mean(arr, 2))
    np.testing.assert_array_equal(decode_ok(path, draft_size=50).pixels, _box_mean(arr, 4))
    np.testing.assert_array_equal(decode_ok(path, draft_size=10).pixels, _box_mean(arr, 8))  # 8 at most
    np.testing.assert_array_equal(decode_ok(path).pixels, arr)  # no draft: every pixel
    assert drafted.sha256 == decode_ok(path).sha256


def test_draft_leaves_an_image_under_twice_the_target_alone(tmp_path):
    path = tmp_path / "small.webp"
    arr = np.random.default_rng(8).integers(0, 256, size=(399, 900, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, lossless=True)
    np.testing.assert_array_equal(decode_ok(path, draft_size=100).pixels, arr)  # 399 // 2 < 200


def test_draft_box_average_follows_exif_rotation_and_alpha(tmp_path):
    # Transparent left half on white, then rotated: the reduce sees the displayed RGB image.
    rgba = np.zeros((400, 800, 4), dtype=np.uint8)
    rgba[:, 400:] = (255, 0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # 90° clockwise when displayed
    path = tmp_path / "rot.png"
    Image.fromarray(rgba, "RGBA").save(path, exif=exif)
    drafted = decode_ok(path, draft_size=100)
    assert (drafted.width, drafted.height) == (400, 800)
    assert drafted.pixels.shape == (400, 200, 3)  # displayed 800 x 400, halved
    assert tuple(drafted.pixels[10, 100]) == WHITE and _is_red(drafted.pixels[390, 100])


def test_in_memory_images_get_the_same_draft_as_files(tmp_path):
    arr = np.random.default_rng(9).integers(0, 256, size=(600, 800, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(arr).save(path)
    from_file = load_rgb(path, draft_size=100)
    in_memory = image_to_rgb(Image.fromarray(arr), draft_size=100)
    assert from_file.size == in_memory.size == (400, 300)
    np.testing.assert_array_equal(np.asarray(from_file), np.asarray(in_memory))


# --------------------------------------------------------------------------- load_rgb


def test_load_rgb_from_bytes_and_path(tmp_path):
    buf = io.BytesIO()
    Image.new("LA", (5, 4), (0, 0)).save(buf, "PNG")
    image = load_rgb(buf.getvalue())
    assert image.mode == "RGB" and image.size == (5, 4)
    assert image.getpixel((0, 0)) == WHITE

    path = tmp_path / "x.png"
    path.write_bytes(buf.getvalue())
    assert load_rgb(path).getpixel((4, 3)) == WHITE


def test_load_rgb_raises_readable_error(tmp_path):
    with pytest.raises(ImageDecodeError) as info:
        load_rgb(b"not an image at all")
    assert info.value.reason == "not an image (cannot identify image file)"
    with pytest.raises(ImageDecodeError, match="empty file"):
        load_rgb(b"")
    with pytest.raises(ImageDecodeError, match="file not found"):
        load_rgb(tmp_path / "missing.png")
