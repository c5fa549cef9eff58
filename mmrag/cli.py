"""`mmrag` command line: parses arguments, calls the library, prints. Nothing else."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

EXIT_OK = 0
EXIT_FAILED = 1  # the run itself failed (store down, bad model, ...)
EXIT_USAGE = 2  # bad arguments or configuration


class CliError(Exception):
    """A user-facing error: printed without a traceback."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=2, default=str))


def _app(args: argparse.Namespace):
    from .app import App
    from .settings import Settings

    overrides = {k: v for k, v in {
        "home": getattr(args, "home", None),
        "collection": getattr(args, "collection", None),
        "device": getattr(args, "device", None),
        "batch_size": getattr(args, "batch_size", None),
        "workers": getattr(args, "workers", None),
        "quantize": getattr(args, "quantize", None),
        "fast_preprocess": getattr(args, "fast_preprocess", None) or None,
        "hnsw": getattr(args, "hnsw", None) or None,
    }.items() if v is not None}
    return App(Settings(**overrides))


def _collection(args: argparse.Namespace, app) -> str:
    return args.collection or app.settings.collection


# --- commands ------------------------------------------------------------------------------
def cmd_ingest(args: argparse.Namespace) -> int:
    from .ingest import IngestOptions, run_ingest

    app = _app(args)
    collection = _collection(args, app)
    embedder = app.embedder(args.model, collection=collection)
    if args.corpus is None and args.manifest is None:
        raise CliError("give a corpus folder, --manifest, or both", EXIT_USAGE)
    tag_labels = _read_labels(args.tag_labels) if args.tag_labels else None
    report = run_ingest(
        app.store,
        embedder,
        root=args.corpus,
        collection=collection,
        manifest=args.manifest,
        prune=args.prune,
        options=IngestOptions.from_settings(app.settings, embedder),
        progress=not args.json and not args.quiet,
        tag_labels=tag_labels,
        include_unlisted=args.include_unlisted,
    )
    if args.json:
        _print_json(report.to_dict())
    else:
        print(report.summary())
    return EXIT_OK if report.ok else EXIT_FAILED


def _retriever(args: argparse.Namespace, app, collection: str):
    from .retriever import MultimodalRetriever

    return MultimodalRetriever(
        store=app.store,
        embedder=app.embedder(args.model, collection=collection),
        collection=collection,
        k=args.k,
        target=args.target,
        exact=not app.settings.hnsw,
        hnsw_ef=app.settings.hnsw_ef if app.settings.hnsw else None,
        include_image="path" if getattr(args, "plot", None) else None,
    )


def cmd_search(args: argparse.Namespace) -> int:
    from .store.filters import filter_from_cli

    app = _app(args)
    collection = _collection(args, app)
    if app.store.get_spec(app.store.resolve(collection)) is None:
        raise CliError(f"collection {collection!r} does not exist; run `mmrag ingest <folder> --collection {collection}` first")
    if (args.query is None) == (args.image is None):
        raise CliError("give a text query or --image PATH (exactly one)", EXIT_USAGE)
    retriever = _retriever(args, app, collection)
    try:
        flt = filter_from_cli(args.filter or [])
    except ValueError as e:
        raise CliError(str(e), EXIT_USAGE) from e
    query: Any = Path(args.image) if args.image else args.query
    if args.image and not Path(args.image).is_file():
        raise CliError(f"query image not found: {args.image}", EXIT_USAGE)
    docs = retriever.search(
        query,
        query_type="image" if args.image else "text",
        qdrant_filter=flt,
        score_threshold=args.score_threshold,
    )
    hits = [
        {
            "rank": i + 1,
            "score": d.metadata["score"],
            "id": d.metadata["id"],
            "path": d.metadata["path"],
            "caption": d.metadata["payload"].get("caption"),
            "vector": d.metadata["vector"],
        }
        for i, d in enumerate(docs)
    ]
    if args.plot:
        from .plots import plot_search_results

        plot_search_results(
            str(args.image or args.query),
            [(d.metadata.get("image_path"), d.metadata["score"], d.metadata["payload"].get("caption")) for d in docs],
            Path(args.plot),
        )
    if args.json:
        _print_json({"collection": collection, "query": args.query, "image": str(args.image) if args.image else None,
                     "target": args.target, "hits": hits})
    else:
        if not hits:
            print("no hits")
        for h in hits:
            cap = f"  {h['caption']}" if h["caption"] else ""
            print(f"{h['rank']:>3}  {h['score']:.4f}  {h['path']}{cap}")
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from .embedders.registry import list_models

    models = list_models()
    if args.json:
        _print_json([m if isinstance(m, dict) else m.__dict__ for m in models])
    else:
        for m in models:
            d = m if isinstance(m, dict) else m.__dict__
            print(f"{d.get('name', ''):<28} {d.get('backend', ''):<16} {d.get('source', '')}")
    return EXIT_OK


