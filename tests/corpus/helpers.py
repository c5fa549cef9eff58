"""Shared helpers for the corpus tests: images are generated on disk, never downloaded."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from mmrag.corpus.decode import decode_image
from mmrag.corpus.types import CorpusItem, DecodedImage, SkippedFile

LIMIT_BYTES = 10 * 1024 * 1024
LIMIT_PIXELS = 50_000_000


def item_for(path: Path, rel_path: str | None = None) -> CorpusItem:
    st = path.stat() if path.exists() else None
    return CorpusItem(
        path=path,
        rel_path=rel_path or path.name,
        file_size=st.st_size if st else 0,
        mtime=st.st_mtime if st else 0.0,
    )


def decode_ok(path: Path, **kwargs) -> DecodedImage:
    """Decode with np.asarray as preprocess so the RGB pixels can be inspected."""
    kwargs.setdefault("max_file_bytes", LIMIT_BYTES)
    kwargs.setdefault("max_image_pixels", LIMIT_PIXELS)
    kwargs.setdefault("preprocess", lambda im: np.asarray(im).copy())
    result = decode_image(item_for(path), **kwargs)
    assert isinstance(result, DecodedImage), result
    assert result.pixels is not None
    return result


def decode_skip(path: Path, **kwargs) -> SkippedFile:
    kwargs.setdefault("max_file_bytes", LIMIT_BYTES)
    kwargs.setdefault("max_image_pixels", LIMIT_PIXELS)
    result = decode_image(item_for(path), **kwargs)
    assert isinstance(result, SkippedFile), result
    assert result.rel_path == path.name
    return result


def png_with_header(width: int, height: int) -> bytes:
    """A syntactically valid PNG whose IHDR claims width×height but carries almost no data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )

