"""Re-indexing jobs: incremental sync, zero-downtime rebuild, rollback, schedule.

Readers always query the *alias* `name`; the data lives in versioned
collections `name__v1`, `name__v2`, ... behind it.

* `sync`: incremental ingest (new files added, changed files re-embedded,
  deleted files pruned when the policy says so) into the collection the alias
  points at. The first sync of a new name builds `name__v1` and creates the
  alias, so a later rebuild never has to migrate anything.
* `rebuild`: ingest everything into a fresh `name__vN` (N = 1 + the highest
  version that exists) beside the live one, validate it (has points, spec
  matches the embedder), then switch the alias in one atomic step. Readers see
  the old version until the switch and the new one after it; there is no
  moment without data. A failed rebuild deletes its half-built version and
  never touches the alias; a version whose job was killed (no completion mark
  `mmrag_version` in its metadata) is never a rollback target and is removed
  by the next rebuild. Older versions are kept for `rollback`, up to
  `keep` versions in all (the live one included); the rest are deleted.
* `rollback`: point the alias back at the previous version.

Every job takes the collection's lock (`CollectionLock`), and writes a JSON
report to `home/reports/<name>/<UTC timestamp>.json`.

Exit codes (`JobReport.exit_code`, for cron and Kubernetes):
  0 ok — also a *partial* run (some files could not be read; they are listed
    in the report) unless `strict=True`;
  1 the run failed (store/model error, rebuild failed validation);
  2 bad configuration (invalid pipeline file, model does not match the
    collection, plain collection in the way of a rebuild without `migrate`);
  3 another job holds the collection's lock;
  4 partial with `strict=True`.

Migrating a plain collection: if `name` is a real collection (made by
`mmrag ingest --collection name`), a server cannot hold an alias of the same
name beside it. `rebuild(..., migrate=True)` then (1) builds and validates
`name__vN` while the plain collection keeps serving, (2) deletes the plain
collection, (3) immediately creates the alias `name -> name__vN`. Between (2)
and (3) — one round trip — queries to `name` fail; the plain collection's data
is not kept for rollback. Without `migrate=True` the rebuild refuses and says
so. Run the migration once, at a quiet time; every later rebuild is seamless.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import IntEnum
from pathlib import Path
from typing import Any

from mmrag.embedders.base import Embedder
from mmrag.jobs.lock import CollectionLock, LockHeld
from mmrag.jobs.pipeline import PipelineDef, next_run
from mmrag.store.base import Store
from mmrag.store.schema import SchemaMismatch

log = logging.getLogger(__name__)

__all__ = [
    "ExitCode",
    "GateResult",
    "JobReport",
    "RebuildGate",
    "JobSpec",
    "list_versions",
    "rebuild",
    "rollback",
    "run_pipeline",
    "run_scheduler",
    "sync",
    "version_name",
]

IngestFn = Callable[..., Any]

# Collection-metadata key set on a version once it is fully built and validated.
COMPLETE_KEY = "mmrag_version"


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    CONFIG = 2
    LOCKED = 3
    PARTIAL = 4


class _Invalid(Exception):
    """A configuration problem found while running (exit code 2)."""


class _Failed(Exception):
    """The run failed after starting (exit code 1)."""


class _StrictRefused(_Failed):
    """--strict and some files failed: the rebuild does not switch (status partial, exit code 4)."""


# --- the gate a rebuilt version must pass before it goes live ----------------------------------
@dataclass(frozen=True)
class GateResult:
    passed: bool
    reasons: list[str]
    new_points: int
    live_points: int | None
    failed_files: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RebuildGate:
    """Size checks on a rebuilt version before the switch (a corpus that vanished mid-run must not go live).

    `min_share`: the new version holds at least this share of the live version's points.
    `max_failed`: at most this many files failed (None: no limit). `strict`: no failed file at all.
    """

    min_share: float = 0.98
    max_failed: int | None = None
    strict: bool = False
    # `mmrag repair`: compare with the points mmrag recorded, not with the damaged live version
    # (whose count is what was lost, and whose shard may abort the process when opened).
    reference_points: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_share <= 1.0:
            raise ValueError(f"rebuild min_share must be within [0, 1], got {self.min_share}")
        if self.max_failed is not None and self.max_failed < 0:
            raise ValueError(f"rebuild max_failed must be >= 0, got {self.max_failed}")

    @classmethod
    def from_settings(cls, settings: Any, *, strict: bool = False) -> RebuildGate:
        return cls(min_share=settings.rebuild_min_share, max_failed=settings.rebuild_max_failed, strict=strict)

    def check(self, *, new_points: int, live_points: int | None, failed_files: int) -> GateResult:
        reasons = []
        if live_points and new_points < self.min_share * live_points:
            reasons.append(
                f"{new_points} points is {new_points / live_points:.1%} of the live {live_points}, "
                f"below the gate's {self.min_share:.0%} (MMRAG_REBUILD_MIN_SHARE)"
            )
        if self.strict and failed_files:
            reasons.append(f"{failed_files} files failed and --strict was given")
        elif self.max_failed is not None and failed_files > self.max_failed:
            reasons.append(f"{failed_files} files failed, more than the gate's {self.max_failed} (MMRAG_REBUILD_MAX_FAILED)")
        return GateResult(not reasons, reasons, new_points, live_points, failed_files)


# --- what to run ------------------------------------------------------------------------------
@dataclass
class JobSpec:
    """What a job ingests and where. Built from a pipeline file or from CLI arguments."""

    collection: str  # the alias readers query
    root: Path | None = None
    manifest: Path | None = None
    prune: bool = False
    options: Any = None  # mmrag.ingest.IngestOptions (None: its defaults)
    tag_labels: list[str] | None = None
    tag_threshold: float | None = None  # with tag_labels: keep labels at least this probable
    tag_top: int | None = None  # with tag_labels: consider the top N labels (mmrag.tasks.tagging's default: 3)
    keep_versions: int = 2
    pipeline: str | None = None  # the pipeline's name, for reports
    model: str | None = None  # the model name the pipeline asked for, for reports
    engine: str = "local"  # "local" (run_ingest) or "ray" (run_ingest_ray)
    ray_address: str | None = None
    eval_gate: Any = None  # mmrag.jobs.gate.EvalGate: rebuilds switch only if recall@k holds up

    @classmethod
    def from_pipeline(cls, pdef: PipelineDef, *, options: Any = None) -> JobSpec:
        """`options`: base IngestOptions (e.g. from settings); the pipeline's `batch` overrides it."""
        if options is None:
            from mmrag.ingest import IngestOptions

            options = IngestOptions()
        overrides = {
            k: v
            for k, v in {
                "batch_size": pdef.batch.images,
                "text_batch_size": pdef.batch.texts,
                "write_batch_size": pdef.batch.writes,
            }.items()
            if v is not None
        }
        if overrides:
            options = dataclasses.replace(options, **overrides)
        return cls(
            collection=pdef.collection_name,
            root=pdef.source.folder,
            manifest=pdef.source.manifest,
            prune=pdef.prune,
            options=options,
            tag_labels=pdef.tag_labels,
            tag_threshold=pdef.tagging.threshold if pdef.tagging else None,
            tag_top=pdef.tagging.top if pdef.tagging else None,
            keep_versions=pdef.keep_versions,
            pipeline=pdef.name,
            model=pdef.model,
            engine=pdef.engine,
            ray_address=pdef.ray_address,
        )


