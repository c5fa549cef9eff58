"""The argument parser of `mmrag`: every command, option, default and example."""

from __future__ import annotations

import argparse
from pathlib import Path

from mmrag.cli import commands as c


def _common(p: argparse.ArgumentParser, *, model: bool = True) -> None:
    p.add_argument("--collection", "-c", help="collection (or alias) name [MMRAG_COLLECTION]")
    p.add_argument("--home", type=Path, help="data directory of the embedded store [MMRAG_HOME]")
    if model:
        p.add_argument("--model", "-m", help="registry name, HF id, local dir or cn_clip:NAME [MMRAG_MODEL]")
        p.add_argument("--device", help="auto|cpu|cuda|mps [MMRAG_DEVICE]")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _job_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rebuild", action="store_true", help="build a new version beside the live one, then switch")
    p.add_argument("--migrate", action="store_true", help="with --rebuild: turn a plain collection into a versioned alias")
    p.add_argument("--keep", type=int, help="versions to keep after a rebuild (the live one counts)")
    p.add_argument("--prune", action=argparse.BooleanOptionalAction, default=None,
                   help="delete points of vanished files (default: the pipeline's policy)")
    p.add_argument("--strict", action="store_true", help="exit 4 when some files failed")
    p.add_argument("--quiet", "-q", action="store_true")
    p.add_argument("--home", type=Path)
    p.add_argument("--json", action="store_true")


