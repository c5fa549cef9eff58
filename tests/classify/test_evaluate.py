from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classify.conftest import FakeEmbedder
from mmrag.tasks.evaluate import (
    eval_retrieval,
    eval_zeroshot,
    mean_reciprocal_rank,
    median_rank,
    ranks,
    read_pairs,
    recall_at_k,
    relevance_mask,
)
from mmrag.tasks.plots import confusion_figure_size

SIM = np.array(
    [
        [0.9, 0.1, 0.5],
        [0.2, 0.3, 0.8],
        [0.4, 0.6, 0.7],
    ]
)


# ----------------------------------------------------------------- pure metrics


def test_ranks_hand_computed() -> None:
    assert ranks(SIM, [0, 1, 2]).tolist() == [1, 2, 1]
    assert ranks(SIM, [1, 0, 0]).tolist() == [3, 3, 3]
    # several relevant items: the best-ranked one counts
    assert ranks(SIM, [{1, 2}, {0, 1}, {1, 2}]).tolist() == [2, 2, 1]
    mask = np.array([[True, False, False], [False, False, True], [False, True, False]])
    assert ranks(SIM, mask).tolist() == [1, 1, 2]
    # ties with irrelevant items favour the relevant one
    assert ranks(np.array([[0.5, 0.5, 0.5]]), [2]).tolist() == [1]


def test_recall_mrr_median_hand_computed() -> None:
    assert recall_at_k(SIM, [0, 1, 2], 1) == pytest.approx(2 / 3)
    assert recall_at_k(SIM, [0, 1, 2], 2) == 1.0
    assert recall_at_k(SIM, [1, 0, 0], 2) == 0.0
    r = ranks(SIM, [0, 1, 2])
    assert mean_reciprocal_rank(r) == pytest.approx((1 + 0.5 + 1) / 3)
    assert median_rank(r) == 1.0
    assert median_rank(np.array([1, 2, 4, 10])) == 3.0
    with pytest.raises(ValueError, match="k must be >= 1"):
        recall_at_k(SIM, [0, 1, 2], 0)


def test_relevance_validation() -> None:
    with pytest.raises(ValueError, match=r"queries without any relevant item: \[1\]"):
        ranks(SIM, [{0}, set(), {2}])
    with pytest.raises(ValueError, match="2 relevance entries for 3 queries"):
        ranks(SIM, [0, 1])
    with pytest.raises(ValueError, match="relevance mask has shape"):
        relevance_mask(np.ones((2, 2), dtype=bool), (3, 3))


# ----------------------------------------------------------------- zero-shot


def _pil(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def _direct_zeroshot(embedder, root: Path, classes: list[str], labels: list[str], templates: list[str]):
    files, truth = [], []
    for ci, c in enumerate(classes):
        for p in sorted((root / c).glob("*.png")):
            if p.name != "broken.png":
                files.append(p)
                truth.append(ci)
    img = np.asarray(embedder.embed_images([_pil(p) for p in files]), dtype=np.float64)
    rows = []
    for lab in labels:
        t = np.asarray(embedder.embed_texts([tpl.format(lab) for tpl in templates]), dtype=np.float64)
        t /= np.linalg.norm(t, axis=1, keepdims=True)
        rows.append(t.mean(axis=0) / np.linalg.norm(t.mean(axis=0)))
    logits = img @ np.stack(rows).T
    return np.array(truth), np.argmax(logits, axis=1), np.argsort(-logits, axis=1)


@pytest.mark.parametrize("which", ["fake", "tiny_clip"])
def test_eval_zeroshot_matches_direct_computation(which: str, request, image_folder: Path, tmp_path: Path) -> None:
    embedder = FakeEmbedder() if which == "fake" else request.getfixturevalue("tiny_clip")
    templates = ["a photo of a {}.", "a {} thing."]
    label_map = {"red": "crimson"}
    report = eval_zeroshot(embedder, image_folder, label_map=label_map, templates=templates, batch_size=4)

    assert report.classes == ["blue", "green", "red"] and report.labels == ["blue", "green", "crimson"]
    truth, pred, order = _direct_zeroshot(embedder, image_folder, report.classes, report.labels, templates)
    assert report.n == 9
    assert report.top1 == float(np.mean(pred == truth))
    assert report.top5_k == 3 and report.top5 == 1.0
    confusion = np.zeros((3, 3), dtype=int)
    np.add.at(confusion, (truth, pred), 1)
    assert report.confusion == confusion.tolist()
    for ci, c in enumerate(report.classes):
        assert report.per_class[c] == {"n": 3, "correct": int(confusion[ci, ci]), "accuracy": confusion[ci, ci] / 3}
    assert [s["path"] for s in report.skipped] == ["blue/broken.png"]

    out = report.write_json(tmp_path / "out" / "zs.json")
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["confusion"] == confusion.tolist() and data["n"] == 9 and data["top1"] == report.top1
    png = report.plot_confusion(tmp_path / "out" / "cm.png")
    with Image.open(png) as im:
        assert im.size == confusion_figure_size(3)
    assert "top-1=" in report.format_table()


def test_eval_zeroshot_top5_and_label_map_file(image_folder: Path, tmp_path: Path) -> None:
    for extra in ["d", "e", "f", "g"]:  # 7 classes: top-5 is a real top-5
        (image_folder / extra).mkdir()
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"blue": "a blue square"}), encoding="utf-8")
    emb = FakeEmbedder()
    report = eval_zeroshot(emb, image_folder, label_map=mapping, templates="en")
    assert report.top5_k == 5 and report.labels[0] == "a blue square"
    truth, pred, order = _direct_zeroshot(emb, image_folder, report.classes, report.labels, ["a photo of a {}."])
    assert report.top5 == float(np.mean([t in o[:5] for t, o in zip(truth, order)]))
    assert report.per_class["d"] == {"n": 0, "correct": 0, "accuracy": None}
    with pytest.raises(ValueError, match=r"label_map names folders that do not exist.*\['zebra'\]"):
        eval_zeroshot(emb, image_folder, label_map={"zebra": "z"})


