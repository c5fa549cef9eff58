"""The argument parser of `mmrag`: every command, option, default and example."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mmrag.cli import commands as c
from mmrag.errors import exit_code_table

ENVIRONMENT = """\
environment:
  MMRAG_HOME, MMRAG_COLLECTION, MMRAG_MODEL, MMRAG_DEVICE, MMRAG_WORKERS, ... (see .env.example)
  QDRANT_URL, QDRANT_API_KEY   use a Qdrant server instead of the embedded store
  HF_HUB_OFFLINE=1             load hub models from the local cache only
  Only MMRAG_* and QDRANT_* names are read (also from ./.env)."""

# A few examples per command, shown at the end of its --help.
EXAMPLES: dict[str, str] = {
    "ingest": "mmrag ingest ./photos\nmmrag ingest ./photos -c products --model mmrag-shapes-en\n"
              "mmrag ingest ./shop --manifest shop.csv --prune -q",
    "search": "mmrag search \"a red square\" -k 5\nmmrag search --image query.png --filter format=png\n"
              "mmrag search \"boots\" --target fused --filter \"width>=500\" --json",
    "classify": "mmrag classify ./photos --labels cat,dog,car\nmmrag classify a.jpg --labels-file labels.txt --top-k 3",
    "tag": "mmrag tag --labels cat,dog,car -c photos\nmmrag tag --labels-file labels.txt --threshold 0.3 --top 2",
    "similarity": "mmrag similarity a.jpg b.jpg\nmmrag similarity a.jpg --text \"a red square\"",
    "dedup": "mmrag dedup -c photos\nmmrag dedup --threshold 0.98 --json",
    "eval": "mmrag eval zeroshot ./imagefolder\nmmrag eval retrieval --manifest pairs.jsonl --ks 1,5,10",
    "zeroshot": "mmrag eval zeroshot ./imagefolder --templates en-ensemble\n"
                "mmrag eval zeroshot ./imagefolder --out report.json --confusion-png cm.png",
    "retrieval": "mmrag eval retrieval --manifest pairs.jsonl\nmmrag eval retrieval --manifest pairs.csv --root ./images --ks 1,10",
    "run": "mmrag run pipelines/photos.yaml\nmmrag run pipelines/photos.yaml --rebuild --keep 2",
    "reindex": "mmrag reindex photos\nmmrag reindex photos --rebuild --model clip-vit-b16\nmmrag reindex photos --rollback",
    "rollback": "mmrag rollback photos\nmmrag rollback photos --to 3",
    "schedule": "mmrag schedule pipelines/\nmmrag schedule pipelines/photos.yaml --max-jobs 1",
    "export": "mmrag export photos photos.parquet",
    "import": "mmrag import photos.parquet\nmmrag import photos.parquet -c photos-copy",
    "finetune": "mmrag finetune --manifest pairs.jsonl --out ./my-clip --base clip-vit-b32\n"
                "mmrag finetune --manifest pairs.jsonl --out ./tiny --from-scratch tiny --epochs 3",
    "synth": "mmrag synth ./shapes -n 200\nmmrag synth ./shapes-zh --lang zh --manifest jsonl",
    "models": "mmrag models\nmmrag models --json",
    "collections": "mmrag collections\nmmrag collections --json",
    "facets": "mmrag facets tags -c photos\nmmrag facets format --filter tags=cat --json",
    "calibrate": "mmrag calibrate -c photos\nmmrag search \"a red circle\" -c photos --min-relevance 95",
    "verify": "mmrag verify photos\nmmrag verify photos --json",
    "repair": "mmrag repair photos\nmmrag repair photos --root ./photos\nmmrag repair photos --from-export photos.parquet",
    "serve": "mmrag serve -c photos\nMMRAG_API_KEY=secret mmrag serve -c photos --host 0.0.0.0 --port 8000",
    "mcp": "mmrag mcp -c photos        # an MCP server on stdio, for an agent's config",
    "completion": "mmrag completion bash > ~/.local/share/bash-completion/completions/mmrag\n"
                  "mmrag completion zsh > \"${fpath[1]}/_mmrag\"",
}


def epilog(command: str | None = None) -> str:
    """Examples (for a command), the environment, and the exit codes: the end of every --help."""
    parts = []
    if command and command in EXAMPLES:
        parts.append("examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[command].splitlines()))
    parts.append(ENVIRONMENT)
    parts.append("exit codes:\n" + exit_code_table())
    return "\n\n".join(parts)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Epilogs as written (examples keep their lines), defaults shown after each option."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or isinstance(action.default, list):
            return action.help  # "(default: None)" says nothing
        return super()._get_help_string(action)


def positive_int(text: str) -> int:
    """argparse type: an int >= 1 (so `-k -1` is a usage error, not a raw OverflowError)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _shared() -> argparse.ArgumentParser:
    # SUPPRESS: given before the command (`mmrag -v ingest`) the top-level value survives.
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="log more, and show tracebacks of errors")
    p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="no progress bars or status lines on stderr")
    return p


