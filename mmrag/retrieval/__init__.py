"""The query side: query decoding, the store search, and LangChain Documents.

query:  text / image ──▶ embedder ──▶ store search ──▶ Documents

Names load on first use (PEP 562), so `mmrag.retrieval.search` (the CLI's query path)
does not pay for LangChain's retriever and embeddings modules.
"""

from __future__ import annotations

from mmrag.lazy import lazy_exports

_EXPORTS = {
    "CollectionSearcher": "mmrag.retrieval.search",
    "MultimodalEmbeddings": "mmrag.retrieval.embeddings",
    "MultimodalRetriever": "mmrag.retrieval.retriever",
    "MultimodalVectorStore": "mmrag.retrieval.vectorstore",
    "RemoteMultimodalRetriever": "mmrag.retrieval.remote",
    "describe_path": "mmrag.retrieval.documents",
    "document_from_point": "mmrag.retrieval.documents",
    "image_content_block": "mmrag.retrieval.documents",
    "image_mime_type": "mmrag.retrieval.documents",
    "is_image_query": "mmrag.retrieval.queries",
    "load_query_image": "mmrag.retrieval.queries",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
