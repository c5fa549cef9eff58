"""Cross-modal retrieval served through LangChain's own interfaces.

`MultimodalRetriever` (a `BaseRetriever`) embeds a text or image query and
searches one named vector (`image` or `text`), both (`fused`), or both plus the
BM25 sparse vector of the captions (`hybrid`). Fusion and MMR run inside the
engine (qdrant-edge or a Qdrant server), in one query. The query path itself is
`mmrag.retrieval.search.CollectionSearch`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, PrivateAttr, SkipValidation

from mmrag.embedders.base import Embedder
from mmrag.retrieval.queries import Target
from mmrag.retrieval.search import DEFAULT_DENSE_WEIGHT, DEFAULT_SPARSE_WEIGHT, CollectionSearch
from mmrag.store.base import Store


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

    model_config = ConfigDict(arbitrary_types_allowed=True)

    # Typed as our protocols, not validated: any object with the methods will do (fakes in tests too).
    store: SkipValidation[Store] = Field(description="a mmrag.store.Store")
    embedder: SkipValidation[Embedder] = Field(description="a mmrag.embedders.Embedder")
    collection: str = "mmrag"
    k: int = 4
    target: Target = "image"  # IMAGE_VECTOR
    score_threshold: float | None = None
    filter: dict[str, Any] | None = None
    include_image: Literal["path", "data_uri"] | None = None
    corpus_root: Path | None = None
    exact: bool = True
    hnsw_ef: int | None = None
    query_type: Literal["auto", "text", "image"] = "auto"
    fusion: Literal["rrf", "dbsf"] = "rrf"
    sparse_weight: float = DEFAULT_SPARSE_WEIGHT
    dense_weight: float = DEFAULT_DENSE_WEIGHT
    mmr: bool = False
    mmr_lambda: float = 0.5
    mmr_candidates: int = 50
    min_relevance: float | None = None
    # JPEG draft size for image queries; None: the one the collection was ingested with.
    draft_size: int | None = None

    _root_cache: dict[str, Path | None] = PrivateAttr(default_factory=dict)
    _checked: set[str] = PrivateAttr(default_factory=set)
    _draft_cache: dict[str, int | None] = PrivateAttr(default_factory=dict)

    # --- BaseRetriever hooks ----------------------------------------------------------------
    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        return self.search(query, **kwargs)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        return await self.asearch(query, **kwargs)
