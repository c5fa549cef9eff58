"""`mmrag repair`: rebuild a damaged collection beside the live one, then switch to it.

The new version is built by `mmrag.jobs.reindex.rebuild` (its lock, gate, atomic switch and
report) either from the corpus (the recorded `corpus_root`, or --root/--manifest) or from
an export file, without re-embedding. The gate compares the new version with the points
mmrag recorded as written, never with the damaged version: its count is what was lost,
and opening it may abort the process (a garbled id tracker). A plain collection is
migrated to an alias over versions (`name__vN`), as `reindex --rebuild --migrate` does.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mmrag.jobs.reindex import JobReport, JobSpec, RebuildGate, rebuild
from mmrag.jobs.transfer import import_collection, read_export_spec
from mmrag.store.integrity import recorded_points

__all__ = ["repair"]


@dataclasses.dataclass
class _ImportReport:
    """What `rebuild` reads from an ingest report, for an import."""

    collection: str
    written: int
    failed: list[Any] = dataclasses.field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"collection": self.collection, "source": "export", "indexed": self.written,
                "written": self.written, "failed": [], "failed_count": 0, "error": None}


def _from_export(path: Path) -> Any:
    def ingest(store: Any, embedder: Any, *, collection: str, **_: Any) -> _ImportReport:
        return _ImportReport(collection, import_collection(store, path, collection=collection))

    return ingest


def repair(
    collection: str,
    *,
    store: Any,
    home: Path | str,
    embedder: Any = None,
    root: Path | None = None,
    manifest: Path | None = None,
    from_export: Path | None = None,
    options: Any = None,
    gate: RebuildGate | None = None,
    keep: int = 2,
    progress: bool = False,
) -> JobReport:
    """Rebuild `collection` (alias or plain) from its corpus or `from_export`, and switch to it.

    `embedder` is needed for a corpus rebuild; an export carries its vectors and spec.
    `keep` counts the repaired version; the damaged one is kept as the rollback target
    when keep >= 2 (it is the first to be retired by the next rebuild).
    """
    real = store.resolve(collection)
    try:
        spec = store.get_spec(real)
    except Exception:  # an unreadable meta.json: the corpus must be given
        spec = None
    recorded = recorded_points(spec.to_metadata()) if spec is not None else None
    gate = dataclasses.replace(gate or RebuildGate(), reference_points=recorded or 0)
    if from_export is not None:
        exported = read_export_spec(from_export)
        embedder = SimpleNamespace(info=SimpleNamespace(model_id=exported.model_id, dim=exported.dim,
                                                        quantization=exported.quantization))
        job = JobSpec(collection=collection, keep_versions=keep)
        return rebuild(job, store=store, embedder=embedder, home=home, keep=keep, migrate=True, gate=gate,
                       ingest_fn=_from_export(Path(from_export)), progress=progress)
    if root is None and manifest is None:
        recorded_root = (spec.extra or {}).get("corpus_root") if spec is not None else None
        if not recorded_root:
            from mmrag.errors import UsageError

            raise UsageError(f"{collection!r} records no corpus folder: give --root/--manifest or --from-export FILE")
        root = Path(recorded_root)
    if embedder is None:
        raise ValueError("a repair from the corpus needs the collection's embedder")
    job = JobSpec(collection=collection, root=root, manifest=manifest, options=options, keep_versions=keep)
    return rebuild(job, store=store, embedder=embedder, home=home, keep=keep, migrate=True, gate=gate,
                   progress=progress)
