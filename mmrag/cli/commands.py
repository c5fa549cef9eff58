"""The commands: each parses its arguments into one library call and prints the result.

Errors are raised as `mmrag.errors.MmragError`s; `mmrag.cli.main` turns them into exit codes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from mmrag.errors import EXIT_FAILED, EXIT_OK, NotFoundError, RunFailed, UsageError


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=2, default=str))


def _app(args: argparse.Namespace, *, announce: bool = True):
    from mmrag.app import App
    from mmrag.settings import Settings

    overrides = {k: v for k, v in {
        "home": getattr(args, "home", None),
        "collection": getattr(args, "collection", None),
        "device": getattr(args, "device", None),
        "batch_size": getattr(args, "batch_size", None),
        "workers": getattr(args, "workers", None),
        "decode_executor": getattr(args, "decode_executor", None),
        "model_threads": getattr(args, "model_threads", None),
        "backend": getattr(args, "backend", None),
        "quantize": getattr(args, "quantize", None),
        "fast_preprocess": getattr(args, "fast_preprocess", None),
        "hnsw": getattr(args, "hnsw", None) or None,
        "sparse_fields": getattr(args, "sparse_field", None),
        "fusion": getattr(args, "fusion", None),
        "mmr_lambda": getattr(args, "mmr_lambda", None),
        "mmr_candidates": getattr(args, "mmr_candidates", None),
        "min_relevance": getattr(args, "min_relevance", None),
    }.items() if v is not None}
    return App(Settings(**overrides), announce=_status if announce and not _quiet(args) else None)


def _quiet(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "quiet", False))


def _status(line: str) -> None:
    """A status line on stderr (stdout stays the result, for --json and pipes)."""
    print(line, file=sys.stderr, flush=True)


def _collection(args: argparse.Namespace, app) -> str:
    return args.collection or app.settings.collection


def _existing_collection(args: argparse.Namespace, app) -> str:
    """The collection (or alias) the command reads; NotFoundError, with the way to make it, if there is none."""
    collection = _collection(args, app)
    if not app.store.collection_exists(collection):
        raise NotFoundError(f"collection {collection!r} does not exist; run `mmrag ingest <folder> --collection {collection}` first")
    return collection


# --- commands ------------------------------------------------------------------------------
def cmd_ingest(args: argparse.Namespace) -> int:
    from mmrag.ingest import IngestOptions, check_corpus, run_ingest

    if args.corpus is None and args.manifest is None:
        raise UsageError("give a corpus folder, --manifest, or both")
    check_corpus(args.corpus, args.manifest)  # before the model loads: bad paths fail in a second
    tag_labels = _read_labels(args.tag_labels) if args.tag_labels else None
    app = _app(args)
    collection = _collection(args, app)
    embedder = app.embedder(args.model, collection=collection)
    tagger = None
    if tag_labels:
        from mmrag.tasks.tagging import ingest_tagger

        tagger = ingest_tagger(app.store, embedder, collection, tag_labels)
    kwargs: dict[str, Any] = {}
    ingest = run_ingest
    if (getattr(args, "engine", None) or app.settings.ingest_engine) == "ray":
        from mmrag.ingest.ray_engine import RayOptions, run_ingest_ray

        ingest = run_ingest_ray
        kwargs["ray_options"] = RayOptions.from_settings(
            app.settings, model=args.model or app.collection_model(collection) or app.settings.model,
            address=getattr(args, "ray_address", None))
    report = ingest(
        app.store,
        embedder,
        root=args.corpus,
        collection=collection,
        manifest=args.manifest,
        prune=args.prune,
        options=IngestOptions.from_settings(app.settings, embedder),
        progress=not args.json and not _quiet(args),
        tagger=tagger,
        include_unlisted=args.include_unlisted,
        **kwargs,
    )
    if args.calibrate and report.ok:
        from mmrag.retrieval.calibration import calibrate

        calibrate(app.store, embedder, report.collection)
    if report.notes and not _quiet(args):
        for note in report.notes:
            _status(f"mmrag: note: {note}")
    if args.json:
        _print_json(report.to_dict())
    else:
        print(report.summary())
    return EXIT_OK if report.ok else EXIT_FAILED


def _retriever(args: argparse.Namespace, app, collection: str):
    # The plain searcher, not the LangChain retriever: same results, 0.4 s less to import.
    from mmrag.retrieval.search import CollectionSearcher

    return CollectionSearcher(
        store=app.store,
        embedder=app.embedder(args.model, collection=collection),
        collection=collection,
        k=args.k,
        target=args.target,
        exact=not app.settings.hnsw,
        hnsw_ef=app.settings.hnsw_ef if app.settings.hnsw else None,
        include_image="path" if getattr(args, "plot", None) else None,
        fusion=app.settings.fusion,
        sparse_weight=app.settings.sparse_weight,
        dense_weight=app.settings.dense_weight,
        mmr=bool(getattr(args, "mmr", False)),
        mmr_lambda=app.settings.mmr_lambda,
        mmr_candidates=app.settings.mmr_candidates,
        min_relevance=app.settings.min_relevance,
    )


def _loading(args: argparse.Namespace) -> None:
    # Before the heavy imports (store client, model runtime): a person sees the command is working.
    if not _quiet(args):
        _status("loading model …")


_FILTER_KEY = re.compile(r"^\s*(?P<key>[^!<>=~]*)(?P<op>[!<>=~]+)(?P<value>.*)$", re.S)


def _cli_filters(pairs: list[str]) -> list[str]:
    """`--filter` strings as the store needs them, with a warning for each likely typo.

    `format` is stored upper case (Pillow's names: JPEG, PNG, ...), so its values are
    upper-cased here: `format=jpeg` matches. A key that is no payload field, or `k=>v`,
    would silently match nothing: say so, naming the indexed fields.
    """
    from mmrag.store.schema import PAYLOAD_FIELDS, PAYLOAD_INDEXES

    out = []
    for text in pairs:
        m = _FILTER_KEY.match(text)
        if m is None:
            out.append(text)
            continue
        key, op, value = m["key"].strip(), m["op"], m["value"]
        if key and key not in PAYLOAD_FIELDS:
            _status(f"mmrag: warning: {key!r} is not a field mmrag writes, so --filter {text!r} matches only "
                    f"points whose manifest set it; indexed fields: {', '.join(PAYLOAD_INDEXES)}")
        if op in ("=>", "=<"):
            _status(f"mmrag: warning: --filter {text!r} compares {key} with the text {op[1:] + value!r} and "
                    f"matches nothing; did you mean {key}{op[::-1]}{value}?")
        if key == "format":
            text = f"{m['key']}{op}{value.upper()}"
        out.append(text)
    return out


def cmd_search(args: argparse.Namespace) -> int:
    _loading(args)
    from mmrag.store.filters import filter_from_cli

    # Arguments first: a typo must not cost a model load.
    if (args.query is None) == (args.image is None):
        raise UsageError("give a text query or --image PATH (exactly one)")
    if args.image and not Path(args.image).is_file():
        raise UsageError(f"query image not found: {args.image}")
    try:
        flt = filter_from_cli(_cli_filters(args.filter or []))
    except ValueError as e:
        raise UsageError(str(e)) from e
    query: Any = Path(args.image) if args.image else args.query
    app = _app(args, announce=False)  # the loading line is already out
    collection = _existing_collection(args, app)
    retriever = _retriever(args, app, collection)
    try:
        docs = retriever.search(
            query,
            query_type="image" if args.image else "text",
            qdrant_filter=flt,
            score_threshold=args.score_threshold,
        )
    except ValueError as e:  # a bad combination of options (hybrid with an image, ...)
        raise UsageError(str(e)) from e
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
        from mmrag.tasks.plots import plot_search_results

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


def cmd_facets(args: argparse.Namespace) -> int:
    from mmrag.store.filters import filter_from_cli

    app = _app(args)
    collection = _existing_collection(args, app)
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    try:
        flt = filter_from_cli(_cli_filters(args.filter or []))
        hits = app.store.facet(app.store.resolve(collection), args.key, filter=flt, limit=args.limit)
    except ValueError as e:
        raise UsageError(str(e)) from e
    if args.json:
        _print_json({"collection": collection, "key": args.key, "hits": [{"value": h.value, "count": h.count}
                                                                          for h in hits]})
    else:
        if not hits:
            print(f"no values of {args.key!r}")
        for h in hits:
            print(f"{h.count:>8}  {h.value}")
    return EXIT_OK


def cmd_calibrate(args: argparse.Namespace) -> int:
    from mmrag.retrieval.calibration import calibrate

    app = _app(args)
    collection = _existing_collection(args, app)
    prompts = None
    if args.prompts:
        if not args.prompts.is_file():
            raise UsageError(f"prompts file not found: {args.prompts}")
        prompts = [ln.strip() for ln in args.prompts.read_text(encoding="utf-8").splitlines() if ln.strip()]
    record = calibrate(app.store, app.embedder(args.model, collection=collection), collection, prompts=prompts)
    if args.json:
        _print_json({"collection": collection, **record})
    else:
        print(f"calibrated {collection!r} with {record['prompts']} unrelated prompts")
        for name in ("image", "text"):
            if name in record:
                q = record[name]
                print(f"  {name:>5}: best cosine of unrelated prompts p50 {q[50]:.4f}  p95 {q[95]:.4f}  max {q[100]:.4f}")
    return EXIT_OK


def _emit(args: argparse.Namespace, report: Any) -> None:
    if args.json:
        _print_json(report.to_dict())
    else:
        print(report.format_table())


def _labels_arg(args: argparse.Namespace) -> list[str]:
    if bool(args.labels) == bool(args.labels_file):
        raise UsageError("give --labels a,b,c or --labels-file FILE (exactly one)")
    return _read_labels(args.labels_file or args.labels)


def _templates_arg(args: argparse.Namespace) -> Any:
    # --template (repeatable) gives literal templates; --templates names a built-in set.
    return args.template or args.templates


def _embedder(args: argparse.Namespace, app) -> Any:
    """The model for commands that read files, not the store: with -c, the collection's own
    (checked like every read path); else --model or MMRAG_MODEL."""
    return app.embedder(args.model, collection=args.collection)


def cmd_classify(args: argparse.Namespace) -> int:
    from mmrag.tasks.classify import classify_paths

    labels = _labels_arg(args)
    for path in args.paths:
        if not Path(path).exists():
            raise UsageError(f"not found: {path}")
    app = _app(args)
    report = classify_paths(
        _embedder(args, app),
        args.paths,
        labels,
        templates=_templates_arg(args),
        templates_file=args.templates_file,
        top_k=args.top_k,
        batch_size=app.settings.batch_size,
        workers=app.settings.workers or 1,
        progress=not args.json,
        cache_dir=app.settings.home / "cache",
    )
    if args.plot:
        from mmrag.tasks.plots import plot_classification

        first = next((p for p in report.predictions if p.ok), None)
        if first is None:
            raise RunFailed("no image could be classified, nothing to plot")
        plot_classification(first.source, first.top, Path(args.plot))
    _emit(args, report)
    return EXIT_OK


def cmd_tag(args: argparse.Namespace) -> int:
    from mmrag.tasks.tagging import default_threshold, tag_collection

    labels = _labels_arg(args)
    threshold = args.threshold if args.threshold is not None else default_threshold(len(labels))
    app = _app(args)
    collection = _collection(args, app)
    report = tag_collection(
        app.store,
        collection,
        app.embedder(args.model, collection=collection),
        labels,
        templates=_templates_arg(args),
        threshold=threshold,
        top=args.top,
        progress=not args.json,
        cache_dir=app.settings.home / "cache",
    )
    _emit(args, report)
    return EXIT_OK


def cmd_similarity(args: argparse.Namespace) -> int:
    from mmrag.tasks.classify import similarity_report

    if (args.b is None) == (args.text is None):
        raise UsageError("give a second image, or --text \"...\" (exactly one)")
    app = _app(args)
    for path in [args.a] + ([args.b] if args.b else []):
        if not Path(path).is_file():
            raise UsageError(f"image not found: {path}")
    # A second argument that is not a file is read as text by similarity_report; --text makes that explicit.
    _emit(args, similarity_report(_embedder(args, app), args.a, args.b if args.b else args.text))
    return EXIT_OK


def cmd_dedup(args: argparse.Namespace) -> int:
    from mmrag.tasks.dedup import dedup_report

    app = _app(args)
    collection = _collection(args, app)
    report = dedup_report(app.store, collection, threshold=args.threshold, vector=args.vector,
                          limit_per_point=args.limit_per_point, progress=not args.json)
    _emit(args, report)
    return EXIT_OK


def cmd_eval_zeroshot(args: argparse.Namespace) -> int:
    from mmrag.tasks.evaluate import eval_zeroshot

    if not Path(args.root).is_dir():
        raise UsageError(f"not a folder: {args.root}")
    app = _app(args)
    report = eval_zeroshot(_embedder(args, app), args.root, label_map=args.label_map,
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
    from mmrag.tasks.evaluate import eval_retrieval

    try:
        ks = tuple(int(k) for k in args.ks.split(","))
    except ValueError:
        raise UsageError(f"--ks takes comma-separated whole numbers, got {args.ks!r}") from None
    if not Path(args.manifest).is_file():
        raise UsageError(f"manifest not found: {args.manifest}")
    app = _app(args)
    report = eval_retrieval(_embedder(args, app), args.manifest, root=args.root, ks=ks,
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

    from mmrag.jobs.pipeline import PipelineError, load_pipeline

    try:
        return load_pipeline(path, env=os.environ)
    except PipelineError:
        raise


def cmd_run(args: argparse.Namespace) -> int:
    from mmrag.ingest import IngestOptions
    from mmrag.jobs.reindex import RebuildGate, run_pipeline

    pdef = _load_pipeline(args.pipeline)
    app = _app(args)
    embedder = app.embedder(pdef.model)
    report = run_pipeline(
        pdef, store=app.store, embedder=embedder, home=app.settings.home, rebuild_all=args.rebuild,
        options=IngestOptions.from_settings(app.settings, embedder), strict=args.strict,
        progress=not args.json and not _quiet(args), prune=args.prune, keep=args.keep, migrate=args.migrate,
        gate=RebuildGate.from_settings(app.settings, strict=args.strict),
    )
    return _job_result(args, report)


def _gate_arg(args: argparse.Namespace, app) -> Any:
    if not getattr(args, "gate", False):
        return None
    if not args.rebuild:
        raise UsageError("--gate applies to --rebuild (it decides whether the new version goes live)")
    from mmrag.jobs.gate import EvalGate

    margin = args.gate_margin if args.gate_margin is not None else app.settings.gate_margin
    if args.gate_k < 1 or not 0.0 <= margin <= 1.0:
        raise UsageError("--gate-k must be >= 1 and --gate-margin within [0, 1]")
    return EvalGate(k=args.gate_k, margin=margin, queries=args.gate_queries)


def cmd_reindex(args: argparse.Namespace) -> int:
    from mmrag.ingest import IngestOptions
    from mmrag.jobs.reindex import JobSpec, RebuildGate, rebuild, rollback, run_pipeline

    app = _app(args)
    gate = RebuildGate.from_settings(app.settings, strict=args.strict)
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
                progress=not args.json and not _quiet(args), prune=args.prune, keep=args.keep, migrate=args.migrate,
                gate=gate,
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
            raise UsageError(f"no --root/--manifest given and {target!r} records no corpus folder")
        root = Path(recorded)
    job = JobSpec(
        collection=target, root=root, manifest=manifest, prune=args.prune,
        options=IngestOptions.from_settings(app.settings, embedder),
        tag_labels=_read_labels(args.tag_labels) if args.tag_labels else None,
        keep_versions=args.keep or 2, model=args.model, eval_gate=_gate_arg(args, app),
    )
    common = dict(store=app.store, embedder=embedder, home=app.settings.home, strict=args.strict,
                  progress=not args.json and not _quiet(args))
    if args.rebuild:
        return _job_result(args, rebuild(job, keep=args.keep, migrate=args.migrate, gate=gate, **common))
    from mmrag.jobs.reindex import sync

    return _job_result(args, sync(job, prune=args.prune, **common))


def cmd_rollback(args: argparse.Namespace) -> int:
    from mmrag.jobs.reindex import rollback

    app = _app(args)
    return _job_result(args, rollback(args.name, store=app.store, home=app.settings.home, to=args.to))


def cmd_schedule(args: argparse.Namespace) -> int:
    import os

    from mmrag.ingest import IngestOptions
    from mmrag.jobs.pipeline import PipelineError, load_pipelines
    from mmrag.jobs.reindex import run_pipeline, run_scheduler

    try:
        pdefs = load_pipelines(list(args.paths), env=os.environ)
    except PipelineError:
        raise
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
    from mmrag.jobs.transfer import export_collection

    app = _app(args)
    n = export_collection(app.store, args.collection_name, args.out, batch=args.batch)
    result = {"collection": args.collection_name, "out": str(args.out), "points": n}
    _print_json(result) if args.json else print(f"exported {n} points of {args.collection_name} to {args.out}")
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    from mmrag.jobs.transfer import import_collection

    app = _app(args)
    n = import_collection(app.store, args.file, collection=args.collection, batch=args.batch)
    result = {"file": str(args.file), "collection": args.collection, "points": n}
    _print_json(result) if args.json else print(f"imported {n} points from {args.file}")
    return EXIT_OK


def cmd_finetune(args: argparse.Namespace) -> int:
    from mmrag.training.finetune import FinetuneConfig, finetune

    if (args.base is None) == (args.from_scratch is None):
        raise UsageError("give --base MODEL or --from-scratch SIZE (exactly one)")
    base = args.base
    if base is not None:
        # Registry names are accepted as bases too (clip-vit-b32 -> its HF id or bundled dir).
        from mmrag.embedders.registry import MODELS

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
        "skipped": [{"path": f.rel_path, "reason": f.reason} for f in result.skipped],
    }
    if args.json:
        _print_json(summary)
    else:
        for f in result.skipped:
            print(f"skipped {f.rel_path}: {f.reason}")
        for i, m in enumerate(result.metrics, 1):
            print(f"epoch {i}: " + "  ".join(f"{k}={v:.4f}" for k, v in m.items() if isinstance(v, (int, float))))
        print(f"best epoch {result.best_epoch} saved to {result.out_dir} ({result.pairs_per_second:.1f} pairs/s)")
        print(f"use it with: mmrag ingest <folder> --model {result.out_dir}")
    return EXIT_OK


def cmd_synth(args: argparse.Namespace) -> int:
    from mmrag.training.synthetic import write_corpus

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
    from mmrag.embedders.registry import MODELS, list_models

    rows = [{"name": n, "backend": MODELS[n].backend, "source": MODELS[n].source, "language": MODELS[n].language}
            for n in list_models()]
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            print(f"{r['name']:<26} {r['backend']:<16} {r['source']}")
    return EXIT_OK


def cmd_collections(args: argparse.Namespace) -> int:
    from mmrag.service import collections

    rows = collections(_app(args).store)
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            alias = f" (alias: {', '.join(r['aliases'])})" if r["aliases"] else ""
            size = f"{r['points']} points" if r["busy"] is None else "busy (open in another process)"
            print(f"{r['name']}{alias}: {size}, model {r['model_id']}, dim {r['dim']}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from mmrag.store.integrity import verify_collection

    app = _app(args, announce=False)
    report = verify_collection(app.store, args.collection_name or app.settings.collection)
    _print_json(report.to_dict()) if args.json else print(report.summary())
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_repair(args: argparse.Namespace) -> int:
    from mmrag.ingest import IngestOptions
    from mmrag.jobs.reindex import RebuildGate
    from mmrag.jobs.repair import repair

    app = _app(args)
    name = args.collection_name or app.settings.collection
    embedder = options = None
    if args.from_export is None:
        embedder = app.embedder(args.model, collection=name)
        options = IngestOptions.from_settings(app.settings, embedder)
    report = repair(name, store=app.store, home=app.settings.home, embedder=embedder, root=args.root,
                    manifest=args.manifest, from_export=args.from_export, options=options, keep=args.keep,
                    gate=RebuildGate.from_settings(app.settings), progress=not args.json and not _quiet(args))
    return _job_result(args, report)


def cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    print(shtab.complete(args.build_parser(), shell=args.shell))  # the parser passes itself in: no import circle
    return EXIT_OK


def _service(args: argparse.Namespace):
    from mmrag.service import SearchService

    app = _app(args)
    collection = _existing_collection(args, app)
    if args.model:
        app.embedder(args.model)  # an explicit model wins over the collection's own
    return app, SearchService.from_app(app, collection)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from mmrag.server import create_app

    app, service = _service(args)
    api = create_app(app, service=service, mcp=not args.no_mcp)
    print(f"mmrag: serving {service.collection!r} on http://{args.host}:{args.port}/ (API docs at /docs)", flush=True)
    uvicorn.run(api, host=args.host, port=args.port, log_level=args.log_level)
    app.close()
    return EXIT_OK


def cmd_mcp(args: argparse.Namespace) -> int:
    from mmrag.server.mcp_tools import build_mcp

    app, service = _service(args)
    try:
        build_mcp(service).run("stdio")
    finally:
        app.close()
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
        raise UsageError(f"no labels in {path_or_list!r}")
    return labels
