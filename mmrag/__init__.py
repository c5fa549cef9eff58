"""mmrag: multimodal retrieval for RAG.

CLIP-family embeddings of images and captions in Qdrant, served to LangChain
chains and agents. Heavy modules (torch, transformers) load on first use, so
`import mmrag` stays fast.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mmrag")  # one source of truth: pyproject.toml
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

from mmrag.lazy import lazy_exports

_EXPORTS = {
    "Settings": "mmrag.settings",
    "get_settings": "mmrag.settings",
    "load_embedder": "mmrag.embedders",
    "open_store": "mmrag.store",
    "EdgeStore": "mmrag.store",
    "QdrantClientStore": "mmrag.store",
    "run_ingest": "mmrag.ingest",
    "IngestOptions": "mmrag.ingest",
    "IngestReport": "mmrag.ingest",
    "MultimodalRetriever": "mmrag.retrieval",
    "MultimodalEmbeddings": "mmrag.retrieval",
    "ZeroShotClassifier": "mmrag.tasks.classify",
    "classify": "mmrag.tasks.classify",
    "image_similarity": "mmrag.tasks.classify",
    "image_text_similarity": "mmrag.tasks.classify",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


__getattr__ = lazy_exports(__name__, _EXPORTS)