def _common(p: argparse.ArgumentParser, *, model: bool = True) -> None:
    p.add_argument("--collection", "-c", help="collection (or alias) name [MMRAG_COLLECTION]")
    p.add_argument("--home", type=Path, help="data directory of the embedded store [MMRAG_HOME]")
    if model:
        p.add_argument("--model", "-m", help="registry name, HF id, local dir or cn_clip:NAME [MMRAG_MODEL]")
        p.add_argument("--device", help="auto|cpu|cuda|mps [MMRAG_DEVICE]")
        p.add_argument("--backend", choices=["auto", "torch", "onnx"],
                       help="what runs the model: auto (ONNX Runtime on CPU, torch on GPU), torch or onnx [MMRAG_BACKEND]")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _job_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rebuild", action="store_true", help="build a new version beside the live one, then switch")
    p.add_argument("--migrate", action="store_true", help="with --rebuild: turn a plain collection into a versioned alias")
    p.add_argument("--keep", type=int, help="versions to keep after a rebuild (the live one counts)")
    p.add_argument("--prune", action=argparse.BooleanOptionalAction, default=None,
                   help="delete points of vanished files (default: the pipeline's policy)")
    p.add_argument("--strict", action="store_true", help="exit 4 when some files failed")
    p.add_argument("--home", type=Path, help="data directory of the embedded store [MMRAG_HOME]")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _label_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", help="comma-separated labels")
    p.add_argument("--labels-file", help="one label per line")
    p.add_argument("--templates", help="built-in template set: en, en-ensemble, zh, zh-ensemble")
    p.add_argument("--template", action="append", help="literal prompt template with {} (repeatable)")
    p.add_argument("--templates-file", type=Path, help="one template per line, or a JSON list")


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import PackageNotFoundError, version

    try:
        own_version = version("mmrag")
    except PackageNotFoundError:  # a source checkout that was never installed
        own_version = "unknown"
    parser = argparse.ArgumentParser(
        prog="mmrag", description="Multimodal retrieval for RAG: CLIP embeddings in Qdrant.",
        epilog=epilog(), formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mmrag {own_version}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more, and show tracebacks of errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or status lines on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    shared = _shared()

    def add(subparsers: Any, name: str, help: str, *, examples: str | None = None) -> argparse.ArgumentParser:
        return subparsers.add_parser(name, help=help, description=help, parents=[shared],
                                     epilog=epilog(examples or name), formatter_class=HelpFormatter)

    p = add(sub, "ingest", "embed a folder of images (and captions) into a collection")
    p.add_argument("corpus", nargs="?", type=Path, help="folder of images (walked recursively)")
    p.add_argument("--manifest", type=Path, help="jsonl/csv/parquet with a path column (+caption, metadata)")
    p.add_argument("--include-unlisted", action="store_true", help="with --manifest: also index images of the folder it does not list")
    p.add_argument("--prune", action="store_true", help="delete points of files that no longer exist")
    p.add_argument("--batch-size", type=positive_int, help="images per model call [MMRAG_BATCH_SIZE]")
    p.add_argument("--workers", type=int, help="decode workers (0 = one per core)")
    p.add_argument("--decode-executor", choices=["auto", "thread", "process"],
                   help="decode pool: auto (processes on a GPU, threads on CPU) [MMRAG_DECODE_EXECUTOR]")
    p.add_argument("--model-threads", "--torch-threads", dest="model_threads", type=int,
                   help="CPU threads for the model, torch or ONNX Runtime (0 = runtime default) [MMRAG_MODEL_THREADS]")
    p.add_argument("--quantize", choices=["int8"], help="int8 through ONNX Runtime dynamic quantisation, CPU only")
    p.add_argument("--fast-preprocess", action=argparse.BooleanOptionalAction, default=None,
                   help="JPEG draft-mode decoding of large JPEGs (default on; see README for its fidelity)")
    p.add_argument("--tag-labels", help="labels file (one per line) or comma list: auto-tag while ingesting")
    p.add_argument("--engine", choices=["local", "ray"],
                   help="local: one process; ray: Ray Data decode tasks and model actors [MMRAG_INGEST_ENGINE]")
    p.add_argument("--ray-address", help="with --engine ray: 'auto', 'ray://head:10001'; unset starts a local Ray [MMRAG_RAY_ADDRESS]")
    p.add_argument("--sparse-field", action="append", metavar="FIELD",
                   help="manifest text field BM25 indexes beside the caption; repeatable [MMRAG_SPARSE_FIELDS]")
    p.add_argument("--calibrate", action="store_true", help="after ingesting, record the no-match distribution")
    _common(p)
    p.set_defaults(func=c.cmd_ingest)

    p = add(sub, "search", "text or image query; prints ranked hits")
    p.add_argument("query", nargs="?", help="text query")
    p.add_argument("--image", type=Path, help="image query")
    p.add_argument("-k", type=positive_int, default=10, help="number of hits")
    p.add_argument("--target", choices=["image", "text", "fused", "hybrid"], default="image",
                   help="image (default), text (captions), fused (both, engine RRF) or hybrid "
                        "(both + BM25 keywords of the captions; text queries)")
    p.add_argument("--filter", action="append", metavar="KEY=VALUE", help="payload filter; repeatable (AND)")
    p.add_argument("--score-threshold", type=float, help="drop hits with a cosine below this")
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

    p = add(sub, "facets", "counts of the values of an indexed payload field (under --filter)")
    p.add_argument("key", help="payload field, e.g. tags or format")
    p.add_argument("--filter", action="append", metavar="KEY=VALUE", help="payload filter; repeatable (AND)")
    p.add_argument("--limit", type=int, default=20, help="most frequent values to show (default 20)")
    _common(p, model=False)
    p.set_defaults(func=c.cmd_facets)

    p = add(sub, "calibrate", "record the scores unrelated prompts reach (for --min-relevance)")
    p.add_argument("--prompts", type=Path, help="file of unrelated prompts, one per line (default: built-in)")
    _common(p)
    p.set_defaults(func=c.cmd_calibrate)

    p = add(sub, "classify", "zero-shot classification of images or folders")
    p.add_argument("paths", nargs="+", help="image files or folders")
    _label_options(p)
    p.add_argument("--top-k", type=positive_int, default=5, help="labels shown per image")
    p.add_argument("--plot", type=Path, help="write the first image with its top labels as a PNG")
    _common(p)
    p.set_defaults(func=c.cmd_classify)

    p = add(sub, "tag", "write predicted labels into the payload of indexed images (replaces earlier tags)")
    _label_options(p)
    p.add_argument("--threshold", type=float,
                   help="keep tags with probability >= P (default: 2/number of labels, at most 0.5; 0 keeps all --top)")
    p.add_argument("--top", type=int, default=3, help="at most N tags per image")
    _common(p)
    p.set_defaults(func=c.cmd_tag)

    p = add(sub, "similarity", "cosine similarity of two images, or of an image and --text")
    p.add_argument("a", help="image")
    p.add_argument("b", nargs="?", help="second image")
    p.add_argument("--text", help="text to compare the image with")
    _common(p)
    p.set_defaults(func=c.cmd_similarity)

    p = add(sub, "dedup", "groups of near-identical images in a collection")
    p.add_argument("--threshold", type=float, default=0.95, help="cosine at or above which two images are duplicates")
    p.add_argument("--vector", choices=["image", "text"], default="image", help="named vector to compare")
    p.add_argument("--limit-per-point", type=positive_int, default=20, help="neighbours looked at per point")
    _common(p, model=False)
    p.set_defaults(func=c.cmd_dedup)

    p = add(sub, "eval", "evaluate a model: zero-shot accuracy or retrieval recall")
    esub = p.add_subparsers(dest="eval_command", required=True)
    e = add(esub, "zeroshot", "ImageFolder layout: one subfolder per class")
    e.add_argument("root", type=Path, help="folder with one subfolder of images per class")
    e.add_argument("--label-map", type=Path, help="JSON {folder: label}")
    e.add_argument("--templates", help="built-in set: en, en-ensemble, zh, zh-ensemble")
    e.add_argument("--template", action="append", help="literal template with {} (repeatable)")
    e.add_argument("--out", type=Path, help="write the report as JSON")
    e.add_argument("--confusion-png", type=Path, help="write the confusion matrix as PNG")
    _common(e)
    e.set_defaults(func=c.cmd_eval_zeroshot)
    e = add(esub, "retrieval", "recall@k, median rank and MRR over image-caption pairs")
    e.add_argument("--manifest", type=Path, required=True, help="jsonl/csv/parquet with path and caption")
    e.add_argument("--root", type=Path, help="folder the manifest paths are relative to")
    e.add_argument("--ks", default="1,5,10", help="comma-separated k values of recall@k")
    e.add_argument("--out", type=Path, help="write the report as JSON")
    _common(e)
    e.set_defaults(func=c.cmd_eval_retrieval)

    p = add(sub, "run", "run a pipeline definition (pipelines/NAME.yaml): incremental sync")
    p.add_argument("pipeline", type=Path, help="pipeline YAML file")
    _job_options(p)
    p.set_defaults(func=c.cmd_run)

    p = add(sub, "reindex", "incremental sync, or --rebuild with zero downtime, of a pipeline or collection")
    p.add_argument("target", help="pipeline YAML or collection (alias) name")
    p.add_argument("--root", type=Path, help="corpus folder (default: the one recorded in the collection)")
    p.add_argument("--manifest", type=Path, help="jsonl/csv/parquet manifest (default: the recorded corpus)")
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

    p = add(sub, "rollback", "point an alias back at its previous version")
    p.add_argument("name", help="alias (collection) name")
    p.add_argument("--to", help="version number or NAME__vN")
    p.add_argument("--home", type=Path, help="data directory of the embedded store [MMRAG_HOME]")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=c.cmd_rollback)

    p = add(sub, "schedule", "run pipelines on their cron schedules, one job at a time (foreground)")
    p.add_argument("paths", nargs="+", type=Path, help="pipeline files or folders")
    p.add_argument("--max-jobs", type=int, help="stop after N jobs (default: run forever)")
    p.add_argument("--home", type=Path, help="data directory of the embedded store [MMRAG_HOME]")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=c.cmd_schedule)

    p = add(sub, "export", "write a collection's ids, vectors and payloads to parquet")
    p.add_argument("collection_name", help="collection (or alias) to export")
    p.add_argument("out", type=Path, help="parquet file to write")
    p.add_argument("--batch", type=positive_int, default=1024, help="points per read/write call")
    p.add_argument("--home", type=Path, help="data directory of the embedded store [MMRAG_HOME]")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=c.cmd_export)

    p = add(sub, "import", "load an export into this store without re-embedding")
    p.add_argument("file", type=Path, help="parquet file written by `mmrag export`")
    p.add_argument("--collection", "-c", help="target name (default: the exported collection's)")
    p.add_argument("--batch", type=positive_int, default=1024, help="points per read/write call")
    p.add_argument("--home", type=Path, help="data directory of the embedded store [MMRAG_HOME]")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=c.cmd_import)

    p = add(sub, "finetune", "contrastive fine-tuning on image-caption pairs (CLIP objective)")
    p.add_argument("--manifest", type=Path, required=True, help="jsonl/csv/parquet with path + caption")
    p.add_argument("--out", type=Path, required=True, help="output directory (save_pretrained layout)")
    p.add_argument("--base", help="model to start from: registry name, HF id or local dir")
    p.add_argument("--from-scratch", choices=["tiny", "small", "base"], help="build a small CLIP instead")
    p.add_argument("--arch", choices=["clip", "chinese-clip"], default="clip", help="with --from-scratch")
    p.add_argument("--image-size", type=int, default=64, help="with --from-scratch")
    p.add_argument("--caption-column", default="caption", help="manifest column holding the captions")
    p.add_argument("--epochs", type=positive_int, default=1, help="passes over the training pairs")
    p.add_argument("--batch-size", type=positive_int, default=64, help="pairs per step (the contrastive batch)")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (AdamW)")
    p.add_argument("--warmup-ratio", type=float, default=0.05, help="share of steps spent warming up")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay")
    p.add_argument("--grad-accum", type=positive_int, default=1, help="steps of gradient accumulation")
    p.add_argument("--train", default="all", help="all | projections | last:N")
    p.add_argument("--lora-rank", type=int, default=0, help="> 0: LoRA adapters (needs peft)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of pairs held out for validation")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto", help="training precision (auto: bf16 on GPUs that have it)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint-last")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=c.cmd_finetune)

    p = add(sub, "synth", "write a synthetic captioned corpus of shapes (for trying mmrag out)")
    p.add_argument("out", type=Path, help="folder to write")
    p.add_argument("-n", type=positive_int, default=200, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--lang", choices=["en", "zh"], default="en", help="language of the sidecar captions")
    p.add_argument("--manifest", choices=["jsonl", "csv", "parquet"], help="also write a manifest")
    p.add_argument("--image-size", type=positive_int, default=64, help="side of the square images, in pixels")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=c.cmd_synth)

    p = add(sub, "models", "list registered model names")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=c.cmd_models)

    p = add(sub, "collections", "list collections with their model and size")
    _common(p, model=False)
    p.set_defaults(func=c.cmd_collections)

    p = add(sub, "verify", "check a collection against mmrag's record: point count, finite unit vectors, payloads")
    p.add_argument("collection_name", nargs="?", metavar="collection", help="collection or alias [MMRAG_COLLECTION]")
    p.add_argument("--home", type=Path, help="data directory of the embedded store [MMRAG_HOME]")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=c.cmd_verify)

    p = add(sub, "repair", "rebuild a damaged collection beside the live one (from its corpus or an export), then switch")
    p.add_argument("collection_name", nargs="?", metavar="collection", help="collection or alias [MMRAG_COLLECTION]")
    p.add_argument("--root", type=Path, help="corpus folder (default: the one recorded in the collection)")
    p.add_argument("--manifest", type=Path, help="jsonl/csv/parquet manifest of the corpus")
    p.add_argument("--from-export", type=Path, metavar="FILE", help="rebuild from a `mmrag export` file, without re-embedding")
    p.add_argument("--model", "-m", help="model for a corpus rebuild (default: the collection's own)")
    p.add_argument("--keep", type=positive_int, default=2,
                   help="versions kept, the repaired one included (2 keeps the damaged one for rollback)")
    p.add_argument("--home", type=Path, help="data directory of the embedded store [MMRAG_HOME]")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=c.cmd_repair)

    p = add(sub, "completion", "print a shell completion script (bash, zsh or tcsh)")
    p.add_argument("shell", choices=["bash", "zsh", "tcsh"], help="the shell to complete for")
    p.set_defaults(func=c.cmd_completion, build_parser=build_parser)

    p = add(sub, "serve", "HTTP API, web search page and MCP tools (/mcp) for one collection")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--no-mcp", action="store_true", help="do not mount the MCP tools under /mcp")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn log level")
    _common(p)
    p.set_defaults(func=c.cmd_serve)

    p = add(sub, "mcp", "the MCP tools (search, similar, classify, get image) over stdio, for agents")
    _common(p)
    p.set_defaults(func=c.cmd_mcp)
    return parser
