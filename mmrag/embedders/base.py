"""The contract every embedding backend fulfils.

Backends live next to this file (one adapter per backend); the registry maps
friendly names and prefixes to them. Nothing here knows about the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from mmrag.errors import RunFailed


class BackendUnavailable(RunFailed):
    """An embedding backend cannot run in this environment (missing or broken package)."""


@dataclass(frozen=True)
class ModelInfo:
    """What a collection records about the model that filled it.

    Two embedders whose `fingerprint()` differ must never write into the same
    collection: their vectors live in different spaces.
    """

    model_id: str  # canonical id: HF id, "local-dir:/abs/path", or "cn_clip:ViT-B-16"
    dim: int
    backend: str  # "hf-clip" | "hf-chinese-clip" | "cn_clip"
    image_size: int  # square input side the vision tower expects
    language: str = "en"  # default prompt language: "en" or "zh"
    quantization: str | None = None  # None or "int8-onnx" (ORT dynamic int8)
    extra: dict[str, Any] = field(default_factory=dict)
    # What ran the model: "torch" or "onnx". Not part of the fingerprint: ONNX fp32 vectors equal
    # torch's within 1e-5 (tested), so both may fill one collection; int8 differs by `quantization`.
    runtime: str = "torch"

    def fingerprint(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "dim": self.dim,
            "backend": self.backend,
            "quantization": self.quantization,
        }


@runtime_checkable
class Embedder(Protocol):
    """Turns images and texts into L2-normalised float32 vectors of one space.

    Optional, looked up with getattr by ingestion: `portable_preprocess`, a picklable
    equivalent of `preprocess` that needs no model (lets decode run in worker
    processes), and `batch_size`, the images per model call.
    """

    info: ModelInfo
    device: str

    @property
    def logit_scale(self) -> float:
        """exp(learned temperature): multiplies cosine similarities into logits."""

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One RGB PIL image -> float32 CHW array ready for `embed_pixels`.

        Pure CPU work, thread-safe: ingestion runs it inside decode workers so
        that it overlaps model compute.
        """

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 from `preprocess` -> (N, dim) float32, unit norm."""

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Convenience: preprocess + embed_pixels, in batches."""

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(N, dim) float32, unit norm. Padded to the longest text in each batch."""


def pixel_batch(pixels: Any) -> np.ndarray:
    """Preprocessed images as one float32 (N, C, H, W) array; ValueError naming any other shape."""
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) pixels, got shape {pixels.shape}")
    return pixels


class BatchedImages:
    """`embed_images` for a backend that has `preprocess`, `embed_pixels`, `batch_size` and `info`:
    PIL images preprocessed and embedded one batch at a time (memory bounded by the batch)."""

    info: ModelInfo
    batch_size: int

    def preprocess(self, image: Image.Image) -> np.ndarray:
        raise NotImplementedError

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            out.append(self.embed_pixels(np.stack([self.preprocess(im) for im in chunk])))
        return np.concatenate(out, axis=0)


class BatchedTexts:
    """`embed_texts` for a backend that has `_token_lengths`, `_embed_text_batch`, `text_batch_size`
    and `info`: texts of similar token length are batched together, so that each batch pads to
    its own longest text and a few long captions no longer pad every batch."""

    info: ModelInfo
    text_batch_size: int

    def _token_lengths(self, texts: list[str]) -> list[int]:
        """Each text's token count after truncation to the model's limit."""
        raise NotImplementedError

    def _embed_text_batch(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 rows for one batch, padded to its longest text."""
        raise NotImplementedError

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed_texts takes a sequence of strings, not a single string")
        if len(texts) == 0:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        order = list(range(len(texts)))
        if len(texts) > self.text_batch_size:
            lengths = self._token_lengths(list(texts))
            order.sort(key=lambda i: lengths[i])
        out = np.empty((len(texts), self.info.dim), dtype=np.float32)
        for start in range(0, len(texts), self.text_batch_size):
            idx = order[start : start + self.text_batch_size]
            out[idx] = self._embed_text_batch([texts[i] for i in idx])
        return out
