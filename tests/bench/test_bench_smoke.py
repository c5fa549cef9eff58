"""Smoke run of bench/ingest.py's pieces on a tiny model and tiny corpora (no timing assertions)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import common
from bench import ingest as bench

ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench_corpora")
    return {
        "photos": common.make_photo_corpus(root / "photos", 4, size=(160, 120), workers=1),
        "mixed": common.make_mixed_corpus(root / "mixed", 6, workers=1),
    }


@pytest.fixture(scope="module")
def params(tiny_clip_dir: Path) -> dict[str, object]:
    return {"model_dir": str(tiny_clip_dir), "device": "cpu", "quantize": None, "fast": False,
            "workers": 2, "batch_size": 4, "threads": 0}


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in common.list_images(folder)}


def test_corpora_are_deterministic_cached_and_photo_like(corpora: dict[str, Path], tmp_path: Path) -> None:
    photos = common.list_images(corpora["photos"])
    assert [p.name for p in photos] == [f"photo_{i:05d}.jpg" for i in range(4)]
    again = common.make_photo_corpus(tmp_path / "again", 4, size=(160, 120), workers=1)
    assert _digest(again) == _digest(corpora["photos"])
    # cached: a second call with the same parameters rewrites nothing
    before = {p.name: p.stat().st_mtime_ns for p in photos}
    common.make_photo_corpus(corpora["photos"], 4, size=(160, 120), workers=1)
    assert {p.name: p.stat().st_mtime_ns for p in photos} == before
    with Image.open(photos[3]) as img:
        assert img.format == "JPEG" and img.size == (160, 120)
        assert img.getexif().get(ORIENTATION) == 6  # every 4th photo is a rotated portrait shot
    with Image.open(photos[0]) as img:
        assert img.getexif().get(ORIENTATION) is None
        assert np.asarray(img).std() > 5  # not a flat colour: texture and noise present

    mixed = common.list_images(corpora["mixed"])
    assert [p.suffix for p in mixed] == [".jpg", ".png", ".webp"] * 2
    formats = []
    for p in mixed:
        with Image.open(p) as img:
            formats.append(img.format)
            assert 64 <= min(img.size) and max(img.size) <= 2000
    assert formats == ["JPEG", "PNG", "WEBP"] * 2


def test_clip_dir_loads_through_the_product_path(tmp_path: Path) -> None:
    model_dir = common.make_clip_dir(tmp_path, "tiny")
    assert (model_dir / ".done.json").is_file()
    emb = bench.load_bench_embedder({"model_dir": str(model_dir), "batch_size": 3})
    assert emb.batch_size == 3 and emb.info.dim == 32
    with pytest.raises(ValueError, match="unknown arch"):
        common.make_clip_dir(tmp_path, "vit-h")


def test_b32_and_l14_specs_match_the_released_shapes() -> None:
    b32, l14 = common.ARCHS["b32"], common.ARCHS["l14"]
    assert (b32["vision"]["patch_size"], b32["vision"]["hidden_size"], b32["projection_dim"]) == (32, 768, 512)
    assert (l14["vision"]["patch_size"], l14["vision"]["hidden_size"], l14["vision"]["num_hidden_layers"]) == (14, 1024, 24)
    assert (l14["text"]["hidden_size"], l14["projection_dim"]) == (768, 768)


def test_cosine_stats_and_recall_against_direct_computation() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    stats = common.cosine_stats(a, b)
    direct = [float(x @ y / np.linalg.norm(x) / np.linalg.norm(y)) for x, y in zip(a, b)]
    assert stats == {"mean": pytest.approx(np.mean(direct)), "min": pytest.approx(min(direct)), "n": 5}
    with pytest.raises(ValueError):
        common.cosine_stats(a, b[:3])

    from mmrag.tasks.evaluate import recall_at_k

    img, txt = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    captions = ["a", "b", "a", "c", "d", "d"]
    unique = sorted(set(captions))
    mask = np.array([[c == u for c in captions] for u in unique])
    sim = txt[[captions.index(u) for u in unique]] @ img.T
    got = bench._t2i_recall(img, txt, captions, ks=(1, 2))
    assert got == {"r@1": recall_at_k(sim, mask, 1), "r@2": recall_at_k(sim, mask, 2)}


def test_captions_have_mixed_lengths() -> None:
    caps = common.mixed_captions(200, seed=1)
    assert caps == common.mixed_captions(200, seed=1)
    lengths = [len(c.split()) for c in caps]
    assert min(lengths) >= 3 and max(lengths) >= 20 and np.median(lengths) <= 15


def test_phases_run_on_a_tiny_model(params: dict[str, object], corpora: dict[str, Path], tmp_path: Path) -> None:
    photos = [str(p) for p in common.list_images(corpora["photos"])]
    model = bench.phase_model_only({**params, "files": photos, "n": 8})
    assert model["images"] == 8 and model["images_per_s"] > 0 and model["peak_rss_mb"] > 0

    decode = bench.phase_decode_only({**params, "corpus": str(corpora["mixed"])})
    assert decode["images"] == 6

    home = tmp_path / "home"
    e2e = bench.phase_e2e({**params, "corpus": str(corpora["photos"]), "home": str(home)})
    assert e2e["images"] == 4 and e2e["upserts"] >= 1 and 0 <= e2e["model_busy"] <= 1
    rerun = bench.phase_rerun({**params, "corpus": str(corpora["photos"]), "home": str(home)})
    assert (rerun["unchanged"], rerun["embedded"], rerun["model_calls"], rerun["preprocess_calls"]) == (4, 0, 0, 0)

    pipe = bench.phase_pipeline({**params, "corpus": str(corpora["mixed"]), "fast": True})
    assert pipe["images"] == 6
    assert pipe["decode_executor"] == "thread" and pipe["preprocess_thread_s"] > 0  # auto, on CPU

    for phase in (bench.phase_decode_only, bench.phase_pipeline):
        procs = phase({**params, "corpus": str(corpora["mixed"]), "executor": "process"})
        assert (procs["images"], procs["decode_executor"], procs["preprocess_thread_s"]) == (6, "process", None)
    e2e_procs = bench.phase_e2e({**params, "corpus": str(corpora["photos"]), "home": str(tmp_path / "h2"), "executor": "process"})
    assert (e2e_procs["images"], e2e_procs["decode_executor"]) == (4, "process")

    naive = bench.phase_naive({**params, "files": photos, "limit": 2})
    assert naive["images"] == 2

    text = bench.phase_text({**params, "n_texts": 10, "text_batch_size": 4})
    assert text["texts"] == 10 and text["context"] == 77
    assert text["same_vectors_min_cosine"] > 0.9999  # padding never changes a vector

    auto = bench.phase_batch_auto({**params, "start": 2, "max": 4, "min_seconds": 0})
    assert auto["best"] in (2, 4) and [t["batch_size"] for t in auto["trials"]][0] == 2


def test_fidelity_phase_compares_against_the_reference_path(params: dict[str, object], corpora: dict[str, Path]) -> None:
    files = {name: [str(p) for p in common.list_images(folder)[:3]] for name, folder in corpora.items()}
    fid = bench.phase_fidelity({**params, "files": files, "int8": True, "fast": True})
    for name in ("photos", "mixed"):
        for key in ("int8_vs_fp32", "fast_vs_reference"):
            s = fid[name][key]
            assert s["n"] == 3 and -1.0 <= s["min"] <= s["mean"] <= 1.0 + 1e-9
    # the fast path only differs for JPEGs that draft can shrink; tiny PNG/WebP stay identical
    assert fid["mixed"]["fast_vs_reference"]["min"] > 0.99


def test_render_and_checks_from_real_phase_output(params: dict[str, object], corpora: dict[str, Path], tmp_path: Path) -> None:
    args = bench.parse_args(["--arch", "tiny", "--no-store", "--no-naive", "--texts", "0", "--model-min-seconds", "0"])
    photos = [str(p) for p in common.list_images(corpora["photos"])]
    r = {
        "images": 4,
        "model_only": bench.phase_model_only({**params, "files": photos, "n": 4}),
        "decode_only": bench.phase_decode_only({**params, "corpus": str(corpora["photos"])}),
        "e2e": {**bench.phase_pipeline({**params, "corpus": str(corpora["photos"])}), "kind": "pipeline (no store)"},
    }
    r["e2e_vs_model"] = round(r["e2e"]["images_per_s"] / r["model_only"]["images_per_s"], 3)
    r["e2e_vs_naive"] = None
    procs = {**params, "corpus": str(corpora["photos"]), "executor": "process"}
    r["other_executors"] = {"process": {"decode_only": bench.phase_decode_only(procs),
                                        "e2e": {**bench.phase_pipeline(procs), "kind": "pipeline (no store)"}}}
    results = {
        "config": {"device": "cpu", "device_name": "test", "cpu_count": 2, "quantize": None, "fast_preprocess": False,
                   "no_store": args.no_store},
        "archs": {"tiny": {"batch_size": 4, "corpora": {"photos": r}}},
        "checks": [],
        "verdicts": [],
    }
    bench._check(results["checks"], "tiny/photos end-to-end >= 85% of model-only", r["e2e_vs_model"], 0.85)
    text = bench.render(results)
    assert "tiny/photos" in text and "pipeline (no store)" in text
    alt = r["other_executors"]["process"]
    assert (f"[tiny/photos] process pool instead: decode-only {alt['decode_only']['images_per_s']:.1f}, "
            f"pipeline (no store) {alt['e2e']['images_per_s']:.1f} images/s") in text
    assert f"thread pool: decode-only {r['decode_only']['images_per_s']:.1f}, e2e {r['e2e']['images_per_s']:.1f}" in text
    expected = "PASS" if r["e2e_vs_model"] >= 0.85 else "FAIL"
    assert f"{expected}  tiny/photos end-to-end >= 85% of model-only" in text


def test_cli_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(["--help"])
    assert exc.value.code == 0 and "--no-store" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.parse_args(["--device", "cuda", "--quantize", "int8"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--batch-size", "many"])
    assert bench.parse_args(["--batch-size", "auto"]).batch_size == "auto"


def test_a_phase_runs_in_its_own_process(params: dict[str, object]) -> None:
    out = common.run_phase(bench.MODULE, "text", {**params, "n_texts": 4, "text_batch_size": 4})
    assert out["texts"] == 4 and out["peak_rss_mb"] > 0
    with pytest.raises(RuntimeError, match="phase 'naive' failed"):
        common.run_phase(bench.MODULE, "naive", {**params, "files": []})
