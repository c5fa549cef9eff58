"""Hybrid search, the no-match cut-off and the rebuild gate, on the bundled reference models.

The held-out gallery's captions carry rare catalogue numbers; stars are left out of it so
that "a photo of a red star." has no right answer. The full-size figures (500 images,
63 prompts) are printed by bench/hybrid.py.
"""

from __future__ import annotations

import pytest

from mmrag.embedders.registry import REFERENCE_DIR
from mmrag.ingest import IngestOptions, run_ingest
from mmrag.jobs.gate import EvalGate
from mmrag.jobs.reindex import JobSpec, rebuild
from mmrag.retrieval import MultimodalRetriever
from mmrag.retrieval.calibration import NotCalibrated, calibrate
from mmrag.store import EdgeStore
from mmrag.testing import hybrid_eval as he

pytestmark = pytest.mark.skipif(
    not (REFERENCE_DIR / "clip-shapes-en" / "config.json").is_file(),
    reason="reference model not built: run `python pipelines/train_reference.py`",
)

OPTS = IngestOptions(batch_size=64, workers=2)


def _world(tmp_path_factory, lang: str, n: int, model: str):
    from mmrag.embedders import load_embedder

    emb = load_embedder(model, device="cpu")
    w = he.build_world(tmp_path_factory.mktemp(f"hy-{lang}") / "corpus", n, lang=lang, n_codes=20,
                       exclude_shapes=("star",))
    store = EdgeStore(tmp_path_factory.mktemp(f"home-{lang}"))
    rep = run_ingest(store, emb, root=w.root, manifest=w.root / "manifest.jsonl", collection="shapes",
                     progress=False, options=OPTS)
    assert (rep.indexed, len(rep.failed)) == (len(w.rows), 0)
    return emb, w, store


@pytest.fixture(scope="module")
def en(tmp_path_factory):
    emb, w, store = _world(tmp_path_factory, "en", 200, "mmrag-shapes-en")
    yield emb, w, store
    store.close()


def test_hybrid_beats_dense_caption_search_on_prompts_and_rare_codes(en) -> None:
    emb, w, store = en
    r = MultimodalRetriever(store=store, embedder=emb, collection="shapes")
    dense_hits, n = he.colour_shape_hits(r, w, target="text")
    hybrid_hits, _ = he.colour_shape_hits(r, w, target="hybrid")
    assert hybrid_hits >= round(0.95 * n) and hybrid_hits > dense_hits, (hybrid_hits, dense_hits, n)
    codes_dense, n_codes = he.code_hits(r, w, target="text")
    codes_hybrid, _ = he.code_hits(r, w, target="hybrid")
    assert codes_hybrid >= 0.95 * n_codes and codes_dense <= 0.25 * n_codes, (codes_hybrid, codes_dense)
    # unweighted fusion is not enough: first in both dense lists outranks first in BM25 alone
    plain = MultimodalRetriever(store=store, embedder=emb, collection="shapes", sparse_weight=1.0, dense_weight=1.0)
    assert he.code_hits(plain, w, target="hybrid")[0] < codes_hybrid


def test_hybrid_recall_is_not_worse_than_dense_image_search(en) -> None:
    emb, w, store = en
    r = MultimodalRetriever(store=store, embedder=emb, collection="shapes")
    dense = he.caption_recall(r, w, limit=100, target="image")
    hybrid = he.caption_recall(r, w, limit=100, target="hybrid")
    assert hybrid[1] >= dense[1] and hybrid[5] >= dense[5], (hybrid, dense)


def test_min_relevance_returns_nothing_for_a_shape_not_in_the_corpus(en) -> None:
    emb, w, store = en
    r = MultimodalRetriever(store=store, embedder=emb, collection="shapes", k=3)
    with pytest.raises(NotCalibrated, match="mmrag calibrate"):
        r.search("a photo of a red circle.", min_relevance=95)
    record = calibrate(store, emb, "shapes")
    assert record["prompts"] >= 10 and len(record["image"]) == 101
    assert store.get_spec("shapes").extra["calibration"]["image"] == record["image"]
    for target in ("image", "fused"):
        assert r.search("a photo of a red star.", min_relevance=95, target=target) == [], target
        assert len(r.search("a photo of a red circle.", min_relevance=95, target=target)) == 3, target
    # without the cut-off the absent shape still gets its nearest, wrong, neighbours
    assert len(r.search("a photo of a red star.")) == 3


def test_hybrid_needs_a_text_query(en) -> None:
    emb, w, store = en
    r = MultimodalRetriever(store=store, embedder=emb, collection="shapes", target="hybrid")
    with pytest.raises(ValueError, match="needs a text query"):
        r.search(w.root / sorted(w.rows)[0])


def test_chinese_hybrid_finds_codes_and_keywords(tmp_path_factory) -> None:
    if not (REFERENCE_DIR / "chinese-clip-shapes-zh" / "config.json").is_file():
        pytest.skip("Chinese reference model not built")
    emb, w, store = _world(tmp_path_factory, "zh", 120, "mmrag-shapes-zh")
    try:
        r = MultimodalRetriever(store=store, embedder=emb, collection="shapes")
        hits, n = he.code_hits(r, w, target="hybrid")
        assert hits >= 0.95 * n, (hits, n)
        prompt_hits, queries = he.colour_shape_hits(r, w, target="hybrid")
        assert prompt_hits >= round(0.9 * queries), (prompt_hits, queries)
        # a Chinese keyword alone (no spaces in Chinese): every top hit shows it
        from mmrag.training.synthetic import SHAPES_ZH

        for doc in r.search(SHAPES_ZH["hexagon"], k=3, target="hybrid"):
            assert SHAPES_ZH["hexagon"] in doc.page_content
    finally:
        store.close()


def test_gated_rebuild_keeps_the_live_version_when_recall_drops(en, tiny_clip_dir, tmp_path) -> None:
    from mmrag.embedders import load_embedder

    emb, w, _ = en
    rows = dict(sorted(w.rows.items())[:40])
    root = w.root
    manifest = root / "gate.jsonl"  # paths are relative to the manifest's folder
    import json

    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows.values()), encoding="utf-8")
    store = EdgeStore(tmp_path / "home")
    gate = EvalGate(k=1, margin=0.0)
    job = JobSpec(collection="g", root=None, manifest=manifest, options=OPTS, eval_gate=gate)
    try:
        first = rebuild(job, store=store, embedder=emb, home=tmp_path / "home", migrate=True)
        assert first.ok and first.target == "g__v1" and first.eval_gate["live_recall"] is None, first.error
        assert first.eval_gate["queries"] == 40 and first.eval_gate["new_recall"] >= 0.9
        worse = load_embedder(str(tiny_clip_dir), device="cpu")
        second = rebuild(job, store=store, embedder=worse, home=tmp_path / "home")
        assert not second.ok and store.resolve("g") == "g__v1"
        assert second.eval_gate["live_recall"] == pytest.approx(first.eval_gate["new_recall"])
        assert second.eval_gate["new_recall"] < second.eval_gate["live_recall"]
        assert "keep the live version" in second.error and "live" in second.summary()
        # the same model again: no worse, so it switches
        third = rebuild(job, store=store, embedder=emb, home=tmp_path / "home")
        assert third.ok and store.resolve("g") == third.target != "g__v1"
    finally:
        store.close()
