"""The retriever layer: every cross-modal mode checked against a direct numpy computation."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_tests.integration_tests import EmbeddingsIntegrationTests, RetrieversIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from mmrag.ingest import IngestOptions, run_ingest
from mmrag.retrieval import MultimodalEmbeddings, MultimodalRetriever
from mmrag.store.convert import point_id
from pipeline.conftest import GOOD_IMAGES, all_points, expected_caption, write_corpus


@pytest.fixture
def indexed(store, tiny_embedder, tmp_path):
    root = write_corpus(tmp_path / "corpus")
    run_ingest(store, tiny_embedder, root=root, collection="photos", progress=False,
               options=IngestOptions(batch_size=4, workers=1))
    return store, tiny_embedder, root


def _expected(store, query_vec: np.ndarray, vector: str) -> list[tuple[str, float]]:
    """Every stored point that has `vector`, ranked by cosine with numpy."""
    rows = []
    for pid, rec in all_points(store, "photos").items():
        if vector in (rec.vector or {}):
            v = np.asarray(rec.vector[vector], dtype=np.float64)
            rows.append((pid, float(query_vec @ v / np.linalg.norm(v))))
    return sorted(rows, key=lambda r: -r[1])


def _assert_ranking(docs: list[Document], expected: list[tuple[str, float]]) -> None:
    assert [d.metadata["id"] for d in docs] == [pid for pid, _ in expected[: len(docs)]]
    np.testing.assert_allclose([d.metadata["score"] for d in docs], [s for _, s in expected[: len(docs)]], atol=1e-5)


def test_text_to_image_matches_numpy(indexed):
    store, emb, _ = indexed
    r = MultimodalRetriever(store=store, embedder=emb, collection="photos", k=5)
    docs = r.invoke("a red picture")
    assert len(docs) == 5
    _assert_ranking(docs, _expected(store, emb.embed_texts(["a red picture"])[0], "image"))
    assert all(d.metadata["vector"] == "image" for d in docs)


def test_text_to_caption_searches_only_captioned_points(indexed):
    store, emb, _ = indexed
    r = MultimodalRetriever(store=store, embedder=emb, collection="photos", k=10, target="text")
    docs = r.invoke("a green photo")
    expected = _expected(store, emb.embed_texts(["a green photo"])[0], "text")
    assert len(docs) == sum(1 for rel in GOOD_IMAGES if expected_caption(rel)) == len(expected)
    _assert_ranking(docs, expected)
    assert docs[0].page_content == "a green photo"  # the caption is the page content


@pytest.mark.parametrize("form", ["path", "str", "pil", "bytes", "data_uri"])
def test_image_to_image_finds_itself_from_every_query_form(indexed, form):
    store, emb, root = indexed
    path = root / "sub" / "green.jpg"
    data = path.read_bytes()
    query = {
        "path": path,
        "str": str(path),
        "pil": __import__("PIL.Image", fromlist=["Image"]).open(path),
        "bytes": data,
        "data_uri": "data:image/jpeg;base64," + base64.b64encode(data).decode(),
    }[form]
    r = MultimodalRetriever(store=store, embedder=emb, collection="photos", k=3)
    docs = r.search(query)
    assert docs[0].metadata["path"] == "sub/green.jpg"
    assert docs[0].metadata["score"] == pytest.approx(1.0, abs=1e-5)


def test_image_to_caption(indexed):
    store, emb, root = indexed
    from PIL import Image

    with Image.open(root / "red.png") as im:
        qv = emb.embed_images([im.convert("RGB")])[0]
    r = MultimodalRetriever(store=store, embedder=emb, collection="photos", k=4, target="text")
    _assert_ranking(r.invoke(str(root / "red.png")), _expected(store, qv, "text"))


def test_fused_merges_both_vectors_without_repeating_an_image(indexed):
    store, emb, _ = indexed
    r = MultimodalRetriever(store=store, embedder=emb, collection="photos", k=len(GOOD_IMAGES), target="fused")
    docs = r.invoke("a tall blue image")
    ids = [d.metadata["id"] for d in docs]
    assert len(ids) == len(set(ids)) == len(GOOD_IMAGES)
    assert all(d.metadata["vector"] == "fused" for d in docs)
    scores = [d.metadata["score"] for d in docs]
    assert scores == sorted(scores, reverse=True)
    with pytest.raises(ValueError, match="not supported with target='fused'"):
        r.invoke("x", score_threshold=0.5)


def test_metadata_filter_and_threshold(indexed):
    store, emb, _ = indexed
    r = MultimodalRetriever(store=store, embedder=emb, collection="photos", k=10)
    wide = r.invoke("anything", filter={"width": {"gte": 40}})
    assert {d.metadata["path"] for d in wide} == {rel for rel, (size, _, _) in GOOD_IMAGES.items() if size[0] >= 40}

    captioned = r.invoke("anything", filter={"has_caption": "yes", "format": "PNG"})
    assert {d.metadata["path"] for d in captioned} == {
        rel for rel in GOOD_IMAGES if expected_caption(rel) and not rel.endswith(".jpg")
    }

    expected = _expected(store, emb.embed_texts(["anything"])[0], "image")
    threshold = expected[2][1] - 1e-6  # exactly the top three pass
    docs = r.invoke("anything", score_threshold=threshold)
    _assert_ranking(docs, expected[:3])
    assert len(docs) == 3


def test_documents_carry_metadata_and_images_on_request(indexed):
    store, emb, root = indexed
    r = MultimodalRetriever(store=store, embedder=emb, collection="photos", k=len(GOOD_IMAGES), include_image="data_uri")
    for d in r.invoke("a picture"):
        rel = d.metadata["path"]
        assert d.metadata["id"] == point_id(rel) == d.id
        assert (d.metadata["width"], d.metadata["height"]) == GOOD_IMAGES[rel][0]
        assert d.metadata["payload"]["path"] == rel
        assert d.page_content == (expected_caption(rel) or d.page_content)
        if not expected_caption(rel):
            assert Path(rel).stem.split("/")[-1].split(" ")[0] in d.page_content
        _, b64 = d.metadata["image_url"].split(",", 1)
        assert base64.b64decode(b64) == (root / rel).read_bytes()  # corpus root came from the collection
    by_path = r.invoke("a picture", include_image="path")
    assert all(Path(d.metadata["image_path"]) == root / d.metadata["path"] for d in by_path)


async def test_async_path_equals_sync(indexed):
    store, emb, _ = indexed
    for target in ("image", "text", "fused"):
        r = MultimodalRetriever(store=store, embedder=emb, collection="photos", k=3, target=target)
        sync = r.invoke("a red picture")
        asynchronous = await r.ainvoke("a red picture")
        assert [d.metadata["id"] for d in asynchronous] == [d.metadata["id"] for d in sync]


def test_unknown_arguments_are_refused(indexed):
    store, emb, _ = indexed
    r = MultimodalRetriever(store=store, embedder=emb, collection="photos")
    with pytest.raises(TypeError, match="unknown retriever arguments"):
        r.invoke("x", kk=3)


def test_embeddings_share_the_image_space(tiny_embedder, tmp_path):
    from PIL import Image

    e = MultimodalEmbeddings(embedder=tiny_embedder)
    img = Image.new("RGB", (20, 20), (1, 2, 3))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    np.testing.assert_allclose(e.embed_query_image(buf.getvalue()), tiny_embedder.embed_images([img])[0], atol=1e-6)
    np.testing.assert_allclose(e.embed_image(uris=[buf.getvalue()])[0], tiny_embedder.embed_images([img])[0], atol=1e-6)
    np.testing.assert_allclose(e.embed_query("hi"), tiny_embedder.embed_texts(["hi"])[0], atol=1e-6)
    assert e.embed_documents([]) == []


# --- LangChain's standard suites ----------------------------------------------------------------
@pytest.fixture(scope="module")
def standard_params(tiny_clip_dir, tmp_path_factory):
    from mmrag.embedders import load_embedder
    from mmrag.store import EdgeStore

    emb = load_embedder(str(tiny_clip_dir), device="cpu")
    store = EdgeStore(tmp_path_factory.mktemp("std") / "home")
    root = write_corpus(tmp_path_factory.mktemp("std-corpus") / "corpus")
    run_ingest(store, emb, root=root, collection="photos", progress=False)
    yield {"store": store, "embedder": emb, "collection": "photos"}
    store.close()


class TestRetrieverStandard(RetrieversIntegrationTests):
    @pytest.fixture(autouse=True)
    def _params(self, standard_params):
        type(self).params = standard_params

    @property
    def retriever_constructor(self) -> type[MultimodalRetriever]:
        return MultimodalRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return self.params

    @property
    def retriever_query_example(self) -> str:
        return "a red picture"


class TestEmbeddingsStandard(EmbeddingsIntegrationTests):
    @pytest.fixture(autouse=True)
    def _params(self, tiny_clip_dir):
        type(self).model_dir = str(tiny_clip_dir)

    @property
    def embeddings_class(self) -> type[MultimodalEmbeddings]:
        return MultimodalEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": self.model_dir, "device": "cpu"}


class TestEmbeddingsUnitStandard(EmbeddingsUnitTests):
    @pytest.fixture(autouse=True)
    def _params(self, tiny_clip_dir):
        type(self).model_dir = str(tiny_clip_dir)

    @property
    def embeddings_class(self) -> type[MultimodalEmbeddings]:
        return MultimodalEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": self.model_dir, "device": "cpu"}

    @property
    def init_from_env_params(self):
        return {"MMRAG_MODEL": self.model_dir}, {"device": "cpu"}, {"model": f"local-dir:{Path(self.model_dir).resolve()}"}


def test_stock_langchain_qdrant_vectorstore_reads_our_collection(tiny_embedder, tmp_path):
    """MultimodalEmbeddings lets langchain_qdrant's own QdrantVectorStore query an mmrag collection."""
    from langchain_qdrant import QdrantVectorStore
    from qdrant_client import QdrantClient

    from mmrag.store import QdrantClientStore

    store = QdrantClientStore(QdrantClient(":memory:"))
    run_ingest(store, tiny_embedder, root=write_corpus(tmp_path / "corpus"), collection="photos", progress=False)
    vs = QdrantVectorStore(
        client=store.client,
        collection_name="photos",
        embedding=MultimodalEmbeddings(embedder=tiny_embedder),
        vector_name="image",
        content_payload_key="path",  # always a string; captions are None on uncaptioned images
        metadata_payload_key="payload_not_used",
    )
    stock = vs.similarity_search_with_score("a red picture", k=4)
    ours = MultimodalRetriever(store=store, embedder=tiny_embedder, collection="photos", k=4).invoke("a red picture")
    assert [d.metadata["_id"] for d, _ in stock] == [d.metadata["id"] for d in ours]
    np.testing.assert_allclose([s for _, s in stock], [d.metadata["score"] for d in ours], atol=1e-5)
