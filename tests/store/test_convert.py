"""Point ids, payloads, points and Documents (mmrag.store.convert)."""

from __future__ import annotations

import base64
import json
import os
import unicodedata
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.messages import HumanMessage
from langchain_core.messages.block_translators.openai import convert_to_openai_data_block
from PIL import Image
from qdrant_client import QdrantClient, models

from mmrag.retrieval.documents import describe_path, document_from_point, image_content_block, image_mime_type
from mmrag.store.convert import (
    MMRAG_NAMESPACE,
    RESERVED_FIELDS,
    build_payload,
    build_point,
    normalize_rel_path,
    point_id,
)
from mmrag.store.schema import PAYLOAD_FIELDS

WHEN = datetime(2024, 5, 1, 14, 30, 15, 250000, tzinfo=timezone(timedelta(hours=2)))


def _payload(rel_path: str = "holidays/beach 01.jpg", caption: str | None = "A sunny beach", **metadata):
    return _payload_with(metadata or None, rel_path=rel_path, caption=caption)


def _payload_with(metadata, *, rel_path: str = "holidays/beach 01.jpg", caption: str | None = "A sunny beach"):
    return build_payload(
        rel_path=rel_path,
        caption=caption,
        sha256="ab" * 32,
        width=640,
        height=480,
        format="JPEG",
        file_size=12345,
        mtime=1714566615.5,
        model_id="tiny-clip",
        ingested_at=WHEN,
        metadata=metadata,
    )


# --- ids -------------------------------------------------------------------------


def test_namespace_is_pinned() -> None:
    # Changing the namespace would re-key every existing collection: it must never change.
    assert MMRAG_NAMESPACE == uuid.UUID("831e4cc0-c18d-5d78-a9a9-141a47355af4")


@pytest.mark.parametrize(
    "given, canonical",
    [
        ("holidays/beach 01.jpg", "holidays/beach 01.jpg"),
        ("holidays\\beach 01.jpg", "holidays/beach 01.jpg"),
        ("./holidays//beach 01.jpg", "holidays/beach 01.jpg"),
        ("holidays/./beach 01.jpg/", "holidays/beach 01.jpg"),
        (Path("holidays") / "beach 01.jpg", "holidays/beach 01.jpg"),
        (unicodedata.normalize("NFD", "café/crème brûlée.png"), unicodedata.normalize("NFC", "café/crème brûlée.png")),
    ],
)
def test_point_id_is_uuid5_of_normalised_path(given, canonical: str) -> None:
    assert normalize_rel_path(given) == canonical
    assert point_id(given) == str(uuid.uuid5(MMRAG_NAMESPACE, canonical))


def test_point_id_nfd_and_nfc_agree_and_case_matters() -> None:
    nfc = unicodedata.normalize("NFC", "Straße/Öl.jpg")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    assert point_id(nfc) == point_id(nfd) == str(uuid.uuid5(MMRAG_NAMESPACE, nfc))
    # Linux file names are case-sensitive: different files, different ids.
    assert point_id("a/B.jpg") != point_id("a/b.jpg")
    assert uuid.UUID(point_id("a/b.jpg")).version == 5