def _label_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", help="comma-separated labels")
    p.add_argument("--labels-file", help="one label per line")
    p.add_argument("--templates", help="built-in template set: en, en-ensemble, zh, zh-ensemble")
    p.add_argument("--template", action="append", help="literal prompt template with {} (repeatable)")
    p.add_argument("--templates-file", type=Path, help="one template per line, or a JSON list")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmrag", description="Multimodal retrieval for RAG: CLIP embeddings in Qdrant.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="embed a folder of images (and captions) into a collection")
    p.add_argument("corpus", nargs="?", type=Path, help="folder of images (walked recursively)")
    p.add_argument("--manifest", type=Path, help="jsonl/csv/parquet with a path column (+caption, metadata)")
    p.add_argument("--include-unlisted", action="store_true", help="with --manifest: also index images of the folder it does not list")
    p.add_argument("--prune", action="store_true", help="delete points of files that no longer exist")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--workers", type=int, help="decode workers (0 = one per core)")
    p.add_argument("--decode-executor", choices=["auto", "thread", "process"],
                   help="decode pool: auto (processes on a GPU, threads on CPU) [MMRAG_DECODE_EXECUTOR]")
    p.add_argument("--torch-threads", type=int, help="CPU threads for the model (0 = torch default) [MMRAG_TORCH_THREADS]")
    p.add_argument("--quantize", choices=["int8"], help="dynamic int8 quantisation on CPU")
    p.add_argument("--fast-preprocess", action=argparse.BooleanOptionalAction, default=None,
                   help="JPEG draft-mode decoding of large JPEGs (default on; see README for its fidelity)")
    p.add_argument("--tag-labels", help="labels file (one per line) or comma list: auto-tag while ingesting")
    p.add_argument("--sparse-field", action="append", metavar="FIELD",
                   help="manifest text field BM25 indexes beside the caption; repeatable [MMRAG_SPARSE_FIELDS]")
    p.add_argument("--calibrate", action="store_true", help="after ingesting, record the no-match distribution")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    _common(p)
    p.set_defaults(func=c.cmd_ingest)

    p = sub.add_parser("search", help="text or image query; prints ranked hits")
    p.add_argument("query", nargs="?", help="text query")
    p.add_argument("--image", type=Path, help="image query")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--target", choices=["image", "text", "fused", "hybrid"], default="image",
                   help="image (default), text (captions), fused (both, engine RRF) or hybrid "
                        "(both + BM25 keywords of the captions; text queries)")
    p.add_argument("--filter", action="append", metavar="KEY=VALUE", help="payload filter; repeatable (AND)")
    p.add_argument("--score-threshold", type=float)
    p.add_argument("--fusion", choices=["rrf", "dbsf"], help="fusion of fused/hybrid [MMRAG_FUSION, default rrf]")
    p.add_argument("--mmr", action="store_true", help="diversify the hits (maximal marginal relevance, in the engine)")
    p.add_argument("--mmr-lambda", type=float, help="1 = relevance only, 0 = diversity only [MMRAG_MMR_LAMBDA, 0.5]")
    p.add_argument("--mmr-candidates", type=int, help="candidates MMR picks from [MMRAG_MMR_CANDIDATES, 50]")
    p.add_argument("--min-relevance", type=float, metavar="PERCENTILE",
                   help="drop hits no better than this percentile of unrelated prompts (needs `mmrag calibrate`)")
    p.add_argument("--hnsw", action="store_true", help="approximate search (exact is the default)")
    p.add_argument("--plot", type=Path, help="write the query and hits as a PNG grid")
    _common(p)
    p.set_defaults(func=c.cmd_search)

    p = sub.add_parser("facets", help="counts of the values of an indexed payload field (under --filter)")
    p.add_argument("key", help="payload field, e.g. tags or format")
    p.add_argument("--filter", action="append", metavar="KEY=VALUE", help="payload filter; repeatable (AND)")
    p.add_argument("--limit", type=int, default=20, help="most frequent values to show (default 20)")
    _common(p, model=False)
    p.set_defaults(func=c.cmd_facets)

    p = sub.add_parser("calibrate", help="record the scores unrelated prompts reach (for --min-relevance)")
    p.add_argument("--prompts", type=Path, help="file of unrelated prompts, one per line (default: built-in)")
    _common(p)
    p.set_defaults(func=c.cmd_calibrate)

    p = sub.add_parser("classify", help="zero-shot classification of images or folders")
    p.add_argument("paths", nargs="+", help="image files or folders")
    _label_options(p)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--plot", type=Path, help="write the first image with its top labels as a PNG")
    _common(p)
    p.set_defaults(func=c.cmd_classify)

    p = sub.add_parser("tag", help="write predicted labels into the payload of indexed images")
    _label_options(p)
    p.add_argument("--threshold", type=float, help="keep tags with probability >= P")
    p.add_argument("--top", type=int, default=3, help="at most N tags per image")
    _common(p)
    p.set_defaults(func=c.cmd_tag)

    p = sub.add_parser("similarity", help="cosine similarity of two images, or of an image and --text")
    p.add_argument("a", help="image")
    p.add_argument("b", nargs="?", help="second image")
    p.add_argument("--text", help="text to compare the image with")
    _common(p)
    p.set_defaults(func=c.cmd_similarity)

    p = sub.add_parser("dedup", help="groups of near-identical images in a collection")
    p.add_argument("--threshold", type=float, default=0.95)
    p.add_argument("--vector", choices=["image", "text"], default="image")
    p.add_argument("--limit-per-point", type=int, default=20)
    _common(p, model=False)
    p.set_defaults(func=c.cmd_dedup)

    p = sub.add_parser("eval", help="evaluate a model: zero-shot accuracy or retrieval recall")
    esub = p.add_subparsers(dest="eval_command", required=True)
    e = esub.add_parser("zeroshot", help="ImageFolder layout: one subfolder per class")
    e.add_argument("root", type=Path)
    e.add_argument("--label-map", type=Path, help="JSON {folder: label}")
    e.add_argument("--templates", help="built-in set: en, en-ensemble, zh, zh-ensemble")
    e.add_argument("--template", action="append", help="literal template with {} (repeatable)")
    e.add_argument("--out", type=Path, help="write the report as JSON")
    e.add_argument("--confusion-png", type=Path, help="write the confusion matrix as PNG")
    _common(e)
    e.set_defaults(func=c.cmd_eval_zeroshot)
    e = esub.add_parser("retrieval", help="recall@k, median rank and MRR over image-caption pairs")
    e.add_argument("--manifest", type=Path, required=True, help="jsonl/csv/parquet with path and caption")
    e.add_argument("--root", type=Path, help="folder the manifest paths are relative to")
    e.add_argument("--ks", default="1,5,10")
    e.add_argument("--out", type=Path, help="write the report as JSON")
    _common(e)
    e.set_defaults(func=c.cmd_eval_retrieval)

    p = sub.add_parser("run", help="run a pipeline definition (pipelines/NAME.yaml): incremental sync")
    p.add_argument("pipeline", type=Path)
    _job_options(p)
    p.set_defaults(func=c.cmd_run)

    p = sub.add_parser("reindex", help="incremental sync, or --rebuild with zero downtime, of a pipeline or collection")
    p.add_argument("target", help="pipeline YAML or collection (alias) name")
    p.add_argument("--root", type=Path, help="corpus folder (default: the one recorded in the collection)")
    p.add_argument("--manifest", type=Path)
    p.add_argument("--tag-labels", help="labels file or comma list")
    p.add_argument("--rollback", action="store_true", help="switch the alias back to the previous version")
    p.add_argument("--to", help="with --rollback: version number or NAME__vN")
    p.add_argument("--model", "-m", help="model for a rebuild (default: the collection's own)")
    p.add_argument("--gate", action="store_true",
                   help="with --rebuild: switch only if recall@k on held-out queries is no worse than live")
    p.add_argument("--gate-k", type=int, default=5, help="k of the gate's recall@k (default 5)")
    p.add_argument("--gate-queries", type=Path, help="jsonl of {query, expected path} (default: the corpus captions)")
    p.add_argument("--gate-margin", type=float, help="allowed recall drop, new vs live [MMRAG_GATE_MARGIN, 0]")
    _job_options(p)
    p.set_defaults(func=c.cmd_reindex)

    p = sub.add_parser("rollback", help="point an alias back at its previous version")
    p.add_argument("name")
    p.add_argument("--to", help="version number or NAME__vN")
    p.add_argument("--home", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=c.cmd_rollback)

    p = sub.add_parser("schedule", help="run pipelines on their cron schedules, one job at a time (foreground)")
    p.add_argument("paths", nargs="+", type=Path, help="pipeline files or folders")
    p.add_argument("--max-jobs", type=int, help="stop after N jobs (default: run forever)")
    p.add_argument("--home", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=c.cmd_schedule)

    p = sub.add_parser("export", help="write a collection's ids, vectors and payloads to parquet")
    p.add_argument("collection_name")
    p.add_argument("out", type=Path)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--home", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=c.cmd_export)

    p = sub.add_parser("import", help="load an export into this store without re-embedding")
    p.add_argument("file", type=Path)
    p.add_argument("--collection", "-c", help="target name (default: the exported collection's)")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--home", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=c.cmd_import)

    p = sub.add_parser("finetune", help="contrastive fine-tuning on image-caption pairs (CLIP objective)")
    p.add_argument("--manifest", type=Path, required=True, help="jsonl/csv/parquet with path + caption")
    p.add_argument("--out", type=Path, required=True, help="output directory (save_pretrained layout)")
    p.add_argument("--base", help="model to start from: registry name, HF id or local dir")
    p.add_argument("--from-scratch", choices=["tiny", "small", "base"], help="build a small CLIP instead")
    p.add_argument("--arch", choices=["clip", "chinese-clip"], default="clip", help="with --from-scratch")
    p.add_argument("--image-size", type=int, default=64, help="with --from-scratch")
    p.add_argument("--caption-column", default="caption")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup-ratio", type=float, default=0.05)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--train", default="all", help="all | projections | last:N")
    p.add_argument("--lora-rank", type=int, default=0, help="> 0: LoRA adapters (needs peft)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint-last")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=c.cmd_finetune)

    p = sub.add_parser("synth", help="write a synthetic captioned corpus of shapes (for trying mmrag out)")
    p.add_argument("out", type=Path)
    p.add_argument("-n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lang", choices=["en", "zh"], default="en", help="language of the sidecar captions")
    p.add_argument("--manifest", choices=["jsonl", "csv", "parquet"], help="also write a manifest")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=c.cmd_synth)

    p = sub.add_parser("models", help="list registered model names")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=c.cmd_models)

    p = sub.add_parser("collections", help="list collections with their model and size")
    _common(p, model=False)
    p.set_defaults(func=c.cmd_collections)
    return parser
