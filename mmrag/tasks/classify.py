"""Zero-shot image classification and image/text similarity.

A label's embedding is the mean of the L2-normalised embeddings of its prompts
(one per template), re-normalised; an image's label probabilities are
softmax(logit_scale * cosine(image, label)). The same math serves tagging
(`mmrag.tasks.tagging`) and evaluation (`mmrag.tasks.evaluate`), so it lives here as pure
functions (`label_matrix_from_prompts`, `label_probabilities`, `top_k`).

Label matrices are cached per (model fingerprint, labels, templates): in
process (LRU) and, when a cache directory is given, on disk as `.npz`, so that
classifying many folders with one label set embeds each prompt once.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from mmrag.corpus.types import CorpusItem, DecodedImage, SkippedFile
from mmrag.embedders.base import Embedder
from mmrag.tasks.templates import default_template_set, load_templates, render

__all__ = [
    "ClassificationReport",
    "LabelCache",
    "Prediction",
    "ZeroShotClassifier",
    "classify",
    "classify_paths",
    "expand_image_paths",
    "SimilarityReport",
    "similarity_report",
    "embed_image_sources",
    "image_similarity",
    "image_text_similarity",
    "label_cache_key",
    "label_matrix_from_prompts",
    "label_probabilities",
    "load_image",
    "softmax",
    "top_k",
    "zero_shot_classify",
]


# --------------------------------------------------------------------------- math


def _l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    norms = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax."""
    shifted = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def label_matrix_from_prompts(prompt_vectors: np.ndarray, n_labels: int, n_templates: int) -> np.ndarray:
    """(n_labels * n_templates, dim) prompt vectors, label-major -> (n_labels, dim) unit label vectors."""
    vecs = _l2_normalize(np.asarray(prompt_vectors, dtype=np.float32))
    vecs = vecs.reshape(n_labels, n_templates, -1).mean(axis=1)
    return _l2_normalize(vecs).astype(np.float32)


def label_probabilities(image_vectors: np.ndarray, label_matrix: np.ndarray, logit_scale: float) -> np.ndarray:
    """(N, dim) unit image vectors x (L, dim) label vectors -> (N, L) float64 probabilities.

    Computed in float64 so that every caller (classify, tag, eval) gets the same numbers.
    """
    cos = np.asarray(image_vectors, dtype=np.float64) @ np.asarray(label_matrix, dtype=np.float64).T
    return softmax(float(logit_scale) * cos, axis=1)


def top_k(probs: np.ndarray, labels: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    """For each row of (N, L) probabilities, the k best (label, prob), best first.

    Ties keep label order (stable sort), so results are deterministic.
    """
    probs = np.atleast_2d(probs)
    k = max(0, min(int(k), probs.shape[1]))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(labels[j], float(row[j])) for j in idx] for row, idx in zip(probs, order)]


# --------------------------------------------------------------------------- cache


def label_cache_key(fingerprint: dict[str, Any], labels: Sequence[str], templates: Sequence[str]) -> str:
    """Stable hex key of (model fingerprint, labels, templates)."""
    blob = json.dumps(
        {"fingerprint": fingerprint, "labels": list(labels), "templates": list(templates)},
        sort_keys=True,
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class LabelCache:
    """In-process LRU of label matrices, backed by `.npz` files when `cache_dir` is given."""

    def __init__(self, maxsize: int = 32):
        self.maxsize = maxsize
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, cache_dir: str | Path | None = None) -> np.ndarray | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        if cache_dir is None:
            return None
        path = Path(cache_dir) / f"labels-{key}.npz"
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["key"]) != key:  # a foreign file under our name
                    return None
                matrix = np.asarray(data["matrix"], dtype=np.float32)
        except Exception:  # missing, truncated or foreign file: recompute rather than fail
            return None
        self._remember(key, matrix)
        return matrix

    def put(self, key: str, matrix: np.ndarray, cache_dir: str | Path | None = None) -> None:
        self._remember(key, matrix)
        if cache_dir is None:
            return
        directory = Path(cache_dir)
        directory.mkdir(parents=True, exist_ok=True)
        # Write then rename: a concurrent reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".labels-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, key=np.array(key), matrix=matrix.astype(np.float32))
            os.replace(tmp, directory / f"labels-{key}.npz")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def _remember(self, key: str, matrix: np.ndarray) -> None:
        matrix.setflags(write=False)  # shared between classifiers: keep it immutable
        with self._lock:
            self._items[key] = matrix
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)