@pytest.mark.parametrize(
    "bad, message",
    [("", "empty"), ("./", "empty"), ("/abs/x.jpg", "absolute"), ("C:\\x.jpg", "absolute"), ("a/../b.jpg", "'..'")],
)
def test_point_id_rejects_paths_outside_the_corpus(bad: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        point_id(bad)


# --- payloads ------------------------------------------------------------------------


def test_build_payload_fields() -> None:
    payload = _payload()
    assert payload == {
        "path": "holidays/beach 01.jpg",
        "caption": "A sunny beach",
        "sha256": "ab" * 32,
        "width": 640,
        "height": 480,
        "format": "JPEG",
        "file_size": 12345,
        "mtime": 1714566615.5,
        "model_id": "tiny-clip",
        "ingested_at": "2024-05-01T12:30:15.250000Z",
        "has_caption": "yes",
    }
    assert set(payload) == set(PAYLOAD_FIELDS) - {"tags"}
    assert datetime.fromisoformat(payload["ingested_at"]) == WHEN


@pytest.mark.parametrize("caption", [None, "", "   "])
def test_build_payload_without_caption(caption) -> None:
    payload = _payload(caption=caption)
    assert payload["has_caption"] == "no"
    assert payload["caption"] is None


def test_build_payload_normalises_path_and_reads_naive_time_as_utc() -> None:
    assert _payload(rel_path="holidays\\beach 01.jpg")["path"] == "holidays/beach 01.jpg"
    # One rule with the filters (mmrag.values.rfc3339): a naive datetime is UTC, as the server reads it.
    payload = build_payload(
        rel_path="a.jpg", caption=None, sha256="0", width=1, height=1, format="PNG", file_size=1,
        mtime=0.0, model_id="m", ingested_at=datetime(2024, 1, 1), metadata={"taken": datetime(2023, 7, 1, 9)},
    )
    assert payload["ingested_at"] == "2024-01-01T00:00:00Z"
    assert payload["taken"] == "2023-07-01T09:00:00Z"


def test_build_payload_metadata_is_json_safe() -> None:
    payload = _payload(
        tags="cat",
        album="Summer",
        rating=np.int64(4),
        score=np.float32(0.25),
        favourite=True,
        archived=np.bool_(False),
        missing=None,
        broken=float("nan"),
        huge=float("inf"),
        taken=datetime(2023, 7, 1, 9, 0, tzinfo=timezone.utc),
        exif={"camera": "X100", "flash": False, "iso": np.int32(200), "gps": None, "alt": float("nan")},
        people=["ann", None, np.str_("bob"), True],
    )
    extra = {k: v for k, v in payload.items() if k not in PAYLOAD_FIELDS}
    assert payload["tags"] == ["cat"]
    assert extra == {
        "album": "Summer",
        "rating": 4,
        "score": 0.25,
        "favourite": "true",
        "archived": "false",
        "taken": "2023-07-01T09:00:00Z",
        "exif": {"camera": "X100", "flash": "false", "iso": 200},
        "people": ["ann", None, "bob", "true"],  # positions kept, as the manifest reader keeps them
    }
    assert type(extra["rating"]) is int and type(extra["score"]) is float
    assert type(extra["exif"]["iso"]) is int
    # Strict JSON (no NaN) must accept it as is.
    assert json.loads(json.dumps(payload, allow_nan=False)) == payload


def test_build_payload_tags_list_and_numbers() -> None:
    assert _payload(tags=["cat", "dog", 3])["tags"] == ["cat", "dog", "3"]
    assert "tags" not in _payload()


@pytest.mark.parametrize("key", sorted(RESERVED_FIELDS))
def test_reserved_metadata_key_raises(key: str) -> None:
    with pytest.raises(ValueError, match=f"metadata key '{key}' collides"):
        _payload_with({"album": "a", key: "x"})


def test_unsupported_metadata_value_raises() -> None:
    with pytest.raises(ValueError, match="'thumb' is not JSON-safe: bytes"):
        _payload(thumb=b"\x00\x01")
    with pytest.raises(ValueError, match=r"'exif\.raw' is not JSON-safe: object"):
        _payload(exif={"raw": object()})


# --- points --------------------------------------------------------------------------


def test_build_point_named_float32_vectors() -> None:
    payload = _payload()
    image = np.array([0.1, 0.2, 0.3], dtype=np.float64)
    point = build_point("holidays/beach 01.jpg", image, [0.3, 0.2, 0.1], payload)
    assert point.id == str(uuid.uuid5(MMRAG_NAMESPACE, "holidays/beach 01.jpg"))
    assert set(point.vector) == {"image", "text"}
    assert point.vector["image"] == [float(np.float32(v)) for v in (0.1, 0.2, 0.3)]
    assert point.vector["text"] == [float(np.float32(v)) for v in (0.3, 0.2, 0.1)]
    assert all(type(v) is float for v in point.vector["image"])
    assert point.payload == payload


def test_build_point_without_text_vector() -> None:
    point = build_point("a.png", np.ones(4, dtype=np.float32), None, {"path": "a.png"})
    assert point.vector == {"image": [1.0, 1.0, 1.0, 1.0]}


@pytest.mark.parametrize(
    "image, text, dim, message",
    [
        ([0.1, float("nan")], None, None, "NaN or infinite"),
        ([0.1, float("inf")], None, None, "NaN or infinite"),
        (np.zeros((2, 2)), None, None, "1-D"),
        ([], None, None, "1-D and non-empty"),
        ([0.1, 0.2], [0.1, 0.2, 0.3], None, "text vector of 'a.png' has 3 dimensions, expected 2"),
        ([0.1, 0.2], None, 3, "image vector of 'a.png' has 2 dimensions, expected 3"),
        (["x", "y"], None, None, "not numeric"),
    ],
)
def test_build_point_validates_vectors(image, text, dim, message) -> None:
    with pytest.raises(ValueError, match=message):
        build_point("a.png", image, text, {}, dim=dim)


def test_build_point_refuses_mismatched_payload_path() -> None:
    with pytest.raises(ValueError, match="payload path 'b.png' does not match rel_path 'a.png'"):
        build_point("a.png", [1.0], None, {"path": "b.png"})


# --- documents -------------------------------------------------------------------


def test_describe_path() -> None:
    assert describe_path("holidays/beach 01.jpg") == "Image: beach 01 (in holidays)"
    assert describe_path("2023/summer/IMG_0042-edit.final.jpeg") == "Image: IMG 0042 edit final (in 2023/summer)"
    assert describe_path("cat.png") == "Image: cat"
    assert describe_path("___.png") == "Image: ___.png"


def _client_with_points(points: list[models.PointStruct], dim: int) -> QdrantClient:
    client = QdrantClient(":memory:")
    client.create_collection(
        "c",
        vectors_config={name: models.VectorParams(size=dim, distance=models.Distance.COSINE) for name in ("image", "text")},
    )
    client.upsert("c", points=points, wait=True)
    return client


def test_documents_from_real_records_and_scored_points() -> None:
    captioned = build_point("holidays/beach 01.jpg", [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], _payload())
    bare_payload = _payload(rel_path="pets/my_cat-2.png", caption=None, tags=["cat"])
    bare = build_point("pets/my_cat-2.png", [0.6, 0.8, 0.0], None, bare_payload)
    client = _client_with_points([captioned, bare], dim=3)

    records = {r.id: r for r in client.retrieve("c", [captioned.id, bare.id], with_payload=True)}
    doc = document_from_point(records[bare.id])
    assert isinstance(doc, Document)
    assert doc.id == bare.id
    assert doc.page_content == "Image: my cat 2 (in pets)"
    assert doc.metadata == {
        "id": bare.id,
        "score": None,
        "vector": None,
        "path": "pets/my_cat-2.png",
        "width": 640,
        "height": 480,
        "payload": bare_payload,
    }

    hits = client.query_points("c", query=[1.0, 0.0, 0.0], using="image", limit=2, with_payload=True).points
    docs = [document_from_point(hit, vector_name="image") for hit in hits]
    assert [d.id for d in docs] == [captioned.id, bare.id]
    assert docs[0].page_content == "A sunny beach"
    # Reference cosine similarities: query . unit vectors.
    assert docs[0].metadata["score"] == pytest.approx(1.0, abs=1e-6)
    assert docs[1].metadata["score"] == pytest.approx(0.6, abs=1e-6)
    assert docs[0].metadata["vector"] == "image"
    assert docs[0].metadata["payload"]["has_caption"] == "yes"


def _png(root: Path, rel: str, color=(255, 0, 0)) -> bytes:
    file = root / rel
    file.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (3, 2), color).save(file, format="PNG")
    return file.read_bytes()


