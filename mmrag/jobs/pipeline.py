"""Pipeline definitions: one YAML file per corpus, validated up front.

A pipeline says where a corpus lives, which model embeds it, which collection
(alias) serves it, how it is tagged and when it is re-indexed::

    name: photos
    source: {folder: ./corpus/photos, manifest: ./corpus/photos.csv}
    model: clip-vit-b32
    collection: photos            # defaults to `name`
    batch: {images: 32, texts: 128, writes: 256}
    tagging: {labels: [cat, dog], threshold: 0.2, top: 3}
    prune: true
    schedule: "0 3 * * *"
    keep_versions: 2

Relative paths resolve against the YAML file's folder, so a pipeline works the
same from any working directory. `${VAR}` / `${VAR:-default}` are expanded from
the `env` mapping the caller passes (the CLI passes the process environment;
library code never reads it itself). Every error names the file and the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from mmrag.errors import UsageError

__all__ = [
    "BatchDef",
    "PipelineDef",
    "PipelineError",
    "SourceDef",
    "TaggingDef",
    "load_pipeline",
    "load_pipelines",
    "next_run",
]

# Collection names become file names (locks, reports) and Qdrant names: keep them plain.
_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class PipelineError(UsageError):
    """A pipeline file is unreadable or invalid. `errors`: one `file: field: problem` line each."""

    def __init__(self, path: Path | str | None, errors: list[str]):
        self.path = None if path is None else str(path)
        self.errors = [e if self.path is None else f"{self.path}: {e}" for e in errors]
        super().__init__("\n".join(self.errors))


def _resolve_path(value: Any, info: ValidationInfo) -> Any:
    """Resolve a relative path against the pipeline file's folder (passed in the context)."""
    if value is None:
        return None
    if _ENV_RE.search(str(value)):
        raise ValueError(f"{value}: ${{...}} is not expanded here (load_pipeline(path, env=os.environ) expands it)")
    p = Path(str(value)).expanduser()
    base = (info.context or {}).get("base_dir")
    if not p.is_absolute() and base is not None:
        p = Path(base) / p
    return p.resolve() if p.is_absolute() else p


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceDef(_Strict):
    folder: Path | None = None
    manifest: Path | None = None

    @field_validator("folder", "manifest", mode="before")
    @classmethod
    def _relative_to_file(cls, v: Any, info: ValidationInfo) -> Any:
        return _resolve_path(v, info)

    @field_validator("folder")
    @classmethod
    def _folder_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_dir():
            raise ValueError(f"path does not exist: {v}" if not v.exists() else f"not a folder: {v}")
        return v

    @field_validator("manifest")
    @classmethod
    def _manifest_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"path does not exist: {v}" if not v.exists() else f"not a file: {v}")
        return v

    @model_validator(mode="after")
    def _at_least_one(self) -> SourceDef:
        if self.folder is None and self.manifest is None:
            raise ValueError("give at least one of 'folder' or 'manifest'")
        return self


class BatchDef(_Strict):
    images: int | None = Field(default=None, ge=1)
    texts: int | None = Field(default=None, ge=1)
    writes: int | None = Field(default=None, ge=1)


