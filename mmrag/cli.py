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
        "decode_executor": getattr(args, "decode_executor", None),
        "torch_threads": getattr(args, "torch_threads", None),
        "quantize": getattr(args, "quantize", None),
        "fast_preprocess": getattr(args, "fast_preprocess", None),
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


def _emit(args: argparse.Namespace, report: Any) -> None:
    if args.json:
        _print_json(report.to_dict())
    else:
        print(report.format_table())


def _labels_arg(args: argparse.Namespace) -> list[str]:
    if bool(args.labels) == bool(args.labels_file):
        raise CliError("give --labels a,b,c or --labels-file FILE (exactly one)", EXIT_USAGE)
    return _read_labels(args.labels_file or args.labels)


def _templates_arg(args: argparse.Namespace) -> Any:
    # --template (repeatable) gives literal templates; --templates names a built-in set.
    return args.template or args.templates


def cmd_classify(args: argparse.Namespace) -> int:
    from .classify import classify_paths

    app = _app(args)
    report = classify_paths(
        app.embedder(args.model),
        args.paths,
        _labels_arg(args),
        templates=_templates_arg(args),
        templates_file=args.templates_file,
        top_k=args.top_k,
        batch_size=app.settings.batch_size,
        workers=app.settings.workers or 1,
        progress=not args.json,
        cache_dir=app.settings.home / "cache",
    )
    if args.plot:
        from .plots import plot_classification

        first = next((p for p in report.predictions if p.ok), None)
        if first is None:
            raise CliError("no image could be classified, nothing to plot")
        plot_classification(first.source, first.top, Path(args.plot))
    _emit(args, report)
    return EXIT_OK


def cmd_tag(args: argparse.Namespace) -> int:
    from .tagging import tag_collection

    app = _app(args)
    collection = _collection(args, app)
    report = tag_collection(
        app.store,
        collection,
        app.embedder(args.model, collection=collection),
        _labels_arg(args),
        templates=_templates_arg(args),
        threshold=args.threshold,
        top=args.top,
        progress=not args.json,
        cache_dir=app.settings.home / "cache",
    )
    _emit(args, report)
    return EXIT_OK


def cmd_similarity(args: argparse.Namespace) -> int:
    from .classify import similarity_report

    if (args.b is None) == (args.text is None):
        raise CliError("give a second image, or --text \"...\" (exactly one)", EXIT_USAGE)
    app = _app(args)
    for path in [args.a] + ([args.b] if args.b else []):
        if not Path(path).is_file():
            raise CliError(f"image not found: {path}", EXIT_USAGE)
    # A second argument that is not a file is read as text by similarity_report; --text makes that explicit.
    _emit(args, similarity_report(app.embedder(args.model), args.a, args.b if args.b else args.text))
    return EXIT_OK


def cmd_dedup(args: argparse.Namespace) -> int:
    from .dedup import dedup_report

    app = _app(args)
    collection = _collection(args, app)
    report = dedup_report(app.store, collection, threshold=args.threshold, vector=args.vector,
                          limit_per_point=args.limit_per_point, progress=not args.json)
    _emit(args, report)
    return EXIT_OK


def cmd_eval_zeroshot(args: argparse.Namespace) -> int:
    from .evaluate import eval_zeroshot

    app = _app(args)
    report = eval_zeroshot(app.embedder(args.model), args.root, label_map=args.label_map,
                           templates=_templates_arg(args), batch_size=app.settings.batch_size,
                           progress=not args.json, workers=app.settings.workers or 1,
                           cache_dir=app.settings.home / "cache")
    if args.out:
        report.write_json(args.out)
    if args.confusion_png:
        report.plot_confusion(args.confusion_png)
    _emit(args, report)
    return EXIT_OK


