"""The ONNX Runtime backend: export cache, runtime choice, collections, and a query path without torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmrag.embedders import load_embedder
from mmrag.embedders import onnx as onnx_backend
from mmrag.embedders.registry import resolve_model, resolve_runtime
from mmrag.store.schema import CollectionSpec, SchemaMismatch, check_compatible

REPO = Path(__file__).resolve().parents[2]


def test_export_is_cached_by_model_hash(tiny_clip_dir: Path, tmp_path: Path, monkeypatch) -> None:
    model = shutil.copytree(tiny_clip_dir, tmp_path / "model", ignore=shutil.ignore_patterns(".mmrag-onnx"))
    first = onnx_backend.ensure_export(str(model), backend="hf-clip", cache_dir=None)
    assert first.parent == model / ".mmrag-onnx" and first.name.endswith(f"-e{onnx_backend.EXPORTER_VERSION}")
    assert sorted(p.name for p in first.iterdir()) == ["meta.json", "text.onnx", "tokenizer.json", "transform.json",
                                                        "vision.onnx"]
    calls = []
    monkeypatch.setattr(onnx_backend, "export_model", lambda *a, **k: calls.append(a))
    assert onnx_backend.ensure_export(str(model), backend="hf-clip", cache_dir=None) == first
    assert calls == []  # cached: no second export
    # other weights, other key
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    second_dir = onnx_backend.export_dir_for(model, model / ".mmrag-onnx")
    assert second_dir != first


def test_read_only_model_dir_exports_into_the_cache_dir(tiny_clip_dir: Path, tmp_path: Path, monkeypatch) -> None:
    model = tiny_clip_dir.resolve()
    monkeypatch.setattr(onnx_backend, "_writable_dir", lambda path: False)
    monkeypatch.setattr(onnx_backend, "export_model", lambda src, out, backend: Path(out))
    got = onnx_backend.ensure_export(str(model), backend="hf-clip", cache_dir=tmp_path / "cache")
    assert got.parent == tmp_path / "cache"
    assert got.name == onnx_backend.export_dir_for(model, model / ".mmrag-onnx").name  # same key, other place
    with pytest.raises(ValueError, match="not writable and no ONNX cache directory"):
        onnx_backend.export_root(model, None, beside_model=True)
    # bundled and hub models never write beside themselves
    assert onnx_backend.export_root(tmp_path, tmp_path / "c", beside_model=False) == tmp_path / "c"


def test_runtime_choice(tiny_clip_dir: Path, monkeypatch) -> None:
    import mmrag.embedders.registry as registry

    spec = resolve_model(str(tiny_clip_dir))
    monkeypatch.setattr(registry, "_accelerator_present", lambda: False)
    assert resolve_runtime("auto", spec, device="auto") == "onnx"
    assert resolve_runtime("auto", spec, device="cpu") == "onnx"
    assert resolve_runtime("auto", spec, device="cuda") == "torch"
    monkeypatch.setattr(registry, "_accelerator_present", lambda: True)
    assert resolve_runtime("auto", spec, device="auto") == "torch"  # a GPU: torch fp16
    assert resolve_runtime("auto", spec, device="auto", quantize="int8") == "onnx"
    assert resolve_runtime("torch", spec, device="cpu") == "torch"
    with pytest.raises(ValueError, match="runs through ONNX Runtime"):
        resolve_runtime("torch", spec, quantize="int8")
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        resolve_runtime("tensorrt", spec)
    with pytest.raises(ValueError, match="torch only"):
        resolve_runtime("onnx", resolve_model("chinese-clip-rn50"))
    monkeypatch.setattr(registry, "_onnxruntime_present", lambda: False)
    monkeypatch.setattr(registry, "_accelerator_present", lambda: False)
    assert resolve_runtime("auto", spec, device="cpu") == "torch"


def test_collections_share_fp32_but_never_mix_int8() -> None:
    fp32 = CollectionSpec(name="c", dim=32, model_id="m", extra={"runtime": "torch"})
    check_compatible(fp32, CollectionSpec(name="c", dim=32, model_id="m", extra={"runtime": "onnx"}))
    with pytest.raises(SchemaMismatch, match="quantization=None, but quantization='int8-onnx'"):
        check_compatible(fp32, CollectionSpec(name="c", dim=32, model_id="m", quantization="int8-onnx"))
    legacy = CollectionSpec(name="c", dim=32, model_id="m", quantization="int8")
    with pytest.raises(SchemaMismatch, match="torch.ao int8 of earlier mmrag versions"):
        check_compatible(legacy, CollectionSpec(name="c", dim=32, model_id="m", quantization="int8-onnx"))


def test_ingest_records_runtime_and_refuses_int8_into_fp32(tiny_clip_dir: Path, tmp_path: Path) -> None:
    from PIL import Image
    from qdrant_client import QdrantClient

    from mmrag.ingest import run_ingest
    from mmrag.store import QdrantClientStore

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, colour in enumerate([(250, 0, 0), (0, 250, 0)]):
        Image.new("RGB", (40, 30), colour).save(corpus / f"{i}.png")
    store = QdrantClientStore(QdrantClient(":memory:"))
    fp32 = load_embedder(str(tiny_clip_dir), device="cpu", backend="onnx")
    report = run_ingest(store, fp32, root=corpus, collection="c", progress=False)
    assert report.indexed == 2
    assert store.get_spec("c").extra["runtime"] == "onnx" and store.get_spec("c").quantization is None
    torch_fp32 = load_embedder(str(tiny_clip_dir), device="cpu", backend="torch")
    (corpus / "2.png").write_bytes((corpus / "0.png").read_bytes())
    assert run_ingest(store, torch_fp32, root=corpus, collection="c", progress=False).indexed == 1  # same space
    int8 = load_embedder(str(tiny_clip_dir), device="cpu", quantize="int8")
    with pytest.raises(SchemaMismatch, match="int8-onnx"):
        run_ingest(store, int8, root=corpus, collection="c", progress=False)
    assert store.count("c") == 3  # nothing was mixed in
    store.close()


_INGEST = """
import json, sys
from mmrag.cli.main import main
code = main(["ingest", sys.argv[1], "--json"])
print(json.dumps({"code": code, "qdrant_client": "qdrant_client" in sys.modules}), file=sys.stderr)
"""

_SEARCH = """
import json, sys, time
t0 = time.perf_counter()
from mmrag.cli.main import main
code = main(["search", "a red picture", "-k", "2", "--json"])
lazy = ["torch", "transformers", "langchain_core.retrievers", "langchain_core.embeddings", "langsmith", "tenacity",
        "qdrant_client"]
