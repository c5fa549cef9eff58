"""transformers adapter for CLIP (`CLIPModel`) and Chinese-CLIP (`ChineseCLIPModel`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmrag.embedders.backends import CHINESE_CLIP_TEXT_LENGTH, backend_from_config, language_of
from mmrag.embedders.base import BatchedImages, BatchedTexts, ModelInfo, pixel_batch
from mmrag.embedders.device import pick_device
from mmrag.embedders.transform import ClipTransform, ensure_rgb
from mmrag.embedders.tuning import is_out_of_memory, release_cached_memory

__all__ = ["HFClipEmbedder", "ensure_rgb", "l2_normalize", "projected_features", "quiet_transformers"]

log = logging.getLogger(__name__)

# Tokenizers saved without a limit report a huge sentinel as model_max_length.
_UNSET_MAX_LENGTH = 10_000


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' warnings for a moment.

    Without torchvision, transformers advises installing it when it falls back to the
    PIL image processors; this project must not install torchvision, so the advice is
    noise. Errors still show.
    """
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def projected_features(output: Any) -> torch.Tensor:
    """The projected embedding from `get_image_features` / `get_text_features`.

    transformers < 5 returns the tensor itself; 5.x returns a model output whose
    `pooler_output` holds the projected vector.
    """
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    raise TypeError(f"cannot find projected features in {type(output).__name__}: no tensor and no pooler_output")


def l2_normalize(features: torch.Tensor) -> np.ndarray:
    """float32 rows of unit length (computed in float32 even for fp16 models)."""
    feats = features.float()
    feats = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return feats.cpu().numpy().astype(np.float32, copy=False)


def _model_classes(backend: str):
    from transformers import ChineseCLIPModel, CLIPModel

    if backend == "hf-clip":
        return CLIPModel
    if backend == "hf-chinese-clip":
        return ChineseCLIPModel
    raise ValueError(f"HFClipEmbedder cannot load backend {backend!r}")


def _backend_of(source: str) -> str:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source)
    return backend_from_config(config.to_dict(), source)