# ----------------------------------------------------------------- retrieval


def _pairs(root: Path) -> list[tuple[str, str]]:
    p = lambda c, i: str(root / c / f"{c}{i}.png")  # noqa: E731
    return [
        (p("red", 0), "a red thing"),
        (p("red", 0), "something warm"),  # one image, two captions
        (p("red", 1), "a red thing"),  # same caption, another image: one relevant set
        (p("green", 0), "a green field"),
        (p("green", 1), "grass"),
        (p("blue", 0), "the sky"),
        (p("blue", 1), "deep blue sea"),
        (p("blue", 2), "ocean"),
        (str(root / "blue" / "broken.png"), "lost caption"),  # unreadable: dropped with its pair
    ]


def _direct_retrieval(embedder, pairs):
    pairs = [(p, c) for p, c in pairs if "broken" not in p]
    images = list(dict.fromkeys(p for p, _ in pairs))
    texts = list(dict.fromkeys(c for _, c in pairs))
    iv = np.asarray(embedder.embed_images([_pil(Path(p)) for p in images]), dtype=np.float64)
    tv = np.asarray(embedder.embed_texts(texts), dtype=np.float64)
    sim = iv @ tv.T
    rel = np.zeros(sim.shape, dtype=bool)
    for p, c in pairs:
        rel[images.index(p), texts.index(c)] = True

    def first_relevant(s, r):
        order = np.argsort(-s, axis=1, kind="stable")
        return np.array([1 + int(np.flatnonzero(r[q][order[q]])[0]) for q in range(len(s))])

    return first_relevant(sim, rel), first_relevant(sim.T, rel.T), len(images), len(texts)


@pytest.mark.parametrize("which", ["fake", "tiny_clip"])
def test_eval_retrieval_matches_direct_computation(which: str, request, image_folder: Path) -> None:
    embedder = FakeEmbedder() if which == "fake" else request.getfixturevalue("tiny_clip")
    pairs = _pairs(image_folder)
    report = eval_retrieval(embedder, pairs, batch_size=3)
    i2t, t2i, n_img, n_txt = _direct_retrieval(embedder, pairs)
    assert (report.n_images, report.n_texts, report.n_pairs) == (n_img, n_txt, 8) == (7, 7, 8)
    assert [s["path"] for s in report.skipped] == [str(image_folder / "blue" / "broken.png")]
    for got, r in ((report.image_to_text, i2t), (report.text_to_image, t2i)):
        assert got.n_queries == 7
        assert got.recall == {k: float(np.mean(r <= k)) for k in (1, 5, 10)}
        assert got.median_rank == float(np.median(r))
        assert got.mrr == pytest.approx(float(np.mean(1.0 / r)), abs=1e-12)
    data = json.loads(json.dumps(report.to_dict()))
    assert set(data["image_to_text"]) == {"n_queries", "R@1", "R@5", "R@10", "median_rank", "mrr"}
    assert "image->text" in report.format_table()


def test_read_pairs_from_manifests(image_folder: Path, tmp_path: Path) -> None:
    jsonl = image_folder / "pairs.jsonl"
    jsonl.write_text(
        "\n".join([
            json.dumps({"path": "red/red0.png", "captions": ["a red thing", "something warm"]}),
            json.dumps({"path": "red/red0.png", "caption": "again red"}),
            json.dumps({"path": "green/green0.png", "caption": "  "}),
            "",
        ]),
        encoding="utf-8",
    )
    red0 = str(image_folder / "red" / "red0.png")
    assert read_pairs(jsonl) == [(red0, "a red thing"), (red0, "something warm"), (red0, "again red")]
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("path,caption\nred/red0.png,a red thing\nblue/blue1.png,\"sea, deep\"\n", encoding="utf-8")
    assert read_pairs(csv_path, root=image_folder) == [(red0, "a red thing"), (str(image_folder / "blue" / "blue1.png"), "sea, deep")]
    report = eval_retrieval(FakeEmbedder(), csv_path, root=image_folder)
    assert (report.n_images, report.n_texts) == (2, 2)
    bad = tmp_path / "pairs.txt"
    bad.write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="unsupported manifest format"):
        read_pairs(bad)
    with pytest.raises(ValueError, match="no \\(image, caption\\) pairs"):
        eval_retrieval(FakeEmbedder(), [])
