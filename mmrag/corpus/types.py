"""Records that flow from the corpus reader through decoding into ingestion."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CorpusItem:
    """One candidate image found by the reader (not yet decoded)."""

    path: Path  # absolute
    rel_path: str  # corpus-relative, POSIX separators: the identity of the point
    file_size: int
    mtime: float
    caption: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # manifest columns beyond path/caption


@dataclass(frozen=True)
class SkippedFile:
    """A file that could not be used, and why. Reported, never fatal."""

    rel_path: str
    reason: str


@dataclass
class DecodedImage:
    """A decoded, validated image ready for the model."""

    item: CorpusItem
    sha256: str
    width: int  # as displayed (after EXIF orientation)
    height: int
    format: str  # PIL format name, e.g. "JPEG"
    pixels: np.ndarray | None = None  # preprocessed CHW float32 when a preprocess fn was given
