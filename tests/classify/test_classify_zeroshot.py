from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mmrag.tasks.classify as clsmod
from classify.conftest import COLOURS, FakeEmbedder, make_image
from mmrag.tasks.classify import (
    LabelCache,
    Prediction,
    ZeroShotClassifier,
    classify,
    classify_paths,
    image_similarity,
    image_text_similarity,
    label_probabilities,
    similarity_report,
    top_k,
    zero_shot_classify,
)

LABELS = ["red", "green", "blue", "cat"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}.", "art of the {}."]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def reference_label_matrix(embedder, labels, templates) -> np.ndarray:
    rows = []
    for lab in labels:
        vecs = unit(np.asarray(embedder.embed_texts([t.format(lab) for t in templates]), dtype=np.float64))
        rows.append(unit(vecs.mean(axis=0)))
    return np.stack(rows)


def reference_probs(embedder, image_vecs, label_matrix) -> np.ndarray:
    logits = embedder.logit_scale * (np.asarray(image_vecs, dtype=np.float64) @ label_matrix.T)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def pil(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def test_label_matrix_is_mean_of_normalised_prompts(fake: FakeEmbedder) -> None:
    clf = ZeroShotClassifier(fake, LABELS, TEMPLATES, cache=None)
    assert clf.prompts()[:3] == ["a photo of a red.", "a drawing of a red.", "art of the red."]
    ref = reference_label_matrix(FakeEmbedder(), LABELS, TEMPLATES)
    np.testing.assert_allclose(clf.label_matrix, ref, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(clf.label_matrix, axis=1), 1.0, atol=1e-6)
    assert clf.label_matrix.dtype == np.float32


def test_classify_folder_matches_direct_computation_and_embeds_each_prompt_once(
    fake: FakeEmbedder, image_folder: Path
) -> None:
    paths = sorted(p for p in image_folder.rglob("*.png") if p.name != "broken.png")
    assert len(paths) == 9
    clf = ZeroShotClassifier(fake, LABELS, TEMPLATES)
    preds = clf.classify_images(paths, batch_size=4, top_k=3)
    # 4 labels x 3 templates, embedded once, in one call
    assert fake.text_calls == 1
    assert sorted(fake.texts_embedded) == sorted(clf.prompts()) and len(fake.texts_embedded) == 12

    ref = FakeEmbedder()  # same model, own counters
    ref_probs = reference_probs(ref, ref.embed_images([pil(p) for p in paths]), reference_label_matrix(ref, LABELS, TEMPLATES))
    assert [p.source for p in preds] == [str(p) for p in paths]
    for pred, row in zip(preds, ref_probs):
        order = np.argsort(-row)[:3]
        assert [lab for lab, _ in pred.top] == [LABELS[j] for j in order]
        np.testing.assert_allclose([s for _, s in pred.top], row[order], rtol=1e-5)
        assert pred.label == LABELS[order[0]] and pred.ok

    # a second classifier and a second folder pass: no new prompt embeddings
    ZeroShotClassifier(fake, LABELS, TEMPLATES).classify_images(paths[:2])
    assert fake.text_calls == 1
    # other templates: a different cache entry
    _ = ZeroShotClassifier(fake, LABELS, ["a {}"]).label_matrix
    assert fake.text_calls == 2


def test_disk_cache_survives_a_new_process(fake: FakeEmbedder, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    first = ZeroShotClassifier(fake, LABELS, TEMPLATES, cache_dir=cache_dir, cache=LabelCache())
    matrix = first.label_matrix.copy()
    files = list(cache_dir.glob("labels-*.npz"))
    assert [f.name for f in files] == [f"labels-{first.cache_key}.npz"]

    other = FakeEmbedder()  # same fingerprint, fresh counters; fresh LRU = a new process
    again = ZeroShotClassifier(other, LABELS, TEMPLATES, cache_dir=cache_dir, cache=LabelCache())
    np.testing.assert_array_equal(again.label_matrix, matrix)
    assert other.text_calls == 0
    # a different model never reads that entry
    third = FakeEmbedder(model_id="fake:v2")
    _ = ZeroShotClassifier(third, LABELS, TEMPLATES, cache_dir=cache_dir, cache=LabelCache()).label_matrix
    assert third.text_calls == 1
    assert len(list(cache_dir.glob("labels-*.npz"))) == 2


def test_lru_evicts_oldest() -> None:
    cache = LabelCache(maxsize=2)
    for key in "abc":
        cache.put(key, np.zeros((1, 2), dtype=np.float32))
    assert len(cache) == 2 and cache.get("a") is None and cache.get("c") is not None


def test_bad_files_are_reported_not_fatal(fake: FakeEmbedder, image_folder: Path) -> None:
    good = image_folder / "red" / "red0.png"
    broken = image_folder / "blue" / "broken.png"
    missing = image_folder / "nope.png"
    in_memory = Image.new("RGB", (10, 10), (0, 0, 255))
    preds = ZeroShotClassifier(fake, LABELS, TEMPLATES).classify_images([broken, good, missing, in_memory, good], top_k=2)
    assert [p.source for p in preds] == [str(broken), str(good), str(missing), "<image 3>", str(good)]
    assert [p.ok for p in preds] == [False, True, False, True, True]
    # a PNG signature with garbage after it: Pillow's own words, without our buffer's repr
    assert preds[0].error == "unsupported or corrupt image (Pillow: cannot identify image file)"
    assert preds[2].error == "file not found"
    assert preds[0].top == [] and preds[0].label is None
    assert preds[1].top == preds[4].top and len(preds[1].top) == 2
    ref = reference_probs(fake, fake.embed_images([in_memory]), reference_label_matrix(fake, LABELS, TEMPLATES))[0]
    assert preds[3].label == LABELS[int(np.argmax(ref))]

    report = ZeroShotClassifier(fake, LABELS, TEMPLATES).report(preds)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["n"] == 5 and data["n_failed"] == 2
    assert data["predictions"][2] == {"source": str(missing), "error": "file not found"}
    table = report.format_table()
    assert re.search(rf"^{re.escape(str(missing))} +ERROR: file not found$", table, re.M)
    assert table.splitlines()[-1] == "2 of 5 image(s) could not be classified"


def test_top_k_is_stable_and_clamped() -> None:
    probs = np.array([[0.25, 0.25, 0.5], [0.1, 0.6, 0.3]])
    assert top_k(probs, ["a", "b", "c"], 2) == [[("c", 0.5), ("a", 0.25)], [("b", 0.6), ("c", 0.3)]]
    assert len(top_k(probs, ["a", "b", "c"], 10)[0]) == 3


def test_label_probabilities_exact_small_case() -> None:
    img = np.array([[1.0, 0.0]])
    labs = np.array([[1.0, 0.0], [0.0, 1.0]])
    p = label_probabilities(img, labs, logit_scale=2.0)
    np.testing.assert_allclose(p, [[np.exp(2) / (np.exp(2) + 1), 1 / (np.exp(2) + 1)]], rtol=1e-12)


def test_label_validation(fake: FakeEmbedder) -> None:
    with pytest.raises(ValueError, match="at least one label"):
        ZeroShotClassifier(fake, [], TEMPLATES)
    with pytest.raises(ValueError, match=r"duplicate labels: \['cat'\]"):
        ZeroShotClassifier(fake, ["cat", "dog", "cat"], TEMPLATES)


def test_default_templates_follow_model_language() -> None:
    assert ZeroShotClassifier(FakeEmbedder(language="zh"), ["猫"]).prompts() == ["一张猫的照片。"]
    assert ZeroShotClassifier(FakeEmbedder(), ["cat"]).prompts() == ["a photo of a cat."]
    assert ZeroShotClassifier(FakeEmbedder(), ["cat"], "en-ensemble").prompts()[1] == "a photo of the cat."


def test_classify_convenience(fake: FakeEmbedder, image_folder: Path) -> None:
    assert zero_shot_classify is classify
    path = image_folder / "green" / "green1.png"
    one = classify(path, LABELS, model=fake, templates=TEMPLATES, top_k=1)
    assert isinstance(one, Prediction) and len(one.top) == 1
    many = classify([path, str(path)], LABELS, model=fake, templates=TEMPLATES, top_k=4)
    assert isinstance(many, list) and len(many) == 2 and many[0].top == many[1].top
    assert many[0].top[0] == one.top[0]
    assert abs(sum(s for _, s in many[0].top) - 1.0) < 1e-9


def test_classify_paths_expands_folders(fake: FakeEmbedder, image_folder: Path) -> None:
    (image_folder / "notes.md").write_text("not an image", encoding="utf-8")
    single = image_folder / "red" / "red0.png"
    report = classify_paths(fake, [image_folder / "green", single, image_folder / "missing.png", image_folder / "blue"],
                            LABELS, templates=TEMPLATES, top_k=2)
    sources = [p.source for p in report.predictions]
    assert sources[:3] == [str(image_folder / "green" / f"green{i}.png") for i in range(3)]
    assert sources[3:5] == [str(single), str(image_folder / "missing.png")]
    # blue/broken.png has a .png name: the folder scan lists it, decoding rejects it
    assert sorted(sources[5:]) == sorted(str(image_folder / "blue" / n) for n in ["blue0.png", "blue1.png", "blue2.png", "broken.png"])
    assert [p.source for p in report.failed] == [str(image_folder / "missing.png"), str(image_folder / "blue" / "broken.png")]
    assert report.labels == LABELS and report.templates == TEMPLATES and report.model_id == "fake:v1"


def test_similarity_report(fake: FakeEmbedder, tmp_path: Path) -> None:
    a = make_image(tmp_path / "a.png", COLOURS["red"], seed=1)
    b = make_image(tmp_path / "b.png", COLOURS["green"], seed=2)
    r = similarity_report(fake, a, b)
    assert r.kind == "image-image" and r.score == image_similarity(fake, a, b)
    r = similarity_report(fake, a, "a red square")
    assert r.to_dict() == {"kind": "image-text", "a": str(a), "b": "a red square", "score": image_text_similarity(fake, a, "a red square")}


def test_package_level_classify_is_the_function(fake: FakeEmbedder, image_folder: Path) -> None:
    import mmrag
    import mmrag.tasks.classify  # noqa: F401  (importing the submodule must not shadow the top-level name)

    path = image_folder / "red" / "red2.png"
    expected = classify(path, LABELS, model=fake, templates=TEMPLATES)
    assert mmrag.classify is clsmod.classify
    assert mmrag.classify(path, LABELS, model=fake, templates=TEMPLATES) == expected


def test_similarities(fake: FakeEmbedder, tmp_path: Path) -> None:
    a = make_image(tmp_path / "a.png", COLOURS["red"], seed=1)
    b = make_image(tmp_path / "b.png", COLOURS["blue"], seed=2)
    va, vb = fake.embed_images([pil(a), pil(b)])
    assert image_similarity(fake, a, b) == pytest.approx(float(np.dot(va, vb)), abs=1e-6)
    assert image_similarity(fake, a, pil(a)) == pytest.approx(1.0, abs=1e-6)
    vt = fake.embed_texts(["a red square"])[0]
    assert image_text_similarity(fake, str(a), "a red square") == pytest.approx(float(np.dot(va, vt)), abs=1e-6)
    with pytest.raises(ValueError, match="cannot use image .*missing.png.*file not found"):
        image_similarity(fake, a, tmp_path / "missing.png")


# ----------------------------------------------------------------- tiny real models


def test_tiny_clip_matches_direct_computation(tiny_clip, image_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    original = tiny_clip.embed_texts
    monkeypatch.setattr(tiny_clip, "embed_texts", lambda texts: (calls.append(list(texts)), original(texts))[1])
    labels = ["red", "green", "blue"]
    paths = sorted(p for p in image_folder.rglob("*.png") if p.name != "broken.png")
    clf = ZeroShotClassifier(tiny_clip, labels, "en-ensemble")
    preds = clf.classify_images(paths, batch_size=4, top_k=3)
    assert len(calls) == 1 and sorted(calls[0]) == sorted(clf.prompts())
    ZeroShotClassifier(tiny_clip, labels, "en-ensemble").classify_images(paths[:3])
    assert len(calls) == 1

    label_matrix = reference_label_matrix(tiny_clip, labels, clf.templates)
    ref = reference_probs(tiny_clip, tiny_clip.embed_images([pil(p) for p in paths]), label_matrix)
    for pred, row in zip(preds, ref):
        order = np.argsort(-row)
        assert [lab for lab, _ in pred.top] == [labels[j] for j in order]
        np.testing.assert_allclose([s for _, s in pred.top], row[order], atol=1e-5)


def test_chinese_prompts_use_the_bert_tokenizer(tiny_chinese_clip, tiny_chinese_clip_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import BertTokenizer

    seen: list[list[int]] = []
    original = tiny_chinese_clip.tokenize

    def spy(texts):
        enc = original(texts)
        seen.extend(enc["input_ids"].tolist())
        return enc

    monkeypatch.setattr(tiny_chinese_clip, "tokenize", spy)
    clf = ZeroShotClassifier(tiny_chinese_clip, ["猫", "狗", "汽车"])
    assert clf.templates == ["一张{}的照片。"]  # the model's language picks the zh set
    assert clf.prompts() == ["一张猫的照片。", "一张狗的照片。", "一张汽车的照片。"]
    _ = clf.label_matrix

    bert = BertTokenizer.from_pretrained(str(tiny_chinese_clip_dir))
    expected = bert(clf.prompts(), padding="longest")["input_ids"]
    assert seen == expected
    # every character is a real vocabulary entry: [CLS] chars... [SEP], no [UNK]
    assert all(bert.unk_token_id not in ids for ids in expected)
    assert expected[0][:9] == [bert.cls_token_id, *bert.convert_tokens_to_ids(list("一张猫的照片。")), bert.sep_token_id]
    assert expected[0][9:] == [bert.pad_token_id]  # padded to the longest prompt (汽车)

    img = Image.new("RGB", (20, 20), (200, 100, 50))
    pred = clf.classify_images([img], top_k=3)[0]
    ref = reference_probs(tiny_chinese_clip, tiny_chinese_clip.embed_images([img]), clf.label_matrix.astype(np.float64))[0]
    assert pred.label == clf.labels[int(np.argmax(ref))]
    np.testing.assert_allclose(sorted((s for _, s in pred.top), reverse=True), np.sort(ref)[::-1], atol=1e-6)
