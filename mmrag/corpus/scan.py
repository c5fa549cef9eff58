"""Find candidate images in a folder tree.

The scanner only *finds* images; it never decodes them. A file with an image
extension is always a candidate (decoding reports it if it turns out broken);
a file with an unknown or missing extension is a candidate only when its first
bytes carry a known image signature. Everything else (sidecar captions, notes,
`.DS_Store`, manifests) is not a failure; pass `ignored=Counter()` to learn what
was left out, counted by extension (sidecar captions and hidden files aside).
"""

from __future__ import annotations

import logging
import os
import stat
import unicodedata
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from mmrag.corpus.formats import IMAGE_EXTENSIONS, sniff_image_signature
from mmrag.corpus.types import CorpusItem, SkippedFile

log = logging.getLogger(__name__)

# Extensions we know are not images: never opened to sniff their content.
_NEVER_SNIFF: frozenset[str] = frozenset(
    {
        "txt", "md", "rst", "json", "jsonl", "ndjson", "csv", "tsv", "parquet", "yaml", "yml",
        "xml", "html", "htm", "py", "ipynb", "pdf", "zip", "gz", "tgz", "tar", "bz2", "xz",
        "7z", "mp4", "mov", "avi", "mkv", "webm", "mp3", "wav", "flac", "pt", "pth", "bin",
        "safetensors", "npy", "npz", "pkl", "log", "lock", "db", "sqlite",
    }
)

# Sidecar captions are short; a huge .txt is not a caption and must not blow memory.
MAX_CAPTION_BYTES = 1 << 20
_SNIFF_BYTES = 16


def _extension(name: str) -> str:
    base, dot, ext = name.rpartition(".")
    # "noext" and ".bashrc"-style names have no extension.
    return ext.lower() if dot and base else ""


def _looks_like_image(path: str, name: str) -> bool:
    ext = _extension(name)
    if ext in IMAGE_EXTENSIONS:
        return True
    if ext in _NEVER_SNIFF:
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError:
        return False  # unreadable non-image-named file: not ours to report
    return sniff_image_signature(head)


def read_caption_file(path: str | os.PathLike[str]) -> str | None:
    """Caption text of a sidecar file: UTF-8 (BOM allowed), stripped; None if empty/unreadable."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CAPTION_BYTES + 1)
    except OSError as exc:
        log.warning("cannot read caption file %s: %s", path, exc)
        return None
    if len(raw) > MAX_CAPTION_BYTES:
        log.warning("caption file %s is larger than %d bytes; ignored", path, MAX_CAPTION_BYTES)
        return None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        log.warning("caption file %s is not valid UTF-8 (%s); caption ignored", path, exc)
        return None
    text = text.strip()
    return text or None


def _sidecar_names(filename: str) -> tuple[str, str]:
    stem = filename.rsplit(".", 1)[0] if _extension(filename) else filename
    # "<filename>.txt" is the more specific of the two (a.jpg and a.png may share a.txt).
    return f"{filename}.txt", f"{stem}.txt"


def sidecar_caption(image_path: Path, *, siblings: set[str] | None = None) -> str | None:
    """Caption from `<filename>.txt` or else `<stem>.txt` next to `image_path`.

    `siblings` (names in the same folder) avoids a stat per candidate when known.
    """
    for name in _sidecar_names(image_path.name):
        candidate = image_path.parent / name
        if siblings is not None:
            if name in siblings:
                return read_caption_file(candidate)
        elif candidate.is_file():
            return read_caption_file(candidate)
    return None


def outside_root(path: Path, root: Path) -> str | None:
    """Why `path` (an absolute path, normalised) is outside `root`, or None when it is inside.

    The link target counts, not the link: `root/x.jpg -> /etc/passwd` is outside.
    """
    real_root = Path(os.path.realpath(root))
    if not Path(os.path.normpath(path)).is_relative_to(root):
        return f"path leaves the corpus root {root}; set MMRAG_ALLOW_OUTSIDE_ROOT=true to index it"
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(real_root):
        return (f"symlink to {real}, outside the corpus root {root}; "
                "set MMRAG_ALLOW_OUTSIDE_ROOT=true to index it")
    return None


def _inside_caption(path: Path, names: set[str], root: Path | None) -> str | None:
    """The sidecar caption, unless the sidecar is a symlink out of the root (never opened then)."""
    if root is not None:
        name = next((n for n in _sidecar_names(path.name) if n in names), None)
        candidate = path.parent / name if name else None
        if candidate is not None and os.path.islink(candidate) and outside_root(candidate, root):
            log.warning("caption file %s links outside the corpus root; ignored", candidate)
            return None
    return sidecar_caption(path, siblings=names)


def to_rel_path(parts: list[str] | tuple[str, ...]) -> str:
    """POSIX, NFC-normalised relative path: the identity of a point on every OS."""
    return unicodedata.normalize("NFC", "/".join(parts))


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def scan_folder(
    root: Path, *, follow_symlinks: bool = False, ignored: Counter[str] | None = None, allow_outside_root: bool = False
) -> Iterator[CorpusItem | SkippedFile]:
    """Yield every candidate image under `root`, depth first, sorted by name.

    Hidden files and folders (`.git`, `.mmrag`, macOS `._x.jpg` resource forks) are
    skipped. Symlinked *files* are always followed (dataset caches use them);
    symlinked *folders* only with `follow_symlinks=True`, with cycle protection.
    A symlink (file or folder) whose target lies outside `root` is skipped with
    a reason and never opened, unless `allow_outside_root` (MMRAG_ALLOW_OUTSIDE_ROOT).
    Raises FileNotFoundError / NotADirectoryError for a bad `root`; problems
    below it are yielded as SkippedFile and never stop the scan. `ignored`, when
    given, counts the files passed over as not images, by extension (".tga").
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"corpus folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"corpus root is not a folder: {root}")
    root_stat = root.stat()
    absolute = Path(os.path.normpath(root.absolute()))
    yield from _scan_dir(absolute, [], follow_symlinks, ((root_stat.st_dev, root_stat.st_ino),), ignored,
                         None if allow_outside_root else absolute)


