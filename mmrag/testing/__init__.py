"""Helpers for tests: tiny, randomly initialised models that load like real ones."""

from __future__ import annotations

from mmrag.testing.tiny_models import make_tiny_chinese_clip, make_tiny_clip

__all__ = ["make_tiny_clip", "make_tiny_chinese_clip"]
