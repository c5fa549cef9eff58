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


def load_query_image(query: ImageQuery | str, *, draft_size: int | None = None) -> Image.Image:
    """An RGB PIL image from a path, PIL image, raw bytes or `data:image/...;base64,` URI.

    Decoded by ingestion's rules (`mmrag.corpus.decode`: EXIF orientation, 16-bit, alpha,
    and JPEG draft decoding at `draft_size`, which must be the collection's), so a stored
    file used as a query finds itself with cosine 1. A PIL image already loaded is used at
    the size it has; one opened from a file and not yet loaded is decoded like that file.
    """
    from mmrag.corpus.decode import image_to_rgb, load_rgb

    if isinstance(query, Image.Image):
        return image_to_rgb(query, draft_size=draft_size)
    if isinstance(query, (bytes, bytearray)):
        return load_rgb(bytes(query), draft_size=draft_size)
    if isinstance(query, str) and query.startswith("data:image/"):
        return load_rgb(decode_base64_image(query), draft_size=draft_size)
    return load_rgb(Path(query), draft_size=draft_size)


def decode_base64_image(text: str) -> bytes:
    """The bytes of a base64 image, plain or as a `data:image/<type>;base64,` URI (UsageError otherwise)."""
    import binascii

    from mmrag.errors import UsageError

    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise UsageError("image data URIs must be base64-encoded: data:image/<type>;base64,<data>")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise UsageError(f"image_base64 is not valid base64 ({e})") from e
