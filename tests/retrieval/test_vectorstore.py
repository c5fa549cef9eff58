"""`MultimodalVectorStore` passes LangChain's standard VectorStore suite on both backends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_tests.integration_tests import VectorStoreIntegrationTests
from PIL import Image
from qdrant_client import QdrantClient

from mmrag.retrieval.vectorstore import MultimodalVectorStore
from mmrag.store import EdgeStore, QdrantClientStore


class TestEdgeVectorStore(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, tmp_path: Path) -> Iterator[MultimodalVectorStore]:  # type: ignore[override]
        store = EdgeStore(tmp_path / "home", max_search_threads=1)
        yield MultimodalVectorStore(store, self.get_embeddings())
        store.close()


class TestMemoryVectorStore(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self) -> Iterator[MultimodalVectorStore]:  # type: ignore[override]
        store = QdrantClientStore(QdrantClient(location=":memory:"))
        yield MultimodalVectorStore(store, self.get_embeddings())
        store.close()


class _FakeImageEmbeddings(DeterministicFakeEmbedding):
    """embed_image(uris=...) by LangChain's multimodal convention: the vector of the file's bytes."""

    def embed_image(self, uris: list[str]) -> list[list[float]]:
        return [self.embed_query(Path(u).read_bytes().hex()) for u in uris]


def test_add_images_mmr_filter_and_as_retriever(tmp_path: Path) -> None:
    emb = _FakeImageEmbeddings(size=8)
    store = EdgeStore(tmp_path / "home", max_search_threads=1)
    vs = MultimodalVectorStore(store, emb, mmr_vector="text")
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((4, 4, 3), i * 80, np.uint8)).save(p)
        paths.append(str(p))
    ids = vs.add_images(paths, [{"kind": "photo", "n": i} for i in range(3)], ids=["a", "b", "c"])
    vs.add_texts(["alpha", "beta", "gamma"], [{"kind": "note"}] * 3, ids=["t1", "t2", "t3"])
    assert ids == ["a", "b", "c"]
    img_vec = emb.embed_image(uris=[paths[1]])[0]
    assert vs.similarity_search_by_vector(img_vec, k=1)[0].id == "b"
    assert [d.id for d in vs.similarity_search("beta", k=1)] == ["t2"]
    assert {d.id for d in vs.similarity_search("beta", k=6, filter={"kind": "photo"})} == {"a", "b", "c"}
    mmr = vs.max_marginal_relevance_search("beta", k=2, fetch_k=3, lambda_mult=1.0)
    assert [d.id for d in mmr] == [d.id for d in vs.max_marginal_relevance_search("beta", k=2, fetch_k=3, lambda_mult=1.0)]
    assert mmr[0].id == "t2" and len(mmr) == 2
    retriever = vs.as_retriever(search_type="mmr", search_kwargs={"k": 2, "fetch_k": 3})
    assert [d.id for d in retriever.invoke("beta")][0] == "t2"
    assert [d.id for d in vs.as_retriever(search_kwargs={"k": 1}).invoke("gamma")] == ["t3"]
    with pytest.raises(ValueError, match="cannot embed images"):
        MultimodalVectorStore(store, DeterministicFakeEmbedding(size=8)).add_images(paths)
    store.close()
