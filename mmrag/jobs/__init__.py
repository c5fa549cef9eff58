"""Scheduled re-indexing: pipeline files, per-collection locks, sync / rebuild / rollback jobs.

Names load on first use, so `import mmrag.jobs.lock` stays light (no qdrant-client, no pydantic).
"""

from __future__ import annotations

from mmrag.lazy import lazy_exports

_EXPORTS = {
    "CollectionLock": "mmrag.jobs.lock",
    "LockHeld": "mmrag.jobs.lock",
    "PipelineDef": "mmrag.jobs.pipeline",
    "PipelineError": "mmrag.jobs.pipeline",
    "load_pipeline": "mmrag.jobs.pipeline",
    "load_pipelines": "mmrag.jobs.pipeline",
    "next_run": "mmrag.jobs.pipeline",
    "ExitCode": "mmrag.jobs.reindex",
    "JobReport": "mmrag.jobs.reindex",
    "JobSpec": "mmrag.jobs.reindex",
    "list_versions": "mmrag.jobs.reindex",
    "rebuild": "mmrag.jobs.reindex",
    "rollback": "mmrag.jobs.reindex",
    "run_pipeline": "mmrag.jobs.reindex",
    "run_scheduler": "mmrag.jobs.reindex",
    "sync": "mmrag.jobs.reindex",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
