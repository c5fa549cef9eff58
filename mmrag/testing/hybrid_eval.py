"""Hybrid-search quality on the reference model: shared by `bench/hybrid.py` and `tests/quality/`.

A held-out synthetic gallery is ingested with the reference model; `n_codes` of its
captions get a rare catalogue number appended ("... cat. no. QX-4821"). The measures:

* colour/shape prompts ("a photo of a red circle.") text->caption top-1: does the top
  hit show that colour and shape?
* catalogue codes: does the code alone find its image first?
* caption->image recall@k (relevant = an image of the same scene).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmrag.training import synthetic

GALLERY_SEED = 424242  # never used in training (see pipelines/train_reference.py)
_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"


def catalogue_code(i: int, seed: int = 7) -> str:
    """A deterministic code like "QX-4821": two letters, four digits."""
    rng = np.random.default_rng([seed, i])
    a, b = rng.integers(0, len(_LETTERS), size=2)
    return f"{_LETTERS[a]}{_LETTERS[b]}-{int(rng.integers(1000, 10000))}"


@dataclass
class World:
    root: Path
    rows: dict[str, dict[str, Any]]  # path -> manifest row (caption includes the code, if any)
    codes: dict[str, str]  # code -> path
    lang: str


def build_world(out: Path, n: int, *, lang: str = "en", n_codes: int = 40, seed: int = GALLERY_SEED,
                exclude_shapes: Sequence[str] = ()) -> World:
    """Write the gallery and a manifest whose captions carry `n_codes` catalogue numbers."""
    root = synthetic.write_corpus(out, n, seed=seed, lang=lang, manifest="jsonl", sidecars=False)
    rows = [json.loads(line) for line in (root / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    if exclude_shapes:
        rows = [r for r in rows if r["shape"] not in exclude_shapes and r.get("shape2") not in exclude_shapes]
    codes: dict[str, str] = {}
    step = max(1, len(rows) // max(n_codes, 1))
    for j, row in enumerate(rows[::step][:n_codes]):
        code = catalogue_code(j)
        sep = "，编号 " if lang == "zh" else ", cat. no. "
        row["caption"] = f"{row['caption']}{sep}{code}"
        codes[code] = row["path"]
    (root / "manifest.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                         encoding="utf-8")
    return World(root=root, rows={r["path"]: r for r in rows}, codes=codes, lang=lang)


def objects(row: dict[str, Any]) -> set[tuple[str, str]]:
    objs = {(row["color"], row["shape"])}
    if row.get("shape2"):
        objs.add((row["color2"], row["shape2"]))
    return objs


def scene_key(row: dict[str, Any]) -> tuple:
    return tuple(row[k] for k in ("shape", "color", "size", "position", "background", "shape2", "color2",
                                  "size2", "position2"))


def colour_shape_queries(world: World) -> list[tuple[str, str]]:
    return sorted({o for r in world.rows.values() if r["num_objects"] == 1 for o in objects(r)})


def colour_shape_hits(retriever: Any, world: World, **kwargs: Any) -> tuple[int, int]:
    """(hits, queries): top-1 shows the prompt's colour and shape."""
    queries = colour_shape_queries(world)
    hits = 0
    for color, shape in queries:
        docs = retriever.search(synthetic.class_prompt(color, shape, world.lang), k=1, **kwargs)
        hits += bool(docs) and (color, shape) in objects(world.rows[docs[0].metadata["path"]])
    return hits, len(queries)


def code_hits(retriever: Any, world: World, **kwargs: Any) -> tuple[int, int]:
    """(hits, codes): the code alone finds its image first."""
    hits = 0
    for code, path in world.codes.items():
        docs = retriever.search(code, k=1, **kwargs)
        hits += bool(docs) and docs[0].metadata["path"] == path
    return hits, len(world.codes)


def caption_recall(retriever: Any, world: World, ks: Sequence[int] = (1, 5), *, limit: int | None = None,
                   **kwargs: Any) -> dict[int, float]:
    """Caption -> image recall@k, relevant = any image of the same scene (code-free captions)."""
    paths = sorted(world.rows)[: limit or None]
    found = {k: 0 for k in ks}
    for path in paths:
        row = world.rows[path]
        caption = synthetic.caption(synthetic.Scene.from_dict({
            "objects": [{k: row[k + s] for k in ("shape", "color", "size", "position")}
                        for s in ("", "2") if row["shape" + s]],
            "background": row["background"],
        }), world.lang)
        docs = retriever.search(caption, k=max(ks), **kwargs)
        keys = [scene_key(world.rows[d.metadata["path"]]) for d in docs]
        for k in ks:
            found[k] += scene_key(row) in keys[:k]
    return {k: found[k] / len(paths) for k in ks}
