"""Decode corpus images safely into RGB, one at a time or through a bounded thread pool.

`decode_image` is the boundary where untrusted bytes meet the image library:
it never raises for bad input. Every failure becomes a SkippedFile whose reason
starts with one of:

    "file not found", "empty file", "file too large (...)",
    "not an image (cannot identify image file)", "unsupported or corrupt image (Pillow: ...)"
    (it starts like an image but Pillow cannot open it), "truncated or corrupt image: ...",
    "decompression bomb: ...", "preprocess failed: ...", "unreadable: ..."

Colour handling (everything comes out as 8-bit RGB):
- transparency (RGBA, LA, PA, palette or single-colour tRNS) is composited onto
  WHITE: transparent logos and icons are drawn on light pages far more often
  than on black, and dropping alpha would expose arbitrary hidden colours;
- 16-bit greyscale ("I;16*") is scaled to 8 bits (v * 255 / 65535), not clipped; its
  single-colour transparency (tRNS) is composited on white like every other mode;
- "I" (32-bit int) is treated as 16-bit data when it comes from PNG or holds
  values above 255, else as 8-bit; "F" (float) as [0, 1] when max <= 1, else [0, 255];
- CMYK, 1-bit, palette, YCbCr use Pillow's conversion;
- EXIF orientation is applied; width/height are reported as displayed;
- multi-frame files (GIF, APNG, TIFF, MPO) give their first frame.

Draft decoding (`draft_size`, the model's input size; the product's default): a JPEG is
decoded at 1/2, 1/4 or 1/8 scale in the DCT domain, keeping both sides >= draft_size, and
any format is then box-averaged by a power of two while both sides stay >= 2 x draft_size
(`box_reduce`). The model sees the same pixels up to resampling noise, for a fraction of
the decoding and resizing work.

Only SAFE_FORMATS are tried on untrusted bytes: no EPS (Pillow would run Ghostscript).
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import multiprocessing
import os
import pickle
import re
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mmrag.corpus.formats import sniff_image_signature
from mmrag.corpus.types import CorpusItem, DecodedImage, SkippedFile
from mmrag.errors import UsageError

log = logging.getLogger(__name__)

Preprocess = Callable[[Image.Image], np.ndarray]

_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}  # transposes and 90° rotations swap width and height
_ALPHA_MODES = {"RGBA", "LA", "La", "RGBa", "PA"}
_PIL_GLOBALS_LOCK = threading.Lock()
# Formats Pillow may try on untrusted bytes. Notably absent: EPS/PS (Pillow runs
# Ghostscript on them) and exotic plugins nobody stores photos in. Camera JPEGs
# that Pillow reports as "MPO" (multi-picture) are opened by the JPEG plugin.
SAFE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "DIB", "TIFF", "AVIF", "ICO", "PPM")
_JPEG_FORMATS = ("JPEG", "MPO")
_available_formats: tuple[str, ...] | None = None


def _open_formats() -> tuple[str, ...]:
    """SAFE_FORMATS that this Pillow build can open (AVIF support is optional)."""
    global _available_formats
    if _available_formats is None:
        with _PIL_GLOBALS_LOCK:
            Image.init()  # idempotent; registers every plugin so OPEN is complete
            _available_formats = tuple(f for f in SAFE_FORMATS if f in Image.OPEN)
    return _available_formats


class ImageDecodeError(UsageError):
    """Raised by `load_rgb`; `reason` is the SkippedFile reason text."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- public


def decode_image(
    item: CorpusItem,
    *,
    max_file_bytes: int,
    max_image_pixels: int,
    preprocess: Preprocess | None = None,
    draft_size: int | None = None,
) -> DecodedImage | SkippedFile:
    """Read, validate and decode one image. Returns SkippedFile instead of raising."""
    try:
        data = _read_bounded(item.path, max_file_bytes)
        sha256 = hashlib.sha256(data).hexdigest()
        image, fmt, (width, height) = _decode_bytes(data, max_image_pixels, draft_size)
        pixels = None
        if preprocess is not None:
            try:
                pixels = preprocess(image)
            except Exception as exc:
                raise ImageDecodeError(f"preprocess failed: {_describe(exc)}") from exc
        return DecodedImage(item=item, sha256=sha256, width=width, height=height, format=fmt, pixels=pixels)
    except ImageDecodeError as exc:
        return SkippedFile(item.rel_path, exc.reason)
    except MemoryError:
        return SkippedFile(item.rel_path, "unreadable: out of memory while decoding")
    except Exception as exc:  # the boundary: nothing from a bad file may escape
        return SkippedFile(item.rel_path, f"unreadable: {_describe(exc)}")


