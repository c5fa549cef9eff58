"""Both runtimes (transformers on torch, and the ONNX Runtime export) against the reference
transformers computation, on tiny CLIP and Chinese-CLIP: within 1e-5 after normalisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmrag.embedders import Embedder, load_embedder
from mmrag.embedders.hf import HFClipEmbedder, ensure_rgb, projected_features

KINDS = ["clip", "chinese_clip"]
SIZES = [(7, 5), (64, 48), (300, 40)]
MODES = ["RGB", "L", "RGBA"]
TEXTS = {
    "clip": ["a photo of a cat", "two dogs playing on the grass near a red house", "a car"],
    "chinese_clip": ["一张猫的照片", "两只狗在红房子旁边的草地上玩耍", "a photo of a cat", "车"],
}


def _image(size: tuple[int, int], mode: str, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed + size[0] * 1000 + size[1])
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    arr = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)


def _normalize(t: torch.Tensor) -> np.ndarray:
    t = t.float()
    return (t / t.norm(dim=-1, keepdim=True)).numpy()


@pytest.fixture(scope="module", params=KINDS)
def kind(request) -> str:
    return request.param


@pytest.fixture(scope="module", params=["torch", "onnx"])
def runtime(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def model_dir(kind: str, request) -> Path:
    return request.getfixturevalue("tiny_clip_dir" if kind == "clip" else "tiny_chinese_clip_dir")


@pytest.fixture(scope="module")
def reference(model_dir: Path):
    """The model and processor loaded directly through transformers."""
    from transformers import AutoModel, AutoProcessor

    return AutoModel.from_pretrained(model_dir).eval(), AutoProcessor.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def embedder(model_dir: Path, runtime: str) -> HFClipEmbedder:
    e = load_embedder(str(model_dir), device="cpu", backend=runtime)
    assert type(e).__name__ == {"torch": "HFClipEmbedder", "onnx": "OnnxClipEmbedder"}[runtime]
    return e


def _ref_images(reference, images: list[Image.Image]) -> np.ndarray:
    model, processor = reference
    with torch.no_grad():
        out = model.get_image_features(**processor(images=images, return_tensors="pt"))
    return _normalize(projected_features(out))


def _ref_texts(reference, texts: list[str], **kw) -> np.ndarray:
    model, processor = reference
    with torch.no_grad():
        out = model.get_text_features(**processor(text=texts, padding=True, return_tensors="pt", **kw))
    return _normalize(projected_features(out))


def test_is_an_embedder_with_config_metadata(embedder: HFClipEmbedder, reference, model_dir: Path, kind: str,
                                             runtime: str) -> None:
    model, _ = reference
    assert isinstance(embedder, Embedder)
    info = embedder.info
    assert info.model_id == f"local-dir:{model_dir.resolve()}"
    assert info.dim == model.config.projection_dim == 32
    assert info.image_size == model.config.vision_config.image_size == 32
    assert info.backend == ("hf-clip" if kind == "clip" else "hf-chinese-clip")
    assert info.language == ("en" if kind == "clip" else "zh")
    assert info.quantization is None
    assert info.runtime == info.extra["runtime"] == runtime
    assert info.extra["preprocess"] == "exact" and "draft_size" not in info.extra
    assert embedder.draft_size is None
    assert embedder.max_text_length == (77 if kind == "clip" else 52)
    assert embedder.device == "cpu"


def test_logit_scale(embedder: HFClipEmbedder, reference) -> None:
    model, _ = reference
    assert embedder.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()), rel=1e-6)
    assert embedder.logit_scale == pytest.approx(np.exp(model.config.logit_scale_init_value), rel=1e-5)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mode", MODES)
def test_preprocess_equals_image_processor(embedder: HFClipEmbedder, reference, size, mode: str) -> None:
    _, processor = reference
    original = _image(size, mode)
    rgb = original.convert("RGB")  # what ingestion hands over
    expected = processor.image_processor(images=rgb, return_tensors="np")["pixel_values"][0]
    got = embedder.preprocess(rgb)
    assert got.dtype == np.float32 and got.shape == (3, 32, 32)
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    # non-RGB input goes through the processor's own RGB conversion
    direct = processor.image_processor(images=original, return_tensors="np")["pixel_values"][0]
    np.testing.assert_allclose(embedder.preprocess(original), direct, atol=1e-6, rtol=0)


def test_chinese_clip_squashes_without_crop(reference, embedder: HFClipEmbedder, kind: str) -> None:
    # a left-half-black / right-half-white wide image: a centre crop would lose the halves' ratio
    arr = np.zeros((40, 300, 3), dtype=np.uint8)
    arr[:, 150:] = 255
    pixels = embedder.preprocess(Image.fromarray(arr))
    if kind == "chinese_clip":
        assert pixels[0, :, 2].max() < 0 and pixels[0, :, -3].min() > 0  # both halves survive
    else:
        assert pixels.shape == (3, 32, 32)  # CLIP: shortest edge to 32, centre crop


def test_image_vectors_equal_reference(embedder: HFClipEmbedder, reference) -> None:
    images = [_image(size, mode).convert("RGB") for size in SIZES for mode in MODES]
    expected = _ref_images(reference, images)
    got = embedder.embed_images(images)
    assert got.dtype == np.float32 and got.shape == (len(images), 32)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    pixels = np.stack([embedder.preprocess(im) for im in images])
    np.testing.assert_allclose(embedder.embed_pixels(pixels), expected, atol=1e-5, rtol=0)


def test_text_vectors_equal_reference(embedder: HFClipEmbedder, reference, kind: str) -> None:
    texts = TEXTS[kind]
    got = embedder.embed_texts(texts)
    assert got.dtype == np.float32 and got.shape == (len(texts), 32)
    np.testing.assert_allclose(got, _ref_texts(reference, texts), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(got[0], got[1], atol=1e-3)  # different texts, different vectors


def test_padding_does_not_change_a_text_vector(embedder: HFClipEmbedder, kind: str) -> None:
    short, long = TEXTS[kind][0], TEXTS[kind][1] + " " + TEXTS[kind][1]
    alone = embedder.embed_texts([short])[0]
    batched = embedder.embed_texts([short, long])
    assert embedder.tokenize([short, long])["input_ids"].shape[1] > embedder.tokenize([short])["input_ids"].shape[1]
    np.testing.assert_allclose(batched[0], alone, atol=1e-5, rtol=0)


def test_long_text_is_truncated_to_model_limit(embedder: HFClipEmbedder, reference, kind: str) -> None:
    text = " ".join([TEXTS[kind][1]] * 40)
    limit = 77 if kind == "clip" else 52
    assert embedder.tokenize([text])["input_ids"].shape[1] == limit
    expected = _ref_texts(reference, [text], truncation=True, max_length=limit)
    np.testing.assert_allclose(embedder.embed_texts([text]), expected, atol=1e-5, rtol=0)


def test_batching_gives_the_same_vectors(model_dir: Path, embedder: HFClipEmbedder, kind: str, runtime: str) -> None:
    small = load_embedder(str(model_dir), device="cpu", batch_size=2, text_batch_size=2, backend=runtime)
    images = [_image(size, "RGB", seed=7) for size in SIZES] * 2
    np.testing.assert_allclose(small.embed_images(images), embedder.embed_images(images), atol=1e-5, rtol=0)
    texts = TEXTS[kind] + TEXTS[kind][:1]
    # each batch of 2 is padded to its own longest text: still the same vectors
    np.testing.assert_allclose(small.embed_texts(texts), embedder.embed_texts(texts), atol=1e-5, rtol=0)


def test_empty_inputs(embedder: HFClipEmbedder) -> None:
    assert embedder.embed_texts([]).shape == (0, 32)
    assert embedder.embed_images([]).shape == (0, 32)
    assert embedder.embed_pixels(np.zeros((0, 3, 32, 32), np.float32)).shape == (0, 32)
    with pytest.raises(TypeError, match="sequence of strings"):
        embedder.embed_texts("a cat")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        embedder.embed_pixels(np.zeros((3, 32, 32), np.float32))


def test_local_dir_prefix_loads_the_same_model(model_dir: Path, embedder: HFClipEmbedder, kind: str,
                                               runtime: str) -> None:
    other = load_embedder("local-dir:" + str(model_dir), device="cpu", backend=runtime)
    assert other.info == embedder.info
    np.testing.assert_array_equal(other.embed_texts(TEXTS[kind][:2]), embedder.embed_texts(TEXTS[kind][:2]))


def test_int8_runs_through_onnx_runtime(model_dir: Path, embedder: HFClipEmbedder, kind: str) -> None:
    import onnx

    q = load_embedder(str(model_dir), device="cpu", quantize="int8")  # auto: int8 means ONNX Runtime
    assert (q.info.quantization, q.info.runtime) == ("int8-onnx", "onnx")
    assert q.info.fingerprint() != embedder.info.fingerprint()
    images = [_image(size, "RGB") for size in SIZES]
    for a, b in ((q.embed_images(images), embedder.embed_images(images)),
                 (q.embed_texts(TEXTS[kind]), embedder.embed_texts(TEXTS[kind]))):
        assert a.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
        assert np.min(np.sum(a * b, axis=1)) > 0.99
        assert not np.allclose(a, b, atol=1e-6)  # really a different computation
    for tower in ("vision", "text"):  # every MatMul of the towers became an integer one
        ops = [n.op_type for n in onnx.load(str(q.export_dir / f"{tower}.int8.onnx")).graph.node]
        assert ops.count("MatMulInteger") >= 4 and "DynamicQuantizeLinear" in ops
        fp32_ops = [n.op_type for n in onnx.load(str(q.export_dir / f"{tower}.onnx")).graph.node]
        assert "MatMulInteger" not in fp32_ops
    assert q.logit_scale == pytest.approx(embedder.logit_scale)


def test_torch_backend_refuses_int8(model_dir: Path) -> None:
    with pytest.raises(ValueError, match="runs through ONNX Runtime"):
        load_embedder(str(model_dir), device="cpu", quantize="int8", backend="torch")
    with pytest.raises(ValueError, match="not available on the torch backend"):
        HFClipEmbedder(str(model_dir), device="cpu", quantize="int8")


def test_int8_refuses_gpu(model_dir: Path, monkeypatch) -> None:
    import mmrag.embedders.onnx as onnx_backend

    monkeypatch.setattr(onnx_backend, "_providers", lambda device: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(ValueError, match="runs on CPU only"):
        load_embedder(str(model_dir), device="cuda", quantize="int8")


def test_onnx_and_torch_fp32_share_a_fingerprint(model_dir: Path) -> None:
    a = load_embedder(str(model_dir), device="cpu", backend="torch")
    b = load_embedder(str(model_dir), device="cpu", backend="onnx")
    assert a.info.fingerprint() == b.info.fingerprint()  # same vectors: one collection may hold both
    assert (a.info.runtime, b.info.runtime) == ("torch", "onnx")


def test_fast_preprocess_is_recorded(model_dir: Path, runtime: str) -> None:
    fast = load_embedder(str(model_dir), device="cpu", fast_preprocess=True, backend=runtime)
    assert fast.info.extra["preprocess"] == "fast"
    assert fast.info.extra["draft_size"] == fast.draft_size == 32


def test_projected_features_handles_tensor_and_output_object() -> None:
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    t = torch.arange(6.0).reshape(2, 3)
    assert projected_features(t) is t
    out = BaseModelOutputWithPooling(last_hidden_state=torch.zeros(2, 4, 5), pooler_output=t)
    assert projected_features(out) is t
    with pytest.raises(TypeError, match="no pooler_output"):
        projected_features(BaseModelOutputWithPooling(last_hidden_state=torch.zeros(2, 4, 5)))


def test_ensure_rgb_composites_alpha_on_white() -> None:
    img = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    img.putpixel((1, 0), (10, 20, 30, 255))
    assert list(ensure_rgb(img).getdata()) == [(255, 255, 255), (10, 20, 30)]
    gray = Image.new("L", (1, 1), 77)
    assert ensure_rgb(gray).getpixel((0, 0)) == (77, 77, 77)
    rgb = Image.new("RGB", (1, 1))
    assert ensure_rgb(rgb) is rgb


def test_preprocess_converts_when_processor_does_not(embedder: HFClipEmbedder, runtime: str, monkeypatch) -> None:
    if runtime != "torch":
        pytest.skip("only the torch runtime falls back to the image processor")
    gray = _image((20, 10), "L")
    monkeypatch.setattr(embedder.image_processor, "do_convert_rgb", False)
    np.testing.assert_array_equal(embedder.preprocess(gray), embedder.preprocess(gray.convert("RGB")))
