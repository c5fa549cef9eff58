"""Evaluation harness: zero-shot accuracy on an ImageFolder, image<->text retrieval recall.

Zero-shot (`eval_zeroshot`): `root/<class>/**/<image>`; each class folder is a
label (renamed through `label_map` for the prompt), predictions come from
`ZeroShotClassifier`. Reports top-1/top-5 accuracy, per-class accuracy and a
confusion matrix (rows: true class, columns: predicted class, folder order).

Retrieval (`eval_retrieval`): (image, caption) pairs. Images are deduplicated by
path and captions by their exact string, and relevance is the pair relation
between them:
- image -> text: the relevant texts of an image are all of its captions (an
  image with five COCO captions is a hit when any of them ranks high);
- text -> image: the relevant images of a caption are all images paired with
  that exact string (identical captions of different images are one query, and
  any of those images is a correct answer).
The rank of a query is the 1-based position of its best-ranked relevant item;
ties with irrelevant items are resolved in favour of the relevant item.
recall@k is the share of queries with rank <= k; MRR the mean of 1/rank.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmrag.corpus.manifest import read_pairs as read_manifest_pairs
from mmrag.embedders.base import Embedder
from mmrag.tasks.classify import ZeroShotClassifier, embed_image_sources
from mmrag.tasks.metrics import mean_reciprocal_rank, median_rank, ranks, recall_at_k, relevance_mask

__all__ = [
    "DirectionMetrics",
    "RetrievalReport",
    "ZeroShotReport",
    "eval_retrieval",
    "eval_zeroshot",
    "mean_reciprocal_rank",
    "median_rank",
    "ranks",
    "read_pairs",
    "recall_at_k",
    "relevance_mask",
]

DEFAULT_KS = (1, 5, 10)


# --------------------------------------------------------------------------- zero-shot


@dataclass
class ZeroShotReport:
    model_id: str
    root: str
    classes: list[str]  # folder names, sorted
    labels: list[str]  # prompt labels (classes through label_map)
    templates: list[str]
    n: int  # images evaluated
    top1: float
    top5: float
    top5_k: int  # min(5, number of classes)
    per_class: dict[str, dict[str, Any]]  # class -> {"n", "correct", "accuracy"}
    confusion: list[list[int]]  # [true][predicted], in `classes` order
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "root": self.root,
            "n": self.n,
            "top1": self.top1,
            "top5": self.top5,
            "top5_k": self.top5_k,
            "classes": list(self.classes),
            "labels": list(self.labels),
            "templates": list(self.templates),
            "per_class": {c: dict(v) for c, v in self.per_class.items()},
            "confusion": [list(row) for row in self.confusion],
            "skipped": list(self.skipped),
        }

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    def plot_confusion(self, path: str | os.PathLike[str], *, normalize: bool = False) -> Path:
        from mmrag.tasks.plots import plot_confusion_matrix

        return plot_confusion_matrix(self.confusion, self.classes, path, normalize=normalize, title=f"{self.model_id}  top-1 {self.top1:.3f}")

    def format_table(self) -> str:
        width = max([len("class")] + [len(c) for c in self.classes])
        lines = [
            f"zero-shot {self.model_id} on {self.root}: n={self.n}  top-1={self.top1:.4f}  top-{self.top5_k}={self.top5:.4f}",
            f"{'class'.ljust(width)}  {'n':>6}  {'acc':>7}",
        ]
        for c in self.classes:
            pc = self.per_class[c]
            acc = "-" if pc["accuracy"] is None else f"{pc['accuracy']:.4f}"
            lines.append(f"{c.ljust(width)}  {pc['n']:>6}  {acc:>7}")
        if self.skipped:
            lines.append(f"{len(self.skipped)} file(s) skipped")
        return "\n".join(lines)


def _load_label_map(label_map: Mapping[str, str] | str | os.PathLike[str] | None) -> dict[str, str]:
    if label_map is None:
        return {}
    if isinstance(label_map, Mapping):
        return {str(k): str(v) for k, v in label_map.items()}
    data = json.loads(Path(label_map).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{label_map}: a label map file must hold a JSON object {{folder: label}}")
    return {str(k): str(v) for k, v in data.items()}


def image_folder(root: str | os.PathLike[str]) -> tuple[list[str], list[tuple[str, str, int]], list[dict[str, str]]]:
    """(classes, [(absolute path, root-relative path, class index)], skipped) of an ImageFolder-style tree."""
    from mmrag.corpus import CorpusItem, SkippedFile, scan_folder

    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"evaluation root is not a folder: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"{root} has no class folders (expected root/<class>/<image>)")
    samples: list[tuple[str, str, int]] = []
    skipped: list[dict[str, str]] = []
    for ci, name in enumerate(classes):
        for entry in scan_folder(root / name):
            if isinstance(entry, SkippedFile):
                skipped.append({"path": f"{name}/{entry.rel_path}", "reason": entry.reason})
            elif isinstance(entry, CorpusItem):
                samples.append((str(entry.path), f"{name}/{entry.rel_path}", ci))
    return classes, samples, skipped


def eval_zeroshot(
    embedder: Embedder,
    root: str | os.PathLike[str],
    *,
    label_map: Mapping[str, str] | str | os.PathLike[str] | None = None,
    templates: str | Sequence[str] | None = None,
    batch_size: int = 32,
    progress: bool = False,
    workers: int = 1,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ZeroShotReport:
    """Zero-shot accuracy of `embedder` on an ImageFolder tree. Unreadable images are skipped and listed."""
    classes, samples, skipped = image_folder(root)
    mapping = _load_label_map(label_map)
    unknown = sorted(set(mapping) - set(classes))
    if unknown:
        raise ValueError(f"label_map names folders that do not exist under {root}: {unknown}")
    labels = [mapping.get(c, c) for c in classes]
    clf = ZeroShotClassifier(embedder, labels, templates, cache_dir=cache_dir)

    paths = [p for p, _, _ in samples]
    vectors, errors = embed_image_sources(
        embedder, paths, batch_size=batch_size, progress=progress, workers=workers, desc="evaluating"
    )
    for (_, rel, _), err in zip(samples, errors):
        if err is not None:
            skipped.append({"path": rel, "reason": err})
    ok = np.array([e is None for e in errors], dtype=bool)
    truth = np.array([c for _, _, c in samples], dtype=np.int64)[ok]
    n_classes = len(classes)
    k5 = min(5, n_classes)
    if ok.any():
        probs = clf.probabilities(vectors[ok])
        order = np.argsort(-probs, axis=1, kind="stable")
        pred = order[:, 0]
        in_top5 = (order[:, :k5] == truth[:, None]).any(axis=1)
    else:
        pred = np.zeros(0, dtype=np.int64)
        in_top5 = np.zeros(0, dtype=bool)
    n = int(ok.sum())
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (truth, pred), 1)
    per_class: dict[str, dict[str, Any]] = {}
    for ci, c in enumerate(classes):
        total = int(confusion[ci].sum())
        correct = int(confusion[ci, ci])
        per_class[c] = {"n": total, "correct": correct, "accuracy": (correct / total) if total else None}
    return ZeroShotReport(
        model_id=embedder.info.model_id,
        root=str(root),
        classes=classes,
        labels=labels,
        templates=list(clf.templates),
        n=n,
        top1=float((pred == truth).mean()) if n else 0.0,
        top5=float(in_top5.mean()) if n else 0.0,
        top5_k=k5,
        per_class=per_class,
        confusion=confusion.tolist(),
        skipped=skipped,
    )


# --------------------------------------------------------------------------- retrieval


@dataclass
class DirectionMetrics:
    n_queries: int
    recall: dict[int, float]  # k -> recall@k
    median_rank: float
    mrr: float

    @classmethod
    def from_ranks(cls, rank_values: np.ndarray, ks: Iterable[int]) -> DirectionMetrics:
        rank_values = np.asarray(rank_values)
        return cls(
            n_queries=len(rank_values),
            recall={k: float(np.mean(rank_values <= k)) for k in ks},
            median_rank=median_rank(rank_values),
            mrr=mean_reciprocal_rank(rank_values),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_queries": self.n_queries,
            **{f"R@{k}": v for k, v in self.recall.items()},
            "median_rank": self.median_rank,
            "mrr": self.mrr,
        }


@dataclass
class RetrievalReport:
    model_id: str
    n_pairs: int  # pairs evaluated (after dropping unreadable images)
    n_images: int  # distinct images
    n_texts: int  # distinct caption strings
    image_to_text: DirectionMetrics
    text_to_image: DirectionMetrics
    skipped: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "n_pairs": self.n_pairs,
            "n_images": self.n_images,
            "n_texts": self.n_texts,
            "image_to_text": self.image_to_text.to_dict(),
            "text_to_image": self.text_to_image.to_dict(),
            "skipped": list(self.skipped),
        }

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    def format_table(self) -> str:
        ks = list(self.image_to_text.recall)
        head = f"{'direction':<15} {'queries':>8} " + " ".join(f"{'R@' + str(k):>7}" for k in ks) + f" {'medR':>7} {'MRR':>7}"
        lines = [
            f"retrieval {self.model_id}: {self.n_pairs} pairs, {self.n_images} images, {self.n_texts} distinct captions",
            head,
        ]
        for name, m in (("image->text", self.image_to_text), ("text->image", self.text_to_image)):
            lines.append(
                f"{name:<15} {m.n_queries:>8} " + " ".join(f"{m.recall[k]:>7.4f}" for k in ks)
                + f" {m.median_rank:>7.1f} {m.mrr:>7.4f}"
            )
        if self.skipped:
            lines.append(f"{len(self.skipped)} image(s) skipped")
        return "\n".join(lines)


def read_pairs(manifest: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None) -> list[tuple[str, str]]:
    """(image path, caption) pairs of a `.jsonl`/`.csv`/`.parquet` manifest, paths as strings.

    The corpus reader (`mmrag.corpus.manifest.read_pairs`) does the reading: one
    set of formats and path rules for ingestion, evaluation and fine-tuning.
    """
    return [(str(p), c) for p, c in read_manifest_pairs(Path(manifest), root=root)]


def eval_retrieval(
    embedder: Embedder,
    pairs: Sequence[tuple[str | os.PathLike[str], str]] | str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 32,
    text_batch_size: int = 256,
    progress: bool = False,
    workers: int = 1,
) -> RetrievalReport:
    """Image<->text retrieval metrics over (image path, caption) pairs or a manifest of them."""
    if isinstance(pairs, (str, os.PathLike)):
        pairs = read_pairs(pairs, root=root)
    pairs = [(str(p), str(c)) for p, c in pairs]
    if not pairs:
        raise ValueError("no (image, caption) pairs to evaluate")

    images = list(dict.fromkeys(p for p, _ in pairs))
    vectors, errors = embed_image_sources(
        embedder, images, batch_size=batch_size, progress=progress, workers=workers, desc="evaluating"
    )
    skipped = [{"path": p, "reason": e} for p, e in zip(images, errors) if e is not None]
    good = {p for p, e in zip(images, errors) if e is None}
    image_vecs = vectors[[i for i, e in enumerate(errors) if e is None]]
    images = [p for p in images if p in good]
    pairs = [(p, c) for p, c in pairs if p in good]
    if not pairs:
        raise ValueError("none of the images could be read: " + "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:5]))
    texts = list(dict.fromkeys(c for _, c in pairs))

    text_vecs = np.concatenate(
        [np.asarray(embedder.embed_texts(texts[i : i + text_batch_size]), dtype=np.float32) for i in range(0, len(texts), text_batch_size)]
    )
    img_index = {p: i for i, p in enumerate(images)}
    txt_index = {c: j for j, c in enumerate(texts)}
    relevant = np.zeros((len(images), len(texts)), dtype=bool)
    for p, c in set(pairs):
        relevant[img_index[p], txt_index[c]] = True
    sim = image_vecs.astype(np.float64) @ text_vecs.astype(np.float64).T
    return RetrievalReport(
        model_id=embedder.info.model_id,
        n_pairs=len(set(pairs)),
        n_images=len(images),
        n_texts=len(texts),
        image_to_text=DirectionMetrics.from_ranks(ranks(sim, relevant), ks),
        text_to_image=DirectionMetrics.from_ranks(ranks(sim.T, relevant.T), ks),
        skipped=skipped,
    )