LABEL_CACHE = LabelCache()


# --------------------------------------------------------------------------- results


@dataclass
class Prediction:
    """Top-k labels of one image, or why it could not be classified."""

    source: str  # the path as given, or "<image N>" for an in-memory image
    top: list[tuple[str, float]] = field(default_factory=list)  # (label, probability), best first
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def label(self) -> str | None:
        return self.top[0][0] if self.top else None

    @property
    def score(self) -> float | None:
        return self.top[0][1] if self.top else None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source}
        if self.error is not None:
            out["error"] = self.error
        else:
            out["label"] = self.label
            out["score"] = self.score
            out["top"] = [{"label": lab, "score": p} for lab, p in self.top]
        return out


@dataclass
class ClassificationReport:
    """Predictions for a set of images, with what produced them."""

    predictions: list[Prediction]
    labels: list[str]
    templates: list[str]
    model_id: str

    @property
    def failed(self) -> list[Prediction]:
        return [p for p in self.predictions if not p.ok]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "labels": list(self.labels),
            "templates": list(self.templates),
            "n": len(self.predictions),
            "n_failed": len(self.failed),
            "predictions": [p.to_dict() for p in self.predictions],
        }

    def format_table(self) -> str:
        width = max([len("image")] + [len(p.source) for p in self.predictions])
        lines = [f"{'image'.ljust(width)}  {'label':<20} {'prob':>7}  others"]
        for p in self.predictions:
            if not p.ok:
                lines.append(f"{p.source.ljust(width)}  ERROR: {p.error}")
                continue
            others = ", ".join(f"{lab} {prob:.3f}" for lab, prob in p.top[1:])
            lines.append(f"{p.source.ljust(width)}  {str(p.label):<20} {p.score:>7.4f}  {others}".rstrip())
        if self.failed:
            lines.append(f"{len(self.failed)} of {len(self.predictions)} image(s) could not be classified")
        return "\n".join(lines)


# --------------------------------------------------------------------------- image loading