def cmd_eval_retrieval(args: argparse.Namespace) -> int:
    from .evaluate import eval_retrieval

    app = _app(args)
    ks = tuple(int(k) for k in args.ks.split(","))
    report = eval_retrieval(app.embedder(args.model), args.manifest, root=args.root, ks=ks,
                            batch_size=app.settings.batch_size, progress=not args.json,
                            workers=app.settings.workers or 1)
    if args.out:
        report.write_json(args.out)
    _emit(args, report)
    return EXIT_OK


def _job_result(args: argparse.Namespace, report: Any) -> int:
    if args.json:
        _print_json(report.to_dict())
    else:
        print(report.summary())
    return int(report.exit_code)


def _load_pipeline(path: Path) -> Any:
    import os

    from .jobs.pipeline import PipelineError, load_pipeline

    try:
        return load_pipeline(path, env=os.environ)
    except PipelineError as e:
        raise CliError(str(e), EXIT_USAGE) from e


def cmd_run(args: argparse.Namespace) -> int:
    from .ingest import IngestOptions
    from .jobs.reindex import run_pipeline

    pdef = _load_pipeline(args.pipeline)
    app = _app(args)
    embedder = app.embedder(pdef.model)
    report = run_pipeline(
        pdef, store=app.store, embedder=embedder, home=app.settings.home, rebuild_all=args.rebuild,
        options=IngestOptions.from_settings(app.settings, embedder), strict=args.strict,
        progress=not args.json and not args.quiet, prune=args.prune, keep=args.keep, migrate=args.migrate,
    )
    return _job_result(args, report)


def cmd_reindex(args: argparse.Namespace) -> int:
    from .ingest import IngestOptions
    from .jobs.reindex import JobSpec, rebuild, rollback, run_pipeline

    app = _app(args)
    target = args.target
    if target.endswith((".yaml", ".yml")) or Path(target).is_file():
        if args.rollback:
            target = _load_pipeline(Path(target)).collection_name
        else:
            pdef = _load_pipeline(Path(target))
            embedder = app.embedder(args.model or pdef.model)
            return _job_result(args, run_pipeline(
                pdef, store=app.store, embedder=embedder, home=app.settings.home, rebuild_all=args.rebuild,
                options=IngestOptions.from_settings(app.settings, embedder), strict=args.strict,
                progress=not args.json and not args.quiet, prune=args.prune, keep=args.keep, migrate=args.migrate,
            ))
    if args.rollback:
        return _job_result(args, rollback(target, store=app.store, home=app.settings.home, to=args.to))
    embedder = app.embedder(args.model, collection=target)
    root, manifest = args.root, args.manifest
    if root is None and manifest is None:
        # Re-index from where the collection was ingested from.
        spec = app.store.get_spec(app.store.resolve(target)) if app.store.collection_exists(target) else None
        recorded = (spec.extra or {}).get("corpus_root") if spec else None
        if not recorded:
            raise CliError(f"no --root/--manifest given and {target!r} records no corpus folder", EXIT_USAGE)
        root = Path(recorded)
    job = JobSpec(
        collection=target, root=root, manifest=manifest, prune=args.prune,
        options=IngestOptions.from_settings(app.settings, embedder),
        tag_labels=_read_labels(args.tag_labels) if args.tag_labels else None,
        keep_versions=args.keep or 2, model=args.model,
    )
    common = dict(store=app.store, embedder=embedder, home=app.settings.home, strict=args.strict,
                  progress=not args.json and not args.quiet)
    if args.rebuild:
        return _job_result(args, rebuild(job, keep=args.keep, migrate=args.migrate, **common))
    from .jobs.reindex import sync

    return _job_result(args, sync(job, prune=args.prune, **common))


def cmd_rollback(args: argparse.Namespace) -> int:
    from .jobs.reindex import rollback

    app = _app(args)
    return _job_result(args, rollback(args.name, store=app.store, home=app.settings.home, to=args.to))