def _as_job(job: JobSpec | PipelineDef) -> JobSpec:
    return JobSpec.from_pipeline(job) if isinstance(job, PipelineDef) else job


# --- the report -------------------------------------------------------------------------------
@dataclass
class JobReport:
    job: str  # "sync" | "rebuild" | "rollback"
    collection: str  # the alias
    status: str = "ok"  # "ok" | "partial" | "failed" | "invalid" | "locked"
    target: str | None = None  # the collection written (sync) / live after the job (rebuild, rollback)
    previous: str | None = None  # the collection the alias pointed at before
    initial: bool = False  # a sync that had to create the first version
    migrated: bool = False  # a rebuild that replaced a plain collection by an alias
    ingest: dict[str, Any] | None = None  # IngestReport.to_dict()
    error: str | None = None
    abandoned: str | None = None  # half-built version deleted after a failure
    deleted_versions: list[str] = field(default_factory=list)  # old versions retired beyond `keep`
    removed_leftovers: list[str] = field(default_factory=list)  # unfinished versions of killed rebuilds
    stale_lock: dict[str, Any] | None = None  # holder info of a killed job whose lock we took over
    gate: dict[str, Any] | None = None  # GateResult.to_dict() of a rebuilt version
    pipeline: str | None = None
    model_id: str | None = None
    strict: bool = False
    started_at: str = ""
    finished_at: str = ""
    elapsed_s: float = 0.0
    report_path: str | None = None
    eval_gate: dict[str, Any] | None = None  # mmrag.jobs.gate result of an evaluation-gated rebuild

    @property
    def failed_files(self) -> int:
        return int((self.ingest or {}).get("failed_count", 0))

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "partial")

    @property
    def exit_code(self) -> int:
        return int(
            {
                "ok": ExitCode.OK,
                "partial": ExitCode.PARTIAL if self.strict else ExitCode.OK,
                "failed": ExitCode.FAILED,
                "invalid": ExitCode.CONFIG,
                "locked": ExitCode.LOCKED,
            }[self.status]
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["failed_files"] = self.failed_files
        d["ok"] = self.ok
        d["exit_code"] = self.exit_code
        return d

    def summary(self) -> str:
        head = f"{self.job} {self.collection}: {self.status}"
        if self.target:
            head += f" -> {self.target}"
        if self.previous and self.previous != self.target:
            head += f" (was {self.previous})"
        lines = [head]
        if self.ingest:
            i = self.ingest
            lines.append(
                f"  indexed {i.get('indexed', 0)}, updated {i.get('updated', 0)}, unchanged {i.get('unchanged', 0)}, "
                f"pruned {i.get('pruned', 0)}, failed {self.failed_files}"
            )
            for f in i.get("failed", [])[:20]:
                lines.append(f"    ! {f.get('path')}: {f.get('reason')}")
        if self.deleted_versions:
            lines.append(f"  deleted old versions: {', '.join(self.deleted_versions)}")
        if self.removed_leftovers:
            lines.append(f"  removed unfinished versions of killed jobs: {', '.join(self.removed_leftovers)}")
        if self.abandoned:
            lines.append(f"  abandoned half-built {self.abandoned}")
        if self.stale_lock:
            lines.append(f"  took over a stale lock of pid {self.stale_lock.get('pid')} on {self.stale_lock.get('host')}")
        if self.gate and not self.gate.get("passed"):
            lines.append("  gate refused the new version: " + "; ".join(self.gate.get("reasons", [])))
        if self.eval_gate:
            g = self.eval_gate
            live = "n/a" if g["live_recall"] is None else f"{g['live_recall']:.4f}"
            lines.append(f"  gate recall@{g['k']} ({g['queries']} queries): new {g['new_recall']:.4f}, live {live}")
        if self.error:
            lines.append(f"  ERROR: {self.error}")
        if self.report_path:
            lines.append(f"  report: {self.report_path}")
        return "\n".join(lines)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _save_report(home: Path, report: JobReport) -> Path:
    folder = Path(home) / "reports" / re.sub(r"[^A-Za-z0-9_.-]", "_", report.collection)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = _now().strftime("%Y%m%dT%H%M%S%fZ")
    path = folder / f"{stamp}.json"
    n = 1
    while path.exists():  # two jobs in one microsecond: don't overwrite
        path = folder / f"{stamp}-{n}.json"
        n += 1
    report.report_path = str(path)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report.to_dict(), indent=2, default=str), encoding="utf-8")
    tmp.replace(path)
    return path


