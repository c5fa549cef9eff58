from __future__ import annotations

import datetime as dt
import io
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmrag.corpus import iter_corpus, read_manifest, scan_folder
from mmrag.corpus.types import CorpusItem, SkippedFile


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (3, 3), (9, 9, 9)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    """A corpus folder with four images, one with a sidecar caption."""
    for rel in ["a.png", "b.png", "sub/c.png", "图 片.png"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(_png())
    (tmp_path / "a.txt").write_text("sidecar of a", encoding="utf-8")
    (tmp_path / "b.txt").write_text("sidecar of b", encoding="utf-8")
    return tmp_path


def _summary(entries):
    return [
        (e.rel_path, e.caption, e.metadata) if isinstance(e, CorpusItem) else ("SKIP", e.rel_path, e.reason)
        for e in entries
    ]


# --------------------------------------------------------------------------- jsonl


def test_jsonl_rows_metadata_and_skips(images):
    manifest = images / "m.jsonl"
    lines = [
        json.dumps({"path": "a.png", "caption": "  a cat  ", "source": "web", "year": 2020, "tags": ["x", "y"]}),
        "",  # blank lines are ignored
        json.dumps({"path": "sub/c.png", "caption": None, "score": 0.5, "extra": None, "nested": {"k": [1, None]}}),
        '{"path": "b.png", "caption": "broken',  # bad JSON: line 4
        json.dumps({"path": "missing.png", "caption": "gone"}),
        json.dumps(["not", "an", "object"]),
        json.dumps({"path": "./图 片.png", "caption": "中文说明"}),
        json.dumps({"path": 42}),
        json.dumps({"path": "a.png", "caption": "again"}),
    ]
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")

    entries = list(read_manifest(manifest))
    assert _summary(entries) == [
        ("a.png", "a cat", {"source": "web", "year": 2020, "tags": ["x", "y"]}),
        ("sub/c.png", None, {"score": 0.5, "nested": {"k": [1, None]}}),
        ("SKIP", "m.jsonl:4", entries[2].reason),
        ("SKIP", "missing.png", "file not found"),
        ("SKIP", "m.jsonl:6", "line 6 is not a JSON object (list)"),
        ("图 片.png", "中文说明", {}),
        ("SKIP", "m.jsonl:8", "line 8: missing or invalid 'path'"),
        ("SKIP", "a.png", "duplicate manifest row (line 9; first listed at line 1)"),
    ]
    assert entries[2].reason.startswith("bad JSON on line 4: ")
    first = entries[0]
    assert first.path == images / "a.png"
    st = os.stat(images / "a.png")
    assert (first.file_size, first.mtime) == (st.st_size, st.st_mtime)


def test_jsonl_with_bom_and_absolute_paths(images, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "far.png"
    elsewhere.write_bytes(_png())
    manifest = images / "m.jsonl"
    rows = [{"path": str(images / "b.png")}, {"path": str(elsewhere)}]
    manifest.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(r) for r in rows).encode("utf-8"))
    entries = list(read_manifest(manifest, allow_outside_root=True))
    # inside the root: relative identity; outside: its absolute path is the identity
    assert [e.rel_path for e in entries] == ["b.png", elsewhere.as_posix()]
    assert all(isinstance(e, CorpusItem) for e in entries)
    # By default a row outside the root is a skipped row, not an item
    default = list(read_manifest(manifest))
    assert isinstance(default[0], CorpusItem) and isinstance(default[1], SkippedFile)
    assert default[1].reason == f"line 2: path leaves the corpus root {images}; set MMRAG_ALLOW_OUTSIDE_ROOT=true to index it"


