"""The one list of image file types: the folder scan, the decoder and the query detector share it.

Every extension here names a format the decoder opens (`mmrag.corpus.decode.SAFE_FORMATS`),
and every format the decoder opens has its extensions here, so no image is silently
ignored by the walk that the decoder would have read.
"""

from __future__ import annotations

# extension (lower case, no dot) -> the Pillow format that reads it
EXTENSION_FORMATS: dict[str, str] = {
    "jpg": "JPEG", "jpeg": "JPEG", "jpe": "JPEG",
    "png": "PNG", "apng": "PNG",
    "gif": "GIF",
    "webp": "WEBP",
    "bmp": "BMP", "dib": "DIB",
    "tif": "TIFF", "tiff": "TIFF",
    "avif": "AVIF",
    "ico": "ICO",
    "ppm": "PPM", "pgm": "PPM", "pbm": "PPM", "pnm": "PPM",
}

IMAGE_EXTENSIONS: frozenset[str] = frozenset(EXTENSION_FORMATS)
# The same, as `Path.suffix` spells them (".jpg"), for callers that hold paths.
IMAGE_SUFFIXES: frozenset[str] = frozenset(f".{ext}" for ext in EXTENSION_FORMATS)


def sniff_image_signature(head: bytes) -> bool:
    """True when `head` (the first bytes of a file) starts like a known image format."""
    return (
        head.startswith(b"\xff\xd8\xff")  # JPEG
        or head.startswith(b"\x89PNG\r\n\x1a\n")  # PNG / APNG
        or head.startswith((b"GIF87a", b"GIF89a"))
        or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
        or head.startswith(b"BM")
        or head.startswith((b"II*\x00", b"MM\x00*"))  # TIFF little/big endian
        or (head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"))
    )


def format_counts(counts: dict[str, int]) -> str:
    """'33 .tga, 29 .dds' (most first): how ignored files are reported."""
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{n} {ext or '(no extension)'}" for ext, n in ordered)