def cmd_schedule(args: argparse.Namespace) -> int:
    import os

    from .ingest import IngestOptions
    from .jobs.pipeline import PipelineError, load_pipelines
    from .jobs.reindex import run_pipeline, run_scheduler

    try:
        pdefs = load_pipelines(list(args.paths), env=os.environ)
    except PipelineError as e:
        raise CliError(str(e), EXIT_USAGE) from e
    app = _app(args)

    def run_one(pdef: Any) -> Any:
        embedder = app.embedder(pdef.model)
        return run_pipeline(pdef, store=app.store, embedder=embedder, home=app.settings.home,
                            options=IngestOptions.from_settings(app.settings, embedder))

    def on_report(pdef: Any, report: Any) -> None:
        print(json.dumps(report.to_dict(), default=str) if args.json else report.summary(), flush=True)

    run_scheduler(pdefs, run_one, max_jobs=args.max_jobs, on_report=on_report)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from .transfer import export_collection

    app = _app(args)
    n = export_collection(app.store, args.collection_name, args.out, batch=args.batch)
    result = {"collection": args.collection_name, "out": str(args.out), "points": n}
    _print_json(result) if args.json else print(f"exported {n} points of {args.collection_name} to {args.out}")
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    from .transfer import import_collection

    app = _app(args)
    n = import_collection(app.store, args.file, collection=args.collection, batch=args.batch)
    result = {"file": str(args.file), "collection": args.collection, "points": n}
    _print_json(result) if args.json else print(f"imported {n} points from {args.file}")
    return EXIT_OK


def cmd_finetune(args: argparse.Namespace) -> int:
    from .finetune import FinetuneConfig, finetune

    if (args.base is None) == (args.from_scratch is None):
        raise CliError("give --base MODEL or --from-scratch SIZE (exactly one)", EXIT_USAGE)
    base = args.base
    if base is not None:
        # Registry names are accepted as bases too (clip-vit-b32 -> its HF id or bundled dir).
        from .embedders.registry import MODELS

        base = MODELS[base].load_path if base in MODELS else base
    config = FinetuneConfig(
        manifest=args.manifest, out_dir=args.out, base=base, from_scratch=args.from_scratch, arch=args.arch,
        image_size=args.image_size, caption_column=args.caption_column, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay,
        grad_accum=args.grad_accum, train=args.train, lora_rank=args.lora_rank, val_fraction=args.val_fraction,
        seed=args.seed, device=args.device, precision=args.precision, resume=args.resume,
    )
    result = finetune(config, progress=not args.json)
    summary = {
        "out_dir": str(result.out_dir), "best_epoch": result.best_epoch, "best_metric": result.best_metric,
        "pairs_per_second": round(result.pairs_per_second, 1), "epochs": result.metrics,
    }
    if args.json:
        _print_json(summary)
    else:
        for i, m in enumerate(result.metrics, 1):
            print(f"epoch {i}: " + "  ".join(f"{k}={v:.4f}" for k, v in m.items() if isinstance(v, (int, float))))
        print(f"best epoch {result.best_epoch} saved to {result.out_dir} ({result.pairs_per_second:.1f} pairs/s)")
        print(f"use it with: mmrag ingest <folder> --model {result.out_dir}")
    return EXIT_OK