def load_rgb(
    source: Path | str | bytes,
    *,
    max_file_bytes: int = 100 * 1024 * 1024,
    max_image_pixels: int = 89_478_485,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode a path or raw bytes into an RGB image with the same rules as `decode_image`.

    For query-time images (search by example). Raises ImageDecodeError with a
    readable reason instead of Pillow's assorted exceptions.
    """
    try:
        data = source if isinstance(source, bytes) else _read_bounded(Path(source), max_file_bytes)
        if isinstance(source, bytes):
            if not data:
                raise ImageDecodeError("empty file")
            if len(data) > max_file_bytes:
                raise ImageDecodeError(f"file too large ({len(data)} bytes > limit {max_file_bytes})")
        image, _, _ = _decode_bytes(data, max_image_pixels, draft_size)
        return image
    except ImageDecodeError:
        raise
    except MemoryError as exc:
        raise ImageDecodeError("unreadable: out of memory while decoding") from exc
    except Exception as exc:
        raise ImageDecodeError(f"unreadable: {_describe(exc)}") from exc


DECODE_EXECUTORS = ("thread", "process")
DECODER_DIED = "unreadable: the decoder process died on this file"


def decode_stream(
    items: Iterable[CorpusItem | SkippedFile],
    *,
    workers: int = 0,
    executor: str = "thread",
    max_file_bytes: int,
    max_image_pixels: int,
    preprocess: Preprocess | None = None,
    draft_size: int | None = None,
    max_in_flight: int | None = None,
) -> Iterator[DecodedImage | SkippedFile]:
    """Decode `items` on a pool of threads or processes, yielding results in input order.

    - "thread": Pillow releases the GIL while decoding and resizing, so threads share
      a few cores well without pickling anything; the Python between those calls still
      takes the GIL, so threads stop scaling on many cores.
    - "process": workers that scale with cores, for feeding a GPU. `preprocess` must
      pickle (a bound method of a loaded model does not; `ClipTransform` does). A
      worker that dies (a decoder crash, the OOM killer) costs only the file it was
      on: the pool is rebuilt, the files in flight are re-run one at a time, and the
      one that kills a worker again is skipped with DECODER_DIED.

    At most `max_in_flight` (default 4 × workers) items are submitted ahead of the
    consumer, so memory stays bounded on any corpus size. SkippedFile inputs pass
    through in place. `workers=0` means one per CPU core. Closing the generator early
    cancels pending work.
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if executor not in DECODE_EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(DECODE_EXECUTORS)}, got {executor!r}")
    n_workers = workers or os.cpu_count() or 1
    window = max_in_flight if max_in_flight is not None else 4 * n_workers
    if window < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {window}")
    if executor == "process" and preprocess is not None:
        try:
            pickle.dumps(preprocess)
        except Exception as exc:
            raise ValueError(
                f"executor='process' needs a preprocess that pickles, and {preprocess!r} does not "
                f"({_describe(exc)}); pass the embedder's portable_preprocess, or use executor='thread'"
            ) from exc
    job = functools.partial(
        decode_image,
        max_file_bytes=max_file_bytes,
        max_image_pixels=max_image_pixels,
        preprocess=preprocess,
        draft_size=draft_size,
    )

    def new_pool() -> Executor:
        if executor == "thread":
            return ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="mmrag-decode")
        # spawn: a fresh interpreter that imports only what the job needs (no torch, no
        # forked locks), on every platform
        return ProcessPoolExecutor(
            max_workers=n_workers, mp_context=multiprocessing.get_context("spawn"), initializer=_process_worker_init
        )

    # Each entry: a result already known, or (item, future) still running.
    pending: deque[DecodedImage | SkippedFile | tuple[CorpusItem, Future]] = deque()
    pool = new_pool()

    def ready() -> bool:
        head = pending[0]
        return not isinstance(head, tuple) or head[1].done()

    def pop() -> DecodedImage | SkippedFile:
        head = pending.popleft()
        if not isinstance(head, tuple):
            return head
        try:
            return head[1].result()
        except BrokenProcessPool:
            pending.appendleft(head)
            recover()
            return pending.popleft()  # type: ignore[return-value]  # recover() resolved every entry

    def recover() -> None:
        """A worker died: rebuild the pool, then re-run each unfinished entry alone to find the culprit."""
        nonlocal pool
        pool.shutdown(wait=False, cancel_futures=True)
        pool = new_pool()
        for i, entry in enumerate(pending):
            if not isinstance(entry, tuple):
                continue
            item, future = entry
            if future.done() and future.exception() is None:
                pending[i] = future.result()
                continue
            try:
                pending[i] = pool.submit(job, item).result()
            except BrokenProcessPool:
                log.warning("a decode worker died on %s; skipping it", item.rel_path)
                pending[i] = SkippedFile(item.rel_path, DECODER_DIED)
                pool.shutdown(wait=False, cancel_futures=True)
                pool = new_pool()

    try:
        for item in items:
            if isinstance(item, SkippedFile):
                pending.append(item)
            elif isinstance(item, CorpusItem):
                try:
                    pending.append((item, pool.submit(job, item)))
                except BrokenProcessPool:  # the pool died since the last check
                    pending.append((item, _broken_future()))
            else:
                raise TypeError(f"decode_stream expects CorpusItem or SkippedFile, got {type(item).__name__}")
            # Hand over whatever is already finished, then block only when the window is full.
            while pending and ready():
                yield pop()
            while len(pending) >= window:
                yield pop()
        while pending:
            yield pop()
    finally:
        for entry in pending:
            if isinstance(entry, tuple):
                entry[1].cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _process_worker_init() -> None:
    # Ctrl-C is the parent's to handle: it cancels the work and shuts the pool down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _broken_future() -> Future:
    future: Future = Future()
    future.set_exception(BrokenProcessPool("the decode pool was broken when this file was submitted"))
    return future


