"""Near-duplicate images: groups of points whose stored vectors are nearly parallel.

Each point's stored vector is used as a query against the store itself
(`score_threshold` = the similarity threshold), so the comparisons run inside
Qdrant; the edges found are merged into groups with union-find. Grouping is
transitive: A~B and B~C put A, B and C in one group even if A and C score
below the threshold. `limit_per_point` caps the neighbours fetched per point;
in a cluster bigger than that, transitivity still joins the whole cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from mmrag.store.base import Store
from mmrag.store.schema import IMAGE_VECTOR

__all__ = ["DuplicateGroup", "DuplicateReport", "UnionFind", "find_near_duplicates", "dedup_report"]


class UnionFind:
    """Disjoint sets over hashable keys (path halving, union by size)."""

    def __init__(self) -> None:
        self.parent: dict[Any, Any] = {}
        self.size: dict[Any, int] = {}

    def add(self, x: Any) -> None:
        if x not in self.parent:
            self.parent[x] = x
            self.size[x] = 1

    def find(self, x: Any) -> Any:
        self.add(x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: Any, b: Any) -> Any:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        return ra

    def groups(self) -> list[list[Any]]:
        out: dict[Any, list[Any]] = {}
        for x in self.parent:
            out.setdefault(self.find(x), []).append(x)
        return list(out.values())


@dataclass
class DuplicateGroup:
    """Points that are near duplicates of each other (paths sorted)."""

    ids: list[str]
    paths: list[str]
    max_score: float  # highest pairwise similarity found inside the group
    min_score: float  # lowest similarity among the edges that joined it (>= threshold)
    pairs: list[tuple[str, str, float]] = field(default_factory=list)  # (path, path, score), best first

    @property
    def size(self) -> int:
        return len(self.paths)

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "ids": list(self.ids),
            "paths": list(self.paths),
            "max_score": self.max_score,
            "min_score": self.min_score,
            "pairs": [{"a": a, "b": b, "score": s} for a, b, s in self.pairs],
        }


@dataclass
class DuplicateReport:
    collection: str
    threshold: float
    vector: str
    points: int
    groups: list[DuplicateGroup]

    @property
    def duplicates(self) -> int:
        """Points that could be removed while keeping one per group."""
        return sum(g.size - 1 for g in self.groups)

    def to_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "threshold": self.threshold,
            "vector": self.vector,
            "points": self.points,
            "n_groups": len(self.groups),
            "duplicates": self.duplicates,
            "groups": [g.to_dict() for g in self.groups],
        }

    def format_table(self) -> str:
        lines = [
            f"collection {self.collection}: {len(self.groups)} group(s) of near duplicates "
            f"({self.duplicates} redundant point(s) of {self.points}), {self.vector} vectors, threshold {self.threshold}"
        ]
        for n, g in enumerate(self.groups, 1):
            lines.append(f"[{n}] {g.size} images, max score {g.max_score:.4f}")
            lines.extend(f"    {p}" for p in g.paths)
        return "\n".join(lines)


def _path_of(payload: dict[str, Any] | None, pid: str) -> str:
    return str((payload or {}).get("path") or pid)


def find_near_duplicates(
    store: Store,
    collection: str,
    *,
    threshold: float = 0.95,
    vector: str = IMAGE_VECTOR,
    limit_per_point: int = 20,
    batch: int = 256,
    exact: bool = True,
    progress: bool = False,
) -> list[DuplicateGroup]:
    """Groups of near-duplicate points, largest max score first, then by first path."""
    return _find(store, collection, threshold, vector, limit_per_point, batch, exact, progress)[0]


def dedup_report(
    store: Store,
    collection: str,
    *,
    threshold: float = 0.95,
    vector: str = IMAGE_VECTOR,
    limit_per_point: int = 20,
    batch: int = 256,
    exact: bool = True,
    progress: bool = False,
) -> DuplicateReport:
    """`find_near_duplicates` wrapped in a report (counts, JSON, text table)."""
    groups, points = _find(store, collection, threshold, vector, limit_per_point, batch, exact, progress)
    return DuplicateReport(
        collection=store.resolve(collection), threshold=threshold, vector=vector, points=points, groups=groups
    )


def _find(
    store: Store,
    collection: str,
    threshold: float,
    vector: str,
    limit_per_point: int,
    batch: int,
    exact: bool,
    progress: bool,
) -> tuple[list[DuplicateGroup], int]:
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
    if limit_per_point < 1:
        raise ValueError(f"limit_per_point must be >= 1, got {limit_per_point}")
    target = store.resolve(collection)
    uf = UnionFind()
    edges: dict[tuple[str, str], float] = {}
    paths: dict[str, str] = {}
    points = 0
    bar = tqdm(total=store.count(target), unit="pt", desc="dedup", disable=not progress, dynamic_ncols=True)
    offset: Any = None
    try:
        while True:
            records, offset = store.scroll(target, limit=batch, offset=offset, with_payload=True, with_vectors=[vector])
            for rec in records:
                vec = rec.vector.get(vector) if isinstance(rec.vector, dict) else None
                if vec is None:  # e.g. no text vector for an uncaptioned image
                    continue
                points += 1
                me = str(rec.id)
                paths[me] = _path_of(rec.payload, me)
                # +1: the point itself is (almost always) its own best hit
                hits = store.search(
                    target, vec, using=vector, limit=limit_per_point + 1, score_threshold=threshold,
                    exact=exact, with_payload=True,
                )
                for hit in hits:
                    other = str(hit.id)
                    if other == me:
                        continue
                    paths.setdefault(other, _path_of(hit.payload, other))
                    key = (me, other) if me < other else (other, me)
                    edges[key] = max(edges.get(key, float("-inf")), float(hit.score))
                    uf.union(me, other)
            bar.update(len(records))
            if offset is None:
                break
    finally:
        bar.close()

    by_root: dict[Any, list[tuple[str, str, float]]] = {}
    for (a, b), score in edges.items():
        by_root.setdefault(uf.find(a), []).append((a, b, score))
    groups = []
    for _root, group_edges in by_root.items():
        members = sorted({x for a, b, _ in group_edges for x in (a, b)}, key=lambda pid: (paths[pid], pid))
        pairs = sorted(
            ((*sorted((paths[a], paths[b])), s) for a, b, s in group_edges), key=lambda e: (-e[2], e[0], e[1])
        )
        groups.append(
            DuplicateGroup(
                ids=members,
                paths=[paths[m] for m in members],
                max_score=pairs[0][2],
                min_score=min(s for _, _, s in pairs),
                pairs=pairs,
            )
        )
    groups.sort(key=lambda g: (-g.max_score, g.paths[0]))
    return groups, points
