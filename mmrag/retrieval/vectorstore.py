"""`MultimodalVectorStore`: LangChain's `VectorStore` over an mmrag store, embedded or server.

`langchain_qdrant` cannot open the embedded qdrant-edge store; this class gives both
backends the standard API. Texts are stored on the "text" named vector, images on the
"image" one; a query searches both and keeps the best cosines, so a text finds texts and
images alike in CLIP's shared space (a point holds one of the two, so the cosines of the
two lists are directly comparable; rank fusion would tie the first of each list). LangChain ids can be any string: the point id is
uuid5 of it and the original id travels in the payload.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore
from qdrant_client import models

from mmrag.store.base import MmrParams
from mmrag.store.convert import MMRAG_NAMESPACE
from mmrag.store.filters import filter_from_dict
from mmrag.store.schema import IMAGE_VECTOR, TEXT_VECTOR, CollectionSpec

_ID_KEY, _CONTENT_KEY, _METADATA_KEY, _KIND_KEY = "lc_id", "page_content", "metadata", "lc_kind"


def _point_id(doc_id: str) -> str:
    return str(uuid.uuid5(MMRAG_NAMESPACE, f"langchain:{doc_id}"))


class MultimodalVectorStore(VectorStore):
    """LangChain `VectorStore` over `mmrag.store` (EdgeStore or QdrantClientStore).

    `embedding`: any LangChain `Embeddings`; `add_images` needs one with
    `embed_image(uris=[...])` (e.g. `MultimodalEmbeddings`). The collection is created on
    the first write, sized by the first vector. `mmr_vector`: the named vector MMR
    diversifies on.
    """

    def __init__(self, store: Any, embedding: Embeddings, *, collection: str = "langchain",
                 model_id: str | None = None, mmr_vector: str = TEXT_VECTOR) -> None:
        self.store = store
        self._embedding = embedding
        self.collection = collection
        self.model_id = model_id or getattr(embedding, "model", None) or f"langchain:{type(embedding).__name__}"
        self.mmr_vector = mmr_vector

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    # --- writes -------------------------------------------------------------------------
    def _ensure(self, dim: int) -> str:
        name = self.store.resolve(self.collection)
        if not self.store.collection_exists(name):
            self.store.create_collection(CollectionSpec(name=name, dim=dim, model_id=str(self.model_id),
                                                        payload_indexes={}, sparse_fields=None))
        return name

    def _write(self, kind: str, contents: list[str], vectors: list[list[float]], metadatas: list[dict] | None,
               ids: Sequence[str | None] | None) -> list[str]:
        if not contents:
            return []
        metadatas = metadatas or [{} for _ in contents]
        ids = list(ids) if ids is not None else [None] * len(contents)
        if not len(metadatas) == len(ids) == len(contents):
            raise ValueError("texts/uris, metadatas and ids must have the same length")
        out_ids = [i if i is not None else str(uuid.uuid4()) for i in ids]
        name = self._ensure(len(vectors[0]))
        using = TEXT_VECTOR if kind == "text" else IMAGE_VECTOR
        self.store.upsert(name, [
            models.PointStruct(id=_point_id(doc_id), vector={using: [float(x) for x in vec]},
                               payload={_ID_KEY: doc_id, _CONTENT_KEY: content, _METADATA_KEY: dict(md or {}),
                                        _KIND_KEY: kind})
            for doc_id, content, vec, md in zip(out_ids, contents, vectors, metadatas)
        ])
        return out_ids

    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, *,
                  ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        texts = list(texts)
        return self._write("text", texts, self._embedding.embed_documents(texts) if texts else [], metadatas, ids)

    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        ids = kwargs.pop("ids", None) or [d.id for d in documents]
        return self.add_texts([d.page_content for d in documents], [dict(d.metadata) for d in documents],
                              ids=ids, **kwargs)

    def add_images(self, uris: list[str], metadatas: list[dict] | None = None, *,
                   ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        """Embed image files (LangChain's multimodal convention: `embed_image(uris=...)`) and store them.

        page_content is the image's path.
        """
        embed_image = getattr(self._embedding, "embed_image", None)
        if embed_image is None:
            raise ValueError(f"{type(self._embedding).__name__} cannot embed images; use MultimodalEmbeddings")
        uris = list(uris)
        return self._write("image", uris, embed_image(uris=uris) if uris else [], metadatas, ids)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        if not ids:
            return None
        name = self.store.resolve(self.collection)
        if self.store.collection_exists(name):
            self.store.delete_points(name, [_point_id(i) for i in ids])
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        name = self.store.resolve(self.collection)
        if not ids or not self.store.collection_exists(name):
            return []
        return [self._document(r) for r in self.store.retrieve(name, [_point_id(i) for i in ids])]

    # --- reads ----------------------------------------------------------------------------
    @staticmethod
    def _document(point: Any) -> Document:
        p = point.payload or {}
        return Document(id=p.get(_ID_KEY), page_content=p.get(_CONTENT_KEY, ""), metadata=dict(p.get(_METADATA_KEY) or {}))

    def _filter(self, filter: dict[str, Any] | models.Filter | None) -> models.Filter | None:
        if filter is None or isinstance(filter, models.Filter):
            return filter
        # LangChain-style {"key": value} on the documents' metadata
        return filter_from_dict({k if k.startswith("$") else f"{_METADATA_KEY}.{k}": v for k, v in filter.items()})

    def similarity_search_with_score_by_vector(self, embedding: list[float], k: int = 4,
                                               filter: Any = None, **kwargs: Any) -> list[tuple[Document, float]]:
        """Texts and images by cosine similarity, best first (score: the cosine)."""
        name = self.store.resolve(self.collection)
        if not self.store.collection_exists(name):
            return []
        vec, flt = [float(x) for x in embedding], self._filter(filter)
        hits = [h for using in (TEXT_VECTOR, IMAGE_VECTOR)
                for h in self.store.search(name, vec, using=using, limit=k, query_filter=flt)]
        hits.sort(key=lambda h: -h.score)
        return [(self._document(h), float(h.score)) for h in hits[:k]]

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, filter: Any = None,
                                    **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score_by_vector(embedding, k, filter, **kwargs)]

    def similarity_search_with_score(self, query: str, k: int = 4, filter: Any = None,
                                     **kwargs: Any) -> list[tuple[Document, float]]:
        return self.similarity_search_with_score_by_vector(self._embedding.embed_query(query), k, filter, **kwargs)

    def similarity_search(self, query: str, k: int = 4, filter: Any = None, **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    def max_marginal_relevance_search_by_vector(self, embedding: list[float], k: int = 4, fetch_k: int = 20,
                                                lambda_mult: float = 0.5, filter: Any = None,
                                                **kwargs: Any) -> list[Document]:
        """The engine's MMR over the `fetch_k` nearest on `mmr_vector`."""
        name = self.store.resolve(self.collection)
        if not self.store.collection_exists(name):
            return []
        hits = self.store.search(name, [float(x) for x in embedding], using=self.mmr_vector, limit=k,
                                 query_filter=self._filter(filter), mmr=MmrParams(lambda_mult, max(fetch_k, k)))
        return [self._document(h) for h in hits]

    def max_marginal_relevance_search(self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
                                      filter: Any = None, **kwargs: Any) -> list[Document]:
        return self.max_marginal_relevance_search_by_vector(self._embedding.embed_query(query), k, fetch_k,
                                                            lambda_mult, filter, **kwargs)

    def _select_relevance_score_fn(self):
        return self._cosine_relevance_score_fn

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings, metadatas: list[dict] | None = None, *,
                   ids: list[str] | None = None, store: Any = None, collection: str = "langchain",
                   **kwargs: Any) -> MultimodalVectorStore:
        if store is None:
            from qdrant_client import QdrantClient

            from mmrag.store.client import QdrantClientStore

            store = QdrantClientStore(QdrantClient(location=":memory:"))
        vs = cls(store, embedding, collection=collection, **kwargs)
        vs.add_texts(texts, metadatas, ids=ids)
        return vs