# --------------------------------------------------------------------------- internals


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _read_bounded(path: Path, max_file_bytes: int) -> bytes:
    """The whole file, read once; size checked from stat before any byte is read."""
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise ImageDecodeError("file not found") from exc
    except OSError as exc:
        raise ImageDecodeError(f"unreadable: {exc.strerror or exc}") from exc
    if st.st_size == 0:
        raise ImageDecodeError("empty file")
    if st.st_size > max_file_bytes:
        raise ImageDecodeError(f"file too large ({st.st_size} bytes > limit {max_file_bytes})")
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_file_bytes + 1)  # +1: notice a file that grew since stat
    except OSError as exc:
        raise ImageDecodeError(f"unreadable: {exc.strerror or exc}") from exc
    if not data:
        raise ImageDecodeError("empty file")
    if len(data) > max_file_bytes:
        raise ImageDecodeError(f"file too large (grew past the limit of {max_file_bytes} bytes while read)")
    return data


def _ensure_pil_limit(max_image_pixels: int) -> None:
    """Keep Pillow's own bomb guard from rejecting images our (larger) limit allows.

    Our limit is checked against the header before decoding; Pillow's global
    check would otherwise refuse anything above 2 × its default inside
    Image.open. The global is only ever raised, once per new maximum, under a lock.
    """
    current = Image.MAX_IMAGE_PIXELS
    if current is None or max_image_pixels <= 2 * current:
        return
    with _PIL_GLOBALS_LOCK:
        current = Image.MAX_IMAGE_PIXELS
        if current is not None and max_image_pixels > 2 * current:
            Image.MAX_IMAGE_PIXELS = max_image_pixels


def _bomb_reason(width: int, height: int, limit: int) -> str:
    return f"decompression bomb: {width}×{height} pixels exceeds limit {limit}"


