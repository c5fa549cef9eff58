"""Embedding backends: registry, transformers CLIP / Chinese-CLIP adapter, cn_clip adapter.

`load_embedder(name)` is the entry point. Importing this package stays light:
torch/transformers load only when an embedder is built.
"""

from __future__ import annotations

from mmrag.embedders.base import BackendUnavailable, Embedder, ModelInfo
from mmrag.embedders.registry import (
    DEFAULT_MODEL,
    MODELS,
    ModelSpec,
    list_models,
    load_embedder,
    resolve_model,
)

__all__ = [
    "BackendUnavailable",
    "DEFAULT_MODEL",
    "Embedder",
    "MODELS",
    "ModelInfo",
    "ModelSpec",
    "list_models",
    "load_embedder",
    "resolve_model",
]
