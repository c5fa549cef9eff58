"""Jobs through the real ingest pipeline: tiny random CLIP, real images, EdgeStore."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmrag.jobs import load_pipeline, rollback, run_pipeline
from mmrag.store import EdgeStore
from mmrag.store.convert import point_id


@pytest.fixture(scope="module")
def tiny_embedder(tiny_clip_dir: Path):
    from mmrag.embedders import load_embedder

    return load_embedder(str(tiny_clip_dir), device="cpu")


def _image(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (24, 20), colour)
    img.paste(Image.new("RGB", (8, 8), (0, 0, 0)), (colour[0] % 16, 2))
    img.save(path, format="PNG")


def _paths(store, name: str) -> set[str]:
    recs, _ = store.scroll(name, limit=100, with_payload=True)
    return {r.payload["path"] for r in recs}


def test_pipeline_sync_rebuild_rollback_with_real_ingest(tmp_path, tiny_embedder):
    corpus = tmp_path / "corpus"
    for i, colour in enumerate([(250, 10, 10), (10, 250, 10), (10, 10, 250)]):
        _image(corpus / f"img{i}.png", colour)
    (corpus / "broken.png").write_bytes(b"not a png")
    yml = tmp_path / "photos.yaml"
    yml.write_text(
        "name: photos\nsource: {folder: corpus}\nmodel: tiny\nprune: true\nkeep_versions: 2\n"
        "batch: {images: 2, writes: 2}\ntagging: {labels: [red, green, blue, cat], threshold: 0.0, top: 1}\n"
    )
    pdef = load_pipeline(yml)
    home = tmp_path / "home"
    store = EdgeStore(home)
    opts = dict(store=store, embedder=tiny_embedder, home=home)

    first = run_pipeline(pdef, **opts)
    assert (first.status, first.exit_code, first.initial, first.target) == ("partial", 0, True, "photos__v1")
    assert [f["path"] for f in first.ingest["failed"]] == ["broken.png"]
    assert first.ingest["indexed"] == 3
    assert run_pipeline(pdef, strict=True, **opts).exit_code == 4
    assert _paths(store, "photos") == {"img0.png", "img1.png", "img2.png"}
    recs, _ = store.scroll("photos", limit=10, with_payload=True)
    assert all(len(r.payload["tags"]) == 1 and r.payload["tags"][0] in {"red", "green", "blue", "cat"} for r in recs)
    assert all(len(r.payload["tag_scores"]) == 1 for r in recs)  # top: 1

    # incremental: one changed, one removed (pruned by policy), one added
    (corpus / "broken.png").unlink()
    _image(corpus / "img0.png", (200, 200, 0))
    os.utime(corpus / "img0.png", (1_700_000_000, 1_700_000_000))
    (corpus / "img1.png").unlink()
    _image(corpus / "new/img3.png", (0, 200, 200))
    rep = run_pipeline(pdef, **opts)
    assert rep.status == "ok" and rep.target == "photos__v1"
    assert {k: rep.ingest[k] for k in ("indexed", "updated", "unchanged", "pruned")} == {
        "indexed": 1, "updated": 1, "unchanged": 1, "pruned": 1}
    assert _paths(store, "photos") == {"img0.png", "img2.png", "new/img3.png"}

    # rebuild: a fresh version with the same content, then the alias moves
    before = {str(r.id): r.vector["image"] for r in store.scroll("photos", limit=10, with_vectors=True)[0]}
    reb = run_pipeline(pdef, rebuild_all=True, **opts)
    assert (reb.status, reb.previous, reb.target) == ("ok", "photos__v1", "photos__v2")
    assert store.get_aliases() == {"photos": "photos__v2"}
    after = {str(r.id): r.vector["image"] for r in store.scroll("photos", limit=10, with_vectors=True)[0]}
    assert after.keys() == before.keys() == {point_id(p) for p in ("img0.png", "img2.png", "new/img3.png")}
    for k in before:  # same model, same files: the same vectors
        np.testing.assert_allclose(after[k], before[k], atol=1e-6)
    assert store.get_spec("photos__v2").extra["tagging"]["labels"] == ["red", "green", "blue", "cat"]

    back = rollback("photos", store=store, home=home)
    assert back.target == "photos__v1" and store.get_aliases() == {"photos": "photos__v1"}
    reports = sorted((home / "reports" / "photos").glob("*.json"))
    assert [json.loads(p.read_text())["job"] for p in reports] == ["sync", "sync", "sync", "rebuild", "rollback"]
    store.close()
