"""The corpus: finding images (folder scan or manifest) and decoding them safely."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from mmrag.corpus.decode import ImageDecodeError, decode_image, decode_stream, image_to_rgb, load_rgb, to_rgb
from mmrag.corpus.formats import IMAGE_EXTENSIONS, IMAGE_SUFFIXES, sniff_image_signature
from mmrag.corpus.manifest import read_manifest
from mmrag.corpus.scan import scan_folder, sidecar_caption
from mmrag.corpus.types import CorpusItem, DecodedImage, SkippedFile

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGE_SUFFIXES",
    "CorpusItem",
    "DecodedImage",
    "ImageDecodeError",
    "SkippedFile",
    "decode_image",
    "decode_stream",
    "iter_corpus",
    "image_to_rgb",
    "load_rgb",
    "read_manifest",
    "scan_folder",
    "sidecar_caption",
    "sniff_image_signature",
    "to_rgb",
    "with_sidecar_caption",
]


def with_sidecar_caption(item: CorpusItem) -> CorpusItem:
    """`item` with its sidecar caption filled in when it has none (manifest captions win)."""
    if item.caption is not None:
        return item
    caption = sidecar_caption(item.path)
    return item if caption is None else dataclasses.replace(item, caption=caption)


def iter_corpus(
    root: Path,
    manifest: Path | None = None,
    *,
    include_unlisted: bool = False,
    follow_symlinks: bool = False,
    ignored: Counter[str] | None = None,
    allow_outside_root: bool = False,
) -> Iterator[CorpusItem | SkippedFile]:
    """Every image of a corpus, as CorpusItem, or SkippedFile for what cannot be used.

    - folder only: `scan_folder(root)` (sidecar `.txt` captions);
    - folder + manifest: the manifest's rows, paths relative to `root`; a row's
      caption and metadata come from the manifest, a row without caption falls
      back to its sidecar. With `include_unlisted=True` the images of the folder
      that the manifest does not list follow, as a folder scan would give them.
    """
    root = Path(root)
    if manifest is None:
        yield from scan_folder(root, follow_symlinks=follow_symlinks, ignored=ignored, allow_outside_root=allow_outside_root)
        return
    if not root.is_dir():
        raise NotADirectoryError(f"corpus root is not a folder: {root}")
    listed: set[str] = set()
    for entry in read_manifest(Path(manifest), root=root, allow_outside_root=allow_outside_root):
        listed.add(entry.rel_path)
        yield with_sidecar_caption(entry) if isinstance(entry, CorpusItem) else entry
    if include_unlisted:
        for entry in scan_folder(root, follow_symlinks=follow_symlinks, ignored=ignored, allow_outside_root=allow_outside_root):
            if entry.rel_path not in listed:
                yield entry
