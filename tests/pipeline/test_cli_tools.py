"""CLI wiring of classify, tag, similarity, dedup and eval (library math is tested in tests/classify)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from mmrag.cli import main
from pipeline.conftest import GOOD_IMAGES


def run_json(capsys, *argv):
    code = main([*argv, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_classify_folder_matches_the_classifier(env, capsys, tiny_embedder):
    from mmrag.tasks.classify import ZeroShotClassifier

    res = run_json(capsys, "classify", str(env["corpus"] / "sub"), "--labels", "red,green,blue", "--top-k", "2")
    assert res["labels"] == ["red", "green", "blue"] and res["n"] == 2 and res["n_failed"] == 0
    clf = ZeroShotClassifier(tiny_embedder, ["red", "green", "blue"])
    for pred in res["predictions"]:
        with Image.open(pred["source"]) as im:
            probs = clf.probabilities(tiny_embedder.embed_images([im.convert("RGB")]))[0]
        order = np.argsort(-probs)[:2]
        assert [t["label"] for t in pred["top"]] == [clf.labels[i] for i in order]
        np.testing.assert_allclose([t["score"] for t in pred["top"]], probs[order], atol=1e-5)

    png = env["tmp"] / "cls.png"
    assert main(["classify", str(env["corpus"] / "red.png"), "--labels", "red,blue", "--plot", str(png)]) == 0
    assert png.stat().st_size > 0


def test_tags_are_filterable_from_cli_and_retriever(env, capsys, tiny_embedder):
    from mmrag.retrieval import MultimodalRetriever
    from mmrag.store import EdgeStore

    run_json(capsys, "ingest", str(env["corpus"]), "-c", "photos")
    tagged = run_json(capsys, "tag", "-c", "photos", "--labels", "cat,dog,car", "--top", "1", "--threshold", "0")
    assert tagged["tagged"] == len(GOOD_IMAGES)

    store = EdgeStore(env["tmp"] / "home")
    try:
        by_label: dict[str, set[str]] = {}
        offset = None
        while True:
            recs, offset = store.scroll("photos", offset=offset)
            for r in recs:
                assert len(r.payload["tags"]) == 1
                by_label.setdefault(r.payload["tags"][0], set()).add(r.payload["path"])
            if offset is None:
                break
        label, paths = next(iter(by_label.items()))
        docs = MultimodalRetriever(store=store, embedder=tiny_embedder, collection="photos", k=20,
                                   filter={"tags": label}).invoke("anything")
        assert {d.metadata["path"] for d in docs} == paths
    finally:
        store.close()

    hits = run_json(capsys, "search", "anything", "-c", "photos", "-k", "20", "--filter", f"tags={label}")["hits"]
    assert {h["path"] for h in hits} == paths


def test_ingest_with_tag_labels_writes_tags(env, capsys):
    labels = env["tmp"] / "labels.txt"
    labels.write_text("# animals\ncat\ndog\n", encoding="utf-8")
    run_json(capsys, "ingest", str(env["corpus"]), "-c", "photos", "--tag-labels", str(labels))
    hits = run_json(capsys, "search", "x", "-c", "photos", "-k", "20", "--filter", "tags=cat|dog")["hits"]
    assert len(hits) == len(GOOD_IMAGES)


def test_similarity_image_image_and_image_text(env, capsys, tiny_embedder):
    red = str(env["corpus"] / "red.png")
    assert run_json(capsys, "similarity", red, red)["score"] == pytest.approx(1.0, abs=1e-5)
    res = run_json(capsys, "similarity", red, "--text", "a red picture")
    with Image.open(red) as im:
        want = float(tiny_embedder.embed_images([im.convert("RGB")])[0] @ tiny_embedder.embed_texts(["a red picture"])[0])
    assert res["kind"] == "image-text" and res["score"] == pytest.approx(want, abs=1e-5)


def test_dedup_finds_a_copied_image(env, capsys):
    shutil.copy(env["corpus"] / "red.png", env["corpus"] / "red copy.png")
    run_json(capsys, "ingest", str(env["corpus"]), "-c", "photos")
    res = run_json(capsys, "dedup", "-c", "photos", "--threshold", "0.9999")
    assert [sorted(g["paths"]) for g in res["groups"]] == [["red copy.png", "red.png"]]


def test_eval_zeroshot_and_retrieval(env, capsys, tiny_embedder):
    root = env["tmp"] / "imagefolder"
    for cls, colour in {"red": (250, 0, 0), "blue": (0, 0, 250)}.items():
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (20 + i, 20), colour).save(root / cls / f"{i}.png")
    out, png = env["tmp"] / "zs.json", env["tmp"] / "cm.png"
    res = run_json(capsys, "eval", "zeroshot", str(root), "--out", str(out), "--confusion-png", str(png))
    assert res["n"] == 4 and res["classes"] == ["blue", "red"]
    assert json.loads(out.read_text())["top1"] == res["top1"] and png.stat().st_size > 0
    assert sum(map(sum, res["confusion"])) == 4

    manifest = env["tmp"] / "pairs.jsonl"
    manifest.write_text("".join(json.dumps({"path": str(p), "caption": f"a {p.parent.name} square"}) + "\n"
                                for p in sorted(root.rglob("*.png"))), encoding="utf-8")
    res = run_json(capsys, "eval", "retrieval", "--manifest", str(manifest), "--ks", "1,2")
    assert (res["n_pairs"], res["n_images"], res["n_texts"]) == (4, 4, 2)
    from mmrag.tasks.evaluate import eval_retrieval

    direct = eval_retrieval(tiny_embedder, manifest, ks=(1, 2)).to_dict()
    for direction in ("image_to_text", "text_to_image"):
        assert res[direction] == pytest.approx(direct[direction])
    assert set(res["text_to_image"]) == {"n_queries", "R@1", "R@2", "median_rank", "mrr"}


def test_finetune_from_scratch_then_ingest_with_the_result(env, capsys):
    from mmrag.training.synthetic import write_corpus

    data = write_corpus(env["tmp"] / "pairs", 48, seed=5, manifest="jsonl", image_size=32)
    out = env["tmp"] / "my-clip"
    res = run_json(capsys, "finetune", "--manifest", str(data / "manifest.jsonl"), "--out", str(out),
                   "--from-scratch", "tiny", "--image-size", "32", "--epochs", "2", "--batch-size", "16",
                   "--device", "cpu")
    assert res["out_dir"] == str(out) and len(res["epochs"]) == 2 and 1 <= res["best_epoch"] <= 2
    assert (out / "config.json").is_file() and (out / "checkpoint-last").is_dir()
    rep = run_json(capsys, "ingest", str(data), "-c", "tuned", "--model", str(out))
    assert rep["indexed"] == 48 and rep["model_id"] == f"local-dir:{out.resolve()}"