def _record(rel: str, fmt: str = "PNG") -> models.Record:
    payload = _payload(rel_path=rel)
    payload["format"] = fmt
    return models.Record(id=point_id(rel), payload=payload)


def test_include_image_path(tmp_path: Path) -> None:
    _png(tmp_path, "sub dir/red.png")
    doc = document_from_point(_record("sub dir/red.png"), include_image="path", corpus_root=tmp_path)
    assert doc.metadata["image_path"] == str((tmp_path / "sub dir" / "red.png").resolve())
    assert os.path.isabs(doc.metadata["image_path"])
    assert "image_url" not in doc.metadata
    with pytest.raises(ValueError, match="needs corpus_root"):
        document_from_point(_record("sub dir/red.png"), include_image="path")
    with pytest.raises(ValueError, match="include_image must be None, 'path' or 'data_uri'"):
        document_from_point(_record("sub dir/red.png"), include_image="bytes", corpus_root=tmp_path)  # type: ignore[arg-type]


def test_include_image_data_uri_round_trip(tmp_path: Path) -> None:
    data = _png(tmp_path, "red.png")
    doc = document_from_point(_record("red.png"), include_image="data_uri", corpus_root=tmp_path)
    url = doc.metadata["image_url"]
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    assert base64.b64decode(url[len(prefix):]) == data

    block = image_content_block(doc)
    assert block == {"type": "image", "base64": url[len(prefix):], "mime_type": "image/png"}
    assert base64.b64decode(block["base64"]) == data
    # A chat model's converter recognises it as a standard block.
    message = HumanMessage(content=[{"type": "text", "text": "What is this?"}, block])
    assert message.content_blocks[1]["type"] == "image"
    assert convert_to_openai_data_block(block) == {"type": "image_url", "image_url": {"url": url}}


