"""Adapter for the `cn_clip` package (OFA-Sys Chinese-CLIP, incl. RN50).

The package needs torchvision (its preprocessing uses torchvision transforms), which
this project does not install; it is imported lazily so that only this backend
fails when it is absent. `chinese-clip-vit-*` through transformers is the
recommended path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from mmrag.embedders.backends import CHINESE_CLIP_TEXT_LENGTH, language_of
from mmrag.embedders.base import BackendUnavailable, ModelInfo
from mmrag.embedders.device import pick_device

CN_CLIP_TEXT_LENGTH = CHINESE_CLIP_TEXT_LENGTH


def import_cn_clip() -> Any:
    """Import `cn_clip.clip`, turning any failure into a `BackendUnavailable`."""
    try:
        import cn_clip.clip as cn_clip_module
    except Exception as exc:  # ImportError, or torchvision's own errors when it is broken
        raise BackendUnavailable(
            f"the cn_clip backend is unavailable: importing cn_clip failed with "
            f"{type(exc).__name__}: {exc}. The cn_clip package needs torchvision (and its own "
            f"dependencies) installed and working. Recommended alternative: the transformers "
            f"Chinese-CLIP models, e.g. 'chinese-clip-vit-b16' (also chinese-clip-vit-l14, "
            f"chinese-clip-vit-l14-336, chinese-clip-vit-h14), which need no extra package."
        ) from exc
    return cn_clip_module


class CnClipEmbedder:
    """`Embedder` over `cn_clip.clip.load_from_name` checkpoints (e.g. "ViT-B-16", "RN50")."""

    def __init__(
        self,
        name: str,
        *,
        device: str = "auto",
        download_root: str | None = None,
        quantize: str | None = None,
        fast_preprocess: bool = False,
        batch_size: int = 32,
        text_batch_size: int = 128,
    ) -> None:
        cn_clip = import_cn_clip()
        import torch

        if quantize is not None:
            raise ValueError("quantize is not supported by the cn_clip backend")
        self._torch = torch
        self.device = pick_device(device)
        model, transform = cn_clip.load_from_name(name, device=self.device, download_root=download_root)
        self.model = model.eval()
        self._transform = transform
        self._tokenize = cn_clip.tokenize
        self.batch_size = batch_size
        self.text_batch_size = text_batch_size
        self._dtype = next(self.model.parameters()).dtype
        with torch.inference_mode():
            dim = int(self.model.encode_text(self._tokenize(["x"], CN_CLIP_TEXT_LENGTH).to(self.device)).shape[-1])
        image_size = int(cn_clip.utils._MODEL_INFO[name]["input_resolution"])
        extra: dict[str, Any] = {"preprocess": "fast" if fast_preprocess else "exact"}
        if fast_preprocess:
            extra["draft_size"] = image_size
        self.info = ModelInfo(
            model_id=f"cn_clip:{name}",
            dim=dim,
            backend="cn_clip",
            image_size=image_size,
            language=language_of("cn_clip"),
            quantization=None,
            extra=extra,
        )
        self._logit_scale = float(self.model.logit_scale.detach().float().exp().item())

    @property
    def logit_scale(self) -> float:
        return self._logit_scale

    def _normalize(self, feats: Any) -> np.ndarray:
        feats = feats.float()
        feats = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return feats.cpu().numpy().astype(np.float32, copy=False)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self._transform(image).numpy().astype(np.float32, copy=False)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        torch = self._torch
        if len(pixels) == 0:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        out = []
        with torch.inference_mode():
            for start in range(0, len(pixels), self.batch_size):
                chunk = torch.from_numpy(np.ascontiguousarray(pixels[start : start + self.batch_size], dtype=np.float32))
                out.append(self._normalize(self.model.encode_image(chunk.to(self.device, self._dtype))))
        return np.concatenate(out, axis=0)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        return self.embed_pixels(np.stack([self.preprocess(im) for im in images]))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        if len(texts) == 0:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.text_batch_size):
                tokens = self._tokenize(list(texts[start : start + self.text_batch_size]), CN_CLIP_TEXT_LENGTH)
                out.append(self._normalize(self.model.encode_text(tokens.to(self.device))))
        return np.concatenate(out, axis=0)