class _Job:
    """Shared frame of every job: lock, timing, error mapping, report file."""

    def __init__(self, kind: str, collection: str, home: Path, *, strict: bool, lock: bool, pipeline: str | None):
        self.report = JobReport(job=kind, collection=collection, strict=strict, pipeline=pipeline)
        self.home = Path(home)
        self.lock = CollectionLock(home, collection, job=kind) if lock else None

    def run(self, body: Callable[[JobReport], None]) -> JobReport:
        r = self.report
        start = _now()
        t0 = time.perf_counter()
        r.started_at = start.isoformat(timespec="seconds")
        try:
            if self.lock is not None:
                self.lock.acquire()
                r.stale_lock = self.lock.took_over
                if r.stale_lock:
                    log.warning("took over the lock of a job that died: %s", r.stale_lock)
            body(r)
        except LockHeld as exc:
            r.status, r.error = "locked", str(exc)
        except (_Invalid, SchemaMismatch) as exc:
            r.status, r.error = "invalid", str(exc)
        except _StrictRefused as exc:
            r.status, r.error = "partial", str(exc)
        except _Failed as exc:
            r.status, r.error = "failed", str(exc)
        except Exception as exc:  # store down, model error, ...: recorded, and the exit code says so
            log.exception("%s %s failed", r.job, r.collection)
            r.status, r.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            if self.lock is not None:
                self.lock.release()
            r.finished_at = _now().isoformat(timespec="seconds")
            r.elapsed_s = round(time.perf_counter() - t0, 3)
        _save_report(self.home, r)
        return r


