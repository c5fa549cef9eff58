"""`MultimodalEmbeddings`: LangChain `Embeddings` over an mmrag embedder, texts and images in one space."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from langchain_core.embeddings import Embeddings

from mmrag.embedders.base import Embedder
from mmrag.retrieval.queries import ImageQuery, load_query_image


class MultimodalEmbeddings(Embeddings):
    """LangChain `Embeddings` over an mmrag embedder: texts and images in one space.

    `MultimodalEmbeddings(model="clip-vit-b32")` loads through the registry
    (default: the `MMRAG_MODEL` setting); `MultimodalEmbeddings(embedder=...)`
    wraps one already loaded. Images are decoded by ingestion's rules; `draft_size`
    must be the JPEG draft size the collection was ingested with (None: full size,
    the default ingestion; with `fast_preprocess=True` it is the model's image size).
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        embedder: Embedder | None = None,
        device: str = "auto",
        draft_size: int | None = None,
        **load_kwargs: Any,
    ):
        if embedder is None:
            from mmrag.embedders import load_embedder

            if model is None:
                from mmrag.settings import Settings

                model = Settings().model

            embedder = load_embedder(model, device=device, **load_kwargs)
        self.embedder = embedder
        self.model = embedder.info.model_id
        if draft_size is None and load_kwargs.get("fast_preprocess"):
            draft_size = embedder.info.image_size
        self.draft_size = draft_size

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        return self.embedder.embed_texts(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embedder.embed_texts([text])[0].tolist()

    def embed_image(self, uris: Sequence[ImageQuery | str]) -> list[list[float]]:
        """One vector per image: LangChain's multimodal convention (`embed_image(uris=[...])`,
        as langchain-experimental's OpenCLIPEmbeddings and the multimodal vector stores call it).
        Paths, bytes, PIL images and data URIs are all accepted."""
        if isinstance(uris, (str, bytes, bytearray)) or not isinstance(uris, Sequence):
            raise TypeError("embed_image takes a list of images (uris=[...]); use embed_query_image for one")
        return self.embed_images(uris)

    def embed_query_image(self, image: ImageQuery | str) -> list[float]:
        """The vector of one image query."""
        return self.embedder.embed_images([load_query_image(image, draft_size=self.draft_size)])[0].tolist()

    def embed_images(self, images: Sequence[ImageQuery | str]) -> list[list[float]]:
        if not images:
            return []
        return self.embedder.embed_images([load_query_image(i, draft_size=self.draft_size) for i in images]).tolist()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await asyncio.to_thread(self.embed_query, text)

    async def aembed_image(self, uris: Sequence[ImageQuery | str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_image, uris)

    async def aembed_images(self, images: Sequence[ImageQuery | str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_images, images)
