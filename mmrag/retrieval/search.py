"""The search behind `MultimodalRetriever`, without LangChain's retriever machinery.

`CollectionSearch` holds the query path (embed, filter, one engine query, Documents) and
its fields; the retriever mixes it into LangChain's `BaseRetriever`, and the CLI uses it
alone as `CollectionSearcher`, since it needs no Runnable (importing
`langchain_core.retrievers` pulls in langsmith and its tracers, about 0.4 s of a cold
`mmrag search`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from langchain_core.documents import Document
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SkipValidation

from mmrag.embedders.base import Embedder
from mmrag.retrieval.calibration import relevance_threshold
from mmrag.retrieval.documents import document_from_point
from mmrag.retrieval.queries import TARGETS, Query, Target, is_image_query, load_query_image
from mmrag.store.base import MmrParams, Store
from mmrag.store.filters import filter_from_dict, merge_filters
from mmrag.store.schema import DRAFT_SIZE_KEY, IMAGE_VECTOR, SPARSE_VECTOR, TEXT_VECTOR, check_model

# Hybrid RRF weights. Qdrant's weighted RRF scores rank r (from 0) as 1 / ((r+1)/w + k-1),
# so with k=2 one list can add at most 1.0, which is what a point ranked first by both
# dense lists already has at weight 1 (1/2 + 1/2): no weight alone lets an exact match
# that CLIP misses win. Halving the dense weights (1/3 + 1/3 = 0.67 for first in both)
# and tripling BM25's (0.75 for its first) lets a rare code's caption come first, while
# a point both BM25 and CLIP rank high still beats either alone. Measured on the
# reference model in bench/hybrid.py.
DEFAULT_SPARSE_WEIGHT = 3.0
DEFAULT_DENSE_WEIGHT = 0.5
_FUSED = ("fused", "hybrid")


class CollectionSearch(BaseModel):
    """Top-k hits from an mmrag collection as Documents.

    The fields are declared here once: `MultimodalRetriever` mixes this model into
    LangChain's `BaseRetriever`, and the CLI uses it as it is (`CollectionSearcher`).
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

    # --- query embedding --------------------------------------------------------------
    def embed_query(self, query: Query, query_type: str | None = None, *, draft_size: int | None = None) -> np.ndarray:
        kind = query_type or self.query_type
        if kind == "image" or (kind == "auto" and is_image_query(query)):
            if draft_size is None:
                draft_size = self._draft_size(self.store.resolve(self.collection))
            return self.embedder.embed_images([load_query_image(query, draft_size=draft_size)])[0]
        if not isinstance(query, str):
            raise TypeError(f"a text query must be a str, got {type(query).__name__}")
        return self.embedder.embed_texts([query])[0]

    # --- search -------------------------------------------------------------------------
    def _search_args(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        unknown = set(kwargs) - {"k", "target", "score_threshold", "filter", "qdrant_filter", "include_image",
                                 "query_type", "mmr", "mmr_lambda", "mmr_candidates", "min_relevance", "fusion"}
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
            "fusion": kwargs.get("fusion", self.fusion),
            "min_relevance": kwargs.get("min_relevance", self.min_relevance),
        }
        use_mmr = kwargs.get("mmr", self.mmr)
        args["mmr"] = (
            MmrParams(kwargs.get("mmr_lambda", self.mmr_lambda), kwargs.get("mmr_candidates", self.mmr_candidates))
            if use_mmr
            else None
        )
        if args["target"] not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(map(repr, TARGETS))}, not {args['target']!r}")
        if args["target"] in _FUSED and args["score_threshold"] is not None:
            # RRF scores are ranks, not cosines: a cosine threshold cannot apply to them.
            raise ValueError(
                f"score_threshold applies to cosine scores; it is not supported with target={args['target']!r} "
                "(use min_relevance)"
            )
        mr = args["min_relevance"]
        if mr is not None and not 0.0 <= float(mr) <= 100.0:
            raise ValueError(f"min_relevance is a percentile of the null distribution, 0-100; got {mr}")
        return args

    def _documents(self, points: Sequence[Any], args: dict[str, Any], collection: str) -> list[Document]:
        root = self._corpus_root(collection) if args["include_image"] else None
        return [
            document_from_point(p, vector_name=args["target"], include_image=args["include_image"], corpus_root=root)
            for p in points
        ]

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

    def _draft_size(self, collection: str) -> int | None:
        """Decode query JPEGs as ingestion decoded the stored ones (recorded in the collection)."""
        if self.draft_size is not None:
            return self.draft_size or None
        if collection not in self._draft_cache:
            spec = self.store.get_spec(collection)
            recorded = (spec.extra or {}).get(DRAFT_SIZE_KEY) if spec else None
            self._draft_cache[collection] = int(recorded) if recorded else None
        return self._draft_cache[collection]

    def _thresholds(self, args: dict[str, Any], collection: str) -> dict[str, float]:
        """Per dense vector, the cosine a hit must exceed under `min_relevance` (empty without it)."""
        if args["min_relevance"] is None:
            return {}
        spec = self.store.get_spec(collection)
        names = (IMAGE_VECTOR, TEXT_VECTOR) if args["target"] in _FUSED else (args["target"],)
        return {n: relevance_threshold(spec, n, float(args["min_relevance"])) for n in names}

    def _plan(self, query: Query, vec: list[float], args: dict[str, Any], collection: str) -> tuple[str, dict[str, Any]]:
        """(store method, its keyword arguments) for one query."""
        target = args["target"]
        thresholds = self._thresholds(args, collection)
        if target not in _FUSED:
            threshold = args["score_threshold"]
            if target in thresholds:
                threshold = max(thresholds[target], threshold if threshold is not None else -1.0)
            return "search", {
                "vector": vec,
                "using": target,
                "limit": args["k"],
                "query_filter": args["filter"],
                "score_threshold": threshold,
                "exact": self.exact,
                "hnsw_ef": self.hnsw_ef,
                "mmr": args["mmr"],
            }
        kwargs: dict[str, Any] = {
            "vectors": {IMAGE_VECTOR: vec, TEXT_VECTOR: vec},
            "limit": args["k"],
            "query_filter": args["filter"],
            "exact": self.exact,
            "fusion": args["fusion"],
            "mmr": args["mmr"],
        }
        if thresholds:
            kwargs["score_thresholds"] = thresholds
        if target == "hybrid":
            if not isinstance(query, str) or is_image_query(query) or args["query_type"] == "image":
                raise ValueError("target='hybrid' needs a text query (BM25 matches words); use 'fused' for images")
            kwargs["text"] = query
            if args["fusion"] == "rrf":
                kwargs["weights"] = {
                    IMAGE_VECTOR: self.dense_weight,
                    TEXT_VECTOR: self.dense_weight,
                    SPARSE_VECTOR: self.sparse_weight,
                }
        return "search_fused", kwargs

    def search(self, query: Query, **kwargs: Any) -> list[Document]:
        """Like `invoke`, but accepts image objects and per-call options directly."""
        args = self._search_args(kwargs)
        collection = self.store.resolve(self.collection)
        self._check_model(collection)
        vec = self.embed_query(query, args["query_type"]).tolist()
        method, call = self._plan(query, vec, args, collection)
        first = call.pop("vector" if method == "search" else "vectors")
        points = getattr(self.store, method)(collection, first, **call)
        return self._documents(points, args, collection)

    async def asearch(self, query: Query, **kwargs: Any) -> list[Document]:
        args = self._search_args(kwargs)
        collection = await asyncio.to_thread(self.store.resolve, self.collection)
        await asyncio.to_thread(self._check_model, collection)
        # Model inference is CPU/GPU bound: keep it off the event loop.
        vec = (await asyncio.to_thread(self.embed_query, query, args["query_type"])).tolist()
        method, call = await asyncio.to_thread(self._plan, query, vec, args, collection)
        first = call.pop("vector" if method == "search" else "vectors")
        points = await getattr(self.store, "a" + method)(collection, first, **call)
        return await asyncio.to_thread(self._documents, points, args, collection)


# The CLI's name for it: the search without LangChain's retriever machinery.
CollectionSearcher = CollectionSearch
