"""Query inputs: telling an image query from a text one, and decoding it with ingestion's rules."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Literal, Union

from PIL import Image

from mmrag.corpus.formats import IMAGE_SUFFIXES

ImageQuery = Union[Image.Image, bytes, Path]  # noqa: UP007  (a runtime alias: isinstance-able on 3.10)
Query = Union[str, ImageQuery]  # noqa: UP007
Target = Literal["image", "text", "fused", "hybrid"]
TARGETS = ("image", "text", "fused", "hybrid")


def is_image_query(query: Any) -> bool:
    """Text unless it is an image object, bytes, a Path, a data URI or an existing image file path."""
    if isinstance(query, (Image.Image, bytes, bytearray, Path)):
        return True
    if isinstance(query, str):
        if query.startswith("data:image/"):
            return True
        if len(query) < 4096 and Path(query).suffix.lower() in IMAGE_SUFFIXES:
            try:
                return Path(query).is_file()
            except OSError:
                return False
    return False


def load_query_image(query: ImageQuery | str) -> Image.Image:
    """An RGB PIL image from a path, PIL image, raw bytes or `data:image/...;base64,` URI.

    Decoded with the same rules as ingestion (EXIF orientation, 16-bit, alpha, ...),
    so a stored file used as a query finds itself with cosine 1.
    """
    from mmrag.corpus.decode import load_rgb, to_rgb

    if isinstance(query, Image.Image):
        return to_rgb(query)
    if isinstance(query, (bytes, bytearray)):
        return load_rgb(bytes(query))
    if isinstance(query, str) and query.startswith("data:image/"):
        header, _, encoded = query.partition(",")
        if ";base64" not in header:
            raise ValueError("image data URIs must be base64-encoded: data:image/<type>;base64,<data>")
        return load_rgb(base64.b64decode(encoded))
    return load_rgb(Path(query))