print(json.dumps({"code": code, "onnxruntime": "onnxruntime" in sys.modules,
                  "imported": [m for m in lazy if m in sys.modules]}), file=sys.stderr)
"""


def test_onnx_search_imports_neither_torch_nor_transformers(tiny_clip_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "MMRAG_HOME": str(tmp_path / "home"), "MMRAG_MODEL": str(tiny_clip_dir),
           "MMRAG_BACKEND": "onnx", "MMRAG_WORKERS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    env.pop("QDRANT_URL", None)
    from PIL import Image

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    Image.new("RGB", (40, 30), (250, 0, 0)).save(corpus / "red.png")
    Image.new("RGB", (30, 40), (0, 0, 250)).save(corpus / "blue.png")
    ingest = subprocess.run([sys.executable, "-c", _INGEST, str(corpus)], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert ingest.returncode == 0, ingest.stderr
    assert json.loads(ingest.stdout)["indexed"] == 2
    # the embedded store writes plain points (store/points.py): ingestion never imports qdrant-client either
    assert json.loads(ingest.stderr.strip().splitlines()[-1]) == {"code": 0, "qdrant_client": False}
    proc = subprocess.run([sys.executable, "-c", _SEARCH], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == "loading model …"  # shown before the heavy imports
    # neither runtime's Python stack, nor LangChain's retriever/tracing stack, nor the retry library, nor
    # qdrant-client (the embedded store's hits are plain dataclasses; importing it alone takes ~1.2 s)
    assert json.loads(lines[-1]) == {"code": 0, "onnxruntime": True, "imported": []}
    hits = json.loads(proc.stdout)["hits"]
    assert sorted(h["path"] for h in hits) == ["blue.png", "red.png"]
    # the same scores as the torch reference
    ref = load_embedder(str(tiny_clip_dir), device="cpu", backend="torch")
    q = ref.embed_texts(["a red picture"])[0]
    for h in hits:
        img = ref.embed_images([Image.open(corpus / h["path"]).convert("RGB")])[0]
        assert h["score"] == pytest.approx(float(np.dot(q, img)), abs=1e-5)


@pytest.mark.parametrize("kind", ["clip", "chinese_clip"])
def test_vision_export_computes_the_last_layer_for_the_class_token_only(kind: str, request, tmp_path: Path) -> None:
    import onnxruntime
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModel

    from mmrag.embedders.hf import projected_features

    model_dir = request.getfixturevalue("tiny_clip_dir" if kind == "clip" else "tiny_chinese_clip_dir")
    backend = "hf-clip" if kind == "clip" else "hf-chinese-clip"
    export = onnx_backend.export_model(model_dir, tmp_path / "export", backend=backend)
    assert json.loads((export / "meta.json").read_text())["vision_graph"] == "class-token-last-layer"
    model = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()  # attention flops counted
    pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    pruned = onnx_backend.class_token_vision(model, 32)
    assert pruned is not None
    with torch.no_grad(), FlopCounterMode(display=False) as whole:
        expected = projected_features(model.get_image_features(pixel_values=pixels)).numpy()
    with torch.no_grad(), FlopCounterMode(display=False) as one_token:
        got = pruned(pixels).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    session = onnxruntime.InferenceSession(str(export / "vision.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"pixel_values": pixels.numpy()})[0], expected, atol=1e-5, rtol=0)
    # What the last layer no longer computes for the other t-1 tokens: the query and output
    # projections, both MLP matmuls, and their rows of QK^T and of the attention-weighted V.
    cfg = model.config.vision_config
    b, d, inner = 4, cfg.hidden_size, cfg.intermediate_size
    t = (32 // cfg.patch_size) ** 2 + 1
    saved = 2 * b * (t - 1) * (2 * d * d + 2 * d * inner + 2 * t * d)
    assert whole.get_total_flops() - one_token.get_total_flops() == saved


def test_a_vision_tower_the_class_token_graph_does_not_match_is_exported_whole(tiny_clip_dir: Path) -> None:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_clip_dir).eval()
    last = model.vision_model.encoder.layers[-1]
    plain_forward = last.forward
    # A last layer that does something the class-token graph does not reproduce.
    last.forward = lambda hidden, mask, **kw: plain_forward(hidden, mask, **kw).flip(1)
    assert onnx_backend.class_token_vision(model, 32) is None
    del model.vision_model.pre_layrnorm  # another layout: no pre-layernorm at all
    assert onnx_backend.class_token_vision(model, 32) is None


def test_the_cpu_runs_the_vision_tower_in_cache_sized_calls(tiny_clip_dir: Path) -> None:
    per_call = onnx_backend.cpu_images_per_call
    # ViT-B/32-256 (65 tokens), ViT-B/16 (197), the tiny test model (17), a batch smaller than the cap, ViT-H-ish
    assert [per_call(65, 32), per_call(197, 32), per_call(17, 32), per_call(17, 16), per_call(1000, 32)] == [8, 2, 32, 16, 1]
    e = load_embedder(str(tiny_clip_dir), device="cpu", backend="onnx", batch_size=64)
    assert (e.batch_size, e.meta["vision_tokens"], e.images_per_call) == (64, 17, 32)
    pixels = np.random.default_rng(3).standard_normal((70, 3, 32, 32)).astype(np.float32)
    session = e.session("vision")
    calls: list[int] = []

    class Recording:
        def run(self, names, feeds):
            calls.append(len(feeds["pixel_values"]))
            return session.run(names, feeds)

    e._sessions["vision"] = Recording()
    chunked = e.embed_pixels(pixels)
    assert calls == [32, 32, 6]
    whole = session.run(None, {"pixel_values": pixels})[0]
    np.testing.assert_allclose(chunked, whole / np.linalg.norm(whole, axis=1, keepdims=True), atol=1e-6)
