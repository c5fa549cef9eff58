"""Cross-modal retrieval served through LangChain's own interfaces.

`MultimodalRetriever` (a `BaseRetriever`) embeds a text or image query and
searches one named vector (`image` or `text`), both (`fused`), or both plus the
BM25 sparse vector of the captions (`hybrid`). Fusion and MMR run inside the
engine (qdrant-edge or a Qdrant server), in one query. The query path itself is
`mmrag.retrieval.search.CollectionSearch`.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from mmrag.retrieval.search import CollectionSearch


class MultimodalRetriever(CollectionSearch, BaseRetriever):
    """Top-k hits from an mmrag collection as Documents.

    Modes: a text query against `target="image"` is text→image, against
    `"text"` text→caption; an image query gives image→image / image→caption;
    `"fused"` searches both vectors and has the engine merge them with RRF (one Document
    per image); `"hybrid"` adds a BM25 prefetch on the caption's sparse vector (text
    queries only), weighted by `sparse_weight` (RRF) or fused by DBSF (`fusion="dbsf"`).
    Filters apply inside every prefetch. `mmr=True` re-ranks `mmr_candidates` hits for
    diversity (`mmr_lambda`: 1 = relevance only). `min_relevance` (a percentile, 0-100, of
    the collection's calibrated null distribution, see `mmrag calibrate`) drops hits no
    better than what unrelated prompts score: "no match" instead of noise.
    """

    # The fields (store, embedder, collection, k, target, ...) are CollectionSearch's.

    # --- BaseRetriever hooks ----------------------------------------------------------------
    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        return self.search(query, **kwargs)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        return await self.asearch(query, **kwargs)