def cmd_synth(args: argparse.Namespace) -> int:
    from .datasets.synthetic import write_corpus

    out = write_corpus(args.out, args.n, seed=args.seed, lang=args.lang, manifest=args.manifest,
                       image_size=args.image_size)
    result = {"out": str(out), "images": args.n, "lang": args.lang,
              "manifest": str(out / f"manifest.{args.manifest}") if args.manifest else None}
    if args.json:
        _print_json(result)
    else:
        print(f"wrote {args.n} captioned images to {out}" + (f" (manifest {result['manifest']})" if args.manifest else ""))
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from .embedders.registry import MODELS, list_models

    rows = [{"name": n, "backend": MODELS[n].backend, "source": MODELS[n].source, "language": MODELS[n].language}
            for n in list_models()]
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            print(f"{r['name']:<26} {r['backend']:<16} {r['source']}")
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

    p = sub.add_parser("classify", help="zero-shot classification of images or folders")
    p.add_argument("paths", nargs="+", help="image files or folders")
    _label_options(p)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--plot", type=Path, help="write the first image with its top labels as a PNG")
    _common(p)
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("tag", help="write predicted labels into the payload of indexed images")
    _label_options(p)
    p.add_argument("--threshold", type=float, help="keep tags with probability >= P")
    p.add_argument("--top", type=int, default=3, help="at most N tags per image")
    _common(p)
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser("similarity", help="cosine similarity of two images, or of an image and --text")
    p.add_argument("a", help="image")
    p.add_argument("b", nargs="?", help="second image")
    p.add_argument("--text", help="text to compare the image with")
    _common(p)
    p.set_defaults(func=cmd_similarity)

    p = sub.add_parser("dedup", help="groups of near-identical images in a collection")
    p.add_argument("--threshold", type=float, default=0.95)
    p.add_argument("--vector", choices=["image", "text"], default="image")
    p.add_argument("--limit-per-point", type=int, default=20)
    _common(p, model=False)
    p.set_defaults(func=cmd_dedup)

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
    e.set_defaults(func=cmd_eval_zeroshot)
    e = esub.add_parser("retrieval", help="recall@k, median rank and MRR over image-caption pairs")
    e.add_argument("--manifest", type=Path, required=True, help="jsonl/csv/parquet with path and caption")
    e.add_argument("--root", type=Path, help="folder the manifest paths are relative to")
    e.add_argument("--ks", default="1,5,10")
    e.add_argument("--out", type=Path, help="write the report as JSON")
    _common(e)
    e.set_defaults(func=cmd_eval_retrieval)

    p = sub.add_parser("run", help="run a pipeline definition (pipelines/NAME.yaml): incremental sync")
    p.add_argument("pipeline", type=Path)
    _job_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("reindex", help="incremental sync, or --rebuild with zero downtime, of a pipeline or collection")
    p.add_argument("target", help="pipeline YAML or collection (alias) name")
    p.add_argument("--root", type=Path, help="corpus folder (default: the one recorded in the collection)")
    p.add_argument("--manifest", type=Path)
    p.add_argument("--tag-labels", help="labels file or comma list")
    p.add_argument("--rollback", action="store_true", help="switch the alias back to the previous version")
    p.add_argument("--to", help="with --rollback: version number or NAME__vN")
    p.add_argument("--model", "-m", help="model for a rebuild (default: the collection's own)")
    _job_options(p)
    p.set_defaults(func=cmd_reindex)

    p = sub.add_parser("rollback", help="point an alias back at its previous version")
    p.add_argument("name")
    p.add_argument("--to", help="version number or NAME__vN")
    p.add_argument("--home", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("schedule", help="run pipelines on their cron schedules, one job at a time (foreground)")
    p.add_argument("paths", nargs="+", type=Path, help="pipeline files or folders")
    p.add_argument("--max-jobs", type=int, help="stop after N jobs (default: run forever)")
    p.add_argument("--home", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("export", help="write a collection's ids, vectors and payloads to parquet")
    p.add_argument("collection_name")
    p.add_argument("out", type=Path)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--home", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="load an export into this store without re-embedding")
    p.add_argument("file", type=Path)
    p.add_argument("--collection", "-c", help="target name (default: the exported collection's)")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--home", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_import)

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
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("synth", help="write a synthetic captioned corpus of shapes (for trying mmrag out)")
    p.add_argument("out", type=Path)
    p.add_argument("-n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lang", choices=["en", "zh"], default="en", help="language of the sidecar captions")
    p.add_argument("--manifest", choices=["jsonl", "csv", "parquet"], help="also write a manifest")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_synth)

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
