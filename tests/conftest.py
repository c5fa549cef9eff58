"""Shared fixtures: tiny random CLIP / Chinese-CLIP checkpoints, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a tiny random `CLIPModel` + `CLIPProcessor` (real CLIP BPE prefix)."""
    from mmrag.testing.tiny_models import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def tiny_chinese_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a tiny random `ChineseCLIPModel` + `ChineseCLIPProcessor` (cn_clip vocab)."""
    from mmrag.testing.tiny_models import make_tiny_chinese_clip

    return make_tiny_chinese_clip(tmp_path_factory.mktemp("tiny_chinese_clip"))
