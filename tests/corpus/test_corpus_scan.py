from __future__ import annotations

import io
import os
import unicodedata
from pathlib import Path

import pytest
from PIL import Image

from mmrag.corpus.scan import scan_folder, sniff_image_signature
from mmrag.corpus.types import CorpusItem, SkippedFile


def _image_bytes(fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 3), (1, 2, 3)).save(buf, fmt, **kwargs)
    return buf.getvalue()


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    png, jpeg = _image_bytes("PNG"), _image_bytes("JPEG")
    for name in ["a.jpg", "B.JPG", "c.Png", "d.jpeg", "e.WebP", "f.gif", "g.bmp", "h.tif", "i.TIFF"]:
        _write(tmp_path / name, png)  # content does not matter for an image extension
    _write(tmp_path / "broken.jpg", b"definitely not a jpeg")  # still a candidate
    _write(tmp_path / "ünïcödé name.png", png)
    _write(tmp_path / "中文 图片.jpg", jpeg)
    _write(tmp_path / "noext", png)  # found by content
    _write(tmp_path / "photo.dat", jpeg)  # unknown extension, JPEG bytes
    _write(tmp_path / "anim", _image_bytes("GIF"))
    _write(tmp_path / "scan", _image_bytes("TIFF"))
    _write(tmp_path / "pic.webp_backup", _image_bytes("WEBP"))
    _write(tmp_path / "bitmap.raw", _image_bytes("BMP"))
    _write(tmp_path / "blob", b"\x00\x01 random bytes that are no image")
    _write(tmp_path / "png_but.txt", png)  # a known non-image extension is never sniffed
    _write(tmp_path / "README.md", "# notes")
    _write(tmp_path / "meta.json", "{}")
    _write(tmp_path / ".DS_Store", b"\x00\x00\x00\x01Bud1")
    _write(tmp_path / "._a.jpg", b"AppleDouble resource fork")
    _write(tmp_path / ".git" / "x.png", png)
    _write(tmp_path / ".mmrag" / "y.jpg", jpeg)
    _write(tmp_path / "sub" / "deeper" / "k.jpg", jpeg)
    _write(tmp_path / "sub" / "z.png", png)
    _write(tmp_path / "sub dir with space" / "l.png", png)
    (tmp_path / "empty_dir").mkdir()
    return tmp_path


EXPECTED_ORDER = [
    # files of a folder first (sorted by name), then its subfolders
    "B.JPG",
    "a.jpg",
    "anim",
    "bitmap.raw",
    "broken.jpg",
    "c.Png",
    "d.jpeg",
    "e.WebP",
    "f.gif",
    "g.bmp",
    "h.tif",
    "i.TIFF",
    "noext",
    "photo.dat",
    "pic.webp_backup",
    "scan",
    "ünïcödé name.png",
    "中文 图片.jpg",
    "sub/z.png",
    "sub/deeper/k.jpg",
    "sub dir with space/l.png",
]


def test_exact_candidates_in_deterministic_order(tree):
    found = list(scan_folder(tree))
    assert all(isinstance(x, CorpusItem) for x in found), found
    rel_paths = [x.rel_path for x in found]
    assert rel_paths == EXPECTED_ORDER
    assert rel_paths == [x.rel_path for x in scan_folder(tree)]  # stable across runs


def test_items_carry_absolute_path_size_and_mtime(tree):
    by_rel = {x.rel_path: x for x in scan_folder(tree)}
    item = by_rel["sub/deeper/k.jpg"]
    assert item.path == (tree / "sub" / "deeper" / "k.jpg").absolute()
    st = os.stat(item.path)
    assert (item.file_size, item.mtime) == (st.st_size, st.st_mtime)
    assert by_rel["中文 图片.jpg"].path.read_bytes() == _image_bytes("JPEG")
    assert item.caption is None and item.metadata == {}


def test_nfd_file_name_gives_nfc_rel_path(tmp_path):
    nfd = unicodedata.normalize("NFD", "café.png")
    assert nfd != "café.png"
    _write(tmp_path / "Ünïcode" / nfd, _image_bytes("PNG"))
    (item,) = list(scan_folder(tmp_path))
    assert item.rel_path == unicodedata.normalize("NFC", "Ünïcode/café.png")
    assert item.path.name == nfd and item.path.exists()  # the real on-disk name is kept for opening


