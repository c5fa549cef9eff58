"""Small randomly initialised CLIP / Chinese-CLIP models to train from scratch.

`build_scratch_model` writes a directory that loads like a hub checkpoint
(`CLIPModel.from_pretrained(d)`, `AutoProcessor.from_pretrained(d)`), with a real
tokenizer (a prefix of CLIP's BPE merges, or cn_clip's BERT vocab reduced to the
characters needed) so the vocabulary, and with it the model, stays a few MB.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from mmrag.embedders.backends import CHINESE_CLIP_TEXT_LENGTH, CLIP_TEXT_LENGTH
from mmrag.embedders.hf import quiet_transformers
from mmrag.embedders.tokenizers import vocab_size, write_chinese_tokenizer, write_clip_tokenizer

ScratchSize = Literal["tiny", "small", "base"]
ScratchArch = Literal["clip", "chinese-clip"]

# the limits of the real models, defined once in mmrag.embedders.backends
CLIP_TEXT_MAX_LENGTH = CLIP_TEXT_LENGTH
CHINESE_TEXT_MAX_LENGTH = CHINESE_CLIP_TEXT_LENGTH


@dataclass(frozen=True)
class ScratchPreset:
    hidden: int
    layers: int
    heads: int
    mlp_ratio: int
    projection_dim: int
    patch_size: int
    num_merges: int  # CLIP BPE merges kept: vocab = 514 + num_merges


PRESETS: dict[str, ScratchPreset] = {
    # ~0.1M params: unit tests
    "tiny": ScratchPreset(hidden=32, layers=2, heads=2, mlp_ratio=2, projection_dim=32, patch_size=16, num_merges=500),
    # ~2M params (~8 MB fp32): the reference models
    "small": ScratchPreset(hidden=128, layers=4, heads=4, mlp_ratio=4, projection_dim=128, patch_size=8, num_merges=1500),
    # ~10M params
    "base": ScratchPreset(hidden=256, layers=6, heads=8, mlp_ratio=4, projection_dim=256, patch_size=8, num_merges=8000),
}


def _default_chinese_keep() -> str:
    # Characters of the synthetic captions plus a block of frequent CJK characters,
    # so the reduced vocab still covers ordinary short phrases.
    from mmrag.training.synthetic import charset_zh

    common = (
        "的一是不了人我在有他这中大来上个国到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后"
        "小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长"
        "图片照张色形状颜红绿蓝黄紫橙白黑灰左右上下中间角边背景物体个"
    )
    return charset_zh() + common


def build_scratch_model(
    out_dir: str | Path,
    *,
    size: ScratchSize = "small",
    arch: ScratchArch = "clip",
    image_size: int = 64,
    seed: int = 0,
    keep_chars: Iterable[str] | None = None,
) -> Path:
    """Write a random-init model + processor into `out_dir` and return it.

    `size` picks a preset from `PRESETS`; `arch` is "clip" (`CLIPModel`, BPE
    tokenizer) or "chinese-clip" (`ChineseCLIPModel`, BERT tokenizer reduced to
    `keep_chars`, by default the synthetic captions' characters plus common ones).
    Weights depend only on `seed`; the caller's RNG state is left untouched.
    """
    if size not in PRESETS:
        raise ValueError(f"size must be one of {list(PRESETS)}, got {size!r}")
    if arch not in ("clip", "chinese-clip"):
        raise ValueError(f"arch must be 'clip' or 'chinese-clip', got {arch!r}")
    preset = PRESETS[size]
    if image_size % preset.patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of the patch size {preset.patch_size}")
    keep = None
    if arch == "chinese-clip":
        keep = list(keep_chars) if keep_chars is not None else list(_default_chinese_keep())
    return build_model_dir(
        out_dir, arch=arch, hidden=preset.hidden, layers=preset.layers, heads=preset.heads,
        mlp_ratio=preset.mlp_ratio, projection_dim=preset.projection_dim, patch_size=preset.patch_size,
        image_size=image_size, num_merges=preset.num_merges, keep=keep, seed=seed,
    )  # fmt: skip


def build_model_dir(
    out_dir: str | Path,
    *,
    arch: ScratchArch,
    hidden: int,
    layers: int,
    heads: int,
    mlp_ratio: int,
    projection_dim: int,
    patch_size: int,
    image_size: int,
    num_merges: int = 8000,
    keep: Iterable[str] | None = None,
    seed: int = 0,
) -> Path:
    """The one builder of random-init CLIP / Chinese-CLIP directories (scratch presets and test models).

    Writes the tokenizer (CLIP BPE with `num_merges`, or the Chinese BERT vocab reduced
    to `keep`), the model and a matching processor. Weights depend only on `seed`; the
    caller's RNG state is left untouched.
    """
    logging.getLogger("transformers").setLevel(logging.ERROR)  # no-torchvision fallback notices
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = dict(
        hidden_size=hidden, intermediate_size=hidden * mlp_ratio, num_hidden_layers=layers, num_attention_heads=heads
    )
    vision = dict(text, image_size=image_size, patch_size=patch_size, projection_dim=projection_dim)
    with torch.random.fork_rng(devices=[]), quiet_transformers():  # no torchvision: PIL processors are expected
        torch.manual_seed(seed)
        if arch == "clip":
            from transformers import CLIPConfig, CLIPModel

            write_clip_tokenizer(out, num_merges=num_merges, model_max_length=CLIP_TEXT_MAX_LENGTH)
            n_vocab = vocab_size(out)
            bos_id, eos_id = n_vocab - 2, n_vocab - 1  # <|startoftext|>, <|endoftext|>
            config = CLIPConfig(
                text_config=dict(
                    text, vocab_size=n_vocab, max_position_embeddings=CLIP_TEXT_MAX_LENGTH, projection_dim=projection_dim,
                    bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=eos_id,  # pooling takes the first <|endoftext|>
                ),
                vision_config=vision, projection_dim=projection_dim,
            )  # fmt: skip
            model: Any = CLIPModel(config)
        elif arch == "chinese-clip":
            from transformers import ChineseCLIPConfig, ChineseCLIPModel

            write_chinese_tokenizer(out, keep=keep, model_max_length=CHINESE_TEXT_MAX_LENGTH)
            config = ChineseCLIPConfig(
                text_config=dict(
                    text, vocab_size=vocab_size(out), max_position_embeddings=max(64, CHINESE_TEXT_MAX_LENGTH),
                    type_vocab_size=2, pad_token_id=0,
                ),
                vision_config=vision, projection_dim=projection_dim,
            )  # fmt: skip
            model = ChineseCLIPModel(config)
        else:
            raise ValueError(f"arch must be 'clip' or 'chinese-clip', got {arch!r}")
        save_with_processor(model.eval(), out, arch=arch, image_size=image_size)
    return out


def save_with_processor(model: Any, out: Path, *, arch: str, image_size: int) -> None:
    """`save_pretrained` the model with the tokenizer already in `out` and a matching image processor.

    CLIP resizes the shortest edge then centre-crops; Chinese-CLIP, like the released
    OFA-Sys checkpoints, squashes to the square input with no crop.
    """
    from transformers import (
        BertTokenizer,
        ChineseCLIPImageProcessor,
        ChineseCLIPProcessor,
        CLIPImageProcessor,
        CLIPProcessor,
        CLIPTokenizer,
    )

    model.save_pretrained(out)
    square = {"height": image_size, "width": image_size}
    if arch == "clip":
        processor = CLIPProcessor(
            image_processor=CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size=square),
            tokenizer=CLIPTokenizer.from_pretrained(out),
        )
    elif arch == "chinese-clip":
        processor = ChineseCLIPProcessor(
            image_processor=ChineseCLIPImageProcessor(size=square, crop_size=square, do_center_crop=False),
            tokenizer=BertTokenizer.from_pretrained(out),
        )
    else:
        raise ValueError(f"arch must be 'clip' or 'chinese-clip', not {arch!r}")
    processor.save_pretrained(out)


