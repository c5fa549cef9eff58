"""Reproduce the reference models shipped in mmrag/assets/reference/.

    python pipelines/train_reference.py                      # both variants, defaults below
    python pipelines/train_reference.py --variants en --n-train 2000 --epochs 1   # smoke run

Steps (all seeded):
1. render the synthetic training corpus (mmrag.training.synthetic, 64x64 PNGs + a
   manifest per language). 75% of the captions are the full scene caption, 15% the
   zero-shot prompt form "a photo of a red circle." and 10% "a photo of a small red
   circle." (first object), so the text tower learns the prompt template;
2. build a small random-init model (mmrag.training.scratch, "small" preset: CLIP with a
   1500-merge BPE vocab for English, Chinese-CLIP with a reduced BERT vocab for Chinese);
3. train it with mmrag.training.finetune (CLIP objective, AdamW, warmup + cosine);
4. evaluate on a held-out gallery of 500 images rendered with a seed different from
   training (mmrag.training.finetune.evaluate_synthetic): text->image recall@1/@5, where a hit
   is any retrieved image whose attributes equal the query's (i.e. the relevant set is
   every gallery image with the same caption; captions name shape, colour, size and
   position of every object plus the background, so duplicates are rare), and
   zero-shot accuracy over the 64 colour x shape classes on the single-object images
   with the prompt "a photo of a {color} {shape}." ("一张{颜色}{形状}的照片。");
5. write the model (fp16 safetensors, loads as fp32) to <out-root>/<name>/ and the
   figures plus the training record to <out-root>/<name>/metrics.json.

Targets: recall@1 >= 0.8, recall@5 >= 0.95, zero-shot >= 0.9.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmrag.training import synthetic  # noqa: E402
from mmrag.training.finetune import FinetuneConfig, evaluate_synthetic, finetune  # noqa: E402

VARIANTS = {
    "en": {"name": "clip-shapes-en", "arch": "clip"},
    "zh": {"name": "chinese-clip-shapes-zh", "arch": "chinese-clip"},
}
MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
)
TARGETS = {"t2i_recall@1": 0.8, "t2i_recall@5": 0.95, "zero_shot_accuracy": 0.9}


def training_caption(row: dict, lang: str, draw: float, prompt_fraction: float = 0.25) -> str:
    """Full caption, or for `prompt_fraction` of the rows the zero-shot prompt form
    ("a photo of a red circle." for 60% of those, "a photo of a small red circle." for 40%)."""
    scene = synthetic.Scene.from_dict(
        {
            "objects": [
                {k: row[k + suffix] for k in ("shape", "color", "size", "position")}
                for suffix in ("", "2")
                if row["shape" + suffix]
            ],
            "background": row["background"],
        }
    )
    if draw >= prompt_fraction:
        return synthetic.caption(scene, lang)
    return synthetic.short_caption(scene, lang, with_size=draw >= 0.6 * prompt_fraction)


def write_training_manifests(corpus: Path, langs: list[str], seed: int, prompt_fraction: float) -> dict[str, Path]:
    rows = [json.loads(line) for line in (corpus / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    draws = np.random.default_rng(seed).random(len(rows))
    out = {}
    for lang in langs:
        path = corpus / f"train_{lang}.jsonl"
        with open(path, "w", encoding="utf-8") as fh:
            for row, draw in zip(rows, draws):
                fh.write(json.dumps({"path": row["path"], "caption": training_caption(row, lang, draw, prompt_fraction)}, ensure_ascii=False) + "\n")
        out[lang] = path
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="en,zh", help="comma list of: en, zh")
    ap.add_argument("--out-root", type=Path, default=ROOT / "mmrag" / "assets" / "reference")
    ap.add_argument("--work-dir", type=Path, default=ROOT / "out" / "reference-work")
    ap.add_argument("--archive-dir", type=Path, default=None, help="also write <name>.tar.gz of each model here")
    ap.add_argument("--n-train", type=int, default=80_000)
    ap.add_argument("--train-seed", type=int, default=0)
    ap.add_argument("--eval-n", type=int, default=500)
    ap.add_argument("--eval-seed", type=int, default=20_240_917)
    ap.add_argument("--size", default="small", choices=["tiny", "small", "base"])
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--warmup-ratio", type=float, default=0.05)
    ap.add_argument("--val-fraction", type=float, default=0.02)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", default=None)
    ap.add_argument("--prompt-fraction", type=float, default=0.25, help="share of prompt-style training captions")
    ap.add_argument("--corpus-only", action="store_true", help="render the training corpus and stop")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    langs = [v.strip() for v in args.variants.split(",") if v.strip()]
    for lang in langs:
        if lang not in VARIANTS:
            ap.error(f"unknown variant {lang!r}")
    corpus = args.work_dir / "corpus"
    t0 = time.perf_counter()
    if not (corpus / "manifest.jsonl").is_file() or sum(1 for _ in open(corpus / "manifest.jsonl")) != args.n_train:
        shutil.rmtree(corpus, ignore_errors=True)
        synthetic.write_corpus(
            corpus, args.n_train, seed=args.train_seed, sidecars=False, manifest="jsonl",
            image_size=args.image_size, workers=args.workers,
        )  # fmt: skip
    print(f"corpus: {args.n_train} images in {time.perf_counter() - t0:.1f}s", flush=True)
    if args.corpus_only:
        return 0
    manifests = write_training_manifests(corpus, langs, args.train_seed, args.prompt_fraction)

    failed = False
    for lang in langs:
        variant = VARIANTS[lang]
        run_dir = args.work_dir / variant["name"]
        shutil.rmtree(run_dir, ignore_errors=True)
        config = FinetuneConfig(
            manifest=manifests[lang], out_dir=run_dir, from_scratch=args.size, arch=variant["arch"],
            image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio, min_lr_ratio=0.02,
            val_fraction=args.val_fraction, seed=args.train_seed, device=args.device, num_workers=args.workers,
            save_dtype="float16",
        )  # fmt: skip
        t1 = time.perf_counter()
        result = finetune(config, progress=not args.no_progress)
        train_s = time.perf_counter() - t1
        dest = args.out_root / variant["name"]
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        for name in MODEL_FILES:
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, dest / name)
        figures = evaluate_synthetic(dest, n=args.eval_n, seed=args.eval_seed, lang=lang, device="cpu")
        import torch

        record = {
            "model": variant["name"],
            "held_out": figures,
            "targets": TARGETS,
            "meets_targets": all(figures[k] >= v for k, v in TARGETS.items()),
            "training": {
                "n_train": args.n_train, "train_seed": args.train_seed, "size": args.size, "arch": variant["arch"],
                "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                "prompt_fraction": args.prompt_fraction, "eval_seed": args.eval_seed, "best_epoch": result.best_epoch,
                "pairs_per_second": round(result.pairs_per_second, 1), "wall_seconds": round(train_s, 1),
                "device": torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "cpu",
                "last_epoch": result.metrics[-1] if result.metrics else None,
            },
        }  # fmt: skip
        (dest / "metrics.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(json.dumps(record, indent=2, ensure_ascii=False), flush=True)
        failed |= not record["meets_targets"]
        if args.archive_dir is not None:
            args.archive_dir.mkdir(parents=True, exist_ok=True)
            with tarfile.open(args.archive_dir / f"{variant['name']}.tar.gz", "w:gz") as tar:
                tar.add(dest, arcname=variant["name"])
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