def test_jsonl_without_path_column_is_an_error(images):
    manifest = images / "m.jsonl"
    manifest.write_text(json.dumps({"file": "a.png", "caption": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"m\.jsonl has no 'path' column; columns found on line 1: \['caption', 'file'\]"):
        list(read_manifest(manifest))


# --------------------------------------------------------------------------- csv


def test_csv_with_bom_chinese_captions_and_empty_cells(images):
    manifest = images / "m.csv"
    text = (
        "path,caption,license,photographer\n"
        "a.png,一只猫坐在窗台上,cc-by,\n"
        'sub/c.png,"a caption, with a comma",,Ann\n'
        "\n"
        "missing.png,nothing,cc0,Bob\n"
        "b.png,too,many,fields,here\n"
        "图 片.png,,007,\n"
    )
    manifest.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert _summary(read_manifest(manifest)) == [
        ("a.png", "一只猫坐在窗台上", {"license": "cc-by"}),
        ("sub/c.png", "a caption, with a comma", {"photographer": "Ann"}),
        ("SKIP", "missing.png", "file not found"),
        ("SKIP", "m.csv:6", "line 6: expected 4 fields, got 5"),
        ("图 片.png", None, {"license": "007"}),  # CSV cells stay strings: "007" is not 7
    ]


def test_csv_without_path_column_names_file_and_columns(images):
    manifest = images / "bad.csv"
    manifest.write_bytes(b"\xef\xbb\xbffile,caption\na.png,x\n")
    with pytest.raises(ValueError) as info:
        list(read_manifest(manifest))
    assert str(info.value) == f"manifest {manifest} has no 'path' column; columns found: ['file', 'caption']"


def test_csv_not_utf8_is_a_clear_error(images):
    manifest = images / "gbk.csv"
    data = "path,caption\na.png,一只猫坐在窗台上\n".encode("gbk")
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    manifest.write_bytes(data)
    with pytest.raises(ValueError, match="is not valid UTF-8"):
        list(read_manifest(manifest))


# --------------------------------------------------------------------------- parquet


def test_parquet_streams_batches_with_typed_metadata(images):
    manifest = images / "m.parquet"
    table = pa.table(
        {
            "path": ["a.png", "b.png", "missing.png", "sub/c.png", "图 片.png"],
            "caption": ["first", None, "x", "third", "  "],
            "score": [0.25, float("nan"), 1.0, None, 3.5],
            "count": pa.array([1, 2, 3, 4, None], type=pa.int64()),
            "taken": [dt.datetime(2021, 5, 1, 12, 30), None, None, dt.datetime(2022, 1, 2), None],
            "labels": [["cat"], [], None, ["dog", "ball"], ["x"]],
            "thumb": [b"\x00\x01", None, None, None, None],
        }
    )
    pq.write_table(table, manifest, row_group_size=2)  # three row groups
    entries = list(read_manifest(manifest, batch_size=2))
    assert _summary(entries) == [
        ("a.png", "first", {"score": 0.25, "count": 1, "taken": "2021-05-01T12:30:00Z", "labels": ["cat"]}),
        ("b.png", None, {"count": 2, "labels": []}),  # NaN score dropped
        ("SKIP", "missing.png", "file not found"),
        ("sub/c.png", "third", {"count": 4, "taken": "2022-01-02T00:00:00Z", "labels": ["dog", "ball"]}),
        ("图 片.png", None, {"score": 3.5, "labels": ["x"]}),
    ]
    json.dumps([e.metadata for e in entries if isinstance(e, CorpusItem)])  # JSON-safe


def test_parquet_without_path_column(images):
    manifest = images / "m.parquet"
    pq.write_table(pa.table({"filename": ["a.png"], "caption": ["x"]}), manifest)
    with pytest.raises(ValueError, match=r"has no 'path' column; columns found: \['filename', 'caption'\]"):
        list(read_manifest(manifest))


def test_manifest_root_and_format_errors(images, tmp_path_factory):
    other = tmp_path_factory.mktemp("manifests")
    manifest = other / "m.csv"
    manifest.write_text("path,caption\nsub/c.png,x\n", encoding="utf-8")
    assert _summary(read_manifest(manifest)) == [("SKIP", "sub/c.png", "file not found")]  # default root
    assert _summary(read_manifest(manifest, root=images)) == [("sub/c.png", "x", {})]

    with pytest.raises(ValueError, match="unsupported manifest format 'm.xlsx'"):
        list(read_manifest(other / "m.xlsx"))
    with pytest.raises(FileNotFoundError):
        list(read_manifest(other / "absent.csv"))


# --------------------------------------------------------------------------- iter_corpus


def test_iter_corpus_folder_only_is_a_scan(images):
    assert _summary(iter_corpus(images)) == _summary(scan_folder(images))
    assert [e.rel_path for e in iter_corpus(images)] == ["a.png", "b.png", "图 片.png", "sub/c.png"]


def test_iter_corpus_manifest_captions_win_and_unlisted_follow(images, tmp_path_factory):
    manifest = tmp_path_factory.mktemp("m") / "list.jsonl"
    rows = [
        {"path": "a.png", "caption": "manifest caption", "split": "train"},
        {"path": "b.png", "split": "val"},  # no caption: the sidecar fills in
        {"path": "nope.png"},
    ]
    manifest.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")

    listed_only = _summary(iter_corpus(images, manifest=manifest))
    assert listed_only == [
        ("a.png", "manifest caption", {"split": "train"}),
        ("b.png", "sidecar of b", {"split": "val"}),
        ("SKIP", "nope.png", "file not found"),
    ]
    with_rest = _summary(iter_corpus(images, manifest=manifest, include_unlisted=True))
    assert with_rest == listed_only + [("图 片.png", None, {}), ("sub/c.png", None, {})]
