"""The query side: query decoding, the store search, and LangChain Documents.

query:  text / image ──▶ embedder ──▶ store search ──▶ Documents
"""

from __future__ import annotations

from mmrag.retrieval.documents import describe_path, document_from_point, image_content_block, image_mime_type
from mmrag.retrieval.embeddings import MultimodalEmbeddings
from mmrag.retrieval.queries import is_image_query, load_query_image
from mmrag.retrieval.retriever import MultimodalRetriever

__all__ = [
    "MultimodalEmbeddings",
    "MultimodalRetriever",
    "describe_path",
    "document_from_point",
    "image_content_block",
    "image_mime_type",
    "is_image_query",
    "load_query_image",
]