class TaggingDef(_Strict):
    labels: list[str] | None = None
    labels_file: Path | None = None
    threshold: float | None = None
    top: int | None = Field(default=None, ge=1)

    @field_validator("labels_file", mode="before")
    @classmethod
    def _relative_to_file(cls, v: Any, info: ValidationInfo) -> Any:
        return _resolve_path(v, info)

    @field_validator("labels_file")
    @classmethod
    def _file_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"path does not exist: {v}")
        return v

    @field_validator("labels")
    @classmethod
    def _non_empty_labels(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            v = [s.strip() for s in v]
            if not v or any(not s for s in v):
                raise ValueError("labels must be a non-empty list of non-empty strings")
        return v

    @model_validator(mode="after")
    def _exactly_one(self) -> TaggingDef:
        if (self.labels is None) == (self.labels_file is None):
            raise ValueError("give exactly one of 'labels' or 'labels_file'")
        return self

    def resolved_labels(self) -> list[str]:
        """The label list: inline, or one label per non-blank, non-comment line of `labels_file`."""
        if self.labels is not None:
            return list(self.labels)
        assert self.labels_file is not None
        lines = self.labels_file.read_text(encoding="utf-8").splitlines()
        return [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]


class PipelineDef(_Strict):
    name: str = Field(pattern=_NAME_RE)
    source: SourceDef
    model: str = Field(min_length=1)
    collection: str | None = Field(default=None, pattern=_NAME_RE)
    batch: BatchDef = Field(default_factory=BatchDef)
    tagging: TaggingDef | None = None
    prune: bool = False
    schedule: str | None = None
    keep_versions: int = Field(default=2, ge=1)
    engine: Literal["local", "ray"] = "local"  # ray: mmrag.ingest.ray_engine on a Ray cluster
    ray_address: str | None = None  # with engine ray: 'auto', 'ray://head:10001'; None starts a local Ray

    @field_validator("collection")
    @classmethod
    def _not_versioned(cls, v: str | None) -> str | None:
        # `name__vN` is how rebuild names the versions behind the alias `name`.
        if v is not None and re.search(r"__v\d+$", v):
            raise ValueError(f"{v!r} looks like a rebuild version; name the alias instead (without '__vN')")
        return v

    @field_validator("schedule")
    @classmethod
    def _valid_cron(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from croniter import croniter

        if not croniter.is_valid(v):
            raise ValueError(f"not a valid cron expression: {v!r} (expected e.g. '0 3 * * *')")
        return v

    @property
    def collection_name(self) -> str:
        """The alias readers query; the pipeline's name unless `collection` is given."""
        return self.collection or self.name

    @property
    def tag_labels(self) -> list[str] | None:
        return self.tagging.resolved_labels() if self.tagging else None


def _expand_env(node: Any, env: Mapping[str, str], where: str, errors: list[str]) -> Any:
    if isinstance(node, str):
        def sub(m: re.Match[str]) -> str:
            var, default = m.group(1), m.group(2)
            if var in env:
                return env[var]
            if default is not None:
                return default
            errors.append(f"{where or '<root>'}: environment variable {var} is not set")
            return m.group(0)

        return _ENV_RE.sub(sub, node)
    if isinstance(node, dict):
        return {k: _expand_env(v, env, f"{where}.{k}" if where else str(k), errors) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_env(v, env, f"{where}.{i}", errors) for i, v in enumerate(node)]
    return node


def _format_error(err: Mapping[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "<root>"
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{loc}: unknown field"
    if kind == "missing":
        return f"{loc}: required field is missing"
    msg = str(err["msg"])
    # pydantic prefixes messages raised in validators with "Value error, ".
    msg = msg.removeprefix("Value error, ")
    return f"{loc}: {msg}"


def load_pipeline(path: Path | str, *, env: Mapping[str, str] | None = None) -> PipelineDef:
    """Read and validate one pipeline file. Raises PipelineError naming the file and field(s).

    `env`: values for `${VAR}` expansion (the CLI passes `os.environ`); None leaves `${...}` as written.
    """
    shown = str(path)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PipelineError(shown, [f"cannot read file: {exc.strerror or exc}"]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PipelineError(shown, [f"invalid YAML: {exc}"]) from exc
    if not isinstance(data, dict):
        raise PipelineError(shown, ["expected a mapping of fields at the top level"])
    if env is not None:
        errors: list[str] = []
        data = _expand_env(data, env, "", errors)
        if errors:
            raise PipelineError(shown, errors)
    try:
        return PipelineDef.model_validate(data, context={"base_dir": p.resolve().parent})
    except ValidationError as exc:
        raise PipelineError(shown, [_format_error(e) for e in exc.errors()]) from None


def load_pipelines(paths: list[Path | str], *, env: Mapping[str, str] | None = None) -> list[PipelineDef]:
    """Load files and folders (every `*.yaml`/`*.yml` in a folder). Collects all errors before raising."""
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files.extend(sorted([*p.glob("*.yaml"), *p.glob("*.yml")]))
        else:
            files.append(p)
    loaded: list[PipelineDef] = []
    problems: list[PipelineError] = []
    for f in files:
        try:
            loaded.append(load_pipeline(f, env=env))
        except PipelineError as exc:
            problems.append(exc)
    if problems:
        raise PipelineError(None, [line for e in problems for line in e.errors])
    # Two pipelines writing one collection would fight over its lock and prune each other's points.
    seen: dict[str, str] = {}
    dupes: list[str] = []
    for f, pdef in zip(files, loaded):
        other = seen.setdefault(pdef.collection_name, str(f))
        if other != str(f):
            dupes.append(f"{f}: collection: {pdef.collection_name!r} is also served by {other}")
    if dupes:
        raise PipelineError(None, dupes)
    return loaded


def next_run(schedule: str, after: datetime | None = None) -> datetime:
    """The next time (UTC, tz-aware) the cron `schedule` fires strictly after `after` (default: now)."""
    from croniter import croniter

    base = after or datetime.now(timezone.utc)
    if base.tzinfo is None:
        base = base.replace(tzinfo=timezone.utc)
    return croniter(schedule, base).get_next(datetime)