def _as_item(path: Path) -> CorpusItem | SkippedFile:
    shown = str(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return SkippedFile(shown, "file not found")
    except OSError as exc:
        return SkippedFile(shown, f"unreadable: {exc.strerror or exc}")
    if not path.is_file():
        return SkippedFile(shown, "not a regular file")
    return CorpusItem(path=path.resolve(), rel_path=shown, file_size=st.st_size, mtime=st.st_mtime)


# The corpus decoder's limits, as in Settings' defaults; callers override them via `decode_options`.
DEFAULT_DECODE_OPTIONS: dict[str, Any] = {"max_file_bytes": 100 * 1024 * 1024, "max_image_pixels": 89_478_485}


def _decode_paths(
    paths: Sequence[Path],
    preprocess: Callable[[Image.Image], np.ndarray] | None,
    workers: int,
    decode_options: dict[str, Any] | None = None,
) -> Iterator[tuple[str, DecodedImage | SkippedFile]]:
    """Decode files through the corpus decoder pool; yields (path as given, result) in input order."""
    from mmrag.corpus import decode_stream  # EXIF orientation, colour rules, size limits, bad files -> SkippedFile

    items = [_as_item(path) for path in paths]
    if not items:
        return
    options = {**DEFAULT_DECODE_OPTIONS, **(decode_options or {})}
    for item, result in zip(items, decode_stream(items, workers=workers, preprocess=preprocess, **options)):
        yield item.rel_path, result


def load_image(source: str | os.PathLike[str] | Image.Image, **decode_options: Any) -> Image.Image:
    """An RGB image from a path (corpus decoding rules) or a PIL image. Raises ValueError with the reason."""
    from mmrag.corpus import ImageDecodeError, image_to_rgb, load_rgb

    try:
        if isinstance(source, Image.Image):
            return image_to_rgb(source)  # ingestion's rule: a transparent pixel comes out white
        return load_rgb(Path(source), **decode_options)
    except ImageDecodeError as exc:
        raise ValueError(f"cannot use image {str(source)!r}: {exc.reason}") from exc


def embed_image_sources(
    embedder: Embedder,
    sources: Sequence[str | os.PathLike[str] | Image.Image],
    *,
    batch_size: int = 32,
    progress: bool = False,
    workers: int = 1,
    decode_options: dict[str, Any] | None = None,
    desc: str = "embedding",
) -> tuple[np.ndarray, list[str | None]]:
    """Embed images: paths through the corpus decoder pool, PIL images directly, in batches.

    Returns ((N, dim) float32 vectors, errors): row i is meaningful only where
    errors[i] is None (the reason a file was skipped otherwise); failed rows are zeros.
    A path given twice is decoded and embedded once.
    """
    n = len(sources)
    vectors = np.zeros((n, int(embedder.info.dim)), dtype=np.float32)
    errors: list[str | None] = [None] * n
    by_path: dict[str, list[int]] = {}
    in_memory: list[int] = []
    for i, src in enumerate(sources):
        if isinstance(src, Image.Image):
            in_memory.append(i)
        else:
            by_path.setdefault(str(src), []).append(i)

    bar = tqdm(total=n, unit="img", desc=desc, disable=not progress, dynamic_ncols=True)
    pending_rows: list[list[int]] = []
    pending_px: list[np.ndarray] = []

    def flush() -> None:
        if not pending_px:
            return
        vecs = np.asarray(embedder.embed_pixels(np.stack(pending_px)), dtype=np.float32)
        for rows, vec in zip(pending_rows, vecs):
            vectors[rows] = vec
        bar.update(sum(len(rows) for rows in pending_rows))
        pending_rows.clear()
        pending_px.clear()

    try:
        for i in in_memory:
            pending_rows.append([i])
            pending_px.append(embedder.preprocess(load_image(sources[i])))
            if len(pending_px) >= batch_size:
                flush()
        for key, result in _decode_paths([Path(p) for p in by_path], embedder.preprocess, workers, decode_options):
            rows = by_path[key]
            if isinstance(result, SkippedFile):
                for r in rows:
                    errors[r] = result.reason
                bar.update(len(rows))
                continue
            pending_rows.append(rows)
            pending_px.append(result.pixels)  # type: ignore[arg-type]
            if len(pending_px) >= batch_size:
                flush()
        flush()
    finally:
        bar.close()
    return vectors, errors


# --------------------------------------------------------------------------- classifier


class ZeroShotClassifier:
    """Classifies images into `labels` by comparing them with prompt embeddings.

    `templates`: a built-in set name, a list of templates, or None for the
    default set of the model's language (`zh` for Chinese models, else `en`).
    The prompts are embedded with the embedder's own tokenizer, so Chinese
    templates go through Chinese-CLIP's BERT tokenizer automatically.
    """

    def __init__(
        self,
        embedder: Embedder,
        labels: Sequence[str],
        templates: str | Sequence[str] | None = None,
        *,
        templates_file: str | Path | None = None,
        cache_dir: str | Path | None = None,
        cache: LabelCache | None = LABEL_CACHE,
        text_batch_size: int = 256,
    ):
        labels = [str(label) for label in labels]
        if not labels:
            raise ValueError("zero-shot classification needs at least one label")
        dupes = sorted({lab for lab in labels if labels.count(lab) > 1})
        if dupes:
            raise ValueError(f"duplicate labels: {dupes}")
        self.embedder = embedder
        self.labels = labels
        self.templates = load_templates(templates, templates_file, language=embedder.info.language)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._cache = cache
        self._text_batch_size = text_batch_size
        self._matrix: np.ndarray | None = None

    # ----------------------------------------------------------- label side
    def prompts(self) -> list[str]:
        """All prompts, label-major: label 0 with every template, then label 1, ..."""
        return [render(t, label) for label in self.labels for t in self.templates]

    @property
    def cache_key(self) -> str:
        return label_cache_key(self.embedder.info.fingerprint(), self.labels, self.templates)

    @property
    def label_matrix(self) -> np.ndarray:
        """(n_labels, dim) unit float32 label embeddings (computed once, cached)."""
        if self._matrix is None:
            key = self.cache_key
            matrix = self._cache.get(key, self.cache_dir) if self._cache is not None else None
            if matrix is None:
                matrix = self._embed_labels()
                if self._cache is not None:
                    self._cache.put(key, matrix, self.cache_dir)
            self._matrix = matrix
        return self._matrix

    def _embed_labels(self) -> np.ndarray:
        prompts = self.prompts()
        parts = [
            np.asarray(self.embedder.embed_texts(prompts[i : i + self._text_batch_size]), dtype=np.float32)
            for i in range(0, len(prompts), self._text_batch_size)
        ]
        return label_matrix_from_prompts(np.concatenate(parts), len(self.labels), len(self.templates))

    @property
    def logit_scale(self) -> float:
        return float(self.embedder.logit_scale)

    # ----------------------------------------------------------- image side
    def probabilities(self, image_vectors: np.ndarray) -> np.ndarray:
        """(N, dim) image vectors -> (N, n_labels) probabilities."""
        return label_probabilities(image_vectors, self.label_matrix, self.logit_scale)

    def predict_vectors(self, image_vectors: np.ndarray, top_k: int = 5, sources: Sequence[str] | None = None) -> list[Prediction]:
        probs = self.probabilities(image_vectors)
        names = sources if sources is not None else [f"<vector {i}>" for i in range(len(probs))]
        return [Prediction(source=s, top=t) for s, t in zip(names, top_k_fn(probs, self.labels, top_k))]

    def embed_images(
        self,
        sources: Sequence[str | os.PathLike[str] | Image.Image],
        *,
        batch_size: int = 32,
        progress: bool = False,
        workers: int = 1,
        decode_options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, list[str | None]]:
        """See `embed_image_sources`."""
        return embed_image_sources(
            self.embedder, sources, batch_size=batch_size, progress=progress, workers=workers,
            decode_options=decode_options, desc="classifying",
        )

    def classify_images(
        self,
        sources: Sequence[str | os.PathLike[str] | Image.Image],
        *,
        batch_size: int = 32,
        top_k: int = 5,
        progress: bool = False,
        workers: int = 1,
        decode_options: dict[str, Any] | None = None,
    ) -> list[Prediction]:
        """One Prediction per input, in input order. Unreadable files get `error` set, never raise."""
        vectors, errors = self.embed_images(
            sources, batch_size=batch_size, progress=progress, workers=workers, decode_options=decode_options
        )
        names = [f"<image {i}>" if isinstance(s, Image.Image) else str(s) for i, s in enumerate(sources)]
        ok = [i for i, e in enumerate(errors) if e is None]
        out = [Prediction(source=names[i], error=errors[i]) for i in range(len(sources))]
        if ok:
            probs = self.probabilities(vectors[ok])
            for i, top in zip(ok, top_k_fn(probs, self.labels, top_k)):
                out[i].top = top
        return out

    def report(self, predictions: list[Prediction]) -> ClassificationReport:
        return ClassificationReport(
            predictions=predictions,
            labels=list(self.labels),
            templates=list(self.templates),
            model_id=self.embedder.info.model_id,
        )


top_k_fn = top_k  # methods take a `top_k` argument that shadows the function


# --------------------------------------------------------------------------- conveniences


def _resolve_embedder(model: Embedder | str | None, device: str = "auto") -> Embedder:
    if model is None or isinstance(model, str):
        from mmrag.embedders import DEFAULT_MODEL, load_embedder

        return load_embedder(model or DEFAULT_MODEL, device=device)
    return model


def classify(
    images: str | os.PathLike[str] | Image.Image | Sequence[str | os.PathLike[str] | Image.Image],
    labels: Sequence[str],
    *,
    model: Embedder | str | None = None,
    templates: str | Sequence[str] | None = None,
    top_k: int = 5,
    batch_size: int = 32,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    device: str = "auto",
) -> Prediction | list[Prediction]:
    """Zero-shot classify one image (-> Prediction) or a list of images (-> list[Prediction]).

    `model` is an Embedder or anything `load_embedder` accepts (registry name,
    HF id, local directory; None: the default model). Unreadable files yield a
    Prediction with `error`.
    """
    single = isinstance(images, (str, os.PathLike, Image.Image))
    sources = [images] if single else list(images)  # type: ignore[list-item]
    clf = ZeroShotClassifier(_resolve_embedder(model, device), labels, templates, cache_dir=cache_dir)
    preds = clf.classify_images(sources, batch_size=batch_size, top_k=top_k, progress=progress)  # type: ignore[arg-type]
    return preds[0] if single else preds


zero_shot_classify = classify


def expand_image_paths(paths: Sequence[str | os.PathLike[str]]) -> tuple[list[str], list[SkippedFile]]:
    """Files as given; folders expanded (recursively, sorted, hidden entries skipped) to their images.

    A folder's problems (unreadable entries) come back as SkippedFile; a missing
    path is passed through so that classification reports it per file.
    """
    from mmrag.corpus import CorpusItem, scan_folder

    files: list[str] = []
    skipped: list[SkippedFile] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for entry in scan_folder(path):
                if isinstance(entry, CorpusItem):
                    files.append(str(path / entry.rel_path))
                else:
                    skipped.append(SkippedFile(str(path / entry.rel_path), entry.reason))
        else:
            files.append(str(raw))
    return files, skipped


def classify_paths(
    embedder: Embedder,
    paths: Sequence[str | os.PathLike[str]],
    labels: Sequence[str],
    *,
    templates: str | Sequence[str] | None = None,
    templates_file: str | Path | None = None,
    top_k: int = 5,
    batch_size: int = 32,
    workers: int = 1,
    progress: bool = False,
    cache_dir: str | Path | None = None,
) -> ClassificationReport:
    """Classify files and folders (for `mmrag classify`): one Prediction per image, failures included."""
    files, skipped = expand_image_paths(paths)
    clf = ZeroShotClassifier(embedder, labels, templates, templates_file=templates_file, cache_dir=cache_dir)
    preds = clf.classify_images(files, batch_size=batch_size, top_k=top_k, progress=progress, workers=workers)
    preds.extend(Prediction(source=s.rel_path, error=s.reason) for s in skipped)
    return clf.report(preds)


@dataclass
class SimilarityReport:
    kind: str  # "image-image" | "image-text"
    a: str
    b: str
    score: float  # cosine similarity

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "a": self.a, "b": self.b, "score": self.score}

    def format_table(self) -> str:
        return f"{self.score:.4f}  {self.kind}  {self.a}  <->  {self.b}"


