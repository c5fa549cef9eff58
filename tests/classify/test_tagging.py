from __future__ import annotations

import json

import numpy as np
import pytest
from qdrant_client import models

from classify.conftest import FakeEmbedder
from mmrag.store.convert import point_id
from mmrag.store.filters import filter_from_dict
from mmrag.store.schema import IMAGE_VECTOR, TEXT_VECTOR, CollectionSpec, SchemaMismatch
from mmrag.tasks.classify import ZeroShotClassifier
from mmrag.tasks.tagging import make_ingest_tagger, tag_collection, tags_for_vectors

LABELS = ["cat", "dog", "car", "tree"]
TEMPLATES = ["a photo of a {}.", "a {} outdoors."]
N = 40


def reference_label_matrix(labels, templates) -> np.ndarray:
    emb = FakeEmbedder()
    rows = []
    for lab in labels:
        v = emb.embed_texts([t.format(lab) for t in templates]).astype(np.float64)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        m = v.mean(axis=0)
        rows.append(m / np.linalg.norm(m))
    return np.stack(rows)


def expected_tags(vectors: np.ndarray, labels, templates, top: int, threshold: float | None):
    logits = FakeEmbedder().logit_scale * (vectors.astype(np.float64) @ reference_label_matrix(labels, templates).T)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    out = []
    for row in probs:
        best = np.argsort(-row)[:top]
        out.append(
            ([labels[j] for j in best if threshold is None or row[j] >= threshold], {labels[j]: row[j] for j in best})
        )
    return out


def fill(store, name: str = "photos") -> tuple[list[str], np.ndarray]:
    """N points whose image vectors sit near one label each (plus noise), so tags vary."""
    store.create_collection(CollectionSpec(name=name, dim=8, model_id="fake:v1"))
    lab = reference_label_matrix(LABELS, TEMPLATES).astype(np.float32)
    rng = np.random.default_rng(5)
    vecs = lab[np.arange(N) % len(LABELS)] + rng.normal(scale=0.35, size=(N, 8)).astype(np.float32)
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    paths = [f"img/{i:02d}.jpg" for i in range(N)]
    ids = [point_id(p) for p in paths]
    store.upsert(
        name,
        [
            models.PointStruct(id=pid, vector={IMAGE_VECTOR: v.tolist(), TEXT_VECTOR: v.tolist()}, payload={"path": p})
            for pid, p, v in zip(ids, paths, vecs)
        ],
    )
    return ids, vecs


def test_tags_for_vectors_selection_rule() -> None:
    # two labels along the axes; logit scale ln(3): probabilities 3/4 and 1/4 exactly
    labels = ["x", "y"]
    lab = np.eye(2)
    res = tags_for_vectors(np.array([[1.0, 0.0], [0.0, 1.0]]), lab, np.log(3.0), None, 2, labels=labels)
    assert [r.tags for r in res] == [["x", "y"], ["y", "x"]]
    assert res[0].tag_scores == pytest.approx({"x": 0.75, "y": 0.25}, abs=1e-12)
    res = tags_for_vectors(np.array([[1.0, 0.0]]), lab, np.log(3.0), 0.5, 2, labels=labels)
    assert res[0].tags == ["x"] and set(res[0].tag_scores) == {"x", "y"}  # near misses keep their score
    assert res[0].payload() == {"tags": ["x"], "tag_scores": res[0].tag_scores}
    res = tags_for_vectors(np.array([[1.0, 0.0]]), lab, np.log(3.0), 0.8, 1, labels=labels)
    assert res[0].tags == [] and list(res[0].tag_scores) == ["x"]
    assert tags_for_vectors(np.zeros((0, 2)), lab, 1.0, labels=labels) == []
    with pytest.raises(ValueError, match="top must be >= 1"):
        tags_for_vectors(lab, lab, 1.0, None, 0, labels=labels)
    with pytest.raises(ValueError, match="threshold is a probability"):
        tags_for_vectors(lab, lab, 1.0, 1.5, 1, labels=labels)
    with pytest.raises(ValueError, match="3 labels but 2 label vectors"):
        tags_for_vectors(lab, lab, 1.0, labels=["a", "b", "c"])