def _decode_bytes(
    data: bytes, max_image_pixels: int, draft_size: int | None
) -> tuple[Image.Image, str, tuple[int, int]]:
    """(RGB image, format, displayed size) from encoded bytes; raises ImageDecodeError."""
    _ensure_pil_limit(max_image_pixels)
    try:
        img = Image.open(io.BytesIO(data), formats=_open_formats())
    except UnidentifiedImageError as exc:
        if sniff_image_signature(data[:16]):
            # It starts like an image (a multi-page TIFF with an odd layout, say): say that
            # Pillow failed on it, not that it is no image at all.
            detail = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc))  # our buffer, not the file
            raise ImageDecodeError(f"unsupported or corrupt image (Pillow: {detail})") from exc
        raise ImageDecodeError("not an image (cannot identify image file)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"decompression bomb: {exc}") from exc
    except Exception as exc:
        raise ImageDecodeError(f"truncated or corrupt image: {_describe(exc)}") from exc

    with img:
        fmt = img.format or "UNKNOWN"
        width, height = img.size
        if width <= 0 or height <= 0:
            raise ImageDecodeError(f"truncated or corrupt image: invalid size {width}×{height}")
        # Our limit, from the header, before a single pixel is decoded.
        if width * height > max_image_pixels:
            raise ImageDecodeError(_bomb_reason(width, height, max_image_pixels))

        rgb, swapped = _oriented_rgb(img, fmt, draft_size, data)
        if swapped:  # width/height as displayed
            width, height = height, width
        if rgb is img:
            rgb = img.copy()  # closing the file would invalidate the pixels of `img` itself
    return rgb, fmt, (width, height)


def _reduce_16bit_rgb_key(img: Image.Image, fmt: str, data: bytes) -> None:
    """A 16-bit RGB PNG's tRNS colour, brought to the 8 bits Pillow keeps of each sample.

    Pillow decodes 16-bit RGB to 8-bit RGB by the high byte but keeps the 16-bit key, which
    then matches no pixel: the transparency was lost. Samples sharing the key's high bytes
    become transparent, the closest 8 bits can come.
    """
    key = img.info.get("transparency")
    # byte 24 of a PNG is the IHDR bit depth
    if fmt == "PNG" and isinstance(key, tuple) and len(data) > 24 and data[24] == 16 and img.mode == "RGB":
        img.info["transparency"] = tuple(int(v) >> 8 for v in key)


def _oriented_rgb(
    img: Image.Image, fmt: str, draft_size: int | None, data: bytes | None = None
) -> tuple[Image.Image, bool]:
    """Draft (JPEG), load, EXIF orientation, colour rules, box reduce: the steps after `Image.open`, shared by every path.

    Returns (RGB image, whether the orientation swapped width and height). `data`, the file's
    bytes when we read them, lets a 16-bit PNG keep its tRNS colour key.
    """
    if draft_size and fmt in _JPEG_FORMATS and getattr(img, "tile", None):
        # DCT-domain downscale by 1/2, 1/4 or 1/8, keeping both sides >= draft_size.
        # Only while the pixels are still undecoded (`tile` set): afterwards draft is a no-op.
        img.draft("RGB", (draft_size, draft_size))
    try:
        img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"decompression bomb: {exc}") from exc
    except Exception as exc:
        raise ImageDecodeError(f"truncated or corrupt image: {_describe(exc)}") from exc

    if data is not None:
        _reduce_16bit_rgb_key(img, fmt, data)
    orientation = _orientation(img)
    oriented = _apply_orientation(img, orientation)
    try:
        rgb = to_rgb(oriented, source_format=fmt)
    except Exception as exc:
        raise ImageDecodeError(f"unreadable: cannot convert mode {oriented.mode} to RGB ({_describe(exc)})") from exc
    if draft_size:
        rgb = box_reduce(rgb, draft_size)
    return rgb, orientation in _SWAPPING_ORIENTATIONS


# Box-reduce only while the result stays this many times the target: Pillow's `reducing_gap`.
# Measured on the mixed bench set's PNG/WebP, draft vs exact embeddings: ViT-B/32-256 cosine
# mean 0.999996, min 0.99993 (gap 3: 0.999996 min, 10 % slower); the 64-px reference model
# mean 0.9986, min 0.980, the order of JPEG's own draft there (0.9987, 0.985).
REDUCING_GAP = 2