# --- versions ---------------------------------------------------------------------------------
def version_name(name: str, n: int) -> str:
    return f"{name}__v{n}"


def list_versions(store: Store, name: str) -> list[tuple[int, str]]:
    """(version number, collection) of every `name__vN`, ascending."""
    pat = re.compile(rf"^{re.escape(name)}__v(\d+)$")
    found = [(int(m.group(1)), c) for c in store.list_collections() if (m := pat.match(c))]
    return sorted(found)


def _default_ingest(spec: JobSpec | None = None) -> IngestFn:
    if spec is not None and spec.engine == "ray":
        from mmrag.embedders import load_embedder
        from mmrag.ingest.ray_engine import RayOptions, run_ingest_ray

        # Each actor loads the pipeline's model by name (a cluster's workers cannot share the driver's).
        factory = functools.partial(load_embedder, spec.model) if spec.model else None
        return functools.partial(run_ingest_ray, ray_options=RayOptions(address=spec.ray_address, embedder_factory=factory))
    from mmrag.ingest import run_ingest

    return run_ingest


def _ingest(ingest_fn: IngestFn, store: Store, embedder: Embedder, spec: JobSpec, collection: str, *, prune: bool,
            progress: bool) -> Any:
    extra: dict[str, Any] = {}
    if spec.tag_labels:
        from mmrag.tasks.tagging import ingest_tagger

        extra["tagger"] = ingest_tagger(
            store, embedder, collection, spec.tag_labels, threshold=spec.tag_threshold, top=spec.tag_top
        )
    return ingest_fn(
        store,
        embedder,
        root=spec.root,
        collection=collection,
        manifest=spec.manifest,
        prune=prune,
        options=spec.options,
        progress=progress,
        **extra,
    )


def _record_ingest(r: JobReport, rep: Any) -> None:
    r.ingest = rep.to_dict()
    if not rep.ok:
        raise _Failed(f"ingest failed: {getattr(rep, 'error', None) or 'see the ingest report'}")
    if rep.failed:
        r.status = "partial"


def _validate_version(store: Store, embedder: Embedder, collection: str) -> None:
    """A new version goes live only if it holds points of the embedder's space."""
    spec = store.get_spec(collection)
    if spec is None:
        raise _Failed(f"rebuild produced no collection {collection!r}")
    info = embedder.info
    if spec.model_id != info.model_id or spec.dim != info.dim or (spec.quantization or None) != (info.quantization or None):
        raise _Failed(
            f"rebuilt {collection!r} records model {spec.model_id!r} (dim {spec.dim}, quantization "
            f"{spec.quantization!r}); expected {info.model_id!r} (dim {info.dim}, quantization {info.quantization!r})"
        )
    n = store.count(collection)
    if n <= 0:
        raise _Failed(f"rebuilt {collection!r} is empty (no image could be indexed); the live collection is unchanged")


def _evaluation_gate(r: JobReport, store: Any, embedder: Any, spec: JobSpec, *, new: str, live: str | None) -> None:
    """With `spec.eval_gate`: evaluate new vs live on the same queries; raise (keeping live) if new is worse."""
    if spec.eval_gate is None:
        return
    from mmrag.jobs.gate import evaluate_gate

    result = evaluate_gate(store, embedder, new=new, live=live, gate=spec.eval_gate)
    r.eval_gate = result.to_dict()
    if not result.passed:
        raise _Failed(result.summary())