def cmd_collections(args: argparse.Namespace) -> int:
    app = _app(args)
    store = app.store
    aliases = store.get_aliases()
    rows = []
    for name in sorted(store.list_collections()):
        spec = store.get_spec(name)
        rows.append({
            "name": name,
            "aliases": sorted(a for a, c in aliases.items() if c == name),
            "points": store.count(name),
            "model_id": spec.model_id if spec else None,
            "dim": spec.dim if spec else None,
            "schema_version": spec.schema_version if spec else None,
        })
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            alias = f" (alias: {', '.join(r['aliases'])})" if r["aliases"] else ""
            print(f"{r['name']}{alias}: {r['points']} points, model {r['model_id']}, dim {r['dim']}")
    return EXIT_OK


def _read_labels(path_or_list: str) -> list[str]:
    p = Path(path_or_list)
    if p.is_file():
        text = p.read_text(encoding="utf-8-sig")
        labels = [line.strip() for line in text.splitlines()]
    else:
        labels = [s.strip() for s in path_or_list.split(",")]
    labels = [label for label in labels if label and not label.startswith("#")]
    if not labels:
        raise CliError(f"no labels in {path_or_list!r}", EXIT_USAGE)
    return labels


# --- parser ------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser, *, model: bool = True) -> None:
    p.add_argument("--collection", "-c", help="collection (or alias) name [MMRAG_COLLECTION]")
    p.add_argument("--home", type=Path, help="data directory of the embedded store [MMRAG_HOME]")
    if model:
        p.add_argument("--model", "-m", help="registry name, HF id, local dir or cn_clip:NAME [MMRAG_MODEL]")
        p.add_argument("--device", help="auto|cpu|cuda|mps [MMRAG_DEVICE]")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


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
    p.add_argument("--quantize", choices=["int8"], help="dynamic int8 quantisation on CPU")
    p.add_argument("--fast-preprocess", action="store_true", help="JPEG draft-mode decoding (see README for fidelity)")
    p.add_argument("--tag-labels", help="labels file (one per line) or comma list: auto-tag while ingesting")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    _common(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("search", help="text or image query; prints ranked hits")
    p.add_argument("query", nargs="?", help="text query")
    p.add_argument("--image", type=Path, help="image query")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--target", choices=["image", "text", "fused"], default="image",
                   help="named vector to search: image (default), text (captions) or fused (both, RRF)")
    p.add_argument("--filter", action="append", metavar="KEY=VALUE", help="payload filter; repeatable (AND)")
    p.add_argument("--score-threshold", type=float)
    p.add_argument("--hnsw", action="store_true", help="approximate search (exact is the default)")
    p.add_argument("--plot", type=Path, help="write the query and hits as a PNG grid")
    _common(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("models", help="list registered model names")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("collections", help="list collections with their model and size")
    _common(p, model=False)
    p.set_defaults(func=cmd_collections)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except CliError as e:
        print(f"mmrag: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("mmrag: interrupted; re-run the same command to finish (nothing is duplicated)", file=sys.stderr)
        return 130
    except Exception as e:  # a run-level failure: one clear line, traceback with -v
        from .store.schema import SchemaMismatch

        if args.verbose:
            raise
        kind = "error" if isinstance(e, SchemaMismatch) else f"error ({type(e).__name__})"
        print(f"mmrag: {kind}: {e}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