def test_tag_collection_writes_direct_computation_and_filters(store) -> None:
    ids, vecs = fill(store)
    indexed: list[tuple] = []
    create_index = store.create_payload_index
    store.create_payload_index = lambda *a: (indexed.append(a), create_index(*a))[1]
    fake = FakeEmbedder()
    report = tag_collection(store, "photos", fake, LABELS, templates=TEMPLATES, top=2, threshold=0.3, batch=16)
    assert fake.text_calls == 1  # prompts embedded once; image vectors read from the store, never re-embedded
    assert indexed == [("photos", "tags", models.PayloadSchemaType.KEYWORD)]

    expected = expected_tags(vecs, LABELS, TEMPLATES, top=2, threshold=0.3)
    records = {str(r.id): r for r in store.retrieve("photos", ids)}
    for pid, (tags, scores) in zip(ids, expected):
        payload = records[pid].payload
        assert payload["tags"] == tags
        assert list(payload["tag_scores"]) == list(scores)
        for lab, p in scores.items():
            assert payload["tag_scores"][lab] == pytest.approx(p, abs=1e-6)
        assert payload["path"].startswith("img/")  # other payload untouched

    assert report.tagged == N and report.without_vector == 0
    counts = {lab: sum(lab in t for t, _ in expected) for lab in LABELS}
    assert report.to_dict()["tag_counts"] == counts
    assert report.untagged == sum(not t for t, _ in expected)
    json.dumps(report.to_dict())
    assert "tagged" in report.format_table()

    want_cat = {pid for pid, (tags, _) in zip(ids, expected) if "cat" in tags}
    assert 0 < len(want_cat) < N
    got, _ = store.scroll("photos", scroll_filter=filter_from_dict({"tags": "cat"}), limit=1000)
    assert {str(r.id) for r in got} == want_cat

    tagging = store.get_spec("photos").extra["tagging"]
    assert tagging["labels"] == LABELS and tagging["templates"] == TEMPLATES
    assert tagging["top"] == 2 and tagging["threshold"] == 0.3 and tagging["model_id"] == "fake:v1"


def test_retagging_replaces_scores(store) -> None:
    ids, vecs = fill(store)
    tag_collection(store, "photos", FakeEmbedder(), LABELS, templates=TEMPLATES, top=3)
    clf = ZeroShotClassifier(FakeEmbedder(), ["boat", "house"], TEMPLATES)
    tag_collection(store, "photos", clf, top=3)
    expected = expected_tags(vecs, ["boat", "house"], TEMPLATES, top=3, threshold=None)
    rec = store.retrieve("photos", [ids[0]])[0]
    assert rec.payload["tags"] == expected[0][0] and set(rec.payload["tag_scores"]) == {"boat", "house"}
    assert store.get_spec("photos").extra["tagging"]["labels"] == ["boat", "house"]


def test_tagging_refuses_another_model(store) -> None:
    fill(store)
    with pytest.raises(SchemaMismatch, match="'fake:v1'.*--model 'fake:v1'"):
        tag_collection(store, "photos", FakeEmbedder(model_id="other"), LABELS)
    with pytest.raises(ValueError, match="does not exist"):
        tag_collection(store, "nope", FakeEmbedder(), LABELS)
    with pytest.raises(ValueError, match="at least one label"):
        tag_collection(store, "photos", FakeEmbedder(), [])


def test_ingest_tagger(store) -> None:
    ids, vecs = fill(store)
    tagger = make_ingest_tagger(FakeEmbedder(), LABELS, store=store, collection="photos", templates=TEMPLATES, top=1)
    out = tagger(vecs[:5])
    expected = expected_tags(vecs[:5], LABELS, TEMPLATES, top=1, threshold=None)
    assert [o["tags"] for o in out] == [t for t, _ in expected]
    assert [list(o["tag_scores"]) for o in out] == [list(s) for _, s in expected]
    assert store.get_spec("photos").extra["tagging"]["labels"] == LABELS
