"""LangChain Documents from Qdrant points, and image content blocks for multimodal chat models.

The only I/O is reading an image file when a caller asks for it inline
(`include_image="data_uri"`, `image_content_block`).
"""

from __future__ import annotations

import base64
import mimetypes
import re
from pathlib import Path, PurePath
from typing import Any, Literal

from langchain_core.documents import Document

from mmrag.store.convert import normalize_rel_path
from mmrag.store.points import Hit, StoredPoint

IncludeImage = Literal["path", "data_uri"]

# PIL format names -> MIME types (PIL's names are what the payload "format" holds).
_FORMAT_MIME = {
    "JPEG": "image/jpeg",
    "JPG": "image/jpeg",
    "MPO": "image/jpeg",  # multi-picture JPEG from cameras; first frame is a plain JPEG
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "DIB": "image/bmp",
    "TIFF": "image/tiff",
    "ICO": "image/x-icon",
    "PPM": "image/x-portable-pixmap",
    "AVIF": "image/avif",
    "HEIF": "image/heif",
    "HEIC": "image/heic",
    "JPEG2000": "image/jp2",
}


def describe_path(rel_path: str) -> str:
    """A readable stand-in caption: "holidays/summer_beach-01.jpg" -> "Image: summer beach 01 (in holidays)"."""
    path = PurePath(str(rel_path).replace("\\", "/"))
    words = re.sub(r"[\s_\-.]+", " ", path.stem).strip() or path.name
    folder = path.parent.as_posix()
    return f"Image: {words} (in {folder})" if folder not in ("", ".") else f"Image: {words}"


def image_mime_type(format: str | None, rel_path: str | None = None) -> str:
    """MIME type from a PIL format name, else from the file extension."""
    if format:
        known = _FORMAT_MIME.get(format.upper())
        if known:
            return known
    if rel_path:
        guessed, _ = mimetypes.guess_type(rel_path)
        if guessed and guessed.startswith("image/"):
            return guessed
    if format:
        return f"image/{format.lower()}"
    return "application/octet-stream"


def _image_file(corpus_root: Path | None, rel_path: str | None, mode: str) -> Path:
    if corpus_root is None:
        raise ValueError(f"include_image={mode!r} needs corpus_root (the directory the corpus was read from)")
    if not rel_path:
        raise ValueError(f"include_image={mode!r}: the point has no 'path' in its payload")
    root = Path(corpus_root).resolve()
    candidate = (root / normalize_rel_path(rel_path)).resolve()
    # A symlink inside the corpus may point elsewhere; refuse to hand out files outside it.
    if root != candidate and root not in candidate.parents:
        raise ValueError(f"image path {rel_path!r} resolves outside corpus_root {str(root)!r}")
    return candidate


def data_uri(file: Path, mime_type: str) -> str:
    return f"data:{mime_type};base64,{base64.b64encode(Path(file).read_bytes()).decode('ascii')}"


def _score(point: Any) -> float | None:
    """A hit's score; None for a stored point (qdrant-client's ScoredPoint and Record read the same way)."""
    score = getattr(point, "score", None)
    return None if score is None else float(score)


def document_from_point(
    point: Hit | StoredPoint,
    *,
    vector_name: str | None = None,
    include_image: IncludeImage | None = None,
    corpus_root: Path | None = None,
) -> Document:
    """A LangChain Document for a search hit (ScoredPoint) or a fetched point (Record).

    page_content is the caption, or `describe_path(path)` when there is none. metadata holds
    id, score (None for Records), vector (the matched vector name), path, width, height and
    the full payload. include_image="path" adds metadata["image_path"] (absolute);
    include_image="data_uri" adds metadata["image_url"] (data:<mime>;base64,...). Both need
    corpus_root.
    """
    if include_image not in (None, "path", "data_uri"):
        raise ValueError(f"include_image must be None, 'path' or 'data_uri', got {include_image!r}")
    payload = dict(point.payload or {})
    rel_path = payload.get("path")
    caption = payload.get("caption")
    if isinstance(caption, str) and caption.strip():
        content = caption
    else:
        content = describe_path(rel_path) if rel_path else f"Image {point.id}"
    metadata: dict[str, Any] = {
        "id": str(point.id),
        "score": _score(point),
        "vector": vector_name,
        "path": rel_path,
        "width": payload.get("width"),
        "height": payload.get("height"),
        "payload": payload,
    }
    if include_image is not None:
        file = _image_file(corpus_root, rel_path, include_image)
        if include_image == "path":
            metadata["image_path"] = str(file)
        else:
            metadata["image_url"] = data_uri(file, image_mime_type(payload.get("format"), rel_path))
    return Document(id=str(point.id), page_content=content, metadata=metadata)


_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+\-]+/[\w.+\-]+)?(?P<params>(;[^;,]*)*?);base64,(?P<data>.*)$", re.S)


def image_content_block(doc: Document) -> dict[str, Any]:
    """The LangChain standard image content block for `doc`'s image, for multimodal chat models.

    From metadata["image_url"]: a data URI becomes {"type": "image", "base64": ..., "mime_type": ...},
    any other URL {"type": "image", "url": ...}. From metadata["image_path"]: the file is read and
    sent as base64. Build the Document with include_image=... to have either.
    """
    url = doc.metadata.get("image_url")
    if url:
        match = _DATA_URI.match(url)
        if match:
            return {"type": "image", "base64": match["data"], "mime_type": match["mime"] or "application/octet-stream"}
        return {"type": "image", "url": url}
    path = doc.metadata.get("image_path")
    if path:
        payload = doc.metadata.get("payload") or {}
        mime = image_mime_type(payload.get("format"), str(path))
        encoded = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        return {"type": "image", "base64": encoded, "mime_type": mime}
    raise ValueError(
        f"document {doc.id!r} carries no image; build it with include_image='path' or 'data_uri' "
        "(and corpus_root)"
    )
