"""Facts about each model backend, once: its name, prompt language and text context length.

No imports from the rest of `mmrag.embedders`, so the registry and the adapters can
both use it without importing each other.
"""

from __future__ import annotations

from typing import Literal

Backend = Literal["hf-clip", "hf-chinese-clip", "cn_clip"]

CLIP_TEXT_LENGTH = 77  # OpenAI CLIP's context length (tokens, with start/end)
CHINESE_CLIP_TEXT_LENGTH = 52  # the context length Chinese-CLIP was trained with

MODEL_TYPE_TO_BACKEND: dict[str, Backend] = {"clip": "hf-clip", "chinese_clip": "hf-chinese-clip"}


def language_of(backend: str) -> str:
    """Default prompt language of a backend: Chinese-CLIP models (either adapter) are "zh"."""
    return "en" if backend == "hf-clip" else "zh"


def text_length_of(backend: str) -> int:
    return CLIP_TEXT_LENGTH if backend == "hf-clip" else CHINESE_CLIP_TEXT_LENGTH


def backend_from_config(config: dict, where: str) -> Backend:
    """The backend of a transformers config dict (its `model_type`); ValueError names `where`."""
    model_type = config.get("model_type")
    try:
        return MODEL_TYPE_TO_BACKEND[str(model_type)]
    except KeyError:
        raise ValueError(
            f"{where}: unsupported model_type {model_type!r}; expected one of {sorted(MODEL_TYPE_TO_BACKEND)}"
        ) from None