def box_reduce(img: Image.Image, draft_size: int) -> Image.Image:
    """The draft step for what JPEG's DCT scaling did not already shrink (PNG, WebP, TIFF, ...).

    Averages f x f boxes (`Image.reduce`; f a power of two up to 8, as JPEG's draft) while
    both sides stay >= REDUCING_GAP x draft_size, so the resize that follows reads a quarter
    or less of the pixels: a 2000-px PNG is resized about twice as fast. An image whose short
    side is under 2 x REDUCING_GAP x draft_size is returned as it is.
    """
    factor = 1
    while factor < 8 and min(img.size) // (2 * factor) >= REDUCING_GAP * draft_size:
        factor *= 2
    return img.reduce(factor) if factor > 1 else img


def image_to_rgb(image: Image.Image, *, draft_size: int | None = None) -> Image.Image:
    """An in-memory PIL image through ingestion's rules: EXIF orientation, alpha on white, 16-bit, ...

    The one rule for PIL images handed to us (classify, fine-tuning, queries, transforms).
    A JPEG opened but not yet loaded gets the same draft decoding as ingestion with the same
    `draft_size`; an image already loaded is used at the size it has. Raises ImageDecodeError.
    """
    fmt = image.format or ""
    if draft_size and fmt in _JPEG_FORMATS and getattr(image, "tile", None) and getattr(image, "filename", ""):
        # Re-open the file rather than drafting the caller's object in place.
        return load_rgb(Path(image.filename), draft_size=draft_size)  # type: ignore[attr-defined]  # ImageFile
    if image.mode == "RGB" and "transparency" not in image.info and not _orientation(image) > 1:
        if getattr(image, "tile", None):
            image.load()
        return box_reduce(image, draft_size) if draft_size else image
    rgb, _ = _oriented_rgb(image, fmt, draft_size)
    return rgb


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
        return int(value) if value in range(1, 9) else 1
    except Exception:
        return 1  # unparsable EXIF: show the pixels as stored


def _apply_orientation(img: Image.Image, orientation: int) -> Image.Image:
    if orientation == 1:
        return img
    try:
        return ImageOps.exif_transpose(img)
    except Exception as exc:
        log.debug("exif_transpose failed (%s); keeping stored orientation", exc)
        return img


def to_rgb(img: Image.Image, *, source_format: str | None = None) -> Image.Image:
    """8-bit RGB version of any Pillow image (see the module docstring for the rules)."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I;16"):
        arr = np.asarray(img)
        return _grey_to_rgb(_on_white(_scale_16bit(arr), arr, img.info))
    if mode == "I":
        arr = np.asarray(img).astype(np.int64)
        if source_format == "PNG" or (arr.size and arr.max() > 255):
            return _grey_to_rgb(_on_white(_scale_16bit(arr), arr, img.info))
        return _grey_to_rgb(_on_white(np.clip(arr, 0, 255).astype(np.uint8), arr, img.info))
    if mode == "F":
        floats = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if floats.size and floats.max() <= 1.0:
            floats = floats * 255.0
        return _grey_to_rgb(np.clip(np.rint(floats), 0, 255).astype(np.uint8))
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _on_white(grey: np.ndarray, raw: np.ndarray, info: dict) -> np.ndarray:
    """Single-colour transparency (PNG tRNS) of a greyscale image, composited on white.

    The tRNS value is compared with the raw (16-bit) samples, before scaling: Pillow's own
    RGBA conversion would not apply it to these modes, and transparent pixels came out black.
    """
    key = info.get("transparency")
    if not isinstance(key, int) or isinstance(key, bool):
        return grey
    out = np.array(grey, dtype=np.uint8, copy=True)
    out[raw == key] = 255
    return out


def _scale_16bit(arr: np.ndarray) -> np.ndarray:
    wide = np.clip(arr.astype(np.int64), 0, 65535)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)  # round(v * 255 / 65535)


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(grey, dtype=np.uint8)).convert("RGB")
