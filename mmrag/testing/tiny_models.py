"""Tiny random CLIP / Chinese-CLIP checkpoints for tests (no downloads).

Each builder writes a directory that loads exactly like a hub checkpoint:
`CLIPModel.from_pretrained(d)` / `ChineseCLIPModel.from_pretrained(d)` and
`AutoProcessor.from_pretrained(d)`. Tokenizers are real (CLIP BPE prefix, cn_clip
BERT vocab), the weights are random but deterministic for a given seed.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from mmrag.training.scratch import build_model_dir


def make_tiny_clip(
    out_dir: str | Path,
    *,
    seed: int = 0,
    projection_dim: int = 32,
    image_size: int = 32,
    patch_size: int = 8,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    num_merges: int = 8000,
) -> Path:
    """Write a random `CLIPModel` + `CLIPProcessor` into `out_dir` and return it (`build_model_dir`)."""
    return build_model_dir(
        out_dir, arch="clip", hidden=hidden, layers=layers, heads=heads, mlp_ratio=4, projection_dim=projection_dim,
        patch_size=patch_size, image_size=image_size, num_merges=num_merges, seed=seed,
    )  # fmt: skip


def make_tiny_chinese_clip(
    out_dir: str | Path,
    *,
    seed: int = 0,
    projection_dim: int = 32,
    image_size: int = 32,
    patch_size: int = 8,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    keep: Iterable[str] | None = None,
) -> Path:
    """Write a random `ChineseCLIPModel` + `ChineseCLIPProcessor` into `out_dir`.

    The tokenizer is cn_clip's full Chinese BERT vocab unless `keep` reduces it
    (see `write_chinese_tokenizer`). Like the released OFA-Sys checkpoints, the image
    processor squashes the image to image_size x image_size (no center crop).
    """
    return build_model_dir(
        out_dir, arch="chinese-clip", hidden=hidden, layers=layers, heads=heads, mlp_ratio=4,
        projection_dim=projection_dim, patch_size=patch_size, image_size=image_size, keep=keep, seed=seed,
    )  # fmt: skip