def _build_and_switch(
    r: JobReport,
    store: Store,
    embedder: Embedder,
    spec: JobSpec,
    *,
    ingest_fn: IngestFn,
    keep: int,
    migrate: bool,
    progress: bool,
    retire_grace_s: float,
    gate: RebuildGate | None = None,
) -> None:
    name = spec.collection
    live = store.get_aliases().get(name)
    plain = live is None and store.collection_exists(name)
    if plain and not migrate:
        raise _Invalid(
            f"{name!r} is a plain collection, not an alias; a rebuild serves it through the alias {name!r} over "
            f"versioned collections ({version_name(name, 1)}, ...). Re-run with --migrate to build the new version, "
            f"then delete the plain collection and create the alias at once (queries to {name!r} fail for that "
            f"moment and the old data is not kept for rollback), or keep using `mmrag ingest` on it."
        )
    r.previous = live or (name if plain else None)
    # A version that never completed (its job was killed mid-build) must not become a rollback target.
    leftovers = [c for _, c in list_versions(store, name) if c != live and not _is_complete(store, c)]
    for c in leftovers:
        store.delete_collection(c)
    r.removed_leftovers = leftovers
    versions = list_versions(store, name)
    new = version_name(name, (versions[-1][0] if versions else 0) + 1)
    r.target = new
    try:
        rep = _ingest(ingest_fn, store, embedder, spec, new, prune=False, progress=progress)
        _record_ingest(r, rep)
        _validate_version(store, embedder, new)
        if gate is not None:
            _check_gate(r, store, gate, new=new, live=r.previous, failed_files=len(rep.failed))
        store.update_metadata(new, {COMPLETE_KEY: {"completed_at": _now().isoformat(timespec="seconds"),
                                                   "job": r.job, "pipeline": spec.pipeline}})
        _evaluation_gate(r, store, embedder, spec, new=new, live=live)
    except BaseException:
        # Never leave a half-built version around: it would become a rollback target.
        r.target = live
        r.abandoned = new
        try:
            if store.collection_exists(new):
                store.delete_collection(new)
        except Exception:  # the original error matters more; the next rebuild removes the leftover
            log.exception("could not delete the half-built %s", new)
        raise

    if plain:
        # Documented order: the new version is complete; the gap is the two calls below.
        store.delete_collection(name)
        r.migrated = True
        try:
            store.set_alias(name, new)
        except Exception as exc:
            raise _Failed(
                f"deleted the plain collection {name!r} but could not create the alias {name!r} -> {new!r} "
                f"({type(exc).__name__}: {exc}); create it with `mmrag reindex {name} --rollback --to {new}`"
            ) from exc
    else:
        store.set_alias(name, new)  # the atomic switch
    r.deleted_versions = _retire(store, name, new=new, previous=live, keep=keep, grace_s=retire_grace_s)


def _live_points(store: Any, live: str | None) -> tuple[int | None, str | None]:
    """(the live version's point count, why it could not be counted directly).

    While another process (a running `mmrag serve`) holds the live embedded shard, our own
    record of the points written to it stands in; a collection too old to have that record
    skips the share check, with a warning, rather than failing the rebuild it was told to run.
    """
    from mmrag.errors import LockHeldError
    from mmrag.store.integrity import recorded_points

    if not live or not store.collection_exists(live):
        return None, None
    try:
        return int(store.count(live)), None
    except LockHeldError as exc:
        spec = store.get_spec(live)
        recorded = recorded_points(spec.to_metadata()) if spec is not None else None
        if recorded is None:
            log.warning("the live %s is open in another process and records no point count; "
                        "the point-share check is skipped", live)
        return recorded, str(exc)


def _check_gate(r: JobReport, store: Any, gate: RebuildGate, *, new: str, live: str | None, failed_files: int) -> None:
    """Refuse the switch (the new version is then abandoned, nothing is pruned) unless `gate` passes."""
    busy = None
    if gate.reference_points is not None:
        live_points: int | None = gate.reference_points
    else:
        live_points, busy = _live_points(store, live)
    result = gate.check(new_points=store.count(new), live_points=live_points, failed_files=failed_files)
    r.gate = result.to_dict()
    if busy is not None:
        r.gate["live_busy"] = busy
    if not result.passed:
        only_strict = len(result.reasons) == 1 and gate.strict and failed_files and "--strict" in result.reasons[0]
        raise (_StrictRefused if only_strict else _Failed)(f"the rebuilt {new!r} did not pass the gate, so {r.collection!r} still serves "
                      f"{live!r}: " + "; ".join(result.reasons))


def _retire(store: Store, name: str, *, new: str, previous: str | None, keep: int, grace_s: float) -> list[str]:
    """Delete versions beyond `keep`: the new one and the one it replaced are the last to go."""
    others = [c for _, c in reversed(list_versions(store, name)) if c not in (new, previous)]
    order = [new] + ([previous] if previous and previous != new and previous in _names(store, name) else []) + others
    doomed = order[max(keep, 1):]
    if previous in doomed and grace_s > 0:
        # Readers that resolved the alias just before the switch may still be querying it.
        time.sleep(grace_s)
    deleted: list[str] = []
    for c in doomed:
        try:
            store.delete_collection(c)
            deleted.append(c)
        except Exception:
            log.exception("could not delete old version %s", c)
    return deleted