def test_image_content_block_from_path_and_url(tmp_path: Path) -> None:
    data = _png(tmp_path, "a/b.png")
    doc = document_from_point(_record("a/b.png"), include_image="path", corpus_root=tmp_path)
    block = image_content_block(doc)
    assert block["type"] == "image" and block["mime_type"] == "image/png"
    assert base64.b64decode(block["base64"]) == data

    remote = Document(page_content="x", metadata={"image_url": "https://example.org/cat.jpg"})
    assert image_content_block(remote) == {"type": "image", "url": "https://example.org/cat.jpg"}
    with pytest.raises(ValueError, match="carries no image; build it with include_image"):
        image_content_block(Document(id="p1", page_content="x", metadata={}))


def test_mime_types() -> None:
    assert image_mime_type("JPEG") == "image/jpeg"
    assert image_mime_type("MPO") == "image/jpeg"
    assert image_mime_type("WEBP") == "image/webp"
    assert image_mime_type(None, "x/y.gif") == "image/gif"
    assert image_mime_type("QOI", "x.qoi") == "image/qoi"


def test_data_uri_uses_payload_format(tmp_path: Path) -> None:
    file = tmp_path / "photo.jpg"
    Image.new("RGB", (2, 2), (0, 0, 255)).save(file, format="JPEG")
    doc = document_from_point(_record("photo.jpg", fmt="JPEG"), include_image="data_uri", corpus_root=tmp_path)
    assert doc.metadata["image_url"].startswith("data:image/jpeg;base64,")
    assert base64.b64decode(doc.metadata["image_url"].split(",", 1)[1]) == file.read_bytes()


def test_symlink_escaping_corpus_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    root = tmp_path / "corpus"
    root.mkdir()
    _png(outside, "secret.png")
    (root / "link.png").symlink_to(outside / "secret.png")
    with pytest.raises(ValueError, match="resolves outside corpus_root"):
        document_from_point(_record("link.png"), include_image="data_uri", corpus_root=root)


def test_missing_caption_and_path_falls_back_to_id() -> None:
    doc = document_from_point(models.ScoredPoint(id=point_id("x.png"), version=0, score=0.5, payload={}))
    assert doc.page_content == f"Image {point_id('x.png')}"
    assert doc.metadata["score"] == 0.5 and doc.metadata["path"] is None