def test_sidecar_captions(tmp_path):
    png = _image_bytes("PNG")
    for name in ["bom.png", "zh.jpg", "blank.png", "bad.png", "both.jpg", "full.png", "none.png"]:
        _write(tmp_path / name, png)
    (tmp_path / "bom.txt").write_bytes("\ufeff  A red square. \n".encode("utf-8"))
    (tmp_path / "zh.txt").write_bytes("一只在草地上奔跑的狗\n".encode())
    (tmp_path / "blank.txt").write_text("  \n\t", encoding="utf-8")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\xfa not utf-8 \xc3")
    (tmp_path / "both.txt").write_text("stem caption", encoding="utf-8")
    (tmp_path / "both.jpg.txt").write_text("full-name caption", encoding="utf-8")
    (tmp_path / "full.png.txt").write_text("only the full-name sidecar", encoding="utf-8")

    captions = {x.rel_path: x.caption for x in scan_folder(tmp_path)}
    assert captions == {
        "bad.png": None,  # undecodable: no caption, no crash
        "blank.png": None,
        "bom.png": "A red square.",
        "both.jpg": "full-name caption",  # <filename>.txt is the more specific one
        "full.png": "only the full-name sidecar",
        "none.png": None,
        "zh.jpg": "一只在草地上奔跑的狗",
    }


def test_symlinked_files_are_followed_folders_only_on_request(tmp_path):
    data_dir = tmp_path / "data"
    _write(data_dir / "real.png", _image_bytes("PNG"))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "link.png").symlink_to(data_dir / "real.png")
    (corpus / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (corpus / "linked_dir").symlink_to(data_dir, target_is_directory=True)
    (corpus / "loop").symlink_to(corpus, target_is_directory=True)  # a cycle

    found = list(scan_folder(corpus, allow_outside_root=True))  # data/ is outside the corpus root
    assert [(type(x).__name__, x.rel_path) for x in found] == [
        ("SkippedFile", "dangling.jpg"),
        ("CorpusItem", "link.png"),
    ]
    assert found[0].reason == "broken symlink"
    assert found[1].file_size == (data_dir / "real.png").stat().st_size

    followed = [x.rel_path for x in scan_folder(corpus, follow_symlinks=True, allow_outside_root=True)]
    assert followed == ["dangling.jpg", "link.png", "linked_dir/real.png"]  # loop/ not re-entered
    # By default the links out of the root are skipped with a reason (loop/ stays inside: not reported)
    default = [(type(x).__name__, x.rel_path) for x in scan_folder(corpus, follow_symlinks=True)]
    assert default == [("SkippedFile", "dangling.jpg"), ("SkippedFile", "link.png"), ("SkippedFile", "linked_dir")]


def test_unreadable_subfolder_is_reported_not_fatal(tmp_path, monkeypatch):
    _write(tmp_path / "ok.png", _image_bytes("PNG"))
    _write(tmp_path / "locked" / "x.png", _image_bytes("PNG"))
    _write(tmp_path / "later" / "y.png", _image_bytes("PNG"))
    real_scandir = os.scandir

    def scandir(path):
        # chmod 000 does not stop root, so the permission error is simulated.
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found = list(scan_folder(tmp_path))
    assert [x.rel_path for x in found] == ["ok.png", "later/y.png", "locked"]
    assert found[2] == SkippedFile("locked", "unreadable folder: Permission denied")


def test_bad_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus folder not found"):
        list(scan_folder(tmp_path / "missing"))
    _write(tmp_path / "file.png", _image_bytes("PNG"))
    with pytest.raises(NotADirectoryError):
        list(scan_folder(tmp_path / "file.png"))


@pytest.mark.parametrize(
    ("head", "is_image"),
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", True),
        (b"\x89PNG\r\n\x1a\n\x00\x00", True),
        (b"GIF87a\x01\x00", True),
        (b"GIF89a\x01\x00", True),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", True),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", False),
        (b"BM\x36\x00\x00\x00", True),
        (b"II*\x00\x08\x00\x00\x00", True),
        (b"MM\x00*\x00\x00\x00\x08", True),
        (b"\x00\x00\x00\x1cftypavif", True),
        (b"\x00\x00\x00\x1cftypisom", False),
        (b"%PDF-1.7", False),
        (b"", False),
    ],
)
def test_signatures(head, is_image):
    assert sniff_image_signature(head) is is_image
