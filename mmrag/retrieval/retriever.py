"""Cross-modal retrieval served through LangChain's own interfaces.

`MultimodalRetriever` (a `BaseRetriever`) embeds a text or image query and
searches one named vector (`image` or `text`) or both, fused with reciprocal
rank fusion. `MultimodalEmbeddings` (an `Embeddings`) lets the stock
`langchain_qdrant.QdrantVectorStore` work on mmrag collections too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, PrivateAttr

from mmrag.retrieval.queries import Target
from mmrag.retrieval.search import CollectionSearch
from mmrag.store.schema import IMAGE_VECTOR


class MultimodalRetriever(CollectionSearch, BaseRetriever):
    """Top-k hits from an mmrag collection as Documents.

    Modes: a text query against `target="image"` is text→image, against
    `"text"` text→caption; an image query gives image→image / image→caption;
    `"fused"` searches both vectors and merges them with RRF (one Document per image).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    store: Any = Field(description="a mmrag.store.Store")
    embedder: Any = Field(description="a mmrag.embedders.Embedder")
    collection: str = "mmrag"
    k: int = 4
    target: Target = IMAGE_VECTOR
    score_threshold: float | None = None
    filter: dict[str, Any] | None = None
    include_image: Literal["path", "data_uri"] | None = None
    corpus_root: Path | None = None
    exact: bool = True
    hnsw_ef: int | None = None
    query_type: Literal["auto", "text", "image"] = "auto"

    _root_cache: dict[str, Path | None] = PrivateAttr(default_factory=dict)
    _checked: set[str] = PrivateAttr(default_factory=set)

    # --- BaseRetriever hooks ----------------------------------------------------------------
    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        return self.search(query, **kwargs)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        return await self.asearch(query, **kwargs)
