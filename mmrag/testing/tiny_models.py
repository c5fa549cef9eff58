"""Tiny random CLIP / Chinese-CLIP checkpoints for tests (no downloads).

Each builder writes a directory that loads exactly like a hub checkpoint:
`CLIPModel.from_pretrained(d)` / `ChineseCLIPModel.from_pretrained(d)` and
`AutoProcessor.from_pretrained(d)`. Tokenizers are real (CLIP BPE prefix, cn_clip
BERT vocab), the weights are random but deterministic for a given seed.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from mmrag.embedders.backends import CHINESE_CLIP_TEXT_LENGTH, CLIP_TEXT_LENGTH
from mmrag.embedders.hf import quiet_transformers
from mmrag.embedders.tokenizers import vocab_size, write_chinese_tokenizer, write_clip_tokenizer
from mmrag.training.scratch import save_with_processor

# the limits of the real models, defined once in mmrag.embedders.backends
CLIP_TEXT_MAX_LENGTH = CLIP_TEXT_LENGTH
CHINESE_TEXT_MAX_LENGTH = CHINESE_CLIP_TEXT_LENGTH


def _seeded_init(seed: int):
    """Fork the global RNG so building a model does not disturb the caller's RNG."""
    devices: list[int] = []
    ctx = torch.random.fork_rng(devices=devices)
    ctx.__enter__()
    torch.manual_seed(seed)
    return ctx


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
    """Write a random `CLIPModel` + `CLIPProcessor` into `out_dir` and return it."""
    with quiet_transformers():  # no torchvision: the PIL image processor is expected
        from transformers import CLIPConfig, CLIPModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_clip_tokenizer(out, num_merges=num_merges, model_max_length=CLIP_TEXT_MAX_LENGTH)
    n_vocab = vocab_size(out)
    bos_id, eos_id = n_vocab - 2, n_vocab - 1  # <|startoftext|>, <|endoftext|>
    config = CLIPConfig(
        text_config=dict(
            vocab_size=n_vocab,
            hidden_size=hidden,
            intermediate_size=hidden * 4,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=CLIP_TEXT_MAX_LENGTH,
            projection_dim=projection_dim,
            bos_token_id=bos_id,
            eos_token_id=eos_id,
            pad_token_id=eos_id,
        ),
        vision_config=dict(
            hidden_size=hidden,
            intermediate_size=hidden * 4,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            image_size=image_size,
            patch_size=patch_size,
            projection_dim=projection_dim,
        ),
        projection_dim=projection_dim,
    )
    ctx = _seeded_init(seed)
    try:
        model = CLIPModel(config).eval()
    finally:
        ctx.__exit__(None, None, None)
    save_with_processor(model, out, arch="clip", image_size=image_size)
    return out


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
    with quiet_transformers():  # no torchvision: the PIL image processor is expected
        from transformers import ChineseCLIPConfig, ChineseCLIPModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_chinese_tokenizer(out, keep=keep, model_max_length=CHINESE_TEXT_MAX_LENGTH)
    n_vocab = vocab_size(out)
    config = ChineseCLIPConfig(
        text_config=dict(
            vocab_size=n_vocab,
            hidden_size=hidden,
            intermediate_size=hidden * 4,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=max(64, CHINESE_TEXT_MAX_LENGTH),
            type_vocab_size=2,
            pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=hidden,
            intermediate_size=hidden * 4,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            image_size=image_size,
            patch_size=patch_size,
            projection_dim=projection_dim,
        ),
        projection_dim=projection_dim,
    )
    ctx = _seeded_init(seed)
    try:
        model = ChineseCLIPModel(config).eval()
    finally:
        ctx.__exit__(None, None, None)
    save_with_processor(model, out, arch="chinese-clip", image_size=image_size)
    return out