class HFClipEmbedder(BatchedImages, BatchedTexts):
    """`Embedder` over a transformers CLIP / Chinese-CLIP checkpoint (hub id or directory)."""

    def __init__(
        self,
        source: str,
        *,
        model_id: str | None = None,
        backend: str | None = None,
        device: str = "auto",
        quantize: str | None = None,
        fast_preprocess: bool = False,
        batch_size: int = 32,
        text_batch_size: int = 128,
    ) -> None:
        from transformers import AutoProcessor

        if quantize is not None:
            # torch.ao's dynamic int8 is deprecated; int8 now runs through ONNX Runtime.
            raise ValueError(f"quantize={quantize!r} is not available on the torch backend; "
                             "load with backend='onnx' (or 'auto') for ONNX Runtime int8")
        if batch_size < 1 or text_batch_size < 1:
            raise ValueError("batch sizes must be >= 1")
        self.device = pick_device(device)
        backend = backend or _backend_of(source)
        model_cls = _model_classes(backend)

        model = model_cls.from_pretrained(source)
        model.eval()
        # read before any fp16 cast, which would round the temperature
        self._logit_scale = float(model.logit_scale.detach().float().exp().item())
        self.dtype = torch.float16 if self.device != "cpu" else torch.float32
        if self.device != "cpu":
            model = model.to(device=self.device, dtype=self.dtype)
        self.model = model

        with quiet_transformers():
            processor = AutoProcessor.from_pretrained(source)
        self.image_processor = processor.image_processor
        # The processor's own steps as a picklable table-driven transform, when they allow it.
        self.transform = ClipTransform.from_processor(self.image_processor)
        self.tokenizer = processor.tokenizer
        self.batch_size = batch_size
        self.text_batch_size = text_batch_size

        config = model.config
        text_positions = int(config.text_config.max_position_embeddings)
        limit = int(self.tokenizer.model_max_length)
        if limit >= _UNSET_MAX_LENGTH:
            limit = CHINESE_CLIP_TEXT_LENGTH if backend == "hf-chinese-clip" else text_positions
        self.max_text_length = min(limit, text_positions)
        self._uses_token_types = backend == "hf-chinese-clip"

        image_size = int(config.vision_config.image_size)
        extra: dict[str, Any] = {
            "preprocess": "fast" if fast_preprocess else "exact",
            "max_text_length": self.max_text_length,
            "dtype": "float16" if self.dtype == torch.float16 else "float32",
        }
        if fast_preprocess:
            extra["draft_size"] = image_size
        self.info = ModelInfo(
            model_id=model_id or source,
            dim=int(config.projection_dim),
            backend=backend,
            image_size=image_size,
            language=language_of(backend),
            quantization=None,
            extra={**extra, "runtime": "torch"},
        )

    # -- Embedder protocol ---------------------------------------------------

    @property
    def logit_scale(self) -> float:
        return self._logit_scale

    @property
    def draft_size(self) -> int | None:
        """Side to request from JPEG draft decoding when fast preprocessing is on, else None."""
        return self.info.extra.get("draft_size")

    @property
    def portable_preprocess(self) -> ClipTransform | None:
        """`preprocess` as a picklable object that needs neither torch nor transformers, or None."""
        return self.transform

    def preprocess(self, image: Image.Image) -> np.ndarray:
        # Bit-identical to the model's image processor (tested); thread-safe, no state.
        if self.transform is not None:
            return self.transform(image)
        # A processor the transform cannot mirror: call it on RGB made by ingestion's rule,
        # never by the processor's own conversion (a second rule).
        image = ensure_rgb(image)
        batch = self.image_processor(images=image, return_tensors="np")
        return np.asarray(batch["pixel_values"][0], dtype=np.float32)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        pixels = pixel_batch(pixels)
        if len(pixels) == 0:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        out = []
        start = 0
        with torch.inference_mode():
            while start < len(pixels):
                size = self.batch_size
                try:
                    out.append(self._image_vectors(pixels[start : start + size]))
                except Exception as exc:
                    if not is_out_of_memory(exc) or size == 1:
                        raise
                    # Out of device memory: halve the batch for this and every later call.
                    self.batch_size = size // 2
                    log.warning("out of memory at image batch %d on %s; using %d from now on", size, self.device, self.batch_size)
                    release_cached_memory(self.device)
                    continue
                start += size
        return np.concatenate(out, axis=0)

    def _image_vectors(self, pixels: np.ndarray) -> np.ndarray:
        chunk = torch.from_numpy(np.ascontiguousarray(pixels))
        if self.device.startswith("cuda"):
            # page-locked staging lets the copy run as DMA; the fp16 cast happens on the GPU
            chunk = chunk.pin_memory().to(self.device, non_blocking=True)
        chunk = chunk.to(device=self.device, dtype=self.dtype)
        return l2_normalize(projected_features(self.model.get_image_features(pixel_values=chunk)))

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenizer output for one batch: padded to its longest text, truncated to the model limit."""
        enc = self.tokenizer(
            list(texts),
            padding="longest",
            truncation=True,
            max_length=self.max_text_length,
            return_tensors="pt",
        )
        keys = ["input_ids", "attention_mask"] + (["token_type_ids"] if self._uses_token_types else [])
        return {k: enc[k].to(self.device) for k in keys if k in enc}

    def _token_lengths(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(texts, truncation=True, max_length=self.max_text_length)["input_ids"]]

    def _embed_text_batch(self, texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            return l2_normalize(projected_features(self.model.get_text_features(**self.tokenize(texts))))

    def __repr__(self) -> str:
        return f"HFClipEmbedder({self.info.model_id!r}, device={self.device!r}, dim={self.info.dim})"
