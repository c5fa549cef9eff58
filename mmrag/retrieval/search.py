"""The search behind `MultimodalRetriever`, without LangChain's retriever machinery.

`CollectionSearch` holds the query path (embed, filter, search, Documents); the retriever
mixes it into LangChain's `BaseRetriever`, and `CollectionSearcher` is the same path as a
plain dataclass for callers that need no Runnable (the CLI: `langchain_core.retrievers`
pulls in langsmith and its tracers, about 0.4 s of a cold `mmrag search`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from langchain_core.documents import Document

from mmrag.retrieval.documents import document_from_point
from mmrag.retrieval.queries import Query, Target, is_image_query, load_query_image
from mmrag.store.filters import filter_from_dict, merge_filters
from mmrag.store.schema import IMAGE_VECTOR, TEXT_VECTOR, check_model


class CollectionSearch:
    """Top-k hits from an mmrag collection as Documents; the subclass supplies the fields
    (store, embedder, collection, k, target, score_threshold, filter, include_image,
    corpus_root, exact, hnsw_ef, query_type) and the caches `_root_cache`, `_checked`."""

    # --- query embedding --------------------------------------------------------------
    def embed_query(self, query: Query, query_type: str | None = None) -> np.ndarray:
        kind = query_type or self.query_type
        if kind == "image" or (kind == "auto" and is_image_query(query)):
            return self.embedder.embed_images([load_query_image(query)])[0]
        if not isinstance(query, str):
            raise TypeError(f"a text query must be a str, got {type(query).__name__}")
        return self.embedder.embed_texts([query])[0]

    # --- search -------------------------------------------------------------------------
    def _search_args(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        unknown = set(kwargs) - {"k", "target", "score_threshold", "filter", "qdrant_filter", "include_image", "query_type"}
        if unknown:
            raise TypeError(f"unknown retriever arguments: {sorted(unknown)}")
        args = {
            "k": kwargs.get("k", self.k),
            "target": kwargs.get("target", self.target),
            "score_threshold": kwargs.get("score_threshold", self.score_threshold),
            # dict filters (LangChain-style) and ready qdrant Filters (CLI) are AND-ed
            "filter": merge_filters(
                filter_from_dict(self.filter), filter_from_dict(kwargs.get("filter")), kwargs.get("qdrant_filter")
            ),
            "include_image": kwargs.get("include_image", self.include_image),
            "query_type": kwargs.get("query_type"),
        }
        if args["target"] not in ("image", "text", "fused"):
            raise ValueError(f"target must be 'image', 'text' or 'fused', not {args['target']!r}")
        if args["target"] == "fused" and args["score_threshold"] is not None:
            # RRF scores are ranks, not cosines: a cosine threshold cannot apply to them.
            raise ValueError("score_threshold applies to cosine scores; it is not supported with target='fused'")
        return args

    def _documents(self, points: Sequence[Any], args: dict[str, Any], collection: str) -> list[Document]:
        root = self._corpus_root(collection) if args["include_image"] else None
        vector = None if args["target"] == "fused" else args["target"]
        docs = [
            document_from_point(p, vector_name=vector, include_image=args["include_image"], corpus_root=root)
            for p in points
        ]
        if args["target"] == "fused":
            for d in docs:
                d.metadata["vector"] = "fused"
        return docs

    def _corpus_root(self, collection: str) -> Path | None:
        if self.corpus_root is not None:
            return Path(self.corpus_root)
        if collection not in self._root_cache:
            spec = self.store.get_spec(collection)
            root = (spec.extra or {}).get("corpus_root") if spec else None
            self._root_cache[collection] = Path(root) if root else None
        return self._root_cache[collection]

    def _check_model(self, collection: str) -> None:
        """Refuse (SchemaMismatch) an embedder other than the one that filled `collection`."""
        if collection not in self._checked:
            check_model(self.store.get_spec(collection), self.embedder.info)
            self._checked.add(collection)

    def _search_kwargs(self, args: dict[str, Any]) -> dict[str, Any]:
        if args["target"] == "fused":
            return {"limit": args["k"], "query_filter": args["filter"], "exact": self.exact}
        return {
            "using": args["target"],
            "limit": args["k"],
            "query_filter": args["filter"],
            "score_threshold": args["score_threshold"],
            "exact": self.exact,
            "hnsw_ef": self.hnsw_ef,
        }

    def search(self, query: Query, **kwargs: Any) -> list[Document]:
        """Like `invoke`, but accepts image objects and per-call options directly."""
        args = self._search_args(kwargs)
        collection = self.store.resolve(self.collection)
        self._check_model(collection)
        vec = self.embed_query(query, args["query_type"]).tolist()
        if args["target"] == "fused":
            points = self.store.search_fused(
                collection, {IMAGE_VECTOR: vec, TEXT_VECTOR: vec}, **self._search_kwargs(args)
            )
        else:
            points = self.store.search(collection, vec, **self._search_kwargs(args))
        return self._documents(points, args, collection)

    async def asearch(self, query: Query, **kwargs: Any) -> list[Document]:
        args = self._search_args(kwargs)
        collection = await asyncio.to_thread(self.store.resolve, self.collection)
        await asyncio.to_thread(self._check_model, collection)
        # Model inference is CPU/GPU bound: keep it off the event loop.
        vec = (await asyncio.to_thread(self.embed_query, query, args["query_type"])).tolist()
        if args["target"] == "fused":
            points = await self.store.asearch_fused(
                collection, {IMAGE_VECTOR: vec, TEXT_VECTOR: vec}, **self._search_kwargs(args)
            )
        else:
            points = await self.store.asearch(collection, vec, **self._search_kwargs(args))
        return await asyncio.to_thread(self._documents, points, args, collection)


@dataclass
class CollectionSearcher(CollectionSearch):
    """`MultimodalRetriever`'s search as a plain object: same fields, same defaults, same results."""

    store: Any
    embedder: Any
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
    _root_cache: dict[str, Path | None] = field(default_factory=dict, repr=False)
    _checked: set[str] = field(default_factory=set, repr=False)