def _scan_dir(
    directory: Path,
    rel_parts: list[str],
    follow_symlinks: bool,
    ancestors: tuple[tuple[int, int], ...],
    ignored: Counter[str] | None = None,
    root: Path | None = None,  # set: symlinks must stay inside it
) -> Iterator[CorpusItem | SkippedFile]:
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        yield SkippedFile(to_rel_path(rel_parts) or ".", f"unreadable folder: {exc.strerror or exc}")
        return

    names = {e.name for e in entries}
    subdirs: list[os.DirEntry[str]] = []
    passed_over: list[str] = []
    sidecars: set[str] = set()
    for entry in entries:
        if _is_hidden(entry.name):
            continue
        rel = rel_parts + [entry.name]
        try:
            is_dir = entry.is_dir(follow_symlinks=True)
            is_link = entry.is_symlink()
        except OSError:
            is_dir, is_link = False, entry.is_symlink()
        if is_link and root is not None and (is_dir and follow_symlinks or not is_dir) and os.path.exists(entry.path):
            reason = outside_root(Path(entry.path), root)
            if reason is not None:  # checked before the target is opened, even to sniff it
                if is_dir or _extension(entry.name) not in _NEVER_SNIFF:  # a caption/notes link: not ours
                    yield SkippedFile(to_rel_path(rel), reason)
                continue
        if is_dir:
            if is_link and not follow_symlinks:
                continue
            subdirs.append(entry)
            continue
        if not _looks_like_image(entry.path, entry.name):
            passed_over.append(entry.name)
            continue
        sidecars.update(_sidecar_names(entry.name))
        try:
            st = os.stat(entry.path)  # follows file symlinks
        except OSError as exc:
            reason = "broken symlink" if is_link else f"unreadable: {exc.strerror or exc}"
            yield SkippedFile(to_rel_path(rel), reason)
            continue
        if not stat.S_ISREG(st.st_mode):
            continue  # fifo, socket, device: never an image
        path = directory / entry.name
        yield CorpusItem(
            path=path,
            rel_path=to_rel_path(rel),
            file_size=st.st_size,
            mtime=st.st_mtime,
            caption=_inside_caption(path, names, root),
        )

    if ignored is not None:
        ignored.update(f".{_extension(n)}" if _extension(n) else "" for n in passed_over if n not in sidecars)
    for entry in subdirs:
        try:
            st = os.stat(entry.path)
        except OSError as exc:
            yield SkippedFile(to_rel_path(rel_parts + [entry.name]), f"unreadable folder: {exc.strerror or exc}")
            continue
        key = (st.st_dev, st.st_ino)
        if key in ancestors:  # only a symlink back up the tree can do this
            log.warning("skipping %s: symlink cycle", entry.path)
            continue
        yield from _scan_dir(
            directory / entry.name, rel_parts + [entry.name], follow_symlinks, ancestors + (key,), ignored, root
        )
