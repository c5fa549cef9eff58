"""Every stored file, used as a query, finds itself first with cosine ~1.

Ingestion and queries share one decode rule (`mmrag.corpus.decode`), including JPEG
draft decoding: with `fast_preprocess` ingestion decodes JPEGs in the DCT domain at
reduced size, and the retriever must decode a query JPEG the same way (the collection
records the draft size). Each file goes in as a path, raw bytes, a PIL image and a
data URI, through `MultimodalRetriever.search`, with the bundled reference model.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmrag.embedders.registry import REFERENCE_DIR
from mmrag.ingest import IngestOptions, run_ingest
from mmrag.retrieval import MultimodalRetriever
from mmrag.store import EdgeStore
from mmrag.store.schema import DRAFT_SIZE_KEY
from mmrag.training import synthetic

pytestmark = pytest.mark.skipif(
    not (REFERENCE_DIR / "clip-shapes-en" / "config.json").is_file(),
    reason="reference model not built: run `python pipelines/train_reference.py`",
)

LARGE = (1600, 1200)  # 1/8 draft scale still >= 64: draft decoding really happens


def _scene(i: int, side: int = 96) -> Image.Image:
    return synthetic.make_sample(i, seed=777, image_size=side).image.convert("RGB")


def _textured(i: int, size: tuple[int, int]) -> Image.Image:
    """A scene with fine noise, as photos have: where a draft decode and a full one differ most."""
    base = np.asarray(_scene(i, 400).resize(size, Image.BICUBIC), dtype=np.int16)
    # fine stripes (period ~ the 1/8 draft block) plus noise
    x = np.arange(size[0])[None, :, None]
    stripes = (80 * np.sign(np.sin(2 * np.pi * x / 9.7))).astype(np.int16)
    noise = np.random.default_rng(i).integers(-60, 60, size=(size[1], size[0], 1), dtype=np.int16)
    return Image.fromarray(np.clip(base + stripes + noise, 0, 255).astype(np.uint8))


def _write_files(root: Path) -> dict[str, str]:
    """rel_path -> data URI mime type, one file per awkward case."""
    root.mkdir(parents=True)
    _scene(0).save(root / "small.jpg", quality=90)
    _textured(1, LARGE).save(root / "large.jpg", quality=92)
    _scene(2).save(root / "flat.png")
    _scene(3).save(root / "pic.webp", quality=85)
    grey = np.asarray(_scene(4).convert("L"), dtype=np.uint16) * 257 + np.arange(96, dtype=np.uint16)[None, :]
    Image.fromarray(grey).save(root / "deep16.png")
    assert Image.open(root / "deep16.png").mode.startswith("I;16")
    rotated = _textured(5, (800, 600))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    rotated.save(root / "rotated.jpg", quality=90, exif=exif.tobytes())
    rgba = _scene(6).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    rgba.save(root / "alpha.png")
    return {
        "small.jpg": "jpeg", "large.jpg": "jpeg", "flat.png": "png", "pic.webp": "webp",
        "deep16.png": "png", "rotated.jpg": "jpeg", "alpha.png": "png",
    }  # fmt: skip


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    from mmrag.embedders import load_embedder

    emb = load_embedder("mmrag-shapes-en", device="cpu")
    root = tmp_path_factory.mktemp("selfq") / "corpus"
    files = _write_files(root)
    store = EdgeStore(tmp_path_factory.mktemp("home"))
    draft = emb.info.image_size  # what `fast_preprocess` picks (IngestOptions.from_settings)
    report = run_ingest(store, emb, root=root, collection="selfq", progress=False,
                        options=IngestOptions(batch_size=8, workers=2, draft_size=draft))
    assert (report.indexed, len(report.failed)) == (len(files), 0)
    retriever = MultimodalRetriever(store=store, embedder=emb, collection="selfq", k=len(files), target="image")
    yield {"emb": emb, "root": root, "files": files, "store": store, "retriever": retriever, "draft": draft}
    store.close()


def test_the_collection_records_its_draft_size(indexed) -> None:
    spec = indexed["store"].get_spec("selfq")
    assert spec.extra[DRAFT_SIZE_KEY] == indexed["draft"] == 64


def _as_query(path: Path, mime: str, form: str) -> object:
    if form == "path":
        return path
    if form == "str":
        return str(path)
    if form == "bytes":
        return path.read_bytes()
    if form == "pil":
        return Image.open(path)  # opened, not loaded: decoded like the file
    return f"data:image/{mime};base64," + base64.b64encode(path.read_bytes()).decode()


@pytest.mark.parametrize("form", ["path", "str", "bytes", "pil", "data_uri"])
def test_every_stored_file_finds_itself_first(indexed, form: str) -> None:
    root, retriever = indexed["root"], indexed["retriever"]
    for rel, mime in indexed["files"].items():
        path = root / rel
        query = _as_query(path, mime, form)
        docs = retriever.search(query)
        assert docs[0].metadata["path"] == rel, (rel, form, [(d.metadata["path"], d.metadata["score"]) for d in docs])
        assert docs[0].metadata["score"] >= 0.9999, (rel, form, docs[0].metadata["score"])


def test_a_query_decoded_at_full_size_would_drift(indexed) -> None:
    """The drift the shared rule prevents: this test's files do tell a full-size decode apart."""
    with Image.open(indexed["root"] / "large.jpg") as im:
        im.draft("RGB", (64, 64))
        assert im.size == (LARGE[0] // 8, LARGE[1] // 8)  # the draft really applies to this file
    full = MultimodalRetriever(store=indexed["store"], embedder=indexed["emb"], collection="selfq", k=1, draft_size=0)
    for rel in ("large.jpg", "rotated.jpg"):
        assert full.search(indexed["root"] / rel)[0].metadata["score"] < 0.9999, rel


def test_an_already_loaded_pil_image_is_used_as_it_is(indexed) -> None:
    """An image decoded by the caller cannot be re-drafted; it still gets the colour rules."""
    buf = io.BytesIO()
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(buf, format="PNG")
    from mmrag.retrieval.queries import load_query_image

    loaded = Image.open(io.BytesIO(buf.getvalue()))
    loaded.load()
    assert load_query_image(loaded, draft_size=64).getpixel((0, 0)) == (255, 255, 255)
