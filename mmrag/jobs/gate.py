"""The evaluation gate of `reindex --rebuild --gate`: switch only if search got no worse.

The new version and the live one answer the same held-out queries: a manifest of
query/expected pairs (jsonl: {"query": "...", "expected": "path/in/corpus.jpg"}), or
the caption -> image pairs of the corpus itself. The alias switches only if the new
recall@k is at least the live one minus `margin`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mmrag.errors import UsageError
from mmrag.retrieval.retriever import MultimodalRetriever


@dataclass(frozen=True)
class EvalGate:
    k: int = 5
    margin: float = 0.0  # how much lower the new recall may be
    queries: Path | None = None  # jsonl of {"query", "expected"}; None: the corpus's own captions
    max_queries: int = 200
    target: str = "image"


@dataclass
class GateResult:
    k: int
    queries: int
    new_recall: float
    live_recall: float | None
    margin: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        live = "n/a (no live version)" if self.live_recall is None else f"{self.live_recall:.4f}"
        verdict = "switch" if self.passed else "keep the live version"
        return (f"gate: recall@{self.k} over {self.queries} held-out queries: new {self.new_recall:.4f}, "
                f"live {live}, margin {self.margin:g} -> {verdict}")


def held_out_queries(store: Any, collection: str, gate: EvalGate) -> list[tuple[str, str]]:
    """(query text, expected path) pairs: the gate's manifest, else captions of `collection`."""
    if gate.queries is not None:
        path = Path(gate.queries)
        if not path.is_file():
            raise UsageError(f"gate queries file not found: {path}")
        pairs = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict) or not row.get("query") or not row.get("expected"):
                raise UsageError(f"{path}:{n}: each line needs 'query' and 'expected' (a corpus path)")
            pairs.append((str(row["query"]), str(row["expected"])))
        return pairs[: gate.max_queries]
    pairs, offset = [], None
    while len(pairs) < gate.max_queries:
        records, offset = store.scroll(collection, limit=256, offset=offset, with_payload=["path", "caption"])
        pairs += [(r.payload["caption"], r.payload["path"]) for r in records if (r.payload or {}).get("caption")]
        if offset is None:
            break
    return sorted(pairs, key=lambda p: p[1])[: gate.max_queries]


def recall_at_k(store: Any, embedder: Any, collection: str, pairs: list[tuple[str, str]], gate: EvalGate) -> float:
    retriever = MultimodalRetriever(store=store, embedder=embedder, collection=collection, k=gate.k,
                                    target=gate.target, query_type="text")  # type: ignore[arg-type]
    found = sum(expected in [d.metadata["path"] for d in retriever.search(q)] for q, expected in pairs)
    return found / len(pairs) if pairs else 0.0


def evaluate_gate(
    store: Any, embedder: Any, *, new: str, live: str | None, gate: EvalGate,
    load_embedder: Callable[[str], Any] | None = None,
) -> GateResult:
    """Recall@k of `new` and of `live` (with the live collection's own model) on the same queries."""
    pairs = held_out_queries(store, new, gate)
    if not pairs:
        raise UsageError("the evaluation gate has no held-out queries: the corpus has no captions; "
                         "give a queries file (--gate-queries)")
    new_recall = recall_at_k(store, embedder, new, pairs, gate)
    live_recall = None
    if live is not None:
        live_spec = store.get_spec(live)
        live_embedder = embedder
        if live_spec is not None and live_spec.model_id != embedder.info.model_id:
            if load_embedder is None:
                from mmrag.embedders import load_embedder as load_embedder_default

                load_embedder = load_embedder_default
            live_embedder = load_embedder(live_spec.model_id)
        live_recall = recall_at_k(store, live_embedder, live, pairs, gate)
    passed = live_recall is None or new_recall >= live_recall - gate.margin - 1e-12
    return GateResult(gate.k, len(pairs), new_recall, live_recall, gate.margin, passed)