def _is_complete(store: Store, collection: str) -> bool:
    spec = store.get_spec(collection)
    return spec is not None and COMPLETE_KEY in spec.extra


def _names(store: Store, name: str) -> set[str]:
    return {c for _, c in list_versions(store, name)}


# --- public jobs ------------------------------------------------------------------------------
def sync(
    job: JobSpec | PipelineDef,
    *,
    store: Store,
    embedder: Embedder,
    home: Path | str,
    ingest_fn: IngestFn | None = None,
    prune: bool | None = None,
    strict: bool = False,
    progress: bool = False,
    lock: bool = True,
) -> JobReport:
    """Incremental update of the collection the alias `job.collection` points at.

    `prune` overrides the job's policy. A name that is neither an alias nor a
    collection gets its first version `name__v1` and the alias. A plain
    collection of that name is synced in place.
    """
    spec = _as_job(job)
    ingest = ingest_fn or _default_ingest(spec)
    do_prune = spec.prune if prune is None else prune

    def body(r: JobReport) -> None:
        r.model_id = embedder.info.model_id
        name = spec.collection
        aliases = store.get_aliases()
        if name in aliases:
            target = aliases[name]
            if not store.collection_exists(target):
                raise _Failed(
                    f"alias {name!r} points at {target!r}, which does not exist; "
                    f"run `mmrag reindex {name} --rollback` or `--rebuild`"
                )
        elif store.collection_exists(name):
            target = name
        else:
            r.initial = True
            _build_and_switch(r, store, embedder, spec, ingest_fn=ingest, keep=spec.keep_versions, migrate=False,
                              progress=progress, retire_grace_s=0.0)
            return
        r.previous = r.target = target
        rep = _ingest(ingest, store, embedder, spec, target, prune=do_prune, progress=progress)
        _record_ingest(r, rep)

    return _Job("sync", spec.collection, Path(home), strict=strict, lock=lock, pipeline=spec.pipeline).run(body)


def rebuild(
    job: JobSpec | PipelineDef,
    *,
    store: Store,
    embedder: Embedder,
    home: Path | str,
    keep: int | None = None,
    ingest_fn: IngestFn | None = None,
    migrate: bool = False,
    strict: bool = False,
    progress: bool = False,
    lock: bool = True,
    retire_grace_s: float = 2.0,
    gate: RebuildGate | None = None,
) -> JobReport:
    """Build `name__vN` from scratch, validate it, switch the alias atomically, keep `keep` versions.

    `keep` (default: the job's `keep_versions`) counts the live version; keep=1 leaves nothing to roll
    back to. `retire_grace_s`: wait before deleting the version that was live a moment ago.
    `gate` (default `RebuildGate()`, strict when `strict`): the new version switches only if it passes;
    otherwise it is deleted, the alias and every old version stay as they were.
    """
    spec = _as_job(job)
    ingest = ingest_fn or _default_ingest(spec)
    keep_n = spec.keep_versions if keep is None else keep
    if keep_n < 1:
        raise ValueError("keep must be >= 1 (the live version counts)")

    gate = gate or RebuildGate(strict=strict)
    if strict and not gate.strict:
        gate = dataclasses.replace(gate, strict=True)  # --strict never switches after a failure

    def body(r: JobReport) -> None:
        r.model_id = embedder.info.model_id
        _build_and_switch(r, store, embedder, spec, ingest_fn=ingest, keep=keep_n, migrate=migrate,
                          progress=progress, retire_grace_s=retire_grace_s, gate=gate)

    return _Job("rebuild", spec.collection, Path(home), strict=strict, lock=lock, pipeline=spec.pipeline).run(body)