def similarity_report(embedder: Embedder, a: str | os.PathLike[str], b: str | os.PathLike[str]) -> SimilarityReport:
    """Cosine similarity of image `a` with `b`: an image when `b` is an existing file, else a text."""
    if Path(b).is_file():
        return SimilarityReport("image-image", str(a), str(b), image_similarity(embedder, a, b))
    return SimilarityReport("image-text", str(a), str(b), image_text_similarity(embedder, a, str(b)))


def image_similarity(
    embedder: Embedder, a: str | os.PathLike[str] | Image.Image, b: str | os.PathLike[str] | Image.Image
) -> float:
    """Cosine similarity of two images in the embedder's space."""
    vecs = np.asarray(embedder.embed_images([load_image(a), load_image(b)]), dtype=np.float64)
    vecs = _l2_normalize(vecs)
    return float(vecs[0] @ vecs[1])


def image_text_similarity(embedder: Embedder, image: str | os.PathLike[str] | Image.Image, text: str) -> float:
    """Cosine similarity of an image and a text in the embedder's space."""
    img = _l2_normalize(np.asarray(embedder.embed_images([load_image(image)]), dtype=np.float64))[0]
    txt = _l2_normalize(np.asarray(embedder.embed_texts([text]), dtype=np.float64))[0]
    return float(img @ txt)


def default_templates_for(embedder: Embedder) -> list[str]:
    """The default template set for the embedder's prompt language."""
    return load_templates(default_template_set(embedder.info.language))