def rollback(
    name: str,
    *,
    store: Store,
    home: Path | str,
    to: int | str | None = None,
    lock: bool = True,
) -> JobReport:
    """Point the alias `name` at the previous version (or at version `to`: a number or `name__vN`)."""

    def body(r: JobReport) -> None:
        live = store.get_aliases().get(name)
        if live is None and (to is None or store.collection_exists(name)):
            raise _Invalid(f"{name!r} is not an alias; only collections built by `rebuild` can be rolled back")
        r.previous = live
        versions = [(n, c) for n, c in list_versions(store, name) if c == live or _is_complete(store, c)]
        names = [c for _, c in versions]
        if to is not None:
            wanted = version_name(name, to) if isinstance(to, int) or str(to).isdigit() else str(to)
            if wanted not in names:
                raise _Invalid(f"no version {wanted!r} of {name!r}; versions: {', '.join(names) or 'none'}")
        else:
            live_n = next((n for n, c in versions if c == live), None)
            older = [c for n, c in versions if live_n is None or n < live_n]
            if not older:
                raise _Invalid(
                    f"no earlier version of {name!r} to roll back to (live: {live}; versions: {', '.join(names)})"
                )
            wanted = older[-1]
        if store.count(wanted) <= 0:
            raise _Failed(f"{wanted!r} is empty; refusing to switch {name!r} to it")
        store.set_alias(name, wanted)
        r.target = wanted

    return _Job("rollback", name, Path(home), strict=False, lock=lock, pipeline=None).run(body)


def run_pipeline(
    pdef: PipelineDef,
    *,
    store: Store,
    embedder: Embedder,
    home: Path | str,
    rebuild_all: bool = False,
    options: Any = None,
    ingest_fn: IngestFn | None = None,
    strict: bool = False,
    progress: bool = False,
    prune: bool | None = None,
    keep: int | None = None,
    migrate: bool = False,
    lock: bool = True,
    gate: RebuildGate | None = None,
) -> JobReport:
    """`mmrag run pipelines/x.yaml`: a sync, or a full rebuild with `rebuild_all`.

    `options`: base IngestOptions (e.g. from settings), overridden by the pipeline's `batch`.
    `prune` overrides the pipeline's policy (sync only); `keep`/`migrate` apply to a rebuild.
    """
    spec = JobSpec.from_pipeline(pdef, options=options)
    common = dict(store=store, embedder=embedder, home=home, ingest_fn=ingest_fn, strict=strict, progress=progress,
                  lock=lock)
    if rebuild_all:
        return rebuild(spec, keep=keep, migrate=migrate, gate=gate, **common)
    return sync(spec, prune=prune, **common)


def run_scheduler(
    pipelines: Sequence[PipelineDef],
    run_one: Callable[[PipelineDef], JobReport],
    *,
    clock: Callable[[], datetime] = _now,
    sleep: Callable[[float], None] = time.sleep,
    max_jobs: int | None = None,
    on_report: Callable[[PipelineDef, JobReport], None] | None = None,
) -> list[JobReport]:
    """Run each pipeline whenever its cron `schedule` fires, one job at a time, forever (or `max_jobs`).

    For docker compose (`mmrag schedule pipelines/`): one scheduler container is the whole
    concurrency guard on that host, together with the per-collection lock. A job that
    overruns the next firing time of another pipeline delays it, never doubles it up.
    Pipelines without a schedule are ignored.
    """
    scheduled = [p for p in pipelines if p.schedule]
    if not scheduled:
        raise ValueError("none of the pipelines has a schedule")
    start = clock()
    due = {p.name: next_run(p.schedule, start) for p in scheduled}  # type: ignore[arg-type]
    reports: list[JobReport] = []
    while max_jobs is None or len(reports) < max_jobs:
        pdef = min(scheduled, key=lambda p: (due[p.name], p.name))
        wait = (due[pdef.name] - clock()).total_seconds()
        if wait > 0:
            sleep(wait)
            continue  # re-check the clock: sleeps can end early
        try:
            rep = run_one(pdef)
        except Exception as exc:  # a crashing job must not stop the scheduler
            log.exception("scheduled job %s crashed", pdef.name)
            rep = JobReport(job="sync", collection=pdef.collection_name, status="failed",
                            error=f"{type(exc).__name__}: {exc}", pipeline=pdef.name)
        reports.append(rep)
        if on_report is not None:
            on_report(pdef, rep)
        due[pdef.name] = next_run(pdef.schedule, max(clock(), due[pdef.name]))  # type: ignore[arg-type]
    return reports


def iter_reports(home: Path | str, collection: str) -> Iterable[Path]:
    """Saved job reports of a collection, oldest first."""
    folder = Path(home) / "reports" / re.sub(r"[^A-Za-z0-9_.-]", "_", collection)
    return sorted(folder.glob("*.json")) if folder.is_dir() else []
